using Duet.Cache.Nvram;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

namespace Duet.Cli.Tests;

/// <summary>
/// What the in-process controller tests share: two controllers in one process behind one shelf core (in
/// memory), each joined to the shelf and started as `duet controller` starts it. The controllers run on the
/// system clock (their heartbeats and leases); the tests only wait for conditions, never for time.
/// </summary>
internal static class InProcessPair
{
    public const long DriveBytes = 64L << 20;

    /// <summary>A shelf of six drives: arr0 (RAID 5 on d0-d2, owned by A) with a 16 MiB vol0, arr1 (RAID 5 on d3-d5, owned by B).</summary>
    public static async Task<Duet.Shelf.Shelf> TwoArrayShelfAsync(Dictionary<string, Duet.Drives.Faults.FaultyDrive>? faulty = null)
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 6; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "B"));
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 16L << 20));
        }
        // With <paramref name="faulty"/>: every drive behind a fault injector (one per drive, both ports' opens share it).
        return new Duet.Shelf.Shelf(bay, new MemoryShelfStateStore(), faulty is null ? null : (name, inner) =>
        {
            lock (faulty)
                if (!faulty.TryGetValue(name, out var f))
                    faulty[name] = f = new Duet.Drives.Faults.FaultyDrive(inner, new Duet.Drives.Faults.FaultOptions { TrackUnflushedWrites = false }, TimeProvider.System);
            lock (faulty) return faulty[name];
        });
    }

    /// <summary>Joins controller <paramref name="name"/> to the shelf (a session), opens its arrays and NVRAM, and starts it.</summary>
    public static async Task<PairController> StartControllerAsync(string name, ulong session, Duet.Shelf.Shelf shelf, NvramStore store, NvramLayout layout,
        IIclLink link, Guid pair, FailoverOptions? failover = null)
    {
        var port = shelf.Port(name);
        var claims = new ShelfClaims(name);
        Assert.True(await PairController.JoinShelfAsync(port, session, TimeProvider.System, claims));
        var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = port, Controller = name, MayServe = claims.MayServe });
        var nvram = NvramFile.OpenOrCreate(store, layout, name, pair);
        var options = new ControllerCoreOptions { Name = name, Session = session, Shelf = port, Claims = claims };
        if (failover is not null) options = options with { Failover = failover };
        var c = new PairController(options, arrays, nvram, link);
        await c.StartAsync();
        return c;
    }

    public static async Task Until(Func<bool> condition, string what, int seconds = 20)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        while (!condition())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"waited {seconds} s for {what}");
            await Task.Delay(10);
        }
    }
}
