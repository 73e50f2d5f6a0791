using System.Diagnostics;
using System.Globalization;
using Duet.Core;
using Duet.Iscsi;

namespace Duet.Bench;

public sealed record IscsiBenchOptions
{
    /// <summary>How to run the duet CLI (see <see cref="NbdBenchOptions.DuetCommand"/>).</summary>
    public required IReadOnlyList<string> DuetCommand { get; init; }
    /// <summary>Seconds per timed point (iscsi-perf takes whole seconds: rounded, at least 1).</summary>
    public double Seconds { get; init; } = 5;
    public int Runs { get; init; } = 1;
    /// <summary>Volume size, and the size of tgt's backing file; a multiple of 1 MiB.</summary>
    public long SizeBytes { get; init; } = Units.MiB(256);
    /// <summary>Where the drives and tgt's backing file live (tmpfs).</summary>
    public string WorkDirectory { get; init; } = "/dev/shm";
    /// <summary>Controller A's cache and mirror counters on a data directory (the CLI asks the
    /// management socket): used to wait until Duet's cache is clean before each point and to log
    /// how many writes were mirrored; null: only the CPU-quiet wait.</summary>
    public Func<string, CancellationToken, Task<PairCounters>>? Counters { get; init; }
}

/// <summary>
/// iSCSI against Duet and, in the same run, tgt (tgtd, user space) serving a /dev/shm file of
/// the same size — the method of /work/shared/bench/peers/bench_iscsi.sh:
/// <list type="bullet">
/// <item>iscsi-perf (libiscsi; it can only read) 4 KiB random reads at queue depth 1, 16, 64:
/// <c>randread4k.qdN</c>. Its offsets are <c>rand() % blocks</c> in 512-byte LBAs, so not 4 KiB-aligned.</item>
/// <item>qemu-img bench (QEMU's libiscsi driver, <c>-t none</c>) 4 KiB writes and reads at depth 1, 16,
/// 64 with the script's scattered pattern (offset advances by 4096 × 104729 bytes modulo the volume,
/// 4 KiB-aligned, every block once per pass): <c>randwrite4k.qdN</c> and <c>qemu_randread4k.qdN</c>;
/// 1 MiB sequential write and read at depth 8: <c>seqwrite1m.qd8</c>, <c>seqread1m.qd8</c>. The
/// request count is calibrated per target and point by a first untimed run (which is also that
/// point's warm-up) to last about the given seconds; figures use qemu-img's own completion time.</item>
/// </list>
/// No write sends FLUSH or FUA. Writes carry the byte 0xA5 (qemu-img --pattern), never zeros.
///
/// Duet runs as a child `duet up --mirror batched` (every write mirrored to controller B's NVRAM
/// before it is acknowledged) on a data directory with four drives in one RAID 6 array, one volume
/// of exactly SIZE (LUN 0), measured through controller A's portal, the volume's owner. Both targets
/// are written in full once, untimed, first. Each point is measured on duet, then tgt, run after
/// run; before each, the bench waits until both servers are idle (Duet's cache clean, neither
/// process tree using CPU), so one's background work does not land in the other's figure. At the
/// end `duet up` gets SIGTERM (a clean stop removes its /dev/shm link files), tgtd SIGKILL (it
/// ignores SIGTERM) and its control socket files are removed.
///
/// stdout: <c>key value</c> lines (medians over the runs): <c>iscsi.TEST.{duet,tgt}_iops</c> and
/// <c>_mibps</c>, <c>iscsi.TEST.duet_vs_tgt</c> (ratio of the medians); <c>iscsi.size_mib</c>,
/// <c>iscsi.duet_raid_level</c>; with <see cref="IscsiBenchOptions.Counters"/>,
/// <c>iscsi.duet_mirrored_elements</c> (16 KiB cache elements controller A mirrored to B during the
/// write points, calibration included) and <c>iscsi.duet_write_throughs</c>. Progress and per-run
/// figures on the log.
/// </summary>
public static class IscsiBench
{
    public static readonly IReadOnlyList<string> Targets = ["duet", "tgt"];

    public enum Tool { IscsiPerf, QemuImg }

    public sealed record Test(string Key, Tool Tool, bool Write, int Bytes, int Depth)
    {
        /// <summary>Throughput points print MiB/s as their headline (IOPS of 1 MiB requests alongside).</summary>
        public bool Sequential => Bytes >= 1 << 20;
    }

