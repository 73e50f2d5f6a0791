using System.Globalization;
using Duet.Bench;

namespace Duet.Cli.Tests;

/// <summary>
/// Keeps `duet bench adapter` from rotting: a short run (1 s per fio run) against real `duet up`
/// and `duet adapter` children must print every figure as a positive number; both stall runs
/// kill the owning controller under fio, which must see no error. No figure is judged.
/// </summary>
[Trait("Area", "Bench")]
public sealed class AdapterBenchSmokeTests
{
    [Fact]
    public async Task ShortRunPrintsEveryKey()
    {
        using var output = new StringWriter();
        using var log = new StringWriter();
        var options = new AdapterBenchOptions { DuetCommand = Program.SelfCommand(), Status = Program.BenchControllerStatusAsync, Seconds = 1 };

        int code = await AdapterBench.RunAsync(options, output, log);

        Assert.True(code == 0, $"exit {code}\nstderr:\n{log}");
        var values = new Dictionary<string, double>();
        foreach (var line in output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split(' ');
            Assert.True(parts.Length == 2, $"not a `key value` line: {line}");
            values[parts[0]] = double.Parse(parts[1], CultureInfo.InvariantCulture);
        }
        foreach (var key in new[]
        {
            "adapter.randwrite4k.qd1.p50_us", "direct.randwrite4k.qd1.p50_us", "adapter.randwrite4k.qd32.iops", "direct.randwrite4k.qd32.iops",
            "adapter.randwrite4k.qd32.cpu_us_per_io", "adapter.link_bytes_per_write", "adapter.stall_ms.multicast", "adapter.stall_ms.pathfailover",
        })
        {
            Assert.True(values.TryGetValue(key, out var v), $"{key} not printed\nstderr:\n{log}");
            Assert.True(v > 0, $"{key} is {v}");
        }
        Assert.True(values.ContainsKey("adapter.randwrite4k.qd1.added_latency"));
    }
}
