using System.Buffers.Binary;
using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Cache;

/// <summary>
/// One write-log record (AW-4): an array write that may have touched stripes [FirstBlock, +BlockCount)
/// (array blocks of 4 KiB) and is not yet known durable on the drives. 64 bytes in NVRAM,
/// little-endian:
/// <code>
///  0-3   magic "WLG1"
///  4     array number (MR-5)
///  5-7   zero
///  8-15  first array block
///  16-19 block count
///  20-23 zero
///  24-31 sequence (increasing per controller, across restarts)
///  32-59 zero
///  60-63 CRC32C over bytes 0-59
/// </code>
/// All zero is a free slot. A record that fails its CRC was being written or cleared when the
/// controller stopped: in both cases no stripe depends on it (a record is whole before its write
/// touches a drive, and is cleared only after the drives flushed), so it reads as free.
/// </summary>
public readonly record struct WriteLogRecord(byte Array, long FirstBlock, int BlockCount, ulong Sequence)
{
    public const uint Magic = 0x31474C57; // "WLG1"
    const int CrcOffset = NvramLayout.LogRecordBytes - sizeof(uint);

    public void Encode(Span<byte> slot)
    {
        Invariant.Assert(slot.Length == NvramLayout.LogRecordBytes);
        Invariant.Assert(FirstBlock >= 0 && BlockCount > 0);
        Span<byte> r = stackalloc byte[NvramLayout.LogRecordBytes];
        r.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(r, Magic);
        r[4] = Array;
        BinaryPrimitives.WriteInt64LittleEndian(r[8..], FirstBlock);
        BinaryPrimitives.WriteInt32LittleEndian(r[16..], BlockCount);
        BinaryPrimitives.WriteUInt64LittleEndian(r[24..], Sequence);
        BinaryPrimitives.WriteUInt32LittleEndian(r[CrcOffset..], Crc32C.Compute(r[..CrcOffset]));
        // The CRC covers the magic, so a store cut anywhere leaves a record that reads as free.
        r.CopyTo(slot);
    }

    /// <summary>The record in <paramref name="slot"/>, or null if the slot is free or torn.</summary>
    public static WriteLogRecord? Decode(ReadOnlySpan<byte> slot)
    {
        Invariant.Assert(slot.Length == NvramLayout.LogRecordBytes);
        if (BinaryPrimitives.ReadUInt32LittleEndian(slot) != Magic) return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(slot[CrcOffset..]) != Crc32C.Compute(slot[..CrcOffset])) return null;
        int count = BinaryPrimitives.ReadInt32LittleEndian(slot[16..]);
        long first = BinaryPrimitives.ReadInt64LittleEndian(slot[8..]);
        if (count <= 0 || first < 0) return null;
        return new WriteLogRecord(slot[4], first, count, BinaryPrimitives.ReadUInt64LittleEndian(slot[24..]));
    }

    public static void Clear(Span<byte> slot)
    {
        // The magic first: from then on the slot reads as free whatever the rest holds.
        BinaryPrimitives.WriteUInt32LittleEndian(slot, 0);
        Interlocked.MemoryBarrier();
        slot[4..].Clear();
    }

    public override string ToString() => $"array {Array} blocks {FirstBlock}+{BlockCount} (#{Sequence})";
}

/// <summary>
/// The write log of AW-4 over a controller's NVRAM. Its own log (after region 2's elements) holds a
/// record for every array write this controller started and whose stripes are not yet known durable:
/// opened before the write touches a drive, marked written when the write returns, and closed in a
/// batch once the array's drives have flushed. After a restart the records found are the stripes a
/// cut may have left with parity that disagrees with its data (<see cref="Recovered"/>): only those
/// are checked, never the whole array. The second log holds the peer's records, mirrored over the
/// link, for a takeover. Thread-safe; no clocks, no I/O beyond stores into the mapping.
/// </summary>
public sealed class WriteLog
{
    /// <summary>Failed: the record's write returned an error, so it may have torn the rows it changed; the record
    /// and its partial sums stay (not taken by a flush) until later writes have covered its blocks.</summary>
    enum SlotState : byte { Free, Open, Written, Closing, Recovered, Failed }

