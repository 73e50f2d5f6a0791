using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Duet.Interop.Tests.Support;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// `duet adapter` in front of `duet up`'s real processes, used by real NBD clients (nbdinfo,
/// nbdcopy, fio with crc32c verification): the adapter lists the pair's volumes, copies round
/// trip, and kill -9 of a controller in the middle of fio's writes costs fio nothing — with
/// multicast (both controllers get every command) and with plain path failover.
/// </summary>
[Trait("Area", "Interop")]
public sealed class AdapterProcessTests(ITestOutputHelper log) : IDisposable
{
    static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);
    readonly string _dir = Directory.CreateTempSubdirectory("duet-adapter-").FullName;
    readonly ProcessRunner _run = new(log);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    async Task<(BackgroundProcess Up, BackgroundProcess Adapter, int AdapterPort, int NbdPort)> StartAsync(bool pathFailover)
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        var up = BackgroundProcess.Start(DuetProcesses.Dotnet, [DuetProcesses.DuetDll, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        BackgroundProcess? adapter = null;
        try
        {
            await up.WaitForOutputAsync("duet: ready", StartTimeout);
            int adapterPort = TestData.FreePort();
            // Group 0: unit 0 of A (P + 2) and unit 0 of B (P + 4).
            string[] args = [DuetProcesses.DuetDll, "adapter", "--port", $"{adapterPort}", "--units", $"127.0.0.1:{port + 2},127.0.0.1:{port + 4}"];
            adapter = BackgroundProcess.Start(DuetProcesses.Dotnet, pathFailover ? [.. args, "--path-failover"] : args, log);
            await adapter.WaitForOutputAsync("duet adapter: ready", StartTimeout);
            return (up, adapter, adapterPort, port);
        }
        catch
        {
            if (adapter is not null) await adapter.DisposeAsync();
            await up.DisposeAsync();
            throw;
        }
    }

    static string Uri(int port, string volume) => $"nbd://127.0.0.1:{port}/{volume}";

    /// <summary>fio's crc32c-verified random writes through the adapter; <paramref name="kill"/>
    /// names the controller to kill -9 three seconds in. Returns fio's output.</summary>
    async Task<ProcessResult> FioUnderKillAsync(int adapterPort, string volume, string? kill, int seed)
    {
        var fio = _run.RunAsync("fio",
        [
            "--name=adapter", "--ioengine=nbd", $"--uri={Uri(adapterPort, volume)}", "--rw=randwrite", "--bs=4k", "--iodepth=16",
            "--size=32M", "--loops=4", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", $"--randseed={seed}",
        ], TimeSpan.FromSeconds(180));
        if (kill is not null)
        {
            await Task.Delay(TimeSpan.FromSeconds(3));
            int pid = DuetProcesses.ControllerPid(_dir, kill);
            Assert.Equal(0, Posix.Kill(pid, 9));
            log.WriteLine($"kill -9 controller {kill} (pid {pid}) at {DateTime.UtcNow:HH:mm:ss.fff}");
        }
        var r = await fio;
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("err= 0", r.Stdout);
        Assert.DoesNotContain("verify: bad", r.Stdout + r.Stderr);
        Assert.Contains("READ: ", r.Stdout); // it verified what it wrote
        return r;
    }

    [Fact]
    [Trait("Claim", "FO-3")]
    [Trait("Claim", "FO-5")]
    [Trait("Claim", "AW-2")]
    public async Task MulticastAdapterServesNbdClientsAndKill9OfEitherControllerUnderFioCostsTheClientNothing()
    {
        var (up, adapter, adapterPort, nbdPort) = await StartAsync(pathFailover: false);
        await using var _ = up;
        await using var __ = adapter;

        // The pair's volumes, listed through the adapter.
        var list = await _run.RunOkAsync("nbdinfo", "--list", $"nbd://127.0.0.1:{adapterPort}");
        Assert.Contains("export=\"vol0\"", list);
        Assert.Contains("export=\"vol1\"", list);

        // nbdcopy round trip through the adapter; the same bytes through controller A's own NBD.
        var source = Path.Combine(_dir, "source.bin");
        TestData.WriteRandomFile(source, 16 << 20, seed: 8);
        await _run.RunOkAsync("nbdcopy", source, Uri(adapterPort, "vol1"));
        var back = Path.Combine(_dir, "back.bin");
        await _run.RunOkAsync("bash", "-c", $"nbdcopy {Uri(adapterPort, "vol1")} - | head -c {16 << 20} > {back}");
        Assert.Equal(TestData.HashFile(source), TestData.HashFile(back));
        var direct = Path.Combine(_dir, "direct.bin");
        await _run.RunOkAsync("bash", "-c", $"nbdcopy {Uri(nbdPort, "vol1")} - | head -c {16 << 20} > {direct}");
        Assert.Equal(TestData.HashFile(source), TestData.HashFile(direct));

        // vol0 is on arr0, owned by A: kill -9 A while fio writes through the adapter.
        await FioUnderKillAsync(adapterPort, "vol0", kill: "A", seed: 11);
        await up.WaitForOutputAsync("duet: restarting controller A", TimeSpan.FromSeconds(60));
        await TestData.PollAsync(() => Task.FromResult(CountOf(up.Output, "duet controller A: ready")), n => n >= 2, TimeSpan.FromSeconds(60),
            "the restarted controller A to be ready");
        await TestData.PollAsync(() => Task.FromResult(CountOf(adapter.Output, "volume 'vol0': unit A0")), n => n >= 2, TimeSpan.FromSeconds(60),
            "the adapter to reattach vol0 on the restarted A");

        // Now B owns everything; kill -9 B under the same load.
        await FioUnderKillAsync(adapterPort, "vol0", kill: "B", seed: 12);

        // What nbdcopy wrote before both kills is still there.
        await _run.RunOkAsync("bash", "-c", $"nbdcopy {Uri(adapterPort, "vol1")} - | head -c {16 << 20} > {back}");
        Assert.Equal(TestData.HashFile(source), TestData.HashFile(back));
        Assert.DoesNotContain("failed after", adapter.Output);
    }

    static int CountOf(string text, string what)
    {
        int n = 0;
        for (int at = text.IndexOf(what, StringComparison.Ordinal); at >= 0; at = text.IndexOf(what, at + what.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    /// <summary>Writes through the adapter for <paramref name="seconds"/>, then sends
    /// <paramref name="signal"/> (kill -9, or SIGSTOP: a hung primary) to the pair's primary adapter
    /// process (pid <paramref name="primaryPid"/>) while the writers still run; reconnects and
    /// verifies every acknowledged write. Returns the connection that verified.</summary>
    async Task<PipelinedNbd> WriteKillReconnectVerifyAsync(WriteJournal journal, int adapterPort, int primaryPid, int seed, double seconds, int signal = 9)
    {
        var nbd = await PipelinedNbd.ConnectAsync(adapterPort, "vol0");
        using var stopWriters = new CancellationTokenSource();
        var writing = journal.RunAsync(nbd, writers: 8, seed, stopWriters.Token);
        await Task.Delay(TimeSpan.FromSeconds(seconds));
        long before = journal.Acknowledged;
        Assert.True(before > 50, $"only {before} writes acknowledged before the kill");
        Assert.Equal(0, Posix.Kill(primaryPid, signal));
        var killed = Stopwatch.StartNew();
        log.WriteLine($"kill -{signal} primary adapter pid {primaryPid} after {before} acknowledged writes");
        await writing.WaitAsync(TimeSpan.FromSeconds(30)); // every writer stops at its dead connection
        await nbd.DisposeAsync();

        // The client reconnects to the same port: the backup serves it.
        PipelinedNbd? again = null;
        while (again is null)
        {
            try
            {
                again = await PipelinedNbd.ConnectAsync(adapterPort, "vol0");
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException && killed.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(20);
            }
        }
        log.WriteLine($"reconnected {killed.ElapsedMilliseconds} ms after the kill; {journal.Acknowledged} writes acknowledged, {journal.Failed} unanswered");
        var problems = await journal.VerifyAsync(again);
        Assert.True(problems.Count == 0, $"{problems.Count} acknowledged writes lost or overwritten:\n{string.Join("\n", problems.Take(20))}");
        return again;
    }

    [Fact]
    [Trait("Claim", "AW-1")]
    [Trait("Claim", "AW-2")]
    public async Task AdapterPairKill9OfThePrimaryUnderLoadTheBackupTakesOverAndEveryAcknowledgedWriteVerifies()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        await using var up = BackgroundProcess.Start(DuetProcesses.Dotnet, [DuetProcesses.DuetDll, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        await up.WaitForOutputAsync("duet: ready", StartTimeout);
        int adapterPort = TestData.FreePort();
        string socket = Path.Combine(_dir, "adapter.ckpt");
        await using var pair = BackgroundProcess.Start(DuetProcesses.Dotnet,
            [DuetProcesses.DuetDll, "adapter", "--pair", "--port", $"{adapterPort}", "--units", $"127.0.0.1:{port + 2},127.0.0.1:{port + 4}", "--checkpoint-socket", socket], log);
        var ready = Regex.Match(await pair.WaitForOutputAsync("duet adapter: pair ready", StartTimeout), @"primary pid (\d+), backup pid (\d+)");
        Assert.True(ready.Success, pair.Output);
        int primaryPid = int.Parse(ready.Groups[1].Value, CultureInfo.InvariantCulture), backupPid = int.Parse(ready.Groups[2].Value, CultureInfo.InvariantCulture);

        // A journaling client writes 4 KiB blocks of vol0 through the adapter; kill -9 of the primary
        // adapter under that load. The backup takes the port over within a second and completes what
        // the primary left unfinished; after reconnecting, every acknowledged write reads back.
        var journal = new WriteJournal(baseOffset: 0, blocks: 4096);
        var again = await WriteKillReconnectVerifyAsync(journal, adapterPort, primaryPid, seed: 1, seconds: 3);
        var took = await pair.WaitForOutputAsync($"duet adapter: backup (pid {backupPid}) took over from pid {primaryPid}", TimeSpan.FromSeconds(30));
        var bound = Regex.Match(took, @"\(([\d.]+) ms after the primary was gone\)");
        Assert.True(bound.Success, took);
        Assert.True(double.Parse(bound.Groups[1].Value, CultureInfo.InvariantCulture) < 1000, $"the backup bound the port {bound.Groups[1].Value} ms after the primary was gone");

        // The supervisor started a new backup against the new primary; kill -9 that primary too.
        var second = Regex.Match(pair.Output, @"starting a new backup \(pid (\d+)\)");
        Assert.True(second.Success, pair.Output);
        int newBackup = int.Parse(second.Groups[1].Value, CultureInfo.InvariantCulture);
        await pair.WaitForOutputAsync($"[adapter {newBackup}] duet adapter: backup ready", StartTimeout);
        await again.DisposeAsync();
        again = await WriteKillReconnectVerifyAsync(journal, adapterPort, backupPid, seed: 2, seconds: 2);
        await pair.WaitForOutputAsync($"duet adapter: backup (pid {newBackup}) took over from pid {backupPid}", TimeSpan.FromSeconds(30));
        await again.DisposeAsync();

        // A primary that hangs (SIGSTOP) keeps its sockets open: its backup hears no heartbeat for
        // 2 s, kills it (so it cannot wake up and write), and takes over.
        int third = int.Parse(Regex.Matches(pair.Output, @"starting a new backup \(pid (\d+)\)")[^1].Groups[1].Value, CultureInfo.InvariantCulture);
        await pair.WaitForOutputAsync($"[adapter {third}] duet adapter: backup ready", StartTimeout);
        again = await WriteKillReconnectVerifyAsync(journal, adapterPort, newBackup, seed: 3, seconds: 2, signal: Posix.SIGSTOP);
        await pair.WaitForOutputAsync($"duet adapter: backup (pid {third}) took over from pid {newBackup}", TimeSpan.FromSeconds(30));
        Assert.Contains($"the primary adapter (pid {newBackup}) is gone: sent nothing for 2000 ms", pair.Output);
        await again.DisposeAsync();

        // nbdinfo and nbdcopy through the pair's fourth adapter process.
        Assert.Contains("export=\"vol0\"", await _run.RunOkAsync("nbdinfo", "--list", $"nbd://127.0.0.1:{adapterPort}"));
        var source = Path.Combine(_dir, "source.bin");
        TestData.WriteRandomFile(source, 4 << 20, seed: 9);
        await _run.RunOkAsync("nbdcopy", source, Uri(adapterPort, "vol1"));
        var back = Path.Combine(_dir, "back.bin");
        await _run.RunOkAsync("bash", "-c", $"nbdcopy {Uri(adapterPort, "vol1")} - | head -c {4 << 20} > {back}");
        Assert.Equal(TestData.HashFile(source), TestData.HashFile(back));
        Assert.DoesNotContain("failed after", pair.Output);

        // SIGTERM stops the pair, the backup first: nobody takes over on the way down.
        pair.Terminate();
        Assert.Equal(0, await pair.WaitForExitAsync(TimeSpan.FromSeconds(90)));
        Assert.Contains("duet adapter: pair stopped", pair.Output);
        Assert.Equal(3, Regex.Matches(pair.Output, "duet adapter: took over").Count);
    }

    [Fact]
    [Trait("Claim", "FO-6")]
    public async Task PathFailoverAdapterSendsToTheOwnerAndMovesToTheOtherControllerWhenTheOwnerIsKilledUnderFio()
    {
        var (up, adapter, adapterPort, _) = await StartAsync(pathFailover: true);
        await using var __ = up;
        await using var ___ = adapter;
        Assert.Contains("path failover between", adapter.Output);

        var stopwatch = Stopwatch.StartNew();
        var fio = await FioUnderKillAsync(adapterPort, "vol0", kill: "A", seed: 21);
        log.WriteLine($"fio finished {stopwatch.ElapsedMilliseconds} ms after it started");
        Assert.Contains("volume 'vol0': path from", adapter.Output);
    }
}
