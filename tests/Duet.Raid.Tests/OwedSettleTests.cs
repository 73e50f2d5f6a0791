using Duet.Core;

namespace Duet.Raid.Tests;

/// <summary>
/// AW-3 at a takeover: the stripes of the writes the dead peer had started are marked owed a settle, the array
/// is served at once, and the first request that takes such a stripe's lock settles it first. Without the mark a
/// later write reads the torn parity and carries it on, and a member lost after that is rebuilt wrong.
/// </summary>
[Trait("Claim", "AW-3")]
public sealed class OwedSettleTests
{
    /// <summary>Stripe 0's row 0 after a peer died in a write of it: data member 0's block landed with its tag,
    /// the row's parity did not (a whole stripe of other data around it).</summary>
    static async Task<(ArrayHarness H, int Landed)> TornParityAsync(RaidLevel level, int members)
    {
        var h = new ArrayHarness(level, members, chunkBlocks: 4, seed: 17);
        await h.FillAsync(17);
        var g = h.Geometry;
        var landed = new byte[Units.BlockBytes];
        new System.Random(18).NextBytes(landed);
        int member = g.DataMember(0, 0);
        await h.Array.Member(member)!.WriteAsync(0, landed);
        landed.CopyTo(h.Model, 0);
        return (h, member);
    }

    [Theory]
    [InlineData(RaidLevel.Raid5, 6, true)]
    [InlineData(RaidLevel.Raid5, 6, false)]
    [InlineData(RaidLevel.Raid6, 7, true)]
    [InlineData(RaidLevel.Raid6, 7, false)]
    public async Task AStripeOwedASettleIsSettledByTheFirstRequestThatReachesIt(RaidLevel level, int members, bool marked)
    {
        var (h, landed) = await TornParityAsync(level, members);
        var g = h.Geometry;
        if (marked) Assert.Equal(1, h.Array.MarkUnsettled(0, 1));
        Assert.Equal(marked ? 1 : 0, h.Array.UnsettledStripes);

        // A host write to another block of the same row: a read-modify-write from the parity it finds (five data
        // members: fewer reads than reading the other four).
        var next = new byte[Units.BlockBytes];
        new System.Random(19).NextBytes(next);
        long nextBlock = g.ChunkBlocks; // chunk 1, row 0
        await h.Array.WriteAsync(nextBlock * Units.SectorsPerBlock, next);
        next.CopyTo(h.Model, nextBlock * Units.BlockBytes);
        // Then the member that holds the landed block fails: its block comes from the row's parity.
        await h.Array.FailMember(landed, "test");
        var back = new byte[Units.BlockBytes];
        var want = h.Model.AsSpan(0, Units.BlockBytes).ToArray();

        if (marked)
        {
            await h.Array.ReadAsync(0, back);
            Assert.Equal(want, back);
            Assert.Equal((0, 1L, 1L), (h.Array.UnsettledStripes, h.Array.StripesSettledOnAccess, h.Array.MarkedStripesSettled));
            Assert.Equal((long)g.ParityMembers, h.Array.MarkedSettleResult.ParityMismatches);
            await h.VerifyAllAsync();
        }
        else
        {
            // The contrast: the write carried the torn parity on, and the rebuilt block is wrong (or unreadable).
            bool wrong;
            try
            {
                await h.Array.ReadAsync(0, back);
                wrong = !back.AsSpan().SequenceEqual(want);
            }
            catch (BlockIoException) { wrong = true; }
            Assert.True(wrong);
        }
    }

    [Fact]
    public async Task SettleMarkedSettlesWhatNoRequestReachedOnceAndOnlyWhatWasMarked()
    {
        var (h, _) = await TornParityAsync(RaidLevel.Raid6, 5);
        var g = h.Geometry;
        // Stripes 0 and 2 owed; 2 is whole (marked all the same: the survivor cannot tell).
        Assert.Equal(1, h.Array.MarkUnsettled(0, 1));
        Assert.Equal(1, h.Array.MarkUnsettled(2 * g.StripeDataBlocks + 3, 1));
        Assert.Equal(0, h.Array.MarkUnsettled(1, 2)); // stripe 0 again
        Assert.Equal(2, h.Array.UnsettledStripes);

        await h.Array.SettleMarkedAsync(2 * g.StripeDataBlocks, g.StripeDataBlocks);
        Assert.Equal((1, 1L, 0L), (h.Array.UnsettledStripes, h.Array.MarkedStripesSettled, h.Array.StripesSettledOnAccess));
        await h.Array.SettleMarkedAsync();
        Assert.Equal((0, 2L, 0L), (h.Array.UnsettledStripes, h.Array.MarkedStripesSettled, h.Array.StripesSettledOnAccess));
        Assert.Equal(2L, h.Array.MarkedSettleResult.ParityMismatches); // P and Q of row 0
        await h.Array.SettleMarkedAsync(); // nothing owed: nothing done
        Assert.Equal(2L, h.Array.MarkedStripesSettled);

        // Settled: the row's parity agrees with its data again, so a member lost now is rebuilt right.
        await h.Array.FailMember(g.DataMember(0, 0), "test");
        await h.VerifyAllAsync();
    }
}
