using System.Buffers.Binary;
using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Cache;

/// <summary>
/// One entry of the partial-parity pool (write-log.md, "Closing the hole with a member missing"): the partial
/// parity of row <see cref="Row"/> of stripe <see cref="Stripe"/> of array <see cref="Array"/>, taken by the write
/// of write-log record (<see cref="LogSlot"/>, <see cref="Sequence"/>) before it touched a drive. The 4 KiB block
/// is in the pool beside its 64-byte descriptor, little-endian:
/// <code>
///  0-3   magic "PPL1"
///  4     array number
///  5     zero
///  6-7   write-log slot
///  8-15  write-log record sequence
///  16-23 stripe
///  24-27 row
///  28-31 zero
///  32-39 unchanged data indexes (bit i: data block i of the row is not written by the record's write)
///  40-43 CRC32C of the 4 KiB block
///  44-59 zero
///  60-63 CRC32C over bytes 0-59
/// </code>
/// The block is stored before the descriptor, so a descriptor that passes its CRC names a whole block (the
/// block's own CRC checks it again). All zero is a free entry.
/// </summary>
public readonly record struct PartialParityEntry(byte Array, int LogSlot, ulong Sequence, long Stripe, int Row, ulong Unchanged)
{
    public const uint Magic = 0x314C5050; // "PPL1"
    const int CrcOffset = NvramLayout.PpDescriptorBytes - sizeof(uint);

    public void Encode(Span<byte> descriptor, uint blockCrc)
    {
        Invariant.Assert(descriptor.Length == NvramLayout.PpDescriptorBytes);
        Span<byte> d = stackalloc byte[NvramLayout.PpDescriptorBytes];
        d.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(d, Magic);
        d[4] = Array;
        BinaryPrimitives.WriteUInt16LittleEndian(d[6..], (ushort)LogSlot);
        BinaryPrimitives.WriteUInt64LittleEndian(d[8..], Sequence);
        BinaryPrimitives.WriteInt64LittleEndian(d[16..], Stripe);
        BinaryPrimitives.WriteInt32LittleEndian(d[24..], Row);
        BinaryPrimitives.WriteUInt64LittleEndian(d[32..], Unchanged);
        BinaryPrimitives.WriteUInt32LittleEndian(d[40..], blockCrc);
        BinaryPrimitives.WriteUInt32LittleEndian(d[CrcOffset..], Crc32C.Compute(d[..CrcOffset]));
        d.CopyTo(descriptor);
    }

    /// <summary>The entry of a descriptor and its block, or null if free, torn, or the block fails its CRC.</summary>
    public static PartialParityEntry? Decode(ReadOnlySpan<byte> descriptor, ReadOnlySpan<byte> block)
    {
        if (BinaryPrimitives.ReadUInt32LittleEndian(descriptor) != Magic) return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(descriptor[CrcOffset..]) != Crc32C.Compute(descriptor[..CrcOffset])) return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(descriptor[40..]) != Crc32C.Compute(block)) return null;
        var e = new PartialParityEntry(descriptor[4], BinaryPrimitives.ReadUInt16LittleEndian(descriptor[6..]), BinaryPrimitives.ReadUInt64LittleEndian(descriptor[8..]),
            BinaryPrimitives.ReadInt64LittleEndian(descriptor[16..]), BinaryPrimitives.ReadInt32LittleEndian(descriptor[24..]), BinaryPrimitives.ReadUInt64LittleEndian(descriptor[32..]));
        if (e.LogSlot >= NvramLayout.LogSlots || e.Stripe < 0 || e.Row < 0 || e.Unchanged == 0) return null;
        return e;
    }

    public static void Clear(Span<byte> descriptor)
    {
        // The magic first: from then on the entry reads as free whatever the rest holds.
        BinaryPrimitives.WriteUInt32LittleEndian(descriptor, 0);
        Interlocked.MemoryBarrier();
        descriptor[4..].Clear();
    }
}

