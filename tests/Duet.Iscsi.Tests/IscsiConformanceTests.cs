using System.Diagnostics;
using System.Text.RegularExpressions;
using Duet.Core;
using Duet.Iscsi.Scsi;
using Xunit.Abstractions;

namespace Duet.Iscsi.Tests;

/// <summary>
/// libiscsi's conformance suite (iscsi-test-cu --dataloss) against the in-process target and the
/// real device server over real volumes. Records how many tests pass and fail; fails only if the
/// tool cannot run, does not finish, or the target stops serving (crash, hang, invariant broken).
/// </summary>
[Trait("Claim", "ISCSI")]
public sealed partial class IscsiConformanceTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(20);

    [Fact]
    public async Task Iscsi_test_cu_dataloss_runs_to_the_end_and_the_target_survives()
    {
        await using var fixture = await IscsiRealDevice.StartAsync(
            [new MemoryBlockVolume("vol0", 64 << 20), new MemoryBlockVolume("vol1", 64 << 20)]);
        // The second path (the tool's multipath URL, used by MultipathIO.*): the same device server behind a
        // second portal, as controller B's target port (portal group 2, relative target port 2: the ALUA view's
        // active/non-optimized group), so both paths are distinct I_T nexuses to the same LUN. Across a real
        // pair (B forwarding to A over the ICL) the suite runs in tests/Duet.Interop.Tests (IscsiConformancePairProcessTests).
        await using var pathB = await IscsiServerFixture.StartAsync(o => new IscsiServerOptions
        {
            Endpoint = o.Endpoint,
            PortalGroupTag = FixedScsiPortGroups.GroupB,
            RelativeTargetPort = FixedScsiPortGroups.PortB,
        }, fixture.Device);
        string url = $"iscsi://127.0.0.1:{fixture.EndPoint.Port}/{IscsiServerOptions.DefaultTargetName}/0";
        string url2 = $"iscsi://127.0.0.1:{pathB.EndPoint.Port}/{IscsiServerOptions.DefaultTargetName}/0";

        // DUET_ISCSI_TEST_CU=FAMILY[.SUITE[.TEST]] runs only those (for looking into one failure).
        string filter = Environment.GetEnvironmentVariable("DUET_ISCSI_TEST_CU") is { Length: > 0 } f ? $"--test={f} " : "";
        var info = new ProcessStartInfo("iscsi-test-cu", $"{filter}--dataloss --verbose {url} {url2}")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetTempPath(),
        };
        using var process = Process.Start(info) ?? throw new InvalidOperationException("could not start iscsi-test-cu");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using (var timeout = new CancellationTokenSource(Limit))
        {
            try
            {
                await process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                Assert.Fail($"iscsi-test-cu did not finish in {Limit} (target hung?)");
            }
        }
        string text = await stdout + await stderr;

        // CUnit's verbose mode: "Suite: NAME", then "  Test: NAME ...passed", or "  Test: NAME ..." with the
        // test's messages and a "FAILED" line. A suite may run more than once (per LUN setup): names are kept once.
        var failed = new List<string>();
        int passed = 0, skipped = 0;
        string suite = "";
        string? current = null;
        foreach (var raw in text.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            var s = SuiteLine().Match(line);
            if (s.Success)
            {
                suite = s.Groups[1].Value.Trim();
                current = null;
                continue;
            }
            var t = TestLine().Match(line);
            if (t.Success)
            {
                current = $"{suite}.{t.Groups[1].Value}";
                string rest = t.Groups[2].Value.Trim();
                if (rest.StartsWith("passed", StringComparison.Ordinal))
                {
                    passed++;
                    current = null;
                }
                else if (rest == "FAILED")
                {
                    if (!failed.Contains(current)) failed.Add(current);
                    current = null;
                }
                continue;
            }
            if (line.Trim() == "FAILED" && current is not null)
            {
                if (!failed.Contains(current)) failed.Add(current);
                current = null;
            }
            else if (line.Trim() == "passed" && current is not null)
            {
                passed++; // after messages such as "[SKIPPED] ... is not implemented" (CUnit counts those as passed)
                current = null;
            }
            if (line.Contains("[SKIPPED]", StringComparison.Ordinal)) skipped++;
        }
        output.WriteLine($"iscsi-test-cu --dataloss: {passed} test runs passed ({skipped} of them skipped as not implemented), {failed.Count} distinct tests failed (exit code {process.ExitCode})");
        foreach (var name in failed) output.WriteLine($"  FAILED {name}");
        var summary = SummaryLine().Match(text);
        if (summary.Success) output.WriteLine($"CUnit summary: {summary.Value.Trim()}");
        File.WriteAllText(Path.Combine(Path.GetTempPath(), "duet-iscsi-test-cu.txt"),
            $"{passed} passed ({skipped} skipped), {failed.Count} failed\n{string.Join("\n", failed)}\n\n{text}\n\ntarget log:\n{fixture.Logger}\n\nsecond portal's log:\n{pathB.Logger}");

        Assert.True(filter.Length > 0 || passed + failed.Count > 100, $"iscsi-test-cu ran almost nothing:\n{(text.Length > 4000 ? text[..4000] : text)}");
        Assert.DoesNotContain(fixture.Logger.Entries, e => e.Level == Microsoft.Extensions.Logging.LogLevel.Critical);
        Assert.DoesNotContain(fixture.Logger.Entries, e => e.Exception is InvariantViolationException);
        Assert.DoesNotContain(pathB.Logger.Entries, e => e.Level == Microsoft.Extensions.Logging.LogLevel.Critical);
        Assert.DoesNotContain(pathB.Logger.Entries, e => e.Exception is InvariantViolationException);
        Assert.Contains(pathB.Logger.Entries, e => e.EventId.Id == 13); // the tool logged in through the second portal
        // The target still serves a well-behaved session after all of that.
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        Assert.Equal(LoginStatus.Success, await client.LoginAsync(IscsiServerOptions.DefaultTargetName));
        var read = await client.ReadAsync(IscsiTestClient.Read10(0, 8), 4096);
        Assert.True(read.Status is 0 or 2); // GOOD, or a unit attention left by the suite's resets
        await client.LogoutAsync();
    }

    [GeneratedRegex(@"^Suite:\s*(.+)$")]
    private static partial Regex SuiteLine();

    [GeneratedRegex(@"^\s+Test:\s*(\S+)\s*\.\.\.(.*)$")]
    private static partial Regex TestLine();

    [GeneratedRegex(@"tests\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+")]
    private static partial Regex SummaryLine();
}
