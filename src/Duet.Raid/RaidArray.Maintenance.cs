using Duet.Core;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging;

namespace Duet.Raid;

/// <summary>Progress of a long-running pass over the array's stripes.</summary>
public sealed class PassProgress
{
    long _done;
    public long TotalStripes { get; init; }
    public long DoneStripes => Volatile.Read(ref _done);
    internal void Advance() => Interlocked.Increment(ref _done);
    public long StartedTicks { get; init; }
    public string? TargetDrive { get; init; }
}

public sealed class ScrubResult
{
    readonly Lock _lock = new();
    readonly List<string> _findings = [];
    public long StripesChecked;
    public long ChecksumErrors;
    public long ParityMismatches;
    public long Repaired;
    public long Unrepairable;
    /// <summary>AW-5: unrepairable blocks put on the bad-block list (filled, parity regenerated).</summary>
    public long Listed;
    /// <summary>Unrepairable blocks left to the recovery write that will rewrite them (the cache holds their new data).</summary>
    public long Deferred;
    public const int MaxFindings = 200;

    public void Add(string finding)
    {
        lock (_lock) if (_findings.Count < MaxFindings) _findings.Add(finding);
    }

    public IReadOnlyList<string> Findings { get { lock (_lock) return _findings.ToList(); } }
}

public sealed partial class RaidArray
{
    /// <summary>
    /// Rebuilds slot <paramref name="slot"/> onto <paramref name="target"/>, stripe by stripe under the stripe
    /// locks, while requests go on. Reads use the new member only below the rebuild position; writes
    /// always reach it. At the end the member is Active. Rate limit in bytes per second of member
    /// data written (0 = none), paced with the injected clock.
    /// </summary>
    public async Task RebuildAsync(int slot, MemberDisk target, long bytesPerSecond, PassProgress progress, CancellationToken ct)
    {
        Invariant.Assert(target.Slot == slot);
        lock (_stateLock)
        {
            Invariant.Assert(_status[slot] == MemberStatus.Missing);
            Volatile.Write(ref _rebuiltStripes[slot], 0);
            _members[slot] = target;
            _status[slot] = MemberStatus.Rebuilding;
        }
        LogRebuildStarted(Name, slot, target.Drive.Name);
        long start = _time.GetTimestamp();
        long bytes = 0;
        var g = Geometry;
        for (long s = 0; s < g.Stripes; s++)
        {
            ct.ThrowIfCancellationRequested();
            using (await LockStripeAsync(s, ct))
            {
                if (Status(slot) != MemberStatus.Rebuilding) throw new BlockIoException(BlockErrorKind.Unavailable, $"array {Name}: rebuild target {target.Drive.Name} failed");
                await RetryOnMemberFailure(() => RebuildStripeAsync(s, slot, ct));
                if (Status(slot) != MemberStatus.Rebuilding) throw new BlockIoException(BlockErrorKind.Unavailable, $"array {Name}: rebuild target {target.Drive.Name} failed");
                Volatile.Write(ref _rebuiltStripes[slot], s + 1);
            }
            progress.Advance();
            bytes += (long)g.ChunkBlocks * Units.BlockBytes;
            if (bytesPerSecond > 0)
            {
                var due = TimeSpan.FromSeconds((double)bytes / bytesPerSecond);
                var elapsed = _time.GetElapsedTime(start);
                if (due > elapsed) await DelayAsync(due - elapsed, ct);
            }
        }
        await RewriteBadBlocksAsync(ct); // the new member holds the list too (it is read from active members)
        await target.Drive.FlushAsync(ct);
        lock (_stateLock) _status[slot] = MemberStatus.Active;
        LogRebuildDone(Name, slot, target.Drive.Name);
    }