/// <summary>
/// The partial-parity pool of a controller's NVRAM: entries tied to its own write-log records, stored by
/// their writes before a drive is touched and freed with the record (<see cref="WriteLog"/> calls
/// <see cref="Release"/> whenever a record is freed). Not thread-safe: <see cref="WriteLog"/> holds its lock.
/// </summary>
internal sealed class PartialParityPool
{
    readonly NvramFile _nvram;
    readonly Stack<int> _free = new();
    /// <summary>What each entry holds (null: free); its record is <c>LogSlot</c>.</summary>
    readonly PartialParityEntry?[] _meta;
    /// <summary>Entries per write-log slot (live, or recovered for a recovered record).</summary>
    readonly Dictionary<int, List<int>> _bySlot = [];
    /// <summary>Entries per row (array, stripe, row), for <see cref="Supersede"/>.</summary>
    readonly Dictionary<(byte, long, int), List<int>> _byRow = [];

    /// <summary>Opens the pool: keeps the entries of <paramref name="recovered"/> records (by slot and sequence)
    /// and frees every other (a record cleared at the cut, or a store cut half-way).</summary>
    public PartialParityPool(NvramFile nvram, IReadOnlyDictionary<int, ulong> recovered)
    {
        _nvram = nvram;
        _meta = new PartialParityEntry?[nvram.Layout.PpSlots];
        for (int e = nvram.Layout.PpSlots - 1; e >= 0; e--)
        {
            var meta = PartialParityEntry.Decode(nvram.PpDescriptor(e), nvram.PpBlock(e));
            if (meta is { } m && recovered.TryGetValue(m.LogSlot, out ulong seq) && seq == m.Sequence) Index(e, m);
            else
            {
                if (meta is not null || nvram.PpDescriptor(e)[0] != 0) PartialParityEntry.Clear(nvram.PpDescriptor(e));
                _free.Push(e);
            }
        }
    }

    public int Free => _free.Count;
    public int Capacity => _nvram.Layout.PpSlots;

    /// <summary>Takes a free entry for a store (<see cref="Write"/> then <see cref="Index"/> or <see cref="Drop"/>); false if the pool is full.</summary>
    public bool TryReserve(out int e)
    {
        if (_free.Count == 0)
        {
            e = -1;
            return false;
        }
        e = _free.Pop();
        return true;
    }

    /// <summary>
    /// Writes a reserved entry into NVRAM: the block, then the descriptor that names it. Touches only entry
    /// <paramref name="e"/>'s bytes, so the caller runs it without the write log's lock (the copy and the CRC
    /// of 4 KiB are the pool's whole cost on the write path).
    /// </summary>
    public void Write(int e, PartialParityEntry meta, ReadOnlySpan<byte> sum)
    {
        Invariant.Assert(sum.Length == NvramLayout.PpBlockBytes);
        sum.CopyTo(_nvram.PpBlock(e));
        Interlocked.MemoryBarrier();
        meta.Encode(_nvram.PpDescriptor(e), Crc32C.Compute(sum));
    }

    /// <summary>A reserved entry whose record ended before it was indexed: cleared and free again.</summary>
    public void Drop(int e)
    {
        PartialParityEntry.Clear(_nvram.PpDescriptor(e));
        _free.Push(e);
    }

    public void Index(int e, PartialParityEntry meta)
    {
        _meta[e] = meta;
        if (!_bySlot.TryGetValue(meta.LogSlot, out var list)) _bySlot[meta.LogSlot] = list = [];
        list.Add(e);
        var key = (meta.Array, meta.Stripe, meta.Row);
        if (!_byRow.TryGetValue(key, out var row)) _byRow[key] = row = [];
        row.Add(e);
    }

    /// <summary>Frees entry <paramref name="e"/> and drops it from the row index (the caller drops it from its slot's list).</summary>
    void FreeEntry(int e)
    {
        var meta = _meta[e]!.Value;
        var key = (meta.Array, meta.Stripe, meta.Row);
        if (_byRow.TryGetValue(key, out var row) && row.Remove(e) && row.Count == 0) _byRow.Remove(key);
        _meta[e] = null;
        PartialParityEntry.Clear(_nvram.PpDescriptor(e));
        _free.Push(e);
    }