    /// <summary>The scattered pattern's stride in 4 KiB blocks (bench_iscsi.sh STRIDE_BLOCKS): odd, prime.</summary>
    public const long StrideBlocks = 104729;
    public const int Pattern = 0xA5;

    public static readonly IReadOnlyList<Test> Tests =
    [
        new("randread4k.qd1", Tool.IscsiPerf, false, 4096, 1),
        new("randread4k.qd16", Tool.IscsiPerf, false, 4096, 16),
        new("randread4k.qd64", Tool.IscsiPerf, false, 4096, 64),
        new("randwrite4k.qd1", Tool.QemuImg, true, 4096, 1),
        new("qemu_randread4k.qd1", Tool.QemuImg, false, 4096, 1),
        new("randwrite4k.qd16", Tool.QemuImg, true, 4096, 16),
        new("qemu_randread4k.qd16", Tool.QemuImg, false, 4096, 16),
        new("randwrite4k.qd64", Tool.QemuImg, true, 4096, 64),
        new("qemu_randread4k.qd64", Tool.QemuImg, false, 4096, 64),
        new("seqwrite1m.qd8", Tool.QemuImg, true, 1 << 20, 8),
        new("seqread1m.qd8", Tool.QemuImg, false, 1 << 20, 8),
    ];

    const string TgtTargetName = "iqn.2024-01.local.bench:duet-bench-tgt";

    internal sealed record Sample(double Iops, double MiBps);

    sealed record Endpoint(string Url, string Portal, string TargetName, int Lun, int BlockBytes);

