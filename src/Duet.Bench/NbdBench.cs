using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Duet.Core;
using Duet.Raid;
using Duet.Raid.Management;

namespace Duet.Bench;

public sealed record NbdBenchOptions
{
    /// <summary>How to run the duet CLI: e.g. ["dotnet", "/path/duet.dll"] or ["/path/duet"];
    /// the bench appends `up --data DIR --nbd-port PORT --quiet`.</summary>
    public required IReadOnlyList<string> DuetCommand { get; init; }
    public double Seconds { get; init; } = 3;
    public int Runs { get; init; } = 1;
    /// <summary>Volume size, and the size of the peers' files; a multiple of 1 MiB.</summary>
    public long SizeBytes { get; init; } = Units.GiB(1);
    /// <summary>Where the drives and the peers' files live (tmpfs, so the disk is never the bottleneck).</summary>
    public string WorkDirectory { get; init; } = "/dev/shm";
}

/// <summary>
/// fio (nbd ioengine, libnbd) against Duet and, in the same run, nbdkit's file plugin and
/// qemu-nbd on a /dev/shm file of the same size: 4 KiB random read and write at iodepth 1
/// and 32, 1 MiB sequential read and write at iodepth 8. The method of
/// /work/shared/bench/peers/bench_nbd.sh: every target is written once in full, untimed,
/// before anything is measured; no write sends FLUSH or FUA; all servers on 127.0.0.1.
///
/// Duet runs as a child `duet up` on a data directory with four drives in one RAID 6 array
/// (64 KiB chunk) holding one volume of the given size. The three servers run side by side
/// and each test is measured on the three in turn (duet, nbdkit, qemu-nbd; run after run), so
/// drift of the shared 2-vCPU machine hits them alike.
///
/// stdout: <c>key value</c> lines (medians over the runs); progress and per-run figures on
/// the log writer.
/// </summary>
public static class NbdBench
{
    public static readonly IReadOnlyList<string> Servers = ["duet", "nbdkit", "qemunbd"];

    public sealed record FioTest(string Key, string Rw, string BlockSize, int IoDepth)
    {
        public bool IsRead => Rw.Contains("read", StringComparison.Ordinal);
    }

    public static readonly IReadOnlyList<FioTest> Tests =
    [
        new("randread4k.qd1", "randread", "4k", 1),
        new("randwrite4k.qd1", "randwrite", "4k", 1),
        new("randread4k.qd32", "randread", "4k", 32),
        new("randwrite4k.qd32", "randwrite", "4k", 32),
        new("read1m.qd8", "read", "1m", 8),
        new("write1m.qd8", "write", "1m", 8),
    ];

    public const string VolumeName = "vol0";

    internal sealed record Sample(double Iops, double MiBps, double P99Us);

