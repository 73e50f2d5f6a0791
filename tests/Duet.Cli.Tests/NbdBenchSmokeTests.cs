using System.Globalization;
using Duet.Bench;
using Duet.Core;

namespace Duet.Cli.Tests;

/// <summary>
/// Keeps `duet bench nbd` from rotting: a tiny run (64 MiB, 1 s, 1 run) against a real
/// `duet up` child, nbdkit and qemu-nbd must print every figure for every server as a positive
/// number. Needs fio, nbdkit, qemu-nbd and nbdinfo on PATH. No figure is judged.
/// </summary>
[Trait("Area", "Bench")]
public sealed class NbdBenchSmokeTests
{
    [Fact]
    public async Task TinyRunPrintsEveryKeyForEveryServer()
    {
        using var output = new StringWriter();
        using var log = new StringWriter();
        var options = new NbdBenchOptions { DuetCommand = Program.SelfCommand(), SizeBytes = Units.MiB(64), Seconds = 1, Runs = 1 };

        int code = await NbdBench.RunAsync(options, output, log);

        Assert.True(code == 0, $"exit {code}\nstderr:\n{log}");
        var values = new Dictionary<string, double>();
        foreach (var line in output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split(' ');
            Assert.True(parts.Length == 2, $"not a `key value` line: {line}");
            values[parts[0]] = double.Parse(parts[1], CultureInfo.InvariantCulture);
        }
        foreach (var t in NbdBench.Tests)
        {
            foreach (var s in NbdBench.Servers)
                foreach (var figure in new[] { "iops", "mibps", "p99_us" })
                    AssertPositive(values, $"nbd.{t.Key}.{s}_{figure}", log);
            AssertPositive(values, $"nbd.{t.Key}.duet_vs_nbdkit", log);
            AssertPositive(values, $"nbd.{t.Key}.duet_vs_qemunbd", log);
        }
        AssertPositive(values, "memory.loaded_rss_anon_mib", log);
    }

    static void AssertPositive(Dictionary<string, double> values, string key, StringWriter log)
    {
        Assert.True(values.TryGetValue(key, out var v), $"{key} not printed\nstderr:\n{log}");
        Assert.True(v > 0, $"{key} is {v}");
    }
}
