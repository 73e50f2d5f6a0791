using Duet.Cache;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

namespace Duet.Cli.Tests;

/// <summary>
/// AW-5 through the real controller: a block its write log names that is lost (its member gone, its row's
/// parity torn) is listed at the next start, the
/// host is told (a medium error naming the volume's sector, the management API's list), a host write
/// clears it for good; in write-back mode a listed block the cache holds newer data for reads from the
/// cache, and its destage clears the entry.
/// </summary>
[Trait("Claim", "AW-5")]
public sealed class BadBlockControllerTests
{
    const long DriveBytes = 64L << 20;
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000d0ea");

    /// <summary>Tears array block <paramref name="block"/> and its row's parity behind the array's back:
    /// what a power cut in the middle of a write leaves when the data block's tag and the parity write
    /// landed but not the data (or the other way round).</summary>
    /// <summary>Tears the parity of array block <paramref name="block"/>'s row behind the array's back.</summary>
    static async Task TearParityAsync(RaidArray raid, long block)
    {
        var g = raid.Geometry;
        var (stripe, _, _, memberBlock) = g.Map(block);
        await raid.Member(g.PMember(stripe))!.Drive.WriteAsync(MemberLayout.DataLba(memberBlock), Enumerable.Repeat((byte)0x33, Units.BlockBytes).ToArray());
    }

    static async Task TearAsync(RaidArray raid, long block)
    {
        var g = raid.Geometry;
        var (stripe, dataIndex, _, memberBlock) = g.Map(block);
        await raid.Member(g.DataMember(stripe, dataIndex))!.Drive.WriteAsync(MemberLayout.DataLba(memberBlock), new byte[Units.BlockBytes]);
        await raid.Member(g.PMember(stripe))!.Drive.WriteAsync(MemberLayout.DataLba(memberBlock), Enumerable.Repeat((byte)0x33, Units.BlockBytes).ToArray());
    }

    [Fact]
    public async Task ARestartListsATornBlockItsLogNamedTheHostIsToldAndARewriteClearsItForGood()
    {
        var faulty = new Dictionary<string, Duet.Drives.Faults.FaultyDrive>(StringComparer.Ordinal);
        var shelf = await ShelfWithVolumeAsync(faulty);
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var store = NvramStore.For(layout, "nvram-A");
        var data = new byte[64 << 10];
        new System.Random(61).NextBytes(data);
        const long Block = 5;

        // First life: the data has long been on the drives (no cache element holds it: a clean copy in
        // the cache is as good as the host's write, and reads would be served from it); then a write of
        // block 5's row is logged and torn (its parity), nothing holds its data any more, and the drive
        // holding block 5 fails with the controller: the write hole with a member missing. (A block read
        // whole that fails its tag is not lost: settling keeps it as read.)
        string dataDrive;
        var a = await StartAsync(1, shelf, store, layout, Link());
        try
        {
            Assert.True(a.Arrays.TryGetServedVolume("vol0", out var onDrives));
            await onDrives.WriteAsync(0, data, fua: true);
            var raid = a.Arrays.ServedArrays.Single();
            await ((IArrayWriteLog)a).StartedAsync(a.Arrays.NumberOf(raid), Block, 1, 0, default);
            await TearParityAsync(raid, Block);
            var (stripe, dataIndex, _, _) = raid.Geometry.Map(Block);
            dataDrive = raid.Member(raid.Geometry.DataMember(stripe, dataIndex))!.Drive.Name;
        }
        finally { await a.DisposeAsync(); }
        faulty[dataDrive].Fail();

        // Second life: the start settles the logged stripe and lists the block before it serves.
        var fresh = new byte[Units.BlockBytes];
        new System.Random(62).NextBytes(fresh);
        var a2 = await StartAsync(2, shelf, store, layout, Link());
        try
        {
            Assert.Equal(1L, a2.RecoveredWritesSettled);
            var raid = a2.Arrays.ServedArrays.Single();
            Assert.Equal(new BadBlockEntry(Block, BadBlockEntry.AllSectors, BadBlockSource.Settle), Assert.Single(raid.BadBlocks.Entries));
            var report = await a2.ArrayService.BadBlocksAsync("arr0");
            var info = Assert.Single(report.Blocks);
            Assert.Equal((Block, "vol0", (long?)(Block * Units.SectorsPerBlock), "settle"), (info.ArrayBlock, info.Volume, info.VolumeLba, info.FoundBy));
            Assert.Equal(1, a2.ArrayService.Status().Arrays.Single().BadBlocks);
            Assert.Equal((1L, 1L), (BadBlockGauge(a2, "duet.raid.bad_blocks"), BadBlockGauge(a2, "duet.raid.bad_blocks_listed")));

            Assert.True(a2.Volumes.TryGetVolume("vol0", out var vol0));
            var e = await Assert.ThrowsAsync<BlockIoException>(async () => await vol0.ReadAsync(Block * Units.BlockBytes + 2 * Units.SectorBytes, new byte[Units.SectorBytes]));
            Assert.Equal((BlockErrorKind.Medium, Block * Units.SectorsPerBlock + 2), (e.Kind, e.Lba));
            var around = new byte[4 * Units.BlockBytes];
            await vol0.ReadAsync(0, around); // blocks beside it read as written
            Assert.Equal(data.AsSpan(0, around.Length).ToArray(), around);

            // The host retries its write (no peer: it goes through to the drives) and the entry goes.
            await vol0.WriteAsync(Block * Units.BlockBytes, fresh, fua: true);
            Assert.True(raid.BadBlocks.IsEmpty);
            Assert.Equal(1, raid.BadBlocksCleared);
            var back = new byte[Units.BlockBytes];
            await vol0.ReadAsync(Block * Units.BlockBytes, back);
            Assert.Equal(fresh, back);
        }
        finally { await a2.DisposeAsync(); }

        // Third life: still clear, the rewrite still there.
        var a3 = await StartAsync(3, shelf, store, layout, Link());
        try
        {
            Assert.True(a3.Arrays.ServedArrays.Single().BadBlocks.IsEmpty);
            Assert.True(a3.Volumes.TryGetVolume("vol0", out var vol0));
            var back = new byte[Units.BlockBytes];
            await vol0.ReadAsync(Block * Units.BlockBytes, back);
            Assert.Equal(fresh, back);
        }
        finally { await a3.DisposeAsync(); }
    }

