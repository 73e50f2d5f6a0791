using System.Diagnostics;
using Xunit.Abstractions;

namespace Duet.Iscsi.Tests;

/// <summary>Runs an external client with a timeout and logs its output.</summary>
internal static class IscsiProcess
{
    public sealed record Outcome(int ExitCode, string Stdout, string Stderr);

    public static async Task<Outcome> RunAsync(ITestOutputHelper output, string file, string arguments, int timeoutSeconds = 120, bool check = true)
    {
        var info = new ProcessStartInfo(file, arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {arguments} did not finish in {timeoutSeconds} s");
        }
        string text = await stdout, errors = await stderr;
        output.WriteLine($"$ {file} {arguments}\n{(text.Length > 20000 ? text[..20000] + "..." : text)}{errors}");
        if (check) Assert.True(process.ExitCode == 0, $"{file} {arguments} exited {process.ExitCode}: {errors}");
        return new Outcome(process.ExitCode, text, errors);
    }
}
