using System.Text.RegularExpressions;
using Duet.Interop.Tests.Support;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// Issue 7 item 3 across the pair: libiscsi's conformance suite (iscsi-test-cu --dataloss) against `duet up`,
/// with vol0 through controller A's portal (the owner) as the tool's device and the same LUN through B's portal
/// (B forwards to A over the ICL) as its multipath URL. The MultipathIO suite (I/O, LUN RESET, COMPARE AND WRITE
/// through both paths) must pass; the rest is recorded (Duet.Iscsi.Tests' IscsiConformanceTests checks the device
/// server and transport on their own), and the pair must still serve through both portals afterwards.
/// </summary>
[Trait("Area", "Interop")]
[Trait("Claim", "ISCSI")]
public sealed partial class IscsiConformancePairProcessTests(ITestOutputHelper log) : IDisposable
{
    const string Target = "iqn.2026-12.org.duet:array";
    readonly string _dir = Directory.CreateTempSubdirectory("duet-iscsi-cu-").FullName;
    readonly ProcessRunner _run = new(log);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    [Trait("Claim", "ISCSI-FO")]
    public async Task Iscsi_test_cu_dataloss_through_both_controllers_portals_passes_the_multipath_suite()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        string urlA = $"iscsi://127.0.0.1:{port + 7}/{Target}/0", urlB = $"iscsi://127.0.0.1:{port + 8}/{Target}/0";
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        await using var up = BackgroundProcess.Start(DuetProcesses.Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));

        // DUET_ISCSI_TEST_CU=FAMILY[.SUITE[.TEST]] runs only those (for looking into one failure).
        string? filter = Environment.GetEnvironmentVariable("DUET_ISCSI_TEST_CU") is { Length: > 0 } f ? f : null;
        string[] args = [.. filter is null ? Array.Empty<string>() : [$"--test={filter}"], "--dataloss", "--verbose", urlA, urlB];
        var r = await _run.RunAsync("iscsi-test-cu", args, TimeSpan.FromMinutes(20));
        string text = r.Stdout + r.Stderr;
        var runs = Parse(text);
        var failed = runs.Where(x => !x.Passed).Select(x => x.Name).Distinct().ToList();
        int skipped = text.Split('\n').Count(l => l.Contains("[SKIPPED]", StringComparison.Ordinal) && !l.TrimStart().StartsWith("Test:", StringComparison.Ordinal));
        log.WriteLine($"iscsi-test-cu --dataloss through A and B: {runs.Count(x => x.Passed)} of {runs.Count} test runs passed, {failed.Count} distinct tests failed (exit code {r.ExitCode})");
        foreach (var name in failed) log.WriteLine($"  FAILED {name}");
        if (SummaryLine().Match(text) is { Success: true } summary) log.WriteLine($"CUnit summary: {summary.Value.Trim()}");
        File.WriteAllText(Path.Combine(Path.GetTempPath(), "duet-iscsi-test-cu-pair.txt"),
            $"{runs.Count(x => x.Passed)} of {runs.Count} passed, {failed.Count} failed\n{string.Join("\n", failed)}\n\n{text}\n\nduet up:\n{up.Output}");

        Assert.True(filter is not null || runs.Count > 100, $"iscsi-test-cu ran almost nothing:\n{(text.Length > 4000 ? text[..4000] : text)}");
        Assert.Contains("found matching LU device identifier for all (2) paths", text, StringComparison.Ordinal);
        if (filter is null)
            foreach (var test in new[] { "Simple", "Reset", "CompareAndWrite", "CompareAndWriteAsync" })
                Assert.Contains(runs, x => x.Name == $"MultipathIO.{test}" && x.Passed);
        Assert.DoesNotContain(failed, name => name.StartsWith("MultipathIO.", StringComparison.Ordinal));

        // Both portals still serve the LUN.
        foreach (var url in new[] { urlA, urlB })
        {
            var inq = await _run.RunAsync("iscsi-inq", [url], TimeSpan.FromSeconds(30));
            Assert.True(inq.ExitCode == 0, inq.ToString());
        }
        up.Terminate();
        await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
    }

    /// <summary>CUnit's verbose output: "Suite: NAME", then "  Test: NAME ...passed", or "  Test: NAME ..." with the
    /// test's messages and a closing "passed" or "FAILED" line. One entry per run (suites may run more than once).</summary>
    static List<(string Name, bool Passed)> Parse(string text)
    {
        var runs = new List<(string, bool)>();
        string suite = "";
        string? current = null;
        foreach (var raw in text.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            if (SuiteLine().Match(line) is { Success: true } s)
            {
                suite = s.Groups[1].Value.Trim();
                current = null;
                continue;
            }
            if (TestLine().Match(line) is { Success: true } t)
            {
                current = $"{suite}.{t.Groups[1].Value}";
                string rest = t.Groups[2].Value.Trim();
                if (rest.StartsWith("passed", StringComparison.Ordinal) || rest == "FAILED")
                {
                    runs.Add((current, rest != "FAILED"));
                    current = null;
                }
                continue;
            }
            if (current is not null && line.Trim() is "passed" or "FAILED")
            {
                runs.Add((current, line.Trim() == "passed"));
                current = null;
            }
        }
        return runs;
    }

    [GeneratedRegex(@"^Suite:\s*(.+)$")]
    private static partial Regex SuiteLine();

    [GeneratedRegex(@"^\s+Test:\s*(\S+)\s*\.\.\.(.*)$")]
    private static partial Regex TestLine();

    [GeneratedRegex(@"tests\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+")]
    private static partial Regex SummaryLine();
}
