using System.Buffers.Binary;
using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Cache;

/// <summary>Names one host command across both controllers, as the host protocol's handshake does:
/// the multicast group (unit number), the host and the host's tag (generation bits included).</summary>
public readonly record struct HostTagKey(byte Unit, ulong HostId, ulong HostTag)
{
    public override string ToString() => $"unit {Unit} host {HostId:x} tag {HostTag:x}";
}

/// <summary>
/// One finished host command in a table of finished commands (idempotent re-issue,
/// docs/internals/host-protocol.md): its key, a digest of the request (so a retry of this command is
/// told from a tag reused for another one), the host status it ended with, and its sequence number.
/// 64 bytes in NVRAM, little-endian:
/// <code>
///  0-3   magic "HTG1"
///  4     unit (multicast group)
///  5     host status (the host protocol's value)
///  6     table stamp: 1 own table, 2 the mirror of the peer's (an entry in the wrong table fails)
///  7     zero
///  8-15  sequence (never 0; the entry's slot is sequence mod TagSlots)
///  16-23 host id
///  24-31 host tag
///  32-35 request digest (CRC32C over volume name, opcode, offset, length and payload)
///  36-59 zero
///  60-63 CRC32C over bytes 0-59
/// </code>
/// All zero is a free slot. An entry that fails a check (magic, CRC, stamp, slot) was being
/// written when the controller stopped — its command's host was not answered yet — or is damaged:
/// it reads as free.
/// </summary>
public readonly record struct HostTagEntry(HostTagKey Key, uint Digest, byte Status, ulong Sequence)
{
    public const uint Magic = 0x31475448; // "HTG1"
    const int CrcOffset = NvramLayout.TagEntryBytes - sizeof(uint);
    const int SlotMask = NvramLayout.TagSlots - 1;

    /// <summary>Where the entry lives in its table: a ring ordered by sequence, so recording an
    /// entry evicts the one <see cref="NvramLayout.TagSlots"/> sequences older.</summary>
    public int Slot => SlotOf(Sequence);

    public static int SlotOf(ulong sequence) => (int)(sequence & SlotMask);

    public void Encode(Span<byte> slot, int table)
    {
        Invariant.Assert(slot.Length == NvramLayout.TagEntryBytes);
        Invariant.Assert(table is 1 or 2);
        Invariant.Assert(Sequence != 0);
        Span<byte> e = stackalloc byte[NvramLayout.TagEntryBytes];
        e.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(e, Magic);
        e[4] = Key.Unit;
        e[5] = Status;
        e[6] = (byte)table;
        BinaryPrimitives.WriteUInt64LittleEndian(e[8..], Sequence);
        BinaryPrimitives.WriteUInt64LittleEndian(e[16..], Key.HostId);
        BinaryPrimitives.WriteUInt64LittleEndian(e[24..], Key.HostTag);
        BinaryPrimitives.WriteUInt32LittleEndian(e[32..], Digest);
        BinaryPrimitives.WriteUInt32LittleEndian(e[CrcOffset..], Crc32C.Compute(e[..CrcOffset]));
        // The fields first, then (after a barrier) the CRC as one aligned 4-byte store: a store cut
        // anywhere leaves a slot that fails its CRC and reads as free.
        e[..CrcOffset].CopyTo(slot);
        Interlocked.MemoryBarrier();
        BinaryPrimitives.WriteUInt32LittleEndian(slot[CrcOffset..], BinaryPrimitives.ReadUInt32LittleEndian(e[CrcOffset..]));
    }

    /// <summary>The entry in slot <paramref name="slotIndex"/> of table <paramref name="table"/>, or
    /// null (with <paramref name="problem"/> unless the slot is simply free).</summary>
    public static HostTagEntry? Decode(ReadOnlySpan<byte> slot, int table, int slotIndex, out string? problem)
    {
        Invariant.Assert(slot.Length == NvramLayout.TagEntryBytes);
        problem = null;
        if (!slot.ContainsAnyExcept((byte)0)) return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(slot) != Magic) { problem = "no magic"; return null; }
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(slot[CrcOffset..]);
        uint computed = Crc32C.Compute(slot[..CrcOffset]);
        if (stored != computed) { problem = $"CRC32C mismatch (stored 0x{stored:x8}, computed 0x{computed:x8}): torn or damaged"; return null; }
        if (slot[6] != table) { problem = $"stamped for table {slot[6]}, found in table {table}"; return null; }
        if (slot[7] != 0 || slot[36..CrcOffset].ContainsAnyExcept((byte)0)) { problem = "reserved bytes set"; return null; }
        ulong sequence = BinaryPrimitives.ReadUInt64LittleEndian(slot[8..]);
        if (sequence == 0 || SlotOf(sequence) != slotIndex) { problem = $"sequence {sequence} does not belong in slot {slotIndex}"; return null; }
        var key = new HostTagKey(slot[4], BinaryPrimitives.ReadUInt64LittleEndian(slot[16..]), BinaryPrimitives.ReadUInt64LittleEndian(slot[24..]));
        return new HostTagEntry(key, BinaryPrimitives.ReadUInt32LittleEndian(slot[32..]), slot[5], sequence);
    }

    public override string ToString() => $"{Key} status {Status} digest {Digest:x8} (#{Sequence})";
}

