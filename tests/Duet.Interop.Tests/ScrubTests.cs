using Duet.Interop.Tests.Support;
using Duet.Raid;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

[Trait("Area", "Interop")]
public sealed class ScrubTests(ITestOutputHelper log)
{
    [Fact]
    public async Task ScrubFindsAndRepairsAByteFlippedBehindDuetsBackAndNamesTheDrive()
    {
        const long size = 4L << 20;
        await using var c = await Controller.StartAsync(log);
        var input = c.ScratchFile("in.img");
        var expected = TestData.WriteRandomFile(input, size, seed: 3);
        await c.NbdcopyIn(input, "vol0");

        // Where volume block 300 lives: member drive and byte offset in its file.
        var status = await c.Status();
        var arr0 = status.Arrays.Single(a => a.Name == "arr0");
        var vol0 = status.Volumes.Single(v => v.Name == "vol0");
        var geometry = new ArrayGeometry(RaidLevel.Raid6, arr0.Members.Count, arr0.ChunkKiB / 4, arr0.CapacityBytes / 4096 / (arr0.Members.Count - 2));
        var (stripe, dataIndex, _, memberBlock) = geometry.Map(vol0.OffsetBytes / 4096 + 300);
        var drive = arr0.Members[geometry.DataMember(stripe, dataIndex)].Drive!;
        long offset = MemberLayout.DataLba(memberBlock) * 4096 + 123;

        byte original;
        using (var f = new FileStream(c.DrivePath(drive), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            f.Position = offset;
            original = (byte)f.ReadByte();
            f.Position = offset;
            f.WriteByte((byte)~original);
        }

        await c.CliOk("scrub", "start", "arr0");
        var done = await c.WaitForArray("arr0", a => a.Scrub is { Running: false }, "to finish its scrub");

        var scrub = done.Scrub!;
        Assert.Equal(1, scrub.ChecksumErrors);
        Assert.Equal(0, scrub.ParityMismatches);
        Assert.Equal(1, scrub.Repaired);
        Assert.Equal(0, scrub.Unrepairable);
        var finding = Assert.Single(scrub.Findings);
        Assert.Contains($"({drive})", finding);
        Assert.Contains("repaired", finding);

        using (var f = new FileStream(c.DrivePath(drive), FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            f.Position = offset;
            Assert.Equal(original, (byte)f.ReadByte());
        }
        Assert.Equal(expected, await c.NbdcopyOutHash("vol0", size));
    }
}
