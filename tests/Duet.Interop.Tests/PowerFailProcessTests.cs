using System.Diagnostics;
using System.Text.Json;
using Duet.Host.Management;
using Duet.Interop.Tests.Support;
using Duet.Raid.Management;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// AW-6 with real processes: `duet up` runs the shelf and both controllers; NBD clients write (a
/// journaling client on each controller, nbdcopy before); `duet power-fail` makes both controllers
/// run their power-fail windows at once and stop — within the window — and `duet up` stops the shelf
/// and exits; the next `duet up` replays the NVRAM, settles the logged stripes and serves every
/// acknowledged write. Then SIGTERM of `duet up` under load does the same.
/// </summary>
[Trait("Area", "Interop")]
[Trait("Claim", "AW-6")]
public sealed class PowerFailProcessTests(ITestOutputHelper log) : IDisposable
{
    static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);
    static readonly TimeSpan Window = TimeSpan.FromSeconds(5);
    // Generous: the window is 5 s; the processes must be gone well before this.
    static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(30);
    const long Copied = 16L << 20;
    const long JournalBase = 64L << 20; // the journals' blocks start here, past what nbdcopy wrote

    readonly string _dir = Directory.CreateTempSubdirectory("duet-powerfail-").FullName;
    readonly ProcessRunner _run = new(log);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    async Task<BackgroundProcess> UpAsync(int port)
    {
        var up = BackgroundProcess.Start(DuetProcesses.Dotnet,
            [DuetProcesses.DuetDll, "up", "--data", _dir, "--power-fail-window", $"{Window.TotalSeconds}s", .. TestData.DuetUpArgs(port)], log);
        try
        {
            await up.WaitForOutputAsync("duet: ready", StartTimeout);
            return up;
        }
        catch
        {
            await up.DisposeAsync();
            throw;
        }
    }

    /// <summary>Journaling writers on vol0 through A and on vol1 through B, until the connections die.</summary>
    static async Task<(Task Writing, PipelinedNbd A, PipelinedNbd B)> LoadAsync(int port, WriteJournal onA, WriteJournal onB, int seed, CancellationToken stop)
    {
        var a = await PipelinedNbd.ConnectAsync(port, "vol0");
        var b = await PipelinedNbd.ConnectAsync(port + 1, "vol1");
        return (Task.WhenAll(onA.RunAsync(a, writers: 8, seed, stop), onB.RunAsync(b, writers: 8, seed + 1, stop)), a, b);
    }

    async Task VerifyAsync(int port, WriteJournal onA, WriteJournal onB, string copiedHash)
    {
        await using (var a = await PipelinedNbd.ConnectAsync(port, "vol0"))
        {
            var problems = await onA.VerifyAsync(a);
            Assert.True(problems.Count == 0, $"vol0: {problems.Count} acknowledged writes lost:\n{string.Join("\n", problems.Take(20))}");
        }
        await using (var b = await PipelinedNbd.ConnectAsync(port + 1, "vol1"))
        {
            var problems = await onB.VerifyAsync(b);
            Assert.True(problems.Count == 0, $"vol1: {problems.Count} acknowledged writes lost:\n{string.Join("\n", problems.Take(20))}");
        }
        var output = Path.Combine(_dir, "out.img");
        File.Delete(output);
        await _run.RunOkAsync("nbdcopy", "--requests=32", $"nbd://127.0.0.1:{port + 1}/vol1", output);
        using (var f = new FileStream(output, FileMode.Open, FileAccess.ReadWrite)) f.SetLength(Copied);
        Assert.Equal(copiedHash, TestData.HashFile(output));
        File.Delete(output);
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task DuetPowerFailStopsBothControllersWithinTheWindow_SigtermDoesTheSame_AndTheNextStartServesEveryAcknowledgedWrite()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        var onA = new WriteJournal(JournalBase, blocks: 4096);
        var onB = new WriteJournal(JournalBase, blocks: 4096);
        var input = Path.Combine(_dir, "in.img");
        var copiedHash = TestData.WriteRandomFile(input, Copied, seed: 61);

        // 1. `duet power-fail` under load.
        await using (var up = await UpAsync(port))
        {
            await _run.RunOkAsync("nbdcopy", "--requests=32", input, $"nbd://127.0.0.1:{port + 1}/vol1"); // every write acknowledged
            using var stop = new CancellationTokenSource();
            var (writing, a, b) = await LoadAsync(port, onA, onB, seed: 1, stop.Token);
            await Task.Delay(TimeSpan.FromSeconds(2));
            Assert.True(onA.Acknowledged > 50 && onB.Acknowledged > 50, $"only {onA.Acknowledged} + {onB.Acknowledged} writes acknowledged before the power failed");

            var clock = Stopwatch.StartNew();
            var result = await _run.RunAsync(DuetProcesses.Dotnet, [DuetProcesses.DuetDll, "power-fail", "--data", _dir, "--json"], StopTimeout);
            Assert.True(result.ExitCode == 0, result.ToString());
            var reports = JsonSerializer.Deserialize(result.Stdout, ManagementJsonContext.Default.IReadOnlyListPowerFailReport)!;
            Assert.Equal(["A", "B"], reports.Select(r => r.Controller).Order());
            foreach (var r in reports)
            {
                Assert.Equal("pair", r.Scope);
                Assert.Equal(Window.TotalMilliseconds, r.WindowMs);
                // Bounded: the report's own clock (with slack for a loaded machine), and the command's.
                Assert.True(r.ElapsedMs <= r.WindowMs + 1000, $"controller {r.Controller}: window took {r.ElapsedMs} ms");
                Assert.Equal(r.HostCommandsInFlight, r.HostCommandsFinished + r.HostCommandsFailed + r.HostCommandsUnfinished);
            }
            // The pair went down together: neither took the other over.
            Assert.All(reports, r => Assert.True(r.PeerTold));
            Assert.True(reports.Sum(r => r.DirtyElementsKept) > 0, "the load left dirty data in the caches, kept in NVRAM");

            // Both controllers stopped, then `duet up` stopped the shelf and exited.
            Assert.Equal(0, await up.WaitForExitAsync(StopTimeout));
            log.WriteLine($"duet power-fail to duet up gone: {clock.ElapsedMilliseconds} ms");
            Assert.True(clock.Elapsed < StopTimeout);
            Assert.Contains("duet: both controllers stopped after their power-fail windows", up.Output);
            Assert.Contains("duet: stopped", up.Output);
            Assert.DoesNotContain("taking over", up.Output);
            Assert.DoesNotContain("restarting controller", up.Output);
            await writing.WaitAsync(StopTimeout); // every writer stops at its dead connection
            await a.DisposeAsync();
            await b.DisposeAsync();
            log.WriteLine($"acknowledged: {onA.Acknowledged} on A, {onB.Acknowledged} on B; unanswered: {onA.Failed + onB.Failed}");
        }

        // 2. The next start replays the NVRAM and serves everything acknowledged; then SIGTERM under load.
        await using (var up = await UpAsync(port))
        {
            Assert.Contains("cache elements from NVRAM region 1", up.Output);
            await VerifyAsync(port, onA, onB, copiedHash);

            using var stop = new CancellationTokenSource();
            var (writing, a, b) = await LoadAsync(port, onA, onB, seed: 3, stop.Token);
            await Task.Delay(TimeSpan.FromSeconds(2));
            long before = onA.Acknowledged + onB.Acknowledged;
            up.Terminate();
            Assert.Equal(0, await up.WaitForExitAsync(StopTimeout));
            Assert.Contains("duet: controller A: power-fail window (pair)", up.Output);
            Assert.Contains("duet: controller B: power-fail window (pair)", up.Output);
            Assert.Contains("duet: stopped", up.Output);
            Assert.DoesNotContain("taking over", up.Output);
            await writing.WaitAsync(StopTimeout);
            await a.DisposeAsync();
            await b.DisposeAsync();
            Assert.True(onA.Acknowledged + onB.Acknowledged > before);
        }

        // 3. And again: every write acknowledged before the SIGTERM is there.
        await using (var up = await UpAsync(port))
        {
            await VerifyAsync(port, onA, onB, copiedHash);
            up.Terminate();
            Assert.Equal(0, await up.WaitForExitAsync(StopTimeout));
        }
    }
}
