using System.Diagnostics;
using Duet.Interop.Tests.Support;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// Issue 7 with real processes and a real initiator: `duet up`; libiscsi (the initiator of libiscsi-bin's
/// tools, driven by Support/libiscsi_pr.py since libiscsi-bin has no PR command) registers and takes a
/// write-exclusive reservation on vol0 through controller A's portal; through B's portal another host
/// reads the same key and reservation and is refused a write; A is killed with -9; once B has taken
/// over, B's portal still reports the key and the reservation and still enforces it.
/// </summary>
[Trait("Area", "Interop")]
public sealed class IscsiFailoverProcessTests(ITestOutputHelper log) : IDisposable
{
    const string Target = "iqn.2026-12.org.duet:array";
    readonly string _dir = Directory.CreateTempSubdirectory("duet-iscsi-fo-").FullName;
    readonly ProcessRunner _run = new(log);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Dotnet => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
    static string Script => Path.Combine(AppContext.BaseDirectory, "Support", "libiscsi_pr.py");

    Task<ProcessResult> PrAsync(int portal, string initiator, params string[] what) =>
        _run.RunAsync("python3", [Script, $"127.0.0.1:{portal}", Target, initiator, .. what], TimeSpan.FromSeconds(30));

    int ControllerPid(string name)
    {
        foreach (var p in Process.GetProcessesByName("dotnet"))
        {
            try
            {
                var cmd = File.ReadAllText($"/proc/{p.Id}/cmdline").Replace('\0', ' ');
                if (cmd.Contains($"controller --name {name} --data {_dir}", StringComparison.Ordinal)) return p.Id;
            }
            catch (IOException) { }
        }
        throw new InvalidOperationException($"no process of controller {name} for {_dir}");
    }

    [Fact]
    [Trait("Claim", "ISCSI-FO")]
    [Trait("Claim", "FO-1")]
    public async Task AReservationTakenThroughAIsSeenAndEnforcedThroughB_BeforeAndAfterAIsKilled()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        int portalA = port + 7, portalB = port + 8;
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        await using var up = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));

        var taken = await PrAsync(portalA, "iqn.2026-12.test:host1", "register-reserve", "a1", "1");
        Assert.True(taken.ExitCode == 0, taken.ToString());
        async Task SeenThroughBAsync()
        {
            var keys = await PrAsync(portalB, "iqn.2026-12.test:host2", "keys");
            Assert.True(keys.ExitCode == 0, keys.ToString());
            Assert.Matches(@"generation \d+ keys a1\n", keys.Stdout);
            var reservation = await PrAsync(portalB, "iqn.2026-12.test:host2", "reservation");
            Assert.Equal("reservation a1 1\n", reservation.Stdout);
            var write = await PrAsync(portalB, "iqn.2026-12.test:host2", "write");
            Assert.Equal("status 24\n", write.Stdout); // RESERVATION CONFLICT
        }
        await SeenThroughBAsync();

        Assert.Equal(0, Posix.Kill(ControllerPid("A"), 9));
        var killed = Stopwatch.StartNew();
        // Until B has taken over, B's port group is unavailable for vol0 (libiscsi's login check sees NOT READY 04/0C).
        ProcessResult? probe = null;
        while (killed.Elapsed < TimeSpan.FromSeconds(30))
        {
            probe = await PrAsync(portalB, "iqn.2026-12.test:host2", "write");
            if (probe.ExitCode == 0) break;
            await Task.Delay(200);
        }
        log.WriteLine($"B answered {killed.Elapsed.TotalMilliseconds:F0} ms after the kill: {probe}");
        Assert.True(probe is { ExitCode: 0 }, $"B did not serve vol0 after the kill: {probe}");
        await SeenThroughBAsync();
        up.Terminate();
        await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
    }
}