    async ValueTask RebuildStripeAsync(long stripe, int slot, CancellationToken ct)
    {
        var g = Geometry;
        using var ws = new Workspace(g, stripe, 0, g.ChunkBlocks);
        if (g.IsMirrored)
        {
            int dataIndex = g.RoleOf(stripe, slot).DataIndex;
            var c = new StripePlanner.ChunkWrite(dataIndex, 0, g.ChunkBlocks, false, false);
            for (int r = 0; r < g.ChunkBlocks; r++) ws.SetState(slot, r, Workspace.Bad); // never read the target
            int good = await ReadMirrorChunkForRebuildAsync(ws, stripe, c, slot, ct);
            await WriteMemberAsync(slot, stripe * g.ChunkBlocks, ws.Rows(good, 0, g.ChunkBlocks), false, ct);
            return;
        }
        var unsolved = await FillAndSolveAsync(ws, ct);
        HashSet<(int, int)>? written = null;
        if (unsolved.Count > 0)
        {
            // Rows with too many losses (AW-5): their lost blocks are listed and filled and the rows'
            // parity regenerated, so the new member gets the fill (under a good tag) rather than
            // whatever the buffer held. A block held for a recovery write is listed all the same: the
            // new member needs content for it now.
            var listed = await ListLostRowsAsync(ws, unsolved, BadBlockSource.Rebuild, honourHold: false, write: null, ct);
            if (listed.Full.Count > 0)
            {
                LogRebuildUnrecoverable(Name, stripe, string.Join(",", listed.Full));
                throw new BlockIoException(BlockErrorKind.Medium,
                    $"array {Name}: stripe {stripe} rows {string.Join(",", listed.Full)} cannot be reconstructed and the bad-block list is full; the rebuild stops (rewrite listed blocks to make room)");
            }
            var writes = RegenerateRows(ws, listed).Where(w => w.Member != slot).ToList();
            await WriteAllAsync(writes, ct);
            written = writes.Select(w => (w.Member, (int)(w.Block - stripe * g.ChunkBlocks))).ToHashSet();
        }
        for (int r = 0; r < g.ChunkBlocks; r++) Invariant.Assert(ws.RowState(slot, r) == Workspace.Ok);
        await WriteMemberAsync(slot, stripe * g.ChunkBlocks, ws.Rows(slot, 0, g.ChunkBlocks), false, ct);
        await RepairAsync(ws, ct, written);
    }

    /// <summary>Writes the current bad-block list (generation + 1) to every member that takes writes.</summary>
    async ValueTask RewriteBadBlocksAsync(CancellationToken ct)
    {
        await _badBlockGate.WaitAsync(ct);
        try
        {
            var current = _badBlocks;
            if (current.IsEmpty && current.Generation == 0) return; // never listed anything: nothing to copy
            await PersistBadBlocksAsync(current.Renumbered(current.Generation + 1), ct);
        }
        finally { _badBlockGate.Release(); }
    }

    async ValueTask<int> ReadMirrorChunkForRebuildAsync(Workspace ws, long stripe, StripePlanner.ChunkWrite c, int exclude, CancellationToken ct)
    {
        var copies = Geometry.Copies(c.DataIndex).Where(m => m != exclude && Readable(m, stripe)).ToList();
        if (copies.Count == 0) throw Unrecoverable(stripe, c.DataIndex, 0);
        int primary = copies[0];
        await ReadMemberAsync(ws, primary, 0, Geometry.ChunkBlocks, ct);
        var fills = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
        for (int r = 0; r < Geometry.ChunkBlocks; r++)
        {
            if (ws.RowState(primary, r) == Workspace.Ok) continue;
            foreach (int other in copies.Skip(1))
            {
                await ReadMemberAsync(ws, other, r, 1, ct);
                if (ws.RowState(other, r) != Workspace.Ok) continue;
                ws.Block(other, r).CopyTo(ws.Block(primary, r));
                ws.SetState(primary, r, Workspace.Ok);
                break;
            }
            if (ws.RowState(primary, r) == Workspace.Ok) continue;
            // No copy holds the block (AW-5): listed and filled everywhere, the new member included.
            if (!await ListMirrorBlockAsync(ws, primary, c.DataIndex, r, BadBlockSource.Rebuild, ct))
                throw new BlockIoException(BlockErrorKind.Medium,
                    $"array {Name}: stripe {stripe} chunk {c.DataIndex} row {r} is on no copy and the bad-block list is full; the rebuild stops (rewrite listed blocks to make room)");
            fills.AddRange(FillCopies(stripe, c.DataIndex, r).Where(w => w.Member != exclude));
        }
        await WriteAllAsync(fills, ct);
        return primary;
    }

    /// <summary>
    /// Reads every stripe, checks every block against its tag and every row's parity, and (with
    /// <paramref name="repair"/>) rewrites what is wrong. A block that fails its checksum names its
    /// member; a parity mismatch with all checksums good means the parity is stale and is recomputed.
    /// </summary>
    public async Task ScrubAsync(bool repair, ScrubResult result, PassProgress progress, CancellationToken ct)
    {
        var g = Geometry;
        for (long s = 0; s < g.Stripes; s++)
        {
            ct.ThrowIfCancellationRequested();
            using (await LockStripeAsync(s, ct))
                await RetryOnMemberFailure(() => ScrubStripeAsync(s, repair, result, BadBlockSource.Scrub, ct));
            Interlocked.Increment(ref result.StripesChecked);
            progress.Advance();
        }
    }

    /// <summary>
    /// AW-3: settles the stripes under array blocks [<paramref name="firstBlock"/>, +<paramref name="blockCount"/>)
    /// after a controller died in the middle of writing them (its checkpoint said started, never done):
    /// each stripe is scrubbed and repaired as a scrub with repair does it, so its parity agrees with
    /// its data again (every data block is whole, old or new: the tags say which are good).
    /// </summary>
    public Task<ScrubResult> SettleStripesAsync(long firstBlock, long blockCount, CancellationToken ct = default) =>
        SettleStripesAsync(firstBlock, blockCount, partial: null, ct);

