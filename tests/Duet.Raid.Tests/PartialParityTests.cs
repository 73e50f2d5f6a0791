using Duet.Core;
using Duet.Drives;

namespace Duet.Raid.Tests;

/// <summary>
/// AW-4, the write hole with a member missing: a write tears a row (its data landed, its parity did not) and
/// then a member the write did not change is lost. Its block exists only in the row's parity, which now covers
/// the wrong version of the changed blocks. The partial parity the write stored before it touched a drive
/// gives that block back, and settling recomputes the row's parity over it.
/// </summary>
[Trait("Claim", "AW-4")]
public class PartialParityTests
{
    sealed class Captured : IPartialParitySink
    {
        public readonly List<PartialParity> Rows = [];
        public bool Store(long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum)
        {
            Rows.Add(new PartialParity(stripe, row, unchanged, sum.ToArray()));
            return true;
        }
        public void Supersede(long stripe, int row) { }
    }

    /// <summary>A later write's sink: what the failed write stored is held for it (the write log's failed records).</summary>
    sealed class Holding(IReadOnlyList<PartialParity> held) : IPartialParitySink
    {
        public bool Store(long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum) => true;
        public void Supersede(long stripe, int row) { }
        public IReadOnlyList<PartialParity> Held(long stripe, int rowLo, int rowCount) =>
            [.. held.Where(x => x.Stripe == stripe && x.Row >= rowLo && x.Row < rowLo + rowCount)];
    }

    /// <summary>A drive's data block and the tag block that covers it, raw.</summary>
    static async Task<(byte[] Data, byte[] Tags)> RawAsync(MemoryDrive d, long memberBlock)
    {
        var data = new byte[Units.BlockBytes];
        var tags = new byte[Units.BlockBytes];
        await d.ReadAsync(MemberLayout.DataLba(memberBlock), data);
        await d.ReadAsync(MemberLayout.TagLba(MemberLayout.GroupOf(memberBlock)), tags);
        return (data, tags);
    }

    static async Task PutRawAsync(MemoryDrive d, long memberBlock, (byte[] Data, byte[] Tags) raw)
    {
        await d.WriteAsync(MemberLayout.DataLba(memberBlock), raw.Data);
        await d.WriteAsync(MemberLayout.TagLba(MemberLayout.GroupOf(memberBlock)), raw.Tags);
    }

    /// <summary>
    /// Fills the array, writes <paramref name="sectors"/> at <paramref name="at"/> (stripe 0) storing partial
    /// parity, then undoes the parity writes of every row the write touched (data and tags as before: the parity
    /// drives never got them) and fails the member of data index <paramref name="lost"/>, which the write did not change.
    /// </summary>
    static async Task<(ArrayHarness H, Captured Pp)> TornThenLostAsync(RaidLevel level, int members, long at, int sectors, int lost)
    {
        var h = new ArrayHarness(level, members, chunkBlocks: 4, seed: 11);
        await h.FillAsync(11);
        var g = h.Geometry;
        var parity = new[] { g.PMember(0), g.QMember(0) }.Where(m => m >= 0).ToArray();
        var before = new Dictionary<(int, int), (byte[], byte[])>();
        foreach (int m in parity)
            for (int r = 0; r < g.ChunkBlocks; r++) before[(m, r)] = await RawAsync(h.Drives[m], r);

        var data = new byte[sectors * Units.SectorBytes];
        new System.Random(12).NextBytes(data);
        var pp = new Captured();
        await h.Array.WriteAsync(at, data, pp);
        data.CopyTo(h.Model, at * Units.SectorBytes);

        foreach (var ((m, r), raw) in before) await PutRawAsync(h.Drives[m], r, raw);
        await h.Array.FailMember(g.DataMember(0, lost), "lost after the cut");
        return (h, pp);
    }

    /// <summary>Whether the lost member's block in the written row reads other than the model (or not at all: listed
    /// as bad, lost either way).</summary>
    static async Task<bool> LostBlockReadsWrongAsync(ArrayHarness h, long at, int lost)
    {
        var g = h.Geometry;
        var back = new byte[Units.BlockBytes];
        long block = (long)lost * g.ChunkBlocks + (at / Units.SectorsPerBlock) % g.ChunkBlocks;
        try
        {
            await h.Array.ReadAsync(block * Units.SectorsPerBlock, back);
            return !back.AsSpan().SequenceEqual(h.Model.AsSpan((int)(block * Units.BlockBytes), Units.BlockBytes));
        }
        catch (BlockIoException) { return true; }
    }

