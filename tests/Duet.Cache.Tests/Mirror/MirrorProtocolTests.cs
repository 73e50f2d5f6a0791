using Duet.Core;
using Duet.Cache.Mirror;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;

namespace Duet.Cache.Tests.Mirror;

public class MirrorProtocolTests
{
    [Fact]
    [Trait("Claim", "MR-6")]
    [Trait("Claim", "MR-3")]
    public async Task OneSmallMirroredWriteRingsThreeDoorbells()
    {
        await using var h = new PairHarness(MirrorMethod.Seed);
        await h.WriteAsync(8, 8); // 4 KiB: one S/G element, small path
        Assert.Equal(3, h.Doorbells);   // command and data at B, status at A
        Assert.Equal(2, h.LinkA.Counters.DoorbellsRung);
        Assert.Equal(1, h.LinkB.Counters.DoorbellsRung);
        Assert.Equal(1, h.Mirror.Counters.SmallWrites);
        Assert.True(h.LinkBytes <= 4200, $"{h.LinkBytes} link bytes for a 4 KiB write");
        Assert.Equal(h.Model, h.PeerReplay());
    }

    [Theory]
    [InlineData(8)]      // 4 KiB forced onto the large path
    [InlineData(128)]    // 64 KiB: four S/G elements, large by figure 7
    [InlineData(2048)]   // 1 MiB: 64 elements in one metadata message
    [Trait("Claim", "MR-6")]
    [Trait("Claim", "MR-2")]
    public async Task OneLargeMirroredWriteRingsFourDoorbells(int sectors)
    {
        await using var h = new PairHarness(sectors == 8 ? MirrorMethod.SeedLarge : MirrorMethod.Seed, nvramBytes: 16 << 20);
        await h.WriteAsync(0, sectors);
        Assert.Equal(4, h.Doorbells);   // notification, metadata and data at B, status at A
        Assert.Equal(1, h.Mirror.Counters.LargeWrites);
        Assert.Equal(h.Model, h.PeerReplay());
    }

