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

    static string Dotnet => DuetProcesses.Dotnet;
    static string Script => Path.Combine(AppContext.BaseDirectory, "Support", "libiscsi_pr.py");

    Task<ProcessResult> PrAsync(int portal, string initiator, params string[] what) => PrAsync(portal.ToString(System.Globalization.CultureInfo.InvariantCulture), initiator, what);

    /// <summary>libiscsi_pr.py against 127.0.0.1:PORTAL (PORT or PORT/LUN).</summary>
    Task<ProcessResult> PrAsync(string portal, string initiator, params string[] what) =>
        _run.RunAsync("python3", [Script, $"127.0.0.1:{portal}", Target, initiator, .. what], TimeSpan.FromSeconds(30));

    async Task<Duet.Raid.Management.StatusInfo> StatusAsync(string controller)
    {
        using var client = new Duet.Host.Management.ManagementClient(Duet.Host.Controller.ControllerOptions.SocketFor(_dir, controller), TimeSpan.FromSeconds(10));
        return await client.StatusAsync();
    }

    int ControllerPid(string name) => DuetProcesses.ControllerPid(_dir, name);

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
        // B has taken over when it says so (fenced, claimed, adopted), not merely when it answers.
        while ((await StatusAsync("B")) is not { Controller.Failover.LastTakeover: not null } b || b.Arrays.Single(x => x.Name == "arr0").Owner != "B")
        {
            Assert.True(killed.Elapsed < TimeSpan.FromSeconds(30), "B did not take over from the killed A");
            await Task.Delay(100);
        }
        // Its port group becomes active/optimized for vol0 (until then unavailable or transitioning: libiscsi's
        // login check sees NOT READY 04/0C or 04/0A).
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

    /// <summary>
    /// APTPL across a stop of the whole pair (a power loss of both controllers, as SPC-4 sees it): vol0's
    /// registration and reservation, made with APTPL through A, come back from A's file (DATA/pr-A.bin) and
    /// reach B when the pair forms; vol1's, made without APTPL through B, are gone.
    /// </summary>
    [Fact]
    [Trait("Claim", "ISCSI-FO")]
    public async Task AptplStateSurvivesAStopOfBothControllers_StateWithoutItDoesNot()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        int portalA = port + 7, portalB = port + 8;
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        await using (var up = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log))
        {
            await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));
            var kept = await PrAsync(portalA, "iqn.2026-12.test:host1", "register-reserve", "a1", "1", "aptpl");
            Assert.True(kept.ExitCode == 0, kept.ToString());
            var lost = await PrAsync($"{portalB}/1", "iqn.2026-12.test:host1", "register-reserve", "b1", "3");
            Assert.True(lost.ExitCode == 0, lost.ToString());
            Assert.True(File.Exists(Path.Combine(_dir, "pr-A.bin")));
            up.Terminate();
            await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
        }
        await using (var up = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log))
        {
            await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));
            foreach (var portal in new[] { portalA, portalB })
            {
                // B hears A's state when the pair forms (right after both start): allow it a moment.
                ProcessResult keys = null!;
                for (int i = 0; i < 50; i++)
                {
                    keys = await PrAsync(portal, "iqn.2026-12.test:host2", "keys");
                    if (keys.Stdout.Contains("keys a1", StringComparison.Ordinal)) break;
                    await Task.Delay(100);
                }
                Assert.Matches(@"generation \d+ keys a1\n", keys.Stdout);
                Assert.Equal("reservation a1 1\n", (await PrAsync(portal, "iqn.2026-12.test:host2", "reservation")).Stdout);
                Assert.Matches(@"generation \d+ keys \n", (await PrAsync($"{portal}/1", "iqn.2026-12.test:host2", "keys")).Stdout);
            }
            up.Terminate();
            await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
        }
    }

    /// <summary>Issue 7 item 3: qemu-img writes 256 MiB of random data to vol0 (owned by A) through B's portal (the
    /// non-optimized path: B forwards to A over the ICL); A is killed two seconds in. B holds the commands it cannot
    /// forward while it takes A over (NOT READY, unavailable or transitioning, is not answered during the hold), then
    /// serves them itself; qemu-img sees only the unit attentions of the ALUA change, retries them, and finishes. What
    /// it wrote reads back through B with the same hash.</summary>
    [Fact]
    [Trait("Claim", "ISCSI-FO")]
    [Trait("Claim", "FO-2")]
    public async Task KillingTheOwnerWhileQemuImgWritesThroughTheOtherPortalLosesNothing()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        int portalB = port + 8;
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        await using var up = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));
        var source = Path.Combine(_dir, "source.bin");
        TestData.WriteRandomFile(source, 256L << 20, seed: 77);
        string lun0 = $"iscsi://127.0.0.1:{portalB}/{Target}/0";

        var convert = _run.RunAsync("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", source, lun0], TimeSpan.FromSeconds(300));
        await Task.Delay(TimeSpan.FromSeconds(2));
        int a = ControllerPid("A");
        Assert.Equal(0, Posix.Kill(a, 9));
        log.WriteLine($"kill -9 of controller A (pid {a}) while qemu-img writes through B");
        var r = await convert;
        Assert.True(r.ExitCode == 0, r.ToString());

        var back = Path.Combine(_dir, "back.bin");
        var read = await _run.RunAsync("qemu-img", ["convert", "-f", "raw", "-O", "raw", lun0, back], TimeSpan.FromSeconds(300));
        Assert.True(read.ExitCode == 0, read.ToString());
        var head = Path.Combine(_dir, "head.bin");
        await using (var from = File.OpenRead(back))
        await using (var to = File.Create(head))
        {
            var buffer = new byte[1 << 20];
            for (long left = 256L << 20; left > 0;)
            {
                int n = await from.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)));
                Assert.True(n > 0, "the volume is shorter than what was written");
                await to.WriteAsync(buffer.AsMemory(0, n));
                left -= n;
            }
        }
        Assert.Equal(TestData.HashFile(source), TestData.HashFile(head));
        var b = await StatusAsync("B");
        Assert.Equal("B", b.Arrays.Single(x => x.Name == "arr0").Owner);
    }
}
