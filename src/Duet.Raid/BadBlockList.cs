using System.Buffers.Binary;
using Duet.Core;

namespace Duet.Raid;

/// <summary>What found a block that could not be recovered (kept in its entry, shown by `duet array bad-blocks`).</summary>
public enum BadBlockSource : byte
{
    /// <summary>Settling the stripes of a write the write log (AW-4) named, after a restart or a takeover.</summary>
    Settle = 1,
    Scrub = 2,
    Read = 3,
    /// <summary>The cache rewriting, after a crash, a write that may have torn the block (<see cref="RaidArray.RecoveryWriteAsync"/>).</summary>
    RecoveryWrite = 4,
    Rebuild = 5,
}

/// <summary>
/// One listed block: an array block (4 KiB) and which of its eight 512-byte sectors are still bad
/// (bit i = sector i). A host write of a sector clears its bit; the entry goes when no bit is left.
/// </summary>
public readonly record struct BadBlockEntry(long ArrayBlock, byte BadSectors, BadBlockSource Source)
{
    public const byte AllSectors = 0xFF;

    public bool IsBad(int sectorInBlock) => (BadSectors >> sectorInBlock & 1) != 0;

    /// <summary>The first still-bad sector of the block, as an array sector.</summary>
    public long FirstBadSector => ArrayBlock * Units.SectorsPerBlock + System.Numerics.BitOperations.TrailingZeroCount((uint)BadSectors);
}

/// <summary>
/// AW-5: the array's bad-block list. A data block whose checksum fails and that cannot be
/// reconstructed from redundancy (torn by a power cut, or rotted) is listed here, filled with
/// <see cref="FillByte"/> under a valid tag, and its row's parity regenerated, so the rest of
/// the row is protected again; every read of a listed sector fails with a medium error, with
/// no repair attempt, until a host writes that sector again.
///
/// The list lives on the array's drives, so it survives a restart and a takeover by the other
/// controller: block 2 of every member (and a copy in block 3), 4096 bytes, little-endian:
///
///   0     8  magic "DUETBADB"
///   8     4  format version (1)
///   12    4  CRC32C of the 4096 bytes with this field zero
///   16   16  array UUID (a list left on a drive by another array is not this one's)
///   32    8  generation: +1 on every change; the highest valid copy wins
///   40    4  entry count (at most <see cref="MaxEntries"/>)
///   44   20  reserved (zero)
///   64 4032  entries, 8 bytes each, ascending by array block:
///              bits 0-47   array block (4 KiB)
///              bits 48-55  still-bad sectors of the block (bit i = 512-byte sector i)
///              bits 56-63  what found it (<see cref="BadBlockSource"/>)
///
/// Instances are immutable: a change makes a new list with the generation one higher, which
/// <see cref="RaidArray"/> writes to every member (copy A everywhere, then copy B) before it
/// uses it. Readers take the current instance without a lock.
/// </summary>
public sealed class BadBlockList
{
    public const int Version = 1;
    public const int HeaderBytes = 64;
    public const int EntryBytes = 8;
    public const int MaxEntries = (Units.BlockBytes - HeaderBytes) / EntryBytes; // 504
    /// <summary>Every byte of a listed block's content until a host rewrites it: all ones, as the seed suggests
    /// (EP 0 551 718: "a known pattern ... e.g., all 1's"). Never returned to a host: its sectors are listed.</summary>
    public const byte FillByte = 0xFF;
    public const long MaxArrayBlock = (1L << 48) - 1;
    static ReadOnlySpan<byte> Magic => "DUETBADB"u8;

    public static readonly BadBlockList Empty = new(0, []);

    readonly BadBlockEntry[] _entries;

    BadBlockList(long generation, BadBlockEntry[] entries)
    {
        Invariant.Assert(generation >= 0);
        Invariant.Assert(entries.Length <= MaxEntries);
        for (int i = 0; i < entries.Length; i++)
        {
            Invariant.Assert(entries[i].BadSectors != 0);
            Invariant.Assert(entries[i].ArrayBlock >= 0 && entries[i].ArrayBlock <= MaxArrayBlock);
            Invariant.Assert(i == 0 || entries[i - 1].ArrayBlock < entries[i].ArrayBlock);
        }
        Generation = generation;
        _entries = entries;
    }

    public long Generation { get; }
    public int Count => _entries.Length;
    public bool IsEmpty => _entries.Length == 0;
    public IReadOnlyList<BadBlockEntry> Entries => _entries;

    /// <summary>Index of the first entry whose block is at or after <paramref name="arrayBlock"/>.</summary>
    int LowerBound(long arrayBlock)
    {
        int lo = 0, hi = _entries.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_entries[mid].ArrayBlock < arrayBlock) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    public BadBlockEntry? Find(long arrayBlock)
    {
        int i = LowerBound(arrayBlock);
        return i < _entries.Length && _entries[i].ArrayBlock == arrayBlock ? _entries[i] : null;
    }