    /// <summary>
    /// As <see cref="SettleStripesAsync(long, long, CancellationToken)"/>, with the partial parity the interrupted write
    /// stored for rows it changed in part (<see cref="IPartialParitySink"/>): in such a row, a data block the write left
    /// as it was, on a member that cannot be read, is computed from it instead of from parity the cut may have torn,
    /// and the row's parity is then recomputed from the data.
    /// </summary>
    public Task<ScrubResult> SettleStripesAsync(long firstBlock, long blockCount, IReadOnlyList<PartialParity>? partial, CancellationToken ct = default) =>
        SettleStripesAsync(firstBlock, blockCount, partial is null ? null : s => partial.Where(x => x.Stripe == s).ToList(), ct);

    /// <summary>
    /// As <see cref="SettleStripesAsync(long, long, IReadOnlyList{PartialParity}?, CancellationToken)"/>, with the sums
    /// of each stripe asked for under its lock (<paramref name="sumsOf"/>): while writes go on, a sum a write has
    /// superseded since (it rewrote the row) must not rebuild a block, and writes supersede under the stripe lock.
    /// </summary>
    public async Task<ScrubResult> SettleStripesAsync(long firstBlock, long blockCount, Func<long, IReadOnlyList<PartialParity>>? sumsOf, CancellationToken ct = default)
    {
        var g = Geometry;
        var result = new ScrubResult();
        if (blockCount <= 0) return result;
        long first = Math.Max(0, firstBlock) / g.StripeDataBlocks;
        long last = Math.Min(g.CapacityBlocks - 1, firstBlock + blockCount - 1) / g.StripeDataBlocks;
        for (long s = first; s <= last; s++)
        {
            using (await LockStripeAsync(s, ct))
            {
                var rows = sumsOf?.Invoke(s);
                await RetryOnMemberFailure(() => ScrubStripeAsync(s, repair: true, result, BadBlockSource.Settle, ct, rows));
            }
            Interlocked.Increment(ref result.StripesChecked);
        }
        return result;
    }

    // ---- stripes owed a settle (a takeover's, AW-3) ------------------------------------------

    readonly Lock _unsettledLock = new();
    // One bit per stripe, made at the first mark: a takeover that must settle a whole array (its peer's log copy
    // was incomplete) marks every stripe, and a set of stripe numbers would cost ~30 bytes a stripe.
    ulong[]? _unsettled;
    int _unsettledCount;
    /// <summary>The partial sums an owed stripe is to be settled with (a takeover's, of the peer's writes).</summary>
    readonly Dictionary<long, List<PartialParity>> _owedSums = [];
    long _settledOnAccess, _settledMarked;
    readonly ScrubResult _markedResult = new();

    /// <summary>
    /// AW-3 at a takeover: the stripes under [<paramref name="firstBlock"/>, +<paramref name="blockCount"/>) may
    /// be torn by a write the peer died in (its checkpoint said started, never done). Instead of settling them
    /// all before the array is served, each is settled (as <see cref="SettleStripesAsync(long, long, CancellationToken)"/>
    /// does) the first time anything takes its lock: a read, a write, a scrub, a rebuild, or
    /// <see cref="SettleMarkedAsync"/>. Only requests to such a stripe wait for it. Returns the stripes newly marked.
    /// </summary>
    public int MarkUnsettled(long firstBlock, long blockCount) => MarkUnsettled(firstBlock, blockCount, null);

    /// <summary>As <see cref="MarkUnsettled(long, long)"/>, with the partial parity of the writes that may have torn
    /// those stripes (<see cref="SettleStripesAsync(long, long, IReadOnlyList{PartialParity}?, CancellationToken)"/>):
    /// kept with each owed stripe of the range they fall in, and used when it is settled.</summary>
    public int MarkUnsettled(long firstBlock, long blockCount, IReadOnlyList<PartialParity>? partial)
    {
        var g = Geometry;
        if (blockCount <= 0) return 0;
        long first = Math.Max(0, firstBlock) / g.StripeDataBlocks;
        long last = Math.Min(g.CapacityBlocks - 1, firstBlock + Math.Min(blockCount, g.CapacityBlocks) - 1) / g.StripeDataBlocks;
        int added = 0;
        lock (_unsettledLock)
        {
            _unsettled ??= new ulong[(Geometry.Stripes + 63) / 64];
            for (long s = first; s <= last; s++)
            {
                if (OwedLocked(s)) continue;
                _unsettled[s >> 6] |= Bit(s);
                added++;
            }
            if (partial is not null)
                foreach (var x in partial)
                {
                    if (x.Stripe < first || x.Stripe > last || !OwedLocked(x.Stripe)) continue;
                    if (!_owedSums.TryGetValue(x.Stripe, out var list)) _owedSums[x.Stripe] = list = [];
                    if (!list.Contains(x)) list.Add(x);
                }
            Volatile.Write(ref _unsettledCount, _unsettledCount + added);
        }
        return added;
    }

