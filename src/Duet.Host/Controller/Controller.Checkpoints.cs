using Duet.Cache;
using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Shelf;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

// AW-4, the write log, and AW-3, the array controller pair with checkpointing. Every write this
// controller makes to an array (a destage run, a write-through) opens a record in its NVRAM write log
// before it touches a drive (array, first 4 KiB block, block count, sequence) and the record is cleared
// once a flush of the array's drives followed the write — in batches: a destage round flushes once. The
// same record goes to the peer ("started", id = slot and sequence), which keeps it in its NVRAM's second
// log until "done" comes after the flush. So:
//  - after a restart (kill -9 or power cut), this controller settles the stripes of its own records (scrub
//    with repair: parity recomputed from whole data blocks) before anything else writes, and
//  - a peer that takes this controller over settles the stripes of the records it holds,
// and in both cases only those stripes are checked, never the whole array. "Started" is on the link
// before the first drive write (the sender waits for the post, at most 100 ms) and the link is FIFO, so
// the peer has it whenever the drives may hold part of the write. Checkpoints flow while the link is up
// and the peer is not fenced (also before a restarted controller has paired: it writes its dirty cache to
// the drives first); a hung peer's full link costs a write at most the post limit; a pairing sends the
// peer every record still open (its hello made the peer forget the older ones).
public sealed partial class Controller : IArrayWriteLog
{
    /// <summary>This controller's write log (AW-4) in its NVRAM, and its copy of the peer's.</summary>
    public WriteLog WriteLog { get; }
    readonly Dictionary<byte, RaidBacking> _backings = [];
    long _recoveredSettled;

    /// <summary>The peer's writes started and not yet durable, as far as this controller heard.</summary>
    public int PeerOpenCheckpoints => WriteLog.Mirrored().Count;

    /// <summary>"Started" checkpoints this controller posted to its peer (AW-3).</summary>
    public long StartedCheckpointsPosted => Interlocked.Read(ref _startedPosted);
    long _startedPosted;

    /// <summary>Records of this controller's own log settled at its last start.</summary>
    public long RecoveredWritesSettled => Interlocked.Read(ref _recoveredSettled);

    async ValueTask<int> IArrayWriteLog.StartedAsync(byte array, long firstBlock, long blockCount, int partialSums, CancellationToken ct)
    {
        int slot;
        WriteLogRecord record;
        // The planted bug is a build without sums: no promise either (a promise never used would hold the pool
        // and make writes wait for it, which changes what a campaign does instead of only what it keeps).
        if (_options.PlantedNoPartialParity) partialSums = 0;
        // Failed writes' records hold pool entries until their rows are settled; settled at the first write that finds
        // none settling already (it holds no stripe lock yet), not only once they alone hold the log: a degraded
        // stripe's claim for room, under its lock, cannot settle them, and gave up after 1 s leaving its rows
        // unguarded (simulator seed 9367 of --faults all --ops 1000). A settle the drives do not answer is left to the
        // next write.
        if (WriteLog.AnyFailed && _failedSettles.CurrentCount > 0)
        {
            try { await SettleFailedWritesAsync(array: null, ct); }
            catch (BlockIoException e) { LogFailedSettleDeferred(e.Message); }
        }
        while (!WriteLog.TryOpen(array, firstBlock, (int)blockCount, out slot, out record, partialSums, out bool poolShort))
        {
            // Full (every slot, or the partial-parity pool for this write's sums): the records of writes that
            // returned are cleared by a flush, with their partial sums; flush those arrays. With none, every
            // slot (every entry) belongs to a write in flight: wait for one to end.
            var waiting = WriteLog.ArraysWaitingForFlush();
            if (waiting.Count == 0)
            {
                // Only failed writes' records hold the log: the writes that would settle them cannot open. Their rows
                // are settled from their sums instead, and then they go with the next flush. (They used to be given
                // back with their sums: the recovery write of a degraded RAID 6 stripe a failed destage round had torn
                // then found three members torn and the missing one's blocks nowhere: simulator seeds 9059, 9269.)
                if (WriteLog.OnlyFailedHold)
                {
                    await SettleFailedWritesAsync(array: null, ct);
                    continue;
                }
                // No WaitAsync(ct): its completion would run on the thread pool (the simulator forbids that).
                await (poolShort ? WriteLog.PoolRoomAsync(partialSums) : WriteLog.SlotFreedAsync());
                continue;
            }
            await FlushToFreeLogAsync(waiting, ct);
        }
        if (Shelf is null) return slot; // no shelf, no peer that could take us over
        bool heard = false;
        if (CheckpointsFlow)
        {
            Interlocked.Increment(ref _startedPosted);
            // Bounded: a peer that stopped reading its link (hung) must not stop our writes. Late or lost, the
            // shelf records the peer's copy of our log incomplete before the write touches a drive (below).
            var post = PostCheckpointAsync(StartedBytes(slot, record));
            try { heard = await Waits.WithTimeout(post, CheckpointPostLimit, _options.Time); }
            catch (TimeoutException)
            {
                // Counted late before the mark, and watched only after it: a post that arrives meanwhile then clears
                // the record it no longer needs instead of finding nothing to clear and leaving it set.
                Interlocked.Increment(ref _logPostsLate);
                try { await MarkLogStaleAsync(slot, hole: false); }
                finally { _ = AfterLatePostAsync(post); }
                return slot;
            }
        }
        // The link down, the peer fenced, or the post dropped: the peer's copy of our log lacks this record.
        if (!heard) await MarkLogStaleAsync(slot, hole: true);
        return slot;
    }

