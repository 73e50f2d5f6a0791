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
            return await RunBenchAsync(error, () => Duet.Bench.AdapterBench.RunAsync(new Duet.Bench.AdapterBenchOptions
            {
                DuetCommand = SelfCommand(), Status = BenchControllerStatusAsync, Seconds = parse.GetValue(seconds),
            }, parse.InvocationConfiguration.Output, error, ct));
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
        var pair = new Option<bool>("--pair") { Description = "Run a primary and a backup adapter process (AW-1): the primary checkpoints every write to the backup before and after it; if the primary dies, the backup takes over the port and completes its unfinished writes" };
        var checkpointSocket = new Option<string>("--checkpoint-socket") { Description = "With --pair: the Unix socket between primary and backup (default: duet-adapter-PORT.ckpt in the temp directory)" };
        var role = new Option<string>("--role") { Description = "Internal: run as the pair's primary or backup process", Hidden = true };
        role.AcceptOnlyFromAmong("primary", "backup");
        var cmd = new Command("adapter", "Serve the pair's volumes to local NBD clients, sending each write whole to both controllers so that a controller's death costs the clients nothing")
        {
            port, units, pathFailover, buffer, quiet, pair, checkpointSocket, role,
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
            string? roleName = parse.GetValue(role);
            if (roleName is not null && !parse.GetValue(pair))
            {
                await error.WriteLineAsync("duet: --role is for the processes of `duet adapter --pair`");
                return ExitUsage;
            }
            string socketPath = parse.GetValue(checkpointSocket) ?? AdapterPairOptions.DefaultSocket(parse.GetValue(port));
            using var stop = new StopSignal(ct);
            if (parse.GetValue(pair) && roleName is null)
            {
                // The supervisor: both adapters are children running this command with --role.
                string[] childArgs =
                [
                    "adapter", "--pair", "--port", $"{parse.GetValue(port)}", "--units", parse.GetValue(units)!, "--buffer", $"{bufferBytes}",
                    "--checkpoint-socket", socketPath, .. (parse.GetValue(pathFailover) ? new[] { "--path-failover" } : []), .. (parse.GetValue(quiet) ? new[] { "--quiet" } : []),
                ];
                return await SuperviseAdapterPairAsync(childArgs, parse.GetValue(port), socketPath, output, error, stop.Token);
            }
            using var loggers = ConsoleLogging(parse.GetValue(quiet));
            var options = new HostAdapterOptions
            {
                Endpoint = new IPEndPoint(IPAddress.Loopback, parse.GetValue(port)), Units = endpoints,
                Mode = parse.GetValue(pathFailover) ? HostPathMode.PathFailover : HostPathMode.Multicast, BufferBytes = bufferBytes,
                Pair = roleName is null ? null : new AdapterPairOptions { Role = roleName == "backup" ? AdapterRole.Backup : AdapterRole.Primary, CheckpointSocket = socketPath },
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
            string paths = $"{(options.Mode == HostPathMode.Multicast ? "multicast to" : "path failover between")} {string.Join(" and ", endpoints)}";
            if (options.Pair?.Role == AdapterRole.Backup)
            {
                await output.WriteLineAsync($"duet adapter: backup ready; holding the checkpoints of host id {adapter.HostId:x16} on {socketPath}; will take over NBD on 127.0.0.1:{parse.GetValue(port)}");
                await output.FlushAsync();
                try
                {
                    await adapter.TookOver.WaitAsync(stop.Token);
                }
                catch (OperationCanceledException)
                {
                    await output.WriteLineAsync("duet adapter: backup stopping");
                    return ExitOk;
                }
                catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or InvalidOperationException)
                {
                    await error.WriteLineAsync($"duet adapter: could not take over: {e.Message}");
                    return ExitFailed;
                }
                await output.WriteLineAsync($"duet adapter: took over; NBD on {adapter.LocalEndPoint}; {adapter.Reissued} unfinished writes re-sent under their tags; {paths}; host id {adapter.HostId:x16}, tag generation {adapter.Generation}; checkpoints on {socketPath}");
            }
            else
            {
                await output.WriteLineAsync($"duet adapter: ready; NBD on {adapter.LocalEndPoint}; {paths}; host id {adapter.HostId:x16}; volumes: {string.Join(", ", adapter.Volumes.Select(v => v.Name))}" +
                    (options.Pair is null ? "" : $"; pair primary, checkpoints on {socketPath}"));
            }
            await output.FlushAsync();
            try { await Task.Delay(Timeout.Infinite, stop.Token); } catch (OperationCanceledException) { }
            await output.WriteLineAsync("duet adapter: stopping");
            return ExitOk;
        });
        return cmd;
    }

    /// <summary>
    /// <c>duet adapter --pair</c>: starts the primary adapter, then the backup (both this program
    /// with <c>--role</c>), relays their output, and keeps a backup running: when the primary dies the
    /// backup takes over (it prints "took over") and a new backup is started against it; a backup that
    /// dies is replaced. Stops the backup first, so that stopping the pair does not fail over.
    /// </summary>
    static async Task<int> SuperviseAdapterPairAsync(string[] childArgs, int port, string socketPath, TextWriter output, TextWriter error, CancellationToken stop)
    {
        var outputLock = new Lock();
        var tookOver = new System.Collections.Concurrent.ConcurrentDictionary<int, bool>();
        var all = new List<System.Diagnostics.Process>();
        (System.Diagnostics.Process Process, Task Ready) Launch(string role)
        {
            var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(typeof(Program).Assembly.Location);
            foreach (var a in childArgs) psi.ArgumentList.Add(a);
            psi.ArgumentList.Add("--role");
            psi.ArgumentList.Add(role);
            var process = new System.Diagnostics.Process { StartInfo = psi, EnableRaisingEvents = true };
            var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            string readyLine = role == "primary" ? "duet adapter: ready" : "duet adapter: backup ready";
            void Relay(string? line)
            {
                if (line is null) return;
                int pid;
                try { pid = process.Id; } catch (InvalidOperationException) { pid = 0; }
                lock (outputLock) output.WriteLine($"[adapter {pid}] {line}");
                if (line.Contains(readyLine, StringComparison.Ordinal)) ready.TrySetResult();
                if (line.Contains("duet adapter: took over", StringComparison.Ordinal)) tookOver[pid] = true;
            }
            process.OutputDataReceived += (_, e) => Relay(e.Data);
            process.ErrorDataReceived += (_, e) => Relay(e.Data);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            all.Add(process);
            return (process, ready.Task);
        }
        async Task<bool> StartedAsync((System.Diagnostics.Process Process, Task Ready) child, string what)
        {
            var first = await Task.WhenAny(child.Ready, child.Process.WaitForExitAsync(CancellationToken.None), Task.Delay(TimeSpan.FromMinutes(1), stop));
            if (first == child.Ready) return true;
            if (!stop.IsCancellationRequested) await error.WriteLineAsync($"duet: the {what} adapter did not start{(child.Process.HasExited ? $" (exit code {child.Process.ExitCode})" : "")}");
            return false;
        }
        System.Diagnostics.Process? primary = null, backup = null;
        try
        {
            var p = Launch("primary");
            primary = p.Process;
            if (!await StartedAsync(p, "primary")) return stop.IsCancellationRequested ? ExitOk : ExitFailed;
            var b = Launch("backup");
            backup = b.Process;
            if (!await StartedAsync(b, "backup")) return stop.IsCancellationRequested ? ExitOk : ExitFailed;
            lock (outputLock) output.WriteLine($"duet adapter: pair ready; NBD on 127.0.0.1:{port}; primary pid {primary.Id}, backup pid {backup.Id}; checkpoints on {socketPath}");
            await output.FlushAsync();
            DateTime? backupDeadSince = null;
            while (!stop.IsCancellationRequested)
            {
                try { await Task.Delay(TimeSpan.FromMilliseconds(100), stop); }
                catch (OperationCanceledException) { break; }
                if (backup is not null && tookOver.ContainsKey(backup.Id))
                {
                    // The backup took over: it is the primary now (the old one is dead, or killed by it).
                    int old = primary.Id;
                    primary = backup;
                    var nb = Launch("backup");
                    backup = nb.Process;
                    lock (outputLock) output.WriteLine($"duet adapter: backup (pid {primary.Id}) took over from pid {old}; starting a new backup (pid {backup.Id})");
                    continue;
                }
                if (primary.HasExited && (backup is null || backup.HasExited))
                {
                    await error.WriteLineAsync($"duet: both adapters exited (primary {primary.ExitCode}); nothing serves 127.0.0.1:{port}");
                    return ExitFailed;
                }
                if (backup is not null && backup.HasExited && !primary.HasExited)
                {
                    backupDeadSince ??= DateTime.UtcNow;
                    if (DateTime.UtcNow - backupDeadSince < TimeSpan.FromSeconds(1)) continue;
                    backupDeadSince = null;
                    int old = backup.Id;
                    backup = Launch("backup").Process;
                    lock (outputLock) output.WriteLine($"duet adapter: backup pid {old} exited with code {all.First(x => x.Id == old).ExitCode}; starting a new backup (pid {backup.Id})");
                }
            }
            lock (outputLock) output.WriteLine("duet adapter: stopping the pair");
        }
        finally
        {
            // The backup first: a primary stopping before its backup would be taken over.
            if (backup is not null) await StopControllersAsync([backup]);
            await StopControllersAsync(all.Where(x => x != backup));
        }
        lock (outputLock) output.WriteLine("duet adapter: pair stopped");
        return ExitOk;
    }
}
