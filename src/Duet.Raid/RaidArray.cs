using System.Buffers;
using System.Diagnostics;
using Duet.Core;
using Duet.Raid.Parity;
using Microsoft.Extensions.Logging;

namespace Duet.Raid;

public enum MemberStatus
{
    Active,
    /// <summary>Failed or absent: neither read nor written.</summary>
    Missing,
    /// <summary>Written always; read only below the rebuild position.</summary>
    Rebuilding,
}

/// <summary>A member became unusable during a request; the array goes on without it.</summary>
internal sealed class MemberFailedException(int slot, Exception inner) : Exception($"member {slot} failed: {inner.Message}", inner)
{
    public int Slot { get; } = slot;
}

/// <summary>
/// A RAID array: the executor of stripe plans over its members.
///
/// Requests address the array in 512-byte sectors and are split per stripe; each stripe is
/// handled under its stripe lock (one of 1024 striped locks), so a stripe's data, parity and
/// tags change together and a read never sees a half-written stripe. Parity levels (0/5/6)
/// follow <see cref="StripePlanner"/>'s plans; mirrors (1/10) write every copy and read one.
///
/// Every member block read is checked against its tag. A block that fails (or sits on a
/// missing member) is reconstructed from the rest of its row and checked again against its
/// tag; a block found bad on a working member is rewritten with the repaired data. A member
/// whose drive fails is dropped (<see cref="MemberFailed"/>) and the request carries on
/// degraded, as long as the level survives the loss.
/// </summary>
public sealed partial class RaidArray
{
    const int StripeLockCount = 1024;
    readonly AsyncGate[] _stripeLocks;
    readonly MemberDisk?[] _members;
    readonly MemberStatus[] _status;
    readonly long[] _rebuiltStripes;
    readonly Lock _stateLock = new();
    readonly TimeProvider _time;
    readonly ILogger _logger;
    int _rotor;

    public RaidArray(string name, Guid uuid, ArrayGeometry geometry, MemberDisk?[] members, MemberStatus[] status,
        TimeProvider time, ILogger logger)
    {
        Invariant.Assert(members.Length == geometry.MemberCount && status.Length == geometry.MemberCount);
        Name = name;
        Uuid = uuid;
        Geometry = geometry;
        _members = members;
        _status = status;
        for (int m = 0; m < members.Length; m++)
        {
            Invariant.Assert(members[m] is not null || status[m] == MemberStatus.Missing);
            Invariant.Assert(members[m] is null || members[m]!.Slot == m);
        }
        _rebuiltStripes = new long[geometry.MemberCount];
        _failurePersisted = new Task?[geometry.MemberCount];
        _stripeLocks = new AsyncGate[StripeLockCount];
        for (int i = 0; i < _stripeLocks.Length; i++) _stripeLocks[i] = new AsyncGate(1, 1);
        _time = time;
        _logger = logger;
    }

    public string Name { get; }
    public Guid Uuid { get; }
    public ArrayGeometry Geometry { get; }
    public long CapacitySectors => Geometry.CapacityBlocks * Units.SectorsPerBlock;

    /// <summary>
    /// Records a dropped member durably (the array manager writes it to the surviving members'
    /// superblocks). Every request that ran without the member waits for it before it completes,
    /// so no write is acknowledged while a restart could still take the stale member for current.
    /// </summary>
    public Func<int, string, Task>? PersistMemberFailure { get; set; }
    readonly Task?[] _failurePersisted;

    public MemberDisk? Member(int slot) => _members[slot];

    public MemberStatus Status(int slot) { lock (_stateLock) return _status[slot]; }

    public long RebuiltStripes(int slot) => Volatile.Read(ref _rebuiltStripes[slot]);

    /// <summary>Slots that cannot serve reads at all right now.</summary>
    public IReadOnlyList<int> LostSlots()
    {
        lock (_stateLock)
            return Enumerable.Range(0, Geometry.MemberCount).Where(m => _status[m] != MemberStatus.Active).ToList();
    }

    public bool IsFailed => !Geometry.IsSurvivable(LostSlots());

    bool Readable(int m, long stripe)
    {
        var s = _status[m];
        return _members[m] is not null && (s == MemberStatus.Active || (s == MemberStatus.Rebuilding && stripe < Volatile.Read(ref _rebuiltStripes[m])));
    }

    bool DataMemberUnreadable(long stripe)
    {
        for (int i = 0; i < Geometry.DataMembers; i++)
            if (!Readable(Geometry.DataMember(stripe, i), stripe)) return true;
        return false;
    }

    bool Writable(int m) => _members[m] is not null && _status[m] != MemberStatus.Missing;

    /// <summary>Drops a member: it is neither read nor written from now on. The task completes when
    /// the failure is durable (see <see cref="PersistMemberFailure"/>).</summary>
    public Task FailMember(int slot, string reason)
    {
        lock (_stateLock)
        {
            if (_status[slot] == MemberStatus.Missing) return _failurePersisted[slot] ?? Task.CompletedTask;
            _status[slot] = MemberStatus.Missing;
            _failurePersisted[slot] = null;
        }
        LogMemberFailed(Name, slot, _members[slot]?.Drive.Name ?? "-", reason);
        var persisted = PersistMemberFailure?.Invoke(slot, reason) ?? Task.CompletedTask;
        lock (_stateLock) _failurePersisted[slot] ??= persisted;
        return persisted;
    }

    // ---- requests --------------------------------------------------------------------

    public ValueTask ReadAsync(long sector, Memory<byte> destination, CancellationToken ct = default) =>
        ForEachStripeAsync(sector, destination.Length, (s, lo, hi, offset) => ReadStripeAsync(s, lo, hi, destination.Slice(offset, (int)((hi - lo) * Units.SectorBytes)), ct));

    public ValueTask WriteAsync(long sector, ReadOnlyMemory<byte> source, CancellationToken ct = default) => WriteCoreAsync(sector, source, recovery: false, guard: null, ct);

    /// <summary>As <see cref="WriteAsync(long, ReadOnlyMemory{byte}, CancellationToken)"/>, keeping in <paramref name="guard"/> the
    /// partial parity of every row the write changes in part, before any drive is written (parity levels).</summary>
    public ValueTask WriteAsync(long sector, ReadOnlyMemory<byte> source, IPartialParitySink? guard, CancellationToken ct = default) =>
        WriteCoreAsync(sector, source, recovery: false, guard, ct);

    /// <summary>
    /// A write that may meet blocks a crash tore (the cache destaging again what it replayed from
    /// NVRAM after a restart). As <see cref="WriteAsync"/>, except for a data block that fails its
    /// checksum and cannot be reconstructed from redundancy: instead of failing, the block's
    /// content as read is kept, the new sectors are merged in, and the block is written whole with
    /// a fresh tag (and parity computed afresh from the row's data). That is sound only for a block
    /// a write tore: a 4 KiB block write is atomic, so the block holds its old or its new content
    /// as a whole, and the two agree on every sector outside the write being repeated; only its tag
    /// may be stale. Never use it for an ordinary write, which must fail on an unrecoverable block
    /// rather than stamp a fresh checksum over data that may have rotted.
    /// </summary>
    public ValueTask RecoveryWriteAsync(long sector, ReadOnlyMemory<byte> source, CancellationToken ct = default) => WriteCoreAsync(sector, source, recovery: true, guard: null, ct);

    /// <summary>A recovery write that keeps partial parity in <paramref name="guard"/> as <see cref="WriteAsync(long, ReadOnlyMemory{byte}, IPartialParitySink?, CancellationToken)"/> does.</summary>
    public ValueTask RecoveryWriteAsync(long sector, ReadOnlyMemory<byte> source, IPartialParitySink? guard, CancellationToken ct = default) =>
        WriteCoreAsync(sector, source, recovery: true, guard, ct);

    ValueTask WriteCoreAsync(long sector, ReadOnlyMemory<byte> source, bool recovery, IPartialParitySink? guard, CancellationToken ct) =>
        ForEachStripeAsync(sector, source.Length, (s, lo, hi, offset) => WriteStripeAsync(s, lo, hi, source.Slice(offset, (int)((hi - lo) * Units.SectorBytes)), false, recovery, ct, guard));

