using Duet.Core;
using Duet.Raid.Parity;
using Microsoft.Extensions.Logging;

namespace Duet.Raid;

// AW-5: torn records and the bad-block list (BadBlockList.cs has the format).
//
// Where an unrecoverable data block is met — a block that fails its checksum (or sits on a member
// that cannot be read) in a row that redundancy cannot solve — settle, scrub, a read, a rebuild and a
// recovery write all do the same, under the stripe lock:
//
//   1. list it: the new list is written to every member (copy A, then copy B, each with FUA) before
//      anything else, so no fill can be on a drive without its entry;
//   2. fill it with BadBlockList.FillByte in the workspace (it gets a valid tag when written), so the
//      row is whole again;
//   3. regenerate the row's parity from its data and write the filled blocks and the parity;
//   4. report it (log event 1020, counters, `duet array bad-blocks`).
//
// From then on every read of a listed sector fails with a medium error, checked before any drive is
// touched, and a host write of the sector clears it (the entry goes with its last sector). A block a
// pending recovery write will rewrite (the cache holds a replayed element over it: HeldForRecovery) is
// left to that write by settle, scrub and reads, because the recovery write may keep what the crash
// left of it (RecoveryWriteAsync); ordinary writes never list: they fail on an unrecoverable block as
// before (a destage that fails is retried as a recovery write).
public sealed partial class RaidArray
{
    volatile BadBlockList _badBlocks = BadBlockList.Empty;
    readonly AsyncGate _badBlockGate = new(1, 1);
    long _badBlocksListed, _badBlocksCleared, _badBlocksRefused;
    static readonly byte[] FillBlock = Enumerable.Repeat(BadBlockList.FillByte, Units.BlockBytes).ToArray();

    /// <summary>The array's bad-block list as it is on the drives now.</summary>
    public BadBlockList BadBlocks => _badBlocks;

    /// <summary>Blocks put on the list since the array was assembled here.</summary>
    public long BadBlocksListed => Interlocked.Read(ref _badBlocksListed);

    /// <summary>Entries removed because hosts rewrote every sector of their block.</summary>
    public long BadBlocksCleared => Interlocked.Read(ref _badBlocksCleared);

    /// <summary>Unrecoverable blocks that could not be listed because the list was full (they stay
    /// unreadable through their checksums, as they were before the list existed).</summary>
    public long BadBlocksRefused => Interlocked.Read(ref _badBlocksRefused);

    /// <summary>
    /// Whether a pending recovery write will rewrite array block b (the controller's cache holds
    /// a replayed element over it). Settle, scrub and reads leave such a block to that write.
    /// </summary>
    public Func<long, bool>? HeldForRecovery { get; set; }

    bool Held(long arrayBlock) => HeldForRecovery is { } held && held(arrayBlock);

    /// <summary>
    /// Reads the list from the array's members at assembly: both copies on every active member, the
    /// valid copy with the highest generation wins. No copy at all (an array made before the list, or
    /// that never needed it) is an empty list; only damaged copies is an error in the log.
    /// </summary>
    public async Task LoadBadBlocksAsync(CancellationToken ct = default)
    {
        BadBlockList? best = null;
        string? problem = null;
        var buf = new byte[2 * Units.BlockBytes];
        for (int m = 0; m < _members.Length; m++)
        {
            if (_members[m] is null || Status(m) != MemberStatus.Active) continue;
            try { await _members[m]!.Drive.ReadAsync(MemberLayout.BadBlockListLba, buf, ct); }
            catch (BlockIoException e) when (e.Kind != BlockErrorKind.PathDown)
            {
                problem ??= $"member {m}: {e.Message}";
                continue;
            }
            for (int copy = 0; copy < 2; copy++)
            {
                var list = BadBlockList.TryDecode(buf.AsSpan(copy * Units.BlockBytes, Units.BlockBytes), Uuid, out var error);
                if (error is not null) problem ??= $"member {m} copy {copy}: {error}";
                if (list is not null && (best is null || list.Generation > best.Generation)) best = list;
            }
        }
        if (best is null && problem is not null) LogBadBlockListUnreadable(Name, problem);
        _badBlocks = best ?? BadBlockList.Empty;
        if (!_badBlocks.IsEmpty) LogBadBlocksLoaded(Name, _badBlocks.Count, _badBlocks.Generation);
    }

