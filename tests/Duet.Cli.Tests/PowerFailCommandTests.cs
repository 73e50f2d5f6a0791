using System.Net.Sockets;
using System.Text.Json;
using Duet.Host.Management;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Cli.Tests;

/// <summary>
/// `duet power-fail` (AW-6) at the edge: nothing running is said so (exit 1); a controller's report is
/// printed and the command waits for it to stop; the management route is refused where there is no
/// window; a bad --power-fail-window is a usage error.
/// </summary>
[Trait("Area", "Cli")]
[Trait("Claim", "AW-6")]
public sealed class PowerFailCommandTests : IDisposable
{
    readonly string dir = TempDir.Create();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static PowerFailReport Report(string name) =>
        new(name, "pair", 5000, 42, false, 3, 2, 1, 0, 7, true, true, true, 123, 0, true, true);

    [Fact]
    public async Task WithNothingRunningItSaysSoAndExits1()
    {
        var r = await Controller.Run(dir, "power-fail");

        Assert.Equal(1, r.Code);
        Assert.Equal($"duet: no controller is running on {dir} (no duet.sock or duet-B.sock there): nothing to power-fail; start the pair with ./duet up\n", r.Err);
        Assert.Equal("", r.Out);
    }

    [Fact]
    public async Task ASocketNobodyListensOnIsNoAnswer()
    {
        var path = Path.Combine(dir, ManagementHost.SocketFileName);
        var bound = path + ".tmp";
        using (var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            listener.Bind(new UnixDomainSocketEndPoint(bound));
            File.Move(bound, path);
        }

        var r = await Controller.Run(dir, "power-fail");

        Assert.Equal(1, r.Code);
        Assert.Contains("controller A: no report: no Duet controller is running", r.Out);
        Assert.Contains("duet: no controller on", r.Err);
    }

    [Fact]
    public async Task ItPrintsEachControllersReportAndWaitsForThemToStop()
    {
        ManagementHost? a = null, b = null;
        var asked = new List<string>();
        Func<PowerFailRequest, CancellationToken, Task<PowerFailReport>> Window(string name) => (request, ct) =>
        {
            lock (asked) asked.Add($"{name}:{request.Scope}");
            // As a controller does: it answers, then stops (its socket goes).
            var host = name == "A" ? a! : b!;
            _ = Task.Run(async () => { await Task.Delay(200); await host.StopAsync(TimeSpan.FromSeconds(2)); });
            return Task.FromResult(Report(name));
        };
        a = await ManagementHost.StartAsync(new InMemoryArrayService(), Path.Combine(dir, "duet.sock"), NullLoggerFactory.Instance, CancellationToken.None, Window("A"));
        b = await ManagementHost.StartAsync(new InMemoryArrayService(), Path.Combine(dir, "duet-B.sock"), NullLoggerFactory.Instance, CancellationToken.None, Window("B"));
        try
        {
            var r = await Controller.Run(dir, "power-fail");

            Assert.Equal(0, r.Code);
            Assert.Equal(["A:pair", "B:pair"], asked.Order());
            Assert.Contains("controller A: power-fail window (pair) finished in 42 ms of 5000: host commands in flight 3 (2 finished, 1 failed, 0 unfinished), 7 not started;", r.Out);
            Assert.Contains("left to the next start: 123 dirty cache elements (in NVRAM), 0 write-log records; peer stopped too", r.Out);
            Assert.Contains("controller B: power-fail window (pair)", r.Out);
            Assert.False(File.Exists(Path.Combine(dir, "duet.sock")) || File.Exists(Path.Combine(dir, "duet-B.sock")));
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    [Fact]
    public async Task WithJsonItPrintsTheReports()
    {
        ManagementHost? a = null;
        a = await ManagementHost.StartAsync(new InMemoryArrayService(), Path.Combine(dir, "duet.sock"), NullLoggerFactory.Instance, CancellationToken.None, (request, ct) =>
        {
            _ = Task.Run(async () => { await Task.Delay(200); await a!.StopAsync(TimeSpan.FromSeconds(2)); });
            return Task.FromResult(Report("A"));
        });
        await using (a)
        {
            var r = await Controller.Run(dir, "power-fail", "--json");

            Assert.Equal(0, r.Code);
            var reports = JsonSerializer.Deserialize(r.Out, ManagementJsonContext.Default.IReadOnlyListPowerFailReport)!;
            Assert.Equal([Report("A")], reports);
        }
    }

    [Fact]
    public async Task AServerWithoutAWindowRefusesTheRoute()
    {
        await using var host = await ManagementHost.StartAsync(new InMemoryArrayService(), Path.Combine(dir, "duet.sock"), NullLoggerFactory.Instance, CancellationToken.None);
        using var client = ManagementClient.ForDataDirectory(dir);

        var e = await Assert.ThrowsAsync<ManagementException>(() => client.PowerFailAsync(new PowerFailRequest()));
        Assert.Equal(ManagementErrorKind.NotFound, e.Kind);
        Assert.Contains("no power-fail window", e.Message);
    }

    [Theory]
    [InlineData("5s", 5000)]
    [InlineData("500ms", 500)]
    [InlineData("2.5", 2500)]
    [InlineData("100ms", 100)]
    public void AWindowParsesAsSecondsOrMilliseconds(string text, double ms)
    {
        Assert.True(Program.TryParseWindow(text, out var window));
        Assert.Equal(ms, window.TotalMilliseconds);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("50ms")]
    [InlineData("11m")]
    [InlineData("five")]
    [InlineData("-1s")]
    [InlineData("NaN")]
    public void AWindowOutsideItsRangeOrNotADurationIsRefused(string text) => Assert.False(Program.TryParseWindow(text, out _));

    [Fact]
    public async Task UpWithABadWindowIsAUsageError()
    {
        var r = await Controller.Run(dir, "up", "--power-fail-window", "5x");

        Assert.Equal(2, r.Code);
        Assert.Contains("--power-fail-window '5x' is not a duration", r.Err);
        Assert.False(Directory.Exists(Path.Combine(dir, "drives")));
    }
}
