using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Duet.Raid.Management;

namespace Duet.Bench;

public sealed record AdapterBenchOptions
{
    /// <summary>How to run this duet (dotnet + dll, or the apphost).</summary>
    public required IReadOnlyList<string> DuetCommand { get; init; }

    /// <summary>One controller's status (data directory, "A" or "B"); null while it does not answer.</summary>
    public required Func<string, string, CancellationToken, Task<StatusInfo?>> Status { get; init; }

    /// <summary>Seconds per timed fio run.</summary>
    public double Seconds { get; init; } = 5;

    public string WorkDirectory { get; init; } = "/dev/shm";
}

/// <summary>
/// `duet bench adapter` (issue 8): what the host adapter costs and what it buys, in one run, with
/// fio (nbd engine) as the client.
/// <list type="bullet">
/// <item>4 KiB random writes at depth 1 through the adapter (multicast) and straight to the
/// owner's NBD port: median completion latency.</item>
/// <item>The same at depth 32: IOPS, the adapter process's CPU per I/O, and link bytes per write
/// (both controllers' ICL message and data bytes).</item>
/// <item>The longest completion fio sees when the owning controller is killed (kill -9) under 4 KiB
/// random writes at depth 16: with multicast, then with plain path failover on a fresh pair.</item>
/// </list>
/// </summary>
public static class AdapterBench
{
    const string Volume = "vol0"; // on arr0, which A owns