    static ulong Bit(long stripe) => 1UL << (int)(stripe & 63);

    bool OwedLocked(long stripe) => _unsettled is not null && (_unsettled[stripe >> 6] & Bit(stripe)) != 0;

    /// <summary>The first owed stripe in [<paramref name="from"/>, <paramref name="last"/>], or -1. Under the lock.</summary>
    long NextOwedLocked(long from, long last)
    {
        var bits = _unsettled;
        if (bits is null || from > last) return -1;
        for (long w = from >> 6; w <= last >> 6; w++)
        {
            ulong word = bits[w];
            if (w == from >> 6) word &= ~0UL << (int)(from & 63);
            if (word == 0) continue;
            long s = (w << 6) + System.Numerics.BitOperations.TrailingZeroCount(word);
            return s <= last ? s : -1;
        }
        return -1;
    }

    /// <summary>Stripes still owed a settle.</summary>
    public int UnsettledStripes => Volatile.Read(ref _unsettledCount);

    /// <summary>Owed stripes settled because a request (not <see cref="SettleMarkedAsync"/>) reached them first.</summary>
    public long StripesSettledOnAccess => Interlocked.Read(ref _settledOnAccess);

    /// <summary>Owed stripes settled, however reached.</summary>
    public long MarkedStripesSettled => Interlocked.Read(ref _settledMarked);

    /// <summary>What settling the owed stripes found and repaired, so far.</summary>
    public ScrubResult MarkedSettleResult => _markedResult;

    /// <summary>Settles every owed stripe under [<paramref name="firstBlock"/>, +<paramref name="blockCount"/>) not
    /// settled yet (all of them with the defaults). Throws what a settle throws; the stripe stays owed.</summary>
    public async Task SettleMarkedAsync(long firstBlock = 0, long blockCount = long.MaxValue, CancellationToken ct = default)
    {
        var g = Geometry;
        if (blockCount <= 0 || Volatile.Read(ref _unsettledCount) == 0) return;
        long first = Math.Max(0, firstBlock) / g.StripeDataBlocks;
        long lastBlock = blockCount > g.CapacityBlocks ? g.CapacityBlocks - 1 : Math.Min(g.CapacityBlocks - 1, firstBlock + blockCount - 1);
        long last = lastBlock / g.StripeDataBlocks;
        // The stripes owed now, each then taken in turn (one a request settled meanwhile is let go at once).
        var owed = new List<long>();
        lock (_unsettledLock)
            for (long s = NextOwedLocked(first, last); s >= 0; s = NextOwedLocked(s + 1, last)) owed.Add(s);
        foreach (long s in owed)
            using (await LockStripeAsync(s, ct, onAccess: false)) { }
    }

    async ValueTask SettleIfOwedLockedAsync(long stripe, CancellationToken ct, bool onAccess = true)
    {
        List<PartialParity>? sums;
        lock (_unsettledLock)
        {
            if (!OwedLocked(stripe)) return;
            sums = _owedSums.GetValueOrDefault(stripe);
        }
        // Settled under the caller's lock; only then is it no longer owed (a settle that throws leaves it owed).
        await RetryOnMemberFailure(() => ScrubStripeAsync(stripe, repair: true, _markedResult, BadBlockSource.Settle, ct, sums));
        Interlocked.Increment(ref _markedResult.StripesChecked);
        lock (_unsettledLock)
        {
            _unsettled![stripe >> 6] &= ~Bit(stripe);
            Volatile.Write(ref _unsettledCount, _unsettledCount - 1);
            _owedSums.Remove(stripe);
        }
        Interlocked.Increment(ref _settledMarked);
        if (onAccess) Interlocked.Increment(ref _settledOnAccess);
    }

    string MemberName(int m) => $"member {m} ({_members[m]?.Drive.Name ?? "missing"})";

