using Duet.Core;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

namespace Duet.Cli.Tests;

/// <summary>
/// A controller whose path to the shelf is down while it looks at the drives must know that it did not see
/// them: listing the shelf then fails as a superblock read does (<see cref="BlockErrorKind.PathDown"/>), so a
/// start waits for the path (<see cref="PairController.OpenArraysAsync"/>) and a rescan tells its caller to
/// look again (the controller's heartbeat rescans when the path is back). Listing nothing instead assembled no
/// array at all and served nothing, with no reason ever to look again.
/// </summary>
[Trait("Claim", "FO-2")]
public sealed class ShelfPathAssemblyTests
{
    const long DriveBytes = 16L << 20;

    [Fact]
    public async Task A_start_while_the_path_to_the_shelf_is_down_waits_for_it_and_then_serves_its_arrays()
    {
        var (_, shelf) = await Arr0ShelfAsync();
        var port = (LocalShelfPort)shelf.Port("A");
        var time = new ManualTimeProvider();
        var claims = new ShelfClaims("A");
        Assert.True(await PairController.JoinShelfAsync(port, 1, time, claims));
        // The path goes down after the controller joined the shelf, before it looks at the drives.
        bool lost = true;
        int refused = 0;
        port.PathLost = () => { if (lost) refused++; return lost; };

        var opening = PairController.OpenArraysAsync(new ArrayManagerOptions { Shelf = port, Controller = "A", Time = time, MayServe = claims.MayServe }, time);
        for (int i = 0; i < 5 && !opening.IsCompleted; i++) await TickAsync(time);
        Assert.False(opening.IsCompleted, "the start assembled while it could not see a single drive");
        Assert.True(refused >= 2, $"the start asked the shelf {refused} time(s) while its path was down");

        lost = false;
        for (int i = 0; i < 50 && !opening.IsCompleted; i++) await TickAsync(time);
        await using var arrays = await opening.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(["arr0"], arrays.ServedArrays.Select(a => a.Name));
        Assert.True(arrays.TryGetServedVolume("vol0", out _));
    }

    [Fact]
    public async Task A_rescan_while_the_path_to_the_shelf_is_down_says_so_and_the_next_one_finds_the_peers_new_array()
    {
        var (bay, shelf) = await Arr0ShelfAsync();
        var portA = (LocalShelfPort)shelf.Port("A");
        bool lost = false;
        portA.PathLost = () => lost;
        var time = new ManualTimeProvider();
        var claimsA = new ShelfClaims("A");
        Assert.True(await PairController.JoinShelfAsync(portA, 1, time, claimsA));
        var portB = shelf.Port("B");
        Assert.True(await PairController.JoinShelfAsync(portB, 2, time, new ShelfClaims("B")));
        // A serves arr0 and sees no other drive: every drive it knows is in an array it assembled.
        await using var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = portA, Controller = "A", MayServe = claimsA.MayServe });
        Assert.Equal(["arr0"], a.ServedArrays.Select(r => r.Name));

        // While A's path is down, drives arrive and B makes an array of them.
        lost = true;
        for (int i = 3; i < 6; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = portB, Controller = "B" }))
            await b.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "B"));

        var down = await Assert.ThrowsAnyAsync<BlockIoException>(() => a.RescanAsync());
        Assert.Equal(BlockErrorKind.PathDown, down.Kind);
        Assert.Equal(["arr0"], a.ServedArrays.Select(r => r.Name));

        lost = false;
        await a.RescanAsync();
        Assert.Contains(a.ArrayTable.Values, e => e.Name == "arr1" && e.Owner == "B");
        Assert.Equal(["arr0"], a.ServedArrays.Select(r => r.Name));
    }

    /// <summary>Three drives holding arr0 (RAID 5, A's) with a 4 MiB vol0, behind a shelf core.</summary>
    static async Task<(MemoryShelf Bay, Duet.Shelf.Shelf Shelf)> Arr0ShelfAsync()
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 3; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 4L << 20));
        }
        return (bay, new Duet.Shelf.Shelf(bay, new MemoryShelfStateStore()));
    }

    static async Task TickAsync(ManualTimeProvider time)
    {
        time.Advance(TimeSpan.FromMilliseconds(100));
        await Task.Delay(1);
    }
}
