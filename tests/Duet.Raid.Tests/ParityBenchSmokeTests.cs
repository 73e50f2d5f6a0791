using System.Globalization;
using Duet.Bench;

namespace Duet.Raid.Tests;

/// <summary>Runs the parity benchmark briefly: every figure is printed and positive. Says nothing about speed.</summary>
[Trait("Claim", "AW-7")]
public sealed class ParityBenchSmokeTests
{
    [Fact]
    public void ParityBench_prints_every_key_with_a_positive_figure()
    {
        var output = new StringWriter(CultureInfo.InvariantCulture);
        var log = new StringWriter(CultureInfo.InvariantCulture);

        int exitCode = ParityBench.Run(output, log, 0.01);

        Assert.True(exitCode == 0, log.ToString());
        var figures = output.ToString()
            .Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(line => line.Split(' '))
            .ToDictionary(parts => parts[0], parts => double.Parse(parts[1], CultureInfo.InvariantCulture));

        bool isal = figures["isal.available"] == 1;
        var keys = new List<string> { "xor.4+1.duet_gbps", "pq.4+2.duet_gbps", "pq.8+2.duet_gbps", "memcpy_gbps", "memcpy_256m_gbps" };
        if (isal) keys.AddRange(["xor.4+1.isal_gbps", "pq.4+2.isal_gbps", "pq.8+2.isal_gbps"]);
        foreach (var key in keys)
        {
            Assert.True(figures.ContainsKey(key), $"missing {key}");
            Assert.True(figures[key] > 0, $"{key} = {figures[key]}");
        }
    }
}