    readonly NvramFile _nvram;
    readonly Lock _lock = new();
    readonly SlotState[] _state = new SlotState[NvramLayout.LogSlots];
    readonly WriteLogRecord[] _records = new WriteLogRecord[NvramLayout.LogSlots];
    readonly Stack<int> _free = new();
    readonly List<(int Slot, WriteLogRecord Record)> _recovered = [];
    /// <summary>Per failed record: the blocks of its range no write opened after the failure has written since.</summary>
    readonly List<(long First, long End)>?[] _unsettled = new List<(long, long)>?[NvramLayout.LogSlots];
    /// <summary>Per failed record: the last sequence handed out when it failed (only later writes settle it).</summary>
    readonly ulong[] _failedAt = new ulong[NvramLayout.LogSlots];
    int _failedCount;
    /// <summary>The last open found the log full or the pool short: failed records give their slots and sums back.</summary>
    bool _pressed;
    long _failedWrites, _failedSettled;
    TaskCompletionSource? _slotFreed;
    TaskCompletionSource? _poolFreed;
    /// <summary>Pool entries the recovered records hold (until they are retired: not for new writes).</summary>
    int _heldByRecovered;
    long _poolWaits;
    readonly PartialParityPool _pp;
    /// <summary>Pool entries promised to each open record (its write's estimate), and their total.</summary>
    readonly int[] _reservedFor = new int[NvramLayout.LogSlots];
    /// <summary>Entries each open record's stripes claimed for the sums they are about to store
    /// (<see cref="TryClaimPartialSums"/>); counted in <see cref="_reserved"/> too.</summary>
    readonly int[] _claimedFor = new int[NvramLayout.LogSlots];
    int _reserved, _claimedTotal;
    /// <summary>Stripes that open records claimed sums for and finished writing: once their array is flushed, their
    /// sums may go (<see cref="ReleaseStripeSums"/>).</summary>
    readonly List<(int Slot, ulong Sequence, byte Array, long Stripe)> _stripesWritten = [];
    long _claimWaits, _stripeSumsReleased;
    ulong _sequence;
    long _opened, _closed, _waits, _ppStored, _ppUnguarded;

    public WriteLog(NvramFile nvram)
    {
        _nvram = nvram;
        for (int s = 0; s < NvramLayout.LogSlots; s++)
            if (WriteLogRecord.Decode(nvram.Peer.LogRecord(s)) is { } r) _sequence = Math.Max(_sequence, r.Sequence);
        for (int s = NvramLayout.LogSlots - 1; s >= 0; s--)
        {
            if (WriteLogRecord.Decode(nvram.Own.LogRecord(s)) is { } r)
            {
                _sequence = Math.Max(_sequence, r.Sequence);
                _state[s] = SlotState.Recovered;
                _records[s] = r;
                _recovered.Add((s, r));
            }
            else
            {
                WriteLogRecord.Clear(nvram.Own.LogRecord(s)); // torn: free
                _free.Push(s);
            }
        }
        _recovered.Sort((a, b) => a.Record.Sequence.CompareTo(b.Record.Sequence));
        _pp = new PartialParityPool(nvram, _recovered.ToDictionary(x => x.Slot, x => x.Record.Sequence));
        foreach (var (s, _) in _recovered) _heldByRecovered += _pp.CountOf(s);
    }

    /// <summary>Rows whose partial parity was stored in the pool.</summary>
    public long PartialParityStored => Interlocked.Read(ref _ppStored);
    /// <summary>Rows a write changed in part whose partial parity found no room in the pool (unguarded).</summary>
    public long PartialParityUnguarded => Interlocked.Read(ref _ppUnguarded);
    public int PartialParityFree { get { lock (_lock) return _pp.Free; } }
    public int PartialParityCapacity => _pp.Capacity;
    /// <summary>Pool entries promised to writes in flight and not stored yet.</summary>
    public int PartialParityReserved { get { lock (_lock) return _reserved; } }