    [Fact]
    [Trait("Claim", "MR-4")]
    public async Task FigureSevenSendsTwoElementWritesSmallAndThreeElementWritesLarge()
    {
        await using var h = new PairHarness(MirrorMethod.Seed);
        await h.WriteAsync(16, 32);  // 16 KiB straddling two elements: two S/G elements, 16 KiB -> small
        await h.WriteAsync(400 * 32 + 8, 80); // three elements -> large
        Assert.Equal(1, h.Mirror.Counters.SmallWrites);
        Assert.Equal(1, h.Mirror.Counters.LargeWrites);
        Assert.Equal(h.Model, h.PeerReplay());
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    [Trait("Claim", "MR-1")]
    public async Task ABatchedWriteIsAcknowledgedOnlyAfterThePeersStatusForItsBatch()
    {
        await using var h = new PairHarness(MirrorMethod.Batched, manualDelivery: true);
        static async Task Settle() { for (int i = 0; i < 20; i++) await Task.Delay(1); }
        var first = h.WriteAsync(0, 8);
        for (int i = 0; i < 1000 && h.Mirror.Counters.GroupsAppended < 1; i++) await Task.Delay(1);
        await Settle();
        Assert.False(first.IsCompleted); // its batch is posted, not yet delivered to B
        var second = h.WriteAsync(64, 8); // gathers in the filling list behind the first batch
        for (int i = 0; i < 1000 && h.Mirror.Counters.GroupsAppended < 2; i++) await Task.Delay(1);
        Assert.Equal(1, await h.LinkB.PumpAllAsync()); // B applies the first batch and posts its status
        await Settle();
        Assert.False(first.IsCompleted); // the status has not reached A
        Assert.False(second.IsCompleted);
        Assert.Equal(1, await h.LinkA.PumpAllAsync()); // the status: A posts the second batch, then acknowledges the first
        for (int i = 0; i < 1000 && !first.IsCompleted; i++) await Task.Delay(1);
        await first;
        await Settle();
        Assert.False(second.IsCompleted); // the second batch is on the link, unacknowledged
        Assert.Equal(h.Model.AsSpan(0, 4096).ToArray(), h.PeerReplay().AsSpan(0, 4096).ToArray());
        while (!second.IsCompleted)
        {
            await h.LinkB.PumpAllAsync();
            await h.LinkA.PumpAllAsync();
            await Task.Delay(1);
        }
        await second;
        Assert.Equal(2, h.Mirror.Counters.Batches);
        Assert.Equal(h.Model, h.PeerReplay());
    }

    [Fact]
    [Trait("Claim", "CC-2")]
    [Trait("Claim", "CC-3")]
    public async Task UnderLoadBatchingCarriesManyWritesPerDoorbell()
    {
        await using var h = new PairHarness(MirrorMethod.Batched, manualDelivery: true);
        var writes = Enumerable.Range(0, 32).Select(i => h.WriteAsync(i * 64L, 8)).ToList();
        // Every write has appended its change before the link delivers anything: the first batch is
        // in flight and the rest wait in the filling list.
        for (int i = 0; i < 1000 && h.Mirror.Counters.GroupsAppended < 32; i++) await Task.Delay(1);
        Assert.Equal(32, h.Mirror.Counters.GroupsAppended);
        while (writes.Any(w => !w.IsCompleted))
        {
            await h.LinkB.PumpAllAsync();
            await h.LinkA.PumpAllAsync();
            await Task.Delay(1);
        }
        await Task.WhenAll(writes);
        Assert.True(h.Mirror.Counters.Batches <= 3, $"{h.Mirror.Counters.Batches} batches for 32 concurrent writes");
        Assert.True(h.Doorbells <= 32, $"{h.Doorbells} doorbells for 32 writes");
        Assert.True(h.LinkBytes <= 32 * 4200, $"{h.LinkBytes / 32} link bytes per 4 KiB write");
        Assert.Equal(h.Model, h.PeerReplay());
    }

    public static TheoryData<MirrorMethod, int> Workloads => new()
    {
        { MirrorMethod.Batched, 1 }, { MirrorMethod.Batched, 2 }, { MirrorMethod.Seed, 3 }, { MirrorMethod.Seed, 4 }, { MirrorMethod.SeedLarge, 5 },
    };

    [Theory, MemberData(nameof(Workloads))]
    [Trait("Claim", "MR-1")]
    [Trait("Claim", "ICL-4")]
    public async Task EveryAcknowledgedWriteIsInThePeersRegion2(MirrorMethod path, int seed)
    {
        await using var h = new PairHarness(path, seed: seed);
        var rng = new Random(seed);
        for (int round = 0; round < 40; round++)
        {
            // Concurrent writes in one round touch disjoint ranges: overlapping concurrent writes
            // have no defined order, so no model could say which one wins.
            int n = rng.Next(1, 16);
            long slice = h.Backing.CapacitySectors / n;
            await Task.WhenAll(Enumerable.Range(0, n).Select(i =>
            {
                int len = rng.Next(1, rng.Next(2) == 0 ? 9 : 161);
                return h.WriteAsync(i * slice + rng.NextInt64(0, slice - len), len);
            }));
            if (rng.Next(5) == 0) await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
            var replay = h.PeerReplay();
            if (!replay.AsSpan().SequenceEqual(h.Model))
            {
                int sector = replay.AsSpan().CommonPrefixLength(h.Model) / 512;
                var peerHas = h.NvramB.Peer.ReplayOrder().Where(x => x.Descriptor.ArrayLba == sector / 32 * 32).Select(x => $"e{x.Element} seq{x.Descriptor.Sequence} mask{x.Descriptor.ValidMask:x8}");
                var ownHas = h.NvramA.Own.ReplayOrder().Where(x => x.Descriptor.ArrayLba == sector / 32 * 32).Select(x => $"e{x.Element} seq{x.Descriptor.Sequence} mask{x.Descriptor.ValidMask:x8} dirty{x.Descriptor.Dirty}");
                bool backingOk = h.Backing.Bytes.AsSpan(sector * 512, 512).SequenceEqual(h.Model.AsSpan(sector * 512, 512));
                Assert.Fail($"round {round}: sector {sector} (element lba {sector / 32 * 32}) not recovered; backing ok {backingOk}; peer [{string.Join(", ", peerHas)}]; owner [{string.Join(", ", ownHas)}]");
            }
        }
        await h.VerifyAsync();
        Assert.Equal(0, h.Receiver.Refused);
    }

    [Theory]
    [InlineData(MirrorMethod.Batched)]
    [InlineData(MirrorMethod.Seed)]
    [InlineData(MirrorMethod.SeedLarge)]
    [Trait("Claim", "MR-4")]
    public async Task A_peer_that_never_answers_puts_the_owner_in_error_recovery_at_the_status_time_limit(MirrorMethod path)
    {
        var time = new ManualTimeProvider();
        await using var h = new PairHarness(path, mirrorTime: time, peerSilent: true);
        var write = h.WriteAsync(0, 8);
        // The link is up and B takes the transfer, so nothing fails until A's time limit for B's status passes.
        for (int i = 0; i < 200 && h.LinkA.Counters.DoorbellsRung == 0; i++) await Task.Delay(5);
        Assert.True(h.LinkA.Counters.DoorbellsRung > 0);
        Assert.False(write.IsCompleted);
        Assert.Equal(Duet.Cache.MirrorMode.Healthy, h.Mirror.Mode);
        for (int i = 0; i < 200 && !write.IsCompleted; i++)
        {
            time.Advance(TimeSpan.FromMilliseconds(500));
            await Task.Delay(5);
        }
        await write.WaitAsync(TimeSpan.FromSeconds(30));
        // The seed paths fail the group in hand to its writer and then the pump takes the mirror down: the write may
        // finish (through to the drives) a moment before the mode reads ErrorRecovery.
        for (int i = 0; i < 2000 && h.Mirror.Mode != Duet.Cache.MirrorMode.ErrorRecovery; i++) await Task.Delay(5);
        Assert.Equal(Duet.Cache.MirrorMode.ErrorRecovery, h.Mirror.Mode);
        // Not acknowledged from the cache alone: the write went through to the drives.
        Assert.Equal(h.Model.AsSpan(0, 4096).ToArray(), h.Backing.Bytes.AsSpan(0, 4096).ToArray());
    }

    [Fact]
    public async Task WhenTheLinkIsCutWritesGoOnThroughToTheDrives()
    {
        await using var h = new PairHarness(MirrorMethod.Batched);
        await h.WriteAsync(0, 8);
        h.LinkA.Cut();
        Assert.Equal(Duet.Cache.MirrorMode.ErrorRecovery, h.Mirror.Mode);
        await h.WriteAsync(64, 8);
        Assert.Equal(h.Model.AsSpan(64 * 512, 4096).ToArray(), h.Backing.Bytes.AsSpan(64 * 512, 4096).ToArray());
        await h.VerifyAsync();
    }

    [Fact]
    [Trait("Claim", "MR-3")]
    [Trait("Claim", "MR-2")]
    public async Task MalformedMirrorInputIsRefusedCountedAndNeverWritten()
    {
        await using var h = new PairHarness(MirrorMethod.Seed);
        await h.WriteAsync(0, 8);
        var before = h.NvramB.Peer.ReplayOrder().Select(x => (x.Element, x.Descriptor)).ToList();
        long refused = h.Receiver.Refused;
        async Task Send(IclSignal signal, byte[] message, byte[]? data = null, ulong epoch = 1)
        {
            await h.LinkA.PostAsync(signal, epoch, message, data ?? default);
            for (int i = 0; i < 200 && h.LinkB.Counters.DoorbellsTaken < h.LinkA.Counters.DoorbellsRung; i++) await Task.Delay(1);
        }
        // Unknown opcode 0xC0 in a small-write position: not a mirror message.
        // Small write with count1 = 40 (33-63 are rejected).
        await Send(IclSignal.Message, Convert.FromHexString("a0" + "0a" + "00" + "07" + "0000" + "0000" + "00000000"));
        // Small write for controller B's opcode (0xB0) arriving from A.
        await Send(IclSignal.Message, Convert.FromHexString("b0" + "02" + "00" + "07" + "0000" + "0000" + "00000000"));
        // Small write naming volume 9, which B's array table does not hold; its data follows.
        await Send(IclSignal.Message, Convert.FromHexString("a0" + "02" + "00" + "09" + "0100" + "0000" + "00000000"));
        await Send(IclSignal.MessageWithData, [], new byte[4096]);
        // Small write whose data is shorter than announced.
        await Send(IclSignal.Message, Convert.FromHexString("a0" + "02" + "00" + "07" + "0100" + "0000" + "00000000"));
        await Send(IclSignal.MessageWithData, [], new byte[512]);
        // Large write whose metadata puts an S/G element beyond region 2.
        var notice = new byte[10]; notice[0] = 0x3C;
        await Send(IclSignal.Message, notice);
        var meta = new MetadataMirrorMessage { Sequence = 99, Lba = 0, BlockCount = 8, ArraySerial = 0xABCDEF, Region = 2, ArrayNumber = 7, Elements = [new SgElement(0, 4096)] };
        var metaBytes = new byte[1024];
        meta.Encode(metaBytes);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(metaBytes.AsSpan(512), 0x7FFF_F000); // offset outside the region
        await Send(IclSignal.Message, metaBytes);
        // A batch from a stale epoch is dropped without an answer. (Once the five refusals above are counted,
        // their handler has stamped the epoch it saw: setting the floor now is not undone by a late one.)
        for (int i = 0; i < 2000 && h.Receiver.Refused < refused + 5; i++) await Task.Delay(1);
        Assert.True(h.Receiver.Refused >= refused + 5, $"refused {h.Receiver.Refused - refused}");
        h.Receiver.PeerEpoch = 5;
        await Send(IclSignal.Message, Convert.FromHexString("a0" + "02" + "00" + "07" + "0100" + "0000" + "00000000"), epoch: 4);
        for (int i = 0; i < 2000 && h.Receiver.StaleEpochs < 1; i++) await Task.Delay(1);
        Assert.Equal(1, h.Receiver.StaleEpochs);
        Assert.True(h.Receiver.Refused >= refused + 5, $"refused {h.Receiver.Refused - refused}");
        Assert.Equal(before, h.NvramB.Peer.ReplayOrder().Select(x => (x.Element, x.Descriptor)).ToList());
    }

    [Fact]
    [Trait("Claim", "FO-3")]
    public async Task A_multicast_write_the_peer_holds_is_mirrored_by_name_not_by_its_bytes()
    {
        await using var h = new PairHarness(MirrorMethod.Batched);
        await h.MulticastWriteAsync(tag: 1, sector: 8, sectors: 8);      // 4 KiB in a fresh element
        Assert.Equal(1, h.Applier.AppliedByReference);
        Assert.True(h.LinkBytes <= 128, $"{h.LinkBytes} link bytes for a 4 KiB multicast write");
        Assert.Equal(h.Model, h.PeerReplay());

        // 40 KiB across three elements: the middle one whole, the ends partial; all by name.
        await h.MulticastWriteAsync(tag: 2, sector: 100, sectors: 80);
        Assert.Equal(4, h.Applier.AppliedByReference);
        // A rewrite next to dirty sectors of an earlier write: the image keeps them, and the peer
        // takes them from its own mirror of the element the image replaces.
        long before = h.LinkBytes;
        await h.MulticastWriteAsync(tag: 3, sector: 16, sectors: 8);
        Assert.Equal(5, h.Applier.AppliedByReference);
        Assert.True(h.LinkBytes - before <= 160, $"{h.LinkBytes - before} link bytes for a 4 KiB multicast rewrite beside dirty sectors");
        Assert.Equal(h.Model, h.PeerReplay());
        // One that leaves a gap between the new and the kept sectors: the image keeps the gap (a coherency
        // header carries one; nothing is read from the array to fill it), so it goes by name too.
        before = h.LinkBytes;
        await h.MulticastWriteAsync(tag: 4, sector: 0, sectors: 4);
        Assert.Equal(6, h.Applier.AppliedByReference);
        Assert.True(h.LinkBytes - before <= 160, $"{h.LinkBytes - before} link bytes for a 2 KiB multicast write with a gap before dirty sectors");
        Assert.Equal(h.Model, h.PeerReplay());
        await h.VerifyAsync();
    }

    [Fact]
    [Trait("Claim", "FO-3")]
    public async Task A_multicast_rewrite_retires_the_replaced_element_at_the_peer_without_an_invalidation_header()
    {
        await using var h = new PairHarness(MirrorMethod.Batched);
        await h.MulticastWriteAsync(tag: 1, sector: 8, sectors: 8);
        Assert.True(h.NvramA.Own.TryRead(OwnElementAt(h, 0), out _));
        int first = OwnElementAt(h, 0);
        long invalidatedBefore = h.Applier.Invalidated;
        long before = h.LinkBytes;
        // The same sectors again: a fresh element replaces the first; the peer drops its mirror of the first.
        await h.MulticastWriteAsync(tag: 2, sector: 8, sectors: 8);
        int second = OwnElementAt(h, 0);
        Assert.NotEqual(first, second);
        Assert.Equal(2, h.Applier.AppliedByReference);
        Assert.Equal(1, h.Mirror.RetiredByReference);
        Assert.Equal(invalidatedBefore + 1, h.Applier.Invalidated);
        Assert.False(h.NvramB.Peer.TryRead(first, out _));
        Assert.True(h.NvramB.Peer.TryRead(second, out _));
        Assert.True(h.LinkBytes - before <= 128, $"{h.LinkBytes - before} link bytes for a 4 KiB multicast rewrite");
        // A plain (not multicast) rewrite still sends its invalidation header, and the peer's region 2 holds
        // exactly the elements the owner holds dirty.
        await h.WriteAsync(8, 8);
        Assert.Equal(1, h.Mirror.RetiredByReference);
        Assert.False(h.NvramB.Peer.TryRead(second, out _));
        Assert.Equal(h.NvramA.Own.ReplayOrder().Select(x => x.Element).Order(), h.NvramB.Peer.ReplayOrder().Select(x => x.Element).Order());
        Assert.Equal(h.Model, h.PeerReplay());
        await h.VerifyAsync();

        static int OwnElementAt(PairHarness h, long elementLba) => h.NvramA.Own.ReplayOrder().Single(x => x.Descriptor.ArrayLba == elementLba).Element;
    }

    [Fact]
    [Trait("Claim", "FO-3")]
    public void The_receiver_retires_only_another_element_inside_its_region()
    {
        string dir = Path.Combine(Path.GetTempPath(), "duet-retire-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            using var nvram = Duet.Cache.Nvram.NvramFile.Create(Path.Combine(dir, "b.nvram"), Duet.Cache.Nvram.NvramLayout.For(4 << 20), "B", Guid.NewGuid());
            var payload = new byte[4096];
            new Random(5).NextBytes(payload);
            var applier = new MirrorApplier(nvram.Peer, v => v == 7 ? 0xABCDEFUL : null, r => r.HostTag == 1 ? payload : null);
            var host = new Duet.Core.HostDataReference(0, 0x77, 1, 0);
            byte[] Block(HostReferenceBlock b) { var x = new byte[MirrorWire.HostReferenceBytes]; b.Encode(x); return x; }
            CoherencyHeader ByRef(int element, ulong seq) => new(CoherencyHeaderKind.MirrorByReference, 7, (ulong)(element * 32), 8, (uint)(element * 32), 0xFF, seq);

            Assert.Null(applier.Apply(ByRef(1, 1), Block(new HostReferenceBlock(host))));
            Assert.True(nvram.Peer.TryRead(1, out _));
            // Retiring itself, or an element past the region: refused, nothing written.
            Assert.NotNull(applier.Apply(ByRef(1, 2), Block(new HostReferenceBlock(host, 1, 0, RetiresBase: true))));
            Assert.NotNull(applier.Apply(ByRef(2, 3), Block(new HostReferenceBlock(host, nvram.Peer.ElementCount, 0, RetiresBase: true))));
            Assert.False(nvram.Peer.TryRead(2, out _));
            Assert.True(nvram.Peer.TryRead(1, out _));
            // The image at element 2 replaces element 1: stored, then 1 is invalidated.
            Assert.Null(applier.Apply(ByRef(2, 4), Block(new HostReferenceBlock(host, 1, 0, RetiresBase: true))));
            Assert.True(nvram.Peer.TryRead(2, out var d));
            Assert.Equal(4UL, d.Sequence);
            Assert.False(nvram.Peer.TryRead(1, out _));
            Assert.True(nvram.Peer.Data(2)[..4096].SequenceEqual(payload));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    [Trait("Claim", "FO-3")]
    public async Task A_reference_to_a_command_the_peer_does_not_hold_is_refused_and_nothing_of_it_is_written()
    {
        await using var h = new PairHarness(MirrorMethod.Batched);
        await h.WriteAsync(64, 8);
        await h.MulticastWriteAsync(tag: 9, sector: 8, sectors: 8, heldByB: false);
        Assert.Equal(0, h.Applier.AppliedByReference);
        Assert.Contains("refused", h.Mirror.DownReason); // the write went through to the drives instead
        Assert.DoesNotContain(h.NvramB.Peer.ReplayOrder(), x => x.Descriptor.ArrayLba == 0);
        Assert.Equal(h.Model, h.PeerReplay()); // the drives have it
        await h.VerifyAsync();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [Trait("Claim", "FO-3")]
    public async Task Random_multicast_writes_leave_the_peers_region_2_equal_to_the_owners_data(int seed)
    {
        await using var h = new PairHarness(MirrorMethod.Batched, arraySectors: 2048, seed: seed);
        ulong tag = 0;
        await WavesAsync(new Random(seed), window: 256, (at, n) => h.MulticastWriteAsync(++tag, at, n));
        Assert.True(h.Applier.AppliedByReference > 100, $"only {h.Applier.AppliedByReference} images by reference");
        Assert.Null(h.Mirror.DownReason);
        Assert.Equal(h.Model, h.PeerReplay());
        // No replaced element is left behind at the peer (retired by its successor's reference or invalidated).
        Assert.Equal(h.NvramA.Own.ReplayOrder().Select(x => x.Element).Order(), h.NvramB.Peer.ReplayOrder().Select(x => x.Element).Order());
        await h.VerifyAsync();
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    [Trait("Claim", "MR-1")]
    public async Task A_rewrite_of_part_of_a_dirty_element_travels_as_its_own_sectors_over_the_peers_copy_of_the_element_it_replaces()
    {
        await using var h = new PairHarness(MirrorMethod.Batched);
        await h.WriteAsync(0, 32); // a whole 16 KiB element, dirty
        int first = h.NvramA.Own.ReplayOrder().Single(x => x.Descriptor.ArrayLba == 0).Element;
        long before = h.LinkBytes, invalidated = h.Applier.Invalidated;
        await h.WriteAsync(8, 8); // 4 KiB of it again: a new element keeps the other 12 KiB
        long bytes = h.LinkBytes - before;
        int second = h.NvramA.Own.ReplayOrder().Single(x => x.Descriptor.ArrayLba == 0).Element;
        Assert.NotEqual(first, second);
        Assert.Equal(1, h.Applier.AppliedWithBase);
        // 4 KiB + the 8-byte base block + one header and the batch's head; the whole image would be 16 KiB.
        Assert.True(bytes < 4096 + 512, $"{bytes} link bytes for a 4 KiB rewrite of a full element");
        // The image retired its base at the peer: no invalidation header, the old element gone there too.
        Assert.Equal(1, h.Mirror.RetiredByReference);
        Assert.Equal(invalidated + 1, h.Applier.Invalidated);
        Assert.False(h.NvramB.Peer.TryRead(first, out _));
        Assert.True(h.NvramB.Peer.TryRead(second, out var d));
        Assert.Equal(uint.MaxValue, d.ValidMask);
        Assert.True(h.NvramB.Peer.Data(second).SequenceEqual(h.NvramA.Own.Data(second)));
        Assert.Equal(h.Model, h.PeerReplay());
        await h.VerifyAsync();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [Trait("Claim", "CC-3")]
    [Trait("Claim", "MR-1")]
    public async Task Random_rewrites_inside_dirty_elements_leave_the_peers_region_2_equal_to_the_owners(int seed)
    {
        await using var h = new PairHarness(MirrorMethod.Batched, arraySectors: 2048, seed: seed);
        await WavesAsync(new Random(seed), window: 128, (at, n) => h.WriteAsync(at, n));
        Assert.True(h.Applier.AppliedWithBase > 100, $"only {h.Applier.AppliedWithBase} images with a base");
        Assert.Null(h.Mirror.DownReason);
        Assert.Equal(0, h.Receiver.Refused);
        Assert.Equal(h.Model, h.PeerReplay());
        Assert.Equal(h.NvramA.Own.ReplayOrder().Select(x => x.Element).Order(), h.NvramB.Peer.ReplayOrder().Select(x => x.Element).Order());
        await h.VerifyAsync();
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void A_with_base_image_whose_base_the_receiver_does_not_hold_is_refused_and_nothing_of_it_is_written()
    {
        string dir = Path.Combine(Path.GetTempPath(), "duet-base-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        try
        {
            using var nvram = Duet.Cache.Nvram.NvramFile.Create(Path.Combine(dir, "b.nvram"), Duet.Cache.Nvram.NvramLayout.For(4 << 20), "B", Guid.NewGuid());
            var applier = new MirrorApplier(nvram.Peer, v => v == 7 ? 0xABCDEFUL : null);
            var whole = new byte[16384];
            new Random(3).NextBytes(whole);
            Assert.Null(applier.Apply(new CoherencyHeader(CoherencyHeaderKind.Mirror, 7, 64, 32, 1 * 32, uint.MaxValue, 1), whole));
            byte[] WithBase(int baseElement, bool retires, byte fill)
            {
                var x = new byte[MirrorWire.BaseBlockBytes + 4096];
                new BaseBlock(baseElement, retires).Encode(x);
                x.AsSpan(MirrorWire.BaseBlockBytes).Fill(fill);
                return x;
            }
            // Sectors 8..15 of the element at LBA 64, over element 1's copy, into element 2.
            CoherencyHeader Rewrite(int element, ulong lba, ulong seq) => new(CoherencyHeaderKind.MirrorWithBase, 7, lba + 8, 8, (uint)(element * 32 + 8), uint.MaxValue, seq);
            Assert.NotNull(applier.Apply(Rewrite(2, 64, 2), WithBase(3, false, 0x11)));   // the base is empty
            Assert.NotNull(applier.Apply(Rewrite(2, 96, 3), WithBase(1, false, 0x11)));   // the base holds another LBA
            Assert.NotNull(applier.Apply(Rewrite(2, 64, 4), WithBase(2, false, 0x11)));   // its own element as base
            Assert.NotNull(applier.Apply(Rewrite(2, 64, 5), WithBase(nvram.Peer.ElementCount, false, 0x11)));
            var bad = WithBase(1, false, 0x11);
            bad[5] = 1; // a reserved byte
            Assert.NotNull(applier.Apply(Rewrite(2, 64, 6), bad));
            Assert.False(nvram.Peer.TryRead(2, out _));
            Assert.Equal(5, applier.Rejected);

            Assert.Null(applier.Apply(Rewrite(2, 64, 7), WithBase(1, true, 0x22)));
            Assert.True(nvram.Peer.TryRead(2, out var d));
            Assert.Equal((64L, uint.MaxValue, 7UL), (d.ArrayLba, d.ValidMask, d.Sequence));
            Assert.False(nvram.Peer.TryRead(1, out _)); // retired
            var expected = (byte[])whole.Clone();
            expected.AsSpan(8 * 512, 4096).Fill(0x22);
            Assert.True(nvram.Peer.Data(2).SequenceEqual(expected));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    /// <summary>100 waves of up to four writes at once, to disjoint sectors of a <paramref name="window"/>-sector window
    /// (one of eight in turn) that often share elements: their groups meet in one batch, where a later image keeps
    /// sectors of an element an earlier header of the batch stores.</summary>
    static async Task WavesAsync(Random rng, int window, Func<long, int, Task> write)
    {
        for (int wave = 0; wave < 100; wave++)
        {
            var taken = new List<(long From, long To)>();
            var writes = new List<Task>();
            for (int k = 0; k < 4; k++)
            {
                int n = rng.Next(1, 25);
                long at = rng.NextInt64(0, window - n + 1) + (wave % 8) * window;
                if (taken.Any(t => at < t.To && t.From < at + n)) continue;
                taken.Add((at, at + n));
                writes.Add(write(at, n));
            }
            await Task.WhenAll(writes);
        }
    }
}
