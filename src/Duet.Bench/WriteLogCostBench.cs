using System.Diagnostics;
using System.Globalization;
using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Bench;

public sealed record WriteLogCostBenchOptions
{
    public required IReadOnlyList<string> DuetCommand { get; init; }
    /// <summary>NVRAM of each controller: steady state is after 3x this was written.</summary>
    public long NvramBytes { get; init; } = Units.MiB(64);
    /// <summary>Volume size (RAID 6 on /dev/shm, as `bench nbd` lays it out).</summary>
    public long SizeBytes { get; init; } = Units.GiB(1);
    public double Seconds { get; init; } = 5;
    public int Runs { get; init; } = 2;
    public string WorkDirectory { get; init; } = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
}

/// <summary>
/// AW-4's cost (issue 6, item 7): 4 KiB random-write IOPS through NBD at depth 32 in steady state
/// (after three times the NVRAM was written, so destage runs all the time and every array write
/// opens and closes a write-log record and sends its two checkpoints to the peer), with the log
/// and with `duet up --write-log off`, the two alternated <see cref="WriteLogCostBenchOptions.Runs"/>
/// times on fresh pairs; the median of each is printed.
/// </summary>
public static class WriteLogCostBench
{
    public static async Task<int> RunAsync(WriteLogCostBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        if (o.Runs < 1) throw new ArgumentOutOfRangeException(nameof(o), "runs must be >= 1");
        await using var children = new Children(log);
        var root = Path.Combine(o.WorkDirectory, $"duet-bench-log.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        children.Track(root);
        Directory.CreateDirectory(root);
        var jsonPath = Path.Combine(root, "fio.json");
        long fillBytes = 3 * o.NvramBytes;
        var with = new List<double>();
        var without = new List<double>();
        for (int run = 0; run < o.Runs; run++)
        {
            foreach (var mode in run % 2 == 0 ? new[] { "on", "off" } : ["off", "on"])
            {
                double iops = await SteadyAsync(mode, run).ConfigureAwait(false);
                (mode == "on" ? with : without).Add(iops);
            }
        }
        double w = Median(with), wo = Median(without);
        NbdBench.Print(output, "log.randwrite4k.with_iops", w, "F0");
        NbdBench.Print(output, "log.randwrite4k.without_iops", wo, "F0");
        NbdBench.Print(output, "log.randwrite4k.cost", 1 - w / wo, "F3");
        return 0;

        async Task<double> SteadyAsync(string mode, int run)
        {
            var dataDir = Path.Combine(root, $"duet-log-{mode}-{run}");
            await NbdBench.CreateLayoutAsync(dataDir, NbdBench.DriveBytesFor(o.SizeBytes), o.SizeBytes, ct).ConfigureAwait(false);
            int port = TcpPorts.FreePorts(TcpPorts.DuetUpPorts);
            var url = $"nbd://127.0.0.1:{port}/{NbdBench.VolumeName}";
            var duet = children.Start($"duet (--write-log {mode})", o.DuetCommand[0], o.DuetCommand.Skip(1).Concat(["up", "--data", dataDir,
                .. TcpPorts.DuetUpArgs(port), "--nvram", o.NvramBytes.ToString(CultureInfo.InvariantCulture), "--write-log", mode, "--quiet"]));
            try
            {
                await NbdBench.WaitReadyAsync(children, duet, url, ct).ConfigureAwait(false);
                var fill = NbdBench.FioArgs(url, "fill", "randwrite", "4k", 32, o.SizeBytes, null, null);
                fill.Add($"--io_size={fillBytes.ToString(CultureInfo.InvariantCulture)}");
                var sw = Stopwatch.StartNew();
                var (code, text) = await children.RunAsync("fio", fill, ct).ConfigureAwait(false);
                if (code != 0) throw new InvalidOperationException($"fio fill failed (exit {code}):\n{text}");
                (code, text) = await children.RunAsync("fio", NbdBench.FioArgs(url, "steady", "randwrite", "4k", 32, o.SizeBytes, o.Seconds, jsonPath), ct).ConfigureAwait(false);
                if (code != 0) throw new InvalidOperationException($"fio steady failed (exit {code}):\n{text}");
                var s = NbdBench.ParseFio(jsonPath, read: false);
                log.WriteLine(FormattableString.Invariant($"bench log: --write-log {mode} run {run + 1}: {s.Iops:F0} IOPS steady (fill of {Units.FormatSize(fillBytes)} and run took {sw.Elapsed.TotalSeconds:F0} s)"));
                if (duet.HasExited) throw new InvalidOperationException($"duet up exited (code {duet.Process.ExitCode}):\n{duet.OutputText}");
                return s.Iops;
            }
            finally
            {
                await children.TerminateAsync(duet, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                try { Directory.Delete(dataDir, recursive: true); } catch (IOException) { }
            }
        }
    }

    static double Median(List<double> values)
    {
        var s = values.Order().ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }
}
