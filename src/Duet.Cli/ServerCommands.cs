using System.CommandLine;
using System.Net;
using System.Runtime.InteropServices;
using Duet.Bench;
using Duet.Core;
using Duet.Host.Server;
using Microsoft.Extensions.Logging;

namespace Duet.Cli;

// The commands that run Duet itself rather than talk to it: `up` (serve a data directory)
// and `bench` (measure Duet beside its peers).
public static partial class Program
{
    static partial void AddServerCommands(RootCommand root)
    {
        root.Subcommands.Add(UpCommand());
        root.Subcommands.Add(BenchCommand());
    }

    static Command UpCommand()
    {
        var nbdPort = new Option<int>("--nbd-port") { Description = "NBD port on 127.0.0.1", DefaultValueFactory = _ => 10809 };
        var quiet = new Option<bool>("--quiet") { Description = "Log warnings and errors only" };
        var cmd = new Command("up", "Start Duet on a data directory (created with the default layout if new) and serve its volumes until Ctrl-C or SIGTERM")
        {
            nbdPort, quiet,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            string dir = ResolveDataDir(parse);
            int port = parse.GetValue(nbdPort);
            if (port is < 0 or > 65535)
            {
                await error.WriteLineAsync($"duet: --nbd-port {port} is not a port number");
                return ExitUsage;
            }
            using var loggerFactory = LoggerFactory.Create(b => b
                .AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; })
                .SetMinimumLevel(parse.GetValue(quiet) ? LogLevel.Warning : LogLevel.Information)
                .AddFilter("Microsoft", LogLevel.Warning));
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
            DuetServer server;
            try
            {
                server = await DuetServer.StartAsync(new DuetServerOptions { DataDirectory = dir, NbdEndpoint = new IPEndPoint(IPAddress.Loopback, port) }, loggerFactory, stop.Token);
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or UnauthorizedAccessException)
            {
                await error.WriteLineAsync($"duet: cannot start on {dir}: {e.Message}");
                return ExitFailed;
            }
            await using (server)
            {
                var status = server.Arrays.Status();
                await output.WriteLineAsync($"duet: data directory {dir}{(server.CreatedDefaultLayout ? " (new: created the default layout)" : "")}");
                await output.WriteLineAsync($"duet: management socket {server.Management.SocketPath}");
                foreach (var a in status.Arrays)
                    await output.WriteLineAsync($"duet: array {a.Name}: RAID {a.Level}, {a.Members.Count} drives, {Units.FormatSize(a.CapacityBytes)}, {a.State}" +
                        (a.State == "optimal" ? "" : $" ({string.Join(", ", a.Members.Where(m => m.State != "active").Select(m => $"slot {m.Slot} {m.Drive ?? "-"} {m.State}"))})"));
                foreach (var d in status.Drives.Where(d => d.Role == "foreign"))
                    await output.WriteLineAsync($"duet: drive {d.Name} not used: {d.State}");
                var ep = server.NbdEndpoint;
                foreach (var v in status.Volumes)
                    await output.WriteLineAsync($"duet: NBD nbd://{ep.Address}:{ep.Port}/{v.Name} ({Units.FormatSize(v.SizeBytes)} on {v.Array})");
                if (status.Volumes.Count > 0)
                    await output.WriteLineAsync($"duet: try: nbdinfo nbd://{ep.Address}:{ep.Port}/{status.Volumes[0].Name}");
                await output.WriteLineAsync("duet: ready; Ctrl-C or SIGTERM stops (data is kept)");
                await output.FlushAsync();
                try { await Task.Delay(Timeout.Infinite, stop.Token); }
                catch (OperationCanceledException) { }
                await output.WriteLineAsync("duet: stopping");
            }
            await output.WriteLineAsync("duet: stopped");
            return ExitOk;
        });
        return cmd;
    }

    static Command BenchCommand()
    {
        var bench = new Command("bench", "Measure Duet beside its peers; prints `key value` lines");
        var seconds = new Option<double>("--seconds") { Description = "Time per figure", DefaultValueFactory = _ => 0.4 };
        var parity = new Command("parity", "XOR and P+Q parity throughput, Duet and ISA-L on the same buffers, single thread") { seconds };
        parity.SetAction(parse => ParityBench.Run(parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error, parse.GetValue(seconds)));
        bench.Subcommands.Add(parity);
        bench.Subcommands.Add(BenchNbdCommand());
        bench.Subcommands.Add(BenchMemoryCommand());
        return bench;
    }

    static Command BenchNbdCommand()
    {
        var seconds = new Option<double>("--seconds") { Description = "Seconds per fio run", DefaultValueFactory = _ => 3 };
        var runs = new Option<int>("--runs") { Description = "Runs per figure (the median is printed)", DefaultValueFactory = _ => 1 };
        var size = new Option<string>("--size") { Description = "Volume size and peer file size (e.g. 1G, 64M)", DefaultValueFactory = _ => "1G" };
        var cmd = new Command("nbd", "fio 4 KiB random and 1 MiB sequential read/write against Duet (RAID 6 over 4 drives on /dev/shm), nbdkit's file plugin and qemu-nbd, side by side")
        {
            seconds, runs, size,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var error = parse.InvocationConfiguration.Error;
            if (!Units.TryParseSize(parse.GetValue(size) ?? "", out long bytes) || bytes <= 0)
            {
                await error.WriteLineAsync($"duet: --size {parse.GetValue(size)} is not a size");
                return ExitUsage;
            }
            var options = new NbdBenchOptions { DuetCommand = SelfCommand(), Seconds = parse.GetValue(seconds), Runs = parse.GetValue(runs), SizeBytes = bytes };
            try
            {
                return await NbdBench.RunAsync(options, parse.InvocationConfiguration.Output, error, ct);
            }
            catch (ArgumentOutOfRangeException e)
            {
                await error.WriteLineAsync($"duet: {e.Message}");
                return ExitUsage;
            }
            catch (OperationCanceledException)
            {
                return ExitInterrupted;
            }
        });
        return cmd;
    }

    static Command BenchMemoryCommand()
    {
        var idle = new Option<double>("--idle-seconds") { Description = "How long `duet up` idles after it is ready before RssAnon is read", DefaultValueFactory = _ => 3 };
        var cmd = new Command("memory", "Anonymous resident memory (RssAnon) of an idle `duet up` on a fresh data directory with the default layout") { idle };
        cmd.SetAction(async (parse, ct) =>
        {
            try
            {
                return await MemoryBench.RunAsync(SelfCommand(), parse.GetValue(idle), "/dev/shm", parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error, ct);
            }
            catch (OperationCanceledException)
            {
                return ExitInterrupted;
            }
        });
        return cmd;
    }

    /// <summary>How to start this CLI again as a child: the apphost, or `dotnet duet.dll`.</summary>
    public static IReadOnlyList<string> SelfCommand()
    {
        var host = Environment.ProcessPath;
        var name = host is null ? null : Path.GetFileNameWithoutExtension(host);
        if (host is not null && name == "duet") return [host];
        var dotnet = name == "dotnet" ? host! : Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } p ? p : "dotnet";
        return [dotnet, typeof(Program).Assembly.Location];
    }
}
