using Duet.Core;
using Duet.Drives;
using Duet.Raid.Management;

namespace Duet.Raid.Tests;

/// <summary>Array managers over in-memory drive shelves (the simulator's enclosure), and read paths that never wait.</summary>
public sealed class MemoryShelfTests
{
    const long DriveBytes = 64L << 20;

    static MemoryShelf ShelfOf(int drives)
    {
        var shelf = new MemoryShelf();
        for (int i = 0; i < drives; i++) shelf.Insert($"d{i}", DriveBytes);
        return shelf;
    }

    static Task<ArrayManager> OpenAsync(IDriveShelf shelf, string? controller = null) =>
        ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = controller });

    [Fact]
    public async Task TwoControllersShareOneShelfAndTheOtherSeesANewArrayAsThePeersAfterARescan()
    {
        var shelf = ShelfOf(5);
        var openedByA = new List<string>();
        var openedByB = new List<string>();
        await using var a = await OpenAsync(new MemoryShelf(shelf, (name, d) => { openedByA.Add(name); return d; }), "A");
        await using var b = await OpenAsync(new MemoryShelf(shelf, (name, d) => { openedByB.Add(name); return d; }), "B");
        Assert.Equal(["d0", "d1", "d2", "d3", "d4"], openedByA);
        Assert.Equal(openedByA, openedByB);

        await a.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"]));
        await a.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 8L << 20));
        await a.AddDriveAsync(new AddDriveRequest("d9", DriveBytes));
        Assert.Equal(["d0", "d1", "d2", "d3", "d4", "d9"], shelf.List());
        Assert.Empty(b.Status().Arrays); // B has not looked again yet

        await b.RescanAsync();
        var peer = Assert.Single(b.Status().Arrays);
        Assert.Equal(("arr0", "peer", "A"), (peer.Name, peer.State, peer.Owner));
        Assert.Equal(["d0", "d1", "d2"], peer.Members.Select(m => m.Drive));
        Assert.Equal([new PeerVolume("vol0", "arr0", "A", 8L << 20)], b.PeerVolumes);
        Assert.False(b.Serves("arr0"));
        Assert.False(b.TryGetVolume("vol0", out _));
        Assert.Equal(a.ArrayTable, b.ArrayTable);
        Assert.Equal("free", b.Status().Drives.Single(d => d.Name == "d9").Role);
        Assert.Equal("d9", openedByB[^1]);

        // B may not change A's array; A serves it.
        var e = await Assert.ThrowsAsync<ManagementException>(() => b.CreateVolumeAsync(new CreateVolumeRequest("vol1", "arr0", 4096)));
        Assert.Equal(ManagementErrorKind.Conflict, e.Kind);
        Assert.True(a.TryGetVolume("vol0", out _));
    }

    [Fact]
    public async Task DrivesOutliveTheirOpenersAndReassembleInANewManager()
    {
        var shelf = ShelfOf(3);
        var data = new byte[1 << 20];
        new System.Random(7).NextBytes(data);
        await using (var m = await OpenAsync(shelf))
        {
            await m.CreateArrayAsync(new CreateArrayRequest("arr0", 1, ["d0", "d1"]));
            await m.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 0));
            Assert.True(m.TryGetVolume("vol0", out var vol));
            await vol.WriteAsync(0, data, fua: true);
        }
        // Dropped without disposing (a crash) or disposed: the shelf keeps the drives either way.
        var m2 = await OpenAsync(new MemoryShelf(shelf));
        Assert.Equal("optimal", Assert.Single(m2.Status().Arrays).State);
        Assert.True(m2.TryGetVolume("vol0", out var again));
        var back = new byte[data.Length];
        await again.ReadAsync(0, back);
        Assert.Equal(data, back);
    }

    [Fact]
    public async Task StatusAnswersAtOnceWhileAManagementOperationIsStuckOnADrive()
    {
        var gate = new Gate();
        var shelf = new MemoryShelf((_, d) => new GatedDrive(d, gate));
        for (int i = 0; i < 3; i++) shelf.Insert($"d{i}", DriveBytes);
        await using var m = await OpenAsync(shelf);
        await m.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"]));

        gate.Close();
        var creating = m.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 4L << 20));
        Assert.False(creating.IsCompleted); // holds the management lock, waiting on a superblock write

        // The read paths do not wait for it: they see the state before the operation.
        var s = m.Status();
        Assert.Empty(s.Volumes);
        Assert.Equal("optimal", Assert.Single(s.Arrays).State);
        Assert.True(m.Serves("arr0"));
        Assert.Single(m.ServedArrays);
        Assert.Single(m.ArrayTable);

        gate.Open();
        await creating;
        Assert.Equal("vol0", Assert.Single(m.Status().Volumes).Name);
    }

    sealed class Gate
    {
        TaskCompletionSource _open = Opened();
        static TaskCompletionSource Opened()
        {
            var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            t.SetResult();
            return t;
        }
        public Task WaitAsync() => Volatile.Read(ref _open).Task;
        public void Close() => Volatile.Write(ref _open, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        public void Open() => Volatile.Read(ref _open).TrySetResult();
    }

    /// <summary>Writes wait while the gate is closed.</summary>
    sealed class GatedDrive(IBlockDevice inner, Gate gate) : IBlockDevice
    {
        public string Name => inner.Name;
        public long BlockCount => inner.BlockCount;
        public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default) => inner.ReadAsync(lba, destination, ct);
        public async ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default)
        {
            await gate.WaitAsync();
            await inner.WriteAsync(lba, source, fua, ct);
        }
        public ValueTask FlushAsync(CancellationToken ct = default) => inner.FlushAsync(ct);
        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }

    // Found by the simulator: both controllers created an array before hearing of the other's,
    // both took number 0, and the cache (which names arrays by number) mixed their data.
    [Fact]
    public async Task ArraysCreatedAtOnceOnBothControllersGetDifferentNumbers()
    {
        var shelf = ShelfOf(4);
        await using var a = await OpenAsync(new MemoryShelf(shelf), "A");
        await using var b = await OpenAsync(new MemoryShelf(shelf), "B");
        await a.CreateArrayAsync(new CreateArrayRequest("left", 1, ["d0", "d1"]));
        await b.CreateArrayAsync(new CreateArrayRequest("right", 1, ["d2", "d3"], Owner: "B"));
        var numberA = Assert.Single(a.ArrayTable).Key;
        var numberB = Assert.Single(b.ArrayTable).Key;
        Assert.Equal(0, numberA % 2);
        Assert.Equal(1, numberB % 2);
    }

    // Found by the simulator: B put an array on two drives and died before telling A; A still
    // thought them free and created its own array over B's.
    [Fact]
    public async Task CreateRefusesADriveThePeerClaimedSinceTheLastLook()
    {
        var shelf = ShelfOf(2);
        await using var a = await OpenAsync(new MemoryShelf(shelf), "A");
        await using var b = await OpenAsync(new MemoryShelf(shelf), "B");
        await b.CreateArrayAsync(new CreateArrayRequest("theirs", 1, ["d0", "d1"], Owner: "B"));
        var e = await Assert.ThrowsAsync<ManagementException>(() => a.CreateArrayAsync(new CreateArrayRequest("mine", 1, ["d0", "d1"])));
        Assert.Equal(ManagementErrorKind.Conflict, e.Kind);
        Assert.Contains("now belongs to array 'theirs'", e.Message);
        await b.RescanAsync();
        Assert.True(b.Serves("theirs"));
    }
}
