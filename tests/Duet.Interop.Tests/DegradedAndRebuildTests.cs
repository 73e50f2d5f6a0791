using Duet.Interop.Tests.Support;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>Failures, a hot spare and its rebuild, driven through the CLI, with the data checked through NBD.</summary>
[Trait("Area", "Interop")]
[Trait("Claim", "AW-7")]
public sealed class DegradedAndRebuildTests(ITestOutputHelper log)
{
    [Fact]
    public async Task DataSurvivesAFailureARebuildOntoASpareAndThenTwoMoreFailures()
    {
        const long size = 64L << 20;
        await using var c = await Controller.StartAsync(log);
        var input = c.ScratchFile("in.img");
        var expected = TestData.WriteRandomFile(input, size, seed: 2);
        await c.NbdcopyIn(input, "vol0");

        await c.CliOk("drive", "fail", "d1");
        var degraded = await c.WaitForArray("arr0", a => a.State == "degraded", "to be degraded");
        Assert.Equal("failed", degraded.Members[1].State);
        Assert.Equal(expected, await c.NbdcopyOutHash("vol0", size));

        await c.CliOk("drive", "add", "d8", "--size", "256M");
        await c.CliOk("spare", "add", "d8", "--array", "arr0");
        var optimal = await c.WaitForArray("arr0", a => a.State == "optimal", "to finish rebuilding onto d8");
        Assert.Equal(["d0", "d8", "d2", "d3"], optimal.Members.Select(m => m.Drive));
        Assert.All(optimal.Members, m => Assert.Equal("active", m.State));
        Assert.Empty(optimal.Spares);

        // Only d8 (rebuilt) and d3 are left: every stripe now needs what the rebuild wrote.
        await c.CliOk("drive", "fail", "d0");
        await c.CliOk("drive", "fail", "d2");
        var twice = await c.WaitForArray("arr0", a => a.Members.Count(m => m.State == "failed") == 2, "to have lost two members");
        Assert.Equal("degraded", twice.State);
        Assert.Equal(expected, await c.NbdcopyOutHash("vol0", size));
    }
}