    /// <summary>Writes zeros over whole blocks and marks them never-written (TRIM). Block-aligned only.</summary>
    public ValueTask TrimAsync(long sector, long sectorCount, CancellationToken ct = default)
    {
        Invariant.Assert(sector % Units.SectorsPerBlock == 0 && sectorCount % Units.SectorsPerBlock == 0);
        return ZeroRangeAsync(sector, sectorCount, hole: true, ct);
    }

    public ValueTask WriteZeroesAsync(long sector, long sectorCount, CancellationToken ct = default) =>
        ZeroRangeAsync(sector, sectorCount, hole: false, ct);

    async ValueTask ZeroRangeAsync(long sector, long sectorCount, bool hole, CancellationToken ct)
    {
        CheckRange(sector, sectorCount);
        const int StepSectors = 1 << 13; // 4 MiB of zeros at a time
        var zeros = ArrayPool<byte>.Shared.Rent((int)Math.Min(sectorCount, StepSectors) * Units.SectorBytes);
        Array.Clear(zeros);
        try
        {
            for (long done = 0; done < sectorCount;)
            {
                long n = Math.Min(StepSectors, sectorCount - done);
                var src = zeros.AsMemory(0, (int)n * Units.SectorBytes);
                long at = sector + done;
                await ForEachStripeAsync(at, src.Length, (s, lo, hi, offset) => WriteStripeAsync(s, lo, hi, src.Slice(offset, (int)((hi - lo) * Units.SectorBytes)), hole, false, ct));
                done += n;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(zeros);
        }
    }

    public ValueTask FlushAsync(CancellationToken ct = default) => FlushCoreAsync(awaitFailures: true, ct);

    long _flushesBeforeSums, _writesGuardedByHeldSums;
    /// <summary>Stripe writes that took a lost member's blocks from the partial sums of a write that had failed there.</summary>
    public long WritesGuardedByHeldSums => Interlocked.Read(ref _writesGuardedByHeldSums);
    /// <summary>Flushes a logged write made before taking partial sums over rows an unflushed write had changed.</summary>
    public long FlushesBeforeSums => Interlocked.Read(ref _flushesBeforeSums);

    /// <summary>
    /// Flush for the array manager while it holds its management lock: a member whose flush fails is
    /// dropped as by <see cref="FlushAsync"/>, but the flush does not wait for that failure to be
    /// persisted (persisting it takes the management lock, so waiting would never end). The caller
    /// must persist the array's member states itself before it relies on the flush.
    /// </summary>
    public ValueTask FlushWithoutPersistingFailuresAsync(CancellationToken ct = default) => FlushCoreAsync(awaitFailures: false, ct);

    async ValueTask FlushCoreAsync(bool awaitFailures, CancellationToken ct)
    {
        long upTo;
        lock (_unflushed) upTo = _writeGeneration;

        // Members flush together; a drive that blocks to flush does so off this path (FileDrive).
        var tasks = new List<Task>();
        for (int m = 0; m < _members.Length; m++)
            if (Writable(m)) tasks.Add(FlushMemberAsync(m, awaitFailures, ct));
        await Task.WhenAll(tasks);
        ThrowIfFailed();
        lock (_unflushed)
        {
            if (upTo > _flushedGeneration)
            {
                _flushedGeneration = upTo;
                foreach (var (key, generation) in _unflushed)
                    if (generation <= upTo) _unflushed.Remove(key);
            }
        }
    }

    // Rows of parity stripes written since a flush covered them: (stripe, row) -> the write's generation, given
    // when the write returned; a flush covers every generation given before it started.
    readonly Dictionary<(long Stripe, int Row), long> _unflushed = [];
    long _writeGeneration, _flushedGeneration;

    void NoteWritten(long stripe, int rowLo, int rowCount)
    {
        lock (_unflushed)
        {
            long generation = ++_writeGeneration;
            for (int r = rowLo; r < rowLo + rowCount; r++) _unflushed[(stripe, r)] = generation;
        }
    }

    bool WrittenSinceFlush(long stripe, int rowLo, int rowCount)
    {
        lock (_unflushed)
        {
            if (_unflushed.Count == 0) return false;
            for (int r = rowLo; r < rowLo + rowCount; r++)
                if (_unflushed.TryGetValue((stripe, r), out long generation) && generation > _flushedGeneration) return true;
            return false;
        }
    }

    async Task FlushMemberAsync(int slot, bool awaitFailure, CancellationToken ct)
    {
        try { await _members[slot]!.Drive.FlushAsync(ct); }
        catch (BlockIoException e) when (e.Kind != BlockErrorKind.PathDown)
        {
            var persisted = FailMember(slot, $"flush failed: {e.Message}");
            if (awaitFailure) await persisted;
        }
    }

    /// <summary>The tag of the member block behind an array block (0 = never written), or null if unknown.</summary>
    public async ValueTask<ulong?> DataTagAsync(long arrayBlock, CancellationToken ct = default)
    {
        var (stripe, dataIndex, _, memberBlock) = Geometry.Map(arrayBlock);
        IEnumerable<int> holders = Geometry.IsMirrored ? Geometry.Copies(dataIndex) : [Geometry.DataMember(stripe, dataIndex)];
        foreach (int m in holders)
        {
            if (!Readable(m, stripe)) continue;
            try { return await _members[m]!.TagOfAsync(memberBlock, ct); }
            catch (BlockIoException) { }
        }
        return null;
    }

    void CheckRange(long sector, long sectorCount)
    {
        if (sector < 0 || sectorCount < 0 || sector > CapacitySectors - sectorCount)
            throw new BlockIoException(BlockErrorKind.OutOfRange, $"array {Name}: sectors {sector}+{sectorCount} are outside its {CapacitySectors} sectors", sector);
    }

    void ThrowIfFailed()
    {
        if (IsFailed)
            throw new BlockIoException(BlockErrorKind.Io, $"array {Name} has failed: members {string.Join(",", LostSlots())} are lost, more than RAID {(int)Geometry.Level} survives");
    }

    delegate ValueTask StripeOp(long stripe, long sectorLo, long sectorHi, int byteOffset);

    async ValueTask ForEachStripeAsync(long sector, int byteCount, StripeOp op)
    {
        if (byteCount % Units.SectorBytes != 0)
            throw new BlockIoException(BlockErrorKind.Invalid, $"array {Name}: length {byteCount} is not a multiple of {Units.SectorBytes}", sector);
        long count = byteCount / Units.SectorBytes;
        CheckRange(sector, count);
        if (count == 0) return;
        long stripeSectors = Geometry.StripeDataBlocks * Units.SectorsPerBlock;
        long first = sector / stripeSectors, last = (sector + count - 1) / stripeSectors;
        if (first == last)
        {
            long lo = sector - first * stripeSectors;
            await op(first, lo, lo + count, 0);
            return;
        }
        var tasks = new List<Task>((int)(last - first + 1));
        for (long s = first; s <= last; s++)
        {
            long start = Math.Max(sector, s * stripeSectors);
            long end = Math.Min(sector + count, (s + 1) * stripeSectors);
            tasks.Add(op(s, start - s * stripeSectors, end - s * stripeSectors, (int)((start - sector) * Units.SectorBytes)).AsTask());
        }
        await Task.WhenAll(tasks);
    }

    /// <summary>Takes a stripe's lock; a stripe still owed a settle (<see cref="MarkUnsettled"/>) is settled
    /// first, under the lock, so no read, write, scrub or rebuild ever sees it torn.</summary>
    async ValueTask<IDisposable> LockStripeAsync(long stripe, CancellationToken ct, bool onAccess = true)
    {
        var gate = _stripeLocks[stripe % StripeLockCount];
        await gate.WaitAsync(ct);
        var held = new Releaser(gate);
        if (Volatile.Read(ref _unsettledCount) > 0)
        {
            try { await SettleIfOwedLockedAsync(stripe, ct, onAccess); }
            catch
            {
                held.Dispose();
                throw;
            }
        }
        return held;
    }

    sealed class Releaser(AsyncGate gate) : IDisposable
    {
        int _done;
        public void Dispose() { if (Interlocked.Exchange(ref _done, 1) == 0) gate.Release(); }
    }

    /// <summary>Runs a stripe operation, dropping members that fail under it and retrying degraded.</summary>
    async ValueTask RetryOnMemberFailure(Func<ValueTask> attempt)
    {
        for (int tries = 0; ; tries++)
        {
            ThrowIfFailed();
            try
            {
                await attempt();
                return;
            }
            catch (MemberFailedException e) when (tries < Geometry.MemberCount)
            {
                await FailMember(e.Slot, e.InnerException?.Message ?? "I/O error");
            }
        }
    }

    // ---- member I/O with failure classification ----------------------------------------

    async ValueTask ReadMemberAsync(Workspace ws, int m, int rowLo, int rowCount, CancellationToken ct)
    {
        if (!Readable(m, ws.Stripe))
        {
            for (int r = rowLo; r < rowLo + rowCount; r++) ws.SetState(m, r, Workspace.Bad);
            return;
        }
        List<int>? bad;
        var mismatched = new List<int>();
        try
        {
            bad = await _members[m]!.ReadAsync(ws.Stripe * Geometry.ChunkBlocks + rowLo, ws.Rows(m, rowLo, rowCount), mismatched, ct);
        }
        catch (BlockIoException e) when (e.Kind != BlockErrorKind.PathDown)
        {
            throw new MemberFailedException(m, e);
        }
        for (int r = rowLo; r < rowLo + rowCount; r++) ws.SetState(m, r, Workspace.Ok);
        if (bad is null) return;
        foreach (int i in bad)
        {
            ws.SetState(m, rowLo + i, Workspace.Bad);
            ws.FoundBad[m][rowLo + i - ws.RowLo] = true;
            LogBadBlock(Name, ws.Stripe, rowLo + i, m, _members[m]!.Drive.Name);
        }
        foreach (int i in mismatched) ws.KeepAsRead(m, rowLo + i);
    }

    async ValueTask WriteMemberAsync(int m, long memberBlock, ReadOnlyMemory<byte> data, bool hole, CancellationToken ct)
    {
        try
        {
            await _members[m]!.WriteAsync(memberBlock, data, hole, ct);
        }
        catch (BlockIoException e) when (e.Kind != BlockErrorKind.PathDown)
        {
            throw new MemberFailedException(m, e);
        }
    }

    /// <summary>
    /// Runs member writes together. A member whose write fails is dropped after all have
    /// finished; the stripe stays consistent without it, so the request still succeeds if the
    /// level survives.
    /// </summary>
    async ValueTask WriteAllAsync(List<(int Member, long Block, ReadOnlyMemory<byte> Data, bool Hole)> writes, CancellationToken ct)
    {
        if (writes.Count == 0) return;
        var tasks = new Task[writes.Count];
        for (int i = 0; i < writes.Count; i++)
        {
            var w = writes[i];
            tasks[i] = WriteMemberAsync(w.Member, w.Block, w.Data, w.Hole, ct).AsTask();
        }
        try
        {
            await Task.WhenAll(tasks);
        }
        catch
        {
            var persisted = new List<Task>();
            foreach (var t in tasks)
                if (t.Exception?.InnerException is MemberFailedException f) persisted.Add(FailMember(f.Slot, f.InnerException?.Message ?? "write failed"));
                else if (t.Exception is not null) throw t.Exception.InnerException!;
            await Task.WhenAll(persisted);
            ThrowIfFailed();
        }
    }

    /// <summary>Reads every member's rows that are still Unknown, then solves every row with Bad blocks.
    /// Returns the rows that could not be solved.</summary>
    /// <summary>Reads member <paramref name="m"/>'s rows of [<paramref name="rowLo"/>, +<paramref name="rowCount"/>) not
    /// read yet, a run of them at a time.</summary>
    async ValueTask ReadUnknownRowsAsync(Workspace ws, int m, int rowLo, int rowCount, CancellationToken ct)
    {
        int r = rowLo;
        while (r < rowLo + rowCount)
        {
            if (ws.RowState(m, r) != Workspace.Unknown) { r++; continue; }
            int end = r;
            while (end < rowLo + rowCount && ws.RowState(m, end) == Workspace.Unknown) end++;
            await ReadMemberAsync(ws, m, r, end - r, ct);
            r = end;
        }
    }

    async ValueTask<List<int>> FillAndSolveAsync(Workspace ws, CancellationToken ct)
    {
        for (int m = 0; m < Geometry.MemberCount; m++) await ReadUnknownRowsAsync(ws, m, ws.RowLo, ws.RowCount, ct);
        var unsolved = new List<int>();
        for (int r = ws.RowLo; r < ws.RowLo + ws.RowCount; r++)
            if (!ws.SolveRow(r)) unsolved.Add(r);
        // A reconstructed data block must match its tag (when its member is present to hold one):
        // the check that catches stale parity instead of returning wrong data.
        for (int m = 0; m < Geometry.MemberCount; m++)
        {
            if (_members[m] is null) continue;
            for (int r = ws.RowLo; r < ws.RowLo + ws.RowCount; r++)
            {
                if (!ws.Reconstructed[m][r - ws.RowLo] || !ws.FoundBad[m][r - ws.RowLo]) continue;
                ulong tag;
                try { tag = await _members[m]!.TagOfAsync(ws.Stripe * Geometry.ChunkBlocks + r, ct); }
                catch (BlockIoException) { continue; }
                if (!Tag.Verify(tag, _members[m]!.Salt, ws.Stripe * Geometry.ChunkBlocks + r, ws.Block(m, r)) && tag != 0)
                {
                    ws.SetState(m, r, Workspace.Bad);
                    if (!unsolved.Contains(r)) unsolved.Add(r);
                }
            }
        }
        return unsolved;
    }

    /// <summary>Rewrites blocks that were found bad on working members with their reconstructed content
    /// (except the (member, row) pairs in <paramref name="done"/>, written already).</summary>
    async ValueTask RepairAsync(Workspace ws, CancellationToken ct, HashSet<(int Member, int Row)>? done = null)
    {
        var writes = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
        for (int m = 0; m < Geometry.MemberCount; m++)
        {
            if (!Writable(m)) continue;
            for (int r = ws.RowLo; r < ws.RowLo + ws.RowCount; r++)
            {
                if (!ws.FoundBad[m][r - ws.RowLo] || ws.RowState(m, r) != Workspace.Ok) continue;
                if (done is not null && done.Contains((m, r))) continue;
                writes.Add((m, ws.Stripe * Geometry.ChunkBlocks + r, ws.Rows(m, r, 1), false));
                LogRepaired(Name, ws.Stripe, r, m, _members[m]!.Drive.Name);
            }
        }
        await WriteAllAsync(writes, ct);
    }

    BlockIoException Unrecoverable(long stripe, int dataIndex, int row) =>
        new(BlockErrorKind.Medium,
            $"array {Name}: block at stripe {stripe} chunk {dataIndex} row {row} is unreadable and cannot be reconstructed",
            (stripe * Geometry.StripeDataBlocks + (long)dataIndex * Geometry.ChunkBlocks + row) * Units.SectorsPerBlock);

    // ---- read ----------------------------------------------------------------------------

    async ValueTask ReadStripeAsync(long stripe, long sectorLo, long sectorHi, Memory<byte> destination, CancellationToken ct)
    {
        using var _ = await LockStripeAsync(stripe, ct);
        // AW-5: a listed sector fails without touching a drive.
        ThrowIfListed(stripe, sectorLo, sectorHi);
        await RetryOnMemberFailure(() => Geometry.IsMirrored
            ? ReadMirrorStripeAsync(stripe, sectorLo, sectorHi, destination, ct)
            : ReadParityStripeAsync(stripe, sectorLo, sectorHi, destination, ct));
        // And a block the read listed (an unrecoverable one it met, in this attempt or one a member
        // failure cut short) fails too, though the drives now hold its fill under a good tag.
        ThrowIfListed(stripe, sectorLo, sectorHi);
    }

    /// <summary>Copies the requested sectors of chunk c from a workspace's blocks into the destination.</summary>
    void CopyOut(Workspace ws, int member, StripePlanner.ChunkWrite c, long sectorLo, Memory<byte> destination)
    {
        long chunkSectors = (long)Geometry.ChunkBlocks * Units.SectorsPerBlock;
        long chunkStart = c.DataIndex * chunkSectors;
        for (int r = c.Lo; r < c.Hi; r++)
        {
            long blockFirst = chunkStart + (long)r * Units.SectorsPerBlock;
            long from = Math.Max(blockFirst, sectorLo);
            long to = Math.Min(blockFirst + Units.SectorsPerBlock, sectorLo + destination.Length / Units.SectorBytes);
            if (to <= from) continue;
            ws.Block(member, r).Slice((int)(from - blockFirst) * Units.SectorBytes, (int)(to - from) * Units.SectorBytes)
                .CopyTo(destination.Span[(int)((from - sectorLo) * Units.SectorBytes)..]);
        }
    }

    async ValueTask ReadParityStripeAsync(long stripe, long sectorLo, long sectorHi, Memory<byte> destination, CancellationToken ct)
    {
        if (await TryReadDirectAsync(stripe, sectorLo, sectorHi, destination, ct)) return;
        var chunks = StripePlanner.SplitByChunk(Geometry, sectorLo, sectorHi);
        var (rowLo, rowHi) = StripePlanner.RowSpan(chunks);
        using var ws = new Workspace(Geometry, stripe, rowLo, rowHi - rowLo);
        bool needSolve = false;
        foreach (var c in chunks)
        {
            if (c.IsEmpty) continue;
            int m = Geometry.DataMember(stripe, c.DataIndex);
            await ReadMemberAsync(ws, m, c.Lo, c.Rows, ct);
            for (int r = c.Lo; r < c.Hi; r++) needSolve |= ws.RowState(m, r) == Workspace.Bad;
        }
        if (needSolve)
        {
            var unsolved = await FillAndSolveAsync(ws, ct);
            HashSet<(int, int)>? written = null;
            if (unsolved.Count > 0)
            {
                // AW-5: what no redundancy can bring back is listed, filled and its row's parity
                // regenerated (the rest of the row is protected again); ReadStripeAsync then fails the
                // read if it asked for a listed block.
                var listed = await ListLostRowsAsync(ws, unsolved, BadBlockSource.Read, honourHold: true, write: null, ct);
                var writes = RegenerateRows(ws, listed);
                await WriteAllAsync(writes, ct);
                written = writes.Select(w => (w.Member, (int)(w.Block - stripe * Geometry.ChunkBlocks))).ToHashSet();
            }
            foreach (var c in chunks)
            {
                if (c.IsEmpty) continue;
                int m = Geometry.DataMember(stripe, c.DataIndex);
                foreach (int r in unsolved)
                    if (r >= c.Lo && r < c.Hi && ws.RowState(m, r) == Workspace.Bad) throw Unrecoverable(stripe, c.DataIndex, r);
            }
            await RepairAsync(ws, ct, written);
        }
        foreach (var c in chunks)
            if (!c.IsEmpty) CopyOut(ws, Geometry.DataMember(stripe, c.DataIndex), c, sectorLo, destination);
    }

    /// <summary>
    /// The common read: whole blocks inside one chunk on a member that can be read. The blocks go
    /// straight into the caller's buffer and are checked there; if any fails its check (or the
    /// member cannot serve it) nothing is kept and the caller takes the full path, which repairs.
    /// </summary>
    async ValueTask<bool> TryReadDirectAsync(long stripe, long sectorLo, long sectorHi, Memory<byte> destination, CancellationToken ct)
    {
        if (sectorLo % Units.SectorsPerBlock != 0 || sectorHi % Units.SectorsPerBlock != 0) return false;
        long chunkSectors = (long)Geometry.ChunkBlocks * Units.SectorsPerBlock;
        int dataIndex = (int)(sectorLo / chunkSectors);
        if ((sectorHi - 1) / chunkSectors != dataIndex) return false;
        int member = Geometry.DataMember(stripe, dataIndex);
        if (!Readable(member, stripe)) return false;
        long row = sectorLo % chunkSectors / Units.SectorsPerBlock;
        List<int>? bad;
        try
        {
            bad = await _members[member]!.ReadAsync(stripe * Geometry.ChunkBlocks + row, destination, ct);
        }
        catch (BlockIoException)
        {
            return false; // the full path classifies the failure (and drops the member if need be)
        }
        return bad is null;
    }

    async ValueTask ReadMirrorStripeAsync(long stripe, long sectorLo, long sectorHi, Memory<byte> destination, CancellationToken ct)
    {
        var chunks = StripePlanner.SplitByChunk(Geometry, sectorLo, sectorHi);
        var (rowLo, rowHi) = StripePlanner.RowSpan(chunks);
        using var ws = new Workspace(Geometry, stripe, rowLo, rowHi - rowLo);
        foreach (var c in chunks)
        {
            if (c.IsEmpty) continue;
            int good = await ReadMirrorChunkAsync(ws, stripe, c, MirrorRead.ForRead, ct);
            CopyOut(ws, good, c, sectorLo, destination);
        }
    }

    enum MirrorRead { ForRead, ForWrite, ForRecoveryWrite }

    /// <summary>Reads chunk c's rows from one copy, falling back to the others for bad rows; repairs bad copies.
    /// Returns the member whose workspace buffer holds the good data for every row. For a recovery write
    /// (about to rewrite these rows whole), a row no copy of which matches its tag takes the content of a
    /// copy as read (see <see cref="RecoveryWriteAsync"/>). A row no copy holds at all is, for a read or a
    /// recovery write, put on the bad-block list and filled (AW-5); an ordinary write fails on it. A write
    /// needs no old content of a row it replaces whole.</summary>
    async ValueTask<int> ReadMirrorChunkAsync(Workspace ws, long stripe, StripePlanner.ChunkWrite c, MirrorRead mode, CancellationToken ct)
    {
        bool recovery = mode == MirrorRead.ForRecoveryWrite;
        var copies = Geometry.Copies(c.DataIndex).Where(m => Readable(m, stripe)).ToList();
        if (copies.Count == 0) throw Unrecoverable(stripe, c.DataIndex, c.Lo);
        int start = (int)((uint)Interlocked.Increment(ref _rotor) % (uint)copies.Count);
        int primary = copies[start];
        await ReadMemberAsync(ws, primary, c.Lo, c.Rows, ct);
        var repairs = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
        for (int r = c.Lo; r < c.Hi; r++)
        {
            if (ws.RowState(primary, r) == Workspace.Ok) continue;
            bool found = false;
            foreach (int other in copies)
            {
                if (other == primary) continue;
                if (ws.RowState(other, r) == Workspace.Unknown) await ReadMemberAsync(ws, other, r, 1, ct);
                if (ws.RowState(other, r) != Workspace.Ok) continue;
                ws.Block(other, r).CopyTo(ws.Block(primary, r));
                ws.SetState(primary, r, Workspace.Ok);
                found = true;
                break;
            }
            if (!found && recovery)
            {
                // Every copy was read (or is missing): take the first one read whole.
                foreach (int other in copies)
                {
                    if (ws.AsRead(other, r) is not { } asRead) continue;
                    asRead.CopyTo(ws.Block(primary, r));
                    ws.SetState(primary, r, Workspace.Ok);
                    LogTornRewritten(Name, stripe, r, other, _members[other]!.Drive.Name);
                    break;
                }
                if (ws.RowState(primary, r) == Workspace.Ok) continue; // the write rewrites every copy whole
            }
            if (!found && mode != MirrorRead.ForRead && c.Replaces(r)) continue; // overwritten whole: its old content is not needed
            if (!found)
            {
                var source = mode switch { MirrorRead.ForRead => BadBlockSource.Read, MirrorRead.ForRecoveryWrite => BadBlockSource.RecoveryWrite, _ => (BadBlockSource?)null };
                if (source is { } src && !(src == BadBlockSource.Read && Held(ArrayBlockOf(stripe, c.DataIndex, r)))
                    && await ListMirrorBlockAsync(ws, primary, c.DataIndex, r, src, ct))
                {
                    // A recovery write puts its merge of the fill on every copy; a read writes the fill.
                    if (!recovery) repairs.AddRange(FillCopies(stripe, c.DataIndex, r));
                    continue;
                }
                throw Unrecoverable(stripe, c.DataIndex, r);
            }
            if (Writable(primary))
            {
                repairs.Add((primary, stripe * Geometry.ChunkBlocks + r, ws.Rows(primary, r, 1), false));
                LogRepaired(Name, stripe, r, primary, _members[primary]!.Drive.Name);
            }
        }
        await WriteAllAsync(repairs, ct);
        return primary;
    }

    // ---- write ---------------------------------------------------------------------------

    async ValueTask WriteStripeAsync(long stripe, long sectorLo, long sectorHi, ReadOnlyMemory<byte> source, bool hole, bool recovery, CancellationToken ct,
        IPartialParitySink? guard = null)
    {
        using var _ = await LockStripeAsync(stripe, ct);
        // A retry after a member failed keeps the partial parity the first attempt stored (taken before any drive write).
        var stored = guard is null ? null : new HashSet<int>();
        await RetryOnMemberFailure(() => Geometry.IsMirrored
            ? WriteMirrorStripeAsync(stripe, sectorLo, sectorHi, source, hole, recovery, ct)
            : WriteParityStripeAsync(stripe, sectorLo, sectorHi, source, hole, recovery, ct, guard, stored));
        guard?.StripeWritten(stripe);
        // AW-5: the sectors just written are good again (after the data, never before: a listed block
        // that is not listed any more must hold what a host wrote, not the fill).
        long origin = stripe * Geometry.StripeDataBlocks * Units.SectorsPerBlock;
        await ClearWrittenAsync(origin + sectorLo, origin + sectorHi, ct);
    }

    /// <summary>
    /// For a recovery write (see <see cref="RecoveryWriteAsync"/>): in each row beyond repair, every
    /// data block the write does not replace entirely and that was read whole but failed its tag
    /// takes its content as read. A block outside the write is listed in <paramref name="tornOutside"/>
    /// to be rewritten whole as well (with parity it is part of the row the new parity covers).
    /// A row is left alone (and the write fails as before) if it holds a block that cannot be taken
    /// so: unreadable, or reconstructed without a tag to check it against.
    /// </summary>
    async ValueTask KeepTornBlocksAsync(Workspace ws, StripePlanner.ChunkWrite[] chunks, List<int> unsolved, List<(int, int)> tornOutside, CancellationToken ct)
    {
        var g = Geometry;
        long stripe = ws.Stripe;
        foreach (int r in unsolved)
        {
            // RAID 6 with a member missing: its block may be recovered by telling which parity the torn block agrees with.
            bool blindSettled = await SettleBlindBlockAsync(ws, r, ct);
            var torn = new List<int>();
            bool usable = true;
            for (int i = 0; i < g.DataMembers && usable; i++)
            {
                var c = chunks[i];
                bool written = !c.IsEmpty && r >= c.Lo && r < c.Hi;
                if (c.Replaces(r)) continue;
                if (!written && g.ParityMembers == 0) continue; // no parity to keep consistent: not needed
                int m = g.DataMember(stripe, i);
                if (ws.RowState(m, r) == Workspace.Bad)
                {
                    if (ws.AsRead(m, r) is null) usable = false;
                    else torn.Add(i);
                }
                else if (ws.Reconstructed[m][r - ws.RowLo] && !ws.FoundBad[m][r - ws.RowLo] && !blindSettled && !ws.Vouched[m][r - ws.RowLo])
                {
                    usable = false; // rebuilt from a row that does not add up, with nothing to check it against
                }
            }
            if (!usable) continue;
            foreach (int i in torn)
            {
                int m = g.DataMember(stripe, i);
                ws.AsRead(m, r)!.CopyTo(ws.Block(m, r));
                ws.SetState(m, r, Workspace.Ok);
                var c = chunks[i];
                if (c.IsEmpty || r < c.Lo || r >= c.Hi) tornOutside.Add((m, r));
                LogTornRewritten(Name, stripe, r, m, _members[m]?.Drive.Name ?? "-");
            }
        }
    }

    /// <summary>
    /// For a recovery write, RAID 6 with one data block of row <paramref name="r"/> on a member that
    /// cannot be read (missing, or not yet rebuilt) and one data block torn by a crash (read whole, fails
    /// its tag), every other block of the row read and checked: the torn block holds one version of its
    /// content and its tag names the other, and P and Q may each cover either version. The unreadable
    /// block is computed both ways: from P taking the torn block as read (and then the torn block's other
    /// version from Q), and from Q likewise (the other version from P). A hypothesis holds if that other
    /// version matches the torn block's stored tag. If exactly one holds, its value of the unreadable
    /// block is put in the workspace and true is returned; otherwise nothing changes and false.
    /// </summary>
    async ValueTask<bool> SettleBlindBlockAsync(Workspace ws, int r, CancellationToken ct)
    {
        var g = Geometry;
        long stripe = ws.Stripe;
        if (g.ParityMembers != 2) return false;
        int p = g.PMember(stripe), q = g.QMember(stripe);
        foreach (int pm in new[] { p, q })
            if (ws.RowState(pm, r) != Workspace.Ok || ws.Reconstructed[pm][r - ws.RowLo]) return false;
        int x = -1, y = -1;
        for (int i = 0; i < g.DataMembers; i++)
        {
            int m = g.DataMember(stripe, i);
            bool reconstructed = ws.Reconstructed[m][r - ws.RowLo], foundBad = ws.FoundBad[m][r - ws.RowLo];
            if (ws.RowState(m, r) == Workspace.Bad && foundBad && ws.AsRead(m, r) is not null && _members[m] is not null)
            {
                if (x >= 0) return false;
                x = i;
            }
            else if (!foundBad && !Readable(m, stripe) && (reconstructed || ws.RowState(m, r) == Workspace.Bad))
            {
                if (y >= 0) return false;
                y = i;
            }
            else if (ws.RowState(m, r) != Workspace.Ok || reconstructed) return false;
        }
        if (x < 0 || y < 0) return false;

        int mx = g.DataMember(stripe, x), my = g.DataMember(stripe, y);
        long memberBlock = stripe * g.ChunkBlocks + r;
        ulong tag;
        try { tag = await _members[mx]!.TagOfAsync(memberBlock, ct); }
        catch (BlockIoException) { return false; }

        // Partial sums over the other data blocks: sp = Σ D_i, sq = Σ g^i D_i (i ≠ x, y).
        var zero = new byte[Units.BlockBytes];
        var data = new ReadOnlyMemory<byte>[g.DataMembers];
        for (int i = 0; i < g.DataMembers; i++)
            data[i] = i == x || i == y ? zero : ws.Rows(g.DataMember(stripe, i), r, 1);
        var sp = new byte[Units.BlockBytes];
        var sq = new byte[Units.BlockBytes];
        Parity.Parity.GenPQ(data, sp, sq);
        var asRead = ws.AsRead(mx, r)!;
        ReadOnlySpan<byte> pBlock = ws.Block(p, r), qBlock = ws.Block(q, r);

        // Hypothesis P: P covers the torn block as read. D_y = P + sp + D_x; other D_x = g^-x (Q + sq + g^y D_y).
        var yFromP = new byte[Units.BlockBytes];
        pBlock.CopyTo(yFromP);
        Parity.Parity.XorInto(sp, yFromP);
        Parity.Parity.XorInto(asRead, yFromP);
        var t = new byte[Units.BlockBytes];
        qBlock.CopyTo(t);
        Parity.Parity.XorInto(sq, t);
        Parity.Parity.MulXorInto(Gf256.Pow2(y), yFromP, t);
        var otherX = new byte[Units.BlockBytes];
        Parity.Parity.MulInto(Gf256.Pow2(-x), t, otherX);
        bool pHolds = Tag.Verify(tag, _members[mx]!.Salt, memberBlock, otherX);

        // Hypothesis Q: Q covers the torn block as read. D_y = g^-y (Q + sq + g^x D_x); other D_x = P + sp + D_y.
        qBlock.CopyTo(t);
        Parity.Parity.XorInto(sq, t);
        Parity.Parity.MulXorInto(Gf256.Pow2(x), asRead, t);
        var yFromQ = new byte[Units.BlockBytes];
        Parity.Parity.MulInto(Gf256.Pow2(-y), t, yFromQ);
        pBlock.CopyTo(otherX);
        Parity.Parity.XorInto(sp, otherX);
        Parity.Parity.XorInto(yFromQ, otherX);
        bool qHolds = Tag.Verify(tag, _members[mx]!.Salt, memberBlock, otherX);

        if (pHolds == qHolds) return false;
        (pHolds ? yFromP : yFromQ).CopyTo(ws.Block(my, r));
        ws.SetState(my, r, Workspace.Ok);
        ws.Reconstructed[my][r - ws.RowLo] = true;
        ws.Vouched[my][r - ws.RowLo] = true;
        LogBlindSettled(Name, stripe, r, my, pHolds ? "P" : "Q", mx);
        return true;
    }

    /// <summary>Fills chunk c's new blocks: whole blocks from the source, partial ones merged into the old block.</summary>
    void MergeNewData(Workspace oldWs, int oldMember, byte[] newBuf, int bufRowLo, StripePlanner.ChunkWrite c, long sectorLo, ReadOnlySpan<byte> source)
    {
        for (int r = c.Lo; r < c.Hi; r++)
        {
            var dst = newBuf.AsSpan((r - bufRowLo) * Units.BlockBytes, Units.BlockBytes);
            if (!c.Replaces(r))
            {
                Invariant.Assert(oldWs.RowState(oldMember, r) == Workspace.Ok);
                oldWs.Block(oldMember, r).CopyTo(dst);
            }
            CopyWrittenSectors(c.DataIndex, r, sectorLo, source, dst);
        }
    }

    /// <summary>Copies the sectors of a write of stripe-relative sectors from <paramref name="sectorLo"/> that fall in row
    /// <paramref name="r"/> of data chunk <paramref name="dataIndex"/> into <paramref name="block"/> (that block's 4 KiB).</summary>
    void CopyWrittenSectors(int dataIndex, int r, long sectorLo, ReadOnlySpan<byte> source, Span<byte> block)
    {
        long blockFirst = dataIndex * (long)Geometry.ChunkBlocks * Units.SectorsPerBlock + (long)r * Units.SectorsPerBlock;
        long from = Math.Max(blockFirst, sectorLo);
        long to = Math.Min(blockFirst + Units.SectorsPerBlock, sectorLo + source.Length / Units.SectorBytes);
        source.Slice((int)((from - sectorLo) * Units.SectorBytes), (int)((to - from) * Units.SectorBytes))
            .CopyTo(block[(int)((from - blockFirst) * Units.SectorBytes)..]);
    }

    /// <summary>
    /// For a recovery write on RAID 6 (see <see cref="WriteParityStripeAsync"/>): row <paramref name="r"/> with exactly one
    /// data block on a member that cannot be read, every other block read whole and checked. Each other data block has
    /// one or two versions (as read; as this write brings it, if it writes there), and P and Q may each cover either
    /// (the write this one repeats was cut with some of its blocks landed). The missing block is computed from P and
    /// from Q under every choice of versions; if exactly one value comes from both, it is put in the workspace. False if
    /// none does: the row does not add up whatever the versions (the old version of a block the cut write landed is on
    /// no drive), and nothing tells the missing block (AW-5). Otherwise true, with nothing else changed (the row is
    /// solved from P as before).
    /// </summary>
    bool SettleMissingBlockByVersions(Workspace ws, StripePlanner.ChunkWrite[] chunks, int r, long sectorLo, ReadOnlySpan<byte> source)
    {
        var g = Geometry;
        long stripe = ws.Stripe;
        int p = g.PMember(stripe), q = g.QMember(stripe);
        if (ws.RowState(p, r) != Workspace.Ok || ws.RowState(q, r) != Workspace.Ok) return true;
        int x = -1;
        for (int i = 0; i < g.DataMembers; i++)
        {
            int m = g.DataMember(stripe, i);
            if (!Readable(m, stripe))
            {
                if (x >= 0) return true;
                x = i;
            }
            else if (ws.RowState(m, r) != Workspace.Ok) return true;
        }
        if (x < 0) return true;
        var versions = new List<byte[]>[g.DataMembers];
        int combos = 1;
        for (int i = 0; i < g.DataMembers; i++)
        {
            if (i == x) continue;
            var asRead = ws.Block(g.DataMember(stripe, i), r).ToArray();
            versions[i] = [asRead];
            var c = chunks[i];
            if (c.IsEmpty || r < c.Lo || r >= c.Hi) continue;
            var brought = asRead.ToArray();
            CopyWrittenSectors(i, r, sectorLo, source, brought);
            if (!brought.AsSpan().SequenceEqual(asRead)) versions[i].Add(brought);
            combos *= versions[i].Count;
        }
        if (combos > 64) return true;
        var fromP = new List<byte[]>(combos);
        var fromQ = new List<byte[]>(combos);
        var choice = new int[g.DataMembers];
        for (int n = 0; n < combos; n++)
        {
            int rest = n;
            for (int i = 0; i < g.DataMembers; i++)
            {
                if (i == x) continue;
                choice[i] = rest % versions[i].Count;
                rest /= versions[i].Count;
            }
            var dp = ws.Block(p, r).ToArray();
            var sq = ws.Block(q, r).ToArray();
            for (int i = 0; i < g.DataMembers; i++)
            {
                if (i == x) continue;
                var v = versions[i][choice[i]];
                Parity.Parity.XorInto(v, dp);
                Parity.Parity.MulXorInto(Gf256.Pow2(i), v, sq);
            }
            var dq = new byte[Units.BlockBytes];
            Parity.Parity.MulInto(Gf256.Pow2(-x), sq, dq);
            fromP.Add(dp);
            fromQ.Add(dq);
        }
        byte[]? found = null;
        foreach (var a in fromP)
        {
            if (!fromQ.Any(b => b.AsSpan().SequenceEqual(a))) continue;
            if (found is not null && !found.AsSpan().SequenceEqual(a)) return true; // two values: nothing to tell them apart (solved from P as before)
            found = a;
        }
        if (found is null) return false;
        int mx = g.DataMember(stripe, x);
        found.CopyTo(ws.Block(mx, r));
        ws.SetState(mx, r, Workspace.Ok);
        ws.Reconstructed[mx][r - ws.RowLo] = true;
        ws.Vouched[mx][r - ws.RowLo] = true;
        return true;
    }

    async ValueTask WriteParityStripeAsync(long stripe, long sectorLo, long sectorHi, ReadOnlyMemory<byte> source, bool hole, bool recovery, CancellationToken ct,
        IPartialParitySink? guard = null, HashSet<int>? stored = null)
    {
        var g = Geometry;
        var plan = StripePlanner.PlanWrite(g, stripe, sectorLo, sectorHi, m => Readable(m, stripe), Writable);
        var chunks = StripePlanner.SplitByChunk(g, sectorLo, sectorHi);
        using var ws = new Workspace(g, stripe, plan.RowLo, plan.RowCount);

        bool needSolve = false;
        var held = guard is not null && g.ParityMembers > 0 && DataMemberUnreadable(stripe) ? guard.Held(stripe, plan.RowLo, plan.RowCount) : [];
        if (held.Count > 0)
        {
            // A write of ours to these rows failed part-way (some members written, others not) and a data member
            // cannot be read: its blocks here are the failed write's partial sums, not what parity the failure may
            // have torn gives (AW-4 with a member missing). Every row is read whole and written whole.
            for (int m = 0; m < g.MemberCount; m++) await ReadMemberAsync(ws, m, plan.RowLo, plan.RowCount, ct);
            var found = new ScrubResult();
            if (ApplyPartialParity(ws, held, found).Count > 0)
            {
                Interlocked.Increment(ref _writesGuardedByHeldSums);
                foreach (var f in found.Findings) LogHeldSumUsed(Name, f);
            }
            needSolve = true;
        }
        else
            foreach (var read in plan.Reads)
            {
                await ReadMemberAsync(ws, read.Member, read.RowLo, read.RowCount, ct);
                for (int r = read.RowLo; r < read.RowLo + read.RowCount; r++) needSolve |= ws.RowState(read.Member, r) == Workspace.Bad;
            }
        HashSet<int>? disagree = null; // rows whose parities give the missing block no common value
        if (recovery && held.Count == 0 && g.ParityMembers == 2 && DataMemberUnreadable(stripe))
        {
            // A recovery write repeats a write a crash may have cut after some of its parity landed and before its data
            // did (the data block keeps its old content and tag: nothing says it is torn). With a data member that cannot
            // be read, that member's block exists only in the parity: a read-modify-write over such a row, or a
            // reconstruction from P alone, gave it the old data block's content xor the new (simulator seed 10943 of
            // --faults all --exact). So every row is read whole, and the missing block is taken as the one value P and Q
            // both give under some versions of the row's other data blocks (as the drives hold them, or as this write
            // brings them); then parity is computed afresh.
            for (int m = 0; m < g.MemberCount; m++)
                if (Readable(m, stripe)) await ReadUnknownRowsAsync(ws, m, plan.RowLo, plan.RowCount, ct);
            for (int r = plan.RowLo; r < plan.RowLo + plan.RowCount; r++)
                if (!SettleMissingBlockByVersions(ws, chunks, r, sectorLo, source.Span)) (disagree ??= []).Add(r);
            needSolve = true;
        }
        var strategy = plan.Strategy;
        // Torn blocks a recovery write keeps that lie outside the write: rewritten whole as read.
        var tornOutside = new List<(int Member, int Row)>();
        if (needSolve)
        {
            // A block we needed is unreadable: read every row in full, reconstruct, and write whole rows.
            var unsolved = await FillAndSolveAsync(ws, ct);
            if (disagree is not null)
                foreach (int r in disagree)
                {
                    // P alone "solved" it; P and Q say the row does not add up under any version of its blocks: lost (AW-5),
                    // not the value one parity gives.
                    for (int i = 0; i < g.DataMembers; i++)
                        if (!Readable(g.DataMember(stripe, i), stripe)) ws.SetState(g.DataMember(stripe, i), r, Workspace.Bad);
                    if (!unsolved.Contains(r)) unsolved.Add(r);
                }
            if (unsolved.Count > 0 && recovery)
            {
                await KeepTornBlocksAsync(ws, chunks, unsolved, tornOutside, ct);
                // AW-5: what the recovery write could not keep (a row holding a block with no content to
                // keep, or one whose version nothing vouches for) is listed and filled; the write then goes
                // on over the fill (a partial block keeps its unwritten sectors listed), and writes the
                // filled blocks it does not cover whole.
                var listed = await ListLostRowsAsync(ws, unsolved, BadBlockSource.RecoveryWrite, honourHold: false, write: chunks, ct);
                foreach (var (m, r) in listed.Filled)
                {
                    var c = chunks[g.RoleOf(stripe, m).DataIndex];
                    if (c.IsEmpty || r < c.Lo || r >= c.Hi) tornOutside.Add((m, r));
                }
            }
            if (unsolved.Count > 0 && g.ParityMembers > 0)
            {
                // A row beyond repair can still be written whole: reconstruct-write needs only the
                // data blocks this write does not replace entirely (parity is computed afresh). So a
                // write that covers the damaged blocks (the cache destaging again, after a crash,
                // the stripe a crash tore) repairs the row instead of failing.
                foreach (int r in unsolved)
                    for (int i = 0; i < g.DataMembers; i++)
                    {
                        if (!chunks[i].Replaces(r) && ws.RowState(g.DataMember(stripe, i), r) == Workspace.Bad)
                            throw new BlockIoException(BlockErrorKind.Medium, $"array {Name}: stripe {stripe} has rows {string.Join(",", unsolved)} beyond repair",
                                stripe * g.StripeDataBlocks * Units.SectorsPerBlock + sectorLo);
                    }
            }
            if (g.ParityMembers == 0)
                foreach (var c in chunks)
                    if (!c.IsEmpty && (c.PartialFirst && ws.RowState(g.DataMember(stripe, c.DataIndex), c.Lo) == Workspace.Bad ||
                                       c.PartialLast && ws.RowState(g.DataMember(stripe, c.DataIndex), c.Hi - 1) == Workspace.Bad))
                        throw Unrecoverable(stripe, c.DataIndex, c.PartialFirst ? c.Lo : c.Hi - 1);
            if (strategy == WriteStrategy.ReadModifyWrite) strategy = WriteStrategy.ReconstructWrite;
        }

        // New content of every written data block, rows relative to the plan.
        var newData = new byte[]?[g.DataMembers];
        try
        {
            foreach (var c in chunks)
            {
                if (c.IsEmpty) continue;
                newData[c.DataIndex] = BlockBuffers.Rent(plan.RowCount * Units.BlockBytes);
                MergeNewData(ws, g.DataMember(stripe, c.DataIndex), newData[c.DataIndex]!, plan.RowLo, c, sectorLo, source.Span);
            }

            int p = g.PMember(stripe), q = g.QMember(stripe);
            if (guard is not null && g.ParityMembers > 0)
            {
                // A partial sum is taken over the blocks this write leaves as the drives hold them now; if an
                // earlier write to these rows is not flushed yet, a cut could roll its blocks back under the sum
                // (and the sum supersedes that write's own). So those blocks are made durable first.
                if (WrittenSinceFlush(stripe, plan.RowLo, plan.RowCount))
                {
                    Interlocked.Increment(ref _flushesBeforeSums);
                    await FlushCoreAsync(awaitFailures: false, ct);
                }
                // Room for every sum first (with a member that cannot be read, a row torn without its sum can lose
                // that member's block at a single cut: the sink waits for the pool rather than leave it unguarded).
                // Counted only where the sink claims room: the healthy write path does not pay for the count.
                if (guard.ClaimsRoom && StorePartialParity(ws, chunks, newData, plan.RowLo, guard, stored!, countOnly: true) is var sums and > 0)
                    await guard.RoomAsync(stripe, plan.RowLo, plan.RowCount, sums, ct);
                // Sums other writes stored for these rows go stale once this write changes them; superseded only now,
                // with nothing left to wait for before this write's own are stored (a write that failed in its claim
                // would have taken a failed write's sums for rows that write may have torn with it).
                for (int r = plan.RowLo; r < plan.RowLo + plan.RowCount; r++) guard.Supersede(stripe, r);
                StorePartialParity(ws, chunks, newData, plan.RowLo, guard, stored!);
                await guard.SumsStoredAsync(stripe, ct);
            }
            bool writeP = p >= 0 && Writable(p), writeQ = q >= 0 && Writable(q);
            if (g.ParityMembers > 0 && (writeP || writeQ))
            {
                if (strategy == WriteStrategy.ReadModifyWrite)
                {
                    var delta = new byte[Units.BlockBytes];
                    foreach (var c in chunks)
                    {
                        if (c.IsEmpty) continue;
                        int m = g.DataMember(stripe, c.DataIndex);
                        for (int r = c.Lo; r < c.Hi; r++)
                        {
                            ws.Block(m, r).CopyTo(delta);
                            Parity.Parity.XorInto(newData[c.DataIndex].AsSpan((r - plan.RowLo) * Units.BlockBytes, Units.BlockBytes), delta);
                            if (writeP) Parity.Parity.XorInto(delta, ws.Block(p, r));
                            if (writeQ) Parity.Parity.MulXorInto(Gf256.Pow2(c.DataIndex), delta, ws.Block(q, r));
                        }
                    }
                }
                else
                {
                    var rowData = new ReadOnlyMemory<byte>[g.DataMembers];
                    var scratchQ = writeQ ? null : new byte[Units.BlockBytes];
                    var scratchP = writeP ? null : new byte[Units.BlockBytes];
                    for (int r = plan.RowLo; r < plan.RowLo + plan.RowCount; r++)
                    {
                        for (int i = 0; i < g.DataMembers; i++)
                        {
                            var c = chunks[i];
                            rowData[i] = !c.IsEmpty && r >= c.Lo && r < c.Hi
                                ? newData[i].AsMemory((r - plan.RowLo) * Units.BlockBytes, Units.BlockBytes)
                                : ws.Rows(g.DataMember(stripe, i), r, 1);
                            if (!(!c.IsEmpty && r >= c.Lo && r < c.Hi))
                                Invariant.Assert(ws.RowState(g.DataMember(stripe, i), r) == Workspace.Ok);
                        }
                        var pBlock = writeP ? ws.Block(p, r) : scratchP;
                        if (g.ParityMembers == 2) Parity.Parity.GenPQ(rowData, pBlock, writeQ ? ws.Block(q, r) : scratchQ);
                        else Parity.Parity.Xor(rowData, pBlock);
                    }
                }
            }

            var writes = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
            foreach (var c in chunks)
            {
                if (c.IsEmpty) continue;
                int m = g.DataMember(stripe, c.DataIndex);
                if (!Writable(m)) continue;
                writes.Add((m, stripe * g.ChunkBlocks + c.Lo, newData[c.DataIndex].AsMemory((c.Lo - plan.RowLo) * Units.BlockBytes, c.Rows * Units.BlockBytes), hole && !c.PartialFirst && !c.PartialLast));
            }
            foreach (var (m, r) in tornOutside)
                if (Writable(m)) writes.Add((m, stripe * g.ChunkBlocks + r, ws.Rows(m, r, 1), false));
            if (needSolve)
            {
                // Data blocks outside the write that failed their tags and were reconstructed: the new parity is
                // computed over what they were rebuilt to, so they are rewritten to that (as a read repairs). Left as
                // found, parity and the drive disagree there, and with a member missing the next write or read of
                // the row has two unknowns: it kept the torn block as read and rebuilt the missing member's block
                // from it, wrong (simulator seed 9834 of `--faults all --ops 1000`).
                for (int i = 0; i < g.DataMembers; i++)
                {
                    int m = g.DataMember(stripe, i);
                    if (!Writable(m)) continue;
                    var c = chunks[i];
                    for (int r = plan.RowLo; r < plan.RowLo + plan.RowCount; r++)
                    {
                        if (!c.IsEmpty && r >= c.Lo && r < c.Hi) continue;
                        if (!ws.FoundBad[m][r - plan.RowLo] || ws.RowState(m, r) != Workspace.Ok || tornOutside.Contains((m, r))) continue;
                        writes.Add((m, stripe * g.ChunkBlocks + r, ws.Rows(m, r, 1), false));
                        LogRepaired(Name, stripe, r, m, _members[m]!.Drive.Name);
                    }
                }
            }
            if (writeP) writes.Add((p, stripe * g.ChunkBlocks + plan.RowLo, ws.Rows(p, plan.RowLo, plan.RowCount), false));
            if (writeQ) writes.Add((q, stripe * g.ChunkBlocks + plan.RowLo, ws.Rows(q, plan.RowLo, plan.RowCount), false));
            try { await WriteAllAsync(writes, ct); }
            finally { NoteWritten(stripe, plan.RowLo, plan.RowCount); }
        }
        finally
        {
            foreach (var b in newData) if (b is not null) BlockBuffers.Return(b);
        }
    }

    /// <summary>
    /// Before a parity write touches a drive: the partial parity of every row it changes in part (some data
    /// blocks, not all) goes to <paramref name="guard"/> — from the unchanged blocks if the workspace holds
    /// them all (a reconstruct-write read them), else from the old parity and the old changed blocks (a
    /// read-modify-write read those): P + Σ changed = Σ unchanged. Besides, the new content of every changed
    /// block that the cache could not give back whole after a cut goes in as a one-block sum: a block the
    /// write changes only in part (its other sectors are old data nothing else holds once its member is
    /// lost), and a block of a member that cannot be read now (its content lives only in parity). Rows already
    /// stored by an earlier attempt (<paramref name="stored"/>) are left as they are. A partial sum neither way
    /// can be computed for (P cannot be read and an unchanged block was not) is not stored: with P lost a cut
    /// leaves nothing to reconstruct from anyway.
    /// </summary>
    int StorePartialParity(Workspace ws, StripePlanner.ChunkWrite[] chunks, byte[]?[] newData, int bufRowLo, IPartialParitySink guard, HashSet<int> stored,
        bool countOnly = false)
    {
        var g = Geometry;
        long stripe = ws.Stripe;
        int p = g.PMember(stripe);
        Invariant.Assert(g.DataMembers <= 64);
        int stores = 0;
        var sum = countOnly ? null : BlockBuffers.Rent(Units.BlockBytes);
        try
        {
            var block = countOnly ? default : sum!.AsSpan(0, Units.BlockBytes);
            for (int r = ws.RowLo; r < ws.RowLo + ws.RowCount; r++)
            {
                if (stored.Contains(r)) continue;
                if (!countOnly) stored.Add(r);
                for (int i = 0; i < g.DataMembers; i++)
                {
                    var c = chunks[i];
                    if (c.IsEmpty || r < c.Lo || r >= c.Hi) continue;
                    bool partial = c.PartialFirst && r == c.Lo || c.PartialLast && r == c.Hi - 1;
                    if (!partial && Readable(g.DataMember(stripe, i), stripe)) continue;
                    stores++;
                    if (!countOnly) guard.Store(stripe, r, 1UL << i, newData[i].AsSpan((r - bufRowLo) * Units.BlockBytes, Units.BlockBytes));
                }
                ulong unchanged = 0;
                bool fromUnchanged = true, fromParity = p >= 0 && ws.RowState(p, r) == Workspace.Ok;
                for (int i = 0; i < g.DataMembers; i++)
                {
                    var c = chunks[i];
                    bool changed = !c.IsEmpty && r >= c.Lo && r < c.Hi;
                    bool held = ws.RowState(g.DataMember(stripe, i), r) == Workspace.Ok;
                    if (changed) fromParity &= held;
                    else
                    {
                        unchanged |= 1UL << i;
                        fromUnchanged &= held;
                    }
                }
                if (unchanged == 0 || unchanged == (g.DataMembers == 64 ? ulong.MaxValue : (1UL << g.DataMembers) - 1)) continue;
                if (!fromUnchanged && !fromParity) continue;
                stores++;
                if (countOnly) continue;
                // The first term is copied rather than XORed into a cleared block: one pass less.
                bool first = true;
                if (!fromUnchanged)
                {
                    ws.Block(p, r).CopyTo(block);
                    first = false;
                }
                for (int i = 0; i < g.DataMembers; i++)
                {
                    if (((unchanged >> i) & 1) != 0 != fromUnchanged) continue;
                    if (first) ws.Block(g.DataMember(stripe, i), r).CopyTo(block);
                    else Parity.Parity.XorInto(ws.Block(g.DataMember(stripe, i), r), block);
                    first = false;
                }
                Invariant.Assert(!first, "a partial sum has at least one term");
                guard.Store(stripe, r, unchanged, block);
            }
        }
        finally
        {
            if (sum is not null) BlockBuffers.Return(sum);
        }
        return stores;
    }

    async ValueTask WriteMirrorStripeAsync(long stripe, long sectorLo, long sectorHi, ReadOnlyMemory<byte> source, bool hole, bool recovery, CancellationToken ct)
    {
        var chunks = StripePlanner.SplitByChunk(Geometry, sectorLo, sectorHi);
        var (rowLo, rowHi) = StripePlanner.RowSpan(chunks);
        using var ws = new Workspace(Geometry, stripe, rowLo, rowHi - rowLo);
        var buffers = new List<byte[]>();
        try
        {
            var writes = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
            foreach (var c in chunks)
            {
                if (c.IsEmpty) continue;
                int oldMember = -1;
                if (c.PartialFirst || c.PartialLast)
                {
                    // Old content of the partial blocks, from any good copy.
                    var partial = new StripePlanner.ChunkWrite(c.DataIndex, c.Lo, c.Hi, c.PartialFirst, c.PartialLast);
                    oldMember = await ReadMirrorChunkAsync(ws, stripe, partial, recovery ? MirrorRead.ForRecoveryWrite : MirrorRead.ForWrite, ct);
                }
                var buf = BlockBuffers.Rent((rowHi - rowLo) * Units.BlockBytes);
                buffers.Add(buf);
                MergeNewData(ws, Math.Max(oldMember, 0), buf, rowLo, c, sectorLo, source.Span);
                foreach (int m in Geometry.Copies(c.DataIndex))
                    if (Writable(m))
                        writes.Add((m, stripe * Geometry.ChunkBlocks + c.Lo, buf.AsMemory((c.Lo - rowLo) * Units.BlockBytes, c.Rows * Units.BlockBytes), hole && !c.PartialFirst && !c.PartialLast));
            }
            await WriteAllAsync(writes, ct);
        }
        finally
        {
            foreach (var b in buffers) BlockBuffers.Return(b);
        }
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Warning, Message = "array {Array}: member {Slot} ({Drive}) dropped: {Reason}")]
    partial void LogMemberFailed(string array, int slot, string drive, string reason);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Warning, Message = "array {Array}: stripe {Stripe} row {Row} on member {Slot} ({Drive}) failed its checksum")]
    partial void LogBadBlock(string array, long stripe, int row, int slot, string drive);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Information, Message = "array {Array}: stripe {Stripe} row {Row} on member {Slot} ({Drive}) rewritten from redundancy")]
    partial void LogRepaired(string array, long stripe, int row, int slot, string drive);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Warning, Message = "array {Array}: stripe {Stripe} row {Row}: the block of unreadable member {Slot} recomputed from {Parity}, the parity that agrees with member {TornSlot}'s torn block as read (the other parity yields the version its tag names)")]
    partial void LogBlindSettled(string array, long stripe, int row, int slot, string parity, int tornSlot);

    [LoggerMessage(EventId = 1004, Level = LogLevel.Warning, Message = "array {Array}: stripe {Stripe} row {Row} on member {Slot} ({Drive}) failed its checksum and cannot be reconstructed; a recovery write keeps it as read (torn by a crash) and rewrites it whole")]
    partial void LogTornRewritten(string array, long stripe, int row, int slot, string drive);
}
