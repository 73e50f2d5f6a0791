using System.Globalization;
using Duet.Bench;
using Duet.Core;

namespace Duet.Cli.Tests;

/// <summary>
/// Keeps `duet bench iscsi` from rotting: a tiny run (32 MiB, 1 s per point, 1 run) against a
/// real `duet up` child and tgtd must print every figure for both targets as a positive number,
/// and Duet's writes must have gone through the mirror. Needs iscsi-perf, iscsi-readcapacity16
/// (libiscsi-bin), qemu-img with its iscsi driver (qemu-utils, qemu-block-extra) and tgtd / tgtadm
/// (tgt), which test.sh installs; tgtd must run as root. No figure is judged.
/// </summary>
[Trait("Area", "Bench")]
public sealed class IscsiBenchSmokeTests
{
    [Fact]
    public async Task TinyRunPrintsEveryKeyForBothTargets()
    {
        var missing = IscsiBench.MissingTools();
        Assert.True(missing.Count == 0, $"not installed (test.sh installs them): {string.Join(", ", missing)}");
        using var output = new StringWriter();
        using var log = new StringWriter();
        var options = new IscsiBenchOptions
        {
            DuetCommand = Program.SelfCommand(), SizeBytes = Units.MiB(32), Seconds = 1, Runs = 1, Counters = Program.PairCountersAsync,
        };

        int code = await IscsiBench.RunAsync(options, output, log);

        Assert.True(code == 0, $"exit {code}\nstderr:\n{log}");
        var values = new Dictionary<string, double>();
        foreach (var line in output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split(' ');
            Assert.True(parts.Length == 2, $"not a `key value` line: {line}");
            values[parts[0]] = double.Parse(parts[1], CultureInfo.InvariantCulture);
        }
        foreach (var t in IscsiBench.Tests)
        {
            foreach (var s in IscsiBench.Targets)
                foreach (var figure in new[] { "iops", "mibps" })
                    AssertPositive(values, $"iscsi.{t.Key}.{s}_{figure}", log);
            AssertPositive(values, $"iscsi.{t.Key}.duet_vs_tgt", log);
        }
        Assert.Equal(32.0, values["iscsi.size_mib"]);
        Assert.Equal(6.0, values["iscsi.duet_raid_level"]);
        AssertPositive(values, "iscsi.duet_mirrored_elements", log);
        Assert.True(values.ContainsKey("iscsi.duet_write_throughs"), $"iscsi.duet_write_throughs not printed\nstderr:\n{log}");
    }

    static void AssertPositive(Dictionary<string, double> values, string key, StringWriter log)
    {
        Assert.True(values.TryGetValue(key, out var v), $"{key} not printed\nstderr:\n{log}");
        Assert.True(v > 0, $"{key} is {v}");
    }
}