    /// <summary>
    /// Scrubs one stripe. Settling (<paramref name="source"/> <see cref="BadBlockSource.Settle"/>: a stripe an
    /// interrupted write may have torn, named by the write log): a block that was read whole but fails its tag,
    /// and that redundancy cannot vouch for (no copy or reconstruction matches a tag), holds one of the
    /// versions the interrupted write left — its old content or a new one, each a content the array held or
    /// was asked to hold, the sectors the write did not change the same in both — while its tag may name
    /// another (data and tag are separate drive writes). It is kept as read, rewritten with a fresh tag, and
    /// its row's parity recomputed. Only what is still lost after that (a block that could not be read at
    /// all, and that nothing reconstructs) goes on the bad-block list (AW-5).
    /// </summary>
    async ValueTask ScrubStripeAsync(long stripe, bool repair, ScrubResult result, BadBlockSource source, CancellationToken ct,
        IReadOnlyList<PartialParity>? partial = null)
    {
        bool settle = source == BadBlockSource.Settle;
        var g = Geometry;
        using var ws = new Workspace(g, stripe, 0, g.ChunkBlocks);
        // Every member at once: a settle at a takeover reads whole stripes before the array is served again, and
        // one member after another cost a round trip to the shelf each.
        var reads = new Task[g.MemberCount];
        for (int m = 0; m < g.MemberCount; m++) reads[m] = ReadMemberAsync(ws, m, 0, g.ChunkBlocks, ct).AsTask();
        await Task.WhenAll(reads);
        // Rows whose lost block the interrupted write's partial parity gave back: their parity is recomputed below.
        var guarded = settle && repair && partial is { Count: > 0 } && g.ParityMembers > 0 ? ApplyPartialParity(ws, partial, result) : null;
        var writes = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
        for (int r = 0; r < g.ChunkBlocks; r++)
        {
            for (int m = 0; m < g.MemberCount; m++)
                if (ws.FoundBad[m][r])
                {
                    Interlocked.Increment(ref result.ChecksumErrors);
                }
        }
        if (g.IsMirrored)
        {
            for (int i = 0; i < g.DataMembers; i++)
            {
                var copies = g.Copies(i).Where(m => Readable(m, stripe)).ToList();
                for (int r = 0; r < g.ChunkBlocks; r++)
                {
                    int good = copies.FirstOrDefault(m => ws.RowState(m, r) == Workspace.Ok, -1);
                    if (good < 0 && settle && repair && copies.FirstOrDefault(c => ws.AsRead(c, r) is not null, -1) is var src and >= 0)
                    {
                        // Settling: every copy torn by the interrupted write; the first read whole is kept on every copy.
                        ws.AsRead(src, r)!.CopyTo(ws.Block(src, r));
                        ws.SetState(src, r, Workspace.Ok);
                        foreach (int c in copies.Where(Writable))
                        {
                            if (c != src) ws.Block(src, r).CopyTo(ws.Block(c, r));
                            writes.Add((c, stripe * g.ChunkBlocks + r, ws.Rows(c, r, 1), false));
                        }
                        Interlocked.Increment(ref result.Repaired);
                        LogTornRewritten(Name, stripe, r, src, _members[src]!.Drive.Name);
                        result.Add($"stripe {stripe} row {r} {MemberName(src)}: torn by an interrupted write, kept as read on every copy");
                        continue;
                    }
                    if (good < 0 && copies.Count > 0)
                    {
                        // No copy holds the block (AW-5): listed and filled on every copy, unless a recovery write
                        // will rewrite it or the list is full.
                        Interlocked.Increment(ref result.Unrepairable);
                        long block = ArrayBlockOf(stripe, i, r);
                        string where = $"stripe {stripe} row {r} {string.Join(", ", copies.Select(MemberName))}: checksum mismatch on every copy, unrepairable";
                        if (!repair) { result.Add(where); continue; }
                        if (Held(block))
                        {
                            Interlocked.Increment(ref result.Deferred);
                            result.Add($"{where}; left to the pending recovery write of block {block}");
                            continue;
                        }
                        if (!await ListMirrorBlockAsync(ws, copies[0], i, r, source, ct))
                        {
                            result.Add($"{where}; the bad-block list is full");
                            continue;
                        }
                        writes.AddRange(FillCopies(stripe, i, r));
                        Interlocked.Increment(ref result.Listed);
                        result.Add($"{where}: listed as bad block {block}, filled");
                        continue;
                    }
                    foreach (int m in copies)
                    {
                        if (m == good) continue;
                        bool bad = ws.RowState(m, r) != Workspace.Ok;
                        bool differs = !bad && good >= 0 && !ws.Block(m, r).SequenceEqual(ws.Block(good, r));
                        if (!bad && !differs) continue;
                        if (differs) Interlocked.Increment(ref result.ParityMismatches);
                        string what = bad ? "checksum mismatch" : $"differs from its mirror {MemberName(good)}";
                        if (repair && Writable(m))
                        {
                            ws.Block(good, r).CopyTo(ws.Block(m, r));
                            writes.Add((m, stripe * g.ChunkBlocks + r, ws.Rows(m, r, 1), false));
                            Interlocked.Increment(ref result.Repaired);
                            result.Add($"stripe {stripe} row {r} {MemberName(m)}: {what}, repaired");
                        }
                        else result.Add($"stripe {stripe} row {r} {MemberName(m)}: {what}");
                    }
                }
            }
            await WriteAllAsync(writes, ct);
            return;
        }
        var bads = new List<(int M, int R)>();
        for (int m = 0; m < g.MemberCount; m++)
            for (int r = 0; r < g.ChunkBlocks; r++)
                if (ws.FoundBad[m][r]) bads.Add((m, r));
        var unsolved = await FillAndSolveAsync(ws, ct);
        var kept = new HashSet<int>();
        if (settle && repair && unsolved.Count > 0) await KeepTornRowsAsync(ws, unsolved, kept, writes, result, ct);
        // AW-5: what redundancy cannot bring back is listed, filled, and its row's parity regenerated.
        var listed = repair && unsolved.Count > 0
            ? await ListLostRowsAsync(ws, unsolved, source, honourHold: true, write: null, ct)
            : new ListedRows();
        var rewrite = RegenerateRows(ws, listed);
        writes.AddRange(rewrite);
        var rewritten = rewrite.Select(w => (w.Member, (int)(w.Block - stripe * g.ChunkBlocks))).ToHashSet();
        var filled = listed.Filled.ToHashSet();
        string noRedundancy = g.ParityMembers == 0 ? "no redundancy to repair it" : "unrepairable (too many bad blocks in the row)";
        foreach (var (m, r) in bads)
        {
            if (kept.Contains(r)) continue;
            if (filled.Contains((m, r)))
            {
                Interlocked.Increment(ref result.Unrepairable);
                Interlocked.Increment(ref result.Listed);
                result.Add($"stripe {stripe} row {r} {MemberName(m)}: checksum mismatch, {noRedundancy}: listed as bad block {ArrayBlockOf(stripe, g.RoleOf(stripe, m).DataIndex, r)}, filled, parity regenerated");
            }
            else if (ws.RowState(m, r) != Workspace.Ok)
            {
                Interlocked.Increment(ref result.Unrepairable);
                string why = listed.Held.Contains(r) ? "; left to the pending recovery write of its row"
                    : listed.Full.Contains(r) ? "; the bad-block list is full" : "";
                if (listed.Held.Contains(r)) Interlocked.Increment(ref result.Deferred);
                result.Add($"stripe {stripe} row {r} {MemberName(m)}: checksum mismatch, {noRedundancy}{why}");
            }
            else if (rewritten.Contains((m, r)))
            {
                // A parity block of a row whose lost blocks were just listed: regenerated and written.
                Interlocked.Increment(ref result.Repaired);
                result.Add($"stripe {stripe} row {r} {MemberName(m)}: checksum mismatch, parity regenerated");
            }
            else if (repair && Writable(m))
            {
                writes.Add((m, stripe * g.ChunkBlocks + r, ws.Rows(m, r, 1), false));
                Interlocked.Increment(ref result.Repaired);
                result.Add($"stripe {stripe} row {r} {MemberName(m)}: checksum mismatch, repaired");
            }
            else result.Add($"stripe {stripe} row {r} {MemberName(m)}: checksum mismatch");
        }
        // Lost blocks no read found bad (on a member that cannot be read) that were listed too.
        foreach (var (m, r) in listed.Filled)
        {
            if (ws.FoundBad[m][r]) continue;
            Interlocked.Increment(ref result.Unrepairable);
            Interlocked.Increment(ref result.Listed);
            result.Add($"stripe {stripe} row {r} {MemberName(m)}: cannot be reconstructed: listed as bad block {ArrayBlockOf(stripe, g.RoleOf(stripe, m).DataIndex, r)}, parity regenerated");
        }
        if (g.ParityMembers == 0)
        {
            await WriteAllAsync(writes, ct);
            return;
        }
        // Parity check of every complete row.
        int p = g.PMember(stripe), q = g.QMember(stripe);
        var rowData = new ReadOnlyMemory<byte>[g.DataMembers];
        var pc = new byte[Units.BlockBytes];
        var qc = new byte[Units.BlockBytes];
        for (int r = 0; r < g.ChunkBlocks; r++)
        {
            if (unsolved.Contains(r) || kept.Contains(r)) continue;
            bool complete = true;
            for (int m = 0; m < g.MemberCount; m++) complete &= ws.RowState(m, r) == Workspace.Ok && !ws.Reconstructed[m][r];
            if (!complete) continue;
            for (int i = 0; i < g.DataMembers; i++) rowData[i] = ws.Rows(g.DataMember(stripe, i), r, 1);
            if (g.ParityMembers == 2) Parity.Parity.GenPQ(rowData, pc, qc);
            else Parity.Parity.Xor(rowData, pc);
            foreach (var (member, computed) in g.ParityMembers == 2 ? new[] { (p, pc), (q, qc) } : new[] { (p, pc) })
            {
                if (ws.Block(member, r).SequenceEqual(computed)) continue;
                Interlocked.Increment(ref result.ParityMismatches);
                string role = member == p ? "P" : "Q";
                if (repair && Writable(member))
                {
                    computed.CopyTo(ws.Block(member, r));
                    writes.Add((member, stripe * g.ChunkBlocks + r, ws.Rows(member, r, 1), false));
                    Interlocked.Increment(ref result.Repaired);
                    result.Add($"stripe {stripe} row {r} {MemberName(member)}: {role} parity mismatch (every data checksum good), parity rewritten");
                }
                else result.Add($"stripe {stripe} row {r} {MemberName(member)}: {role} parity mismatch");
            }
        }
        if (guarded is not null)
            foreach (int r in guarded)
            {
                if (unsolved.Contains(r) || kept.Contains(r)) continue;
                bool dataGood = true;
                for (int i = 0; i < g.DataMembers; i++) dataGood &= ws.RowState(g.DataMember(stripe, i), r) == Workspace.Ok;
                if (!dataGood) continue;
                for (int i = 0; i < g.DataMembers; i++) rowData[i] = ws.Rows(g.DataMember(stripe, i), r, 1);
                if (g.ParityMembers == 2) Parity.Parity.GenPQ(rowData, pc, qc);
                else Parity.Parity.Xor(rowData, pc);
                foreach (var (member, computed) in g.ParityMembers == 2 ? new[] { (p, pc), (q, qc) } : new[] { (p, pc) })
                {
                    if (!Writable(member)) continue;
                    if (ws.RowState(member, r) == Workspace.Ok && !ws.Reconstructed[member][r] && ws.Block(member, r).SequenceEqual(computed)) continue;
                    Interlocked.Increment(ref result.ParityMismatches);
                    computed.CopyTo(ws.Block(member, r));
                    ws.SetState(member, r, Workspace.Ok);
                    writes.Add((member, stripe * g.ChunkBlocks + r, ws.Rows(member, r, 1), false));
                    Interlocked.Increment(ref result.Repaired);
                    result.Add($"stripe {stripe} row {r} {MemberName(member)}: {(member == p ? "P" : "Q")} parity recomputed over the block the write's partial parity kept");
                }
            }
        await WriteAllAsync(writes, ct);
    }

