using System.Diagnostics;
using Duet.Host.Management;
using Duet.Interop.Tests.Support;
using Duet.Raid.Management;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// Failback with real processes (issue 5, item 4): `duet up`, kill -9 of A (the owner of arr0) under a light
/// load on vol1; B takes arr0 over and serves vol0, where more data is written; the supervisor restarts A, which
/// rejoins as standby and pairs. With `--failback auto` B gives arr0 back to A once the pair has been healthy
/// for the settle time; with `--failback manual` arr0 stays with B (the failback shown pending) until
/// `duet array move`. Everything acknowledged before and during reads back through A afterwards.
/// </summary>
[Trait("Area", "Interop")]
public sealed class FailbackProcessTests(ITestOutputHelper log) : IDisposable
{
    const long Before = 8L << 20;   // written through A before the kill
    const long During = 16L << 20;  // written through B while A is away (its first 8 MiB are Before's data)
    static readonly TimeSpan Settle = TimeSpan.FromSeconds(2);
    readonly string _dir = Directory.CreateTempSubdirectory("duet-failback-").FullName;
    readonly ProcessRunner _run = new(log);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string File(string name) => Path.Combine(_dir, name);

    async Task<StatusInfo?> StatusAsync(string controller)
    {
        try
        {
            using var client = new ManagementClient(Duet.Host.Controller.ControllerOptions.SocketFor(_dir, controller), TimeSpan.FromSeconds(5));
            return await client.StatusAsync();
        }
        catch (Exception e) when (e is ControllerUnavailableException or HttpRequestException or IOException or TaskCanceledException) { return null; }
    }

    async Task<StatusInfo> WaitForAsync(string controller, Func<StatusInfo, bool> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        StatusInfo? last = null;
        while (DateTime.UtcNow < deadline)
        {
            if (await StatusAsync(controller) is { } s)
            {
                last = s;
                if (condition(s)) return s;
            }
            await Task.Delay(200);
        }
        Assert.Fail($"waited {timeout.TotalSeconds:0} s for {what}; controller {controller} said: {(last is null ? "nothing" : System.Text.Json.JsonSerializer.Serialize(last))}");
        return null!;
    }

    /// <summary>arr0 as a controller lists it; null while it does not (a controller just started, or rejoining
    /// as standby, has not read the array yet): a wait asks again, an assertion on it fails.</summary>
    static ArrayInfo? Arr0(StatusInfo s) => s.Arrays.SingleOrDefault(a => a.Name == "arr0");

    /// <summary>Up to A's return: data written, A killed, B serving arr0 with more data, A restarted and paired.
    /// Returns `duet up`, the port block, and the hash of vol0's first <see cref="During"/> bytes.</summary>
    async Task<(BackgroundProcess Up, int Port, string Expected, string Vol1)> KillRestartAndRejoinAsync(string failback)
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        var up = BackgroundProcess.Start(DuetProcesses.Dotnet,
            [DuetProcesses.DuetDll, "up", "--data", _dir, "--failback", failback, "--failback-settle-ms", $"{Settle.TotalMilliseconds:F0}", .. TestData.DuetUpArgs(port)], log);
        await up.WaitForOutputAsync("duet: ready", TimeSpan.FromSeconds(90));
        await up.WaitForOutputAsync($"duet: failback {failback}", TimeSpan.FromSeconds(5));
        var a0 = Arr0(await WaitForAsync("A", s => Arr0(s) is not null, TimeSpan.FromSeconds(30), "A to list arr0"))!;
        Assert.Equal(("A", "A", null), (a0.Owner, a0.PreferredOwner, a0.Failback));

        // Before the kill: acknowledged through A (nbdcopy exits 0 only when every write and the flush were answered).
        TestData.WriteRandomFile(File("before.img"), Before, seed: 81);
        await _run.RunOkAsync("nbdcopy", "--requests=32", File("before.img"), $"nbd://127.0.0.1:{port}/vol0");