    /// <summary>Frees the entries other records than <paramref name="logSlot"/>'s hold for a row a newer write changes.</summary>
    public int Supersede(byte array, long stripe, int row, int logSlot)
    {
        if (!_byRow.TryGetValue((array, stripe, row), out var entries)) return 0;
        int n = 0;
        foreach (int e in entries.ToArray())
        {
            int owner = _meta[e]!.Value.LogSlot;
            if (owner == logSlot) continue;
            var list = _bySlot[owner];
            list.Remove(e);
            if (list.Count == 0) _bySlot.Remove(owner);
            FreeEntry(e);
            n++;
        }
        return n;
    }

    /// <summary>How many entries other records than <paramref name="logSlot"/>'s hold for rows [<paramref name="rowLo"/>,
    /// +<paramref name="rowCount"/>) of a stripe (what <see cref="Supersede"/> of those rows would free).</summary>
    public int CountOthers(byte array, long stripe, int rowLo, int rowCount, int logSlot)
    {
        int n = 0;
        for (int row = rowLo; row < rowLo + rowCount; row++)
            if (_byRow.TryGetValue((array, stripe, row), out var entries))
                foreach (int e in entries)
                    if (_meta[e]!.Value.LogSlot != logSlot) n++;
        return n;
    }

    /// <summary>How many entries the record in <paramref name="logSlot"/> holds.</summary>
    public int CountOf(int logSlot) => _bySlot.TryGetValue(logSlot, out var list) ? list.Count : 0;

    /// <summary>The entries of the record in <paramref name="logSlot"/>, with copies of their blocks.</summary>
    public List<(PartialParityEntry Meta, byte[] Sum)> Of(int logSlot)
    {
        var found = new List<(PartialParityEntry, byte[])>();
        if (_bySlot.TryGetValue(logSlot, out var list))
            foreach (int e in list) found.Add((_meta[e]!.Value, _nvram.PpBlock(e).ToArray()));
        return found;
    }

    /// <summary>The entries for rows [<paramref name="rowLo"/>, +<paramref name="rowCount"/>) of a stripe whose records
    /// <paramref name="held"/> names, with copies of their blocks.</summary>
    public List<(PartialParityEntry Meta, byte[] Sum)> OfRows(byte array, long stripe, int rowLo, int rowCount, Func<int, bool> held)
    {
        var found = new List<(PartialParityEntry, byte[])>();
        for (int row = rowLo; row < rowLo + rowCount; row++)
            if (_byRow.TryGetValue((array, stripe, row), out var entries))
                foreach (int e in entries)
                    if (held(_meta[e]!.Value.LogSlot)) found.Add((_meta[e]!.Value, _nvram.PpBlock(e).ToArray()));
        return found;
    }

    /// <summary>Frees the entries the record in <paramref name="logSlot"/> holds for <paramref name="stripe"/> (its write
    /// there is on the drives and flushed); returns how many.</summary>
    public int ReleaseStripe(int logSlot, long stripe)
    {
        if (!_bySlot.TryGetValue(logSlot, out var list)) return 0;
        int n = 0;
        for (int i = list.Count - 1; i >= 0; i--)
        {
            int e = list[i];
            if (_meta[e]!.Value.Stripe != stripe) continue;
            list.RemoveAt(i);
            FreeEntry(e);
            n++;
        }
        if (list.Count == 0) _bySlot.Remove(logSlot);
        return n;
    }

    /// <summary>Frees the entries of the record in <paramref name="logSlot"/> (it was cleared, retired or dropped).</summary>
    public void Release(int logSlot)
    {
        if (!_bySlot.Remove(logSlot, out var list)) return;
        foreach (int e in list) FreeEntry(e);
    }
}