    /// <summary>
    /// Settling with the interrupted writes' partial sums (<see cref="PartialParity"/>): in each of their rows, a data
    /// block on a member that cannot be read is the latest sum that covers it plus that sum's other blocks, if those
    /// were read good. It is put in the workspace as reconstructed and vouched for (not rebuilt from parity the cut
    /// may have torn). Returns the rows so filled.
    /// </summary>
    HashSet<int> ApplyPartialParity(Workspace ws, IReadOnlyList<PartialParity> partial, ScrubResult result)
    {
        var g = Geometry;
        long stripe = ws.Stripe;
        var guarded = new HashSet<int>();
        foreach (int r in partial.Select(x => x.Row).Distinct().Order())
        {
            if (r < 0 || r >= g.ChunkBlocks) continue;
            for (int lost = 0; lost < g.DataMembers; lost++)
            {
                int ml = g.DataMember(stripe, lost);
                if (ws.RowState(ml, r) == Workspace.Ok || Readable(ml, stripe)) continue;
                // The latest write's sum that covers the lost block: its other blocks are as the drives hold them.
                PartialParity? best = null;
                foreach (var x in partial)
                    if (x.Row == r && x.Leaves(lost) && x.Sum.Length == Units.BlockBytes && (best is null || x.Order > best.Value.Order)) best = x;
                if (best is not { } pp) continue;
                bool usable = true;
                for (int i = 0; i < g.DataMembers && usable; i++)
                    if (i != lost && pp.Leaves(i)) usable = ws.RowState(g.DataMember(stripe, i), r) == Workspace.Ok;
                if (!usable) continue;
                var block = ws.Block(ml, r);
                pp.Sum.Span.CopyTo(block);
                for (int i = 0; i < g.DataMembers; i++)
                    if (i != lost && pp.Leaves(i)) Parity.Parity.XorInto(ws.Block(g.DataMember(stripe, i), r), block);
                ws.SetState(ml, r, Workspace.Ok);
                ws.Reconstructed[ml][r - ws.RowLo] = true;
                ws.Vouched[ml][r - ws.RowLo] = true;
                guarded.Add(r);
                result.Add($"stripe {stripe} row {r} {MemberName(ml)}: cannot be read; its block taken from the partial parity of the interrupted write");
            }
        }
        return guarded;
    }