    /// <summary>Flushes <paramref name="arrays"/> from inside a write, so that the records (and sums) their flush makes
    /// durable free their log slots and pool entries.</summary>
    async Task FlushToFreeLogAsync(IEnumerable<byte> arrays, CancellationToken ct)
    {
        foreach (var a in arrays)
            if (ServedBackingOrAbandon(a) is { } backing) await backing.FlushToFreeLogAsync(ct);
    }

    /// <summary>The backing of array <paramref name="number"/> if this controller serves it; else its records are dropped
    /// (moved, deleted, taken: nothing of ours writes there now, and its stripes are its owner's to check) and null.</summary>
    RaidBacking? ServedBackingOrAbandon(byte number)
    {
        RaidBacking? backing;
        lock (_backings) _backings.TryGetValue(number, out backing);
        if (backing is not null && Arrays.ServedArrays.Contains(backing.Array)) return backing;
        int dropped = WriteLog.Abandon(number);
        if (dropped > 0) LogAbandoned(number, dropped);
        return null;
    }

    /// <summary>
    /// A stripe of a degraded array's write needs room for its sums before it touches a drive. While the pool has
    /// none: flush the arrays of the stripes open writes finished (their sums can then go) and of the writes that
    /// returned (their records go), or, with neither, wait for a write in flight to finish a stripe or return.
    /// </summary>
    async ValueTask IArrayWriteLog.ClaimPartialSumsAsync(int slot, int sums, (long Stripe, int RowLo, int RowCount)? rows, CancellationToken ct)
    {
        if (_options.PlantedNoPartialParity) return; // stores nothing: a claim would only hold the pool
        while (!WriteLog.TryClaimPartialSums(slot, sums, out var room, out bool never, rows))
        {
            if (never) return;
            var written = WriteLog.TakeStripesWritten();
            var arrays = written.Select(x => x.Array).Concat(WriteLog.ArraysWaitingForFlush()).Distinct().ToList();
            if (arrays.Count == 0)
            {
                // Bounded: the pool may be held by failed writes' records, which later writes of their blocks settle
                // (this one's among them) and which are given back only while no write is open. A stripe that waited
                // its limit with nothing freed goes on as it did before claims: a sum the pool refuses is counted
                // unguarded. (Waits.WithTimeout, not WaitAsync(ct): see StartedAsync.)
                try { await Waits.WithTimeout(room!, ClaimWaitLimit, _options.Time); }
                catch (TimeoutException)
                {
                    Interlocked.Increment(ref _claimsGivenUp);
                    LogClaimGivenUp(sums, WriteLog.PartialParityFree, WriteLog.PartialParityCapacity);
                    return;
                }
                continue;
            }
            await FlushToFreeLogAsync(arrays, ct);
            var released = WriteLog.ReleaseStripeSums(written);
            // The peer holds copies of these sums (a degraded array's): they go there too, or a long write's would
            // outgrow what the peer keeps.
            if (CheckpointsFlow)
                foreach (var (s, sequence, array, stripe) in released)
                    _ = PostOrDropAsync(IclSignal.Message, DuetFrame.ToArray(new PartialSumsReleased(WriteLog.LinkId(s, sequence), array, stripe)));
        }
    }

    void IArrayWriteLog.StripeWritten(int slot, long stripe) => WriteLog.StripeWritten(slot, stripe);

    /// <summary>
    /// Settles the rows our failed writes (of <paramref name="array"/>, or of every array) may have torn and that no
    /// later write has written again: each stripe is scrubbed and repaired with the sums those records hold (a block
    /// of a member that cannot be read comes from them, torn blocks are kept as read, parity is recomputed). The
    /// records then go with the next flush. Done when the log is held by nothing else, and before an array leaves
    /// this controller (its sums are in our NVRAM only). A record of an array not served here any more is dropped.
    /// A settle that fails (the drives out of reach) throws, and the records stay with their sums.
    /// </summary>
    internal async Task SettleFailedWritesAsync(byte? array, CancellationToken ct)
    {
        await _failedSettles.WaitAsync(ct);
        // One array's settle that fails (its drives out of reach) does not keep the others' records: the first
        // failure is thrown once every array had its turn.
        BlockIoException? failure = null;
        try
        {
            foreach (var group in WriteLog.FailedRecords(array).GroupBy(x => x.Array))
            {
                try { await SettleFailedWritesOfAsync(group.Key, [.. group.Select(x => (x.Slot, x.Sequence, x.Unsettled))], ct); }
                catch (BlockIoException e) { failure ??= e; }
            }
        }
        finally { _failedSettles.Release(); }
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
    }

    /// <summary>Settles the failed records of array <paramref name="number"/> (<see cref="SettleFailedWritesAsync"/>).</summary>
    async Task SettleFailedWritesOfAsync(byte number, List<(int Slot, ulong Sequence, List<(long First, long End)> Unsettled)> records, CancellationToken ct)
    {
        if (ServedBackingOrAbandon(number) is not { } backing) return;
        var raid = backing.Array;
        if (raid.IsFailed)
        {
            // Nothing settles a failed array's rows; kept, its records would hold the log for every other array.
            foreach (var (slot, sequence, _) in records) WriteLog.FailedGivenUp(slot, sequence);
            return;
        }
        int rows = raid.Geometry.ChunkBlocks;
        // Each stripe's sums are asked for under its lock: a write may have rewritten a row (and superseded the
        // failed write's sum for it) since, and a stale sum must not rebuild a block.
        IReadOnlyList<Duet.Raid.PartialParity> SumsOf(long stripe) => ((IArrayWriteLog)this).HeldPartialParity(number, stripe, 0, rows);
        foreach (var (slot, sequence, unsettled) in records)
        {
            long repaired = 0, unrepairable = 0;
            foreach (var (first, end) in unsettled)
            {
                var result = await raid.SettleStripesAsync(first, end - first, SumsOf, ct);
                repaired += result.Repaired;
                unrepairable += result.Unrepairable;
            }
            WriteLog.FailedSettled(slot, sequence);
            var (lo, hi) = (unsettled.Min(x => x.First), unsettled.Max(x => x.End));
            LogFailedWriteSettled(raid.Name, lo, (uint)(hi - lo), repaired, unrepairable);
        }
        // What the settle wrote is made durable, and the records go with it.
        await backing.FlushToFreeLogAsync(ct);
    }

