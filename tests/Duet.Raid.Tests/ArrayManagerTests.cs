using Duet.Core;
using Duet.Raid.Management;

namespace Duet.Raid.Tests;

public sealed class ArrayManagerTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "duet-am-" + Guid.NewGuid().ToString("N")[..8]);
    const long DriveBytes = 64L << 20;

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    Task<ArrayManager> OpenAsync() => ArrayManager.OpenAsync(new ArrayManagerOptions { DataDirectory = _dir });

    static async Task AddDrivesAsync(ArrayManager m, int count, int first = 0, long size = DriveBytes)
    {
        for (int i = first; i < first + count; i++) await m.AddDriveAsync(new AddDriveRequest($"d{i}", size));
    }

    static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new System.Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public async Task ArraysAndVolumesReassembleFromTheirDrivesAfterARestart()
    {
        var data = Pattern(1 << 20, 1);
        await using (var m = await OpenAsync())
        {
            await AddDrivesAsync(m, 4);
            await m.CreateArrayAsync(new CreateArrayRequest("arr0", 6, ["d0", "d1", "d2", "d3"]));
            var v = await m.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 16L << 20));
            Assert.Equal(16L << 20, v.SizeBytes);
            Assert.True(m.TryGetVolume("vol0", out var vol));
            await vol.WriteAsync(4096 * 3 + 512, data, fua: true);
        }
        await using (var m = await OpenAsync())
        {
            var s = m.Status();
            var a = Assert.Single(s.Arrays);
            Assert.Equal(("arr0", 6, "optimal"), (a.Name, a.Level, a.State));
            Assert.Equal(["d0", "d1", "d2", "d3"], a.Members.Select(x => x.Drive));
            Assert.True(m.TryGetVolume("vol0", out var vol));
            var back = new byte[data.Length];
            await vol.ReadAsync(4096 * 3 + 512, back);
            Assert.Equal(data, back);
        }
    }

    [Fact]
    public async Task AMissingDriveStartsTheArrayDegradedAndAStaleMemberIsResyncedWhenItReturns()
    {
        var data = Pattern(2 << 20, 2);
        var data2 = Pattern(2 << 20, 3);
        await using (var m = await OpenAsync())
        {
            await AddDrivesAsync(m, 4);
            await m.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2", "d3"]));
            await m.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 0));
            m.TryGetVolume("vol0", out var vol);
            await vol.WriteAsync(0, data, fua: true);
        }
        var d2 = Path.Combine(_dir, "drives", "d2.img");
        File.Move(d2, d2 + ".away");
        await using (var m = await OpenAsync())
        {
            var a = m.Status().Arrays.Single();
            Assert.Equal("degraded", a.State);
            Assert.Equal("missing", a.Members[2].State);
            m.TryGetVolume("vol0", out var vol);
            var back = new byte[data.Length];
            await vol.ReadAsync(0, back);
            Assert.Equal(data, back);
            await vol.WriteAsync(0, data2, fua: true); // d2 misses this write
        }
        File.Move(d2 + ".away", d2);
        await using (var m = await OpenAsync())
        {
            await m.WaitForBackgroundAsync();
            var a = m.Status().Arrays.Single();
            Assert.Equal("optimal", a.State);
            Assert.Equal("d2", a.Members[2].Drive);
            // Redundancy really is back: fail another member and read the newest data.
            await m.FailDriveAsync("d0");
            m.TryGetVolume("vol0", out var vol);
            var back = new byte[data2.Length];
            await vol.ReadAsync(0, back);
            Assert.Equal(data2, back);
        }
    }

    [Fact]
    public async Task AForeignDriveIsRefusedWithAClearMessage()
    {
        await using (var m = await OpenAsync())
        {
            await AddDrivesAsync(m, 3);
            await m.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"]));
        }
        // A drive from another Duet, holding a one-drive-short array of the same name.
        var other = Path.Combine(_dir, "other");
        await using (var m = await ArrayManager.OpenAsync(new ArrayManagerOptions { DataDirectory = other }))
        {
            await AddDrivesAsync(m, 3, first: 10);
            await m.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d10", "d11", "d12"]));
        }
        File.Copy(Path.Combine(other, "drives", "d10.img"), Path.Combine(_dir, "drives", "x.img"));
        await using (var m = await OpenAsync())
        {
            var x = m.Status().Drives.Single(d => d.Name == "x");
            Assert.Equal("foreign", x.Role);
            Assert.Contains("another array also named arr0", x.State);
            Assert.Equal("optimal", m.Status().Arrays.Single().State);
            var e = await Assert.ThrowsAsync<ManagementException>(() => m.CreateArrayAsync(new CreateArrayRequest("b", 1, ["x", "d0"])));
            Assert.Equal(ManagementErrorKind.Conflict, e.Kind);
        }
    }

    [Fact]
    public async Task ImpossibleRequestsAreRefusedAndChangeNothing()
    {
        await using var m = await OpenAsync();
        await AddDrivesAsync(m, 4);
        await m.AddDriveAsync(new AddDriveRequest("big", DriveBytes * 2));
        var before = System.Text.Json.JsonSerializer.Serialize(m.Status());

        async Task Refused(ManagementErrorKind kind, string fragment, Func<Task> call)
        {
            var e = await Assert.ThrowsAsync<ManagementException>(call);
            Assert.Equal(kind, e.Kind);
            Assert.Contains(fragment, e.Message);
            Assert.Equal(before, System.Text.Json.JsonSerializer.Serialize(m.Status()));
        }

        await Refused(ManagementErrorKind.Invalid, "needs at least 4 drives", () => m.CreateArrayAsync(new CreateArrayRequest("a", 6, ["d0", "d1", "d2"])));
        await Refused(ManagementErrorKind.Invalid, "differ in size", () => m.CreateArrayAsync(new CreateArrayRequest("a", 5, ["d0", "d1", "big"])));
        await Refused(ManagementErrorKind.NotFound, "no drive named 'nope'", () => m.CreateArrayAsync(new CreateArrayRequest("a", 5, ["d0", "d1", "nope"])));
        await Refused(ManagementErrorKind.Invalid, "level 7", () => m.CreateArrayAsync(new CreateArrayRequest("a", 7, ["d0", "d1", "d2"])));
        await Refused(ManagementErrorKind.Invalid, "chunk size", () => m.CreateArrayAsync(new CreateArrayRequest("a", 5, ["d0", "d1", "d2"], ChunkKiB: 48)));
        await Refused(ManagementErrorKind.Invalid, "named twice", () => m.CreateArrayAsync(new CreateArrayRequest("a", 5, ["d0", "d0", "d2"])));
        await Refused(ManagementErrorKind.NotFound, "no array named", () => m.CreateVolumeAsync(new CreateVolumeRequest("v", "zz", 4096)));
        await Refused(ManagementErrorKind.NotFound, "no volume named", () => m.DeleteVolumeAsync("zz"));
        await Refused(ManagementErrorKind.Invalid, "not a member", () => m.FailDriveAsync("d0"));

        await m.CreateArrayAsync(new CreateArrayRequest("a", 5, ["d0", "d1", "d2"]));
        await m.CreateVolumeAsync(new CreateVolumeRequest("v", "a", 8L << 20));
        before = System.Text.Json.JsonSerializer.Serialize(m.Status());
        await Refused(ManagementErrorKind.Conflict, "member of array 'a'", () => m.CreateArrayAsync(new CreateArrayRequest("b", 1, ["d0", "d3"])));
        await Refused(ManagementErrorKind.Conflict, "already exists", () => m.CreateArrayAsync(new CreateArrayRequest("a", 1, ["d3", "big"])));
        await Refused(ManagementErrorKind.Conflict, "still has volumes", () => m.DeleteArrayAsync("a"));
        await Refused(ManagementErrorKind.Invalid, "no free extent", () => m.CreateVolumeAsync(new CreateVolumeRequest("w", "a", 1L << 40)));
        await Refused(ManagementErrorKind.Conflict, "already exists", () => m.CreateVolumeAsync(new CreateVolumeRequest("v", "a", 4096)));
    }

    [Fact]
    public async Task FailingOneMemberMoreThanTheLevelSurvivesIsRefused()
    {
        await using var m = await OpenAsync();
        await AddDrivesAsync(m, 4);
        await m.CreateArrayAsync(new CreateArrayRequest("arr0", 6, ["d0", "d1", "d2", "d3"]));
        await m.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 0));
        await m.FailDriveAsync("d0");
        await m.FailDriveAsync("d1");

        var e = await Assert.ThrowsAsync<ManagementException>(() => m.FailDriveAsync("d2"));

        Assert.Equal(ManagementErrorKind.Conflict, e.Kind);
        Assert.Contains("without enough members", e.Message);
        var a = m.Status().Arrays.Single();
        Assert.Equal("degraded", a.State);
        Assert.Equal(["failed", "failed", "active", "active"], a.Members.Select(x => x.State));
        Assert.True(m.TryGetVolume("vol0", out _));
    }

    [Fact]
    public async Task AFailedDriveIsRebuiltOntoAHotSpareAndStatusShowsProgress()
    {
        await using var m = await OpenAsync();
        await AddDrivesAsync(m, 5);
        await m.CreateArrayAsync(new CreateArrayRequest("arr0", 6, ["d0", "d1", "d2", "d3"]));
        await m.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 0));
        m.TryGetVolume("vol0", out var vol);
        var data = Pattern(4 << 20, 9);
        await vol.WriteAsync(1 << 20, data, fua: false);
        await m.AddSpareAsync(new AddSpareRequest("d4", "arr0"));
        Assert.Equal(["d4"], m.Status().Arrays.Single().Spares);
        await m.FailDriveAsync("d1");
        await m.WaitForBackgroundAsync();
        // The failure is persisted and the spare takes slot 1 off the data path; wait for both.
        for (int i = 0; i < 200 && m.Status().Arrays.Single().State != "optimal"; i++) await m.WaitForBackgroundAsync().WaitAsync(TimeSpan.FromSeconds(1));
        var a = m.Status().Arrays.Single();
        Assert.Equal("optimal", a.State);
        Assert.Equal("d4", a.Members[1].Drive);
        Assert.Equal("free", m.Status().Drives.Single(d => d.Name == "d1").Role);
        await m.FailDriveAsync("d0");
        await m.FailDriveAsync("d2");
        var back = new byte[data.Length];
        await vol.ReadAsync(1 << 20, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task ScrubReportsTheMemberWhoseBlockWasCorrupted()
    {
        await using var m = await OpenAsync();
        await AddDrivesAsync(m, 4);
        await m.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2", "d3"], ChunkKiB: 16));
        await m.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 0));
        m.TryGetVolume("vol0", out var vol);
        await vol.WriteAsync(0, Pattern(1 << 20, 4), fua: true);
        // Member data block 0 of d1 sits at drive block MemberLayout.DataLba(0).
        using (var f = File.Open(Path.Combine(_dir, "drives", "d1.img"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            f.Position = MemberLayout.DataLba(0) * Units.BlockBytes + 10;
            f.WriteByte(0xEE);
        }
        await m.StartScrubAsync("arr0", new ScrubRequest(Repair: true));
        await m.WaitForBackgroundAsync();
        var scrub = m.Status().Arrays.Single().Scrub!;
        Assert.False(scrub.Running);
        Assert.Equal(1, scrub.ChecksumErrors);
        Assert.Equal(1, scrub.Repaired);
        Assert.Contains(scrub.Findings, f => f.Contains("(d1)") && f.Contains("repaired"));
    }
}