    public static async Task<int> RunAsync(IscsiBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        if (!(o.Seconds > 0)) throw new ArgumentOutOfRangeException(nameof(o), "seconds must be > 0");
        if (o.Runs < 1) throw new ArgumentOutOfRangeException(nameof(o), "runs must be >= 1");
        if (o.SizeBytes < Units.MiB(16) || o.SizeBytes % Units.MiB(1) != 0)
            throw new ArgumentOutOfRangeException(nameof(o), "size must be a multiple of 1 MiB, at least 16 MiB");
        var missing = MissingTools();
        if (missing.Count > 0)
        {
            log.WriteLine($"bench iscsi: not available: {string.Join(", ", missing)} (apt-get install libiscsi-bin qemu-utils qemu-block-extra tgt); nothing measured");
            return 1;
        }

        using var signals = new TerminationSignals(ct);
        ct = signals.Token;
        var sw = Stopwatch.StartNew();
        await using var children = new Children(log);
        var root = Path.Combine(o.WorkDirectory, $"duet-bench-iscsi.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        children.Track(root);
        Directory.CreateDirectory(root);

        // ---- Duet: four drives, one RAID 6 array, one volume of exactly SIZE (LUN 0) ----
        var dataDir = Path.Combine(root, "duet");
        long driveBytes = NbdBench.DriveBytesFor(o.SizeBytes);
        log.WriteLine($"bench iscsi: Duet: RAID 6 over 4 drives of {Units.FormatSize(driveBytes)} in {dataDir}, volume {NbdBench.VolumeName} of {Units.FormatSize(o.SizeBytes)}, duet up --mirror batched");
        await NbdBench.CreateLayoutAsync(dataDir, driveBytes, o.SizeBytes, ct).ConfigureAwait(false);
        int duetPort = TcpPorts.FreePorts(TcpPorts.DuetUpPorts);
        var duetArgs = TcpPorts.DuetUpArgs(duetPort);
        int duetIscsiPort = int.Parse(duetArgs[Array.IndexOf(duetArgs, "--iscsi-port") + 1], CultureInfo.InvariantCulture);
        var duet = children.Start("duet", o.DuetCommand[0], o.DuetCommand.Skip(1).Concat(["up", "--data", dataDir, .. duetArgs, "--mirror", "batched", "--quiet"]));
        try
        {
            return await MeasureAsync(o, children, duet, root, dataDir, duetIscsiPort, output, log, sw, ct).ConfigureAwait(false);
        }
        finally
        {
            // A clean stop unless interrupted (then the two seconds after Ctrl-C are for SIGKILL).
            if (!ct.IsCancellationRequested) await children.TerminateAsync(duet, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }
    }

    static async Task<int> MeasureAsync(IscsiBenchOptions o, Children children, Children.Child duet, string root, string dataDir, int duetIscsiPort,
        TextWriter output, TextWriter log, Stopwatch sw, CancellationToken ct)
    {

        // ---- tgt: a filled (not sparse) /dev/shm file of the same size ----
        var lunFile = Path.Combine(root, "tgt.img");
        await NbdBench.FillAsync(lunFile, o.SizeBytes, ct).ConfigureAwait(false);
        int tgtPort = TcpPorts.FreePort();
        int control = FreeTgtControlPort();
        children.Track($"/var/run/tgtd/socket.{control}");
        children.Track($"/var/run/tgtd/socket.{control}.lock");
        // tgtd ignores SIGTERM; Children stops it with SIGKILL.
        var tgtd = children.Start("tgtd", "tgtd", ["-f", "-C", Inv(control), "--iscsi", $"portal=127.0.0.1:{Inv(tgtPort)}"]);
        await TgtSetUpAsync(children, tgtd, control, lunFile, ct).ConfigureAwait(false);

        var endpoints = new Dictionary<string, Endpoint>
        {
            ["duet"] = await WaitLunAsync(children, duet, $"127.0.0.1:{Inv(duetIscsiPort)}", IscsiServerOptions.DefaultTargetName, 0, o.SizeBytes, ct).ConfigureAwait(false),
            ["tgt"] = await WaitLunAsync(children, tgtd, $"127.0.0.1:{Inv(tgtPort)}", TgtTargetName, 1, o.SizeBytes, ct).ConfigureAwait(false),
        };
        var servers = new Dictionary<string, Children.Child> { ["duet"] = duet, ["tgt"] = tgtd };
        foreach (var (s, e) in endpoints)
            log.WriteLine($"bench iscsi: {s} pid {servers[s].Pid} serving {e.Url} ({Units.FormatSize(o.SizeBytes)}, {e.BlockBytes}-byte logical blocks)");
        Print(output, "iscsi.size_mib", o.SizeBytes / Units.MiB(1), "F0");
        Print(output, "iscsi.duet_raid_level", 6, "F0");

        void CheckAlive()
        {
            foreach (var (s, c) in servers)
                if (c.HasExited)
                    throw new InvalidOperationException($"{s} (pid {c.Pid}) exited with status {c.Process.ExitCode}:\n{c.OutputText}");
        }

        async Task WaitIdleAsync()
        {
            var t = Stopwatch.StartNew();
            if (o.Counters is not null)
            {
                int dirty = -1;
                while (t.Elapsed < TimeSpan.FromSeconds(60))
                {
                    dirty = (await o.Counters(dataDir, ct).ConfigureAwait(false)).DirtyElements;
                    if (dirty == 0) break;
                    await Task.Delay(100, ct).ConfigureAwait(false);
                }
                if (dirty != 0) log.WriteLine($"bench iscsi: WARNING Duet's cache still has {dirty} dirty elements after 60 s; measuring anyway");
            }
            // Both process trees under a tenth of a core for two 250 ms windows in a row.
            int quiet = 0;
            var last = servers.Values.Select(c => Children.CpuSeconds(c.Pid).Values.Sum(v => v.Seconds)).ToArray();
            while (quiet < 2 && t.Elapsed < TimeSpan.FromSeconds(60))
            {
                await Task.Delay(250, ct).ConfigureAwait(false);
                var now = servers.Values.Select(c => Children.CpuSeconds(c.Pid).Values.Sum(v => v.Seconds)).ToArray();
                quiet = now.Zip(last).All(p => p.First - p.Second < 0.025 + 1e-9) ? quiet + 1 : 0;
                last = now;
            }
            if (quiet < 2) log.WriteLine("bench iscsi: WARNING the servers did not go idle within 60 s; measuring anyway");
            else if (t.Elapsed > TimeSpan.FromSeconds(1)) log.WriteLine(FormattableString.Invariant($"    (waited {t.Elapsed.TotalSeconds:F1} s for the servers to go idle)"));
        }

        // ---- untimed: each target written once in full, then a short read warm-up ----
        foreach (var s in Targets)
        {
            log.WriteLine($"bench iscsi: prefilling {s} (qemu-img bench 1 MiB sequential writes over the whole LUN, untimed)");
            var e = endpoints[s];
            await QemuImgBenchAsync(children, e, o.SizeBytes, (int)(o.SizeBytes / Units.MiB(1)), 8, 1 << 20, 1 << 20, write: true, ct).ConfigureAwait(false);
            await IscsiPerfAsync(children, e, 16, 4096, 1, ct).ConfigureAwait(false);
        }

        // ---- measure ----
        long mirroredElements = 0, writeThroughs = 0;
        var samples = new Dictionary<(string Test, string Target), List<Sample>>();
        foreach (var t in Tests)
        {
            for (int run = 1; run <= o.Runs; run++)
            {
                foreach (var s in Targets)
                {
                    CheckAlive();
                    await WaitIdleAsync().ConfigureAwait(false);
                    PairCounters? before = s == "duet" && t.Write && o.Counters is not null ? await o.Counters(dataDir, ct).ConfigureAwait(false) : null;
                    var e = endpoints[s];
                    Sample sample;
                    string detail;
                    if (t.Tool == Tool.IscsiPerf)
                    {
                        sample = await IscsiPerfAsync(children, e, t.Depth, t.Bytes, o.Seconds, ct).ConfigureAwait(false);
                        detail = "";
                    }
                    else
                    {
                        long step = t.Sequential ? t.Bytes : StrideBlocks * 4096;
                        // Calibration (untimed; also this point's warm-up): a short run, and when that was
                        // much shorter than the point, one more toward a quarter of it, so one noisy
                        // tenth of a second does not set the count.
                        int calibration = t.Sequential ? 64 : 2000, count = calibration;
                        double secs = await QemuImgBenchAsync(children, e, o.SizeBytes, count, t.Depth, t.Bytes, step, t.Write, ct).ConfigureAwait(false);
                        if (secs < o.Seconds / 8)
                        {
                            count = Scale(count, secs, o.Seconds / 4, calibration);
                            secs = await QemuImgBenchAsync(children, e, o.SizeBytes, count, t.Depth, t.Bytes, step, t.Write, ct).ConfigureAwait(false);
                        }
                        count = Scale(count, secs, o.Seconds, calibration);
                        secs = await QemuImgBenchAsync(children, e, o.SizeBytes, count, t.Depth, t.Bytes, step, t.Write, ct).ConfigureAwait(false);
                        sample = new Sample(count / secs, count * (double)t.Bytes / Units.MiB(1) / secs);
                        detail = FormattableString.Invariant($" ({count} requests in {secs:F3} s)");
                    }
                    if (before is { } b && o.Counters is not null)
                    {
                        var a = await o.Counters(dataDir, ct).ConfigureAwait(false);
                        mirroredElements += a.MirroredWrites - b.MirroredWrites;
                        writeThroughs += a.WriteThroughs - b.WriteThroughs;
                        detail += $"; controller A: {a.MirroredWrites - b.MirroredWrites} cache elements mirrored, {a.WriteThroughs - b.WriteThroughs} write-throughs (calibration runs included)";
                        if (a.WriteThroughs > b.WriteThroughs) log.WriteLine($"bench iscsi: WARNING controller A wrote {a.WriteThroughs - b.WriteThroughs} writes through (not mirrored) during {t.Key}");
                    }
                    if (!samples.TryGetValue((t.Key, s), out var list)) samples[(t.Key, s)] = list = [];
                    list.Add(sample);
                    log.WriteLine(FormattableString.Invariant($"  {t.Key} run {run} {s}: {sample.Iops:F0} IOPS, {sample.MiBps:F1} MiB/s{detail}"));
                }
            }
            // print as each point completes, so an interrupted run still leaves figures
            var med = Targets.ToDictionary(s => s, s => new Sample(Median(samples[(t.Key, s)].Select(x => x.Iops)), Median(samples[(t.Key, s)].Select(x => x.MiBps))));
            foreach (var s in Targets)
            {
                Print(output, $"iscsi.{t.Key}.{s}_iops", med[s].Iops, "F0");
                Print(output, $"iscsi.{t.Key}.{s}_mibps", med[s].MiBps, "F1");
            }
            Print(output, $"iscsi.{t.Key}.duet_vs_tgt", med["duet"].Iops / med["tgt"].Iops, "F2");
            await output.FlushAsync(ct).ConfigureAwait(false);
        }
        CheckAlive();
        if (o.Counters is not null)
        {
            Print(output, "iscsi.duet_mirrored_elements", mirroredElements, "F0");
            Print(output, "iscsi.duet_write_throughs", writeThroughs, "F0");
        }
        log.WriteLine($"bench iscsi: done in {sw.Elapsed.TotalSeconds:F0} s; stopping servers, removing {root}");
        return 0;
    }

    /// <summary>The peer tools this bench needs that are not installed.</summary>
    public static List<string> MissingTools()
    {
        var missing = new List<string>();
        foreach (var (tool, package) in new[] { ("iscsi-perf", "libiscsi-bin"), ("iscsi-readcapacity16", "libiscsi-bin"), ("qemu-img", "qemu-utils"), ("tgtd", "tgt"), ("tgtadm", "tgt") })
            if (!Children.OnPath(tool)) missing.Add($"{tool} (package {package})");
        // QEMU's iSCSI block driver is a module of qemu-block-extra.
        bool driver = Directory.Exists("/usr/lib") && Directory.EnumerateDirectories("/usr/lib")
            .Any(d => File.Exists(Path.Combine(d, "qemu", "block-iscsi.so")));
        if (!driver) missing.Add("QEMU's iscsi block driver block-iscsi.so (package qemu-block-extra)");
        return missing;
    }

    /// <summary>A tgtd control-channel number (tgtadm -C) whose socket does not exist.</summary>
    static int FreeTgtControlPort()
    {
        for (int n = 0; n < 1000; n++)
        {
            int c = Random.Shared.Next(100, 30000);
            if (!File.Exists($"/var/run/tgtd/socket.{c}") && !File.Exists($"/var/run/tgtd/socket.{c}.lock")) return c;
        }
        throw new InvalidOperationException("no free tgtd control channel under /var/run/tgtd");
    }

    static async Task TgtSetUpAsync(Children children, Children.Child tgtd, int control, string lunFile, CancellationToken ct)
    {
        var c = Inv(control);
        async Task Adm(params string[] args)
        {
            var (code, text) = await children.RunAsync("tgtadm", ["-C", c, "--lld", "iscsi", .. args], ct).ConfigureAwait(false);
            if (code != 0) throw new InvalidOperationException($"tgtadm {string.Join(' ', args)} failed (exit {code}): {text}\ntgtd printed:\n{tgtd.OutputText}");
        }
        // tgtd's control socket appears shortly after it starts.
        var wait = Stopwatch.StartNew();
        while (true)
        {
            if (tgtd.HasExited) throw new InvalidOperationException($"tgtd exited (code {tgtd.Process.ExitCode}):\n{tgtd.OutputText}");
            var (code, _) = await children.RunAsync("tgtadm", ["-C", c, "--op", "show", "--mode", "sys"], ct).ConfigureAwait(false);
            if (code == 0) break;
            if (wait.Elapsed > TimeSpan.FromSeconds(10)) throw new TimeoutException($"tgtd did not answer tgtadm within 10 s:\n{tgtd.OutputText}");
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        await Adm("--op", "new", "--mode", "target", "--tid", "1", "-T", TgtTargetName).ConfigureAwait(false);
        await Adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", lunFile).ConfigureAwait(false);
        await Adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL").ConfigureAwait(false);
    }

    /// <summary>Waits until READ CAPACITY(16) answers on the LUN and checks its size.</summary>
    static async Task<Endpoint> WaitLunAsync(Children children, Children.Child server, string portal, string target, int lun, long sizeBytes, CancellationToken ct)
    {
        var url = $"iscsi://{portal}/{target}/{Inv(lun)}";
        var wait = Stopwatch.StartNew();
        string last = "";
        while (wait.Elapsed < TimeSpan.FromSeconds(90))
        {
            if (server.HasExited)
                throw new InvalidOperationException($"{server.Name} exited (code {server.Process.ExitCode}) before serving {url}:\n{server.OutputText}");
            var (code, text) = await children.RunAsync("iscsi-readcapacity16", [url], ct).ConfigureAwait(false);
            last = text;
            if (code == 0)
            {
                long total = Field(text, "Total size");
                int block = (int)Field(text, "LOGICAL BLOCK LENGTH IN BYTES");
                if (total != sizeBytes) throw new InvalidOperationException($"{url} has {total} bytes, not {sizeBytes}:\n{text}");
                if (block <= 0 || 4096 % block != 0) throw new InvalidOperationException($"{url}: unexpected logical block size {block}:\n{text}");
                return new Endpoint(url, portal, target, lun, block);
            }
            await Task.Delay(200, ct).ConfigureAwait(false);
        }
        throw new TimeoutException($"{server.Name} did not serve {url} within 90 s; iscsi-readcapacity16 said:\n{last}\n{server.Name} printed:\n{server.OutputText}");

        static long Field(string text, string name)
        {
            foreach (var line in text.Split('\n'))
                if (line.StartsWith(name + ":", StringComparison.Ordinal)
                    && long.TryParse(line[(name.Length + 1)..].Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long v))
                    return v;
            throw new InvalidOperationException($"iscsi-readcapacity16 printed no '{name}':\n{text}");
        }
    }

    /// <summary>iscsi-perf random reads for SECONDS (whole seconds, at least 1); its own average.</summary>
    static async Task<Sample> IscsiPerfAsync(Children children, Endpoint e, int depth, int bytes, double seconds, CancellationToken ct)
    {
        int secs = Math.Max(1, (int)Math.Round(seconds));
        var (code, text) = await children.RunAsync("iscsi-perf",
            ["-t", Inv(secs), "-m", Inv(depth), "-b", Inv(bytes / e.BlockBytes), "-r", e.Url], ct).ConfigureAwait(false);
        text = text.Replace('\r', '\n');
        if (code != 0) throw new InvalidOperationException($"iscsi-perf on {e.Url} failed (exit {code}):\n{Tail(text)}");
        // "iops average 104994 (410 MB/s)"
        var line = text.Split('\n').LastOrDefault(l => l.StartsWith("iops average ", StringComparison.Ordinal))
            ?? throw new InvalidOperationException($"iscsi-perf on {e.Url} printed no average:\n{Tail(text)}");
        double iops = double.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[2], CultureInfo.InvariantCulture);
        return new Sample(iops, iops * bytes / Units.MiB(1));
    }

    /// <summary>One `qemu-img bench` run over the first SIZE bytes of the LUN; qemu-img's own
    /// "Run completed in" seconds.</summary>
    static async Task<double> QemuImgBenchAsync(Children children, Endpoint e, long sizeBytes, int count, int depth, int bytes, long step, bool write, CancellationToken ct)
    {
        var args = new List<string> { "bench", "-c", Inv(count), "-d", Inv(depth), "-s", Inv(bytes), "-S", step.ToString(CultureInfo.InvariantCulture), "-t", "none" };
        if (write) args.AddRange(["-w", $"--pattern={Inv(Pattern)}"]);
        args.Add(QemuSpec(e, sizeBytes));
        var (code, text) = await children.RunAsync("qemu-img", args, ct).ConfigureAwait(false);
        if (code != 0) throw new InvalidOperationException($"qemu-img bench on {e.Url} failed (exit {code}):\n{Tail(text)}");
        var line = text.Split('\n').FirstOrDefault(l => l.StartsWith("Run completed in ", StringComparison.Ordinal))
            ?? throw new InvalidOperationException($"qemu-img bench on {e.Url} printed no completion time:\n{Tail(text)}");
        double secs = double.Parse(line.Split(' ')[3], CultureInfo.InvariantCulture);
        return Math.Max(secs, 0.001);
    }

    /// <summary>QEMU's iscsi driver wants explicit keys (a json: with "filename": "iscsi://…" fails); raw with a size limits it to SIZE bytes.</summary>
    internal static string QemuSpec(string portal, string target, int lun, long sizeBytes) =>
        "json:{\"driver\":\"raw\",\"size\":" + sizeBytes.ToString(CultureInfo.InvariantCulture) +
        ",\"file\":{\"driver\":\"iscsi\",\"transport\":\"tcp\",\"portal\":\"" + portal + "\",\"target\":\"" + target + "\",\"lun\":" + Inv(lun) + "}}";

    static string QemuSpec(Endpoint e, long sizeBytes) => QemuSpec(e.Portal, e.TargetName, e.Lun, sizeBytes);

    static int Scale(int count, double seconds, double target, int least) =>
        (int)Math.Clamp(count / Math.Max(seconds, 0.001) * target, least, int.MaxValue / 2);

    static string Tail(string text) => string.Join('\n', text.Split('\n', StringSplitOptions.RemoveEmptyEntries).TakeLast(10));

    static string Inv(int v) => v.ToString(CultureInfo.InvariantCulture);

    static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    static void Print(TextWriter output, string key, double value, string format) => NbdBench.Print(output, key, value, format);
}