    /// <summary>
    /// Settling (see <see cref="ScrubStripeAsync"/>): in each row redundancy could not repair, data blocks
    /// read whole that fail their tags are kept as read (<see cref="KeepTornBlocksAsync"/>, as a recovery
    /// write does); if that leaves every data block of the row good, the torn blocks are rewritten with
    /// fresh tags and the row's parity is computed from the data and rewritten. The rows so settled go
    /// into <paramref name="kept"/> and out of <paramref name="unsolved"/>.
    /// </summary>
    async ValueTask KeepTornRowsAsync(Workspace ws, List<int> unsolved, HashSet<int> kept, List<(int, long, ReadOnlyMemory<byte>, bool)> writes,
        ScrubResult result, CancellationToken ct)
    {
        var g = Geometry;
        long stripe = ws.Stripe;
        var torn = new List<(int Member, int Row)>();
        await KeepTornBlocksAsync(ws, new StripePlanner.ChunkWrite[g.DataMembers], unsolved, torn, ct);
        int p = g.PMember(stripe), q = g.QMember(stripe);
        var rowData = new ReadOnlyMemory<byte>[g.DataMembers];
        foreach (int r in unsolved.ToList())
        {
            bool dataGood = true;
            for (int i = 0; i < g.DataMembers; i++) dataGood &= ws.RowState(g.DataMember(stripe, i), r) == Workspace.Ok;
            if (!dataGood)
            {
                // Something in the row is lost (a member that cannot be read, and parity the cut may have torn):
                // still keep every block that was read whole, and leave only the lost ones to the bad-block list,
                // which fills them and regenerates the row's parity over what is kept.
                for (int i = 0; i < g.DataMembers; i++)
                {
                    int m = g.DataMember(stripe, i);
                    if (ws.RowState(m, r) == Workspace.Bad && ws.AsRead(m, r) is { } asRead && Writable(m))
                    {
                        asRead.CopyTo(ws.Block(m, r));
                        ws.SetState(m, r, Workspace.Ok);
                        ws.Reconstructed[m][r - ws.RowLo] = false;
                        writes.Add((m, stripe * g.ChunkBlocks + r, ws.Rows(m, r, 1), false));
                        Interlocked.Increment(ref result.Repaired);
                        LogTornRewritten(Name, stripe, r, m, _members[m]!.Drive.Name);
                        result.Add($"stripe {stripe} row {r} {MemberName(m)}: torn by an interrupted write, kept as read");
                    }
                    else if (ws.RowState(m, r) == Workspace.Ok && ws.Reconstructed[m][r - ws.RowLo] && !ws.FoundBad[m][r - ws.RowLo] && !ws.Vouched[m][r - ws.RowLo])
                    {
                        ws.SetState(m, r, Workspace.Bad); // rebuilt from parity the cut may have torn, with no tag to check it: lost
                    }
                }
                continue;
            }
            foreach (var (m, row) in torn)
                if (row == r && Writable(m))
                {
                    ws.Reconstructed[m][r - ws.RowLo] = false;
                    writes.Add((m, stripe * g.ChunkBlocks + r, ws.Rows(m, r, 1), false));
                    Interlocked.Increment(ref result.Repaired);
                    result.Add($"stripe {stripe} row {r} {MemberName(m)}: torn by an interrupted write, kept as read");
                }
            for (int i = 0; i < g.DataMembers; i++) rowData[i] = ws.Rows(g.DataMember(stripe, i), r, 1);
            var pc = new byte[Units.BlockBytes];
            var qc = new byte[Units.BlockBytes];
            if (g.ParityMembers == 2) Parity.Parity.GenPQ(rowData, pc, qc);
            else Parity.Parity.Xor(rowData, pc);
            foreach (var (member, computed) in g.ParityMembers == 2 ? new[] { (p, pc), (q, qc) } : new[] { (p, pc) })
            {
                if (!Writable(member)) continue;
                bool same = ws.RowState(member, r) == Workspace.Ok && !ws.Reconstructed[member][r - ws.RowLo] && ws.Block(member, r).SequenceEqual(computed);
                if (same) continue;
                if (ws.RowState(member, r) == Workspace.Ok && !ws.Reconstructed[member][r - ws.RowLo]) Interlocked.Increment(ref result.ParityMismatches);
                computed.CopyTo(ws.Block(member, r));
                ws.SetState(member, r, Workspace.Ok);
                writes.Add((member, stripe * g.ChunkBlocks + r, ws.Rows(member, r, 1), false));
                Interlocked.Increment(ref result.Repaired);
                result.Add($"stripe {stripe} row {r} {MemberName(member)}: {(member == p ? "P" : "Q")} parity recomputed from the data kept");
            }
            unsolved.Remove(r);
            kept.Add(r);
        }
    }

    Task DelayAsync(TimeSpan delay, CancellationToken ct) => _time.DelayAsync(delay, ct);

    [LoggerMessage(EventId = 1010, Level = LogLevel.Information, Message = "array {Array}: rebuilding member {Slot} onto {Drive}")]
    partial void LogRebuildStarted(string array, int slot, string drive);

    [LoggerMessage(EventId = 1011, Level = LogLevel.Information, Message = "array {Array}: member {Slot} rebuilt onto {Drive}")]
    partial void LogRebuildDone(string array, int slot, string drive);

    [LoggerMessage(EventId = 1012, Level = LogLevel.Error, Message = "array {Array}: stripe {Stripe} rows {Rows} could not be reconstructed during rebuild")]
    partial void LogRebuildUnrecoverable(string array, long stripe, string rows);
}