    public static async Task<int> RunAsync(NbdBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        if (!(o.Seconds > 0)) throw new ArgumentOutOfRangeException(nameof(o), "seconds must be > 0");
        if (o.Runs < 1) throw new ArgumentOutOfRangeException(nameof(o), "runs must be >= 1");
        if (o.SizeBytes < Units.MiB(16) || o.SizeBytes % Units.MiB(1) != 0)
            throw new ArgumentOutOfRangeException(nameof(o), "size must be a multiple of 1 MiB, at least 16 MiB");
        foreach (var tool in new[] { "fio", "nbdkit", "qemu-nbd", "nbdinfo" })
            if (!Children.OnPath(tool))
            {
                log.WriteLine($"bench nbd: {tool} is not on PATH (apt-get install fio nbdkit qemu-utils libnbd-bin)");
                return 1;
            }

        using var signals = new TerminationSignals(ct);
        ct = signals.Token;
        var sw = Stopwatch.StartNew();
        await using var children = new Children(log);
        var root = Path.Combine(o.WorkDirectory, $"duet-bench-nbd.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        children.Track(root);
        Directory.CreateDirectory(root);
        long sizeMiB = o.SizeBytes / Units.MiB(1);

        // ---- Duet: four drives, one RAID 6 array, one volume of exactly SIZE ----
        var dataDir = Path.Combine(root, "duet");
        long driveBytes = DriveBytesFor(o.SizeBytes);
        log.WriteLine($"bench nbd: creating RAID 6 over 4 drives of {Units.FormatSize(driveBytes)} in {dataDir}, volume {VolumeName} of {Units.FormatSize(o.SizeBytes)}");
        await CreateLayoutAsync(dataDir, driveBytes, o.SizeBytes, ct).ConfigureAwait(false);

        // ---- the peers' backing files, filled so none is sparse ----
        var nbdkitFile = Path.Combine(root, "nbdkit.img");
        var qemuFile = Path.Combine(root, "qemu-nbd.img");
        await FillAsync(nbdkitFile, o.SizeBytes, ct).ConfigureAwait(false);
        await FillAsync(qemuFile, o.SizeBytes, ct).ConfigureAwait(false);

        // ---- servers ----
        // A server found exited before a run (something outside the bench signalled it: on this
        // shared machine nbdkit twice exited with status 0, i.e. on SIGTERM/SIGHUP, mid-run) is
        // started again on the same port and data, and the run is repeated; the log says so.
        int duetPort = TcpPorts.FreePorts(TcpPorts.DuetUpPorts), nbdkitPort = TcpPorts.FreePort(), qemuPort = TcpPorts.FreePort();
        var urls = new Dictionary<string, string>
        {
            ["duet"] = $"nbd://127.0.0.1:{duetPort}/{VolumeName}",
            ["nbdkit"] = $"nbd://127.0.0.1:{nbdkitPort}",
            ["qemunbd"] = $"nbd://127.0.0.1:{qemuPort}",
        };
        var starters = new Dictionary<string, Func<Children.Child>>
        {
            ["duet"] = () => children.Start("duet", o.DuetCommand[0],
                o.DuetCommand.Skip(1).Concat(["up", "--data", dataDir, .. TcpPorts.DuetUpArgs(duetPort), "--quiet"])),
            // No --exit-with-parent: it is PR_SET_PDEATHSIG, which fires when the *thread* that
            // forked exits, and .NET forks from a thread-pool thread that may retire mid-run.
            ["nbdkit"] = () => children.Start("nbdkit", "nbdkit",
                ["-f", "-i", "127.0.0.1", "-p", nbdkitPort.ToString(CultureInfo.InvariantCulture), "file", nbdkitFile]),
            ["qemunbd"] = () => children.Start("qemu-nbd", "qemu-nbd",
                ["-f", "raw", "-b", "127.0.0.1", "-p", qemuPort.ToString(CultureInfo.InvariantCulture), "-t", "-e", "16", qemuFile]),
        };
        var running = new Dictionary<string, Children.Child>();
        async Task EnsureRunningAsync(string s)
        {
            if (running.TryGetValue(s, out var c))
            {
                if (!c.HasExited) return;
                log.WriteLine($"bench nbd: WARNING {s} (pid {c.Pid}) exited with status {c.Process.ExitCode}; starting it again on the same data. Its output:\n{c.OutputText}");
                await children.StopAsync(c).ConfigureAwait(false);
            }
            c = running[s] = starters[s]();
            await WaitReadyAsync(children, c, urls[s], ct).ConfigureAwait(false);
            log.WriteLine($"bench nbd: {s} pid {c.Pid} serving {urls[s]}");
        }
        async Task<(int Code, string Text)> FioAsync(string s, List<string> args)
        {
            await EnsureRunningAsync(s).ConfigureAwait(false);
            var r = await children.RunAsync("fio", args, ct).ConfigureAwait(false);
            if (r.Code == 0 || !running[s].HasExited) return r;
            log.WriteLine($"bench nbd: WARNING fio failed while {s} exited; repeating the run");
            await EnsureRunningAsync(s).ConfigureAwait(false);
            return await children.RunAsync("fio", args, ct).ConfigureAwait(false);
        }
        foreach (var s in Servers) await EnsureRunningAsync(s).ConfigureAwait(false);

        // ---- untimed prefill: every target written once in full ----
        foreach (var s in Servers)
        {
            log.WriteLine($"bench nbd: prefilling {s} ({sizeMiB} MiB, fio 1 MiB sequential write, untimed)");
            var (code, text) = await FioAsync(s, FioArgs(urls[s], "prefill", "write", "1m", 8, o.SizeBytes, seconds: null, jsonPath: null)).ConfigureAwait(false);
            if (code != 0) throw new InvalidOperationException($"fio prefill of {s} failed (exit {code}):\n{text}");
        }
        double idleRss = Children.RssAnonMiB(running["duet"].Pid);
        log.WriteLine($"bench nbd: duet RssAnon after prefill {idleRss:F1} MiB");

        // ---- measure ----
        var samples = new Dictionary<(string Test, string Server), List<Sample>>();
        var jsonPath = Path.Combine(root, "fio.json");
        foreach (var t in Tests)
        {
            for (int run = 1; run <= o.Runs; run++)
            {
                foreach (var s in Servers)
                {
                    var (code, text) = await FioAsync(s, FioArgs(urls[s], t.Key, t.Rw, t.BlockSize, t.IoDepth, o.SizeBytes, o.Seconds, jsonPath)).ConfigureAwait(false);
                    if (code != 0) throw new InvalidOperationException($"fio {t.Key} on {s} failed (exit {code}):\n{text}");
                    var sample = ParseFio(jsonPath, t.IsRead);
                    if (!samples.TryGetValue((t.Key, s), out var list)) samples[(t.Key, s)] = list = [];
                    list.Add(sample);
                    log.WriteLine(FormattableString.Invariant($"  {t.Key} run {run} {s}: {sample.Iops:F0} IOPS, {sample.MiBps:F1} MiB/s, p99 {sample.P99Us:F0} us"));
                }
            }
            // print as each test completes, so an interrupted run still leaves figures
            var med = Servers.ToDictionary(s => s, s => new Sample(
                Median(samples[(t.Key, s)].Select(x => x.Iops)), Median(samples[(t.Key, s)].Select(x => x.MiBps)), Median(samples[(t.Key, s)].Select(x => x.P99Us))));
            foreach (var s in Servers)
            {
                Print(output, $"nbd.{t.Key}.{s}_iops", med[s].Iops, "F0");
                Print(output, $"nbd.{t.Key}.{s}_mibps", med[s].MiBps, "F1");
                Print(output, $"nbd.{t.Key}.{s}_p99_us", med[s].P99Us, "F0");
            }
            Print(output, $"nbd.{t.Key}.duet_vs_nbdkit", med["duet"].Iops / med["nbdkit"].Iops, "F2");
            Print(output, $"nbd.{t.Key}.duet_vs_qemunbd", med["duet"].Iops / med["qemunbd"].Iops, "F2");
            await output.FlushAsync(ct).ConfigureAwait(false);
        }
        Print(output, "memory.loaded_rss_anon_mib", Children.RssAnonMiB(running["duet"].Pid), "F1");
        log.WriteLine($"bench nbd: done in {sw.Elapsed.TotalSeconds:F0} s; stopping servers, removing {root}");
        return 0;
    }

    /// <summary>Drive size for a 4-drive RAID 6 (two data members) whose capacity holds SIZE:
    /// the metadata area, plus one tag block per 512 data blocks, plus one spare group.</summary>
    public static long DriveBytesFor(long volumeBytes)
    {
        long memberBlocks = volumeBytes / Units.BlockBytes / 2;
        long groups = (memberBlocks + MemberLayout.TagsPerGroup - 1) / MemberLayout.TagsPerGroup + 1;
        return (MemberLayout.MetadataBlocks + groups * MemberLayout.GroupBlocks) * (long)Units.BlockBytes;
    }

    internal static async Task CreateLayoutAsync(string dataDir, long driveBytes, long volumeBytes, CancellationToken ct)
    {
        await using var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { DataDirectory = dataDir }, ct).ConfigureAwait(false);
        var names = new List<string>();
        for (int i = 0; i < 4; i++)
        {
            names.Add($"d{i}");
            await arrays.AddDriveAsync(new AddDriveRequest($"d{i}", driveBytes), ct).ConfigureAwait(false);
        }
        await arrays.CreateArrayAsync(new CreateArrayRequest("arr0", 6, names), ct).ConfigureAwait(false);
        await arrays.CreateVolumeAsync(new CreateVolumeRequest(VolumeName, "arr0", volumeBytes), ct).ConfigureAwait(false);
    }

