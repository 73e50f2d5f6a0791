using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Duet.Bench;

/// <summary>
/// The processes and files one benchmark run started or created, so that every exit path
/// (success, failure, Ctrl-C) stops and removes exactly those and nothing else. Servers are
/// stopped by PID with SIGKILL.
/// </summary>
sealed class Children : IAsyncDisposable
{
    readonly List<Child> _children = [];
    readonly List<string> _paths = [];
    readonly TextWriter _log;

    public Children(TextWriter log) => _log = log;

    public sealed class Child
    {
        internal Child(string name, Process process) { Name = name; Process = process; }
        public string Name { get; }
        public Process Process { get; }
        public int Pid => Process.Id;
        public readonly Lock OutputLock = new();
        public readonly System.Text.StringBuilder Output = new();
        public bool HasExited => Process.HasExited;

        public string OutputText { get { lock (OutputLock) return Output.ToString(); } }
    }

    /// <summary>Starts FILE ARGS with stdout and stderr captured (never inherited, so nothing
    /// the child prints lands among the bench's `key value` lines).</summary>
    public Child Start(string name, string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (environment is not null) foreach (var (k, v) in environment) psi.Environment[k] = v;
        var p = new Process { StartInfo = psi };
        var child = new Child(name, p);
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (child.OutputLock) child.Output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (child.OutputLock) child.Output.AppendLine(e.Data); };
        lock (_children)
        {
            p.Start();
            _children.Add(child);
        }
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return child;
    }

    /// <summary>Runs a short command to completion; kills it if <paramref name="ct"/> fires.</summary>
    public async Task<(int Code, string Output)> RunAsync(string file, IEnumerable<string> args, CancellationToken ct)
    {
        var c = Start(Path.GetFileName(file), file, args);
        try
        {
            await c.Process.WaitForExitAsync(ct).ConfigureAwait(false);
            c.Process.WaitForExit(); // drain the output readers
            return (c.Process.ExitCode, c.OutputText);
        }
        finally
        {
            await StopAsync(c).ConfigureAwait(false);
        }
    }

    public void Track(string path) { lock (_paths) _paths.Add(path); }

    /// <summary>SIGKILL (nothing these servers hold is kept: their files are removed after),
    /// and fast enough for the two seconds System.CommandLine grants after Ctrl-C or SIGTERM.</summary>
    public async Task StopAsync(Child c)
    {
        try
        {
            if (!c.Process.HasExited)
            {
                c.Process.Kill(entireProcessTree: true); // fio forks its job processes
                await c.Process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (InvalidOperationException) { } // already reaped
        catch (System.ComponentModel.Win32Exception) { } // exited meanwhile
        finally
        {
            lock (_children) _children.Remove(c);
            c.Process.Dispose();
        }
    }

    /// <summary>SIGTERM, then <see cref="StopAsync"/> (SIGKILL) if it is still running after
    /// <paramref name="grace"/>: for `duet up`, whose controllers remove their shared-memory link
    /// files (/dev/shm/duet-icl-*) only when they stop cleanly; SIGKILL leaves them behind.</summary>
    public async Task TerminateAsync(Child c, TimeSpan grace)
    {
        if (!c.HasExited)
        {
            var (code, _) = await RunAsync("kill", ["-TERM", c.Pid.ToString(CultureInfo.InvariantCulture)], CancellationToken.None).ConfigureAwait(false);
            if (code == 0)
            {
                using var timeout = new CancellationTokenSource(grace);
                try { await c.Process.WaitForExitAsync(timeout.Token).ConfigureAwait(false); }
                catch (OperationCanceledException) { _log.WriteLine($"bench: {c.Name} (pid {c.Pid}) still running {grace.TotalSeconds:F0} s after SIGTERM; killing it"); }
            }
        }
        await StopAsync(c).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        List<Child> left;
        lock (_children) left = [.. _children];
        await Task.WhenAll(left.Select(StopAsync)).ConfigureAwait(false);
        List<string> paths;
        lock (_paths) paths = [.. _paths];
        foreach (var p in Enumerable.Reverse(paths))
        {
            try
            {
                if (Directory.Exists(p)) Directory.Delete(p, recursive: true);
                else if (File.Exists(p)) File.Delete(p);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                _log.WriteLine($"bench: could not remove {p}: {e.Message}");
            }
        }
    }


    /// <summary>RssAnon in MiB (from /proc/PID/status) of a process and all its descendants — for
    /// `duet up`, the supervisor and both controllers — or -1 if unreadable.</summary>
    public static double RssAnonMiB(int pid) => Tree(pid).Sum(p => Math.Max(0, StatusKiB(p, "RssAnon:"))) / 1024.0 is var v && v > 0 ? v : -1;

    public static double RssMiB(int pid) => Tree(pid).Sum(p => Math.Max(0, StatusKiB(p, "VmRSS:"))) / 1024.0;

    /// <summary>CPU seconds (user + system, from /proc/PID/stat) of a process and each of its
    /// descendants, keyed by PID, with the process's arguments (from /proc/PID/cmdline).</summary>
    public static Dictionary<int, (string Command, double Seconds)> CpuSeconds(int pid)
    {
        var r = new Dictionary<int, (string, double)>();
        foreach (int p in Tree(pid))
        {
            try
            {
                var stat = File.ReadAllText($"/proc/{p}/stat");
                var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                // fields 14 and 15 (utime, stime) are the 12th and 13th after the command
                double ticks = long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture);
                var cmd = File.ReadAllText($"/proc/{p}/cmdline").Replace('\0', ' ').Trim();
                r[p] = (cmd, ticks / 100.0); // USER_HZ is 100 on Linux
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return r;
    }

    /// <summary>A process and its descendants, from /proc/PID/task/*/children.</summary>
    static List<int> Tree(int pid)
    {
        var all = new List<int> { pid };
        for (int i = 0; i < all.Count; i++)
        {
            try
            {
                foreach (var task in Directory.EnumerateDirectories($"/proc/{all[i]}/task"))
                    foreach (var child in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                        if (int.TryParse(child, out int c) && !all.Contains(c)) all.Add(c);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return all;
    }

    static long StatusKiB(int pid, string key)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith(key, StringComparison.Ordinal))
                    return long.Parse(line[key.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (IOException) { }
        return -1024;
    }

    /// <summary>Whether a program is on PATH.</summary>
    public static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Any(d => File.Exists(Path.Combine(d, program)));
}

/// <summary>Turns Ctrl-C, SIGTERM and SIGHUP into cancellation while a benchmark runs, so its
/// cleanup (stop the servers it started, remove its files) runs instead of the process dying
/// with them still up.</summary>
sealed class TerminationSignals : IDisposable
{
    readonly CancellationTokenSource _cts;
    readonly PosixSignalRegistration[] _registrations;

    public TerminationSignals(CancellationToken outer)
    {
        _cts = CancellationTokenSource.CreateLinkedTokenSource(outer);
        _registrations = [.. new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP }
            .Select(s => PosixSignalRegistration.Create(s, c => { c.Cancel = true; _cts.Cancel(); }))];
    }

    public CancellationToken Token => _cts.Token;

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }
}