    /// <summary>The first still-bad array sector in [<paramref name="sectorLo"/>, <paramref name="sectorHi"/>), or -1.</summary>
    public long FirstBadSector(long sectorLo, long sectorHi)
    {
        if (_entries.Length == 0 || sectorHi <= sectorLo) return -1;
        for (int i = LowerBound(sectorLo / Units.SectorsPerBlock); i < _entries.Length; i++)
        {
            var e = _entries[i];
            long first = e.ArrayBlock * Units.SectorsPerBlock;
            if (first >= sectorHi) break;
            for (int s = 0; s < Units.SectorsPerBlock; s++)
                if (e.IsBad(s) && first + s >= sectorLo && first + s < sectorHi) return first + s;
        }
        return -1;
    }

    /// <summary>The entries of blocks that overlap array sectors [<paramref name="sectorLo"/>, <paramref name="sectorHi"/>).</summary>
    public IEnumerable<BadBlockEntry> Overlapping(long sectorLo, long sectorHi)
    {
        if (sectorHi <= sectorLo) yield break;
        for (int i = LowerBound(sectorLo / Units.SectorsPerBlock); i < _entries.Length; i++)
        {
            if (_entries[i].ArrayBlock * Units.SectorsPerBlock >= sectorHi) yield break;
            yield return _entries[i];
        }
    }

    /// <summary>
    /// A new list (generation + 1) with <paramref name="changes"/> applied: each entry replaces the one of
    /// its block, or is added; an entry with no bad sector left removes its block. Null if the result would
    /// hold more than <see cref="MaxEntries"/>.
    /// </summary>
    public BadBlockList? With(IEnumerable<BadBlockEntry> changes)
    {
        var map = new SortedDictionary<long, BadBlockEntry>();
        foreach (var e in _entries) map[e.ArrayBlock] = e;
        foreach (var c in changes)
        {
            Invariant.Assert(c.ArrayBlock >= 0 && c.ArrayBlock <= MaxArrayBlock);
            if (c.BadSectors == 0) map.Remove(c.ArrayBlock);
            else map[c.ArrayBlock] = c;
        }
        if (map.Count > MaxEntries) return null;
        return new BadBlockList(Generation + 1, [.. map.Values]);
    }

    /// <summary>This list at another generation (a copy rewritten onto every member, e.g. after a rebuild).</summary>
    public BadBlockList Renumbered(long generation) => new(generation, _entries);

    public void Encode(Guid arrayUuid, Span<byte> block)
    {
        Invariant.Assert(block.Length == Units.BlockBytes);
        block.Clear();
        Magic.CopyTo(block);
        BinaryPrimitives.WriteInt32LittleEndian(block[8..], Version);
        arrayUuid.TryWriteBytes(block[16..32]);
        BinaryPrimitives.WriteInt64LittleEndian(block[32..], Generation);
        BinaryPrimitives.WriteInt32LittleEndian(block[40..], _entries.Length);
        for (int i = 0; i < _entries.Length; i++)
        {
            var e = _entries[i];
            ulong word = (ulong)e.ArrayBlock | (ulong)e.BadSectors << 48 | (ulong)e.Source << 56;
            BinaryPrimitives.WriteUInt64LittleEndian(block[(HeaderBytes + i * EntryBytes)..], word);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(block[12..], Crc32C.Compute(block));
    }

    /// <summary>
    /// Null with no error if the block holds no list (never written: an array made before the list
    /// existed, or a list never needed); null with an error if it holds a damaged one or another array's.
    /// </summary>
    public static BadBlockList? TryDecode(ReadOnlySpan<byte> block, Guid arrayUuid, out string? error)
    {
        error = null;
        Invariant.Assert(block.Length == Units.BlockBytes);
        if (!block[..8].SequenceEqual(Magic)) return null;
        Span<byte> copy = stackalloc byte[Units.BlockBytes];
        block.CopyTo(copy);
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(copy[12..]);
        copy[12..16].Clear();
        if (Crc32C.Compute(copy) != stored) { error = "bad-block list checksum mismatch"; return null; }
        int version = BinaryPrimitives.ReadInt32LittleEndian(block[8..]);
        if (version != Version) { error = $"bad-block list format version {version} is not supported (expected {Version})"; return null; }
        var uuid = new Guid(block[16..32]);
        if (uuid != arrayUuid) { error = $"bad-block list of another array (UUID {uuid})"; return null; }
        long generation = BinaryPrimitives.ReadInt64LittleEndian(block[32..]);
        if (generation < 0) { error = $"bad-block list generation {generation} is negative"; return null; }
        int count = BinaryPrimitives.ReadInt32LittleEndian(block[40..]);
        if (count < 0 || count > MaxEntries) { error = $"bad-block list entry count {count} is outside 0..{MaxEntries}"; return null; }
        var entries = new BadBlockEntry[count];
        for (int i = 0; i < count; i++)
        {
            ulong word = BinaryPrimitives.ReadUInt64LittleEndian(block[(HeaderBytes + i * EntryBytes)..]);
            var e = new BadBlockEntry((long)(word & MaxArrayBlock), (byte)(word >> 48), (BadBlockSource)(byte)(word >> 56));
            if (e.BadSectors == 0) { error = $"bad-block list entry {i} (block {e.ArrayBlock}) has no bad sector"; return null; }
            if (i > 0 && entries[i - 1].ArrayBlock >= e.ArrayBlock) { error = $"bad-block list entries are not in ascending order at entry {i}"; return null; }
            entries[i] = e;
        }
        return new BadBlockList(generation, entries);
    }
}
