using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Serialization;
using Duet.Core;
using Duet.Host.Management;
using Duet.Shelf;
using Microsoft.Extensions.Logging;

namespace Duet.Cli;

// `duet shelf`: the drive enclosure both controllers share (docs/internals/shelf-protocol.md).
// `duet shelf` alone serves DATA/drives on DATA/shelf-A.sock, DATA/shelf-B.sock (one per
// controller port; --tcp adds a TCP listener for a port) and DATA/shelf-admin.sock until
// SIGTERM or Ctrl-C. The verbs status, pull, insert, fence and unfence talk to a running shelf
// over its admin socket. Exit codes as everywhere: 0 done, 1 refused or no shelf running,
// 2 bad arguments.
public static partial class Program
{
    static partial void AddShelfCommands(RootCommand root) => root.Subcommands.Add(ShelfCommand());

    static Command ShelfCommand()
    {
        var tcp = new Option<ShelfTcpListener[]>("--tcp")
        {
            Description = "Also serve a controller port over TCP, e.g. --tcp A=0.0.0.0:7101 --tcp B=0.0.0.0:7102 (the admin socket stays local)",
            HelpName = "PORT=HOST:TCPPORT",
            CustomParser = ParseTcpListeners,
        };
        var quiet = new Option<bool>("--quiet") { Description = "Log warnings and errors only" };
        var supervised = SupervisedOption();
        var shelf = new Command("shelf", "Run the drive shelf in the foreground (DATA/drives, one socket per controller port) until SIGTERM; or manage a running one")
        {
            tcp, quiet, supervised,
        };
        shelf.SetAction((parse, ct) => RunShelfAsync(parse, parse.GetValue(tcp) ?? [], parse.GetValue(quiet), parse.GetValue(supervised), ct));

        var status = new Command("status", "Show the shelf's ports (enabled, fenced, key, heartbeat, writes in flight), reservation, epochs, claims and slots");
        status.Options.Add(JsonOption);
        status.SetAction((pr, ct) => ShelfCallAsync(pr, ct, async (output, admin) =>
        {
            var s = await admin.StatusAsync(ct).ConfigureAwait(false);
            if (output.Json) output.WriteJson(s, ShelfJsonContext.Default.ShelfStatus);
            else PrintShelfStatus(output.Writer, s);
        }));

        var pullSlot = new Argument<string>("SLOT") { Description = "The drive to pull, e.g. d3" };
        var pull = new Command("pull", "Pull a drive out of its slot: it disappears from both controllers and every request to it fails") { pullSlot };
        SetShelfVerb(pull, (pr, admin, ct) => admin.PullAsync(pr.GetRequiredValue(pullSlot), ct), pr => $"pulled {pr.GetRequiredValue(pullSlot)}");

        var insertSlot = new Argument<string>("SLOT") { Description = "The pulled drive to put back" };
        var insert = new Command("insert", "Insert a pulled drive back into its slot, with what it held") { insertSlot };
        SetShelfVerb(insert, (pr, admin, ct) => admin.InsertAsync(pr.GetRequiredValue(insertSlot), ct), pr => $"inserted {pr.GetRequiredValue(insertSlot)}");

        var fencePort = PortArgument("The controller port to fence: A or B");
        var fence = new Command("fence", "Fence a controller port: disabled, registration removed; returns once its accepted writes have finished") { fencePort };
        SetShelfVerb(fence, (pr, admin, ct) => admin.FenceAsync(pr.GetRequiredValue(fencePort), ct),
            pr => $"fenced port {pr.GetRequiredValue(fencePort)} (no request from it reaches a drive now)");

        var unfencePort = PortArgument("The controller port to unfence: A or B");
        var unfence = new Command("unfence", "Lift a port's fence: it is enabled and may register again") { unfencePort };
        SetShelfVerb(unfence, (pr, admin, ct) => admin.UnfenceAsync(pr.GetRequiredValue(unfencePort), ct),
            pr => $"unfenced port {pr.GetRequiredValue(unfencePort)}");

        shelf.Subcommands.Add(status);
        shelf.Subcommands.Add(pull);
        shelf.Subcommands.Add(insert);
        shelf.Subcommands.Add(fence);
        shelf.Subcommands.Add(unfence);
        return shelf;
    }

