using Duet.Cache;
using Duet.Cache.Nvram;
using Duet.Drives;
using Duet.Interconnect.Link;
using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;

using static Duet.Cli.Tests.InProcessPair;

namespace Duet.Cli.Tests;

/// <summary>
/// A move of an array to the peer and a takeover of that peer, at once, in one process behind one shelf: the move's
/// hand-over (superblocks, the claim) and the takeover's fence run one at a time, so the array ends up served by the
/// survivor, never named to the fenced peer and served by nobody.
/// </summary>
public sealed class MoveTakeoverInProcessTests
{
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000fb02");

    /// <summary>A drive whose writes to its metadata blocks (superblocks) wait, while armed, until released.</summary>
    sealed class MetadataGate(IBlockDevice inner) : IBlockDevice
    {
        TaskCompletionSource _release = Released();
        public readonly TaskCompletionSource Held = new(TaskCreationOptions.RunContinuationsAsynchronously);

        static TaskCompletionSource Released()
        {
            var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            t.SetResult();
            return t;
        }

        public void Arm() => Volatile.Write(ref _release, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        public void Release() => Volatile.Read(ref _release).TrySetResult();

        public string Name => inner.Name;
        public long BlockCount => inner.BlockCount;
        public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default) => inner.ReadAsync(lba, destination, ct);

        public async ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default)
        {
            var gate = Volatile.Read(ref _release);
            if (lba < MemberLayout.MetadataBlocks && !gate.Task.IsCompleted)
            {
                Held.TrySetResult();
                await gate.Task.WaitAsync(ct);
            }
            await inner.WriteAsync(lba, source, fua, ct);
        }

        public ValueTask FlushAsync(CancellationToken ct = default) => inner.FlushAsync(ct);
        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }

    [Fact]
    [Trait("Claim", "FO-7")]
    [Trait("Claim", "MR-1")]
    public async Task A_takeover_of_the_peer_while_a_move_hands_it_an_array_takes_that_array_too()
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 6; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "B"));
        }
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "B" }))
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol1", "arr1", 8L << 20));
        // Both ports open d3 through the same gate.
        MetadataGate? d3 = null;
        var shelf = new Duet.Shelf.Shelf(bay, new MemoryShelfStateStore(), (name, inner) => name == "d3" ? d3 ??= new MetadataGate(inner) : inner);
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        var b = await StartControllerAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB, Pair);
        try
        {
            await Until(() => a.Mirror.Mode == MirrorMode.Healthy && b.Mirror.Mode == MirrorMode.Healthy && a.HoldsLease && b.HoldsLease, "the pair to form", seconds: 30);
            var data = new byte[256 << 10];
            new Random(7).NextBytes(data);
            Assert.True(b.Volumes.TryGetVolume("vol1", out var vol1));
            await vol1.WriteAsync(0, data, fua: false);

            // B moves arr1 to A; its superblock writes wait at d3. Meanwhile B takes A over.
            Assert.NotNull(d3);
            d3!.Arm();
            var move = b.MoveArrayAsync("arr1", "A", CancellationToken.None);
            await d3.Held.Task.WaitAsync(TimeSpan.FromSeconds(30));
            var takeover = b.TakeOverAsync("test: A taken over while B hands it arr1");
            // Long enough for a fence that does not wait for the hand-over to land (in process: microseconds).
            await Task.Delay(300);
            d3.Release();
            var moved = await move.WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal("A", moved.Owner);
            await takeover.WaitAsync(TimeSpan.FromSeconds(30));

            // The takeover found arr1 the peer's and took it with arr0: B serves both, and the shelf names B owner of
            // arr1 (the move's claim for A came before the fence, the takeover's after).
            await Until(() => b.Arrays.Serves("arr0") && b.Arrays.Serves("arr1"), "B to serve both arrays", seconds: 30);
            var arr1 = b.ArrayService.Status().Arrays.Single(x => x.Name == "arr1");
            Assert.Equal("B", arr1.Owner);
            Assert.Equal("B", shelf.Status().Claim(ArrayManager.SerialOf(Guid.Parse(arr1.Uuid)))!.Owner);
            // And every acknowledged write of arr1 reads back through B.
            Assert.True(b.Volumes.TryGetVolume("vol1", out var after));
            var read = new byte[data.Length];
            await after.ReadAsync(0, read);
            Assert.Equal(data, read);
        }
        finally
        {
            await b.DisposeAsync();
            await a.DisposeAsync();
        }
    }
}
