using System.Globalization;
using Duet.Bench;

namespace Duet.Cli.Tests;

/// <summary>
/// Keeps `duet bench mirror` from rotting: part one only (the in-process pair over the TCP ICL),
/// with few writes, must print every count key, and the counts that the protocol fixes must come
/// out exactly: the small path's 3 doorbells and the large path's 4 for a 4 KiB write at depth 1
/// (MR-3, MR-2). Counts only; no time is judged.
/// </summary>
[Trait("Area", "Bench")]
public sealed class MirrorBenchSmokeTests
{
    [Fact]
    public async Task CountsPrintEveryKeyAndTheSeedPathsRingTheirDoorbells()
    {
        using var output = new StringWriter();
        using var log = new StringWriter();

        await MirrorBench.RunCountsAsync(new MirrorBenchOptions { Writes = 8, LargeWrites = 2 }, output, log);

        var values = new Dictionary<string, double>();
        foreach (var line in output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split(' ');
            Assert.True(parts.Length == 2, $"not a `key value` line: {line}");
            values[parts[0]] = double.Parse(parts[1], CultureInfo.InvariantCulture);
        }
        foreach (var (path, _) in MirrorBench.Paths)
            foreach (var (size, _) in MirrorBench.Sizes)
                foreach (int qd in MirrorBench.Depths)
                    foreach (var figure in new[] { "doorbells_per_write", "link_bytes_per_write" })
                    {
                        var key = $"mirror.{path}.{size}.qd{qd}.{figure}";
                        Assert.True(values.TryGetValue(key, out var v), $"{key} not printed\nstderr:\n{log}");
                        Assert.True(v > 0, $"{key} is {v}");
                    }
        Assert.Equal(3.0, values["mirror.small.4k.qd1.doorbells_per_write"]);
        Assert.Equal(4.0, values["mirror.large.4k.qd1.doorbells_per_write"]);
        Assert.Equal(2.0, values["mirror.batched.4k.qd1.doorbells_per_write"]);
        // Figure 7: more than two S/G elements go large, and the bench says so.
        Assert.Equal(4.0, values["mirror.small.64k.qd1.doorbells_per_write"]);
        Assert.Contains("# mirror.small.64k.qd1: figure 7 sent", log.ToString(), StringComparison.Ordinal);
    }
}
