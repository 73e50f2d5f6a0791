using Duet.Core;

namespace Duet.Raid;

public enum WriteStrategy
{
    /// <summary>Every data block of the touched rows is overwritten whole: nothing to read.</summary>
    FullStripe,
    /// <summary>Read the old data of the written blocks and the old parity; parity ^= old ^ new.</summary>
    ReadModifyWrite,
    /// <summary>Read the data blocks not being overwritten; compute parity afresh from whole rows.</summary>
    ReconstructWrite,
}

/// <summary>Rows [RowLo, RowLo+RowCount) of one member in one stripe.</summary>
public readonly record struct MemberExtent(int Member, int RowLo, int RowCount);

/// <summary>
/// How one stripe is updated: which member rows to read, what to compute, which to write.
/// Pure data, made by <see cref="StripePlanner.PlanWrite"/>; carried out by <see cref="RaidArray"/>.
/// Rows are block offsets within the chunk; [RowLo, RowLo+RowCount) covers every touched row.
/// </summary>
public sealed record StripeWritePlan(
    long Stripe,
    int RowLo,
    int RowCount,
    WriteStrategy Strategy,
    IReadOnlyList<MemberExtent> Reads,
    IReadOnlyList<MemberExtent> DataWrites,
    IReadOnlyList<MemberExtent> ParityWrites);

/// <summary>
/// Plans stripe updates for RAID 0, 5 and 6 (mirrors need no plan: they write every copy).
/// Inputs are the geometry, a stripe, the sectors written within that stripe's data, and which
/// members can be read and written now. No I/O, no state: the same inputs give the same plan.
/// </summary>
public static class StripePlanner
{
    /// <summary>What a write does to data chunk i: rows [Lo, Hi) written; partial first/last blocks.</summary>
    public readonly record struct ChunkWrite(int DataIndex, int Lo, int Hi, bool PartialFirst, bool PartialLast)
    {
        public bool IsEmpty => Hi <= Lo;
        public int Rows => Hi - Lo;
        /// <summary>Whether the write replaces row <paramref name="row"/>'s block entirely (written, and not a partial end).</summary>
        public bool Replaces(int row) => !IsEmpty && row >= Lo && row < Hi && !(PartialFirst && row == Lo) && !(PartialLast && row == Hi - 1);
    }

    /// <summary>Splits a write of stripe-relative sectors [sectorLo, sectorHi) into per-chunk row ranges.</summary>
    public static ChunkWrite[] SplitByChunk(ArrayGeometry g, long sectorLo, long sectorHi)
    {
        long stripeSectors = g.StripeDataBlocks * Units.SectorsPerBlock;
        Invariant.Assert(0 <= sectorLo && sectorLo < sectorHi && sectorHi <= stripeSectors);
        long chunkSectors = (long)g.ChunkBlocks * Units.SectorsPerBlock;
        var result = new ChunkWrite[g.DataMembers];
        for (int i = 0; i < g.DataMembers; i++)
        {
            long lo = Math.Max(sectorLo, i * chunkSectors) - i * chunkSectors;
            long hi = Math.Min(sectorHi, (i + 1) * chunkSectors) - i * chunkSectors;
            if (hi <= lo) { result[i] = new ChunkWrite(i, 0, 0, false, false); continue; }
            int rowLo = (int)(lo / Units.SectorsPerBlock);
            int rowHi = (int)((hi + Units.SectorsPerBlock - 1) / Units.SectorsPerBlock);
            bool partialFirst = lo % Units.SectorsPerBlock != 0;
            bool partialLast = hi % Units.SectorsPerBlock != 0;
            if (rowHi - rowLo == 1) partialFirst = partialLast = partialFirst || partialLast;
            result[i] = new ChunkWrite(i, rowLo, rowHi, partialFirst, partialLast);
        }
        return result;
    }

    /// <summary>The rows [Lo, Hi) that a request's chunks touch.</summary>
    public static (int Lo, int Hi) RowSpan(ChunkWrite[] chunks)
    {
        int lo = int.MaxValue, hi = 0;
        foreach (var c in chunks)
        {
            if (c.IsEmpty) continue;
            lo = Math.Min(lo, c.Lo);
            hi = Math.Max(hi, c.Hi);
        }
        Invariant.Assert(hi > lo);
        return (lo, hi);
    }

