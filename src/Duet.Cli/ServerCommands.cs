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
        root.Subcommands.Add(ControllerCommand());
        root.Subcommands.Add(BenchCommand());
        root.Subcommands.Add(SimCommand());
        root.Subcommands.Add(PowerFailCommand());
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int signal);
    const int SIGTERM = 15;

    static ILoggerFactory ConsoleLogging(bool quiet) => LoggerFactory.Create(b => b
        .AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; })
        .SetMinimumLevel(quiet ? LogLevel.Warning : LogLevel.Information)
        .AddFilter("Microsoft", LogLevel.Warning));

    /// <summary>Cancelled on SIGTERM or SIGINT (Ctrl-C). A process `./duet up` supervises ignores SIGINT
    /// (<paramref name="ignoreInterrupt"/>): Ctrl-C in the terminal reaches the whole process group, and the
    /// supervisor stops its children in order (the controllers' power-fail windows, then the shelf).</summary>
    sealed class StopSignal : IDisposable
    {
        readonly CancellationTokenSource _cts;
        readonly PosixSignalRegistration _term, _int;
        public StopSignal(CancellationToken ct, bool ignoreInterrupt = false)
        {
            _cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; _cts.Cancel(); });
            _int = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; if (!ignoreInterrupt) _cts.Cancel(); });
        }
        public CancellationToken Token => _cts.Token;
        public void Dispose() { _term.Dispose(); _int.Dispose(); _cts.Dispose(); }
    }

    static Option<string> WriteLogOption()
    {
        var o = new Option<string>("--write-log") { Description = "AW-4's write log of array writes (and its checkpoints to the peer): on, or off (unsafe: for measuring its cost; a power cut mid-destage may then leave parity that nothing names)", DefaultValueFactory = _ => "on" };
        o.AcceptOnlyFromAmong("on", "off");
        return o;
    }

    static Option<string> FailbackOption()
    {
        var o = new Option<string>("--failback")
        {
            Description = "With --shelf: auto (the controller serving an array whose preferred owner is its peer moves it back once the pair has been healthy for the settle time, "
                + "e.g. after a takeover and the peer's restart) or manual (only `duet array move` does; `duet status` shows what is pending)",
            DefaultValueFactory = _ => "manual",
        };
        o.AcceptOnlyFromAmong("auto", "manual");
        return o;
    }

    static Option<int> FailbackSettleOption() => new("--failback-settle-ms")
    {
        Description = "With --failback auto: how long the pair must have been healthy, without a break, before an array goes back (doubles if the peer fails again soon after)",
        DefaultValueFactory = _ => (int)Duet.Host.Controller.FailoverOptions.DefaultFailbackSettle.TotalMilliseconds,
    };

    static Option<bool> SupervisedOption() => new("--supervised")
    {
        Description = "Started by ./duet up: SIGINT (Ctrl-C in the terminal) is left to the supervisor, which stops the processes in order",
        Hidden = true,
    };

    static Option<string> IclOption()
    {
        var o = new Option<string>("--icl") { Description = "How the inter-controller link is carried: shm (shared memory under /dev/shm, one host) or tcp", DefaultValueFactory = _ => "shm" };
        o.AcceptOnlyFromAmong("shm", "tcp");
        return o;
    }

    static Duet.Host.Controller.IclTransportKind IclKind(string? value) =>
        value == "tcp" ? Duet.Host.Controller.IclTransportKind.Tcp : Duet.Host.Controller.IclTransportKind.SharedMemory;

    static Command ControllerCommand()
    {
        var name = new Option<string>("--name") { Description = "Which controller of the pair: A or B", Required = true };
        name.AcceptOnlyFromAmong("A", "B");
        var nbdPort = new Option<int>("--nbd-port") { Description = "NBD port on 127.0.0.1 (default: 10809 for A, 10810 for B)" };
        var iscsiPort = new Option<int>("--iscsi-port") { Description = "iSCSI portal on 127.0.0.1 (default: 3260 for A, 3261 for B); SendTargets reports the peer's on the next port (A) or the previous one (B)" };
        var iclPort = new Option<int>("--icl-port") { Description = "With --icl tcp: the inter-controller link's TCP port on 127.0.0.1 (A listens, B connects)", DefaultValueFactory = _ => 10815 };
        var iclKind = IclOption();
        var nvram = new Option<string>("--nvram") { Description = "NVRAM size (up to 1G)", DefaultValueFactory = _ => "256M" };
        var mirror = new Option<string>("--mirror") { Description = "How writes are mirrored: batched (CC-2/3), seed (MR-2/3 by figure 7), seed-large, or none (unsafe: for measuring the mirror's cost)", DefaultValueFactory = _ => "batched" };
        var writeLog = WriteLogOption();
        mirror.AcceptOnlyFromAmong("batched", "seed", "seed-large", "none");
        var quiet = new Option<bool>("--quiet") { Description = "Log warnings and errors only" };
        var shelf = new Option<bool>("--shelf") { Description = "Reach the drives through `duet shelf` on the data directory (fencing, heartbeats, takeover); without it the drive files are opened directly and there is no failover" };
        var heartbeat = new Option<int>("--heartbeat-ms") { Description = "With --shelf: heartbeat period", DefaultValueFactory = _ => 100 };
        var timeout = new Option<int>("--heartbeat-timeout-ms") { Description = "With --shelf: silence on both heartbeat paths for this long is a dead peer", DefaultValueFactory = _ => 1000 };
        var hostPort = new Option<int>("--host-port") { Description = "Duet's host protocol: unit 0 on this port of 127.0.0.1, unit 1 on the next (default: 10811 for A, 10813 for B; unit N of A and of B form multicast group N)" };
        var limit = new Option<int>("--host-time-limit-ms") { Description = "FO-5: a host command the primary has not completed this long after the host sent it is run by the secondary, which fences the primary first (at least the heartbeat timeout)", DefaultValueFactory = _ => 1500 };
        var window = PowerFailWindowOption();
        var supervised = SupervisedOption();
        var failback = FailbackOption();
        var failbackSettle = FailbackSettleOption();
        var cmd = new Command("controller", "Run one controller of the pair on a data directory until SIGTERM, which runs its power-fail window "
            + "(this controller alone: its peer takes its arrays over), or until `duet power-fail` (./duet up starts both)")
        {
            name, nbdPort, iscsiPort, iclKind, iclPort, nvram, mirror, quiet, shelf, heartbeat, timeout, hostPort, limit, writeLog, window, supervised, failback, failbackSettle,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            string me = parse.GetValue(name)!;
            string dir = ResolveDataDir(parse);
            int port = parse.GetValue(nbdPort) is > 0 and var p ? p : (me == "A" ? 10809 : 10810);
            int scsiPort = parse.GetValue(iscsiPort) is > 0 and var sp ? sp : Duet.Iscsi.IscsiServerOptions.DefaultPort + (me == "A" ? 0 : 1);
            if (scsiPort > 65535)
            {
                await error.WriteLineAsync($"duet: --iscsi-port {scsiPort} is not a port number");
                return ExitUsage;
            }
            int unitPort = parse.GetValue(hostPort) is > 0 and var hp ? hp : Duet.HostProtocol.HostWire.DefaultPort(me[0], 0);
            if (unitPort > 65534)
            {
                await error.WriteLineAsync($"duet: --host-port {unitPort} leaves no port for unit 1");
                return ExitUsage;
            }
            if (!Units.TryParseSize(parse.GetValue(nvram)!, out long nvramBytes))
            {
                await error.WriteLineAsync($"duet: --nvram '{parse.GetValue(nvram)}' is not a size");
                return ExitUsage;
            }
            var method = parse.GetValue(mirror) switch
            {
                "seed" => Duet.Cache.Mirror.MirrorMethod.Seed, "seed-large" => Duet.Cache.Mirror.MirrorMethod.SeedLarge,
                "none" => Duet.Cache.Mirror.MirrorMethod.None, _ => Duet.Cache.Mirror.MirrorMethod.Batched,
            };
            var failover = new Duet.Host.Controller.FailoverOptions
            {
                HeartbeatPeriod = TimeSpan.FromMilliseconds(parse.GetValue(heartbeat)), HeartbeatTimeout = TimeSpan.FromMilliseconds(parse.GetValue(timeout)),
                HostCommandTimeLimit = TimeSpan.FromMilliseconds(parse.GetValue(limit)),
                Failback = parse.GetValue(failback) == "auto" ? Duet.Host.Controller.FailbackMode.Auto : Duet.Host.Controller.FailbackMode.Manual,
                FailbackSettle = TimeSpan.FromMilliseconds(parse.GetValue(failbackSettle)),
            };
            try { failover.Validate(); }
            catch (ArgumentException e)
            {
                await error.WriteLineAsync($"duet: {e.Message}");
                return ExitUsage;
            }
            if (!TryParseWindow(parse.GetValue(window)!, out var powerFailWindow))
            {
                await error.WriteLineAsync($"duet: --power-fail-window '{parse.GetValue(window)}' is not a duration from 100ms to 600s (e.g. 5s, 500ms)");
                return ExitUsage;
            }
            using var loggers = ConsoleLogging(parse.GetValue(quiet));
            using var stop = new StopSignal(ct, ignoreInterrupt: parse.GetValue(supervised));
            Duet.Host.Controller.ControllerServer server;
            try
            {
                server = await Duet.Host.Controller.ControllerServer.StartAsync(new Duet.Host.Controller.ControllerOptions
                {
                    Name = me, DataDirectory = dir, NbdEndpoint = new IPEndPoint(IPAddress.Loopback, port),
                    IscsiEndpoint = new IPEndPoint(IPAddress.Loopback, scsiPort),
                    IclTransport = IclKind(parse.GetValue(iclKind)),
                    IclEndpoint = new IPEndPoint(IPAddress.Loopback, parse.GetValue(iclPort)), NvramBytes = nvramBytes, Mirror = method,
                    UseShelf = parse.GetValue(shelf), Failover = failover, HostUnitPorts = [unitPort, unitPort + 1], WriteLog = parse.GetValue(writeLog) == "on",
                    PowerFailWindow = powerFailWindow,
                }, loggers, stop.Token);
            }
            catch (OperationCanceledException) { return ExitOk; }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or UnauthorizedAccessException or ArgumentException or Duet.Cache.Nvram.NvramException)
            {
                await error.WriteLineAsync($"duet: controller {me} cannot start on {dir}: {e.Message}");
                return ExitFailed;
            }
            try
            {
                await output.WriteLineAsync($"duet controller {me}: ready; NBD on {server.Nbd.LocalEndPoint}; iSCSI on {server.Iscsi.LocalEndPoint} ({server.Iscsi.TargetName}); host units {string.Join(", ", server.HostUnits.Select(u => $"{me}{u.Unit} {u.LocalEndPoint}"))}; management {server.Management.SocketPath}");
                await output.FlushAsync();
                server.Controller.SteppedDown += reason =>
                {
                    // Fenced: nothing of this process may touch the drives or answer a host again. Exit at
                    // once, as a crash would (no orderly destage: the drives refuse this port anyway);
                    // `duet up` restarts it, and it rejoins as standby.
                    Console.Error.WriteLine($"duet controller {me}: stepped down: {reason}");
                    Console.Error.Flush();
                    Environment.Exit(ExitSteppedDown);
                };
                // Fenced while it started (settling its write log touches the drives): the event came before anyone listened.
                if (server.Controller.IsSteppedDown)
                {
                    Console.Error.WriteLine($"duet controller {me}: stepped down while starting: fenced at the shelf");
                    Console.Error.Flush();
                    Environment.Exit(ExitSteppedDown);
                }
                // AW-6: SIGTERM is a power-fail notice for this controller alone; `duet power-fail` (or the peer,
                // for a power failure of the pair) begins the window through the controller itself.
                var signalled = Task.Delay(Timeout.Infinite, stop.Token);
                var powerFailed = server.PowerFailedAsync();
                await Task.WhenAny(signalled, powerFailed);
                if (!powerFailed.IsCompleted) await output.WriteLineAsync($"duet controller {me}: stopping: power-fail window of {powerFailWindow.TotalMilliseconds:F0} ms");
                var report = powerFailed.IsCompleted ? await powerFailed : await server.PowerFailAsync(Duet.Interconnect.Wire.PowerFailScope.Controller);
                await output.WriteLineAsync($"duet {DescribePowerFail(report)}");
            }
            finally
            {
                // Bounded: the window is over, and whatever is still running (a drive that never answers)
                // is left to recovery, as a power cut would leave it.
                var disposing = server.DisposeAsync().AsTask();
                if (await Task.WhenAny(disposing, Task.Delay(PowerFailExitGrace)) != disposing)
                    await error.WriteLineAsync($"duet controller {me}: stopping without waiting longer for what is still running");
            }
            await output.WriteLineAsync($"duet controller {me}: stopped");
            return ExitOk;
        });
        return cmd;
    }

    /// <summary>After its power-fail window, how long a controller process waits for its parts to close before it exits anyway.</summary>
    static readonly TimeSpan PowerFailExitGrace = TimeSpan.FromSeconds(2);

    static Command UpCommand()
    {
        var nbdPort = new Option<int>("--nbd-port") { Description = "NBD port of controller A on 127.0.0.1; B uses the next one; the host protocol's units use the four after (A0, A1, B0, B1)", DefaultValueFactory = _ => 10809 };
        var iclPort = new Option<int>("--icl-port") { Description = "With --icl tcp: the inter-controller link's port (default: NBD port + 6)" };
        var iscsiPort = new Option<int>("--iscsi-port") { Description = "iSCSI portal of controller A on 127.0.0.1; B uses the next one", DefaultValueFactory = _ => Duet.Iscsi.IscsiServerOptions.DefaultPort };
        var iclKind = IclOption();
        var mirror = new Option<string>("--mirror") { Description = "How writes are mirrored: batched, seed, seed-large, or none (unsafe: for measuring the mirror's cost)", DefaultValueFactory = _ => "batched" };
        mirror.AcceptOnlyFromAmong("batched", "seed", "seed-large", "none");
        var writeLog = WriteLogOption();
        var nvram = new Option<string>("--nvram") { Description = "NVRAM size of each controller (up to 1G)", DefaultValueFactory = _ => "256M" };
        var quiet = new Option<bool>("--quiet") { Description = "Log warnings and errors only" };
        var window = PowerFailWindowOption();
        var failback = FailbackOption();
        var failbackSettle = FailbackSettleOption();
        var cmd = new Command("up", "Start the controller pair on a data directory (created with the default layout if new) and serve its volumes until Ctrl-C, "
            + "SIGTERM or `duet power-fail`, which run both controllers' power-fail windows (the dirty cache stays in NVRAM) and stop the shelf")
        {
            nbdPort, iscsiPort, iclKind, iclPort, mirror, nvram, quiet, writeLog, window, failback, failbackSettle,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            string dir = ResolveDataDir(parse);
            int port = parse.GetValue(nbdPort);
            if (port is <= 0 or > 65530)
            {
                await error.WriteLineAsync($"duet: --nbd-port {port} is not a port number");
                return ExitUsage;
            }
            int icl = parse.GetValue(iclPort) is > 0 and var ip ? ip : port + 6;
            int scsi = parse.GetValue(iscsiPort);
            if (scsi is <= 0 or > 65534)
            {
                await error.WriteLineAsync($"duet: --iscsi-port {scsi} is not a port number (B uses the next one)");
                return ExitUsage;
            }
            int IscsiPort(string who) => scsi + (who == "A" ? 0 : 1);
            if (!Units.TryParseSize(parse.GetValue(nvram)!, out long nvramBytes) || Duet.Cache.Nvram.NvramLayout.Problem(nvramBytes, 1) is not null)
            {
                await error.WriteLineAsync($"duet: --nvram '{parse.GetValue(nvram)}' is not an NVRAM size (1M to 1G)");
                return ExitUsage;
            }
            if (!TryParseWindow(parse.GetValue(window)!, out var powerFailWindow))
            {
                await error.WriteLineAsync($"duet: --power-fail-window '{parse.GetValue(window)}' is not a duration from 100ms to 600s (e.g. 5s, 500ms)");
                return ExitUsage;
            }
            if (parse.GetValue(failbackSettle) < 0)
            {
                await error.WriteLineAsync($"duet: --failback-settle-ms {parse.GetValue(failbackSettle)} must not be negative");
                return ExitUsage;
            }
            using var stop = new StopSignal(ct);
            bool created;
            try
            {
                created = await CreateDefaultLayoutIfNewAsync(dir, parse.GetValue(quiet));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or Duet.Raid.Management.ManagementException)
            {
                await error.WriteLineAsync($"duet: cannot prepare {dir}: {e.Message}");
                return ExitFailed;
            }
            // Three processes: the shelf (the drives, fencing), then controllers A and B through it.
            var children = new Dictionary<string, (System.Diagnostics.Process Process, TaskCompletionSource Ready)>();
            var outputLock = new Lock();
            // Ports: NBD A port, B port + 1; host units A0 A1 B0 B1 on port + 2 .. port + 5 (10811..10814 by
            // default, HostWire's); the TCP ICL on port + 6.
            int HostPort(string who) => port + (who == "A" ? 2 : 4);
            string[] ControllerArgs(string who, int p) =>
            [
                "controller", "--name", who, "--data", dir, "--nbd-port", $"{p}", "--iscsi-port", $"{IscsiPort(who)}", "--host-port", $"{HostPort(who)}", "--icl", parse.GetValue(iclKind)!, "--icl-port", $"{icl}",
                "--mirror", parse.GetValue(mirror)!, "--nvram", $"{nvramBytes}", "--shelf", "--write-log", parse.GetValue(writeLog)!,
                "--power-fail-window", $"{powerFailWindow.TotalMilliseconds:F0}ms", "--supervised",
                "--failback", parse.GetValue(failback)!, "--failback-settle-ms", $"{parse.GetValue(failbackSettle)}", .. (parse.GetValue(quiet) ? new[] { "--quiet" } : []),
            ];
            (System.Diagnostics.Process Process, TaskCompletionSource Ready) Launch(string who, string[] args)
            {
                var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                psi.ArgumentList.Add(typeof(Program).Assembly.Location);
                foreach (var a in args) psi.ArgumentList.Add(a);
                var process = new System.Diagnostics.Process { StartInfo = psi, EnableRaisingEvents = true };
                var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                string tag = who == "shelf" ? "duet shelf: ready" : $"duet controller {who}: ready";
                void Relay(string? line)
                {
                    if (line is null) return;
                    lock (outputLock) output.WriteLine($"[{who}] {line}");
                    if (line.Contains(tag, StringComparison.Ordinal)) ready.TrySetResult();
                }
                process.OutputDataReceived += (_, e) => Relay(e.Data);
                process.ErrorDataReceived += (_, e) => Relay(e.Data);
                process.Start();
                process.BeginOutputReadLine();
                process.BeginErrorReadLine();
                children[who] = (process, ready);
                return (process, ready);
            }
            var ports = new Dictionary<string, int> { ["A"] = port, ["B"] = port + 1 };
            try
            {
                var shelf = Launch("shelf", ["shelf", "--data", dir, "--supervised"]);
                if (await Task.WhenAny(shelf.Ready.Task, shelf.Process.WaitForExitAsync(), Task.Delay(TimeSpan.FromMinutes(1), stop.Token)) != shelf.Ready.Task)
                {
                    if (!stop.Token.IsCancellationRequested) await error.WriteLineAsync("duet: the shelf did not start");
                    return stop.Token.IsCancellationRequested ? ExitOk : ExitFailed;
                }
                foreach (var (who, p) in ports) Launch(who, ControllerArgs(who, p));
                var ready = Task.WhenAll(ports.Keys.Select(w => children[w].Ready.Task));
                var first = await Task.WhenAny(ready, Task.WhenAny(children.Values.Select(c => c.Process.WaitForExitAsync())), Task.Delay(TimeSpan.FromMinutes(2), stop.Token));
                if (first != ready)
                {
                    foreach (var (who, c) in children)
                        if (c.Process.HasExited) await error.WriteLineAsync($"duet: {(who == "shelf" ? "the shelf" : $"controller {who}")} exited with code {c.Process.ExitCode} while starting");
                    if (!stop.Token.IsCancellationRequested) await error.WriteLineAsync("duet: the pair did not start");
                    return stop.Token.IsCancellationRequested ? ExitOk : ExitFailed;
                }
                using (var client = Duet.Host.Management.PairClient.ForDataDirectory(dir))
                {
                    var status = await client.StatusAsync(stop.Token);
                    await output.WriteLineAsync($"duet: data directory {dir}{(created ? " (new: created the default layout)" : "")}");
                    await output.WriteLineAsync($"duet: management socket {Duet.Host.Management.ManagementHost.SocketPathFor(dir)}; shelf {Duet.Shelf.ShelfServer.AdminSocketPathFor(dir)}");
                    await output.WriteLineAsync($"duet: controller A: NBD 127.0.0.1:{port}; controller B: NBD 127.0.0.1:{port + 1}; inter-controller link {(IclKind(parse.GetValue(iclKind)) == Duet.Host.Controller.IclTransportKind.Tcp ? $"TCP 127.0.0.1:{icl}" : "shared memory (/dev/shm)")}");
                    foreach (var a in status.Arrays)
                        await output.WriteLineAsync($"duet: array {a.Name}: RAID {a.Level}, {a.Members.Count} drives, {Units.FormatSize(a.CapacityBytes)}, {a.State}" +
                            (a.State == "optimal" ? "" : $" ({string.Join(", ", a.Members.Where(m => m.State != "active").Select(m => $"slot {m.Slot} {m.Drive ?? "-"} {m.State}"))})") +
                            $", served by {a.Owner}" + (a.PreferredOwner != a.Owner ? $" (preferred owner {a.PreferredOwner})" : ""));
                    await output.WriteLineAsync(parse.GetValue(failback) == "auto"
                        ? $"duet: failback auto: an array goes back to its preferred owner once the pair has been healthy for {parse.GetValue(failbackSettle) / 1000.0:0.#} s"
                        : "duet: failback manual: after a takeover, `duet array move NAME --to A|B` gives the arrays back (or start with --failback auto)");
                    foreach (var d in status.Drives.Where(d => d.Role == "foreign"))
                        await output.WriteLineAsync($"duet: drive {d.Name} not used: {d.State}");
                    foreach (var v in status.Volumes)
                    {
                        var owner = status.Arrays.FirstOrDefault(a => a.Name == v.Array)?.Owner ?? "A";
                        foreach (var (who, p) in ports)
                            await output.WriteLineAsync($"duet: NBD nbd://127.0.0.1:{p}/{v.Name} ({Units.FormatSize(v.SizeBytes)} on {v.Array}; {(who == owner ? "served" : $"forwarded to {owner}")} by {who})");
                    }
                    await output.WriteLineAsync($"duet: iSCSI target {Duet.Iscsi.IscsiServerOptions.DefaultTargetName}: controller A portal 127.0.0.1:{IscsiPort("A")},1; controller B portal 127.0.0.1:{IscsiPort("B")},2");
                    foreach (var v in status.Volumes.Where(v => v.Lun is not null).OrderBy(v => v.Lun))
                        await output.WriteLineAsync($"duet: iSCSI iscsi://127.0.0.1:{IscsiPort("A")}/{Duet.Iscsi.IscsiServerOptions.DefaultTargetName}/{v.Lun} and iscsi://127.0.0.1:{IscsiPort("B")}/{Duet.Iscsi.IscsiServerOptions.DefaultTargetName}/{v.Lun} ({v.Name})");
                    foreach (var v in status.Volumes.Where(v => v.LunWarning is not null))
                        await output.WriteLineAsync($"duet: volume {v.Name}: {v.LunWarning}");
                    await output.WriteLineAsync($"duet: host protocol units: A0 127.0.0.1:{HostPort("A")}, A1 127.0.0.1:{HostPort("A") + 1}, B0 127.0.0.1:{HostPort("B")}, B1 127.0.0.1:{HostPort("B") + 1} (group N: AN and BN)");
                    if (status.Volumes.Count > 0)
                        await output.WriteLineAsync($"duet: try: nbdinfo nbd://127.0.0.1:{port}/{status.Volumes[0].Name}");
                }
                await output.WriteLineAsync("duet: ready; Ctrl-C, SIGTERM or `duet power-fail` stops (data is kept)");
                await output.FlushAsync();
                await SuperviseAsync(dir, ports, children, Launch, ControllerArgs, output, stop.Token);
                await output.WriteLineAsync("duet: stopping");
            }
            finally
            {
                // Controllers first: both run their power-fail windows at once (AW-6; the dirty cache stays in
                // NVRAM), through the shelf; then the shelf.
                await PowerFailControllersAsync(dir, children.Where(kv => kv.Key != "shelf").ToDictionary(kv => kv.Key, kv => kv.Value.Process), powerFailWindow, output, outputLock);
                await StopControllersAsync(children.Where(kv => kv.Key == "shelf").Select(kv => kv.Value.Process));
            }
            bool clean = children.Values.All(c => c.Process.HasExited && c.Process.ExitCode == 0);
            await output.WriteLineAsync(clean ? "duet: stopped" : "duet: stopped (a process did not stop cleanly)");
            return clean ? ExitOk : ExitFailed;
        });
        return cmd;
    }

    /// <summary>
    /// `duet up`'s supervisor: runs until the stop signal, or until both controllers stopped after their
    /// power-fail windows (`duet power-fail`: the power failed for the pair). A shelf that dies is restarted
    /// at once (its state is on disk). A controller that dies is restarted only after its peer has taken
    /// over (the peer reports its port fenced), or, if the peer cannot (it is down too), after a while: the
    /// restarted controller then finds itself fenced, discards its NVRAM and rejoins as standby. A controller
    /// that stopped after its power-fail window (exit code 0) while its peer is in its own window is not
    /// restarted: the pair is stopping.
    /// </summary>
    static async Task SuperviseAsync(string dir, Dictionary<string, int> ports,
        Dictionary<string, (System.Diagnostics.Process Process, TaskCompletionSource Ready)> children,
        Func<string, string[], (System.Diagnostics.Process Process, TaskCompletionSource Ready)> launch,
        Func<string, int, string[]> controllerArgs, TextWriter output, CancellationToken stop)
    {
        var deadSince = new Dictionary<string, DateTime>();
        while (!stop.IsCancellationRequested)
        {
            try { await Task.Delay(TimeSpan.FromMilliseconds(100), stop); }
            catch (OperationCanceledException) { return; }
            var controllers = children.Where(kv => kv.Key != "shelf").Select(kv => kv.Value.Process).ToList();
            if (controllers.All(p => p.HasExited && p.ExitCode == 0))
            {
                await output.WriteLineAsync("duet: both controllers stopped after their power-fail windows");
                return;
            }
            foreach (var (who, c) in children.ToList())
            {
                if (!c.Process.HasExited) continue;
                if (!deadSince.ContainsKey(who))
                {
                    deadSince[who] = DateTime.UtcNow;
                    await output.WriteLineAsync($"duet: {(who == "shelf" ? "the shelf" : $"controller {who}")} exited with code {c.Process.ExitCode}");
                }
                if (who == "shelf")
                {
                    await output.WriteLineAsync("duet: restarting the shelf");
                    launch("shelf", ["shelf", "--data", dir, "--supervised"]);
                    deadSince.Remove(who);
                    continue;
                }
                string peer = who == "A" ? "B" : "A";
                bool takenOver = false, peerStopping = false;
                try
                {
                    using var client = new Duet.Host.Management.ManagementClient(Duet.Host.Controller.ControllerOptions.SocketFor(dir, peer), TimeSpan.FromSeconds(2));
                    var s = await client.StatusAsync(stop).WaitAsync(TimeSpan.FromSeconds(2), stop);
                    takenOver = s.Controller?.Failover?.PeerFenced == true;
                    peerStopping = s.Controller?.PoweringDown == true;
                }
                catch (Exception e) when (e is IOException or System.Net.Http.HttpRequestException or TimeoutException or Duet.Raid.Management.ManagementException
                    or System.Net.Sockets.SocketException or Duet.Host.Management.ControllerUnavailableException) { }
                // Both in their power-fail windows: the pair stops (above, once the peer has exited too).
                if (c.Process.ExitCode == 0 && (peerStopping || children[peer].Process.HasExited && children[peer].Process.ExitCode == 0)) continue;
                if (!takenOver && DateTime.UtcNow - deadSince[who] < TimeSpan.FromSeconds(10)) continue;
                await output.WriteLineAsync($"duet: restarting controller {who}{(takenOver ? $" (controller {peer} has taken over)" : "")}");
                launch(who, controllerArgs(who, ports[who]));
                deadSince.Remove(who);
            }
        }
    }

    /// <summary>
    /// `./duet up` stopping (AW-6): both controllers run their power-fail windows at once — a power failure
    /// of the pair, asked through their management sockets — and their reports are printed. A controller
    /// that cannot be asked (still starting) gets SIGTERM, its own window; one still running well after its
    /// window is killed (its NVRAM and write log are what the next start recovers from anyway).
    /// </summary>
    static async Task PowerFailControllersAsync(string dir, Dictionary<string, System.Diagnostics.Process> controllers, TimeSpan window, TextWriter output, Lock outputLock)
    {
        var asked = await Task.WhenAll(controllers.Where(kv => !kv.Value.HasExited).Select(async kv =>
        {
            try
            {
                using var client = new Duet.Host.Management.ManagementClient(Duet.Host.Controller.ControllerOptions.SocketFor(dir, kv.Key), window + TimeSpan.FromSeconds(30));
                return (Process: kv.Value, Report: (Duet.Raid.Management.PowerFailReport?)await client.PowerFailAsync(new Duet.Raid.Management.PowerFailRequest("pair")));
            }
            catch (Exception e) when (e is IOException or System.Net.Http.HttpRequestException or TaskCanceledException or Duet.Raid.Management.ManagementException
                or Duet.Host.Management.ControllerUnavailableException)
            {
                return (Process: kv.Value, Report: null);
            }
        }));
        foreach (var (process, report) in asked)
        {
            if (report is not null) lock (outputLock) output.WriteLine($"duet: {DescribePowerFail(report)}");
            else if (!process.HasExited) kill(process.Id, SIGTERM);
        }
        foreach (var p in controllers.Values)
        {
            try { await p.WaitForExitAsync().WaitAsync(window + TimeSpan.FromSeconds(15)); }
            catch (TimeoutException) { p.Kill(entireProcessTree: true); await p.WaitForExitAsync(); }
        }
    }

    static async Task StopControllersAsync(IEnumerable<System.Diagnostics.Process> processes)
    {
        var list = processes.ToList();
        foreach (var p in list) if (!p.HasExited) kill(p.Id, SIGTERM);
        foreach (var p in list)
        {
            try { await p.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60)); }
            catch (TimeoutException) { p.Kill(entireProcessTree: true); await p.WaitForExitAsync(); }
        }
    }

    /// <summary>A new data directory gets ARCHITECTURE.md's layout: eight sparse 1 GiB drives as two RAID 6
    /// arrays of four; vol0 on arr0 (served by A), vol1 on arr1 (served by B).</summary>
    static async Task<bool> CreateDefaultLayoutIfNewAsync(string dir, bool quiet)
    {
        var drives = Path.Combine(dir, "drives");
        if (Directory.Exists(drives) && Directory.EnumerateFiles(drives, "*.img").Any()) return false;
        using var loggers = ConsoleLogging(quiet);
        await using var m = await Duet.Raid.Management.ArrayManager.OpenAsync(new Duet.Raid.Management.ArrayManagerOptions { DataDirectory = dir, LoggerFactory = loggers });
        await DuetServer.CreateDefaultLayoutAsync(m, 8, Units.GiB(1));
        return true;
    }

    /// <summary>A bench run: a bad option it finds is a usage error, Ctrl-C an interruption.</summary>
    static async Task<int> RunBenchAsync(TextWriter error, Func<Task<int>> run)
    {
        try
        {
            return await run();
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
    }

    static Command BenchCommand()
    {
        var bench = new Command("bench", "Measure Duet beside its peers; prints `key value` lines");
        var seconds = new Option<double>("--seconds") { Description = "Time per figure", DefaultValueFactory = _ => 0.4 };
        var parity = new Command("parity", "XOR and P+Q parity throughput, Duet and ISA-L on the same buffers, single thread") { seconds };
        parity.SetAction(parse => ParityBench.Run(parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error, parse.GetValue(seconds)));
        bench.Subcommands.Add(parity);
        bench.Subcommands.Add(BenchNbdCommand());
        bench.Subcommands.Add(BenchIscsiCommand());
        bench.Subcommands.Add(BenchMemoryCommand());
        bench.Subcommands.Add(BenchMirrorCommand());
        bench.Subcommands.Add(BenchFailoverCommand());
        bench.Subcommands.Add(BenchRecoveryCommand());
        bench.Subcommands.Add(BenchAdapterCommand());
        return bench;
    }

    static Command BenchRecoveryCommand()
    {
        var size = new Option<string>("--size") { Description = "Data capacity of the RAID 6 array (4 + 2 drives, prefilled)", DefaultValueFactory = _ => "4G" };
        var logged = new Option<string>("--logged") { Description = "Comma list of logged-stripe counts", DefaultValueFactory = _ => "10,100,1000" };
        var steady = new Option<bool>("--no-steady") { Description = "Skip the write log's cost: steady-state 4 KiB random-write IOPS through duet up with and without the log" };
        var seconds = new Option<double>("--seconds") { Description = "Seconds of each steady-state fio run", DefaultValueFactory = _ => 5 };
        var runs = new Option<int>("--runs") { Description = "Steady-state runs of each mode (with and without the log, alternated on fresh pairs); the median is printed", DefaultValueFactory = _ => 2 };
        var command = new Command("recovery", "AW-4: recovery time after a power cut with N logged stripes, beside a full parity check of the same array; then the log's cost in steady-state write IOPS") { size, logged, steady, seconds, runs };
        command.SetAction(async (parse, ct) =>
        {
            if (!Units.TryParseSize(parse.GetValue(size)!, out long bytes) || bytes < Units.MiB(16))
            {
                await parse.InvocationConfiguration.Error.WriteLineAsync($"duet: --size {parse.GetValue(size)} is not a size of at least 16M");
                return ExitUsage;
            }
            if (parse.GetValue(runs) is < 1 or > 50)
            {
                await parse.InvocationConfiguration.Error.WriteLineAsync($"duet: --runs {parse.GetValue(runs)} is not a count from 1 to 50");
                return ExitUsage;
            }
            var counts = new List<int>();
            foreach (var part in parse.GetValue(logged)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (!int.TryParse(part, System.Globalization.CultureInfo.InvariantCulture, out int n) || n <= 0)
                {
                    await parse.InvocationConfiguration.Error.WriteLineAsync($"duet: --logged {parse.GetValue(logged)}: '{part}' is not a positive count");
                    return ExitUsage;
                }
                counts.Add(n);
            }
            int code = await RecoveryBench.RunAsync(new RecoveryBenchOptions { ArrayBytes = bytes, LoggedStripes = counts },
                parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error, ct);
            if (code != 0 || parse.GetValue(steady)) return code;
            return await WriteLogCostBench.RunAsync(new WriteLogCostBenchOptions { DuetCommand = SelfCommand(), Seconds = parse.GetValue(seconds), Runs = parse.GetValue(runs) },
                parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error, ct);
        });
        return command;
    }

    static Command BenchMirrorCommand()
    {
        var seconds = new Option<double>("--seconds") { Description = "Seconds per timed fio run", DefaultValueFactory = _ => 5 };
        var nvram = new Option<string>("--nvram") { Description = "NVRAM of each controller in the NBD part (steady state is after 3x this is written)", DefaultValueFactory = _ => "64M" };
        var size = new Option<string>("--size") { Description = "Volume size and nbdkit file size in the NBD part", DefaultValueFactory = _ => "1G" };
        var writes = new Option<int>("--writes") { Description = "Writes per count figure (an eighth of them, at least 4, for 1 MiB)", DefaultValueFactory = _ => 256 };
        var countsOnly = new Option<bool>("--counts-only") { Description = "Only the in-process doorbell and link-byte counts (no duet up, no fio)" };
        var cmd = new Command("mirror", "Doorbells and link bytes per mirrored write (in-process pair over the TCP ICL), then 4 KiB random-write IOPS through duet up with and without the mirror beside nbdkit")
        {
            seconds, nvram, size, writes, countsOnly,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var error = parse.InvocationConfiguration.Error;
            if (!Units.TryParseSize(parse.GetValue(nvram) ?? "", out long nvramBytes) || !Units.TryParseSize(parse.GetValue(size) ?? "", out long bytes))
            {
                await error.WriteLineAsync("duet: --nvram and --size take sizes (e.g. 64M, 1G)");
                return ExitUsage;
            }
            int n = parse.GetValue(writes);
            var options = new MirrorBenchOptions
            {
                DuetCommand = parse.GetValue(countsOnly) ? null : SelfCommand(), Seconds = parse.GetValue(seconds), NvramBytes = nvramBytes, SizeBytes = bytes,
                Writes = n, LargeWrites = Math.Max(4, n / 8), Counters = PairCountersAsync,
            };
            return await RunBenchAsync(error, () => MirrorBench.RunAsync(options, parse.InvocationConfiguration.Output, error, ct));
        });
        return cmd;
    }

    static Command BenchFailoverCommand()
    {
        var rounds = new Option<int>("--rounds") { Description = "How many times the owner is killed", DefaultValueFactory = _ => 10 };
        var nbdPort = new Option<int>("--nbd-port") { Description = "NBD port of controller A (B uses the next one, the host protocol P+2 .. P+5, iSCSI P+7 and P+8); default: nine free ports" };
        var load = new Option<double>("--load-seconds") { Description = "Seconds of 4 KiB write load on the owner before each kill", DefaultValueFactory = _ => 2 };
        var showLog = new Option<bool>("--show-log") { Description = "Print duet up's output (the controllers' log) on stderr at the end" };
        var cmd = new Command("failover", "kill -9 of the owning controller under write load, ROUNDS times: time from the kill to the first write the survivor acknowledges, "
            + "the survivor's phases (detect, fence, adopt, first I/O), and every acknowledged write read back")
        {
            rounds, nbdPort, load, showLog,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var error = parse.InvocationConfiguration.Error;
            var options = new FailoverBenchOptions
            {
                DuetCommand = SelfCommand(), Rounds = parse.GetValue(rounds), NbdPort = parse.GetValue(nbdPort), LoadSeconds = parse.GetValue(load), ShowLog = parse.GetValue(showLog),
                HeartbeatTimeoutMs = new Duet.Host.Controller.FailoverOptions().HeartbeatTimeout.TotalMilliseconds,
                Status = BenchControllerStatusAsync, MoveArray = BenchMoveArrayAsync,
            };
            return await RunBenchAsync(error, () => FailoverBench.RunAsync(options, parse.InvocationConfiguration.Output, error, ct));
        });
        return cmd;
    }

    /// <summary>One controller's status from its own socket; null while it is down or starting (for `bench failover`).</summary>
    public static async Task<Duet.Raid.Management.StatusInfo?> BenchControllerStatusAsync(string dataDir, string controller, CancellationToken ct)
    {
        if (!File.Exists(Duet.Host.Controller.ControllerOptions.SocketFor(dataDir, controller))) return null;
        try
        {
            using var client = new Duet.Host.Management.ManagementClient(Duet.Host.Controller.ControllerOptions.SocketFor(dataDir, controller), TimeSpan.FromSeconds(2));
            return await client.StatusAsync(ct).WaitAsync(TimeSpan.FromSeconds(3), ct);
        }
        catch (Exception e) when (e is IOException or System.Net.Http.HttpRequestException or TimeoutException or Duet.Host.Management.ControllerUnavailableException
            or System.Net.Sockets.SocketException or Duet.Raid.Management.ManagementException or TaskCanceledException && !ct.IsCancellationRequested)
        {
            return null;
        }
    }

    /// <summary>`duet array move ARRAY --to TO` on a data directory (for `bench failover`).</summary>
    public static async Task BenchMoveArrayAsync(string dataDir, string array, string to, CancellationToken ct)
    {
        using var client = Duet.Host.Management.PairClient.ForDataDirectory(dataDir, TimeSpan.FromSeconds(120));
        await client.MoveArrayAsync(array, new Duet.Raid.Management.MoveArrayRequest(to), ct);
    }

    /// <summary>Controller A's cache and mirror counters on a data directory (for `bench mirror` and `bench iscsi`).</summary>
    public static async Task<PairCounters> PairCountersAsync(string dataDir, CancellationToken ct)
    {
        using var client = Duet.Host.Management.PairClient.ForDataDirectory(dataDir);
        var status = await client.StatusAsync(ct);
        var a = new[] { status.Controller, status.PeerController }.FirstOrDefault(c => c?.Name == "A")
            ?? throw new InvalidOperationException($"controller A of {dataDir} did not answer its status");
        return new PairCounters(a.DirtyElements, a.MirroredWrites, a.WriteThroughs, a.Batches, a.Doorbells, a.LinkMessageBytes + a.LinkDataBytes);
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
            return await RunBenchAsync(error, () => NbdBench.RunAsync(options, parse.InvocationConfiguration.Output, error, ct));
        });
        return cmd;
    }

    static Command BenchIscsiCommand()
    {
        var seconds = new Option<double>("--seconds") { Description = "Seconds per timed point (iscsi-perf: whole seconds)", DefaultValueFactory = _ => 5 };
        var runs = new Option<int>("--runs") { Description = "Runs per figure (the median is printed)", DefaultValueFactory = _ => 1 };
        var size = new Option<string>("--size") { Description = "Volume size and tgt's backing file size (e.g. 256M, 1G)", DefaultValueFactory = _ => "256M" };
        var cmd = new Command("iscsi", "iscsi-perf 4 KiB random reads (QD 1/16/64) and qemu-img bench 4 KiB writes and reads (QD 1/16/64) and 1 MiB sequential (QD 8) "
            + "against Duet (RAID 6 over 4 drives on /dev/shm, writes mirrored) and tgt on a /dev/shm file, side by side")
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
            var options = new IscsiBenchOptions
            {
                DuetCommand = SelfCommand(), Seconds = parse.GetValue(seconds), Runs = parse.GetValue(runs), SizeBytes = bytes, Counters = PairCountersAsync,
            };
            return await RunBenchAsync(error, () => IscsiBench.RunAsync(options, parse.InvocationConfiguration.Output, error, ct));
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
