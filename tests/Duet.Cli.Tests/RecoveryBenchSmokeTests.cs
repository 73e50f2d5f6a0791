using System.Globalization;
using Duet.Bench;

namespace Duet.Cli.Tests;

/// <summary>`duet bench recovery` on a small array: every key printed, every logged stripe settled (the
/// bench fails if a scrub after the settle finds a stripe whose parity disagrees).</summary>
public sealed class RecoveryBenchSmokeTests
{
    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task ASmallRunSettlesEveryLoggedStripeAndPrintsEveryKey()
    {
        using var output = new StringWriter();
        using var log = new StringWriter();
        int code = await RecoveryBench.RunAsync(new RecoveryBenchOptions { ArrayBytes = 32L << 20, LoggedStripes = [10, 100] }, output, log);
        Assert.True(code == 0, $"exit {code}\n{log}");
        var keys = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(' ')).ToDictionary(p => p[0], p => double.Parse(p[1], CultureInfo.InvariantCulture));
        foreach (var key in new[] { "recovery.logged10.ms", "recovery.logged100.ms", "recovery.fullcheck.ms" })
            Assert.True(keys.TryGetValue(key, out var v) && v > 0, $"{key} missing or not positive\n{output}\n{log}");
        Assert.Contains("100 logged stripes in 100 records", log.ToString());
    }

    [Fact]
    public async Task MoreLoggedStripesThanTheArrayHasIsAClearError()
    {
        using var output = new StringWriter();
        using var log = new StringWriter();
        Assert.Equal(2, await RecoveryBench.RunAsync(new RecoveryBenchOptions { ArrayBytes = 16L << 20, LoggedStripes = [1000] }, output, log));
        Assert.Contains("use a larger --size", log.ToString());
    }
}