    /// <summary>Writes <paramref name="next"/> to every member that can take it and makes it current. Caller holds the list gate.</summary>
    async ValueTask PersistBadBlocksAsync(BadBlockList next, CancellationToken ct)
    {
        Invariant.Assert(_badBlockGate.CurrentCount == 0);
        Invariant.Assert(next.Generation > _badBlocks.Generation);
        var block = new byte[Units.BlockBytes];
        next.Encode(Uuid, block);
        // Copy A everywhere, then copy B: a cut during either leaves the other whole on every member.
        foreach (long lba in new long[] { MemberLayout.BadBlockListLba, MemberLayout.BadBlockListCopyLba })
        {
            var tasks = new List<(int Member, Task Write)>();
            for (int m = 0; m < _members.Length; m++)
                if (Writable(m)) tasks.Add((m, _members[m]!.Drive.WriteAsync(lba, block, fua: true, ct).AsTask()));
            try { await Task.WhenAll(tasks.Select(t => t.Write)); }
            catch
            {
                var persisted = new List<Task>();
                foreach (var (m, t) in tasks)
                {
                    if (t.Exception?.InnerException is not BlockIoException e) { if (t.Exception is not null) throw t.Exception.InnerException!; continue; }
                    if (e.Kind == BlockErrorKind.PathDown) throw e;
                    persisted.Add(FailMember(m, $"bad-block list write failed: {e.Message}"));
                }
                await Task.WhenAll(persisted);
                ThrowIfFailed();
            }
        }
        _badBlocks = next;
    }

    /// <summary>
    /// Lists <paramref name="blocks"/> as wholly bad (every sector). Caller holds the stripe locks of the
    /// blocks. False, changing nothing, if the list has no room for them.
    /// </summary>
    async ValueTask<bool> TryListAsync(IReadOnlyList<long> blocks, BadBlockSource source, CancellationToken ct)
    {
        if (blocks.Count == 0) return true;
        await _badBlockGate.WaitAsync(ct);
        try
        {
            var current = _badBlocks;
            var changes = new List<BadBlockEntry>();
            foreach (long b in blocks)
            {
                var had = current.Find(b);
                if (had is { BadSectors: BadBlockEntry.AllSectors }) continue;
                changes.Add(new BadBlockEntry(b, BadBlockEntry.AllSectors, had?.Source ?? source));
            }
            if (changes.Count == 0) return true;
            var next = current.With(changes);
            if (next is null)
            {
                Interlocked.Add(ref _badBlocksRefused, changes.Count);
                LogBadBlockListFull(Name, BadBlockList.MaxEntries, string.Join(",", changes.Select(c => c.ArrayBlock)));
                return false;
            }
            await PersistBadBlocksAsync(next, ct);
            Interlocked.Add(ref _badBlocksListed, changes.Count(c => current.Find(c.ArrayBlock) is null));
            return true;
        }
        finally { _badBlockGate.Release(); }
    }

    /// <summary>
    /// After a host write of array sectors [<paramref name="sectorLo"/>, <paramref name="sectorHi"/>) is on the
    /// drives: the written sectors of listed blocks are good again. Caller holds the stripe lock.
    /// </summary>
    async ValueTask ClearWrittenAsync(long sectorLo, long sectorHi, CancellationToken ct)
    {
        if (_badBlocks.IsEmpty || !_badBlocks.Overlapping(sectorLo, sectorHi).Any()) return;
        await _badBlockGate.WaitAsync(ct);
        try
        {
            var current = _badBlocks;
            var changes = new List<BadBlockEntry>();
            foreach (var e in current.Overlapping(sectorLo, sectorHi))
            {
                long first = e.ArrayBlock * Units.SectorsPerBlock;
                int written = 0;
                for (int s = 0; s < Units.SectorsPerBlock; s++)
                    if (first + s >= sectorLo && first + s < sectorHi) written |= 1 << s;
                byte left = (byte)(e.BadSectors & ~written);
                if (left == e.BadSectors) continue;
                changes.Add(e with { BadSectors = left });
            }
            if (changes.Count == 0) return;
            var next = current.With(changes);
            Invariant.Assert(next is not null); // nothing was added
            await PersistBadBlocksAsync(next, ct);
            foreach (var c in changes)
            {
                if (c.BadSectors != 0) continue;
                Interlocked.Increment(ref _badBlocksCleared);
                LogBadBlockCleared(Name, c.ArrayBlock);
            }
        }
        finally { _badBlockGate.Release(); }
    }

    /// <summary>Fails a read that covers a listed sector of stripe-relative sectors [lo, hi) of <paramref name="stripe"/>.</summary>
    void ThrowIfListed(long stripe, long sectorLo, long sectorHi)
    {
        var list = _badBlocks;
        if (list.IsEmpty) return;
        long origin = stripe * Geometry.StripeDataBlocks * Units.SectorsPerBlock;
        long bad = list.FirstBadSector(origin + sectorLo, origin + sectorHi);
        if (bad >= 0) throw ListedBad(bad);
    }

    BlockIoException ListedBad(long arraySector) =>
        new(BlockErrorKind.Medium,
            $"array {Name}: sector {arraySector} (block {arraySector / Units.SectorsPerBlock}) is on the array's bad-block list: its data was lost; write it again to clear it",
            arraySector);

