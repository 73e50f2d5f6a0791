using System.CommandLine;
using System.Globalization;
using Duet.Host.Management;
using Duet.Raid.Management;

namespace Duet.Cli;

// `duet power-fail` (AW-6): tells the running controllers of a data directory that the power is
// failing. Each runs its graceful power-fail window (docs/internals/write-log.md, "The power-fail
// window") and stops; `./duet up` then stops the shelf and exits. Exit codes: 0 every controller that
// answered ran its window; 1 no controller is running, or none answered; 2 bad arguments.
public static partial class Program
{
    /// <summary>How long `duet power-fail` waits for a controller's report: its window (5 s by default) and
    /// then some; a controller that takes longer is reported as not answering.</summary>
    static readonly TimeSpan PowerFailAnswerTimeout = TimeSpan.FromSeconds(60);

    /// <summary>How long `duet power-fail` waits for the processes to be gone after the reports.</summary>
    static readonly TimeSpan PowerFailStopWait = TimeSpan.FromSeconds(30);

    static Command PowerFailCommand()
    {
        var cmd = new Command("power-fail", "Tell the running controller pair that power is failing: each controller finishes or leaves to recovery "
            + "its pending work within its power-fail window (--power-fail-window of duet up / duet controller), then stops; ./duet up then stops the shelf. "
            + "The dirty cache stays in NVRAM; the next ./duet up replays it and settles the logged stripes")
        {
            JsonOption,
        };
        cmd.SetAction(async (parse, ct) =>
        {
            var output = Output.For(parse, parse.GetValue(JsonOption));
            string dir = ResolveDataDir(parse);
            var sockets = new[] { "A", "B" }.Select(c => (Name: c, Socket: Duet.Host.Controller.ControllerOptions.SocketFor(dir, c)))
                .Where(c => File.Exists(c.Socket)).ToList();
            if (sockets.Count == 0)
                return output.Fail($"no controller is running on {dir} (no {ManagementHost.SocketFileName} or duet-B.sock there): nothing to power-fail; start the pair with ./duet up");
            var answers = await Task.WhenAll(sockets.Select(async c => (c.Name, Result: await PowerFailOneAsync(c.Socket, ct))));
            var reports = answers.Where(a => a.Result.Report is not null).Select(a => a.Result.Report!).ToList();
            if (output.Json) output.WriteJson<IReadOnlyList<PowerFailReport>>(reports, ManagementJsonContext.Indented.IReadOnlyListPowerFailReport);
            else
            {
                foreach (var (name, result) in answers)
                {
                    if (result.Report is { } r) output.Writer.WriteLine(DescribePowerFail(r));
                    // Told by its peer, it may have run its window and stopped before our request reached it.
                    else if (reports.Any(r => r.PeerDone)) output.Writer.WriteLine($"controller {name}: no report (it had stopped already: its peer saw its window end)");
                    else output.Writer.WriteLine($"controller {name}: no report: {result.Error}");
                }
            }
            if (reports.Count == 0)
                return output.Fail($"no controller on {dir} answered: {string.Join("; ", answers.Select(a => $"{a.Name}: {a.Result.Error}"))}");
            // The controllers stop once they answered; then `./duet up` stops the shelf.
            await WaitGoneAsync(sockets.Select(s => s.Socket), PowerFailStopWait, ct);
            var shelf = Duet.Shelf.ShelfServer.AdminSocketPathFor(dir);
            if (File.Exists(shelf))
            {
                bool gone = await WaitGoneAsync([shelf], PowerFailStopWait, ct);
                if (!output.Json)
                    output.Writer.WriteLine(gone ? "shelf: stopped" : "shelf: still running (./duet up stops it once both controllers are down; a shelf started by hand stops on SIGTERM)");
            }
            return ExitOk;
        });
        return cmd;
    }

    static async Task<(PowerFailReport? Report, string? Error)> PowerFailOneAsync(string socket, CancellationToken ct)
    {
        try
        {
            using var client = new ManagementClient(socket, PowerFailAnswerTimeout);
            return (await client.PowerFailAsync(new PowerFailRequest("pair"), ct), null);
        }
        catch (Exception e) when (e is ControllerUnavailableException or HttpRequestException or IOException or ManagementException
            or TaskCanceledException && !ct.IsCancellationRequested)
        {
            return (null, e is TaskCanceledException ? $"no answer within {PowerFailAnswerTimeout.TotalSeconds:0} s" : e.Message);
        }
    }

    /// <summary>Waits until none of <paramref name="paths"/> exists (the socket files go with their servers).</summary>
    static async Task<bool> WaitGoneAsync(IEnumerable<string> paths, TimeSpan limit, CancellationToken ct)
    {
        var list = paths.ToList();
        var until = DateTime.UtcNow + limit;
        while (list.Any(File.Exists))
        {
            if (DateTime.UtcNow >= until) return false;
            await Task.Delay(100, ct);
        }
        return true;
    }

    /// <summary>One controller's window on one line, for people.</summary>
    public static string DescribePowerFail(PowerFailReport r)
    {
        var c = CultureInfo.InvariantCulture;
        string how = r.WindowExpired ? "ran out" : "finished";
        return string.Create(c, $"controller {r.Controller}: power-fail window ({r.Scope}) {how} in {r.ElapsedMs:F0} ms of {r.WindowMs:F0}: ") +
               $"host commands in flight {r.HostCommandsInFlight} ({r.HostCommandsFinished} finished, {r.HostCommandsFailed} failed, {r.HostCommandsUnfinished} unfinished), {r.HostCommandsRefused} not started; " +
               $"destage {(r.DestageStopped ? "stopped" : "still writing")}, drives {(r.DrivesFlushed ? "flushed" : "not flushed")}, NVRAM {(r.NvramSynced ? "synced" : "not synced")}; " +
               $"left to the next start: {r.DirtyElementsKept} dirty cache elements (in NVRAM), {r.LogRecordsLeft} write-log records; " +
               $"peer {(r.Scope == "pair" ? (r.PeerDone ? "stopped too" : r.PeerTold ? "told, not done within the window" : "not reached") : (r.PeerTold ? "told: takes the arrays over" : "not reached"))}";
    }

    /// <summary>Parses a power-fail window: "5s", "500ms", "2.5" (seconds); from 100 ms to 600 s.</summary>
    public static bool TryParseWindow(string text, out TimeSpan window)
    {
        window = default;
        text = text.Trim();
        double scale = 1000;
        if (text.EndsWith("ms", StringComparison.OrdinalIgnoreCase)) { scale = 1; text = text[..^2]; }
        else if (text.EndsWith('s') || text.EndsWith('S')) text = text[..^1];
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || !double.IsFinite(value)) return false;
        window = TimeSpan.FromMilliseconds(value * scale);
        return window >= TimeSpan.FromMilliseconds(100) && window <= TimeSpan.FromMinutes(10);
    }

    static Option<string> PowerFailWindowOption() => new("--power-fail-window")
    {
        Description = "AW-6: how long a controller's graceful power-fail window may take (SIGTERM, duet power-fail): host commands in flight finish "
            + "or fail, in-flight drive writes complete, drives and NVRAM are flushed, then it stops; the dirty cache stays in NVRAM. E.g. 5s, 500ms",
        DefaultValueFactory = _ => "5s",
    };
}
