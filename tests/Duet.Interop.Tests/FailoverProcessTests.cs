using System.Diagnostics;
using Duet.Host.Management;
using Duet.Interop.Tests.Support;
using Duet.Raid.Management;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// Issue 5 with real processes: `duet up` runs the shelf and both controllers; `kill -9` of the
/// owning controller; the survivor fences it at the shelf, takes its array over and serves the
/// volume on its own NBD endpoint; every write acknowledged before the kill reads back; the killed
/// controller is restarted by the supervisor, finds itself fenced and rejoins as standby.
/// </summary>
[Trait("Area", "Interop")]
public sealed class FailoverProcessTests(ITestOutputHelper log) : IDisposable
{
    const long Written = 16L << 20;
    readonly string _dir = Directory.CreateTempSubdirectory("duet-failover-").FullName;
    readonly ProcessRunner _run = new(log);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Dotnet => DuetProcesses.Dotnet;

    async Task<StatusInfo> StatusAsync(string controller)
    {
        using var client = new ManagementClient(Duet.Host.Controller.ControllerOptions.SocketFor(_dir, controller), TimeSpan.FromSeconds(10));
        return await client.StatusAsync();
    }

    int ControllerPid(string name) => DuetProcesses.ControllerPid(_dir, name);

    [Fact]
    [Trait("Claim", "FO-1")]
    [Trait("Claim", "FO-2")]
    [Trait("Claim", "FO-7")]
    public async Task Kill9OfTheOwnerLosesNoAcknowledgedWriteAndTheSurvivorServesTheVolumeOnItsOwnEndpoint()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts); // NBD, host units, ICL: port .. port + 6
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        await using var up = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));

        // Acknowledged writes: nbdcopy exits 0 only when every write and the final flush were answered.
        var input = Path.Combine(_dir, "in.img");
        var expected = TestData.WriteRandomFile(input, Written, seed: 55);
        await _run.RunOkAsync("nbdcopy", "--requests=32", input, $"nbd://127.0.0.1:{port}/vol0");
        Assert.Equal("A", (await StatusAsync("B")).Arrays.Single(a => a.Name == "arr0").Owner);

        // More load in flight at the kill (its writes are not acknowledged, so not checked).
        var more = Path.Combine(_dir, "more.img");
        TestData.WriteRandomFile(more, 32L << 20, seed: 56);
        var load = _run.RunAsync("nbdcopy", ["--requests=32", more, $"nbd://127.0.0.1:{port}/vol1"], TimeSpan.FromSeconds(60));
        await Task.Delay(200);
        int a = ControllerPid("A");
        var killed = Stopwatch.StartNew();
        Assert.Equal(0, Posix.Kill(a, 9));

        // The survivor serves vol0 on its own endpoint, with every acknowledged write.
        var output = Path.Combine(_dir, "out.img");
        ProcessResult? read = null;
        while (killed.Elapsed < TimeSpan.FromSeconds(20))
        {
            File.Delete(output);
            read = await _run.RunAsync("nbdcopy", ["--requests=32", $"nbd://127.0.0.1:{port + 1}/vol0", output], TimeSpan.FromSeconds(30));
            if (read.ExitCode == 0) break;
            await Task.Delay(100);
        }
        log.WriteLine($"vol0 read back through B {killed.Elapsed.TotalMilliseconds:F0} ms after the kill");
        Assert.True(read is { ExitCode: 0 }, $"B did not serve vol0 after the kill: {read}");
        using (var f = new FileStream(output, FileMode.Open, FileAccess.ReadWrite)) f.SetLength(Written);
        Assert.Equal(expected, TestData.HashFile(output));
        await load;

        var b = await StatusAsync("B");
        Assert.Equal("B", b.Arrays.Single(x => x.Name == "arr0").Owner);
        Assert.NotNull(b.Controller!.Failover);
        Assert.True(b.Controller.Failover!.Takeovers >= 1);
        Assert.Contains("arr0", b.Controller.Failover.LastTakeover!.Arrays);
        // kill -9 closed A's connections to the shelf: B took over on that and the quiet ICL, not after the whole
        // heartbeat timeout.
        Assert.Contains("closed every connection to the shelf", b.Controller.Failover.LastTakeover.Reason);
        // Both on one host: the shared-memory ICL proved A's process gone, so B waited out no lease (FO-7).
        Assert.True(b.Controller.Failover.LastTakeover.PeerProcessGone);

        // The supervisor restarts A only after the takeover; A finds its port fenced and comes back as standby.
        await up.WaitForOutputAsync("restarting controller A", TimeSpan.FromSeconds(30));
        await up.WaitForOutputAsync("port A is fenced at the shelf", TimeSpan.FromSeconds(60));
        up.Terminate();
        await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
    }

    /// <summary>
    /// kill -STOP of the owner: the survivor takes over (fences it at the shelf) and serves newer data;
    /// kill -CONT: the woken controller answers no NBD request with stale data, its late write (sent to
    /// it while it was stopped) never reaches the drives, it steps down (exit code 3) and is restarted
    /// as standby, and the data is the survivor's.
    /// </summary>
    [Fact]
    [Trait("Claim", "FO-2")]
    [Trait("Claim", "FO-7")]
    public async Task AStoppedOwnerThatWakesUpAfterTheTakeoverServesNothingStaleWritesNothingAndStepsDown()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        await using var up = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));
        const long Bytes = 8L << 20;
        string File(string name) => Path.Combine(_dir, name);
        var old = TestData.WriteRandomFile(File("old.img"), Bytes, seed: 71);
        var newer = TestData.WriteRandomFile(File("new.img"), Bytes, seed: 72);
        TestData.WriteRandomFile(File("late.img"), Bytes, seed: 73);
        await _run.RunOkAsync("nbdcopy", "--requests=32", File("old.img"), $"nbd://127.0.0.1:{port}/vol0");

        int a = ControllerPid("A");
        Assert.Equal(0, Posix.Kill(a, 19)); // SIGSTOP
        try
        {
            // Sent to A while it is stopped: the connection waits in A's backlog.
            var late = _run.RunAsync("nbdcopy", ["--requests=32", File("late.img"), $"nbd://127.0.0.1:{port}/vol0"], TimeSpan.FromSeconds(90));
            var staleRead = _run.RunAsync("nbdcopy", ["--requests=32", $"nbd://127.0.0.1:{port}/vol0", File("through-a.img")], TimeSpan.FromSeconds(90));

            // B takes over and serves the newer data on its own endpoint.
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            // The takeover is done when B reports it (fenced, claimed, assembled, adopted), not merely begun.
            while ((await StatusAsync("B")) is not { Controller.Failover.LastTakeover: not null } b || b.Arrays.Single(x => x.Name == "arr0").Owner != "B")
            {
                Assert.True(DateTime.UtcNow < until, "B did not take over from the stopped A");
                await Task.Delay(100);
            }
            await _run.RunOkAsync("nbdcopy", "--requests=32", File("new.img"), $"nbd://127.0.0.1:{port + 1}/vol0");
            // A stopped process is not a gone one: B waited out the lease A might still hold (FO-7).
            Assert.False((await StatusAsync("B")).Controller!.Failover!.LastTakeover!.PeerProcessGone);

            Assert.Equal(0, Posix.Kill(a, 18)); // SIGCONT
            await up.WaitForOutputAsync("duet: controller A exited with code 3", TimeSpan.FromSeconds(30));
            var lateResult = await late;
            var readResult = await staleRead;
            log.WriteLine($"late write through A: exit {lateResult.ExitCode}; read through A: exit {readResult.ExitCode}");
            // Whatever A answered, it was not the old data.
            if (readResult.ExitCode == 0)
            {
                using (var f = new FileStream(File("through-a.img"), FileMode.Open, FileAccess.ReadWrite)) f.SetLength(Bytes);
                Assert.NotEqual(old, TestData.HashFile(File("through-a.img")));
            }
        }
        finally { Posix.Kill(a, 18); }

        // The drives hold B's data: A's late write never landed.
        await _run.RunOkAsync("nbdcopy", "--requests=32", $"nbd://127.0.0.1:{port + 1}/vol0", File("out.img"));
        using (var f = new FileStream(File("out.img"), FileMode.Open, FileAccess.ReadWrite)) f.SetLength(Bytes);
        Assert.Equal(newer, TestData.HashFile(File("out.img")));
        await up.WaitForOutputAsync("port A is fenced at the shelf", TimeSpan.FromSeconds(60));
        up.Terminate();
        await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
    }
}