    readonly AsyncGate _failedSettles = new(1, 1);

    [LoggerMessage(EventId = 7083, Level = LogLevel.Debug, Message = "write log: the rows failed writes may have torn could not be settled now: {Reason} (AW-4)")]
    partial void LogFailedSettleDeferred(string reason);

    [LoggerMessage(EventId = 7082, Level = LogLevel.Information, Message = "array {Array}: the rows a failed write at block {Lba} (+{Count}) may have torn were settled with the partial sums failed writes hold: {Repaired} blocks repaired, {Unrepairable} unrepairable (AW-4)")]
    partial void LogFailedWriteSettled(string array, long lba, uint count, long repaired, long unrepairable);

    /// <summary>How long a stripe waits for room for its sums with nothing freed before it goes on without the claim.</summary>
    static readonly TimeSpan ClaimWaitLimit = TimeSpan.FromSeconds(1);
    long _claimsGivenUp;

    /// <summary>Stripes of degraded arrays that waited <see cref="ClaimWaitLimit"/> for room for their sums with
    /// nothing freed, and went on without the claim (a refused sum is then counted unguarded).</summary>
    public long PartialSumClaimsGivenUp => Interlocked.Read(ref _claimsGivenUp);

    [LoggerMessage(EventId = 7081, Level = LogLevel.Warning, Message = "write log: a stripe of an array with a member missing waited 1 s for room for its {Sums} partial sums ({Free} of {Capacity} entries free) and goes on without it; a sum the pool refuses leaves its row unguarded (AW-4)")]
    partial void LogClaimGivenUp(int sums, int free, int capacity);

    // ---- the peer's copy of our log, incomplete (AW-3) -------------------------------------------------------
    // A drive write whose "started" is not in the peer's window (the link down, the peer fenced, the post dropped or
    // still waiting at its time limit) is one a takeover by that peer would not settle: if we died in it, the
    // stripe would stay torn. So before such a write touches a drive, the shelf records our port "log stale"; a
    // takeover that sees it settles the whole of every array it takes. It is cleared once the peer's copy is whole
    // again: after a pairing sent the peer every open record (its hello emptied its copy), with no hole since and no
    // late post still waiting; or once the late posts arrived, if nothing was lost meanwhile. One gate serialises
    // the two, so a clear never overtakes a mark that counted its hole first.
    readonly AsyncGate _logStaleGate = new(1, 1);
    volatile bool _logMarkedStale;
    long _logHoles, _logHolesAtSync = -1;
    int _logPostsLate;

    /// <summary>Whether the shelf records our peer's copy of our write log as incomplete (AW-3).</summary>
    public bool LogMarkedStale => _logMarkedStale;

    /// <summary>Posts a checkpoint: true once it is in the peer's window, false if the link dropped it.</summary>
    async Task<bool> PostCheckpointAsync(byte[] message)
    {
        try { await Link.PostAsync(IclSignal.Message, Nvram.Epoch, message, default); return true; }
        catch (IclLinkDownException) { return false; }
    }

    async Task AfterLatePostAsync(Task<bool> post)
    {
        bool arrived;
        try { arrived = await post; }
        catch (Exception) { arrived = false; } // the link disposed under it (a stop): lost, as far as we know
        if (!arrived) Interlocked.Increment(ref _logHoles);
        Interlocked.Decrement(ref _logPostsLate);
        await TryClearLogStaleAsync();
    }

    /// <summary>Before a drive write whose record the peer may not have: the shelf records our log copy stale. If
    /// the shelf cannot, the write does not start (its record is released).</summary>
    async ValueTask MarkLogStaleAsync(int slot, bool hole)
    {
        if (hole) Interlocked.Increment(ref _logHoles);
        await _logStaleGate.WaitAsync(CancellationToken.None);
        try
        {
            if (_logMarkedStale) return;
            await Shelf!.SetLogStaleAsync(true);
            _logMarkedStale = true;
            LogLogStale(true);
        }
        catch (ShelfException e)
        {
            WriteLog.NotStarted(slot);
            throw new BlockIoException(BlockErrorKind.Unavailable,
                $"controller {Name} cannot record at the shelf that its peer's copy of its write log is incomplete, so the array write does not start: {e.Message}");
        }
        finally { _logStaleGate.Release(); }
    }

    /// <summary>Clears the shelf's record if the peer's copy of our log is whole: synchronised by a pairing, no hole
    /// since, no late post waiting. Failing, it stays set (a takeover then settles more than it needs).</summary>
    async Task TryClearLogStaleAsync()
    {
        if (!_logMarkedStale || Shelf is null) return;
        await _logStaleGate.WaitAsync(CancellationToken.None);
        try
        {
            if (!_logMarkedStale || Volatile.Read(ref _logPostsLate) != 0 || Interlocked.Read(ref _logHoles) != Interlocked.Read(ref _logHolesAtSync)) return;
            await Shelf.SetLogStaleAsync(false);
            _logMarkedStale = false;
            LogLogStale(false);
        }
        catch (Exception e) when (e is ShelfException or ObjectDisposedException) { } // stays set
        finally { _logStaleGate.Release(); }
    }

