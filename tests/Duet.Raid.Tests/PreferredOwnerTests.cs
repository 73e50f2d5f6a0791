using Duet.Core;
using Duet.Drives;
using Duet.Raid.Management;

namespace Duet.Raid.Tests;

/// <summary>
/// Failback's preferred owner (issue 5): kept in the array's superblock (byte 122), set at creation to the
/// creating owner, changed by `duet array prefer` on the owner, and carried along by a move, so an automatic
/// failback never undoes an operator's move.
/// </summary>
[Trait("Claim", "FO-6")]
public sealed class PreferredOwnerTests
{
    const long DriveBytes = 64L << 20;

    static Superblock Sample(string owner, string? preferred) => new()
    {
        ArrayUuid = new Guid("11111111-2222-3333-4444-555555555555"), DriveUuid = new Guid("66666666-7777-8888-9999-aaaaaaaaaaaa"),
        Generation = 4, Level = RaidLevel.Raid5, MemberCount = 3, ChunkBlocks = 16, Slot = 0, MemberBlocks = 4096, Name = "arr0",
        Slots = [new SlotEntry(Guid.NewGuid(), SlotState.Active), new SlotEntry(Guid.NewGuid(), SlotState.Active), new SlotEntry(Guid.NewGuid(), SlotState.Active)],
        Owner = owner, PreferredOwner = preferred, Number = 2,
    };

    [Theory]
    [InlineData("A", "A", (byte)'A')]
    [InlineData("B", "A", (byte)'A')]
    [InlineData("A", "B", (byte)'B')]
    [InlineData("B", null, (byte)'-')]
    public void ThePreferredOwnerRoundTripsThroughByte122(string owner, string? preferred, byte stored)
    {
        var block = new byte[Units.BlockBytes];
        Sample(owner, preferred).Encode(block);
        Assert.Equal(stored, block[122]);
        Assert.Equal(1, BitConverter.ToInt32(block, 8)); // format version unchanged: byte 122 was reserved and zero
        var back = Superblock.TryDecode(block, out var error);
        Assert.Null(error);
        Assert.Equal((owner, preferred), (back!.Owner, back.PreferredOwner));
    }

    [Fact]
    public void ASuperblockWrittenBeforePreferencesWereKeptPrefersItsOwner()
    {
        var block = new byte[Units.BlockBytes];
        Sample("B", "A").Encode(block);
        block[122] = 0;
        block.AsSpan(12, 4).Clear();
        BitConverter.TryWriteBytes(block.AsSpan(12), Crc32C.Compute(block));
        var legacy = Superblock.TryDecode(block, out var error);
        Assert.Null(error);
        Assert.Equal(("B", "B"), (legacy!.Owner, legacy.PreferredOwner));
    }

    [Fact]
    public void AnUnknownPreferredOwnerByteIsADamagedSuperblock()
    {
        var block = new byte[Units.BlockBytes];
        Sample("A", "A").Encode(block);
        block[122] = (byte)'C';
        block.AsSpan(12, 4).Clear();
        BitConverter.TryWriteBytes(block.AsSpan(12), Crc32C.Compute(block));
        Assert.Null(Superblock.TryDecode(block, out var error));
        Assert.Contains("preferred controller 0x43", error);
    }

    [Fact]
    public async Task AnArrayPrefersItsCreatingOwnerAndAPreferenceSetOnTheOwnerSurvivesAReopen()
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 6; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            var arr0 = await a.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            var arr1 = await a.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "B"));
            Assert.Equal(("A", "A"), (arr0.Owner, arr0.PreferredOwner));
            Assert.Equal(("B", "B"), (arr1.Owner, arr1.PreferredOwner));

            // Only the owner writes the superblocks: the peer's array is a Conflict that names the owner.
            var peers = await Assert.ThrowsAsync<ManagementException>(() => a.PreferArrayAsync("arr1", new PreferArrayRequest("A")));
            Assert.Equal(ManagementErrorKind.Conflict, peers.Kind);
            Assert.Contains("served by controller B", peers.Message);
            var bad = await Assert.ThrowsAsync<ManagementException>(() => a.PreferArrayAsync("arr0", new PreferArrayRequest("C")));
            Assert.Equal(ManagementErrorKind.Invalid, bad.Kind);

            var changed = await a.PreferArrayAsync("arr0", new PreferArrayRequest("B"));
            Assert.Equal(("A", "B"), (changed.Owner, changed.PreferredOwner));
            Assert.Equal(arr0.Generation + 1, changed.Generation);
        }
        await using (var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "B" }))
        {
            // The peer reads the preference from the same superblocks.
            var arr0 = b.Status().Arrays.Single(x => x.Name == "arr0");
            Assert.Equal(("peer", "A", "B"), (arr0.State, arr0.Owner, arr0.PreferredOwner));
            var none = await b.PreferArrayAsync("arr1", new PreferArrayRequest("none"));
            Assert.Equal("none", none.PreferredOwner);
        }
        await using (var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
            Assert.Equal(["B", "none"], a.Status().Arrays.OrderBy(x => x.Name).Select(x => x.PreferredOwner));
    }

    [Fact]
    public async Task AMoveCarriesThePreferenceToTheNewOwnerUnlessThereIsNone()
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 6; i++) bay.Insert($"d{i}", DriveBytes);
        await using var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" });
        await a.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
        await a.CreateArrayAsync(new CreateArrayRequest("arr2", 5, ["d3", "d4", "d5"], Owner: "A"));
        await a.PreferArrayAsync("arr2", new PreferArrayRequest(null));

        var moved = await a.HandOverAsync("arr0", "B");
        Assert.Equal(("B", "B"), (moved.Owner, moved.PreferredOwner));
        var free = await a.HandOverAsync("arr2", "B");
        Assert.Equal(("B", "none"), (free.Owner, free.PreferredOwner));
    }
}