    long ArrayBlockOf(long stripe, int dataIndex, int row) => stripe * Geometry.StripeDataBlocks + (long)dataIndex * Geometry.ChunkBlocks + row;

    /// <summary>What <see cref="ListLostRowsAsync"/> did.</summary>
    internal sealed class ListedRows
    {
        /// <summary>Blocks filled with the pattern in the workspace: (member, row).</summary>
        public readonly List<(int Member, int Row)> Filled = [];
        /// <summary>Rows whose lost blocks are now listed and filled: whole again, parity still to regenerate.</summary>
        public readonly List<int> Rows = [];
        /// <summary>Rows left alone: a lost block of theirs is held for a recovery write.</summary>
        public readonly List<int> Held = [];
        /// <summary>Rows left alone: the list had no room.</summary>
        public readonly List<int> Full = [];
    }

    /// <summary>
    /// The data blocks of row <paramref name="r"/> that cannot be recovered, by data index: unreadable
    /// and not reconstructed, or reconstructed from a row that does not add up with nothing to check the
    /// result against (on a member that cannot be read). Skips the blocks <paramref name="write"/> replaces.
    /// </summary>
    List<int> LostDataIndexes(Workspace ws, int r, StripePlanner.ChunkWrite[]? write)
    {
        var g = Geometry;
        var lost = new List<int>();
        for (int i = 0; i < g.DataMembers; i++)
        {
            if (write is not null && write[i].Replaces(r)) continue;
            // RAID 0: a write needs only the blocks it writes part of; no parity covers the others.
            if (write is not null && g.ParityMembers == 0 && (write[i].IsEmpty || r < write[i].Lo || r >= write[i].Hi)) continue;
            int m = g.DataMember(ws.Stripe, i);
            bool bad = ws.RowState(m, r) == Workspace.Bad;
            bool unchecked_ = ws.Reconstructed[m][r - ws.RowLo] && !ws.FoundBad[m][r - ws.RowLo] && !ws.Vouched[m][r - ws.RowLo];
            if (bad || unchecked_) lost.Add(i);
        }
        return lost;
    }

    /// <summary>
    /// Steps 1 and 2 above for the unsolved <paramref name="rows"/> of a parity (or RAID 0) workspace: lists
    /// their lost data blocks and fills them in the workspace (state Ok). With <paramref name="honourHold"/>,
    /// a row with a lost block held for a recovery write is left alone. The caller regenerates parity.
    /// </summary>
    internal async ValueTask<ListedRows> ListLostRowsAsync(Workspace ws, IEnumerable<int> rows, BadBlockSource source, bool honourHold,
        StripePlanner.ChunkWrite[]? write, CancellationToken ct)
    {
        var g = Geometry;
        Invariant.Assert(!g.IsMirrored);
        var result = new ListedRows();
        var candidates = new List<(int Row, List<int> Lost)>();
        foreach (int r in rows.Distinct().Order())
        {
            var lost = LostDataIndexes(ws, r, write);
            if (lost.Count == 0) continue;
            if (honourHold && lost.Any(i => Held(ArrayBlockOf(ws.Stripe, i, r)))) { result.Held.Add(r); continue; }
            candidates.Add((r, lost));
        }
        if (candidates.Count == 0) return result;
        var blocks = candidates.SelectMany(c => c.Lost.Select(i => ArrayBlockOf(ws.Stripe, i, c.Row))).ToList();
        if (!await TryListAsync(blocks, source, ct))
        {
            result.Full.AddRange(candidates.Select(c => c.Row));
            return result;
        }
        foreach (var (r, lost) in candidates)
        {
            foreach (int i in lost)
            {
                int m = g.DataMember(ws.Stripe, i);
                FillBlock.CopyTo(ws.Block(m, r));
                ws.SetState(m, r, Workspace.Ok);
                ws.Reconstructed[m][r - ws.RowLo] = false;
                result.Filled.Add((m, r));
                LogListed(Name, ArrayBlockOf(ws.Stripe, i, r), ws.Stripe, r, m, _members[m]?.Drive.Name ?? "missing", SourceName(source));
            }
            result.Rows.Add(r);
        }
        return result;
    }

