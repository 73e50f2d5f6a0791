using Duet.Core;
using Duet.Drives;
using Duet.Raid.Management;

namespace Duet.Raid.Tests;

/// <summary>
/// AW-3's whole-array settle, owed by a takeover of a controller whose write log's copy was incomplete: kept in the
/// taken array's superblocks (bit 1 of the flags at byte 80), written in the same update that names the new owner,
/// and cleared only when the settle is done, so a stop in between does not forget it.
/// </summary>
[Trait("Claim", "AW-3")]
public sealed class SettleOwedTests
{
    const long DriveBytes = 64L << 20;

    static Superblock Sample(bool clean, bool owed) => new()
    {
        ArrayUuid = new Guid("11111111-2222-3333-4444-555555555555"), DriveUuid = new Guid("66666666-7777-8888-9999-aaaaaaaaaaaa"),
        Generation = 4, Level = RaidLevel.Raid5, MemberCount = 3, ChunkBlocks = 16, Slot = 0, MemberBlocks = 4096, Name = "arr0",
        Slots = [new SlotEntry(Guid.NewGuid(), SlotState.Active), new SlotEntry(Guid.NewGuid(), SlotState.Active), new SlotEntry(Guid.NewGuid(), SlotState.Active)],
        Clean = clean, SettleOwed = owed,
    };

    [Theory]
    [InlineData(false, false, 0u)]
    [InlineData(true, false, 1u)]
    [InlineData(false, true, 2u)]
    [InlineData(true, true, 3u)]
    public void The_settle_owed_bit_sits_beside_the_clean_bit_and_round_trips(bool clean, bool owed, uint flags)
    {
        var block = new byte[Units.BlockBytes];
        Sample(clean, owed).Encode(block);
        Assert.Equal(flags, BitConverter.ToUInt32(block, 80));
        Assert.Equal(1, BitConverter.ToInt32(block, 8)); // format version unchanged: the bit was zero before
        var back = Superblock.TryDecode(block, out var error);
        Assert.Null(error);
        Assert.Equal((clean, owed), (back!.Clean, back.SettleOwed));
    }

    [Fact]
    public async Task A_takeover_told_to_settle_whole_owes_it_in_the_superblocks_until_cleared_and_a_reopen_reads_it()
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 6; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await a.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await a.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "A"));
        }
        await using (var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "B" }))
        {
            Assert.Equal(["arr0", "arr1"], await b.TakeOverAsync("A", settleWhole: true));
            Assert.True(b.SettleOwed("arr0") && b.SettleOwed("arr1"));
            await b.SetSettleOwedAsync("arr1", false);
            Assert.False(b.SettleOwed("arr1"));
            await b.SetSettleOwedAsync("nonesuch", true); // an array not served here is left alone
        }
        // A stop before arr0's settle: the next controller to serve it reads the debt from the drives.
        await using (var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "B" }))
        {
            Assert.True(b.SettleOwed("arr0"));
            Assert.False(b.SettleOwed("arr1"));
        }
        // A takeover told nothing owes nothing.
        await using (var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            Assert.Equal(["arr0", "arr1"], await a.TakeOverAsync("B"));
            Assert.True(a.SettleOwed("arr0")); // still owed: nobody has settled it
            Assert.False(a.SettleOwed("arr1"));
        }
    }
}