    public static TheoryData<RaidLevel, int, long, int, int, int> Cases => new()
    {
        // level, members, first sector, sectors, lost data index, rows with partial parity
        { RaidLevel.Raid5, 4, 8 + 2, 3, 1, 1 },   // three sectors of one block: read-modify-write (P + old block)
        { RaidLevel.Raid5, 4, 0, 64, 2, 4 },      // chunks 0 and 1 whole, chunk 2 untouched: reconstruct-write (the unchanged block)
        { RaidLevel.Raid6, 5, 8, 8, 2, 1 },       // RAID 6, one block: P and Q both left old
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task SettlingWithThePartialParityGivesBackTheLostMembersBlockAndMakesTheRowConsistent(
        RaidLevel level, int members, long at, int sectors, int lost, int rows)
    {
        var (h, pp) = await TornThenLostAsync(level, members, at, sectors, lost);
        // One sum of the unchanged blocks per row changed in part (it covers the lost block), plus the new
        // content of a block changed only in part.
        Assert.Equal(rows, pp.Rows.Count(x => x.Leaves(lost)));
        Assert.Equal(sectors % Units.SectorsPerBlock != 0 ? 1 : 0, pp.Rows.Count(x => !x.Leaves(lost)));

        var settled = await h.Array.SettleStripesAsync(0, h.Geometry.StripeDataBlocks, pp.Rows);

        Assert.Contains(settled.Findings, f => f.Contains("partial parity"));
        Assert.True(h.Array.BadBlocks.IsEmpty);
        await h.VerifyAllAsync(); // the lost member's blocks come back from parity that now covers the data as it is
        // A second settle finds nothing to do: the rows agree with their data.
        var again = await h.Array.SettleStripesAsync(0, h.Geometry.StripeDataBlocks, pp.Rows);
        Assert.Equal(0, again.ParityMismatches);
        await h.VerifyAllAsync();
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task WithoutThePartialParityTheSameRowReadsWrong(RaidLevel level, int members, long at, int sectors, int lost, int rows)
    {
        // The planted contrast (the write hole itself): nothing tells settle that the parity is stale, and the
        // lost member's block is rebuilt from it.
        _ = rows;
        var (h, _) = await TornThenLostAsync(level, members, at, sectors, lost);
        await h.Array.SettleStripesAsync(0, h.Geometry.StripeDataBlocks);
        Assert.True(await LostBlockReadsWrongAsync(h, at, lost));
    }

    [Fact]
    public async Task ASumIsNeverTakenOverBlocksAnUnflushedWriteLeftInItsRows()
    {
        // A sum rests on the blocks its write leaves as the drives hold them. If an earlier write to the same rows
        // is not flushed yet, a cut may roll those blocks back under the sum (which supersedes the earlier write's
        // own): the array flushes first. Rows flushed since, or rows no write touched, need no flush.
        var h = new ArrayHarness(RaidLevel.Raid5, 4, chunkBlocks: 4, seed: 5);
        var pp = new Captured();
        var block = new byte[Units.BlockBytes];
        await h.Array.WriteAsync(0, block, pp);                              // stripe 0 row 0, data index 0
        Assert.Equal(0, h.Array.FlushesBeforeSums);
        await h.Array.WriteAsync(4 * Units.SectorsPerBlock, block, pp);      // the same row, data index 1: flush first
        Assert.Equal(1, h.Array.FlushesBeforeSums);
        await h.Array.WriteAsync(Units.SectorsPerBlock, block, pp);          // row 1 of stripe 0: never written
        Assert.Equal(1, h.Array.FlushesBeforeSums);
        await h.Array.FlushAsync();
        await h.Array.WriteAsync(8 * Units.SectorsPerBlock, block, pp);      // row 0 again (data index 2), after a flush
        Assert.Equal(1, h.Array.FlushesBeforeSums);
        await h.Array.WriteAsync(4 * Units.SectorsPerBlock, block);          // unlogged writes take no sums and never flush
        await h.Array.WriteAsync(0, block);
        Assert.Equal(1, h.Array.FlushesBeforeSums);
    }

    [Fact]
    public async Task AWriteThatReplacesWholeRowsStoresNothing()
    {
        var h = new ArrayHarness(RaidLevel.Raid5, 4, chunkBlocks: 4, seed: 3);
        var pp = new Captured();
        await h.Array.WriteAsync(0, new byte[h.Geometry.StripeDataBlocks * Units.BlockBytes], pp);
        Assert.Empty(pp.Rows);
    }
    /// <summary>
    /// The same hole while the controller runs: the write failed part-way (its data landed, its parity did not: a
    /// shelf path lost mid-write), then a member is lost, and the cache writes the range again (a recovery write).
    /// Parity says nothing true of the lost member's block any more; the failed write's sums, held for the
    /// recovery write, give it back, and the row is written whole over it.
    /// </summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public async Task ARecoveryWriteAfterAFailedWriteTakesTheLostBlockFromTheSumsTheFailedWriteHolds(
        RaidLevel level, int members, long at, int sectors, int lost, int rows)
    {
        _ = rows;
        var (h, pp) = await TornThenLostAsync(level, members, at, sectors, lost);
        var data = h.Model.AsMemory((int)(at * Units.SectorBytes), sectors * Units.SectorBytes).ToArray();
        await h.Array.RecoveryWriteAsync(at, data, new Holding(pp.Rows));
        Assert.Equal(1, h.Array.WritesGuardedByHeldSums);
        Assert.True(h.Array.BadBlocks.IsEmpty);
        await h.VerifyAllAsync(); // the lost member's block, rebuilt from the row's new parity, is what it held
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task ARecoveryWriteWithNoSumsHeldLosesTheBlock(RaidLevel level, int members, long at, int sectors, int lost, int rows)
    {
        // The contrast: the failed write's record cleared by a flush before the recovery write came.
        _ = rows;
        var (h, _) = await TornThenLostAsync(level, members, at, sectors, lost);
        var data = h.Model.AsMemory((int)(at * Units.SectorBytes), sectors * Units.SectorBytes).ToArray();
        await h.Array.RecoveryWriteAsync(at, data, new Holding([]));
        Assert.Equal(0, h.Array.WritesGuardedByHeldSums);
        Assert.True(await LostBlockReadsWrongAsync(h, at, lost));
    }
}
