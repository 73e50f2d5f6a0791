using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

using static Duet.Cli.Tests.InProcessPair;

namespace Duet.Cli.Tests;

/// <summary>
/// A takeover with both controllers in one process behind one shelf (the shelf core, in memory): B
/// fences A at the shelf, takes its array, adopts its mirrored writes, settles the stripe of a write A
/// had started and not finished (AW-3), and serves; A, fenced, steps down at its next heartbeat.
/// </summary>
public sealed class ControllerTakeoverInProcessTests
{
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000d0e8");

    [Fact]
    [Trait("Claim", "FO-2")]
    [Trait("Claim", "AW-3")]
    [Trait("Claim", "FO-7")]
    public async Task TheSurvivorFencesAdoptsSettlesTheUnfinishedWriteAndServesWhileTheFencedControllerStepsDown()
    {
        var (shelf, a, b) = await FormPairAsync();
        try
        {
            var data = new byte[256 << 10];
            new System.Random(5).NextBytes(data);
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0OnA));
            await vol0OnA.WriteAsync(0, data, fua: false);

            // A starts a write of stripe 0 and dies in the middle: the checkpoint reached B, parity did not
            // get its new value (a whole block with a good tag that disagrees with the data).
            var raid = a.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            byte number = a.Arrays.NumberOf(raid);
            await a.Cache.DrainAsync();
            await Until(() => b.PeerOpenCheckpoints == 0, "A's destage records to be cleared at B after A's flush");
            await ((IArrayWriteLog)a).StartedAsync(number, 0, 1, 0, default);
            await Until(() => b.PeerOpenCheckpoints == 1, "B to hear A's checkpoint");
            await raid.FlushAsync();
            var garbage = new byte[Units.BlockBytes];
            new System.Random(9).NextBytes(garbage);
            await raid.Member(raid.Geometry.PMember(0))!.WriteAsync(0, garbage);

            await b.TakeOverAsync("test: A stopped answering");
            var taken = b.LastTakeover!;
            Assert.Equal(["arr0"], taken.Arrays);
            Assert.Equal(1, taken.SettledWrites);
            Assert.True(shelf.Status().Port("A").Fenced);
            Assert.Equal("B", shelf.Status().Claim(ArrayManager.SerialOf(raid.Uuid))!.Owner);

            // B serves vol0 with every acknowledged write; arr0's parity agrees with its data again.
            Assert.True(b.Volumes.TryGetVolume("vol0", out var vol0OnB));
            Assert.IsType<CachedVolume>(vol0OnB);
            var back = new byte[data.Length];
            await vol0OnB.ReadAsync(0, back);
            Assert.Equal(data, back);
            await b.Cache.DrainAsync();
            // The stripe was owed a settle from the takeover on, and is settled behind it (or by the first request
            // that reached it); then A's record goes.
            await Until(() => b.PeerSettlesPending == 0 && b.PeerOpenCheckpoints == 0, "B to settle A's logged write behind the takeover and clear its record");
            var arr0OnB = b.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            Assert.Equal((0, 1L), (arr0OnB.UnsettledStripes, arr0OnB.MarkedStripesSettled));
            Assert.True(arr0OnB.MarkedSettleResult.ParityMismatches + arr0OnB.MarkedSettleResult.ChecksumErrors > 0);
            var scrub = new ScrubResult();
            await b.Arrays.ServedArrays.Single(r => r.Name == "arr0").ScrubAsync(false, scrub, new PassProgress(), default);
            Assert.Equal((0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches));

            // A finds itself fenced at its next heartbeat and steps down; nothing of it reached a drive late.
            await Until(() => a.IsSteppedDown, "A to step down");
            Assert.False(a.HoldsLease);
            Assert.Equal(0, shelf.LateWrites);
            await Assert.ThrowsAsync<BlockIoException>(async () => await vol0OnA.ReadAsync(0, back));
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task A_started_checkpoint_still_unread_when_the_link_is_cut_is_kept_and_its_stripe_settled_by_the_takeover()
    {
        var (shelf, a, b) = await FormPairAsync();
        try
        {
            var raid = a.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            byte number = a.Arrays.NumberOf(raid);
            await a.Cache.DrainAsync();
            await Until(() => b.PeerOpenCheckpoints == 0, "A's destage records to be cleared at B after A's flush");
            // A posted "started" for stripe 0, wrote part of it (parity disagrees with the data) and died; the
            // message was still in B's window at the cut. The link shows it to B's hook before dropping it (the
            // window mechanics: LinkInMemoryTests.A_cut_shows_the_salvage_hook_…).
            var started = Duet.Interconnect.Wire.DuetFrame.ToArray(new Duet.Interconnect.Wire.WriteCheckpoint(
                Duet.Interconnect.Wire.CheckpointPhase.Started, Duet.Cache.WriteLog.LinkId(5, 77), number, 0, 1));
            b.Link.Salvage!(IclSignal.Message, a.Nvram.Epoch, started);
            Assert.Equal(1, b.PeerOpenCheckpoints);
            Assert.Equal(1, b.CheckpointsSalvaged);
            await raid.FlushAsync();
            var garbage = new byte[Units.BlockBytes];
            new System.Random(9).NextBytes(garbage);
            await raid.Member(raid.Geometry.PMember(0))!.WriteAsync(0, garbage);

            await b.TakeOverAsync("test: A died with its checkpoint unread");
            Assert.Equal(1, b.LastTakeover!.SettledWrites);
            await b.Cache.DrainAsync();
            await Until(() => b.PeerSettlesPending == 0 && b.PeerOpenCheckpoints == 0, "B to settle the stripe behind the takeover");
            var scrub = new ScrubResult();
            await b.Arrays.ServedArrays.Single(r => r.Name == "arr0").ScrubAsync(false, scrub, new PassProgress(), default);
            Assert.Equal((0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches));
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task CheckpointsReachThePeerWhileTheLinkIsUpEvenWithTheMirrorDown()
    {
        // A controller writes to the drives while its mirror is not healthy (a restarted controller writes its
        // dirty cache before it pairs; error-recovery mode writes through): if it dies then, its peer's takeover
        // must know which stripes those writes may have torn, so the checkpoints still go while the link is up.
        var (_, a, b) = await FormPairAsync();
        try
        {
            var raid = a.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            byte number = a.Arrays.NumberOf(raid);
            await a.Cache.DrainAsync();
            await Until(() => b.PeerOpenCheckpoints == 0, "A's destage records to be cleared at B");
            a.Mirror.Fail("test: the mirror is down, the link is not");
            Assert.True(a.Link.IsUp);
            long posted = a.StartedCheckpointsPosted;
            await ((IArrayWriteLog)a).StartedAsync(number, 0, 1, 0, default);
            Assert.Equal(posted + 1, a.StartedCheckpointsPosted); // posted by the write itself, not left to a pairing
            await Until(() => b.PeerOpenCheckpoints == 1, "B to hear A's checkpoint with A's mirror down");
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    static async Task<(Duet.Shelf.Shelf Shelf, PairController A, PairController B)> FormPairAsync()
    {
        var shelf = await TwoArrayShelfAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        var b = await StartControllerAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB, Pair);
        await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && a.HoldsLease, "the pair to form");
        return (shelf, a, b);
    }

}