/// <summary>
/// The tables of finished host commands over a controller's NVRAM, after the write logs: its own
/// (every host write this controller ran, recorded before the host is answered) and its copy of the
/// peer's (mirrored over the link). Each is a ring of <see cref="NvramLayout.TagSlots"/> entries
/// ordered by sequence: entry n lives in slot n mod TagSlots, so recording one evicts the entry
/// TagSlots commands older.
///
/// <code>
///   slot          0      1     ...   k       k+1    ...  4095        (TagSlots = 4096)
///   own table   #8192  #8193   ...  #8192+k  #4097+k ... #8191       newest #8192+k; the next goes to k+1,
///                                                                    evicting #4097+k
///   peer's copy   the same ring, filled with the peer's entries (its sequence numbers) as they arrive
/// </code>
///
/// Opening the table reads both rings back from NVRAM (kill -9 keeps every completed store; a power
/// cut what was written back): entries that fail their checks are skipped, and the own sequence
/// continues after the highest found. Lookups go through an in-memory index by key; the newest entry
/// of a key wins. Thread-safe; no clocks, no I/O beyond stores into the mapping.
/// </summary>
public sealed class HostTagTable
{
    const int Own = 1, Peer = 2;
    readonly NvramFile _nvram;
    readonly Lock _lock = new();
    readonly HostTagEntry?[] _own = new HostTagEntry?[NvramLayout.TagSlots];
    readonly HostTagEntry?[] _peer = new HostTagEntry?[NvramLayout.TagSlots];
    readonly Dictionary<HostTagKey, int> _ownIndex = [];
    readonly Dictionary<HostTagKey, int> _peerIndex = [];
    ulong _sequence;
    long _recorded, _mirrored, _stale;

    public HostTagTable(NvramFile nvram)
    {
        ArgumentNullException.ThrowIfNull(nvram);
        _nvram = nvram;
        var skipped = new List<string>();
        RecoveredOwn = Load(nvram.Own, Own, _own, _ownIndex, skipped);
        RecoveredPeer = Load(nvram.Peer, Peer, _peer, _peerIndex, skipped);
        Skipped = skipped;
        foreach (var e in _own)
            if (e is { } found) _sequence = Math.Max(_sequence, found.Sequence);
    }

    static int Load(NvramRegion region, int table, HostTagEntry?[] slots, Dictionary<HostTagKey, int> index, List<string> skipped)
    {
        int found = 0;
        for (int s = 0; s < NvramLayout.TagSlots; s++)
        {
            if (HostTagEntry.Decode(region.TagEntry(s), table, s, out var problem) is not { } e)
            {
                if (problem is not null) skipped.Add($"table {table} slot {s}: {problem}");
                continue;
            }
            slots[s] = e;
            found++;
            if (!index.TryGetValue(e.Key, out var other) || slots[other]!.Value.Sequence < e.Sequence) index[e.Key] = s;
        }
        return found;
    }

    public int Slots => NvramLayout.TagSlots;