    /// <summary>
    /// Stores the partial parity of one row the write of the open record in <paramref name="slot"/> changes in
    /// part, whole in NVRAM when this returns true; false (counted as unguarded) if the pool is full. A row
    /// stored twice for one record keeps both entries; settling uses any (they agree: each was taken before
    /// the record's write touched that row, or after an attempt whose writes all completed).
    /// </summary>
    public bool StorePartialParity(int slot, long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum)
    {
        int e;
        PartialParityEntry meta;
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Open, "partial parity belongs to a write in flight");
            var r = _records[slot];
            bool claimed = _claimedFor[slot] > 0;
            if (claimed)
            {
                _claimedFor[slot]--;
                _claimedTotal--;
                _reserved--;
            }
            else if (_reservedFor[slot] > 0)
            {
                _reservedFor[slot]--;
                _reserved--;
            }
            else if (_pp.Free <= _reserved) // beyond the write's estimate, and what is left is promised to others
            {
                Interlocked.Increment(ref _ppUnguarded);
                return false;
            }
            // What is left is claimed by stripes about to store (a claim does not respect promises; see TryClaimPartialSums).
            if (!claimed && _pp.Free <= _claimedTotal || !_pp.TryReserve(out e))
            {
                Interlocked.Increment(ref _ppUnguarded);
                return false;
            }
            meta = new PartialParityEntry(r.Array, slot, r.Sequence, stripe, row, unchanged);
        }
        // The 4 KiB copy and its CRC outside the lock: the entry is this write's alone until it is indexed.
        _pp.Write(e, meta, sum);
        lock (_lock)
        {
            if (_state[slot] != SlotState.Open || _records[slot].Sequence != meta.Sequence)
            {
                // The record was dropped meanwhile (the log discarded: a standby rejoin); so is its sum.
                _pp.Drop(e);
                return false;
            }
            _pp.Index(e, meta);
        }
        Interlocked.Increment(ref _ppStored);
        return true;
    }

    /// <summary>The write of the open record in <paramref name="slot"/> is about to change a row: the sums other
    /// records hold for it are stale (the array flushed what they wrote there) and are freed.</summary>
    public void SupersedePartialParity(int slot, long stripe, int row)
    {
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Open, "partial parity belongs to a write in flight");
            if (_pp.Supersede(_records[slot].Array, stripe, row, slot) > 0) SignalPoolLocked();
        }
    }

    /// <summary>The partial parity a recovered record's write stored (for settling its stripes).</summary>
    public List<(PartialParityEntry Meta, byte[] Sum)> RecoveredPartialParity(int slot)
    {
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Recovered);
            return _pp.Of(slot);
        }
    }

    public int Slots => NvramLayout.LogSlots;

    /// <summary>Records found in the own log when it was opened and not yet retired: writes a stop interrupted.</summary>
    public IReadOnlyList<(int Slot, WriteLogRecord Record)> Recovered { get { lock (_lock) return [.. _recovered]; } }

    public int FreeSlots { get { lock (_lock) return _free.Count; } }
    /// <summary>Records in the own log (open, written, closing or recovered).</summary>
    public int LiveCount { get { lock (_lock) return NvramLayout.LogSlots - _free.Count; } }
    public long Opened => Interlocked.Read(ref _opened);
    public long Closed => Interlocked.Read(ref _closed);
    /// <summary>Times a write waited for a free slot.</summary>
    public long Waits => Interlocked.Read(ref _waits);

    /// <summary>For diagnostics: how many slots are in each state, and whether a write waits for a slot.</summary>
    public string DescribeState()
    {
        lock (_lock)
        {
            var counts = new int[6];
            foreach (var st in _state) counts[(int)st]++;
            return $"open {counts[1]}, written {counts[2]}, closing {counts[3]}, recovered {counts[4]}, failed {counts[5]}, free {counts[0]}, slot waiter {(_slotFreed is null ? "no" : "yes")}";
        }
    }

    /// <summary>
    /// Start-up recovery: hands every recovered record, oldest first, to <paramref name="settle"/>, which
    /// checks its stripes (or finds them not this controller's) and returns true, or returns false to keep
    /// the record for a later start. The records settled are retired only after <paramref name="flush"/>
    /// returned true (the drives flushed: what settling wrote is durable; a cut before that finds the records
    /// again). Returns how many were retired.
    /// </summary>
    public async Task<int> SettleRecoveredAsync(Func<int, WriteLogRecord, Task<bool>> settle, Func<Task<bool>>? flush = null)
    {
        var done = new List<int>();
        foreach (var (slot, record) in Recovered)
            if (await settle(slot, record)) done.Add(slot);
        if (done.Count == 0) return 0;
        if (flush is not null && !await flush()) return 0;
        foreach (int slot in done) Retire(slot);
        return done.Count;
    }

    /// <summary>A recovered record's stripes were checked (or belong to another controller now): frees it.</summary>
    public void Retire(int slot)
    {
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Recovered, "only a recovered write-log record is retired");
            _recovered.RemoveAll(x => x.Slot == slot);
            _heldByRecovered -= _pp.CountOf(slot);
            FreeLocked(slot);
        }
    }

    /// <summary>Opens a record, whole in NVRAM before this returns, and promises its write up to
    /// <paramref name="partialSums"/> entries of the partial-parity pool (as many as are not promised to
    /// others; a sum that finds no room is counted unguarded); false if every slot is taken, or if the pool
    /// cannot promise the write its need (see the overload with <c>poolShort</c>).</summary>
    public bool TryOpen(byte array, long firstBlock, int blockCount, out int slot, out WriteLogRecord record, int partialSums = 0) =>
        TryOpen(array, firstBlock, blockCount, out slot, out record, partialSums, out _);

    /// <summary>As <see cref="TryOpen(byte, long, int, out int, out WriteLogRecord, int)"/>; also false, with
    /// <paramref name="poolShort"/>, while the pool cannot promise the write its need (<see cref="PoolRoomAsync"/>).</summary>
    public bool TryOpen(byte array, long firstBlock, int blockCount, out int slot, out WriteLogRecord record, int partialSums, out bool poolShort)
    {
        lock (_lock)
        {
            int promise = Math.Max(0, Math.Min(partialSums, _pp.Free - _reserved));
            poolShort = false;
            if (_free.Count == 0)
            {
                slot = -1;
                record = default;
                Interlocked.Increment(ref _waits);
                _pressed = true;
                return false;
            }
            if (promise < NeedLocked(partialSums))
            {
                // A sum refused later could leave a torn row with nothing to rebuild a lost member's block from.
                slot = -1;
                record = default;
                poolShort = true;
                _pressed = true;
                Interlocked.Increment(ref _poolWaits);
                return false;
            }
            slot = _free.Pop();
            _pressed = false;
            if (promise > 0)
            {
                _reservedFor[slot] = promise;
                _reserved += promise;
            }
            Invariant.Assert(_state[slot] == SlotState.Free);
            record = new WriteLogRecord(array, firstBlock, blockCount, ++_sequence);
            record.Encode(_nvram.Own.LogRecord(slot));
            _state[slot] = SlotState.Open;
            _records[slot] = record;
            Interlocked.Increment(ref _opened);
            return true;
        }
    }

    /// <summary>Completes when a record is freed or a write returns (or at once if a slot is free).</summary>
    public Task SlotFreedAsync()
    {
        lock (_lock)
        {
            if (_free.Count > 0) return Task.CompletedTask;
            _slotFreed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _slotFreed.Task;
        }
    }

    /// <summary>
    /// The write of <paramref name="slot"/> returned. Done, its record waits for the array's next flush, and
    /// it settles what failed records of the array it covers. <paramref name="failed"/>: the write may have
    /// torn the rows it changed (some members written, others not) and the row's blocks on a member that cannot
    /// be read are known only from its partial sums; so the record and its sums stay, past any flush, until
    /// writes opened after the failure (the cache's recovery writes) have written its blocks again (or a full
    /// log needs its slot: <see cref="TakeWritten"/>). Until then <see cref="HeldPartialParity"/> gives its sums to them.
    /// </summary>
    public void Written(int slot, bool failed = false)
    {
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Open, "a write-log record is written once, after it was opened");
            ReleasePromiseLocked(slot);
            var r = _records[slot];
            if (failed && _pp.CountOf(slot) > 0)
            {
                _state[slot] = SlotState.Failed;
                _unsettled[slot] = [(r.FirstBlock, r.FirstBlock + r.BlockCount)];
                _failedAt[slot] = _sequence;
                _failedCount++;
                Interlocked.Increment(ref _failedWrites);
                return;
            }
            _state[slot] = SlotState.Written;
            if (!failed && _failedCount > 0) SettleFailedLocked(r);
        }
    }

    /// <summary>
    /// The write of <paramref name="slot"/> did not start (nothing of it reached a drive): its record waits for the
    /// array's next flush like a written one, but it settles nothing: a write that never ran has not written a failed
    /// record's blocks again. (Taken for written, it let a failed write's sums go with its torn rows unsettled:
    /// simulator seed 9834.)
    /// </summary>
    public void NotStarted(int slot)
    {
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Open, "a write-log record is written once, after it was opened");
            ReleasePromiseLocked(slot);
            _state[slot] = SlotState.Written;
        }
    }

    /// <summary>A write waits for a slot or for pool room, and nothing but failed records holds them (no write in
    /// flight, none written and waiting for a flush): the writes that would settle them cannot open a record, so their
    /// rows are settled from their sums instead (<see cref="FailedRecords"/>, <see cref="FailedSettled"/>).</summary>
    public bool OnlyFailedHold { get { lock (_lock) return OnlyFailedHoldLocked(); } }

    /// <summary>Whether a failed record is kept (a hint, read without the lock).</summary>
    public bool AnyFailed => Volatile.Read(ref _failedCount) > 0;

    bool OnlyFailedHoldLocked()
    {
        if (!_pressed || _failedCount == 0) return false;
        foreach (var st in _state)
            if (st is SlotState.Open or SlotState.Written or SlotState.Closing) return false;
        return true;
    }

    /// <summary>A write opened after some failures returned well: the blocks it wrote are settled in those records.</summary>
    void SettleFailedLocked(WriteLogRecord done)
    {
        long first = done.FirstBlock, end = done.FirstBlock + done.BlockCount;
        for (int s = 0; s < _state.Length; s++)
        {
            if (_state[s] != SlotState.Failed || _records[s].Array != done.Array || done.Sequence <= _failedAt[s]) continue;
            var left = _unsettled[s]!;
            for (int i = left.Count - 1; i >= 0; i--)
            {
                var (a, b) = left[i];
                if (b <= first || a >= end) continue;
                left.RemoveAt(i);
                if (a < first) left.Add((a, first));
                if (b > end) left.Add((end, b));
            }
            if (left.Count == 0) ToWrittenLocked(s);
        }
    }

    void ToWrittenLocked(int s)
    {
        Invariant.Assert(_state[s] == SlotState.Failed);
        _state[s] = SlotState.Written;
        _unsettled[s] = null;
        _failedCount--;
        Interlocked.Increment(ref _failedSettled);
    }

    /// <summary>
    /// The failed records (of <paramref name="array"/>, or of every array) with the block ranges later writes have
    /// not written again: the rows there may be torn, and a block of them on a member that cannot be read is known only
    /// from the record's sums. Settling those rows with the sums (<see cref="HeldPartialParity"/>) and then
    /// <see cref="FailedSettled"/> lets the record go without losing what its sums hold.
    /// </summary>
    public List<(int Slot, ulong Sequence, byte Array, List<(long First, long End)> Unsettled)> FailedRecords(byte? array = null)
    {
        var found = new List<(int, ulong, byte, List<(long, long)>)>();
        lock (_lock)
        {
            if (_failedCount == 0) return found;
            for (int s = 0; s < _state.Length; s++)
                if (_state[s] == SlotState.Failed && (array is null || _records[s].Array == array))
                    found.Add((s, _records[s].Sequence, _records[s].Array, [.. _unsettled[s]!]));
        }
        return found;
    }

    /// <summary>The rows the failed record (<paramref name="slot"/>, <paramref name="sequence"/>) may have torn were
    /// settled from its sums: it waits for the next flush of its array, as a written record does, and goes with it.</summary>
    public void FailedSettled(int slot, ulong sequence) => EndFailed(slot, sequence, settled: true);

    /// <summary>The failed record's rows cannot be settled (its array has failed: more members lost than it survives):
    /// it waits for the next flush as a written record does, and its sums go with it.</summary>
    public void FailedGivenUp(int slot, ulong sequence) => EndFailed(slot, sequence, settled: false);

    void EndFailed(int slot, ulong sequence, bool settled)
    {
        lock (_lock)
            if (_state[slot] == SlotState.Failed && _records[slot].Sequence == sequence)
            {
                ToWrittenLocked(slot);
                if (settled) Interlocked.Increment(ref _failedSettledBySettle);
            }
    }

    long _failedSettledBySettle;

    /// <summary>Failed records whose rows were settled from their own sums (<see cref="FailedSettled"/>) rather than by later writes.</summary>
    public long FailedSettledBySettle => Interlocked.Read(ref _failedSettledBySettle);

    /// <summary>Writes that failed with partial sums kept (<see cref="Written"/>), and how many of them later writes settled.</summary>
    public (long Failed, long Settled, int Held) FailedWrites { get { lock (_lock) return (Interlocked.Read(ref _failedWrites), Interlocked.Read(ref _failedSettled), _failedCount); } }

    /// <summary>
    /// The partial sums failed records of <paramref name="array"/> hold for rows [<paramref name="rowLo"/>, +<paramref name="rowCount"/>)
    /// of <paramref name="stripe"/>, with copies of their blocks: what a later write of those rows rebuilds a lost
    /// member's block from, instead of parity the failure may have torn.
    /// </summary>
    public List<(PartialParityEntry Meta, byte[] Sum)> HeldPartialParity(byte array, long stripe, int rowLo, int rowCount)
    {
        lock (_lock)
        {
            if (_failedCount == 0) return [];
            return _pp.OfRows(array, stripe, rowLo, rowCount, s => _state[s] == SlotState.Failed);
        }
    }

    void ReleasePromiseLocked(int slot)
    {
        _reserved -= _reservedFor[slot] + _claimedFor[slot];
        _claimedTotal -= _claimedFor[slot];
        _reservedFor[slot] = 0;
        _claimedFor[slot] = 0;
        Invariant.Assert(_reserved >= 0);
        SignalPoolLocked();
    }

    void SignalPoolLocked()
    {
        var waiter = _poolFreed;
        _poolFreed = null;
        waiter?.TrySetResult();
    }

    /// <summary>How many pool entries a write asking for <paramref name="partialSums"/> must be promised before its
    /// record opens: all it asks for, up to half the pool that recovered records do not hold (a write larger than
    /// that is guarded as far as its promise and what is free go; one write never waits for the whole pool).</summary>
    int NeedLocked(int partialSums) => Math.Min(partialSums, Math.Max(0, (_pp.Capacity - _heldByRecovered) / 2));

    /// <summary>Completes when pool entries may have been freed or promises handed back (or at once if a write
    /// asking for <paramref name="partialSums"/> would be promised its need now).</summary>
    public Task PoolRoomAsync(int partialSums)
    {
        lock (_lock)
        {
            if (_pp.Free - _reserved >= NeedLocked(partialSums)) return Task.CompletedTask;
            _poolFreed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _poolFreed.Task;
        }
    }

    /// <summary>
    /// A stripe of the open record in <paramref name="slot"/> is about to store <paramref name="sums"/> sums: true
    /// once that many free entries are set aside for them, so none of its stores is refused. A claim takes the
    /// record's own promise first; it does not respect what other records were promised but have not claimed (a
    /// write waiting for a stripe's lock held by a write waiting here would hold its promise for ever), only other
    /// claims, which are stored at once. False with <paramref name="room"/>, which completes when entries may have
    /// been freed. False with <paramref name="never"/> if the pool, less what recovered records hold, is smaller than
    /// the need: the stripe goes on and a refused sum is counted unguarded, as before.
    /// With <paramref name="rows"/> (the rows of the stripe the write changes), the entries other records hold for those
    /// rows count as room, and a claim that succeeds frees them then (<see cref="SupersedePartialParity"/>), not before:
    /// superseded by a write that then fails before it stores its own sums (its claim cut by a flush the drives did not
    /// answer), a failed write's sums for rows it may have torn would be lost.
    /// </summary>
    public bool TryClaimPartialSums(int slot, int sums, out Task? room, out bool never, (long Stripe, int RowLo, int RowCount)? rows = null)
    {
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Open, "sums are claimed by a write in flight");
            room = null;
            never = sums > _pp.Capacity - _heldByRecovered;
            if (never) return false;
            byte array = _records[slot].Array;
            int stale = rows is { } rs ? _pp.CountOthers(array, rs.Stripe, rs.RowLo, rs.RowCount, slot) : 0;
            if (_pp.Free + stale - _claimedTotal >= sums)
            {
                if (rows is { } rw)
                    for (int r = rw.RowLo; r < rw.RowLo + rw.RowCount; r++) _pp.Supersede(array, rw.Stripe, r, slot);
                int fromOwn = Math.Min(sums, _reservedFor[slot]);
                _reservedFor[slot] -= fromOwn;
                _claimedFor[slot] += sums;
                _claimedTotal += sums;
                _reserved += sums - fromOwn;
                return true;
            }
            Interlocked.Increment(ref _claimWaits);
            _pressed = true;
            _poolFreed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            room = _poolFreed.Task;
            return false;
        }
    }

    /// <summary>The write of the open record in <paramref name="slot"/>, which claimed sums for
    /// <paramref name="stripe"/>, finished writing it: kept until <see cref="TakeStripesWritten"/>; a waiter for room
    /// is woken.</summary>
    public void StripeWritten(int slot, long stripe)
    {
        lock (_lock)
        {
            if (_state[slot] != SlotState.Open) return;
            _stripesWritten.Add((slot, _records[slot].Sequence, _records[slot].Array, stripe));
            SignalPoolLocked();
        }
    }

    /// <summary>Before a flush: the stripes written so far whose sums may go once their arrays are flushed.</summary>
    public List<(int Slot, ulong Sequence, byte Array, long Stripe)> TakeStripesWritten()
    {
        lock (_lock)
        {
            var taken = new List<(int, ulong, byte, long)>(_stripesWritten);
            _stripesWritten.Clear();
            return taken;
        }
    }

    /// <summary>After a flush of their arrays: frees the sums the stripes <paramref name="written"/> (taken before the
    /// flush started) stored, for the records still open.</summary>
    /// <returns>The stripes whose sums went (the peer holds copies of them: they are released there too).</returns>
    public List<(int Slot, ulong Sequence, byte Array, long Stripe)> ReleaseStripeSums(List<(int Slot, ulong Sequence, byte Array, long Stripe)> written)
    {
        var released = new List<(int, ulong, byte, long)>();
        lock (_lock)
        {
            int n = 0;
            foreach (var w in written)
                if (_state[w.Slot] == SlotState.Open && _records[w.Slot].Sequence == w.Sequence && _pp.ReleaseStripe(w.Slot, w.Stripe) is var k and > 0)
                {
                    n += k;
                    released.Add(w);
                }
            _stripeSumsReleased += n;
            if (n > 0) SignalPoolLocked();
        }
        return released;
    }

    /// <summary>Times a stripe waited for room for its sums (<see cref="TryClaimPartialSums"/>).</summary>
    public long ClaimWaits => Interlocked.Read(ref _claimWaits);
    /// <summary>Sums freed early: their stripes were written and flushed while their write went on.</summary>
    public long StripeSumsReleased { get { lock (_lock) return _stripeSumsReleased; } }

    /// <summary>Times a write waited for room in the partial-parity pool.</summary>
    public long PoolWaits => Interlocked.Read(ref _poolWaits);

    /// <summary>Arrays with written records waiting for a flush.</summary>
    public IReadOnlyList<byte> ArraysWaitingForFlush()
    {
        var arrays = new List<byte>();
        lock (_lock)
            for (int s = 0; s < _state.Length; s++)
                if (_state[s] == SlotState.Written && !arrays.Contains(_records[s].Array))
                    arrays.Add(_records[s].Array);
        return arrays;
    }

    /// <summary>Before a flush of <paramref name="array"/>: takes its written records (their writes
    /// returned before the flush starts, so the flush covers them). Failed records stay, with their sums (see
    /// <see cref="Written"/>), until later writes or a settle of their rows (<see cref="FailedSettled"/>) settle them.</summary>
    public int[] TakeWritten(byte array)
    {
        lock (_lock)
        {
            int n = 0;
            for (int s = 0; s < _state.Length; s++)
                if (_state[s] == SlotState.Written && _records[s].Array == array) n++;
            if (n == 0) return [];
            var taken = new int[n];
            n = 0;
            for (int s = 0; s < _state.Length; s++)
                if (_state[s] == SlotState.Written && _records[s].Array == array)
                {
                    _state[s] = SlotState.Closing;
                    taken[n++] = s;
                }
            return taken;
        }
    }

    /// <summary>The flush that followed <see cref="TakeWritten"/> failed: the records wait for the next one.</summary>
    public void FlushFailed(int[] slots)
    {
        lock (_lock)
            foreach (int s in slots)
            {
                Invariant.Assert(_state[s] == SlotState.Closing);
                _state[s] = SlotState.Written;
            }
    }

    /// <summary>The flush that followed <see cref="TakeWritten"/> succeeded: the records are cleared.</summary>
    public WriteLogRecord[] Close(int[] slots)
    {
        var closed = new WriteLogRecord[slots.Length];
        lock (_lock)
            for (int i = 0; i < slots.Length; i++)
            {
                int s = slots[i];
                Invariant.Assert(_state[s] == SlotState.Closing);
                closed[i] = _records[s];
                FreeLocked(s);
                Interlocked.Increment(ref _closed);
            }
        return closed;
    }

    /// <summary>Frees the written records of an array this controller no longer writes to; returns how many.</summary>
    public int Abandon(byte array)
    {
        int n = 0;
        lock (_lock)
            for (int s = 0; s < _state.Length; s++)
                if (_state[s] is SlotState.Written or SlotState.Failed && _records[s].Array == array)
                {
                    if (_state[s] == SlotState.Failed) ToWrittenLocked(s);
                    FreeLocked(s);
                    n++;
                }
        return n;
    }

    /// <summary>The record of the write in flight in <paramref name="slot"/> (its write holds the slot, so it stays).</summary>
    public WriteLogRecord OpenRecord(int slot)
    {
        lock (_lock)
        {
            Invariant.Assert(_state[slot] == SlotState.Open, "the record of a write in flight");
            return _records[slot];
        }
    }

    /// <summary>Every record of the own log (for a pairing: the peer's mirror of them starts empty).</summary>
    public IReadOnlyList<(int Slot, WriteLogRecord Record)> Live()
    {
        var live = new List<(int, WriteLogRecord)>();
        lock (_lock)
            for (int s = 0; s < _state.Length; s++)
                if (_state[s] != SlotState.Free) live.Add((s, _records[s]));
        return live;
    }

    /// <summary>Forgets every own record (the controller discarded its NVRAM: it was taken over).</summary>
    public void DiscardOwn()
    {
        lock (_lock)
        {
            for (int s = 0; s < _state.Length; s++)
                if (_state[s] != SlotState.Free)
                {
                    Invariant.Assert(_state[s] == SlotState.Recovered, "only a controller that has not written yet discards its log");
                    FreeLocked(s);
                }
            _recovered.Clear();
            _heldByRecovered = 0;
        }
    }

    void FreeLocked(int slot)
    {
        WriteLogRecord.Clear(_nvram.Own.LogRecord(slot));
        _pp.Release(slot);
        ReleasePromiseLocked(slot);
        if (_stripesWritten.Count > 0) _stripesWritten.RemoveAll(x => x.Slot == slot);
        SignalPoolLocked();
        _state[slot] = SlotState.Free;
        _records[slot] = default;
        _free.Push(slot);
        var waiter = _slotFreed;
        _slotFreed = null;
        waiter?.TrySetResult();
    }

    // ---- the peer's log (region 2's), mirrored over the link ----------------------------------

    /// <summary>Stores the peer's record in its slot of the mirrored log.</summary>
    public void StoreMirrored(int slot, WriteLogRecord record)
    {
        lock (_lock)
        {
            record.Encode(_nvram.Peer.LogRecord(slot));
            _sequence = Math.Max(_sequence, record.Sequence);
            if (_peerSums.TryGetValue(slot, out var held) && held.Sequence != record.Sequence) DropPeerSumsLocked(slot);
        }
    }

    /// <summary>Clears the peer's record in <paramref name="slot"/> if it is still the one with <paramref name="sequence"/>.</summary>
    public void ClearMirrored(int slot, ulong sequence)
    {
        lock (_lock)
        {
            var span = _nvram.Peer.LogRecord(slot);
            if (WriteLogRecord.Decode(span) is { } r && r.Sequence == sequence) WriteLogRecord.Clear(span);
            if (_peerSums.TryGetValue(slot, out var held) && held.Sequence == sequence) DropPeerSumsLocked(slot);
        }
    }

    public void ClearAllMirrored()
    {
        lock (_lock)
        {
            for (int s = 0; s < NvramLayout.LogSlots; s++) WriteLogRecord.Clear(_nvram.Peer.LogRecord(s));
            _peerSums.Clear();
            _peerSumCount = 0;
        }
    }

    // ---- the peer's partial sums (AW-4 with AW-3) ---------------------------------------------------------------
    // While an array has a member that cannot be read, its owner sends us each partial sum it stores beside a record
    // (after the record's "started", before the write touches a drive): a takeover then rebuilds that member's blocks
    // of the rows the write may have torn from them, not from parity the tear left stale. Kept in memory, by the
    // record's slot, and dropped with the record; at most twice our own pool's entries (a peer that sends more
    // is refused the rest, which are counted).
    readonly Dictionary<int, (ulong Sequence, List<(PartialParityEntry Meta, byte[] Sum)> Sums)> _peerSums = [];
    int _peerSumCount;
    long _peerSumsRefused;

    /// <summary>Partial sums of the peer held here now.</summary>
    public int PeerPartialSums { get { lock (_lock) return _peerSumCount; } }

    /// <summary>Partial sums of the peer refused: no record of theirs here, or more than this log keeps.</summary>
    public long PeerPartialSumsRefused => Interlocked.Read(ref _peerSumsRefused);

    /// <summary>Keeps a partial sum of the peer's record (<paramref name="slot"/>, <paramref name="sequence"/>); false
    /// (refused, counted) if that record is not in our copy of its log, the array is not the record's, or we hold as
    /// many as we keep.</summary>
    public bool StoreMirroredSum(int slot, ulong sequence, byte array, long stripe, int row, ulong unchanged, byte[] sum)
    {
        Invariant.Assert(sum.Length == NvramLayout.PpBlockBytes);
        lock (_lock)
        {
            if ((uint)slot >= (uint)NvramLayout.LogSlots || WriteLogRecord.Decode(_nvram.Peer.LogRecord(slot)) is not { } r ||
                r.Sequence != sequence || r.Array != array || _peerSumCount >= 2 * _nvram.Layout.PpSlots)
            {
                Interlocked.Increment(ref _peerSumsRefused);
                return false;
            }
            if (!_peerSums.TryGetValue(slot, out var held)) _peerSums[slot] = held = (sequence, []);
            held.Sums.Add((new PartialParityEntry(array, slot, sequence, stripe, row, unchanged), sum));
            _peerSumCount++;
            return true;
        }
    }

    /// <summary>The peer freed the sums its record (<paramref name="slot"/>, <paramref name="sequence"/>) holds for
    /// <paramref name="stripe"/> (that stripe is written and flushed); drops our copies. Returns how many.</summary>
    public int DropMirroredStripe(int slot, ulong sequence, byte array, long stripe)
    {
        lock (_lock)
        {
            if (!_peerSums.TryGetValue(slot, out var held) || held.Sequence != sequence) return 0;
            int n = held.Sums.RemoveAll(x => x.Meta.Array == array && x.Meta.Stripe == stripe);
            _peerSumCount -= n;
            return n;
        }
    }

    void DropPeerSumsLocked(int slot)
    {
        if (_peerSums.Remove(slot, out var held)) _peerSumCount -= held.Sums.Count;
    }

    /// <summary>The partial sums the peer's records of <paramref name="array"/> hold here (each with its record's sequence).</summary>
    public List<(PartialParityEntry Meta, byte[] Sum)> MirroredPartialParity(byte array)
    {
        var found = new List<(PartialParityEntry, byte[])>();
        lock (_lock)
            foreach (var (_, held) in _peerSums)
                foreach (var x in held.Sums)
                    if (x.Meta.Array == array) found.Add(x);
        return found;
    }

    /// <summary>The partial sums an open record of ours holds (a pairing sends them to the peer again).</summary>
    public List<(PartialParityEntry Meta, byte[] Sum)> PartialParityOf(int slot)
    {
        lock (_lock) return _pp.Of(slot);
    }

    /// <summary>The peer's records, oldest first.</summary>
    public IReadOnlyList<(int Slot, WriteLogRecord Record)> Mirrored()
    {
        var list = new List<(int Slot, WriteLogRecord Record)>();
        lock (_lock)
            for (int s = 0; s < NvramLayout.LogSlots; s++)
                if (WriteLogRecord.Decode(_nvram.Peer.LogRecord(s)) is { } r) list.Add((s, r));
        list.Sort((a, b) => a.Record.Sequence.CompareTo(b.Record.Sequence));
        return list;
    }

    /// <summary>A record's id on the link: its slot in the low 16 bits, its sequence above.</summary>
    public static ulong LinkId(int slot, ulong sequence) => (sequence << 16) | (uint)slot;

    public static (int Slot, ulong Sequence) FromLinkId(ulong id) => ((int)(id & 0xFFFF), id >> 16);
}
