using System.Runtime.CompilerServices;
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
            var (raid, number) = await DrainedArr0Async(a, b);
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
            var (raid, number) = await DrainedArr0Async(a, b);
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
    public async Task A_write_whose_checkpoint_cannot_reach_the_peer_is_recorded_at_the_shelf_first_and_the_takeover_settles_the_whole_array()
    {
        var (shelf, a, b) = await FormPairAsync();
        try
        {
            var (raid, number) = await DrainedArr0Async(a, b);
            Assert.False(shelf.Status().Port("A").LogStale);

            // The link goes down; A starts a write of the array's last stripe: B cannot hear of it, so before the
            // write may touch a drive the shelf records A's log copy incomplete.
            ((InMemoryIclLink)a.Link).Cut();
            await Until(() => !a.Link.IsUp, "A to see its link down");
            await ((IArrayWriteLog)a).StartedAsync(number, raid.Geometry.CapacityBlocks - 1, 1, 0, default);
            Assert.True(shelf.Status().Port("A").LogStale);
            Assert.True(a.LogMarkedStale);
            Assert.Equal(0, b.PeerOpenCheckpoints);

            // A dies in the middle of that write: P of the last stripe disagrees with its data.
            // (The scrub in it finds the torn row: what a takeover told only of B's log copy would leave.)
            await TearLastStripesParityAsync(raid, 11);

            await b.TakeOverAsync("test: A died with its link down");
            Assert.Equal(["arr0"], b.LastTakeover!.SettledWhole);
            await b.Cache.DrainAsync();
            await Until(() => b.PeerSettlesPending == 0, "B to settle the whole of arr0 behind the takeover");
            await Until(() => !b.Arrays.SettleOwed("arr0"), "B to clear the whole settle its takeover wrote into arr0's superblocks");
            await AssertSettledAsync(b.Arrays.ServedArrays.Single(r => r.Name == "arr0"));
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task A_whole_settle_a_stop_cut_is_owed_in_the_superblocks_and_the_next_start_does_it_and_clears_them()
    {
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var storeA = NvramStore.For(layout, "nvram-A");
        var (shelf, a, b) = await FormPairAsync(storeA: storeA);
        var (raid, _) = await DrainedArr0Async(a, b);
        await b.DisposeAsync();

        // A takeover of arr0 from a peer whose log copy was incomplete named A owner and owed a whole settle in the
        // same superblock update; the stop came before the settle reached the torn stripe (P disagrees with its data).
        await a.Arrays.SetSettleOwedAsync("arr0", true);
        Assert.True(a.Arrays.SettleOwed("arr0"));
        await TearLastStripesParityAsync(raid, 13);
        await a.DisposeAsync();

        var (linkA2, _) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        // (No takeover of B's array while the test looks: a takeover would settle arr0 itself.)
        var again = await StartControllerAsync("A", 3, shelf, storeA, layout, linkA2, Pair,
            new FailoverOptions { HeartbeatTimeout = TimeSpan.FromHours(1), StartGrace = TimeSpan.FromHours(1), HostCommandTimeLimit = TimeSpan.FromHours(1) });
        try
        {
            await Until(() => !again.Arrays.SettleOwed("arr0"), "the start to settle the whole of arr0 and clear its superblocks");
            await AssertSettledAsync(again.Arrays.ServedArrays.Single(r => r.Name == "arr0"));
        }
        finally
        {
            await again.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task A_started_checkpoint_that_waits_past_its_limit_is_covered_by_the_shelfs_record_until_it_arrives()
    {
        await using var pair = await PumpedPair.StartAsync(await TwoArrayShelfAsync());
        var (shelf, a, b, bReads) = (pair.Shelf, pair.A, pair.B, pair.BReads);
        var (raid, number) = await DrainedArr0Async(a, b);

        // B stops reading; A's writes fill B's command queue, and then a "started" waits for room past its limit:
        // the shelf records A's log copy incomplete before that write goes on.
        bReads.Value = false;
        int started = 0;
        while (!a.LogMarkedStale && started < 32)
            await ((IArrayWriteLog)a).StartedAsync(number, started++, 1, 0, default);
        Assert.True(a.LogMarkedStale);
        Assert.True(shelf.Status().Port("A").LogStale);

        // B reads again: the late posts arrive, nothing was lost, and the record goes.
        bReads.Value = true;
        await Until(() => !shelf.Status().Port("A").LogStale, "the late checkpoints to arrive and the shelf's record to be cleared");
        await Until(() => b.PeerOpenCheckpoints == started, "B to hold every record A started");
        Assert.False(a.LogMarkedStale);
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task The_pairing_that_gives_the_peer_every_open_record_clears_the_shelfs_record_of_an_incomplete_log_copy()
    {
        var (shelf, a, b) = await FormPairAsync();
        try
        {
            var (raid, number) = await DrainedArr0Async(a, b);
            ((InMemoryIclLink)a.Link).Cut();
            await Until(() => !a.Link.IsUp, "A to see its link down");
            await ((IArrayWriteLog)a).StartedAsync(number, 0, 1, 0, default);
            Assert.True(shelf.Status().Port("A").LogStale);

            ((InMemoryIclLink)a.Link).Heal();
            await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy, "the pair to form again");
            // The record still open went to B with the pairing; nothing is missing from B's copy now.
            await Until(() => b.PeerOpenCheckpoints == 1 && !shelf.Status().Port("A").LogStale, "the pairing to send A's open record and clear the shelf's record");
            Assert.False(a.LogMarkedStale);
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_survivor_stopped_between_its_fence_and_the_adoption_finishes_the_takeover_when_it_starts_again()
    {
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var storeB = NvramStore.For(layout, "nvram-B");
        var (shelf, a, b) = await FormPairAsync(storeB);
        PairController? again = null;
        try
        {
            // A acknowledges a write once B's region 2 holds it, and keeps it dirty (no destage but for room).
            a.Cache.DestageForRoomOnly();
            var data = new byte[64 << 10];
            new System.Random(23).NextBytes(data);
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0OnA));
            await vol0OnA.WriteAsync(1 << 20, data, fua: false);
            Assert.Contains(b.Nvram.Peer.ReplayOrder(), x => x.Descriptor.Dirty);

            // B takes A over and stops right after the fence, before it adopted anything; A, fenced, steps down
            // (a restart of A would discard its NVRAM: the acknowledged write is in B's region 2 alone).
            await shelf.Port("B").FenceAsync("A");
            await b.DisposeAsync();
            await Until(() => a.IsSteppedDown, "A, fenced, to step down");

            // B starts again: the peer is fenced and region 2 holds its writes, so B finishes the takeover first.
            var (_, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System);
            again = await StartControllerAsync("B", 3, shelf, storeB, layout, linkB, Pair);
            await Until(() => again.LastTakeover is not null, "B to finish the takeover it started before it stopped");
            Assert.True(again.LastTakeover!.AdoptedElements > 0);
            Assert.Contains("arr0", again.LastTakeover.Arrays);
            Assert.True(again.Volumes.TryGetVolume("vol0", out var vol0OnB));
            var back = new byte[data.Length];
            await vol0OnB.ReadAsync(1 << 20, back);
            Assert.Equal(data, back);
        }
        finally
        {
            if (again is not null) await again.DisposeAsync();
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
            var (raid, number) = await DrainedArr0Async(a, b);
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

    /// <summary>
    /// A degraded RAID 5 (arr0, the member of stripe 0's second data block failed) and A dies in a write of stripe 0's
    /// first block that tore: the data landed, the parity did not. The lost block now exists only in the partial sum A
    /// took before the write: A sent it to B with the record, and B's takeover settles the row with it, so the lost
    /// block reads back as it was. The contrast: the member fails after the write (the array was healthy then, so the
    /// sum stayed with A), and B's takeover rebuilds the lost block from the stale parity: it does not read back.
    /// </summary>
    [Theory]
    [Trait("Claim", "AW-4")]
    [Trait("Claim", "AW-3")]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_takeover_rebuilds_a_lost_members_block_of_a_torn_row_from_the_partial_sum_the_owner_sent_with_its_record(bool degradedBeforeTheWrite)
    {
        var faulty = new Dictionary<string, Duet.Drives.Faults.FaultyDrive>(StringComparer.Ordinal);
        var (_, a, b) = await FormPairAsync(faulty: faulty);
        try
        {
            var (raid, number) = await DrainedArr0Async(a, b);
            var g = raid.Geometry;
            int lost = g.DataMember(0, 1), p = g.PMember(0);
            var old = new byte[2 * g.ChunkBlocks * Units.BlockBytes];
            new System.Random(17).NextBytes(old);
            await raid.WriteAsync(0, old); // stripe 0, both data chunks
            await raid.FlushAsync();
            string lostDrive = raid.Member(lost)!.Drive.Name;
            async Task FailAsync()
            {
                faulty[lostDrive].Fail(); // dead to both controllers
                await a.Arrays.FailDriveAsync(lostDrive);
            }
            if (degradedBeforeTheWrite) await FailAsync();

            // A's logged write of array block 0 (row 0 of data block 0): the record and, degraded, the row's sum go to B.
            var pOld = new byte[Units.BlockBytes];
            await raid.Member(p)!.ReadAsync(0, pOld);
            var fresh = new byte[Units.BlockBytes];
            new System.Random(18).NextBytes(fresh);
            var backing = new RaidBacking(raid, number, ArrayManager.SerialOf(raid.Uuid), a);
            await backing.WriteAsync(0, fresh, recovery: false, default);
            await Until(() => b.PeerOpenCheckpoints == 1, "B to hear A's record");
            if (degradedBeforeTheWrite)
            {
                Assert.True(a.PartialSumsPosted >= 1);
                await Until(() => b.WriteLog.PeerPartialSums >= 1, "B to hold A's partial sum");
            }
            else
            {
                Assert.Equal(0, a.PartialSumsPosted);
                await FailAsync();
            }
            Assert.Equal(0, a.PartialSumsLost);
            // The tear: the parity write did not land.
            await raid.Member(p)!.WriteAsync(0, pOld);

            await b.TakeOverAsync("test: A died in a write to a degraded array");
            var arr0OnB = b.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            Assert.Equal(MemberStatus.Missing, arr0OnB.Status(lost));
            var first = new byte[Units.BlockBytes];
            await arr0OnB.ReadAsync(0, first);
            Assert.Equal(fresh, first);
            var second = new byte[Units.BlockBytes];
            long lostBlockSector = (long)g.ChunkBlocks * Units.SectorsPerBlock; // data block 1, row 0
            var expected = old.AsSpan(g.ChunkBlocks * Units.BlockBytes, Units.BlockBytes).ToArray();
            if (degradedBeforeTheWrite)
            {
                await arr0OnB.ReadAsync(lostBlockSector, second);
                Assert.Equal(expected, second);
            }
            else
            {
                // Rebuilt from parity that does not cover the block that landed: wrong, or listed as lost.
                bool readBack;
                try
                {
                    await arr0OnB.ReadAsync(lostBlockSector, second);
                    readBack = second.AsSpan().SequenceEqual(expected);
                }
                catch (BlockIoException) { readBack = false; }
                Assert.False(readBack);
            }
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task A_degraded_arrays_write_whose_sums_outrun_the_pool_waits_for_room_and_leaves_no_row_unguarded()
    {
        var faulty = new Dictionary<string, Duet.Drives.Faults.FaultyDrive>(StringComparer.Ordinal);
        var (_, a, b) = await FormPairAsync(faulty: faulty);
        try
        {
            var (raid, number) = await DrainedArr0Async(a, b);
            var g = raid.Geometry;
            string lostDrive = raid.Member(g.DataMember(0, 1))!.Drive.Name;
            faulty[lostDrive].Fail();
            await a.Arrays.FailDriveAsync(lostDrive);

            // Whole stripes: each row whose block lies on the missing member keeps that block's new content as a sum
            // (nothing else could give it back if a cut tore the row). Twice the pool's worth of them, in one write.
            int capacity = a.WriteLog.PartialParityCapacity;
            int stripes = 2 * (2 * capacity / g.ChunkBlocks + 1);
            Assert.True(stripes * g.StripeDataBlocks <= g.CapacityBlocks, "the write fits the array");
            var data = new byte[stripes * g.StripeDataBlocks * Units.BlockBytes];
            new System.Random(5).NextBytes(data);
            long unguarded = a.WriteLog.PartialParityUnguarded, stored = a.WriteLog.PartialParityStored;
            var backing = new RaidBacking(raid, number, ArrayManager.SerialOf(raid.Uuid), a);
            await backing.WriteAsync(0, data, recovery: false, default);

            // Every sum found room: the stripes that ran out waited while the array was flushed and the sums of the
            // stripes already written went. (Before, the write was promised the pool and the rest went unguarded.)
            Assert.Equal(unguarded, a.WriteLog.PartialParityUnguarded);
            Assert.True(a.WriteLog.PartialParityStored - stored > capacity);
            Assert.True(a.WriteLog.ClaimWaits > 0);
            Assert.True(a.WriteLog.StripeSumsReleased > 0);
            // B holds copies of the sums (the array is degraded): it dropped those A freed, and so kept every one A
            // still holds (without the releases, more than it keeps would have come and the rest been refused).
            await Until(() => b.WriteLog.PeerPartialSums == a.WriteLog.PartialParityCapacity - a.WriteLog.PartialParityFree, "B to drop the sums A freed");
            Assert.Equal(0, b.WriteLog.PeerPartialSumsRefused);
            Assert.Equal(0, a.PartialSumsLost);
            var back = new byte[data.Length];
            await raid.ReadAsync(0, back);
            Assert.Equal(data, back);
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task A_stripe_waiting_for_room_for_its_sums_gets_it_when_a_returned_write_is_flushed_and_goes_on_without_it_after_its_limit()
    {
        var (_, a, b) = await FormPairAsync();
        try
        {
            var (_, number) = await DrainedArr0Async(a, b);
            var log = (IArrayWriteLog)a;
            int slot = await log.StartedAsync(number, 0, 1, 0, default);
            // Another write of the array holds the whole pool.
            Assert.True(a.WriteLog.TryOpen(number, 64, 1, out int filler, out _));
            var sum = new byte[Units.BlockBytes];
            for (int r = 0; a.WriteLog.PartialParityFree > 0; r++) Assert.True(a.WriteLog.StorePartialParity(filler, 100, r, 1, sum));

            // It returns: the waiting stripe flushes the array, its record goes with its sums, and the claim is met.
            var claim = log.ClaimPartialSumsAsync(slot, 4, null, default).AsTask();
            Assert.False(claim.IsCompleted);
            a.WriteLog.Written(filler);
            await claim;
            Assert.Equal(0, a.PartialSumClaimsGivenUp);
            Assert.Equal(a.WriteLog.PartialParityCapacity, a.WriteLog.PartialParityFree);
            for (int r = 0; r < 4; r++) Assert.True(a.WriteLog.StorePartialParity(slot, 0, r, 1, sum)); // the stripe's sums

            // Nothing frees what holds the pool: after its limit the stripe goes on without the claim.
            Assert.True(a.WriteLog.TryOpen(number, 64, 1, out filler, out _));
            for (int r = 0; a.WriteLog.PartialParityFree > 0; r++) Assert.True(a.WriteLog.StorePartialParity(filler, 100, r, 1, sum));
            await log.ClaimPartialSumsAsync(slot, 4, null, default);
            Assert.Equal(1, a.PartialSumClaimsGivenUp);
            a.WriteLog.Written(filler);
            log.Written(slot);
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    [Trait("Claim", "AW-3")]
    public async Task A_degraded_stripes_sums_that_wait_for_room_in_the_peers_window_are_waited_for_before_its_drive_writes_within_the_post_limit()
    {
        var faulty = new Dictionary<string, Duet.Drives.Faults.FaultyDrive>(StringComparer.Ordinal);
        await using var pair = await PumpedPair.StartAsync(await TwoArrayShelfAsync(faulty));
        var (a, b, bReads) = (pair.A, pair.B, pair.BReads);
        var (raid, number) = await DrainedArr0Async(a, b);
        var g = raid.Geometry;
        string lostDrive = raid.Member(g.DataMember(0, 1))!.Drive.Name;
        faulty[lostDrive].Fail();
        await a.Arrays.FailDriveAsync(lostDrive);

        // B stops reading its window; A's "started" posts fill it.
        bReads.Value = false;
        int started = 0;
        while (!a.LogMarkedStale && started < 32)
            ((IArrayWriteLog)a).Written(await ((IArrayWriteLog)a).StartedAsync(number, g.CapacityBlocks - 1 - started++, 1, 0, default));
        Assert.True(a.LogMarkedStale);

        // A write of one block of row 0 (its block on the missing member is left as it is: a sum). Its sum cannot get
        // into B's window: the stripe waits for it up to the post limit, then goes on, the sum counted as not there in
        // time. (Before, the write went on at once and the post waited on its own, counted only if it failed.)
        var fresh = new byte[Units.BlockBytes];
        new System.Random(21).NextBytes(fresh);
        var backing = new RaidBacking(raid, number, ArrayManager.SerialOf(raid.Uuid), a);
        await backing.WriteAsync(0, fresh, recovery: false, default);
        Assert.True(a.PartialSumsPosted >= 1);
        Assert.True(a.PartialSumsLost >= 1);
        var back = new byte[Units.BlockBytes];
        await raid.ReadAsync(0, back);
        Assert.Equal(fresh, back);

        // B reads again: the late sum still arrives, and B keeps it with A's record.
        bReads.Value = true;
        await Until(() => b.WriteLog.PeerPartialSums >= 1, "the late sum to reach B");
    }

    /// <summary>A formed pair whose links deliver only when pumped, so that B can stop reading its window (hung) while A
    /// goes on (<see cref="BReads"/>).</summary>
    sealed class PumpedPair : IAsyncDisposable
    {
        public required Duet.Shelf.Shelf Shelf { get; init; }
        public required PairController A { get; init; }
        public required PairController B { get; init; }
        public StrongBox<bool> BReads { get; } = new(true);
        readonly CancellationTokenSource _stop = new();
        Task[] _pumps = [];

        public static async Task<PumpedPair> StartAsync(Duet.Shelf.Shelf shelf)
        {
            var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
            var window = IclWindowOptions.Default with { QueueEntries = 8, ReplyQueueEntries = 8, ReplyDataBufferBytes = 4 << 20 };
            var (linkA, linkB) = InMemoryIclTransport.CreatePair(window, TimeProvider.System, "A", "B", manualDelivery: true);
            var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
            var b = await StartControllerAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB, Pair);
            var pair = new PumpedPair { Shelf = shelf, A = a, B = b };
            pair._pumps = [pair.PumpAsync(linkA, new StrongBox<bool>(true)), pair.PumpAsync(linkB, pair.BReads)];
            await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy, "the pair to form");
            return pair;
        }

        async Task PumpAsync(InMemoryIclLink link, StrongBox<bool> reads)
        {
            while (!_stop.IsCancellationRequested)
                if (!reads.Value || !await link.PumpOnceAsync()) await Task.Delay(1);
        }

        public async ValueTask DisposeAsync()
        {
            await A.DisposeAsync();
            await B.DisposeAsync();
            _stop.Cancel();
            await Task.WhenAll(_pumps);
            _stop.Dispose();
        }
    }

    /// <summary>
    /// A write of A's that failed part-way on arr0 (RAID 5) kept its record and its sum of row 0 of stripe 0 (it
    /// changed data block 0 and left data block 1: the sum is block 1), and tore the row: block 0 landed, parity did
    /// not. Then data block 1's drive fails. The sum is in A's NVRAM only (the array was healthy at the write). Before
    /// the record may go, A settles the row with it: on a move before the hand-over, or at its next write. B (after the
    /// move) or A (after the write) then reads block 1 as it was; rebuilt from the torn parity instead, it read wrong.
    /// </summary>
    [Theory]
    [Trait("Claim", "AW-4")]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_failed_writes_torn_row_is_settled_with_its_sum_before_a_move_or_at_the_next_write(bool move)
    {
        var faulty = new Dictionary<string, Duet.Drives.Faults.FaultyDrive>(StringComparer.Ordinal);
        var (_, a, b) = await FormPairAsync(faulty: faulty);
        try
        {
            var (raid, number) = await DrainedArr0Async(a, b);
            var g = raid.Geometry;
            int m0 = g.DataMember(0, 0), m1 = g.DataMember(0, 1);
            var old = new byte[2 * g.ChunkBlocks * Units.BlockBytes];
            new System.Random(21).NextBytes(old);
            await raid.WriteAsync(0, old); // stripe 0, both data chunks
            await raid.FlushAsync();
            var block1 = old.AsSpan(g.ChunkBlocks * Units.BlockBytes, Units.BlockBytes).ToArray();

            // The failed write's record and sum, as RaidBacking leaves them, and the tear it left on the drives.
            Assert.True(a.WriteLog.TryOpen(number, 0, 1, out int slot, out _, 1));
            Assert.True(a.WriteLog.StorePartialParity(slot, 0, 0, 0b10, block1));
            a.WriteLog.Written(slot, failed: true);
            var fresh = new byte[Units.BlockBytes];
            new System.Random(22).NextBytes(fresh);
            await raid.Member(m0)!.WriteAsync(0, fresh);
            string lostDrive = raid.Member(m1)!.Drive.Name;
            faulty[lostDrive].Fail();
            await a.Arrays.FailDriveAsync(lostDrive);
            Assert.True(a.WriteLog.AnyFailed);

            RaidArray reader;
            if (move)
            {
                // Refused (Conflict) until A has seen B registered at the shelf: asked again until then.
                var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
                while (true)
                {
                    try
                    {
                        await a.MoveArrayAsync("arr0", "B", CancellationToken.None);
                        break;
                    }
                    catch (ManagementException e) when (e.Kind == ManagementErrorKind.Conflict && DateTime.UtcNow < until) { await Task.Delay(50); }
                }
                await Until(() => b.Arrays.ServedArrays.Any(r => r.Name == "arr0"), "B to serve arr0");
                reader = b.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            }
            else
            {
                // Any logged write settles it first: here one of another stripe.
                var backing = new RaidBacking(raid, number, ArrayManager.SerialOf(raid.Uuid), a);
                var other = new byte[Units.BlockBytes];
                await backing.WriteAsync(g.StripeDataBlocks * Units.SectorsPerBlock, other, recovery: false, default);
                reader = raid;
            }
            Assert.Equal(1, a.WriteLog.FailedSettledBySettle);
            Assert.False(a.WriteLog.AnyFailed);
            var first = new byte[Units.BlockBytes];
            await reader.ReadAsync(0, first);
            Assert.Equal(fresh, first);
            var second = new byte[Units.BlockBytes];
            await reader.ReadAsync((long)g.ChunkBlocks * Units.SectorsPerBlock, second);
            Assert.Equal(block1, second);
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_takeover_does_not_wait_for_mirrored_writes_of_an_array_the_peer_deleted_while_the_link_was_down()
    {
        var (shelf, a, b) = await FormPairAsync();
        try
        {
            // A acknowledges a write once B's region 2 holds it, and keeps it dirty.
            a.Cache.DestageForRoomOnly();
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            var data = new byte[64 << 10];
            new System.Random(31).NextBytes(data);
            await vol0.WriteAsync(0, data, fua: false);
            Assert.Contains(b.Nvram.Peer.ReplayOrder(), x => x.Descriptor.Dirty);

            // With the link down, A deletes arr0: its cache destages and drops the elements, but B's copies stay, and
            // B, reading the drives again, no longer knows the array they are of.
            ((InMemoryIclLink)a.Link).Cut();
            await Until(() => !a.Link.IsUp, "A to see its link down");
            a.Cache.DestageAsUsual();
            await a.Arrays.DeleteVolumeAsync("vol0");
            await a.DeleteArrayAsync("arr0", CancellationToken.None);
            await b.RescanAsync();
            Assert.DoesNotContain(b.Arrays.ArrayTable.Values, e => e.Name == "arr0");
            int orphans = b.Nvram.Peer.ReplayOrder().Count(x => x.Descriptor.Dirty);
            Assert.True(orphans > 0);
            Assert.Equal(0, b.Arrays.UnreadableDrives);

            // Every drive on the shelf was read: no array there is theirs. The takeover neither adopts them nor reads
            // the drives again and again for them (the peer's arrays served by nobody meanwhile) before it gives up.
            await b.TakeOverAsync("test: A died after it deleted arr0 with the link down");
            Assert.Equal(orphans, b.LastTakeover!.OrphanCopies);
            Assert.Equal(0, b.LastTakeover.AdoptedElements);
            Assert.Empty(b.Nvram.Peer.ReplayOrder());
            Assert.Equal(["arr1"], b.Arrays.ServedArrays.Select(r => r.Name));
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    /// <summary>A's arr0 and its number, once A's cache is drained and B has cleared the records of that destage.</summary>
    static async Task<(RaidArray Raid, byte Number)> DrainedArr0Async(PairController a, PairController b)
    {
        var raid = a.Arrays.ServedArrays.Single(r => r.Name == "arr0");
        await a.Cache.DrainAsync();
        await Until(() => b.PeerOpenCheckpoints == 0, "A's destage records to be cleared at B after A's flush");
        return (raid, a.Arrays.NumberOf(raid));
    }

    /// <summary>A drained controller's array arr0 with the parity block of its last stripe overwritten (a write the
    /// stop tore there): a scrub finds exactly that row's parity disagreeing with its data.</summary>
    static async Task TearLastStripesParityAsync(RaidArray raid, int seed)
    {
        await raid.FlushAsync();
        var (lastStripe, _, _, memberBlock) = raid.Geometry.Map(raid.Geometry.CapacityBlocks - 1);
        var garbage = new byte[Units.BlockBytes];
        new System.Random(seed).NextBytes(garbage);
        await raid.Member(raid.Geometry.PMember(lastStripe))!.WriteAsync(memberBlock, garbage);
        var before = new ScrubResult();
        await raid.ScrubAsync(false, before, new PassProgress(), default);
        Assert.Equal(1L, before.ParityMismatches);
    }

    /// <summary>No stripe of <paramref name="raid"/> is owed a settle, and a scrub finds nothing to repair.</summary>
    static async Task AssertSettledAsync(RaidArray raid)
    {
        Assert.Equal(0, raid.UnsettledStripes);
        var scrub = new ScrubResult();
        await raid.ScrubAsync(false, scrub, new PassProgress(), default);
        Assert.Equal((0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches));
    }

    static async Task<(Duet.Shelf.Shelf Shelf, PairController A, PairController B)> FormPairAsync(NvramStore? storeB = null,
        Dictionary<string, Duet.Drives.Faults.FaultyDrive>? faulty = null, NvramStore? storeA = null)
    {
        var shelf = await TwoArrayShelfAsync(faulty);
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, storeA ?? NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        var b = await StartControllerAsync("B", 2, shelf, storeB ?? NvramStore.For(layout, "nvram-B"), layout, linkB, Pair);
        await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && a.HoldsLease, "the pair to form");
        return (shelf, a, b);
    }

}
