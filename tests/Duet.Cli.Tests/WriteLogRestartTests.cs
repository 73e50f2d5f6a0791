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
/// AW-4 across a restart: a controller that stopped in the middle of an array write finds the write's
/// record in its NVRAM write log at the next start and settles exactly that stripe (parity recomputed
/// from the data) before it serves; the records of writes that a flush made durable are gone.
/// </summary>
public sealed class WriteLogRestartTests
{
    const long DriveBytes = 64L << 20;
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000d0e9");

    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task ARestartSettlesTheStripesOfTheWritesItsLogKeptAndOnlyThose()
    {
        var shelf = await ShelfWithVolumeAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var store = NvramStore.For(layout, "nvram-A");
        var data = new byte[256 << 10];
        new System.Random(5).NextBytes(data);

        // First life: A alone (no peer: writes go through to the drives), then a flush, then a write that
        // is logged and torn: parity of stripe 0 stops agreeing with its data.
        var (linkA, _) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System);
        var a = await StartAsync(1, shelf, store, layout, linkA);
        RaidArray raid;
        try
        {
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            await vol0.WriteAsync(0, data, fua: false);
            await vol0.FlushAsync();
            Assert.True(a.WriteLog.Opened > 0, "every write to the array is logged");
            Assert.Equal(0, a.WriteLog.LiveCount);
            Assert.True(a.WriteLog.Closed > 0);

            raid = a.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            byte number = a.Arrays.NumberOf(raid);
            await ((IArrayWriteLog)a).StartedAsync(number, 0, 1, 0, default);
            var garbage = new byte[Units.BlockBytes];
            new System.Random(9).NextBytes(garbage);
            await raid.Member(raid.Geometry.PMember(0))!.WriteAsync(0, garbage);
            var before = new ScrubResult();
            await raid.ScrubAsync(false, before, new PassProgress(), default);
            Assert.Equal(1L, before.ParityMismatches);
        }
        finally
        {
            await a.DisposeAsync();
        }

        // Second life on the same NVRAM: the one record left is settled before A serves.
        var (linkA2, _) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System);
        var a2 = await StartAsync(2, shelf, store, layout, linkA2);
        try
        {
            Assert.Equal(1L, a2.RecoveredWritesSettled);
            Assert.Equal(0, a2.WriteLog.LiveCount);
            raid = a2.Arrays.ServedArrays.Single(r => r.Name == "arr0");
            var after = new ScrubResult();
            await raid.ScrubAsync(false, after, new PassProgress(), default);
            Assert.Equal((0L, 0L), (after.ChecksumErrors, after.ParityMismatches));
            Assert.True(a2.Volumes.TryGetVolume("vol0", out var vol0));
            var back = new byte[data.Length];
            await vol0.ReadAsync(0, back);
            Assert.Equal(data, back);
        }
        finally
        {
            await a2.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task WithTheLogOffNoArrayWriteIsRecorded()
    {
        var shelf = await ShelfWithVolumeAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (link, _) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System);
        var a = await StartAsync(1, shelf, NvramStore.For(layout, "nvram-A"), layout, link, writeLog: false);
        try
        {
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            var data = new byte[256 << 10];
            new System.Random(6).NextBytes(data);
            await vol0.WriteAsync(0, data, fua: false);
            await vol0.FlushAsync();
            Assert.Equal(0, a.WriteLog.Opened);
            var back = new byte[data.Length];
            await vol0.ReadAsync(0, back);
            Assert.Equal(data, back);
        }
        finally
        {
            await a.DisposeAsync();
        }
    }

    /// <summary>A shelf of three drives holding arr0 (RAID 5, owned by A) with a 16 MiB vol0.</summary>
    static async Task<Duet.Shelf.Shelf> ShelfWithVolumeAsync()
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 3; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 16L << 20));
        }
        return new Duet.Shelf.Shelf(bay, new MemoryShelfStateStore());
    }

    static async Task<PairController> StartAsync(ulong session, Duet.Shelf.Shelf shelf, NvramStore store, NvramLayout layout, IIclLink link, bool writeLog = true)
    {
        var port = shelf.Port("A");
        var claims = new ShelfClaims("A");
        Assert.True(await PairController.JoinShelfAsync(port, session, TimeProvider.System, claims));
        var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = port, Controller = "A", MayServe = claims.MayServe });
        var nvram = NvramFile.OpenOrCreate(store, layout, "A", Pair);
        var c = new PairController(new ControllerCoreOptions { Name = "A", Session = session, Shelf = port, Claims = claims, WriteLog = writeLog }, arrays, nvram, link);
        await c.StartAsync();
        return c;
    }
}