    [LoggerMessage(EventId = 7075, Level = LogLevel.Information, Message = "write log: the peer's copy is {State} at the shelf (AW-3)")]
    partial void LogLogStaleCore(string state);
    void LogLogStale(bool stale) => LogLogStaleCore(stale ? "recorded incomplete (a takeover settles whole arrays)" : "whole again");

    // ---- partial sums towards the peer (AW-4 with AW-3) ----------------------------------------------------------
    // While an array has a member that cannot be read, a torn row's block on that member lives only in the partial
    // sums of the write that tore it; a takeover settles the peer's logged writes, so it needs them as much as a
    // restart does. Each sum such a write stores is posted to the peer after its record's "started" and before the
    // stripe's drive writes.
    // A healthy array's sums stay here: a takeover recomputes parity from whole data, and 4 KiB more on the link
    // for most small writes is not worth a member failing in the window between a tear and its settle.
    long _sumsPosted, _sumsLost;

    /// <summary>Partial sums posted to the peer (writes to arrays with a member that cannot be read).</summary>
    public long PartialSumsPosted => Interlocked.Read(ref _sumsPosted);

    /// <summary>Partial sums the link dropped (it went down before they were in the peer's window).</summary>
    public long PartialSumsLost => Interlocked.Read(ref _sumsLost);

    bool IArrayWriteLog.StorePartialParity(int slot, long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum) =>
        !_options.PlantedNoPartialParity && WriteLog.StorePartialParity(slot, stripe, row, unchanged, sum);

    Task<bool>? IArrayWriteLog.PostPartialSum(int slot, long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum)
    {
        if (!CheckpointsFlow) return null;
        var r = WriteLog.OpenRecord(slot);
        Interlocked.Increment(ref _sumsPosted);
        return PostCheckpointAsync(SumBytes(slot, r, stripe, row, unchanged, sum.ToArray()));
    }

    // A stripe's posts that were not taken in at once (the peer's window full) are waited for before its drive writes,
    // together within the post limit, as a write waits for its "started". (A first version that waited, in the
    // session that added these posts, moved the simulator's power,fail-drive seed 74 onto a degraded write whose sums
    // outran the pool and tore unguarded at a cut; the posts then went unwaited until stripes claimed their room.)
    async ValueTask IArrayWriteLog.PartialSumsPostedAsync(IReadOnlyList<Task<bool>> posts)
    {
        try { await Waits.WithTimeout(Task.WhenAll(posts), CheckpointPostLimit, _options.Time); }
        catch (TimeoutException) { }
        catch (Exception) { } // a post the link failed under a stop: counted below
        int lost = posts.Count(p => !p.IsCompletedSuccessfully || !p.Result);
        if (lost == 0) return;
        Interlocked.Add(ref _sumsLost, lost);
        LogSumLost();
    }

    [LoggerMessage(EventId = 7079, Level = LogLevel.Warning, Message = "write log: a partial sum of a write to an array with a member missing did not reach the peer before the write went on; a takeover in that write could not rebuild that member's blocks of the torn rows (AW-4)")]
    partial void LogSumLost();

    /// <summary>Whether array <paramref name="number"/>, served here, has a member that cannot be read now.</summary>
    bool IsDegraded(byte number)
    {
        RaidBacking? backing;
        lock (_backings) _backings.TryGetValue(number, out backing);
        return backing is not null && backing.Unreadable() > 0;
    }