    public static StripeWritePlan PlanWrite(ArrayGeometry g, long stripe, long sectorLo, long sectorHi,
        Func<int, bool> readable, Func<int, bool> writable)
    {
        Invariant.Assert(!g.IsMirrored);
        var chunks = SplitByChunk(g, sectorLo, sectorHi);
        var (rowLo, rowHi) = RowSpan(chunks);
        int rows = rowHi - rowLo;
        Invariant.Assert(rows > 0);

        var dataWrites = new List<MemberExtent>();
        foreach (var c in chunks)
        {
            if (c.IsEmpty) continue;
            int m = g.DataMember(stripe, c.DataIndex);
            if (writable(m)) dataWrites.Add(new MemberExtent(m, c.Lo, c.Rows));
        }
        var parityWrites = new List<MemberExtent>();
        int p = g.PMember(stripe), q = g.QMember(stripe);
        if (p >= 0 && writable(p)) parityWrites.Add(new MemberExtent(p, rowLo, rows));
        if (q >= 0 && writable(q)) parityWrites.Add(new MemberExtent(q, rowLo, rows));

        // Blocks whose old content is needed: partial blocks always (to merge the new sectors
        // in); with parity, every unwritten block of the touched rows (reconstruct-write).
        var rcwReads = new List<MemberExtent>();
        long rcwCost = 0;
        bool rcwDirect = true; // every needed block's member is readable (else: reconstruct)
        foreach (var c in chunks)
        {
            int m = g.DataMember(stripe, c.DataIndex);
            if (g.ParityMembers > 0)
            {
                // Needed: the rows of [rowLo, rowHi) this chunk does not overwrite whole.
                if (c.IsEmpty) AddNeed(m, rowLo, rowHi);
                else
                {
                    // Before the written range, the partial first block, after it, the partial last block.
                    int lo = rowLo, hi = rowHi;
                    int firstNeeded = c.PartialFirst ? c.Lo + 1 : c.Lo;   // rows [lo, firstNeeded) needed
                    int lastNeeded = c.PartialLast ? c.Hi - 1 : c.Hi;      // rows [lastNeeded, hi) needed
                    if (firstNeeded > lastNeeded) { firstNeeded = hi; lastNeeded = hi; } // single partial row: whole [lo,hi)
                    AddNeed(m, lo, firstNeeded);
                    AddNeed(m, lastNeeded, hi);
                }
            }
            else if (!c.IsEmpty)
            {
                if (c.PartialFirst) AddNeed(m, c.Lo, c.Lo + 1);
                if (c.PartialLast && (c.Hi - 1 != c.Lo || !c.PartialFirst)) AddNeed(m, c.Hi - 1, c.Hi);
            }
        }

        void AddNeed(int member, int lo, int hi)
        {
            if (hi <= lo) return;
            rcwReads.Add(new MemberExtent(member, lo, hi - lo));
            rcwCost += hi - lo;
            if (!readable(member)) rcwDirect = false;
        }

        if (g.ParityMembers == 0)
        {
            var strategy0 = rcwReads.Count == 0 ? WriteStrategy.FullStripe : WriteStrategy.ReconstructWrite;
            return new StripeWritePlan(stripe, rowLo, rows, strategy0, Merge(rcwReads), dataWrites, parityWrites);
        }

        if (rcwReads.Count == 0)
            return new StripeWritePlan(stripe, rowLo, rows, WriteStrategy.FullStripe, [], dataWrites, parityWrites);

        // Read-modify-write: old data of every written block, old parity of every parity member we will write.
        bool rmwPossible = true;
        var rmwReads = new List<MemberExtent>();
        long rmwCost = 0;
        foreach (var c in chunks)
        {
            if (c.IsEmpty) continue;
            int m = g.DataMember(stripe, c.DataIndex);
            if (!readable(m) || !writable(m)) { rmwPossible = false; break; }
            rmwReads.Add(new MemberExtent(m, c.Lo, c.Rows));
            rmwCost += c.Rows;
        }
        foreach (var pw in parityWrites)
        {
            if (!readable(pw.Member)) { rmwPossible = false; break; }
            rmwReads.Add(pw);
            rmwCost += pw.RowCount;
        }
        if (rmwPossible && (rmwCost < rcwCost || !rcwDirect))
            return new StripeWritePlan(stripe, rowLo, rows, WriteStrategy.ReadModifyWrite, rmwReads, dataWrites, parityWrites);
        return new StripeWritePlan(stripe, rowLo, rows, WriteStrategy.ReconstructWrite, Merge(rcwReads), dataWrites, parityWrites);
    }

    /// <summary>Merges extents of the same member into one covering extent each (fewer, larger reads).</summary>
    static List<MemberExtent> Merge(List<MemberExtent> extents)
    {
        var byMember = new SortedDictionary<int, (int Lo, int Hi)>();
        foreach (var e in extents)
        {
            if (byMember.TryGetValue(e.Member, out var r))
                byMember[e.Member] = (Math.Min(r.Lo, e.RowLo), Math.Max(r.Hi, e.RowLo + e.RowCount));
            else
                byMember[e.Member] = (e.RowLo, e.RowLo + e.RowCount);
        }
        return byMember.Select(kv => new MemberExtent(kv.Key, kv.Value.Lo, kv.Value.Hi - kv.Value.Lo)).ToList();
    }
}
