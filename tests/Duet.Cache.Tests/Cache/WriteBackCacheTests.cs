using Duet.Core;

namespace Duet.Cache.Tests.Cache;

public class WriteBackCacheTests
{
    [Fact]
    [Trait("Claim", "MR-1")]
    public async Task WritesReadBackAndReadsOfCachedDataHitTheCache()
    {
        await using var h = new CacheHarness();
        for (int i = 0; i < 200; i++) await h.RandomWriteAsync();
        await h.VerifyAsync();
        await h.WriteAsync(64, 8);
        long hits = h.Cache.Counters.Hits;
        var buf = new byte[8 * 512];
        await h.Cache.ReadAsync(7, 64, buf);
        Assert.Equal(hits + 1, h.Cache.Counters.Hits);
        Assert.Equal(h.Model.AsSpan(64 * 512, buf.Length).ToArray(), buf);
    }

    public static TheoryData<int> Seeds => new() { 1, 2, 3, 4, 5, 6, 7, 8 };

    [Theory, MemberData(nameof(Seeds))]
    [Trait("Claim", "CC-1")]
    [Trait("Claim", "CC-4")]
    public async Task TheMirrorInvariantHoldsAfterAnySequenceOfWritesReadsFlushesAndDestages(int seed)
    {
        await using var h = new CacheHarness(seed: seed);
        var rng = new Random(seed * 7919);
        for (int step = 0; step < 400; step++)
        {
            switch (rng.Next(10))
            {
                case < 6: await h.RandomWriteAsync(rng.Next(2) == 0 ? 8 : 96); break;
                case 6:
                    var buf = new byte[rng.Next(1, 64) * 512];
                    long at = rng.NextInt64(0, h.Backing.CapacitySectors - buf.Length / 512);
                    await h.Cache.ReadAsync(7, at, buf);
                    Assert.True(buf.AsSpan().SequenceEqual(h.Model.AsSpan((int)(at * 512), buf.Length)));
                    break;
                case 7: await h.Cache.FlushAsync(7); break;
                default: await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30)); break;
            }
            h.CheckMirrorInvariant();
        }
        await h.VerifyAsync();
        Assert.True(h.Cache.Counters.Evictions > 0, "the sequence should have filled the cache and evicted clean elements");
    }

    [Fact]
    [Trait("Claim", "CC-5")]
    public async Task DestagingSendsNothingToThePeer()
    {
        await using var h = new CacheHarness();
        for (int i = 0; i < 20; i++) await h.WriteAsync(i * 32, 32);
        long changes = h.Mirror.Changes;
        await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, h.Cache.DirtyCount);
        Assert.Equal(changes, h.Mirror.Changes);
        Assert.Equal(h.Model, h.Backing.Bytes);
    }

    [Fact]
    [Trait("Claim", "MR-1")]
    public async Task AfterACrashTheOwnNvramReplaysEveryAcknowledgedWrite()
    {
        await using var h = new CacheHarness();
        for (int i = 0; i < 100; i++) await h.RandomWriteAsync();
        int replayed = await h.RestartAsync();
        Assert.True(replayed > 0);
        await h.VerifyAsync();
    }

    /// <summary>
    /// Elements replayed after a crash may cover blocks the crash tore mid-destage: their first
    /// destage (and only it) asks the array for a recovery write. A write merged into a replayed
    /// element carries the mark on; a run never mixes replayed and new elements.
    /// </summary>
    [Fact]
    public async Task TheFirstDestageOfAReplayedElementIsARecoveryWrite()
    {
        await using var h = new CacheHarness();
        await h.WriteAsync(0, 32);      // element 0, whole
        await h.WriteAsync(64 + 3, 5);  // part of element 2
        await h.WriteAsync(128, 32);    // element 4
        Assert.Equal(3, await h.RestartAsync());
        await h.WriteAsync(128 + 8, 4); // merged into replayed element 4
        await h.WriteAsync(160, 32);    // element 5, new since the restart, next to element 4
        await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        bool LastWriteOf(long sector) =>
            h.Backing.WriteLog.Last(w => w.Sector <= sector && sector < w.Sector + w.Count).Recovery;
        Assert.True(LastWriteOf(0));
        Assert.True(LastWriteOf(64 + 3));
        Assert.True(LastWriteOf(128));
        Assert.True(LastWriteOf(128 + 8));
        Assert.False(LastWriteOf(160));
        Assert.Equal(h.Model, h.Backing.Bytes);

        // Once on the drives, the address is written as any other.
        await h.WriteAsync(0, 8);
        await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.False(LastWriteOf(0));
        Assert.Equal(h.Model, h.Backing.Bytes);
    }

    /// <summary>AW-5: a block the array lists as bad whose newer data the cache holds is not bad to a host:
    /// the cached sectors are served, the array is asked only for the others, and the error stays for
    /// sectors the cache does not hold.</summary>
    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task AReadOfAListedBlockTheCacheHoldsReturnsTheCachedDataAndOnlyUncachedListedSectorsFail()
    {
        await using var h = new CacheHarness();
        for (long x = 64; x < 72; x++) h.Backing.MediumSectors.Add(x); // array block 8 listed
        await h.WriteAsync(64, 8);  // a host rewrote the block: dirty in the cache
        await h.WriteAsync(40, 4);  // and part of another element
        var buf = new byte[96 * Units.SectorBytes];
        await h.Cache.ReadAsync(7, 0, buf); // spans uncached sectors, the cached block and more
        Assert.Equal(h.Model.AsSpan(0, buf.Length).ToArray(), buf);

        h.Backing.MediumSectors.Add(90);
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Cache.ReadAsync(7, 60, new byte[40 * Units.SectorBytes]));
        Assert.Equal((BlockErrorKind.Medium, 90L), (e.Kind, e.Lba));
        h.Backing.MediumSectors.Remove(90);

        // Destaging the whole-block write puts it on the array, which clears the entry there.
        await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Empty(h.Backing.MediumSectors);
        Assert.Equal(h.Model, h.Backing.Bytes);
    }

    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task ReplayedDirtyDataIsReportedAsHeldForTheRecoveryWriteAndNothingElseIs()
    {
        await using var h = new CacheHarness();
        await h.WriteAsync(64 + 3, 2);   // sectors 67-68: block 8 of the array
        await h.WriteAsync(128, 32);
        Assert.False(h.Cache.HoldsRecoveryData(7, 64, 8)); // dirty, but an ordinary destage writes it
        Assert.Equal(2, await h.RestartAsync());
        Assert.True(h.Cache.HoldsRecoveryData(7, 64, 8));
        Assert.False(h.Cache.HoldsRecoveryData(7, 72, 8)); // block 9: same element, no sector held
        Assert.True(h.Cache.HoldsRecoveryData(7, 128 + 24, 8));
        Assert.False(h.Cache.HoldsRecoveryData(7, 0, 8));
        Assert.False(h.Cache.HoldsRecoveryData(6, 64, 8));
        await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.False(h.Cache.HoldsRecoveryData(7, 64, 8)); // on the drives now
    }

    [Fact]
    public async Task AWriteThroughOfAReplayedElementIsARecoveryWrite()
    {
        await using var h = new CacheHarness();
        await h.WriteAsync(32, 32);
        Assert.Equal(1, await h.RestartAsync());
        h.Mirror.Mode = MirrorMode.ErrorRecovery;
        await h.WriteAsync(32 + 4, 2); // goes through with the replayed sectors it merged
        Assert.Equal(0, h.Cache.DirtyCount);
        Assert.True(h.Backing.WriteLog.Single().Recovery);
        await h.WriteAsync(32 + 4, 2);
        Assert.False(h.Backing.WriteLog[^1].Recovery);
        Assert.Equal(h.Model, h.Backing.Bytes);
    }

    [Fact]
    [Trait("Claim", "MR-1")]
    public async Task ThePeersRegion2AloneRecoversEveryAcknowledgedWrite()
    {
        await using var h = new CacheHarness();
        for (int i = 0; i < 150; i++) await h.RandomWriteAsync();
        // The owner is gone: start from what its drives hold and replay the peer's mirror in sequence order.
        var drives = h.Backing.Bytes.ToArray();
        foreach (var (e, d) in h.Peer.Peer.ReplayOrder())
            for (int s = 0; s < 32; s++)
                if ((d.ValidMask & (1u << s)) != 0)
                    h.Peer.Peer.Data(e).Slice(s * 512, 512).CopyTo(drives.AsSpan((int)((d.ArrayLba + s) * 512)));
        Assert.True(drives.AsSpan().SequenceEqual(h.Model));
    }

    [Fact]
    public async Task InErrorRecoveryModeAWriteIsOnTheArrayBeforeItIsAcknowledged()
    {
        await using var h = new CacheHarness();
        h.Mirror.Mode = MirrorMode.ErrorRecovery;
        await h.WriteAsync(100, 3);
        Assert.Equal(h.Model.AsSpan(100 * 512, 3 * 512).ToArray(), h.Backing.Bytes.AsSpan(100 * 512, 3 * 512).ToArray());
        Assert.True(h.Cache.Counters.WriteThroughs >= 1);
        Assert.Equal(0, h.Cache.DirtyCount);
    }

    /// <summary>MR-4: write-throughs that wait for the array together are written together, with one flush, and each
    /// is on the array before it is acknowledged.</summary>
    [Fact]
    [Trait("Claim", "MR-4")]
    public async Task InErrorRecoveryModeWriteThroughsThatWaitTogetherShareAFlush()
    {
        await using var h = new CacheHarness();
        h.Mirror.Mode = MirrorMode.ErrorRecovery;
        h.Backing.Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); // the array stalls
        var first = h.WriteAsync(0, 8); // holds the array write gate, stuck in its array write
        for (int i = 0; i < 500 && Interlocked.Read(ref h.Backing.Writes) == 0 && h.Backing.WriteLog.Count == 0 && h.Cache.WriteThroughGroups == 0; i++) await Task.Delay(2);
        var rest = Enumerable.Range(1, 8).Select(i => h.WriteAsync(i * 64L, 8)).ToList(); // wait for the gate together
        await Task.Delay(50);
        Assert.All(rest, t => Assert.False(t.IsCompleted));
        long flushesBefore = h.Backing.Flushes;
        h.Backing.Hold.SetResult();
        h.Backing.Hold = null;
        await first;
        await Task.WhenAll(rest);
        Assert.Equal(2L, h.Cache.WriteThroughGroups);
        Assert.Equal(flushesBefore + 2, h.Backing.Flushes);
        Assert.Equal(9L, h.Cache.Counters.WriteThroughs);
        Assert.True(h.Backing.Bytes.AsSpan().SequenceEqual(h.Model));
        Assert.Equal(0, h.Cache.DirtyCount);
    }

    [Fact]
    public async Task AFullCacheMakesWritersWaitAndNeverFails()
    {
        await using var h = new CacheHarness(nvramBytes: 1 << 20, arraySectors: 65536);
        int elements = h.Cache.ElementCount;
        h.Backing.Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); // the array stalls
        var writes = Enumerable.Range(0, elements + 20).Select(i => h.Cache.WriteAsync(7, i * 32L, new byte[16384], false).AsTask()).ToList();
        for (int i = 0; i < 3000 && writes.Count(t => t.IsCompleted) < elements; i++) await Task.Delay(10);
        await Task.Delay(100); // give a wrongly admitted write the chance to show
        Assert.Equal(elements, writes.Count(t => t.IsCompleted)); // every element holds a dirty write; the rest wait
        Assert.DoesNotContain(writes, t => t.IsFaulted);
        var hold = h.Backing.Hold;
        h.Backing.Hold = null;
        hold.SetResult();
        await Task.WhenAll(writes).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.DoesNotContain(writes, t => t.IsFaulted);
    }

    [Fact]
    public async Task AWriterWaitingForSpaceResumesWhenAReaderUnpinsTheCleanElements()
    {
        // Found by the simulator (seeds 43, 64, 358): with every element clean but held by readers, a
        // writer found nothing to evict and waited; nothing was dirty, so no destage woke it again.
        await using var h = new CacheHarness(nvramBytes: 1 << 20, arraySectors: 65536);
        int elements = h.Cache.ElementCount;
        for (int i = 0; i < elements; i++) await h.WriteAsync(i * 32L, 32);
        await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, h.Cache.DirtyCount);
        // A read over every cached element and one more, uncached: it pins them all while the array reads.
        h.Backing.ReadHold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var read = h.Cache.ReadAsync(7, 0, new byte[(elements + 1) * 32 * 512]).AsTask();
        var write = h.Cache.WriteAsync(7, (elements + 10) * 32L, new byte[512], false).AsTask();
        await Task.Delay(300);
        Assert.False(write.IsCompleted, "every clean element is pinned: the writer must wait");
        var hold = h.Backing.ReadHold;
        h.Backing.ReadHold = null;
        hold.SetResult();
        await read.WaitAsync(TimeSpan.FromSeconds(30));
        await write.WaitAsync(TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task AFailedWriteThroughLeaksNoElement()
    {
        // Each rewrite replaces an element; when the write-through of the new one failed, the old one
        // was never freed, and after as many failures as elements every writer waited for good.
        await using var h = new CacheHarness(nvramBytes: 1 << 20, arraySectors: 65536);
        h.Mirror.Mode = MirrorMode.ErrorRecovery;
        h.Backing.FailWrites = true;
        for (int i = 0; i < h.Cache.ElementCount + 5; i++)
        {
            var write = h.Cache.WriteAsync(7, 64, new byte[512], false).AsTask();
            await Assert.ThrowsAsync<BlockIoException>(() => write.WaitAsync(TimeSpan.FromSeconds(30)));
        }
        h.Backing.FailWrites = false;
        await h.WriteAsync(64, 8);
        await h.WriteAsync(4096, 8);
        await h.Cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        await h.VerifyAsync();
    }

    [Fact]
    public async Task DestageWaitsForTheHighWatermarkThenRunsDownToTheLowOne()
    {
        var options = new CacheOptions { IdleDestageDelay = TimeSpan.FromHours(1), DestageStartFraction = 0.625, DestageStopFraction = 0.5, DestageRoundElements = 4 };
        await using var h = new CacheHarness(nvramBytes: 4 << 20, arraySectors: 65536, options: options);
        int elements = h.Cache.ElementCount;
        int high = (int)Math.Ceiling(elements * 0.625), low = (int)Math.Ceiling(elements * 0.5);
        Assert.True(high - low > 4, $"{elements} elements are too few for this test");
        // A burst below the high watermark stays in NVRAM: nothing reaches the array.
        for (int i = 0; i < high - 1; i++) await h.WriteAsync(i * 32L, 32);
        await Task.Delay(300);
        Assert.Equal(0, Interlocked.Read(ref h.Backing.Writes));
        Assert.Equal(high - 1, h.Cache.DirtyCount);
        // Crossing it starts destage, which goes on (rounds of 4) until fewer than the low watermark are dirty, and stops there.
        for (int i = high - 1; i < high + 1; i++) await h.WriteAsync(i * 32L, 32);
        for (int i = 0; i < 1000 && h.Cache.DirtyCount >= low; i++) await Task.Delay(10);
        await Task.Delay(300);
        int dirty = h.Cache.DirtyCount;
        // Below the low watermark, and not far below: at most the round that crossed it and one
        // the destager had already gathered (on a loaded machine the second can overlap the first).
        Assert.InRange(dirty, low - 8, low - 1);
        Assert.True(Interlocked.Read(ref h.Backing.Writes) > 0);
        await h.VerifyAsync();
        h.CheckMirrorInvariant();
    }

    [Fact]
    [Trait("Claim", "AW-6")]
    public async Task InAPowerFailWindowDestageOnlyMakesRoomForWaitingWritersAndOnceStoppedStartsNoRound()
    {
        // Idle destage would run 20 ms after the last write: in the window it must not.
        var options = new CacheOptions { IdleDestageDelay = TimeSpan.FromMilliseconds(20) };
        await using var h = new CacheHarness(nvramBytes: 1 << 20, arraySectors: 65536, options: options);
        int elements = h.Cache.ElementCount;
        h.Cache.DestageForRoomOnly();
        for (int i = 0; i < elements / 2; i++) await h.WriteAsync(i * 32L, 32);
        await Task.Delay(300);
        Assert.Equal(0, Interlocked.Read(ref h.Backing.Writes));
        Assert.Equal(elements / 2, h.Cache.DirtyCount);

        // A write in flight that needs room gets it: a round runs for it.
        for (int i = elements / 2; i < elements + 4; i++) await h.WriteAsync(i * 32L, 32).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(Interlocked.Read(ref h.Backing.Writes) > 0);

        // Stopped: no round starts again, whatever waits. Writes that find clean elements to reuse still go in
        // (dirty, in NVRAM); the first that finds none waits.
        await h.Cache.StopDestageAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(h.Cache.DestageStopped);
        long writes = Interlocked.Read(ref h.Backing.Writes);
        long next = elements + 4;
        while (h.Cache.DirtyCount < elements) await h.WriteAsync(next++ * 32L, 32).WaitAsync(TimeSpan.FromSeconds(30));
        var waiting = h.Cache.WriteAsync(7, next * 32L, new byte[16384], false).AsTask();
        await Task.Delay(300);
        Assert.False(waiting.IsCompleted, "a full cache with destage stopped has no room");
        Assert.Equal(writes, Interlocked.Read(ref h.Backing.Writes));
        Assert.Equal(elements, h.Cache.DirtyCount);
        Assert.Equal(elements, h.Owner.Own.ReplayOrder().Count(x => x.Descriptor.Dirty));
    }

    /// <summary>
    /// A write that leaves a gap between its sectors and an element's dirty ones: a mirror that carries one
    /// run of sectors per image (the seed's messages) gets the gap filled from the array first; one that
    /// carries gaps (the coherency batch) gets the image with its gap, and nothing is read on the write path.
    /// Either way reads, the mirror and the destage agree with the model.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    [Trait("Claim", "CC-3")]
    public async Task A_gap_between_new_and_dirty_sectors_is_filled_only_for_a_mirror_that_cannot_carry_it(bool carriesGaps)
    {
        await using var h = new CacheHarness();
        h.Mirror.CarriesGaps = carriesGaps;
        await h.WriteAsync(0, 4);
        await h.WriteAsync(16, 4);
        var element = h.Owner.Own.ReplayOrder().Single(x => x.Descriptor.ArrayLba == 0);
        Assert.Equal(carriesGaps ? 0x000F000Fu : 0x000FFFFFu, element.Descriptor.ValidMask);
        Assert.Equal(carriesGaps ? 0L : 1L, h.Backing.Reads);
        h.CheckMirrorInvariant();
        await h.VerifyAsync();
        await h.Cache.DrainAsync();
        Assert.True(h.Backing.Bytes.AsSpan().SequenceEqual(h.Model));
    }
}