    public static async Task<int> RunAsync(AdapterBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        if (!(o.Seconds > 0)) throw new ArgumentOutOfRangeException(nameof(o), "--seconds must be > 0");
        foreach (var tool in new[] { "fio" })
        {
            if (!OnPath(tool))
            {
                log.WriteLine($"bench adapter: {tool} is not on PATH (apt-get install fio); nothing measured");
                return 1;
            }
        }
        using var signals = new TerminationSignals(ct);
        ct = signals.Token;
        var total = Stopwatch.StartNew();
        await using var children = new Children(log);
        var root = Path.Combine(o.WorkDirectory, $"duet-bench-adapter.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        children.Track(root);
        Directory.CreateDirectory(root);

        // Part 1: latency, IOPS, CPU and link bytes, then the multicast stall, on one pair.
        var pair = await StartPairAsync(o, children, Path.Combine(root, "multicast"), log, ct).ConfigureAwait(false);
        var adapter = await StartAdapterAsync(o, children, pair, pathFailover: false, log, ct).ConfigureAwait(false);
        string viaAdapter = $"nbd://127.0.0.1:{adapter.Port}/{Volume}", direct = $"nbd://127.0.0.1:{pair.Port}/{Volume}";

        // Untimed warm-up of both paths first (JIT, first touches of the NVRAM and the sockets): the direct run used to
        // come second and find the controller warm, the adapter's first, and the adapter's figure was the slower start.
        await FioAsync(children, root, viaAdapter, depth: 1, 2, ct, ramp: 0).ConfigureAwait(false);
        await FioAsync(children, root, direct, depth: 1, 2, ct, ramp: 0).ConfigureAwait(false);
        var qd1Adapter = await FioAsync(children, root, viaAdapter, depth: 1, o.Seconds, ct).ConfigureAwait(false);
        var qd1Direct = await FioAsync(children, root, direct, depth: 1, o.Seconds, ct).ConfigureAwait(false);
        Print(output, "adapter.randwrite4k.qd1.p50_us", qd1Adapter.P50Us, "F1");
        Print(output, "direct.randwrite4k.qd1.p50_us", qd1Direct.P50Us, "F1");
        Print(output, "adapter.randwrite4k.qd1.added_latency", qd1Adapter.P50Us / qd1Direct.P50Us - 1, "F3");

        var before = await LinkBytesAsync(o, pair.Dir, ct).ConfigureAwait(false);
        double cpuBefore = CpuSeconds(adapter.Child.Pid);
        var qd32Adapter = await FioAsync(children, root, viaAdapter, depth: 32, o.Seconds, ct, ramp: 0).ConfigureAwait(false);
        double cpu = CpuSeconds(adapter.Child.Pid) - cpuBefore;
        var after = await LinkBytesAsync(o, pair.Dir, ct).ConfigureAwait(false);
        var qd32Direct = await FioAsync(children, root, direct, depth: 32, o.Seconds, ct).ConfigureAwait(false);
        Print(output, "adapter.randwrite4k.qd32.iops", qd32Adapter.Iops, "F0");
        Print(output, "direct.randwrite4k.qd32.iops", qd32Direct.Iops, "F0");
        Print(output, "adapter.randwrite4k.qd32.cpu_us_per_io", cpu * 1e6 / qd32Adapter.Ios, "F1");
        Print(output, "adapter.link_bytes_per_write", (double)(after - before) / qd32Adapter.Ios, "F0");
        await output.FlushAsync(ct).ConfigureAwait(false);

        double multicastStall = await StallAsync(children, root, viaAdapter, pair, o, log, ct).ConfigureAwait(false);
        Print(output, "adapter.stall_ms.multicast", multicastStall, "F0");
        await children.StopAsync(adapter.Child).ConfigureAwait(false);
        await children.TerminateAsync(pair.Up, TimeSpan.FromSeconds(30)).ConfigureAwait(false);

        // Part 2: plain path failover, on a fresh pair.
        var pair2 = await StartPairAsync(o, children, Path.Combine(root, "pathfailover"), log, ct).ConfigureAwait(false);
        var adapter2 = await StartAdapterAsync(o, children, pair2, pathFailover: true, log, ct).ConfigureAwait(false);
        double pathStall = await StallAsync(children, root, $"nbd://127.0.0.1:{adapter2.Port}/{Volume}", pair2, o, log, ct).ConfigureAwait(false);
        Print(output, "adapter.stall_ms.pathfailover", pathStall, "F0");
        Print(output, "adapter.stall.multicast_vs_pathfailover", multicastStall / pathStall, "F2");
        await children.StopAsync(adapter2.Child).ConfigureAwait(false);
        await children.TerminateAsync(pair2.Up, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        log.WriteLine($"bench adapter: done in {total.Elapsed.TotalSeconds:F0} s");
        return 0;
    }

    sealed record Pair(Children.Child Up, string Dir, int Port);

    sealed record Adapter(Children.Child Child, int Port);

    static async Task<Pair> StartPairAsync(AdapterBenchOptions o, Children children, string dir, TextWriter log, CancellationToken ct)
    {
        int port = TcpPorts.FreePorts(TcpPorts.DuetUpPorts);
        var up = children.Start("duet up", o.DuetCommand[0], o.DuetCommand.Skip(1).Concat(["up", "--data", dir, .. TcpPorts.DuetUpArgs(port)]));
        log.WriteLine($"bench adapter: duet up pid {up.Pid} on {dir}, NBD {port} (A), host units {port + 2} (A0) and {port + 4} (B0)");
        await FailoverBench.WaitForOutputAsync(up, "duet: ready", TimeSpan.FromSeconds(120), ct).ConfigureAwait(false);
        var pair = new Pair(up, dir, port);
        await WaitHealthyAsync(o, pair, ct).ConfigureAwait(false);
        return pair;
    }

    static async Task<Adapter> StartAdapterAsync(AdapterBenchOptions o, Children children, Pair pair, bool pathFailover, TextWriter log, CancellationToken ct)
    {
        int port = TcpPorts.FreePort();
        string[] args = ["adapter", "--port", $"{port}", "--units", $"127.0.0.1:{pair.Port + 2},127.0.0.1:{pair.Port + 4}", "--quiet"];
        var child = children.Start("duet adapter", o.DuetCommand[0], o.DuetCommand.Skip(1).Concat(pathFailover ? [.. args, "--path-failover"] : args));
        await FailoverBench.WaitForOutputAsync(child, "duet adapter: ready", TimeSpan.FromSeconds(60), ct).ConfigureAwait(false);
        log.WriteLine($"bench adapter: adapter pid {child.Pid} on {port} ({(pathFailover ? "path failover" : "multicast")})");
        return new Adapter(child, port);
    }

    /// <summary>Both controllers active, mirror healthy, arr0 served by A.</summary>
    static async Task WaitHealthyAsync(AdapterBenchOptions o, Pair pair, CancellationToken ct)
    {
        var wait = Stopwatch.StartNew();
        string why = "";
        while (wait.Elapsed < TimeSpan.FromSeconds(120))
        {
            var a = await o.Status(pair.Dir, "A", ct).ConfigureAwait(false);
            var b = await o.Status(pair.Dir, "B", ct).ConfigureAwait(false);
            why = a?.Controller is not { } ac ? "A does not answer" : b?.Controller is not { } bc ? "B does not answer"
                : ac.Mirror != "healthy" || bc.Mirror != "healthy" ? "mirror not healthy"
                : a.Arrays.FirstOrDefault(x => x.Name == "arr0")?.Owner != "A" ? "arr0 not on A" : "";
            if (why == "") return;
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        throw new TimeoutException($"the pair was not healthy within 120 s ({why}):\n{pair.Up.OutputText}");
    }

    static async Task<long> LinkBytesAsync(AdapterBenchOptions o, string dir, CancellationToken ct)
    {
        long sum = 0;
        foreach (var c in new[] { "A", "B" })
        {
            var s = await o.Status(dir, c, ct).ConfigureAwait(false) ?? throw new InvalidOperationException($"controller {c} does not answer");
            sum += s.Controller!.LinkMessageBytes + s.Controller.LinkDataBytes;
        }
        return sum;
    }

    sealed record FioResult(double Iops, long Ios, double P50Us, double MaxMs);

    /// <summary>fio's random 4 KiB writes; <paramref name="ramp"/> seconds first that fio leaves out of its
    /// figures (none where a count must cover every write, as link bytes per write do).</summary>
    static async Task<FioResult> FioAsync(Children children, string root, string uri, int depth, double seconds, CancellationToken ct,
        Func<Task>? during = null, int ramp = 1)
    {
        var json = Path.Combine(root, $"fio-{Guid.NewGuid():N}.json");
        string[] args =
        [
            "--name=bench", "--ioengine=nbd", $"--uri={uri}", "--rw=randwrite", "--bs=4k", $"--iodepth={depth}", "--norandommap=1",
            "--time_based=1", $"--runtime={seconds.ToString(CultureInfo.InvariantCulture)}", $"--ramp_time={ramp}", "--output-format=json", $"--output={json}",
        ];
        var run = children.RunAsync("fio", args, ct);
        if (during is not null) await during().ConfigureAwait(false);
        var (code, text) = await run.ConfigureAwait(false);
        if (code != 0) throw new InvalidOperationException($"fio on {uri} at depth {depth} failed (exit {code}):\n{text}\n{(File.Exists(json) ? File.ReadAllText(json) : "")}");
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var write = doc.RootElement.GetProperty("jobs")[0].GetProperty("write");
        if (write.TryGetProperty("error", out var e) && e.GetInt32() != 0) throw new InvalidOperationException($"fio reported error {e.GetInt32()} on {uri}");
        var clat = write.GetProperty("clat_ns");
        double p50 = clat.TryGetProperty("percentile", out var pct) ? pct.GetProperty("50.000000").GetDouble() / 1000 : double.NaN;
        return new FioResult(write.GetProperty("iops").GetDouble(), write.GetProperty("total_ios").GetInt64(), p50, clat.GetProperty("max").GetDouble() / 1e6);
    }

    /// <summary>Random 4 KiB writes at depth 16 through the adapter; kill -9 of A (the owner of vol0)
    /// two seconds in. fio must see no error; returns its longest completion in ms.</summary>
    static async Task<double> StallAsync(Children children, string root, string uri, Pair pair, AdapterBenchOptions o, TextWriter log, CancellationToken ct)
    {
        var r = await FioAsync(children, root, uri, depth: 16, Math.Max(o.Seconds, 6), ct, during: async () =>
        {
            await Task.Delay(TimeSpan.FromSeconds(3), ct).ConfigureAwait(false); // ramp 1 s + 2 s of load
            int pid = FailoverBench.ControllerPid(pair.Dir, "A");
            using (var victim = Process.GetProcessById(pid)) victim.Kill(); // SIGKILL
            log.WriteLine($"bench adapter: kill -9 of controller A (pid {pid})");
        }).ConfigureAwait(false);
        log.WriteLine($"bench adapter: fio went on with {r.Iops:F0} IOPS; longest completion {r.MaxMs:F0} ms");
        // What the stall is made of: the survivor's own account of its takeover (from when it last heard A).
        if (await o.Status(pair.Dir, "B", ct).ConfigureAwait(false) is { Controller.Failover.LastTakeover: { } t })
            log.WriteLine($"bench adapter: B took over: detected {t.DetectedMs:F0} ms, fenced {t.FencedMs:F0} ms, {t.AdoptedElements} mirrored elements adopted, " +
                $"serving {t.AdoptedMs:F0} ms after A was last heard; lease wait skipped (A's process proven gone): {(t.PeerProcessGone ? "yes" : "no")}");
        return r.MaxMs;
    }

    /// <summary>utime + stime of a process, in seconds.</summary>
    static double CpuSeconds(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        long ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return ticks / 100.0; // USER_HZ
    }

    static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, tool)));

    static void Print(TextWriter output, string key, double value, string format) =>
        output.WriteLine($"{key} {value.ToString(format, CultureInfo.InvariantCulture)}");
}
