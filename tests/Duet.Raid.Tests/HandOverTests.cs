using Duet.Core;
using Duet.Drives;
using Duet.Raid.Management;

namespace Duet.Raid.Tests;

/// <summary>
/// A move's hand-over cut part-way (the path to the drives lost after some members took the new owner's
/// superblock): the array stays this controller's, in memory and — once the path is back and
/// <see cref="ArrayManager.ReassertOwnerAsync"/> has run — on every member, at a newer generation than the
/// copies that named the peer. Found by the simulator (seed 181 of `duet sim --ops 500`): before, the peer
/// assembled the array from the newer copies after a restart while writes taken after the cut lived only in
/// the first owner's cache.
/// </summary>
[Trait("Claim", "MR-1")]
public sealed class HandOverTests
{
    const long DriveBytes = 64L << 20;

    /// <summary>A shelf whose named drives answer superblock writes with a lost path while <see cref="Cut"/> holds.</summary>
    sealed class CuttableShelf(MemoryShelf inner) : IDriveShelf
    {
        public readonly HashSet<string> Cut = [];
        public IReadOnlyList<string> List() => inner.List();
        public bool Contains(string name) => inner.Contains(name);
        public IBlockDevice Create(string name, long sizeBytes) => new Drive(this, inner.Create(name, sizeBytes));
        public IBlockDevice Open(string name) => new Drive(this, inner.Open(name));
        public string Describe(string name) => inner.Describe(name);

        sealed class Drive(CuttableShelf shelf, IBlockDevice d) : IBlockDevice
        {
            public string Name => d.Name;
            public long BlockCount => d.BlockCount;
            public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default) => d.ReadAsync(lba, destination, ct);
            public ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default) =>
                shelf.Cut.Contains(d.Name) && lba is MemberLayout.SuperblockLba or MemberLayout.SuperblockCopyLba
                    ? ValueTask.FromException(new BlockIoException(BlockErrorKind.PathDown, $"{d.Name}: the shelf cannot be reached", lba))
                    : d.WriteAsync(lba, source, fua, ct);
            public ValueTask FlushAsync(CancellationToken ct = default) => d.FlushAsync(ct);
            public ValueTask DisposeAsync() => d.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_hand_over_cut_part_way_leaves_the_array_ours_and_a_reassert_makes_every_member_say_so()
    {
        var memory = new MemoryShelf();
        for (int i = 0; i < 4; i++) memory.Insert($"d{i}", DriveBytes);
        var shelf = new CuttableShelf(memory);
        await using (var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "A" }))
        {
            await a.CreateArrayAsync(new CreateArrayRequest("arr0", 6, ["d0", "d1", "d2", "d3"], Owner: "A"));
            long created = a.Status().Arrays.Single().Generation;

            // Two members take the hand-over's superblock (owner B), two lose the path.
            shelf.Cut.UnionWith(["d2", "d3"]);
            var cut = await Assert.ThrowsAsync<HandOverInterruptedException>(() => a.HandOverAsync("arr0", "B"));
            Assert.IsType<BlockIoException>(cut.InnerException);
            var info = a.Status().Arrays.Single();
            Assert.Equal(("arr0", "A"), (info.Name, info.Owner));

            // While the path is down, a reassert fails as the path does; once it is back, every member names A anew.
            await Assert.ThrowsAsync<BlockIoException>(() => a.ReassertOwnerAsync("arr0"));
            shelf.Cut.Clear();
            await a.ReassertOwnerAsync("arr0");
            Assert.True(a.Status().Arrays.Single().Generation > created + 1);
        }

        // Both controllers, starting afresh from the drives, find the array A's.
        await using (var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = memory, Controller = "A" }))
            Assert.Equal("A", a.Status().Arrays.Single().Owner);
        await using (var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = memory, Controller = "B" }))
            Assert.Equal("A", b.Status().Arrays.Single().Owner);
    }

    [Fact]
    public async Task Until_the_reassert_the_newer_copies_give_the_array_to_the_peer()
    {
        // What the reassert is for: the members that took the hand-over hold the newest generation. (B looks
        // while A is still up: A's manager, closed cleanly, would write its superblocks itself; a crash does not.)
        var memory = new MemoryShelf();
        for (int i = 0; i < 4; i++) memory.Insert($"d{i}", DriveBytes);
        var shelf = new CuttableShelf(memory);
        await using var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "A" });
        await a.CreateArrayAsync(new CreateArrayRequest("arr0", 6, ["d0", "d1", "d2", "d3"], Owner: "A"));
        shelf.Cut.UnionWith(["d2", "d3"]);
        await Assert.ThrowsAsync<HandOverInterruptedException>(() => a.HandOverAsync("arr0", "B"));
        await using (var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = memory, Controller = "B" }))
            Assert.Equal("B", b.Status().Arrays.Single().Owner);

        shelf.Cut.Clear();
        await a.ReassertOwnerAsync("arr0");
        await using (var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = memory, Controller = "B" }))
            Assert.Equal("A", b.Status().Arrays.Single().Owner);
    }
}