        // A light load on vol1 (B's) through B while A dies.
        var vol1 = TestData.WriteRandomFile(File("vol1.img"), 16L << 20, seed: 83);
        var load = _run.RunAsync("nbdcopy", ["--requests=8", File("vol1.img"), $"nbd://127.0.0.1:{port + 1}/vol1"], TimeSpan.FromSeconds(90));
        await Task.Delay(100);
        var killed = Stopwatch.StartNew();
        Assert.Equal(0, Posix.Kill(DuetProcesses.ControllerPid(_dir, "A"), 9));
        await WaitForAsync("B", s => Arr0(s) is { Owner: "B", State: not "peer" } && s.Controller?.Failover?.LastTakeover is not null,
            TimeSpan.FromSeconds(30), "B to take arr0 over");
        log.WriteLine($"B took arr0 over {killed.Elapsed.TotalMilliseconds:F0} ms after the kill");
        Assert.Equal(0, (await load).ExitCode);

        // During: A is away; B serves vol0 on its own endpoint. The first 8 MiB are before.img's again, so the
        // whole 16 MiB is what vol0 must hold at the end.
        using (var during = new FileStream(File("during.img"), FileMode.Create))
        {
            using (var before = System.IO.File.OpenRead(File("before.img"))) await before.CopyToAsync(during);
            var more = new byte[During - Before];
            new Random(82).NextBytes(more);
            await during.WriteAsync(more);
        }
        string expected = TestData.HashFile(File("during.img"));
        await _run.RunOkAsync("nbdcopy", "--requests=32", File("during.img"), $"nbd://127.0.0.1:{port + 1}/vol0");