    void OnPartialSum(ReadOnlySpan<byte> message)
    {
        if (PartialSumCheckpoint.TryDecode(message, out var m, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("partial sum", error.ToString());
            return;
        }
        var (slot, sequence) = WriteLog.FromLinkId(m!.RecordId);
        if (!WriteLog.StoreMirroredSum(slot, sequence, m.Array, m.Stripe, m.Row, m.Unchanged, m.Sum))
            LogUnknown("partial sum", $"of a record not held here (slot {slot}, sequence {sequence}) or beyond the {2 * Nvram.Layout.PpSlots} kept");
    }

    void OnPartialSumsReleased(ReadOnlySpan<byte> message)
    {
        if (PartialSumsReleased.TryDecode(message, out var m, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("partial sums released", error.ToString());
            return;
        }
        var (slot, sequence) = WriteLog.FromLinkId(m!.RecordId);
        WriteLog.DropMirroredStripe(slot, sequence, m.Array, m.Stripe);
    }

    void IArrayWriteLog.SupersedePartialParity(int slot, long stripe, int row)
    {
        if (!_options.PlantedNoPartialParity) WriteLog.SupersedePartialParity(slot, stripe, row);
    }

    void IArrayWriteLog.Written(int slot, bool failed) => WriteLog.Written(slot, failed);
    IReadOnlyList<Duet.Raid.PartialParity> IArrayWriteLog.HeldPartialParity(byte array, long stripe, int rowLo, int rowCount) =>
        [.. WriteLog.HeldPartialParity(array, stripe, rowLo, rowCount).Select(x => new Duet.Raid.PartialParity(x.Meta.Stripe, x.Meta.Row, x.Meta.Unchanged, x.Sum, x.Meta.Sequence))];
    int[] IArrayWriteLog.TakeWritten(byte array) => WriteLog.TakeWritten(array);
    void IArrayWriteLog.FlushFailed(int[] slots) => WriteLog.FlushFailed(slots);

    void IArrayWriteLog.Durable(int[] slots)
    {
        if (slots.Length == 0) return;
        var closed = WriteLog.Close(slots);
        if (!CheckpointsFlow) return;
        // One message for the flush: a destage round's records end together.
        for (int from = 0; from < slots.Length; from += WriteCheckpointsDone.IdsMax)
        {
            int n = Math.Min(WriteCheckpointsDone.IdsMax, slots.Length - from);
            var ids = new ulong[n];
            for (int i = 0; i < n; i++) ids[i] = WriteLog.LinkId(slots[from + i], closed[from + i].Sequence);
            _ = PostOrDropAsync(IclSignal.Message, DuetFrame.ToArray(new WriteCheckpointsDone(ids)));
        }
    }

    static byte[] SumBytes(int slot, WriteLogRecord r, long stripe, int row, ulong unchanged, byte[] sum) =>
        DuetFrame.ToArray(new PartialSumCheckpoint(WriteLog.LinkId(slot, r.Sequence), r.Array, stripe, row, unchanged, sum));

    static byte[] StartedBytes(int slot, WriteLogRecord r) =>
        DuetFrame.ToArray(new WriteCheckpoint(CheckpointPhase.Started, WriteLog.LinkId(slot, r.Sequence), r.Array, (ulong)r.FirstBlock, (uint)r.BlockCount));

    // Checkpoints go to a peer that can take over: a shelf, the link up, the peer not fenced. Not only while the
    // mirror is healthy: a controller that restarts writes its dirty cache to the drives before it pairs (and
    // destages in error-recovery mode while a pairing is refused or times out); if it dies then, the peer's
    // takeover must know which stripes those writes may have torn. A peer that is not listening costs each
    // write at most the post limit until the link or the fence stops the flow.
    bool CheckpointsFlow => Shelf is not null && Link.IsUp && !_peerFenced;
    static readonly TimeSpan CheckpointPostLimit = TimeSpan.FromMilliseconds(100);

    RaidBacking NewBacking(Duet.Raid.RaidArray raid)
    {
        byte number = Arrays.NumberOf(raid);
        var backing = new RaidBacking(raid, number, Duet.Raid.Management.ArrayManager.SerialOf(raid.Uuid), _options.WriteLog ? this : null);
        // AW-5: a torn block the cache will rewrite by a recovery write (replayed, adopted, or left by a failed
        // destage) is that write's to settle, not settle's, scrub's or a read's to put on the bad-block list.
        raid.HeldForRecovery = block => Cache.HoldsRecoveryData(number, block * Units.SectorsPerBlock, Units.SectorsPerBlock);
        lock (_backings) _backings[backing.ArrayNumber] = backing;
        return backing;
    }

    /// <summary>Pairing: the peer's copy of our log starts empty; it gets every record still open.</summary>
    async Task SendOpenCheckpointsAsync(long holesBefore)
    {
        if (Shelf is null) return;
        // A record lost on the way would be a hole the shelf's record must keep covering: the pairing fails instead.
        foreach (var (slot, record) in WriteLog.Live())
        {
            await Link.PostAsync(IclSignal.Message, Nvram.Epoch, StartedBytes(slot, record), default);
            // Its partial sums too, if its array has a member that cannot be read now.
            if (!IsDegraded(record.Array)) continue;
            foreach (var (meta, sum) in WriteLog.PartialParityOf(slot))
                await Link.PostAsync(IclSignal.Message, Nvram.Epoch, SumBytes(slot, record, meta.Stripe, meta.Row, meta.Unchanged, sum), default);
        }
        // Every record opened before the hello is in the peer's copy now (the hello emptied it, these refilled it);
        // a hole counted since then keeps the shelf's record.
        Interlocked.Exchange(ref _logHolesAtSync, holesBefore);
        await TryClearLogStaleAsync();
    }

    /// <summary>Write checkpoints of the peer that were still in this end's window when the link was cut, kept rather
    /// than dropped with the rest (<see cref="IclLink.Salvage"/>).</summary>
    public long CheckpointsSalvaged => Interlocked.Read(ref _checkpointsSalvaged);
    long _checkpointsSalvaged;

    // A "started" the peer posted before its drive writes, still unread here when it died, is what a takeover needs
    // to settle the stripe those writes may have torn; a "done" after it closes it again. Anything else of a cut link
    // goes (a mirror image or a forwarded request of a dead session is answered by no one).
    void OnSalvaged(IclSignal signal, ulong epoch, ReadOnlySpan<byte> message)
    {
        if (signal != IclSignal.Message || epoch < _epochFloor) return;
        var kind = MessageClassifier.Classify(message);
        if (kind == MessageKind.WriteCheckpoint) OnWriteCheckpoint(message);
        else if (kind == MessageKind.WriteCheckpointsDone) OnWriteCheckpointsDone(message);
        else if (kind == MessageKind.PartialSum) OnPartialSum(message);
        else if (kind == MessageKind.PartialSumsReleased) OnPartialSumsReleased(message);
        else return;
        Interlocked.Increment(ref _checkpointsSalvaged);
        LogCheckpointSalvaged(kind.ToString());
    }

    [LoggerMessage(EventId = 7074, Level = LogLevel.Information, Message = "kept a {Kind} of the peer that was still unread when the link was cut (AW-3)")]
    partial void LogCheckpointSalvaged(string kind);

    void OnWriteCheckpoint(ReadOnlySpan<byte> message)
    {
        if (WriteCheckpoint.TryDecode(message, out var c, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("write checkpoint", error.ToString());
            return;
        }
        var (slot, sequence) = WriteLog.FromLinkId(c.HostTag);
        if ((uint)slot >= (uint)WriteLog.Slots || c.BlockCount == 0 || c.Lba > long.MaxValue)
        {
            LogUnknown("write checkpoint", $"slot {slot}, blocks {c.Lba}+{c.BlockCount}");
            return;
        }
        if (c.Phase == CheckpointPhase.Started) WriteLog.StoreMirrored(slot, new WriteLogRecord(c.Volume, (long)c.Lba, (int)c.BlockCount, sequence));
        else WriteLog.ClearMirrored(slot, sequence);
    }

    void OnWriteCheckpointsDone(ReadOnlySpan<byte> message)
    {
        if (WriteCheckpointsDone.TryDecode(message, out var done, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("write checkpoints done", error.ToString());
            return;
        }
        foreach (ulong id in done!.Ids)
        {
            var (slot, sequence) = WriteLog.FromLinkId(id);
            if ((uint)slot >= (uint)WriteLog.Slots)
            {
                LogUnknown("write checkpoints done", $"slot {slot}");
                continue;
            }
            WriteLog.ClearMirrored(slot, sequence);
        }
    }

    /// <summary>A new session of the peer: what its old session started is its own replay's to finish.</summary>
    void ForgetPeerCheckpoints() => WriteLog.ClearAllMirrored();

    /// <summary>Start-up: settles the stripes of every record this controller's log kept from its last run,
    /// on the arrays it serves, with the partial sums of every recovered record of the array (an array another
    /// controller serves now was settled by its takeover, or is its owner's to check).</summary>
    async Task SettleRecoveredWritesAsync()
    {
        int found = WriteLog.Recovered.Count;
        if (found == 0) return;
        var served = Arrays.ServedArrays.ToDictionary(a => Arrays.NumberOf(a));
        // Records of arrays not served here are dropped (not settled: their stripes are not ours to write).
        foreach (var (slot, r) in WriteLog.Recovered)
            if (!served.ContainsKey(r.Array)) WriteLog.Retire(slot);
        // Every record's partial sums, by array: a stripe is settled whole, so it needs the sums of every write
        // that may have torn it (the latest that covers a lost block is the one used), not only the record's own.
        var sums = new Dictionary<byte, List<Duet.Raid.PartialParity>>();
        foreach (var (slot, r) in WriteLog.Recovered)
        {
            if (!sums.TryGetValue(r.Array, out var list)) sums[r.Array] = list = [];
            foreach (var (meta, sum) in WriteLog.RecoveredPartialParity(slot))
                list.Add(new Duet.Raid.PartialParity(meta.Stripe, meta.Row, meta.Unchanged, sum, r.Sequence));
        }
        int settled = 0;
        await WriteLog.SettleRecoveredAsync(async (slot, r) =>
        {
            var raid = served[r.Array];
            try
            {
                var result = await raid.SettleStripesAsync(r.FirstBlock, r.BlockCount, sums.GetValueOrDefault(r.Array));
                if (result.Repaired > 0 || result.Unrepairable > 0) LogSettled(raid.Name, r.FirstBlock, (uint)r.BlockCount, result.Repaired, result.Unrepairable);
            }
            catch (BlockIoException e)
            {
                // Kept: the record stays in the log (and goes to the peer when we pair) until a later start settles it.
                LogSettleFailed(raid.Name, r.FirstBlock, (uint)r.BlockCount, e.Message);
                return false;
            }
            settled++;
            return true;
        }, async () =>
        {
            // What settling wrote must be durable before the records that name those stripes go: a cut before
            // that flush may tear a settled row again (with a member missing, its partial sums are then all that
            // can give the lost block back). A flush that fails keeps every record for the next start.
            bool all = true;
            foreach (var raid in served.Values) all &= await FlushSettledAsync(raid);
            return all;
        });
        Interlocked.Add(ref _recoveredSettled, settled);
        LogRecoveredLog(found, sums.Values.Sum(x => x.Count), settled);
        // What is left (the drives could not be reached, a flush failed) is owed a settle from now on: no request
        // reaches one of those stripes before it is settled, and they are settled behind the start once the drives
        // answer; only then do the records go. (They used to wait for the next start, holding their log slots: a log
        // full of them stopped every destage, and a restarted controller, which destages before it pairs, never
        // paired again: simulator seed 159.) Settled that way, without the records' partial sums.
        var left = new List<PeerSettle>();
        foreach (var (slot, r) in WriteLog.Recovered)
        {
            if (!served.TryGetValue(r.Array, out var raid)) continue;
            raid.MarkUnsettled(r.FirstBlock, r.BlockCount);
            left.Add(new PeerSettle(slot, r, raid, Own: true));
        }
        if (left.Count > 0) _ = SettleLoggedWritesAsync(left);
    }

    /// <summary>
    /// Takeover (AW-3): the stripes of every write the peer started on the taken arrays and never made durable
    /// are marked owed a settle (<see cref="Duet.Raid.RaidArray.MarkUnsettled"/>); the arrays are served at once,
    /// and a request that reaches such a stripe settles it first, under the stripe's lock. The rest are settled
    /// behind the takeover (<see cref="SettlePeerWritesAsync"/>). Before, the takeover settled them all first:
    /// 511 logged writes took 1.3 s under load, and every request to the peer's arrays waited for it. Returns the
    /// records marked.
    /// </summary>
    /// <param name="logStale">The shelf says the peer wrote while its log's copy here could lack records: then the
    /// copy's partial sums are not used (see below).</param>
    int MarkPeerCheckpoints(HashSet<byte> numbers, List<PeerSettle> work, bool logStale)
    {
        int marked = 0;
        // The peer's partial sums, by array: a stripe is settled whole, so it gets the sums of every write that may
        // have torn it (the latest that covers a lost block is the one used), as a start settles its own.
        // Not from a stale copy: a write the copy never heard may have changed the row since a sum here was taken
        // (the peer superseded that sum in its own log; the copy keeps it, as the latest it knows). Taken over the
        // lost block, such a sum gives back its content from before that acknowledged write (simulator seed 11492
        // of --faults all --ops 1000: a RAID 5 with a member missing, written through while the link was down).
        // The stale peer's arrays are settled whole from parity instead (MarkWholeArrays).
        var sums = new Dictionary<byte, List<Duet.Raid.PartialParity>>();
        foreach (byte number in numbers)
            sums[number] = logStale ? [] : [.. WriteLog.MirroredPartialParity(number).Select(x => new Duet.Raid.PartialParity(x.Meta.Stripe, x.Meta.Row, x.Meta.Unchanged, x.Sum, x.Meta.Sequence))];
        foreach (var (slot, r) in WriteLog.Mirrored())
        {
            if (!numbers.Contains(r.Array)) continue;
            var raid = Arrays.ServedArrays.FirstOrDefault(a => Arrays.NumberOf(a) == r.Array);
            if (raid is null) continue;
            raid.MarkUnsettled(r.FirstBlock, r.BlockCount, sums[r.Array]);
            if (!work.Any(w => w.Slot == slot && w.Record.Sequence == r.Sequence)) work.Add(new PeerSettle(slot, r, raid, Own: false));
            marked++;
        }
        return marked;
    }

    /// <summary>
    /// Takeover (AW-3) of a peer whose port the shelf records "log stale": it wrote to the drives while its log's
    /// copy here could lack the record, so any stripe of its arrays may be torn. Every stripe of each taken array is
    /// owed a settle, settled behind the takeover in pieces (slot -1: no record of ours to clear) or first by the
    /// request that reaches it. Returns the arrays.
    /// </summary>
    List<string> MarkWholeArrays(Func<Duet.Raid.RaidArray, bool> which, List<PeerSettle> work, bool own)
    {
        var names = new List<string>();
        foreach (var raid in Arrays.ServedArrays)
        {
            if (!which(raid)) continue;
            byte number = Arrays.NumberOf(raid);
            long capacity = raid.Geometry.CapacityBlocks;
            raid.MarkUnsettled(0, capacity);
            long piece = WholeSettlePieceStripes * raid.Geometry.StripeDataBlocks;
            for (long first = 0; first < capacity; first += piece)
                work.Add(new PeerSettle(-1, new WriteLogRecord(number, first, (int)Math.Min(piece, capacity - first), 0), raid, Own: own));
            names.Add(raid.Name);
        }
        return names;
    }

    /// <summary>Arrays registered here (<see cref="RegisterServedArrays"/>) whose superblocks say a whole settle is
    /// owed (<see cref="Duet.Raid.Superblock.SettleOwed"/>) and that no settle has started for yet.</summary>
    readonly HashSet<string> _owedWhole = new(StringComparer.Ordinal);

    HashSet<string> TakeOwedWhole()
    {
        lock (_volumesLock)
        {
            var names = new HashSet<string>(_owedWhole, StringComparer.Ordinal);
            _owedWhole.Clear();
            return names;
        }
    }

    /// <summary>
    /// AW-3: arrays this controller began to serve (a start, a rescan) whose superblocks say a takeover owed them a
    /// whole settle that a stop cut: every stripe is marked owed (a request settles the one it reaches first) and
    /// settled behind, and the superblocks are cleared once it is done. A takeover in progress takes them itself,
    /// after the peer's logged writes are marked with their partial sums.
    /// </summary>
    void StartOwedWholeSettles()
    {
        if (Volatile.Read(ref _takingOver) != 0) return;
        var owed = TakeOwedWhole();
        if (owed.Count == 0) return;
        var work = new List<PeerSettle>();
        var names = MarkWholeArrays(raid => owed.Contains(raid.Name), work, own: true);
        if (names.Count == 0) return;
        LogOwedWhole(string.Join(", ", names));
        _ = SettleLoggedWritesAsync(work);
    }

    [LoggerMessage(EventId = 7084, Level = LogLevel.Warning, Message = "arrays {Arrays}: a takeover owed them a whole settle and was cut before it was done (their superblocks say so): settling them whole behind the start (AW-3)")]
    partial void LogOwedWhole(string arrays);

    /// <summary>Stripes in one piece of a whole-array settle: the lanes take pieces in turn.</summary>
    const int WholeSettlePieceStripes = 1024;

    /// <summary>A logged write whose stripes are owed a settle: the peer's (a takeover) or this controller's own (a
    /// start that could not settle it).</summary>
    readonly record struct PeerSettle(int Slot, WriteLogRecord Record, Duet.Raid.RaidArray Raid, bool Own);

    /// <summary>Lanes that settle logged writes behind a takeover or a start: each stripe is settled under its lock,
    /// so lanes only overlap drive reads. Few: a request settles the stripe it needs itself, and the drives are
    /// the host requests' first (8 lanes under the adapter bench's load slowed the first writes after a takeover).</summary>
    const int SettleLanes = 2;

    long _peerSettlesPending;

    /// <summary>Logged writes of a taken-over peer whose stripes are not all settled yet (AW-3).</summary>
    public long PeerSettlesPending => Interlocked.Read(ref _peerSettlesPending);

    /// <summary>Settles what <see cref="MarkPeerCheckpoints"/> marked (stripes a request settled already are
    /// skipped), flushes, and clears the records; what fails is tried again a heartbeat period later.</summary>
    Task SettlePeerWritesAsync(List<PeerSettle> work)
    {
        Interlocked.Exchange(ref _peerSettlesPending, work.Count);
        return SettleLoggedWritesAsync(work);
    }

    /// <summary>Settles the owed stripes of <paramref name="work"/> (stripes a request settled already are skipped),
    /// flushes, and clears the records (the peer's from our copy of its log; our own from ours); what fails is
    /// tried again a heartbeat period later, until the controller stops.</summary>
    async Task SettleLoggedWritesAsync(List<PeerSettle> work)
    {
        if (work.Count == 0) return;
        bool peer = !work[0].Own;
        var whole = work.Where(w => w.Slot < 0).Select(w => w.Raid.Name).Distinct(StringComparer.Ordinal).ToList();
        long start = _options.Time.GetTimestamp();
        int total = work.Count;
        var raids = work.Select(w => w.Raid).Distinct().ToList();
        long onAccessBefore = raids.Sum(r => r.StripesSettledOnAccess);
        while (work.Count > 0 && !_stopping.IsCancellationRequested)
        {
            var failed = new System.Collections.Concurrent.ConcurrentBag<PeerSettle>();
            async Task LaneAsync(int lane)
            {
                for (int i = lane; i < work.Count; i += SettleLanes)
                {
                    var w = work[i];
                    try { await w.Raid.SettleMarkedAsync(w.Record.FirstBlock, w.Record.BlockCount, _stopping.Token); }
                    catch (Exception e) when (e is BlockIoException or OperationCanceledException)
                    {
                        if (e is BlockIoException) LogSettleFailed(w.Raid.Name, w.Record.FirstBlock, (uint)w.Record.BlockCount, e.Message);
                        failed.Add(w);
                    }
                }
            }
            await Task.WhenAll(Enumerable.Range(0, Math.Min(SettleLanes, work.Count)).Select(LaneAsync));
            // What settling wrote is on the drives before the records go (a cut before that finds them again).
            var done = work.Except(failed).ToList();
            var flushed = new HashSet<Duet.Raid.RaidArray>();
            foreach (var raid in done.Select(w => w.Raid).Distinct())
                if (await FlushSettledAsync(raid)) flushed.Add(raid);
            var left = new List<PeerSettle>(failed);
            foreach (var w in done)
            {
                if (!flushed.Contains(w.Raid)) left.Add(w);
                else if (!w.Own) { if (w.Slot >= 0) WriteLog.ClearMirrored(w.Slot, w.Record.Sequence); }
                else if (WriteLog.Recovered.Any(x => x.Slot == w.Slot && x.Record.Sequence == w.Record.Sequence)) WriteLog.Retire(w.Slot);
            }
            foreach (var raid in done.Select(w => w.Raid).Distinct())
            {
                var r = raid.MarkedSettleResult;
                if (r.Repaired > 0 || r.Unrepairable > 0) LogSettled(raid.Name, 0, 0, r.Repaired, r.Unrepairable);
            }
            work = left;
            if (peer) Interlocked.Exchange(ref _peerSettlesPending, work.Count);
            if (work.Count == 0)
            {
                // Every stripe of those arrays settled and flushed: their superblocks no longer owe it.
                foreach (var name in whole)
                {
                    try { await Arrays.SetSettleOwedAsync(name, false, _stopping.Token); }
                    catch (Exception e) when (e is BlockIoException or Duet.Raid.Management.ManagementException or OperationCanceledException)
                    {
                        LogSettleFailed(name, 0, 0, $"the array is settled, but its superblocks could not be told (the next controller to serve it settles it again): {e.Message}");
                    }
                }
                LogLoggedWritesSettled(total, peer ? "of the peer settled behind the takeover" : "of this controller's last run settled behind its start",
                    _options.Time.GetElapsedTime(start).TotalMilliseconds, raids.Sum(r => r.StripesSettledOnAccess) - onAccessBefore);
                break;
            }
            try { await _options.Time.DelayAsync(Failover.HeartbeatPeriod, _stopping.Token); }
            catch (OperationCanceledException) { break; }
        }
    }

    /// <summary>The flush after settling, before the settled records go: false (records kept) if it failed or
    /// dropped a member (the drop is persisted by the array's next ordinary flush; this one may run where the
    /// array manager's lock is held, so it does not wait for that).</summary>
    async Task<bool> FlushSettledAsync(Duet.Raid.RaidArray raid)
    {
        int lost = raid.LostSlots().Count;
        try { await raid.FlushWithoutPersistingFailuresAsync(); }
        catch (BlockIoException e)
        {
            LogSettleFailed(raid.Name, 0, 0, $"the flush after settling failed: {e.Message}");
            return false;
        }
        return raid.LostSlots().Count == lost;
    }

    [LoggerMessage(EventId = 7040, Level = LogLevel.Warning, Message = "array {Array}: the unfinished write at block {Lba} (+{Count}) settled: {Repaired} blocks repaired, {Unrepairable} unrepairable")]
    partial void LogSettled(string array, long lba, uint count, long repaired, long unrepairable);

    [LoggerMessage(EventId = 7042, Level = LogLevel.Warning, Message = "array {Array}: the unfinished write at block {Lba} (+{Count}) could not be settled now: {Reason}")]
    partial void LogSettleFailed(string array, long lba, uint count, string reason);

    [LoggerMessage(EventId = 7073, Level = LogLevel.Information, Message = "write log: {Count} logged writes {What} in {Ms:F0} ms ({OnAccess} stripes settled first by the requests that reached them)")]
    partial void LogLoggedWritesSettled(int count, string what, double ms, long onAccess);

    [LoggerMessage(EventId = 7043, Level = LogLevel.Information, Message = "write log: {Count} records of array number {Array}, which this controller no longer serves, dropped")]
    partial void LogAbandoned(byte array, int count);

    [LoggerMessage(EventId = 7041, Level = LogLevel.Information, Message = "write log: {Found} records of writes that were not durable when this controller stopped, with {Sums} partial sums; {Settled} checked and settled")]
    partial void LogRecoveredLog(int found, int sums, int settled);
}