    static Argument<string> PortArgument(string description)
    {
        var port = new Argument<string>("PORT") { Description = description };
        port.AcceptOnlyFromAmong("A", "B");
        return port;
    }

    static ShelfTcpListener[] ParseTcpListeners(ArgumentResult r)
    {
        var listeners = new List<ShelfTcpListener>();
        foreach (var token in r.Tokens.Select(t => t.Value))
        {
            int eq = token.IndexOf('=', StringComparison.Ordinal);
            string port = eq < 0 ? "" : token[..eq];
            if (port is not ("A" or "B"))
            {
                r.AddError($"--tcp '{token}' does not name a port: write PORT=HOST:TCPPORT, e.g. A=0.0.0.0:7101");
                return [];
            }
            if (!TryParseEndPoint(token[(eq + 1)..], out var endPoint))
            {
                r.AddError($"--tcp '{token}': '{token[(eq + 1)..]}' is not HOST:TCPPORT");
                return [];
            }
            if (listeners.Any(l => l.Port == port))
            {
                r.AddError($"--tcp names port {port} twice");
                return [];
            }
            listeners.Add(new ShelfTcpListener(port, endPoint));
        }
        return [.. listeners];
    }

    static bool TryParseEndPoint(string text, out IPEndPoint endPoint)
    {
        if (IPEndPoint.TryParse(text, out endPoint!) && endPoint.Port != 0) return true;
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
            return false;
        try
        {
            var address = Dns.GetHostAddresses(text[..colon]).FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork);
            if (address is null) return false;
            endPoint = new IPEndPoint(address, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    static async Task<int> RunShelfAsync(ParseResult parse, ShelfTcpListener[] tcp, bool quiet, bool supervised, CancellationToken ct)
    {
        var output = parse.InvocationConfiguration.Output;
        var error = parse.InvocationConfiguration.Error;
        string dir = ResolveDataDir(parse);
        using var loggers = ConsoleLogging(quiet);
        // Under ./duet up, Ctrl-C is the supervisor's: the controllers' power-fail windows need the shelf.
        using var stop = new StopSignal(ct, ignoreInterrupt: supervised);
        Duet.Shelf.Shelf shelf;
        ShelfServer server;
        try
        {
            shelf = ShelfServer.OpenShelf(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            await error.WriteLineAsync($"duet: the shelf cannot open {dir}: {e.Message}");
            return ExitFailed;
        }
        try
        {
            server = new ShelfServer(shelf, new ShelfServerOptions { DataDirectory = dir, Tcp = tcp }, loggers.CreateLogger("Duet.Shelf"));
            await server.StartAsync(stop.Token);
        }
        catch (Exception e) when (e is IOException or SocketException or UnauthorizedAccessException)
        {
            await shelf.DisposeAsync();
            await error.WriteLineAsync($"duet: the shelf cannot start on {dir}: {e.Message}");
            return ExitFailed;
        }
        await using (shelf)
        await using (server)
        {
            var slots = shelf.Status().Slots;
            await output.WriteLineAsync($"duet shelf: ready; {slots.Count} drive(s) in {Duet.Drives.FileShelf.DirectoryFor(dir)}; " +
                $"port A {ShelfServer.SocketPathFor(dir, "A")}, port B {ShelfServer.SocketPathFor(dir, "B")}, admin {ShelfServer.AdminSocketPathFor(dir)}" +
                string.Concat(server.TcpEndPoints.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $", port {kv.Key} on tcp {kv.Value}")));
            await output.FlushAsync();
            try { await Task.Delay(Timeout.Infinite, stop.Token); } catch (OperationCanceledException) { }
            if (supervised && server.ControllerConnections > 0)
            {
                // SIGTERM to the whole process group (a service manager stopping `./duet up`): the controllers are
                // running their power-fail windows through these ports; the drives go once they have let go.
                await output.WriteLineAsync($"duet shelf: stopping once the controllers have let go (at most {SupervisedShelfStopWait.TotalSeconds:0} s)");
                var until = DateTime.UtcNow + SupervisedShelfStopWait;
                while (server.ControllerConnections > 0 && DateTime.UtcNow < until) await Task.Delay(100, CancellationToken.None);
            }
            await output.WriteLineAsync("duet shelf: stopping");
            await server.StopAsync();
        }
        await output.WriteLineAsync("duet shelf: stopped");
        return ExitOk;
    }

    /// <summary>How long a shelf under `./duet up` waits, after SIGTERM, for the controllers to stop using it.</summary>
    static readonly TimeSpan SupervisedShelfStopWait = TimeSpan.FromSeconds(30);

    static void SetShelfVerb(Command command, Func<ParseResult, ShelfAdminClient, CancellationToken, Task> call, Func<ParseResult, string> done)
    {
        command.Options.Add(JsonOption);
        command.SetAction((pr, ct) => ShelfCallAsync(pr, ct, async (output, admin) =>
        {
            await call(pr, admin, ct).ConfigureAwait(false);
            if (output.Json) output.WriteJson(new OkResponse(true), Json.OkResponse);
            else output.Writer.WriteLine(done(pr));
        }));
    }

    static async Task<int> ShelfCallAsync(ParseResult pr, CancellationToken ct, Func<Output, ShelfAdminClient, Task> body)
    {
        var output = Output.For(pr, pr.GetValue(JsonOption));
        string dir = ResolveDataDir(pr);
        var socket = ShelfServer.AdminSocketPathFor(dir);
        if (!File.Exists(socket)) return output.Fail($"no shelf is running on {dir} (no {socket}); start one with 'duet shelf --data {dir}'");
        await using var admin = ShelfAdminClient.ForDataDirectory(dir);
        try
        {
            await body(output, admin).ConfigureAwait(false);
            return ExitOk;
        }
        catch (ShelfException e) when (e.Error == ShelfError.Unreachable)
        {
            return output.Fail($"no shelf is answering on {socket}: {e.Message}");
        }
        catch (ShelfException e)
        {
            return output.Fail(e.Message);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            output.Fail("interrupted");
            return ExitInterrupted;
        }
    }

    static void PrintShelfStatus(TextWriter w, ShelfStatus s)
    {
        w.WriteLine("ports:");
        foreach (var p in s.Ports)
        {
            string state = p.Fenced ? "FENCED" : p.Enabled ? "enabled" : "disabled";
            string key = p.Key == 0 ? "not registered" : $"key 0x{p.Key:x}";
            w.WriteLine($"  {p.Port}: {state}, {key}, heartbeat {p.Heartbeat}, {p.InFlightWrites} write(s) in flight");
        }
        var holder = s.Ports.FirstOrDefault(p => p.Key != 0 && p.Key == s.ReservationHolder);
        w.WriteLine(s.ReservationHolder == 0 ? "reservation: none"
            : $"reservation: write exclusive, registrants only; held by key 0x{s.ReservationHolder:x}{(holder is null ? "" : $" (port {holder.Port})")}");
        w.WriteLine($"epoch counter: {s.EpochCounter}");
        if (s.Claims.Count == 0) w.WriteLine("claims: none");
        else
        {
            w.WriteLine("claims:");
            foreach (var c in s.Claims) w.WriteLine($"  array 0x{c.Serial:x16}: port {c.Owner}, epoch {c.Epoch}");
        }
        if (s.Slots.Count == 0) w.WriteLine("slots: none");
        else
        {
            w.WriteLine("slots:");
            int width = s.Slots.Max(d => d.Name.Length);
            foreach (var d in s.Slots)
                w.WriteLine($"  {d.Name.PadRight(width)}  {Units.FormatSize(d.BlockCount * Units.BlockBytes),9}  serial {d.Serial}{(d.Pulled ? "  PULLED" : "")}");
        }
    }
}

/// <summary>`duet shelf status --json`: the shelf's <see cref="ShelfStatus"/> as it is.</summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(ShelfStatus))]
internal sealed partial class ShelfJsonContext : JsonSerializerContext;
