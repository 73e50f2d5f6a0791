using System.CommandLine;
using System.Net;
using Duet.Adapter;
using Duet.HostProtocol;

namespace Duet.Cli;

// `duet adapter`: the host side of the pair (issue 8), a process of its own on the host.
public static partial class Program
{
    static partial void AddAdapterCommands(RootCommand root) => root.Subcommands.Add(AdapterCommand());

    static Command BenchAdapterCommand()
    {
        var seconds = new Option<double>("--seconds") { Description = "Seconds per timed fio run (the stall runs last at least 6 s)", DefaultValueFactory = _ => 5 };
        var cmd = new Command("adapter", "The host adapter beside direct NBD: 4 KiB random-write latency at depth 1, IOPS, CPU and link bytes per write at depth 32, "
            + "and the longest stall fio sees when the owner is killed, with multicast and with path failover") { seconds };
        cmd.SetAction(async (parse, ct) =>
        {
            var error = parse.InvocationConfiguration.Error;
            try
            {
                return await Duet.Bench.AdapterBench.RunAsync(new Duet.Bench.AdapterBenchOptions
                {
                    DuetCommand = SelfCommand(), Status = BenchControllerStatusAsync, Seconds = parse.GetValue(seconds),
                }, parse.InvocationConfiguration.Output, error, ct);
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

    static Command AdapterCommand()
    {
        var port = new Option<int>("--port") { Description = "NBD port on 127.0.0.1 for local clients (export name = volume name)", DefaultValueFactory = _ => HostAdapterOptions.DefaultPort };
        var units = new Option<string>("--units") { Description = "The pair's units this host uses: unit N of A and unit N of B (one multicast group), comma-separated host:port", DefaultValueFactory = _ => $"127.0.0.1:{HostWire.PortA0},127.0.0.1:{HostWire.PortB0}" };
        var pathFailover = new Option<bool>("--path-failover") { Description = "Send each command to one controller at a time, the owner first, and to the other on failure (as ALUA multipath does), instead of to both at once" };
        var buffer = new Option<string>("--buffer") { Description = "Block buffer: write data accepted from clients and not yet completed by the pair; when full, clients wait", DefaultValueFactory = _ => "64M" };
        var quiet = new Option<bool>("--quiet") { Description = "Log warnings and errors only" };
        var cmd = new Command("adapter", "Serve the pair's volumes to local NBD clients, sending each write whole to both controllers so that a controller's death costs the clients nothing")
        {
            port, units, pathFailover, buffer, quiet,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            var endpoints = new List<EndPoint>();
            foreach (var text in parse.GetValue(units)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (!IPEndPoint.TryParse(text, out var ep) || ep.Port == 0)
                {
                    await error.WriteLineAsync($"duet: --units: '{text}' is not host:port");
                    return ExitUsage;
                }
                endpoints.Add(ep);
            }
            if (endpoints.Count is < 1 or > 2)
            {
                await error.WriteLineAsync("duet: --units takes one unit, or unit N of A and unit N of B");
                return ExitUsage;
            }
            if (!Duet.Core.Units.TryParseSize(parse.GetValue(buffer)!, out long bufferBytes) || bufferBytes < HostWire.PayloadBytesMax)
            {
                await error.WriteLineAsync($"duet: --buffer '{parse.GetValue(buffer)}' is not a size of at least {HostWire.PayloadBytesMax / 1024}K");
                return ExitUsage;
            }
            if (parse.GetValue(port) is < 0 or > 65535)
            {
                await error.WriteLineAsync($"duet: --port {parse.GetValue(port)} is not a port number");
                return ExitUsage;
            }
            using var loggers = ConsoleLogging(parse.GetValue(quiet));
            using var stop = new StopSignal(ct);
            var options = new HostAdapterOptions
            {
                Endpoint = new IPEndPoint(IPAddress.Loopback, parse.GetValue(port)), Units = endpoints,
                Mode = parse.GetValue(pathFailover) ? HostPathMode.PathFailover : HostPathMode.Multicast, BufferBytes = bufferBytes,
            };
            await using var adapter = new HostAdapter(options, loggers);
            try
            {
                await adapter.StartAsync(stop.Token);
            }
            catch (OperationCanceledException) { return ExitOk; }
            catch (IOException e)
            {
                await error.WriteLineAsync($"duet: adapter cannot start: {e.Message}");
                return ExitFailed;
            }
            await output.WriteLineAsync($"duet adapter: ready; NBD on {adapter.LocalEndPoint}; {(options.Mode == HostPathMode.Multicast ? "multicast to" : "path failover between")} {string.Join(" and ", endpoints)}; host id {adapter.HostId:x16}; volumes: {string.Join(", ", adapter.Volumes.Select(v => v.Name))}");
            await output.FlushAsync();
            try { await Task.Delay(Timeout.Infinite, stop.Token); } catch (OperationCanceledException) { }
            await output.WriteLineAsync("duet adapter: stopping");
            return ExitOk;
        });
        return cmd;
    }
}
