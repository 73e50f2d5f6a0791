using Duet.Cache.Nvram;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Raid.Management;
using PairController = Duet.Host.Controller.Controller;

namespace Duet.Cli.Tests;

/// <summary>
/// Both controllers of a pair in one process, with no files or sockets: one in-memory drive
/// shelf, an NVRAM store each, an in-memory ICL (what the simulator builds, here on real time).
/// </summary>
public sealed class ControllerInProcessTests
{
    const long DriveBytes = 64L << 20;
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000d0e7");

    [Fact]
    public async Task TwoControllersOverOneMemoryShelfServeForwardAndMirrorEachOthersWrites()
    {
        var shelf = new MemoryShelf();
        for (int i = 0; i < 6; i++) shelf.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "B"));
        }
        await using (var setupB = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "B" }))
            await setupB.CreateVolumeAsync(new CreateVolumeRequest("vol1", "arr1", 16L << 20));
        await using (var setupA = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "A" }))
            await setupA.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 16L << 20));

        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var storeA = NvramStore.For(layout, "nvram-A");
        var storeB = NvramStore.For(layout, "nvram-B");
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartAsync("A", 1, shelf, storeA, layout, linkA);
        var b = await StartAsync("B", 2, shelf, storeB, layout, linkB);

        var data0 = Pattern(64 << 10, 1);
        var data1 = Pattern(64 << 10, 2);
        try
        {
            Assert.Equal(["vol0", "vol1"], a.Volumes.Volumes.Select(v => v.Name).Order(StringComparer.Ordinal));
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0OnA));
            Assert.True(b.Volumes.TryGetVolume("vol0", out var vol0OnB)); // forwarded to A
            Assert.True(b.Volumes.TryGetVolume("vol1", out var vol1OnB));
            Assert.True(a.Volumes.TryGetVolume("vol1", out var vol1OnA)); // forwarded to B

            await vol0OnA.WriteAsync(4096, data0, fua: false);
            await vol1OnA.WriteAsync(8192, data1, fua: false);

            var back = new byte[data0.Length];
            await vol0OnB.ReadAsync(4096, back);
            Assert.Equal(data0, back);
            await vol1OnB.ReadAsync(8192, back);
            Assert.Equal(data1, back);

            var status = a.ArrayService.Status();
            Assert.Equal("A", status.Controller!.Name);
            Assert.Equal(["arr0", "arr1"], status.Arrays.Select(x => x.Name));
            Assert.Equal(["A", "B"], status.Arrays.Select(x => x.Owner));
        }
        finally
        {
            // Orderly stops: each destages its cache.
            await a.DisposeAsync();
            await b.DisposeAsync();
        }

        await using var check = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf });
        var read = new byte[data0.Length];
        Assert.True(check.TryGetVolume("vol0", out var v0));
        await v0.ReadAsync(4096, read);
        Assert.Equal(data0, read);
        Assert.True(check.TryGetVolume("vol1", out var v1));
        await v1.ReadAsync(8192, read);
        Assert.Equal(data1, read);
    }

    /// <summary>AW-5 through the other controller: a read of a listed block of the peer's array, forwarded over the
    /// ICL, fails with a medium error naming the same volume sector as on the owner, so the asker's SCSI sense
    /// carries it in INFORMATION (before, the forwarded answer carried only the errno).</summary>
    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task A_forwarded_read_of_a_listed_block_names_its_sector_as_the_owner_does()
    {
        var shelf = new MemoryShelf();
        for (int i = 0; i < 3; i++) shelf.Insert($"d{i}", DriveBytes);
        var data = Pattern(64 << 10, 3);
        const long VolumeBlock = 3;
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 16L << 20));
            // On the drives before any controller runs (a block a cache element holds is read from the cache).
            Assert.True(setup.TryGetServedVolume("vol0", out var onDrives));
            await onDrives.WriteAsync(0, data, fua: true);
            // Tear the block and its row's parity behind the array's back; a scrub with repair lists it.
            var raid = onDrives.Array;
            var g = raid.Geometry;
            var (stripe, dataIndex, _, memberBlock) = g.Map(onDrives.OffsetBlocks + VolumeBlock);
            await raid.Member(g.DataMember(stripe, dataIndex))!.Drive.WriteAsync(Duet.Raid.MemberLayout.DataLba(memberBlock), new byte[Duet.Core.Units.BlockBytes]);
            await raid.Member(g.PMember(stripe))!.Drive.WriteAsync(Duet.Raid.MemberLayout.DataLba(memberBlock), Enumerable.Repeat((byte)9, Duet.Core.Units.BlockBytes).ToArray());
            await raid.ScrubAsync(true, new Duet.Raid.ScrubResult(), new Duet.Raid.PassProgress { TotalStripes = g.Stripes }, default);
            Assert.Equal(onDrives.OffsetBlocks + VolumeBlock, Assert.Single(raid.BadBlocks.Entries).ArrayBlock);
        }

        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA);
        var b = await StartAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB);
        try
        {
            Assert.True(a.Volumes.TryGetVolume("vol0", out var onOwner));
            Assert.True(b.Volumes.TryGetVolume("vol0", out var forwarded));
            Assert.IsType<ForwardedVolume>(forwarded);
            const long FirstBadSector = VolumeBlock * 8;
            foreach (var (offset, length) in new[] { (0L, 64 << 10), ((FirstBadSector + 2) * 512, 1024), (FirstBadSector * 512 - 512, 8192) })
            {
                var local = await Assert.ThrowsAsync<Duet.Core.BlockIoException>(async () => await onOwner.ReadAsync(offset, new byte[length]));
                var remote = await Assert.ThrowsAsync<Duet.Core.BlockIoException>(async () => await forwarded.ReadAsync(offset, new byte[length]));
                Assert.Equal(Duet.Core.BlockErrorKind.Medium, local.Kind);
                Assert.Equal(Duet.Core.BlockErrorKind.Medium, remote.Kind);
                Assert.Equal(Math.Max(FirstBadSector, offset / 512), local.Lba);
                Assert.Equal(local.Lba, remote.Lba);
            }
            // The blocks around it read through either controller.
            var back = new byte[4096];
            await forwarded.ReadAsync((VolumeBlock + 1) * 4096, back);
            Assert.Equal(data.AsSpan((int)(VolumeBlock + 1) * 4096, 4096).ToArray(), back);
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    static async Task<PairController> StartAsync(string name, ulong session, MemoryShelf shelf, NvramStore store, NvramLayout layout, IIclLink link)
    {
        var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = new MemoryShelf(shelf), Controller = name });
        var nvram = NvramFile.OpenOrCreate(store, layout, name, Pair);
        var c = new PairController(new ControllerCoreOptions { Name = name, Session = session }, arrays, nvram, link);
        await c.StartAsync();
        return c;
    }

    static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new System.Random(seed).NextBytes(b);
        return b;
    }
}