    /// <summary>Entries of the own table found when the table was opened.</summary>
    public int RecoveredOwn { get; }
    /// <summary>Entries of the copy of the peer's table found when the table was opened.</summary>
    public int RecoveredPeer { get; }
    /// <summary>Slots that were not free and failed their checks when the table was opened, and why.</summary>
    public IReadOnlyList<string> Skipped { get; }

    public long Recorded => Interlocked.Read(ref _recorded);
    public long Mirrored => Interlocked.Read(ref _mirrored);
    /// <summary>Peer entries not stored because their slot already held a newer one.</summary>
    public long StaleMirrored => Interlocked.Read(ref _stale);

    public int OwnCount { get { lock (_lock) return _ownIndex.Count; } }
    public int PeerCount { get { lock (_lock) return _peerIndex.Count; } }

    /// <summary>The last sequence number of the own table (0: none yet).</summary>
    public ulong Sequence { get { lock (_lock) return _sequence; } }

    /// <summary>Records a finished command in the own table; whole in NVRAM when this returns.
    /// Returns the entry (for the peer's copy).</summary>
    public HostTagEntry Record(HostTagKey key, uint digest, byte status)
    {
        lock (_lock)
        {
            var entry = new HostTagEntry(key, digest, status, ++_sequence);
            StoreLocked(_nvram.Own, Own, _own, _ownIndex, entry);
            Interlocked.Increment(ref _recorded);
            return entry;
        }
    }

    /// <summary>Stores an entry of the peer's table in the same slot of the copy, unless that slot
    /// holds a newer one already (a pairing's resend may cross a live entry). False: not stored.</summary>
    public bool StoreMirrored(HostTagEntry entry)
    {
        Invariant.Assert(entry.Sequence != 0);
        lock (_lock)
        {
            if (_peer[entry.Slot] is { } held && held.Sequence > entry.Sequence)
            {
                Interlocked.Increment(ref _stale);
                return false;
            }
            StoreLocked(_nvram.Peer, Peer, _peer, _peerIndex, entry);
            Interlocked.Increment(ref _mirrored);
            return true;
        }
    }

    static void StoreLocked(NvramRegion region, int table, HostTagEntry?[] slots, Dictionary<HostTagKey, int> index, HostTagEntry entry)
    {
        int slot = entry.Slot;
        // Evict what the slot held: its key leaves the index unless a newer entry of that key lives elsewhere.
        if (slots[slot] is { } old && index.TryGetValue(old.Key, out var at) && at == slot) index.Remove(old.Key);
        entry.Encode(region.TagEntry(slot), table);
        slots[slot] = entry;
        if (!index.TryGetValue(entry.Key, out var other) || slots[other]!.Value.Sequence <= entry.Sequence) index[entry.Key] = slot;
        Invariant.Assert(index.Count <= NvramLayout.TagSlots);
    }

    /// <summary>The newest entry for <paramref name="key"/>: in the own table first, then in the copy of
    /// the peer's. <paramref name="peers"/> says which.</summary>
    public bool TryFind(HostTagKey key, out HostTagEntry entry, out bool peers)
    {
        lock (_lock)
        {
            if (_ownIndex.TryGetValue(key, out var s))
            {
                entry = _own[s]!.Value;
                peers = false;
                return true;
            }
            if (_peerIndex.TryGetValue(key, out s))
            {
                entry = _peer[s]!.Value;
                peers = true;
                return true;
            }
        }
        entry = default;
        peers = false;
        return false;
    }

    /// <summary>Every entry of the own table, oldest first (a pairing sends them to the peer).</summary>
    public IReadOnlyList<HostTagEntry> OwnEntries() => Entries(_own);

    /// <summary>Every entry of the copy of the peer's table, oldest first.</summary>
    public IReadOnlyList<HostTagEntry> PeerEntries() => Entries(_peer);

    IReadOnlyList<HostTagEntry> Entries(HostTagEntry?[] slots)
    {
        var list = new List<HostTagEntry>();
        lock (_lock)
            foreach (var e in slots)
                if (e is { } found) list.Add(found);
        list.Sort((a, b) => a.Sequence.CompareTo(b.Sequence));
        return list;
    }
}
