using System.Diagnostics;
using System.Globalization;

namespace Duet.Bench;

/// <summary>
/// The resident memory of an idle `duet up`: a child process on a fresh data directory (the
/// default layout: eight sparse 1 GiB drives, two RAID 6 arrays, two volumes), left idle for a
/// few seconds after it says it is ready, then /proc/PID/status is read. RssAnon is the
/// anonymous part (GC heap, native allocations, JIT), which is what the goal is about; VmRSS
/// also counts the mapped runtime and framework files.
/// </summary>
public static class MemoryBench
{
    public static async Task<int> RunAsync(IReadOnlyList<string> duetCommand, double idleSeconds, string workDirectory, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(duetCommand);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        using var signals = new TerminationSignals(ct);
        ct = signals.Token;
        await using var children = new Children(log);
        var dir = Path.Combine(workDirectory, $"duet-bench-mem.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        children.Track(dir);
        int port = TcpPorts.FreePorts(TcpPorts.DuetUpPorts);
        var duet = children.Start("duet", duetCommand[0],
            duetCommand.Skip(1).Concat(["up", "--data", dir, .. TcpPorts.DuetUpArgs(port), "--quiet"]));
        var sw = Stopwatch.StartNew();
        while (!duet.OutputText.Contains("duet: ready", StringComparison.Ordinal))
        {
            if (duet.HasExited) { log.WriteLine($"bench memory: duet up exited (code {duet.Process.ExitCode}):\n{duet.OutputText}"); return 1; }
            if (sw.Elapsed > TimeSpan.FromSeconds(60)) { log.WriteLine($"bench memory: duet up not ready after 60 s:\n{duet.OutputText}"); return 1; }
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
        log.WriteLine($"bench memory: duet pid {duet.Pid} ready after {sw.Elapsed.TotalSeconds:F1} s on {dir}; idle {idleSeconds} s");
        await Task.Delay(TimeSpan.FromSeconds(idleSeconds), ct).ConfigureAwait(false);
        if (duet.HasExited) { log.WriteLine($"bench memory: duet up exited while idle:\n{duet.OutputText}"); return 1; }
        output.WriteLine($"memory.idle_rss_anon_mib {Children.RssAnonMiB(duet.Pid).ToString("F1", CultureInfo.InvariantCulture)}");
        output.WriteLine($"memory.idle_rss_mib {Children.RssMiB(duet.Pid).ToString("F1", CultureInfo.InvariantCulture)}");
        return 0;
    }
}