        // The supervisor restarts A; A finds itself fenced, rejoins as standby, its fence is lifted and the pair forms.
        await up.WaitForOutputAsync("restarting controller A", TimeSpan.FromSeconds(30));
        await up.WaitForOutputAsync("port A is fenced at the shelf", TimeSpan.FromSeconds(60));
        return (up, port, expected, vol1);
    }

    async Task ReadBackAsync(int port, string volume, long bytes, string expected, string name)
    {
        await _run.RunOkAsync("nbdcopy", "--requests=32", $"nbd://127.0.0.1:{port}/{volume}", File(name));
        using (var f = new FileStream(File(name), FileMode.Open, FileAccess.ReadWrite)) f.SetLength(bytes);
        Assert.Equal(expected, TestData.HashFile(File(name)));
    }

    [Fact]
    [Trait("Claim", "FO-6")]
    [Trait("Claim", "FO-7")]
    public async Task WithAutoFailbackTheSurvivorGivesTheRestartedControllerItsArrayBackOnceThePairHasSettled()
    {
        var (up, port, expected, vol1) = await KillRestartAndRejoinAsync("auto");
        await using var _ = up;
        var rejoined = Stopwatch.StartNew();
        var a = await WaitForAsync("A", s => Arr0(s) is { Owner: "A", State: not "peer" }, TimeSpan.FromSeconds(90), "B to give arr0 back to A");
        log.WriteLine($"arr0 back on A {rejoined.Elapsed.TotalMilliseconds:F0} ms after A's restart was seen");
        Assert.Equal(("A", null), (Arr0(a)!.PreferredOwner, Arr0(a)!.Failback));
        await up.WaitForOutputAsync("failback: array arr0 is served by controller A again", TimeSpan.FromSeconds(10));
        var b = await WaitForAsync("B", s => s.Controller?.Failback is { State: "none" }, TimeSpan.FromSeconds(10), "B to see nothing pending");
        Assert.Equal(1, b.Controller!.Failback!.FailBacks);
        Assert.Equal("auto", b.Controller.Failback.Mode);
        // The failback waited for the pair: B moved arr0 only after it had paired with the restarted A (its
        // mirror resynchronised), never while A was standby, and no move was refused on the way.
        var output = up.Output;
        int restart = output.IndexOf("restarting controller A", StringComparison.Ordinal);
        int paired = output.IndexOf("paired with controller A", restart, StringComparison.Ordinal);
        int moving = output.IndexOf("failback: moving array arr0", StringComparison.Ordinal);
        foreach (var line in output.Split('\n').Where(l => l.Contains("restarting", StringComparison.Ordinal) || l.Contains("paired with", StringComparison.Ordinal)
                     || l.Contains("failback", StringComparison.Ordinal) || l.Contains("fence", StringComparison.Ordinal)))
            log.WriteLine($"timeline: {line}");
        Assert.True(restart > 0 && paired > restart && moving > paired, $"restart at {restart}, B paired with the new A at {paired}, failback began at {moving}");
        Assert.DoesNotContain("failback of array arr0 to controller A did not happen", output);

        // Before and during, through A, which serves vol0 again; vol1 through B.
        await ReadBackAsync(port, "vol0", During, expected, "out-a.img");
        await ReadBackAsync(port + 1, "vol1", 16L << 20, vol1, "out-vol1.img");

        // And it stays there: nothing moves arr0 again.
        await Task.Delay(Settle * 2);
        Assert.Equal("A", Arr0((await StatusAsync("B"))!)?.Owner);
        up.Terminate();
        await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
    }

    [Fact]
    [Trait("Claim", "FO-6")]
    [Trait("Claim", "FO-7")]
    public async Task WithManualFailbackTheArrayStaysWithTheSurvivorShownPendingUntilItIsMoved()
    {
        var (up, port, expected, vol1) = await KillRestartAndRejoinAsync("manual");
        await using var _ = up;
        // The pair is whole again (A active, both mirrors healthy): B shows the failback pending, and does not do it.
        var b = await WaitForAsync("B", s => s.Controller is { Mirror: "healthy", Failover.PeerFenced: false, Failback.State: "manual" },
            TimeSpan.FromSeconds(90), "the pair to form again with the failback pending");
        await WaitForAsync("A", s => s.Controller is { Mirror: "healthy", Failover.State: "active" }, TimeSpan.FromSeconds(30), "A to be active");
        Assert.Equal(["arr0"], b.Controller!.Failback!.Pending);
        await Task.Delay(Settle * 3);
        b = (await StatusAsync("B"))!;
        Assert.Equal(("B", "A"), (Arr0(b)?.Owner, Arr0(b)?.PreferredOwner));
        Assert.Contains("duet array move arr0 --to A", Arr0(b)!.Failback);
        Assert.Equal(0, b.Controller!.Failback!.FailBacks);

        // What an operator sees, and does.
        var status = await _run.RunOkAsync(DuetProcesses.Dotnet, DuetProcesses.DuetDll, "status", "--data", _dir);
        Assert.Contains("failback to A: pending (failback is manual): `duet array move arr0 --to A`", status);
        var list = await _run.RunOkAsync(DuetProcesses.Dotnet, DuetProcesses.DuetDll, "array", "list", "--data", _dir);
        Assert.Contains("arr0: failback to A: pending", list);
        await _run.RunOkAsync(DuetProcesses.Dotnet, DuetProcesses.DuetDll, "array", "move", "arr0", "--to", "A", "--data", _dir);
        var a = await WaitForAsync("A", s => Arr0(s) is { Owner: "A", State: not "peer" }, TimeSpan.FromSeconds(30), "A to serve arr0");
        Assert.Null(Arr0(a)!.Failback);

        // The preference is the operator's to set, on the array's owner (the CLI finds it): arr1 (B's) now prefers A,
        // which B shows pending at once; arr0 prefers nothing.
        var prefer = await _run.RunOkAsync(DuetProcesses.Dotnet, DuetProcesses.DuetDll, "array", "prefer", "arr1", "--owner", "A", "--data", _dir);
        Assert.Contains("array arr1 prefers controller A (served by B)", prefer);
        await WaitForAsync("B", s => s.Arrays.Single(x => x.Name == "arr1") is { Owner: "B", PreferredOwner: "A", Failback: not null }
            && s.Controller?.Failback?.Pending is ["arr1"], TimeSpan.FromSeconds(10), "B to show arr1's failback pending");
        var none = await _run.RunOkAsync(DuetProcesses.Dotnet, DuetProcesses.DuetDll, "array", "prefer", "arr0", "--owner", "none", "--data", _dir);
        Assert.Contains("array arr0 has no preferred owner", none);
        await WaitForAsync("B", s => Arr0(s)?.PreferredOwner == "none", TimeSpan.FromSeconds(10), "B to re-read arr0's superblocks");

        await ReadBackAsync(port, "vol0", During, expected, "out-a.img");
        await ReadBackAsync(port + 1, "vol1", 16L << 20, vol1, "out-vol1.img");
        up.Terminate();
        await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
    }
}