    internal static async Task FillAsync(string path, long bytes, CancellationToken ct)
    {
        var zeros = new byte[1 << 20];
        await using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0);
        for (long done = 0; done < bytes; done += zeros.Length)
            await f.WriteAsync(zeros, ct).ConfigureAwait(false);
    }

    internal static async Task WaitReadyAsync(Children children, Children.Child server, string url, CancellationToken ct)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(60))
        {
            if (server.HasExited)
                throw new InvalidOperationException($"{server.Name} exited (code {server.Process.ExitCode}) before serving {url}:\n{server.OutputText}");
            var (code, _) = await children.RunAsync("nbdinfo", ["--size", url], ct).ConfigureAwait(false);
            if (code == 0) return;
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        throw new TimeoutException($"{server.Name} did not serve {url} within 60 s:\n{server.OutputText}");
    }

    internal static List<string> FioArgs(string url, string name, string rw, string bs, int qd, long sizeBytes, double? seconds, string? jsonPath)
    {
        var a = new List<string>
        {
            $"--name={name}", "--ioengine=nbd", $"--uri={url}", $"--rw={rw}", $"--bs={bs}",
            $"--iodepth={qd.ToString(CultureInfo.InvariantCulture)}", $"--size={sizeBytes.ToString(CultureInfo.InvariantCulture)}",
            "--randrepeat=0", "--norandommap",
        };
        if (seconds is { } s) { a.Add($"--runtime={Math.Max(1, (long)Math.Round(s * 1000)).ToString(CultureInfo.InvariantCulture)}ms"); a.Add("--time_based"); }
        if (jsonPath is not null) { a.Add("--output-format=json"); a.Add($"--output={jsonPath}"); }
        return a;
    }

    internal static Sample ParseFio(string jsonPath, bool read)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(jsonPath));
        var job = doc.RootElement.GetProperty("jobs")[0].GetProperty(read ? "read" : "write");
        double iops = job.GetProperty("iops").GetDouble();
        double bw = job.GetProperty("bw_bytes").GetDouble();
        double p99 = job.GetProperty("clat_ns").GetProperty("percentile").GetProperty("99.000000").GetDouble();
        return new Sample(iops, bw / (1 << 20), p99 / 1000);
    }

    static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    internal static void Print(TextWriter output, string key, double value, string format) =>
        output.WriteLine($"{key} {value.ToString(format, CultureInfo.InvariantCulture)}");
}
