using System.Globalization;
using Duet.Bench;

namespace Duet.Cli.Tests;

/// <summary>
/// Keeps `duet bench failover` from rotting: two short rounds against a real `duet up` child (the
/// second round needs the killed controller restarted, rejoined and given its array back) must
/// print every key, lose no acknowledged write, and report the survivor's phases in their order.
/// No time is judged.
/// </summary>
[Trait("Area", "Bench")]
public sealed class FailoverBenchSmokeTests
{
    [Fact]
    public async Task TwoRoundsPrintEveryKeyAndLoseNoAcknowledgedWrite()
    {
        using var output = new StringWriter();
        using var log = new StringWriter();
        var options = new FailoverBenchOptions
        {
            DuetCommand = Program.SelfCommand(), Rounds = 2, LoadSeconds = 0.5,
            Status = Program.BenchControllerStatusAsync, MoveArray = Program.BenchMoveArrayAsync,
        };

        int code = await FailoverBench.RunAsync(options, output, log);

        Assert.True(code == 0, $"exit {code}\nstdout:\n{output}\nstderr:\n{log}");
        var values = new Dictionary<string, double>();
        foreach (var line in output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith('#')) continue;
            var parts = line.Split(' ');
            Assert.True(parts.Length == 2, $"not a `key value` line: {line}");
            values[parts[0]] = double.Parse(parts[1], CultureInfo.InvariantCulture);
        }
        Assert.Equal(2.0, values["failover.rounds"]);
        Assert.Equal(0.0, values["failover.lost_writes"]);
        foreach (var key in new[] { "takeover_ms.p50", "takeover_ms.max", "detect_ms.p50", "fence_ms.p50", "adopt_ms.p50", "first_io_ms.p50" })
            Assert.True(values.TryGetValue($"failover.{key}", out var v) && v > 0, $"failover.{key} missing or not positive\nstdout:\n{output}");
        Assert.True(values.ContainsKey("failover.after_timeout_ms.p50"), $"failover.after_timeout_ms.p50 not printed\nstdout:\n{output}");
        for (int round = 1; round <= 2; round++)
        {
            Assert.True(values[$"failover.round.{round}.acked_writes"] > 0, $"round {round} acknowledged no write");
            Assert.Equal(0.0, values[$"failover.round.{round}.lost_writes"]);
            Assert.True(values[$"failover.round.{round}.detect_ms"] <= values[$"failover.round.{round}.fence_ms"]);
            Assert.True(values[$"failover.round.{round}.fence_ms"] <= values[$"failover.round.{round}.adopt_ms"]);
            Assert.True(values[$"failover.round.{round}.adopt_ms"] <= values[$"failover.round.{round}.first_io_ms"]);
        }
        Assert.Contains("# goal: takeover p50 <= 1200 ms", output.ToString(), StringComparison.Ordinal);
    }
}
