using System.Net;
using System.Text.Json;
using Duet.Host.Management;
using Duet.Host.Server;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace Duet.Interop.Tests.Support;

public sealed record CliResult(string[] Args, int Code, string Out, string Err)
{
    public override string ToString() => $"$ duet {string.Join(' ', Args)}\nexit {Code}\n{Out}{Err}";
}

/// <summary>
/// One in-process Duet controller on its own temp data directory and an ephemeral NBD port,
/// with the `duet` CLI run in-process against it (Program.RunAsync, --data DIR) and the
/// real NBD clients run as processes.
/// </summary>
public sealed class Controller : IAsyncDisposable
{
    public const long DriveBytes = 256L << 20;

    readonly ITestOutputHelper _log;
    readonly ILoggerFactory _loggers;

    Controller(string dataDirectory, DuetServer server, ILoggerFactory loggers, ITestOutputHelper log)
    {
        DataDirectory = dataDirectory;
        Server = server;
        _loggers = loggers;
        _log = log;
        Run = new ProcessRunner(log);
    }

    public string DataDirectory { get; }
    public DuetServer? Server { get; private set; }
    public ProcessRunner Run { get; }
    public int Port => Server!.NbdEndpoint.Port;
    public string Uri(string volume) => $"nbd://127.0.0.1:{Port}/{volume}";
    public string DrivePath(string drive) => Path.Combine(DataDirectory, "drives", drive + ".img");
    public string ScratchFile(string name) => Path.Combine(DataDirectory, name);

    /// <summary>Starts a controller with the default layout on eight 256 MiB drives (two ~510 MiB volumes).</summary>
    public static async Task<Controller> StartAsync(ITestOutputHelper log)
    {
        var dir = Directory.CreateTempSubdirectory("duet-interop-").FullName;
        var loggers = LoggerFactory.Create(b => b.AddProvider(new TestOutputLoggerProvider(log)).SetMinimumLevel(LogLevel.Information).AddFilter("Microsoft", LogLevel.Warning));
        var server = await DuetServer.StartAsync(new DuetServerOptions
        {
            DataDirectory = dir,
            NbdEndpoint = new IPEndPoint(IPAddress.Loopback, 0),
            DefaultDriveBytes = DriveBytes,
        }, loggers);
        return new Controller(dir, server, loggers, log);
    }

    /// <summary>Runs `duet ARGS --data DIR` in-process.</summary>
    public async Task<CliResult> Cli(params string[] args)
    {
        var all = args.Concat(["--data", DataDirectory]).ToArray();
        using StringWriter o = new(), e = new();
        int code = await Duet.Cli.Program.RunAsync(all, o, e);
        var r = new CliResult(args, code, o.ToString(), e.ToString());
        _log.WriteLine(r.ToString());
        return r;
    }

    /// <summary>Runs the CLI and requires exit 0.</summary>
    public async Task<CliResult> CliOk(params string[] args)
    {
        var r = await Cli(args);
        Assert.True(r.Code == 0, r.ToString());
        return r;
    }

    /// <summary>`duet status --json`, raw.</summary>
    public async Task<string> StatusJson() => (await CliOk("status", "--json")).Out;

    /// <summary>`duet status --json`, parsed with the contract's own serializer.</summary>
    public async Task<StatusInfo> Status() =>
        JsonSerializer.Deserialize(await StatusJson(), ManagementJsonContext.Default.StatusInfo)!;

    public async Task<ArrayInfo> Array(string name) => (await Status()).Arrays.Single(a => a.Name == name);

    /// <summary>Polls `duet status --json` (every 100 ms, at most 60 s) until the array satisfies the condition.</summary>
    public Task<ArrayInfo> WaitForArray(string name, Func<ArrayInfo, bool> condition, string what) =>
        TestData.PollAsync(() => Array(name), condition, TimeSpan.FromSeconds(60), $"array {name} {what}");

    /// <summary>Copies a local file onto the start of a volume with nbdcopy.</summary>
    public Task NbdcopyIn(string file, string volume) =>
        Run.RunOkAsync("nbdcopy", "--requests=32", file, Uri(volume));

    /// <summary>Copies the first <paramref name="bytes"/> of a volume into a local file and returns its SHA-256.</summary>
    public async Task<string> NbdcopyOutHash(string volume, long bytes, string name = "out.img")
    {
        var output = ScratchFile(name);
        File.Delete(output);
        // nbdcopy copies the whole export; a sized output file cannot take more than it is.
        await Run.RunOkAsync("nbdcopy", "--requests=32", Uri(volume), output);
        using (var f = new FileStream(output, FileMode.Open, FileAccess.ReadWrite)) f.SetLength(bytes);
        var hash = TestData.HashFile(output);
        File.Delete(output);
        return hash;
    }

    /// <summary>Stops the controller (the data directory stays until DisposeAsync).</summary>
    public async Task StopAsync()
    {
        if (Server is null) return;
        await Server.DisposeAsync();
        Server = null;
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _loggers.Dispose();
        try { Directory.Delete(DataDirectory, recursive: true); }
        catch (IOException) { }
    }
}

/// <summary>Server logs into the test's output (and nowhere once the test is over).</summary>
sealed class TestOutputLoggerProvider(ITestOutputHelper output) : ILoggerProvider
{
    public ILogger CreateLogger(string categoryName) => new TestOutputLogger(output, categoryName);

    public void Dispose() { }

    sealed class TestOutputLogger(ITestOutputHelper output, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            try { output.WriteLine($"[{logLevel}] {category}: {formatter(state, exception)}{(exception is null ? "" : " " + exception)}"); }
            catch (InvalidOperationException) { /* the test has finished */ }
        }
    }
}
