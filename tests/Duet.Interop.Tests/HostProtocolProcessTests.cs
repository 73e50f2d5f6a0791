using System.Diagnostics;
using System.Net;
using Duet.Host.Management;
using Duet.HostProtocol;
using Duet.Interop.Tests.Support;
using Duet.Raid.Management;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// Duet's host protocol (FO-3..FO-6) served by the real controllers of `duet up`: a test host
/// multicasts to unit 0 of A and unit 0 of B (group 0), or sends to one unit only; and, with
/// the primary stopped by SIGSTOP, the secondary's time limit fences it and runs the commands.
/// </summary>
[Trait("Area", "Interop")]
public sealed class HostProtocolProcessTests(ITestOutputHelper log) : IDisposable
{
    const int Block = 64 << 10;
    static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);
    readonly string _dir = Directory.CreateTempSubdirectory("duet-hostproto-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    static string Dotnet => DuetProcesses.Dotnet;

    /// <summary>`duet up --nbd-port P`: NBD on P and P+1, host units A0 A1 B0 B1 on P+2 .. P+5, a TCP ICL would be P+6.</summary>
    async Task<(BackgroundProcess Up, int Port)> UpAsync()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts);
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        var up = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        try
        {
            var output = await up.WaitForOutputAsync("duet: ready", StartTimeout);
            Assert.Contains($"A0 127.0.0.1:{port + 2}, A1 127.0.0.1:{port + 3}, B0 127.0.0.1:{port + 4}, B1 127.0.0.1:{port + 5}", output);
            return (up, port);
        }
        catch
        {
            await up.DisposeAsync();
            throw;
        }
    }

    static IPEndPoint Unit(int port, char controller, int unit) => new(IPAddress.Loopback, port + 2 + (controller == 'A' ? 0 : 2) + unit);

    static Task<TestHost> AttachAsync(ulong hostId, string volume, params IPEndPoint[] units) =>
        TestHost.ConnectAsync(new TestHostOptions { HostId = hostId, Volume = volume, Units = units, CommandTimeout = TimeSpan.FromSeconds(30) });

    async Task<StatusInfo> StatusAsync(string controller)
    {
        using var client = new ManagementClient(Duet.Host.Controller.ControllerOptions.SocketFor(_dir, controller), TimeSpan.FromSeconds(10));
        return await client.StatusAsync();
    }

    static byte[] Pattern(int seed, int length)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    static void AssertOk(HostCompletion c, string what) => Assert.True(c.Status == HostStatus.Ok, $"{what}: {c.Status}");

    int ControllerPid(string name) => DuetProcesses.ControllerPid(_dir, name);

    [Fact]
    [Trait("Claim", "FO-3")]
    [Trait("Claim", "FO-4")]
    [Trait("Claim", "FO-6")]
    public async Task HostMulticastsToGroupZeroAndSendsToOneUnitOnlyAndEveryCommandCompletesWithoutATakeover()
    {
        var (up, port) = await UpAsync();
        await using var _ = up;
        // vol0 is on arr0 (A primary), vol1 on arr1 (B primary): each controller is primary for one.
        foreach (var (volume, hostId) in new[] { ("vol0", 0x10UL), ("vol1", 0x11UL) })
        {
            await using var host = await AttachAsync(hostId, volume, Unit(port, 'A', 0), Unit(port, 'B', 0));
            Assert.Equal(new[] { ('A', (byte)0), ('B', (byte)0) }, host.Units.Select(u => (u.Controller, u.Unit)).ToArray());

            // FO-3/FO-4: pipelined multicast writes, then reads of the same blocks.
            var written = new Dictionary<long, byte[]>();
            for (int i = 0; i < 16; i++) written[(long)i * 3 * Block] = Pattern((int)hostId * 100 + i, Block);
            var writes = await Task.WhenAll(written.Select(kv => host.WriteAsync(kv.Key, kv.Value)));
            foreach (var w in writes) AssertOk(w, $"{volume}: multicast write");
            AssertOk(await host.FlushAsync(), $"{volume}: multicast flush");

            // FO-6: frames that reach one unit only, each side in turn (one of them is the secondary's
            // unit, which forwards to the primary and answers from the primary's "completed"), a whole
            // 512 KiB write among them.
            for (int u = 0; u < 2; u++)
            {
                long offset = (long)(100 + u) * Block;
                written[offset] = Pattern((int)hostId * 100 + 50 + u, Block);
                AssertOk(await host.WriteAsync(offset, written[offset], unit: u), $"{volume}: write to unit {host.Units[u].Controller}0 only");
                var read = await host.ReadAsync(offset, Block, unit: u);
                AssertOk(read, $"{volume}: read from unit {host.Units[u].Controller}0 only");
                Assert.True(read.Data.Span.SequenceEqual(written[offset]), $"{volume}: read from unit {host.Units[u].Controller}0 only returned other data");
                long large = (long)(200 + 16 * u) * Block;
                written[large] = Pattern((int)hostId * 100 + 60 + u, HostWire.PayloadBytesMax);
                AssertOk(await host.WriteAsync(large, written[large], unit: u), $"{volume}: 512 KiB write to unit {host.Units[u].Controller}0 only");
            }

            foreach (var (offset, data) in written)
            {
                var read = await host.ReadAsync(offset, data.Length);
                AssertOk(read, $"{volume}: multicast read at {offset}");
                Assert.True(read.Data.Span.SequenceEqual(data), $"{volume}: multicast read at {offset} returned other data");
            }
            Assert.Empty(host.UnmatchedCompletions);
        }

        // Group 1 serves too.
        await using (var host = await AttachAsync(0x12, "vol1", Unit(port, 'A', 1), Unit(port, 'B', 1)))
        {
            var data = Pattern(7, Block);
            AssertOk(await host.WriteAsync(0, data), "vol1: write to group 1");
            var read = await host.ReadAsync(0, Block);
            AssertOk(read, "vol1: read from group 1");
            Assert.True(read.Data.Span.SequenceEqual(data));
        }

        // FO-4: "completed" took every command out of the secondary's queue: past the time limit
        // (1.5 s) no secondary fenced its primary.
        await Task.Delay(TimeSpan.FromSeconds(3));
        foreach (var c in new[] { "A", "B" })
        {
            var s = await StatusAsync(c);
            Assert.Equal(0, s.Controller!.Failover!.Takeovers);
            Assert.False(s.Controller.Failover.PeerFenced, $"controller {c} fenced its peer");
        }
        var status = await StatusAsync("A");
        Assert.Equal("A", status.Arrays.Single(a => a.Name == "arr0").Owner);
        Assert.Equal("B", status.Arrays.Single(a => a.Name == "arr1").Owner);
        Assert.DoesNotContain("exited with code", up.Output);
        up.Terminate();
        Assert.Equal(0, await up.WaitForExitAsync(TimeSpan.FromSeconds(60)));
    }

    [Fact]
    [Trait("Claim", "FO-5")]
    public async Task StoppedPrimaryIsFencedAtTheTimeLimitTheSecondaryRunsItsCommandsAndTheHostSeesNoError()
    {
        var (up, port) = await UpAsync();
        await using var _ = up;
        int a = ControllerPid("A");
        bool stopped = false;
        try
        {
            var host = await AttachAsync(0x20, "vol0", Unit(port, 'A', 0), Unit(port, 'B', 0));
            await using (host)
            {
                var written = new Dictionary<long, byte[]>();
                for (int i = 0; i < 4; i++)
                {
                    written[(long)i * Block] = Pattern(300 + i, Block);
                    AssertOk(await host.WriteAsync((long)i * Block, written[(long)i * Block]), "write before the stop");
                }

                // The primary of vol0 stops (a hung controller: its sockets still take the host's frames).
                Assert.Equal(0, Posix.Kill(a, Posix.SIGSTOP));
                stopped = true;
                var stoppedAt = Stopwatch.StartNew();
                var outstanding = new Dictionary<long, byte[]>();
                for (int i = 0; i < 8; i++) outstanding[(long)(16 + i) * Block] = Pattern(400 + i, 4096);
                var completions = await Task.WhenAll(outstanding.Select(kv => host.WriteAsync(kv.Key, kv.Value)));
                log.WriteLine($"{completions.Length} writes completed {stoppedAt.ElapsedMilliseconds} ms after SIGSTOP of A");
                foreach (var c in completions) AssertOk(c, "write while the primary is stopped");
                foreach (var kv in outstanding) written[kv.Key] = kv.Value;

                var b = await StatusAsync("B");
                Assert.Equal("B", b.Arrays.Single(x => x.Name == "arr0").Owner);
                Assert.True(b.Controller!.Failover!.PeerFenced, "B did not fence A");
                Assert.True(b.Controller.Failover.Takeovers >= 1);

                // The primary wakes up fenced: it steps down (exit code 3) and the supervisor restarts it.
                Assert.Equal(0, Posix.Kill(a, Posix.SIGCONT));
                stopped = false;
                await up.WaitForOutputAsync("duet: controller A exited with code 3", TimeSpan.FromSeconds(30));
                await up.WaitForOutputAsync("restarting controller A", TimeSpan.FromSeconds(30));

                // Every completed write reads back (through B; A's unit closed with its process).
                foreach (var (offset, data) in written)
                {
                    var read = await host.ReadAsync(offset, data.Length);
                    AssertOk(read, $"read at {offset} after the takeover");
                    Assert.True(read.Data.Span.SequenceEqual(data), $"read at {offset} after the takeover returned other data");
                }
                // The host also writes on: B alone serves vol0 now.
                AssertOk(await host.WriteAsync(64L * Block, Pattern(500, Block)), "write after the takeover");
            }
            await up.WaitForOutputAsync("port A is fenced at the shelf", TimeSpan.FromSeconds(60));
            up.Terminate();
            await up.WaitForExitAsync(TimeSpan.FromSeconds(60));
        }
        finally
        {
            if (stopped) Posix.Kill(a, Posix.SIGCONT);
        }
    }
}