    [Fact]
    public async Task InWriteBackModeAListedBlockTheCacheHoldsReadsFromTheCacheAndItsDestageClearsIt()
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 3; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 16L << 20));
        }
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartPairedAsync("A", 1, bay, NvramStore.For(layout, "nvram-A"), layout, linkA);
        var b = await StartPairedAsync("B", 2, bay, NvramStore.For(layout, "nvram-B"), layout, linkB);
        try
        {
            await Until(() => a.Mirror.Mode == MirrorMode.Healthy && b.Mirror.Mode == MirrorMode.Healthy, "the pair to form");
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            Assert.True(b.Volumes.TryGetVolume("vol0", out var vol0ViaB));
            var data = new byte[64 << 10];
            new System.Random(63).NextBytes(data);
            Assert.True(a.Arrays.TryGetServedVolume("vol0", out var onDrives)); // on the drives, not in the cache
            await onDrives.WriteAsync(0, data, fua: true);

            // Blocks 2 and 3 torn beyond repair, found by a scrub: listed.
            var raid = a.Arrays.ServedArrays.Single();
            await TearAsync(raid, 2);
            await TearAsync(raid, 3);
            var scrub = new ScrubResult();
            await raid.ScrubAsync(true, scrub, new PassProgress(), default);
            Assert.Equal([2L, 3L], raid.BadBlocks.Entries.Select(x => x.ArrayBlock));
            await Assert.ThrowsAsync<BlockIoException>(async () => await vol0.ReadAsync(2 * Units.BlockBytes, new byte[Units.BlockBytes]));

            // The host rewrites block 2 whole: acknowledged once mirrored, dirty in the cache, not on the drives.
            var fresh = new byte[Units.BlockBytes];
            new System.Random(64).NextBytes(fresh);
            fresh.CopyTo(data, 2 * Units.BlockBytes);
            await vol0.WriteAsync(2 * Units.BlockBytes, fresh, fua: false);
            Assert.True(a.Cache.DirtyCount > 0);
            Assert.Equal([2L, 3L], raid.BadBlocks.Entries.Select(x => x.ArrayBlock));

            // Its cached copy is newer than the listed block: reads of it (alone, or with neighbours
            // the array serves) return it; through the peer too.
            var back = new byte[Units.BlockBytes];
            await vol0.ReadAsync(2 * Units.BlockBytes, back);
            Assert.Equal(fresh, back);
            var span = new byte[2 * Units.BlockBytes];
            await vol0.ReadAsync(1 * Units.BlockBytes, span);
            Assert.Equal(data.AsSpan(Units.BlockBytes, span.Length).ToArray(), span);
            await vol0ViaB.ReadAsync(2 * Units.BlockBytes, back);
            Assert.Equal(fresh, back);
            // A read that needs block 3 from the array still fails, on the first listed sector it asks for.
            var e = await Assert.ThrowsAsync<BlockIoException>(async () => await vol0.ReadAsync(2 * Units.BlockBytes, new byte[2 * Units.BlockBytes]));
            Assert.Equal((BlockErrorKind.Medium, 3L * Units.SectorsPerBlock), (e.Kind, e.Lba));
            var viaB = await Assert.ThrowsAsync<BlockIoException>(async () => await vol0ViaB.ReadAsync(3 * Units.BlockBytes, new byte[Units.SectorBytes]));
            Assert.Equal(BlockErrorKind.Medium, viaB.Kind);

            // The destage of the whole-block write takes block 2 off the list (block 3 stays).
            await a.Cache.DrainAsync();
            Assert.Equal([3L], raid.BadBlocks.Entries.Select(x => x.ArrayBlock));
            await vol0.ReadAsync(2 * Units.BlockBytes, back);
            Assert.Equal(fresh, back);

            // Half of block 3 rewritten and destaged: only the other half stays listed.
            var half = new byte[4 * Units.SectorBytes];
            new System.Random(65).NextBytes(half);
            await vol0.WriteAsync(3 * Units.BlockBytes, half, fua: false);
            await a.Cache.DrainAsync();
            Assert.Equal(0b1111_0000, Assert.Single(raid.BadBlocks.Entries).BadSectors);
            var halfBack = new byte[half.Length];
            await vol0.ReadAsync(3 * Units.BlockBytes, halfBack);
            Assert.Equal(half, halfBack);
            e = await Assert.ThrowsAsync<BlockIoException>(async () => await vol0.ReadAsync(3 * Units.BlockBytes, new byte[Units.BlockBytes]));
            Assert.Equal(3L * Units.SectorsPerBlock + 4, e.Lba);
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    /// <summary>The value a controller's metrics report for arr0 on one bad-block instrument.</summary>
    static long BadBlockGauge(PairController c, string instrument)
    {
        using var metrics = new ControllerMetrics(c);
        long value = -1;
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (i, l) => { if (i.Meter == metrics.Meter && i.Name == instrument) l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<long>((_, v, tags, _) =>
        {
            foreach (var t in tags) if (t.Key == "array" && (string?)t.Value == "arr0") value = v;
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return value;
    }

    static IIclLink Link() => InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System).Item1;

    static async Task Until(Func<bool> condition, string what)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"waited 20 s for {what}");
            await Task.Delay(10);
        }
    }

    /// <summary>A shelf of three drives holding arr0 (RAID 5, owned by A) with a 16 MiB vol0.</summary>
    static async Task<Duet.Shelf.Shelf> ShelfWithVolumeAsync(Dictionary<string, Duet.Drives.Faults.FaultyDrive>? faulty = null)
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 3; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 16L << 20));
        }
        return new Duet.Shelf.Shelf(bay, new MemoryShelfStateStore(), faulty is null ? null : (name, inner) =>
        {
            if (!faulty.TryGetValue(name, out var f))
                faulty[name] = f = new Duet.Drives.Faults.FaultyDrive(inner, new Duet.Drives.Faults.FaultOptions { TrackUnflushedWrites = false }, TimeProvider.System);
            return f;
        });
    }

    static async Task<PairController> StartAsync(ulong session, Duet.Shelf.Shelf shelf, NvramStore store, NvramLayout layout, IIclLink link)
    {
        var port = shelf.Port("A");
        var claims = new ShelfClaims("A");
        Assert.True(await PairController.JoinShelfAsync(port, session, TimeProvider.System, claims));
        var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = port, Controller = "A", MayServe = claims.MayServe });
        var nvram = NvramFile.OpenOrCreate(store, layout, "A", Pair);
        var c = new PairController(new ControllerCoreOptions { Name = "A", Session = session, Shelf = port, Claims = claims }, arrays, nvram, link);
        await c.StartAsync();
        return c;
    }

    /// <summary>A controller of a pair without a shelf, whose cache destages only when told to (so a test
    /// sees a write that is in the cache and not yet on the drives).</summary>
    static async Task<PairController> StartPairedAsync(string name, ulong session, MemoryShelf shelf, NvramStore store, NvramLayout layout, IIclLink link)
    {
        var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = new MemoryShelf(shelf), Controller = name });
        var nvram = NvramFile.OpenOrCreate(store, layout, name, Pair);
        var c = new PairController(new ControllerCoreOptions
        {
            Name = name, Session = session,
            ConfigureCache = o => o with { IdleDestageDelay = TimeSpan.FromHours(1), DestageStartFraction = 1, DestageStopFraction = 1 },
        }, arrays, nvram, link);
        await c.StartAsync();
        return c;
    }
}
