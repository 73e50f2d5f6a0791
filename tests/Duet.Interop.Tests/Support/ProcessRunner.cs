using System.Diagnostics;
using System.Text;
using Xunit.Abstractions;

namespace Duet.Interop.Tests.Support;

public sealed record ProcessResult(string Command, int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"$ {Command}\nexit {ExitCode}\n{Stdout}{Stderr}";
}

/// <summary>Runs a client program to completion with a timeout, capturing its output.</summary>
public sealed class ProcessRunner(ITestOutputHelper log)
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(120);

    /// <summary>Runs the program and returns what it did, whatever its exit code.</summary>
    public async Task<ProcessResult> RunAsync(string file, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        var args = arguments.ToList();
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args) info.ArgumentList.Add(a);
        string command = $"{file} {string.Join(' ', args)}";
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {command}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        var limit = timeout ?? DefaultTimeout;
        using var cts = new CancellationTokenSource(limit);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{command} did not finish within {limit.TotalSeconds:0} s");
        }
        var result = new ProcessResult(command, process.ExitCode, await stdout, await stderr);
        log.WriteLine(result.ToString());
        return result;
    }

    /// <summary>Runs the program and requires exit code 0; returns its stdout.</summary>
    public async Task<string> RunOkAsync(string file, params string[] arguments)
    {
        var r = await RunAsync(file, arguments);
        Assert.True(r.ExitCode == 0, $"{r.Command} exited {r.ExitCode}: {r.Stderr}");
        return r.Stdout;
    }
}

/// <summary>
/// A long-running child process (here: `duet up`) whose output is collected line by line, so a
/// test can wait, bounded, for a line to appear and then for the process to exit.
/// </summary>
public sealed class BackgroundProcess : IAsyncDisposable
{
    readonly Process _process;
    readonly Lock _lock = new();
    readonly StringBuilder _output = new();
    readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly ITestOutputHelper _log;
    int _pendingStreams = 2;

    BackgroundProcess(Process process, ITestOutputHelper log)
    {
        _process = process;
        _log = log;
    }

    public int Id => _process.Id;

    public static BackgroundProcess Start(string file, IEnumerable<string> arguments, ITestOutputHelper log)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in arguments) info.ArgumentList.Add(a);
        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        var bp = new BackgroundProcess(process, log);
        process.OutputDataReceived += (_, e) => bp.OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => bp.OnLine(e.Data);
        if (!process.Start()) throw new InvalidOperationException($"could not start {file}");
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return bp;
    }

    void OnLine(string? line)
    {
        if (line is null)
        {
            // Both streams closed and the process gone: its output is complete.
            if (Interlocked.Decrement(ref _pendingStreams) == 0) _ = Task.Run(async () => { await _process.WaitForExitAsync(); _exited.TrySetResult(); });
            return;
        }
        lock (_lock) _output.AppendLine(line);
    }

    public string Output { get { lock (_lock) return _output.ToString(); } }

    public int Pid => _process.Id;

    /// <summary>kill -9: the process gets no chance to clean up.</summary>
    public void KillHard() => Assert.Equal(0, Posix.Kill(_process.Id, 9));

    /// <summary>Waits (bounded) until a line of output contains <paramref name="text"/>; fails if the process exits first.</summary>
    public async Task<string> WaitForOutputAsync(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            var output = Output;
            if (output.Contains(text, StringComparison.Ordinal)) return output;
            if (_exited.Task.IsCompleted) Assert.Fail($"the process exited with {_process.ExitCode} before printing '{text}':\n{output}");
            await Task.Delay(100);
        }
        Assert.Fail($"the process did not print '{text}' within {timeout.TotalSeconds:0} s:\n{Output}");
        return "";
    }

    /// <summary>Sends SIGTERM, as a service manager would.</summary>
    public void Terminate() => Assert.Equal(0, Posix.Kill(_process.Id, Posix.SIGTERM));

    /// <summary>Waits (bounded) for the process to exit and for all its output; returns the exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try { await _exited.Task.WaitAsync(cts.Token); }
        catch (OperationCanceledException) { Assert.Fail($"the process did not exit within {timeout.TotalSeconds:0} s:\n{Output}"); }
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _log.WriteLine($"--- process {_process.Id} output ---\n{Output}");
        _process.Dispose();
    }
}

static partial class Posix
{
    public const int SIGTERM = 15;
    public const int SIGCONT = 18;
    public const int SIGSTOP = 19;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);
}