    /// <summary>
    /// Step 3 for rows whose data is whole in the workspace: computes P (and Q) afresh and returns the
    /// writes that put the rows right: the filled blocks and the parity, on every member that takes writes.
    /// </summary>
    List<(int Member, long Block, ReadOnlyMemory<byte> Data, bool Hole)> RegenerateRows(Workspace ws, ListedRows listed)
    {
        var g = Geometry;
        var writes = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
        foreach (var (m, r) in listed.Filled)
            if (Writable(m)) writes.Add((m, ws.Stripe * g.ChunkBlocks + r, ws.Rows(m, r, 1), false));
        if (g.ParityMembers == 0) return writes;
        int p = g.PMember(ws.Stripe), q = g.QMember(ws.Stripe);
        var rowData = new ReadOnlyMemory<byte>[g.DataMembers];
        foreach (int r in listed.Rows)
        {
            for (int i = 0; i < g.DataMembers; i++)
            {
                int m = g.DataMember(ws.Stripe, i);
                Invariant.Assert(ws.RowState(m, r) == Workspace.Ok);
                rowData[i] = ws.Rows(m, r, 1);
            }
            if (g.ParityMembers == 2) Parity.Parity.GenPQ(rowData, ws.Block(p, r), ws.Block(q, r));
            else Parity.Parity.Xor(rowData, ws.Block(p, r));
            foreach (int pm in g.ParityMembers == 2 ? new[] { p, q } : new[] { p })
            {
                ws.SetState(pm, r, Workspace.Ok);
                ws.Reconstructed[pm][r - ws.RowLo] = false;
                if (Writable(pm)) writes.Add((pm, ws.Stripe * g.ChunkBlocks + r, ws.Rows(pm, r, 1), false));
            }
        }
        return writes;
    }

    /// <summary>
    /// Mirrors: lists the block of chunk <paramref name="dataIndex"/> row <paramref name="row"/>, which no copy
    /// holds, and fills it in <paramref name="member"/>'s workspace buffer. False if the list has no room.
    /// The caller writes the fill to every copy.
    /// </summary>
    async ValueTask<bool> ListMirrorBlockAsync(Workspace ws, int member, int dataIndex, int row, BadBlockSource source, CancellationToken ct)
    {
        long block = ArrayBlockOf(ws.Stripe, dataIndex, row);
        if (!await TryListAsync([block], source, ct)) return false;
        FillBlock.CopyTo(ws.Block(member, row));
        ws.SetState(member, row, Workspace.Ok);
        LogListed(Name, block, ws.Stripe, row, member, _members[member]?.Drive.Name ?? "missing", SourceName(source));
        return true;
    }

    /// <summary>The writes that put a filled mirror block on every copy that takes writes.</summary>
    List<(int Member, long Block, ReadOnlyMemory<byte> Data, bool Hole)> FillCopies(long stripe, int dataIndex, int row)
    {
        var writes = new List<(int, long, ReadOnlyMemory<byte>, bool)>();
        foreach (int m in Geometry.Copies(dataIndex))
            if (Writable(m)) writes.Add((m, stripe * Geometry.ChunkBlocks + row, FillBlock, false));
        return writes;
    }

    static string SourceName(BadBlockSource source) => source switch
    {
        BadBlockSource.Settle => "settle",
        BadBlockSource.Scrub => "scrub",
        BadBlockSource.Read => "read",
        BadBlockSource.RecoveryWrite => "recovery write",
        BadBlockSource.Rebuild => "rebuild",
        _ => $"source {(int)source}",
    };

    /// <summary>The name of what found a listed block, for people ("settle", "scrub", ...).</summary>
    public static string DescribeSource(BadBlockSource source) => SourceName(source);

    [LoggerMessage(EventId = 1020, Level = LogLevel.Error, Message = "array {Array}: block {Block} (stripe {Stripe} row {Row}, member {Slot} {Drive}) failed its checksum and cannot be reconstructed: put on the bad-block list, filled with the known pattern, parity regenerated (found by {Source}); reads of it fail with a medium error until a host writes it again")]
    partial void LogListed(string array, long block, long stripe, int row, int slot, string drive, string source);

    [LoggerMessage(EventId = 1021, Level = LogLevel.Information, Message = "array {Array}: block {Block} rewritten by a host: off the bad-block list")]
    partial void LogBadBlockCleared(string array, long block);

    [LoggerMessage(EventId = 1022, Level = LogLevel.Error, Message = "array {Array}: the bad-block list is full ({Max} entries): blocks {Blocks} cannot be listed and stay unrepaired (reads of them fail on their checksums); rewrite listed blocks to make room")]
    partial void LogBadBlockListFull(string array, int max, string blocks);

    [LoggerMessage(EventId = 1023, Level = LogLevel.Warning, Message = "array {Array}: {Count} blocks on the bad-block list (generation {Generation})")]
    partial void LogBadBlocksLoaded(string array, int count, long generation);

    [LoggerMessage(EventId = 1025, Level = LogLevel.Warning, Message = "array {Array}: a write over rows an earlier write of ours tore: {Finding}")]
    partial void LogHeldSumUsed(string array, string finding);

    [LoggerMessage(EventId = 1024, Level = LogLevel.Error, Message = "array {Array}: no copy of the bad-block list could be read ({Problem}); it is taken as empty")]
    partial void LogBadBlockListUnreadable(string array, string problem);
}
