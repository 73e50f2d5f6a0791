using Duet.Interop.Tests.Support;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>The CLI against a real controller: what it refuses, how it says so, and that a refusal changes nothing.</summary>
[Trait("Area", "Interop")]
public sealed class CliRefusalTests(ITestOutputHelper log)
{
    /// <summary>Runs a request that must be refused with <paramref name="code"/> and leave `duet status --json` as it was.</summary>
    static async Task<CliResult> Refused(Controller c, int code, params string[] args)
    {
        var before = await c.StatusJson();
        var r = await c.Cli(args);
        Assert.True(r.Code == code, $"expected exit {code}\n{r}");
        Assert.Equal("", r.Out);
        Assert.StartsWith("duet: ", r.Err);
        Assert.Equal(before, await c.StatusJson());
        return r;
    }

    [Fact]
    public async Task RefusedRequestsExit1WithAReasonAndChangeNothing()
    {
        await using var c = await Controller.StartAsync(log);
        await c.CliOk("drive", "add", "d8", "--size", "256M");
        await c.CliOk("drive", "add", "d9", "--size", "256M");
        await c.CliOk("drive", "add", "d10", "--size", "256M");
        await c.CliOk("drive", "add", "big", "--size", "512M");

        Assert.Contains("RAID 6 needs at least 4 drives; 3 given",
            (await Refused(c, 1, "array", "create", "arr2", "--level", "6", "--drives", "d8,d9,d10")).Err);
        Assert.Contains("drives differ in size",
            (await Refused(c, 1, "array", "create", "arr2", "--level", "6", "--drives", "d8,d9,d10,big")).Err);
        Assert.Contains("drive 'd0' is a member of array 'arr0'",
            (await Refused(c, 1, "array", "create", "arr2", "--level", "6", "--drives", "d8,d9,d10,d0")).Err);
        Assert.Contains("drive 'd5' is a member of array 'arr1'",
            (await Refused(c, 1, "spare", "add", "d5", "--array", "arr0")).Err);
        Assert.Contains("an array named 'arr0' already exists",
            (await Refused(c, 1, "array", "create", "arr0", "--level", "5", "--drives", "d8,d9,d10")).Err);
        Assert.Contains("still has volumes",
            (await Refused(c, 1, "array", "delete", "arr0")).Err);

        Assert.Contains("no array named 'nope'", (await Refused(c, 1, "volume", "create", "v", "--array", "nope")).Err);
        Assert.Contains("no array named 'nope'", (await Refused(c, 1, "array", "delete", "nope")).Err);
        Assert.Contains("no array named 'nope'", (await Refused(c, 1, "scrub", "start", "nope")).Err);
        Assert.Contains("no array named 'nope'", (await Refused(c, 1, "spare", "add", "d8", "--array", "nope")).Err);
        Assert.Contains("no volume named 'nope'", (await Refused(c, 1, "volume", "delete", "nope")).Err);
        Assert.Contains("no drive named 'nope'", (await Refused(c, 1, "drive", "fail", "nope")).Err);
        Assert.Contains("a volume named 'vol1' already exists", (await Refused(c, 1, "volume", "create", "vol1", "--array", "arr0")).Err);
        Assert.Contains("has no free extent", (await Refused(c, 1, "volume", "create", "more", "--array", "arr0", "--size", "4M")).Err);
    }

    [Fact]
    public async Task FailingAMemberThatWouldFailTheArrayIsRefusedAndTheVolumeStaysServed()
    {
        await using var c = await Controller.StartAsync(log);
        const long size = 4L << 20;
        var input = c.ScratchFile("in.img");
        var expected = TestData.WriteRandomFile(input, size, seed: 9);
        await c.NbdcopyIn(input, "vol0");
        long generation = (await c.Array("arr0")).Generation;
        await c.CliOk("drive", "fail", "d0");
        await c.CliOk("drive", "fail", "d1");
        // Each failure is written to the superblocks just after the CLI returns; wait for both.
        await c.WaitForArray("arr0", a => a.Members.Count(m => m.State == "failed") == 2 && a.Generation >= generation + 2, "to have recorded two lost members");

        Assert.Contains("without enough members", (await Refused(c, 1, "drive", "fail", "d2")).Err);
        Assert.Contains("has already failed", (await Refused(c, 1, "drive", "fail", "d1")).Err);

        Assert.Equal("degraded", (await c.Array("arr0")).State);
        Assert.Equal(expected, await c.NbdcopyOutHash("vol0", size));
    }

    [Fact]
    public async Task BadArgumentsExit2AndReachNoController()
    {
        await using var c = await Controller.StartAsync(log);
        await c.CliOk("drive", "add", "d8", "--size", "256M");

        var level7 = (await Refused(c, 2, "array", "create", "arr2", "--level", "7", "--drives", "d8")).Err;
        Assert.Contains("'7' not recognized", level7);
        Assert.Contains("'6'", level7); // it lists the levels there are
        Assert.Contains("'six' not recognized", (await Refused(c, 2, "array", "create", "arr2", "--level", "six", "--drives", "d8")).Err);
        await Refused(c, 2, "array", "create", "arr2", "--drives", "d8");
        Assert.Contains("is not a size", (await Refused(c, 2, "drive", "add", "d9", "--size", "lots")).Err);
        await Refused(c, 2, "drive", "frobnicate", "d0");
    }

    [Fact]
    public async Task WithNoControllerRunningStatusExits1AndSaysSo()
    {
        await using var c = await Controller.StartAsync(log);
        await c.StopAsync();

        var r = await c.Cli("status");

        Assert.Equal(1, r.Code);
        Assert.Equal("", r.Out);
        Assert.Contains($"no Duet controller is running with data directory {c.DataDirectory}", r.Err);
    }
}
