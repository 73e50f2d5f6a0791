using System.Diagnostics;
using System.Globalization;
using System.Net;
using Duet.Cache;
using Duet.Cache.Mirror;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Interconnect.Link;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Bench;

public sealed record MirrorBenchOptions
{
    /// <summary>How to run the duet CLI (see <see cref="NbdBenchOptions.DuetCommand"/>); null skips part two.</summary>
    public IReadOnlyList<string>? DuetCommand { get; init; }
    /// <summary>Part one: writes per figure (sizes under 1 MiB).</summary>
    public int Writes { get; init; } = 256;
    /// <summary>Part one: writes per 1 MiB figure.</summary>
    public int LargeWrites { get; init; } = 32;
    /// <summary>Part two: seconds per timed fio run.</summary>
    public double Seconds { get; init; } = 5;
    /// <summary>Part two: NVRAM of each controller; steady state is measured after 3x this was written.</summary>
    public long NvramBytes { get; init; } = Units.MiB(64);
    /// <summary>Part two: volume size, and the size of nbdkit's file.</summary>
    public long SizeBytes { get; init; } = Units.GiB(1);
    public string WorkDirectory { get; init; } = "/dev/shm";
    /// <summary>Part two: the cache and mirror counters of the controller serving the volume (A), on a data
    /// directory (the CLI asks the management socket); null: the bench waits a fixed time for destage
    /// instead and logs no counters.</summary>
    public Func<string, CancellationToken, Task<PairCounters>>? Counters { get; init; }
}

/// <summary>What the bench reads of controller A during the NBD part (from its status).</summary>
public readonly record struct PairCounters(int DirtyElements, long MirroredWrites, long WriteThroughs, long Batches, long Doorbells, long LinkBytes);

/// <summary>
/// What the cache mirror costs (MR-2/MR-3/MR-4, CC-2/CC-3).
///
/// Part one (counts): controller A's <see cref="WriteBackCache"/> and <see cref="PeerMirror"/>
/// and controller B's <see cref="MirrorReceiver"/> in this process, over the real TCP ICL on
/// loopback, NVRAM files under the work directory and a memory-backed array. For each path
/// (large = seed-large, small = seed by figure 7, batched = coherency batches), size and
/// depth, N fresh non-overlapping writes (each starting on its own 16 KiB element, so no write
/// replaces another) on a fresh pair, and the link counters of both ends:
/// doorbells per write (transfers posted, both ways) and link bytes per write (message + data
/// bytes posted, both ways; TCP framing — 72 bytes a transfer, plus credit frames — excluded).
///
/// Part two (time): fio randwrite 4 KiB at depth 32 against a real `duet up` child (RAID 6 over
/// four drives on /dev/shm, small NVRAM) with the mirror (batched) and without it (none), and
/// against nbdkit's file plugin on a filled /dev/shm file of the volume's size.
/// burst = a working set of half the cache's elements, on a clean cache; steady = the whole
/// volume after 3x the NVRAM size of 4 KiB random writes.
/// </summary>
public static class MirrorBench
{
    public static readonly IReadOnlyList<(string Key, MirrorMethod Method)> Paths =
        [("large", MirrorMethod.SeedLarge), ("small", MirrorMethod.Seed), ("batched", MirrorMethod.Batched)];
    public static readonly IReadOnlyList<(string Key, int Bytes)> Sizes =
        [("4k", 4096), ("16k", 16384), ("32k", 32768), ("64k", 65536), ("1m", 1 << 20)];
    public static readonly IReadOnlyList<int> Depths = [1, 32];

    const byte ArrayNumber = 7;
    const ulong ArraySerial = 0xD0E7;

    public static async Task<int> RunAsync(MirrorBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        if (o.Writes < 1 || o.LargeWrites < 1) throw new ArgumentOutOfRangeException(nameof(o), "writes must be >= 1");
        if (o.DuetCommand is not null)
        {
            if (!(o.Seconds > 0)) throw new ArgumentOutOfRangeException(nameof(o), "seconds must be > 0");
            if (NvramLayout.Problem(o.NvramBytes, 1) is { } problem) throw new ArgumentOutOfRangeException(nameof(o), problem);
            if (o.SizeBytes < Units.MiB(64) || o.SizeBytes % Units.MiB(1) != 0)
                throw new ArgumentOutOfRangeException(nameof(o), "size must be a multiple of 1 MiB, at least 64 MiB");
            foreach (var tool in new[] { "fio", "nbdkit", "nbdinfo" })
                if (!Children.OnPath(tool))
                {
                    log.WriteLine($"bench mirror: {tool} is not on PATH (apt-get install fio nbdkit libnbd-bin)");
                    return 1;
                }
        }
        using var signals = new TerminationSignals(ct);
        ct = signals.Token;
        await RunCountsAsync(o, output, log, ct).ConfigureAwait(false);
        if (o.DuetCommand is not null) await RunNbdAsync(o, o.DuetCommand, output, log, ct).ConfigureAwait(false);
        return 0;
    }

    // ---------------------------------------------------------------- part one: counts

    /// <summary>Part one only: doorbells and link bytes per write for every path, size and depth.</summary>
    public static async Task RunCountsAsync(MirrorBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        var sw = Stopwatch.StartNew();
        foreach (var (pathKey, method) in Paths)
            foreach (var (sizeKey, bytes) in Sizes)
                foreach (int qd in Depths)
                {
                    ct.ThrowIfCancellationRequested();
                    int n = bytes >= 1 << 20 ? o.LargeWrites : o.Writes;
                    var r = await MeasureAsync(method, bytes, qd, n, o.WorkDirectory, ct).ConfigureAwait(false);
                    string key = $"mirror.{pathKey}.{sizeKey}.qd{qd}";
                    NbdBench.Print(output, $"{key}.doorbells_per_write", (double)r.Doorbells / n, "F2");
                    NbdBench.Print(output, $"{key}.link_bytes_per_write", (double)r.LinkBytes / n, "F0");
                    log.WriteLine($"  {key}: {n} writes, {r.Doorbells} doorbells, {r.LinkBytes} link bytes; mirror: {r.Mirror.SmallWrites} small, " +
                        $"{r.Mirror.LargeWrites} large, {r.Mirror.Batches} batches; {r.Elapsed.TotalMilliseconds:F0} ms");
                    if (method == MirrorMethod.Seed && r.Mirror.LargeWrites > 0)
                        log.WriteLine($"# {key}: figure 7 sent {r.Mirror.LargeWrites} of {n} writes on the large path " +
                            $"({bytes / WriteBackCache.ElementBytes} S/G elements of 16 KiB: more than two), {r.Mirror.SmallWrites} on the small path");
                    await output.FlushAsync(ct).ConfigureAwait(false);
                }
        log.WriteLine($"bench mirror: counts done in {sw.Elapsed.TotalSeconds:F1} s");
    }

    internal sealed record CountResult(long Doorbells, long LinkBytes, MirrorCounters Mirror, TimeSpan Elapsed);

    static async Task<CountResult> MeasureAsync(MirrorMethod method, int bytes, int qd, int n, string workDirectory, CancellationToken ct)
    {
        // Every write starts on its own element: a write never replaces (and so never invalidates) another.
        long stride = Math.Max(bytes, WriteBackCache.ElementBytes);
        long need = n * stride;
        // At least 16 MiB: the cache splits a host write into groups of min(64, elements / 4) elements,
        // and a smaller NVRAM would split 64 KiB and 1 MiB writes into several mirror operations.
        long nvram = Math.Min(NvramLayout.MaxTotalBytes, Math.Max(Units.MiB(16), AlignUp(2 * need + need / 4 + Units.MiB(2), Units.MiB(1))));
        await using var pair = await CountPair.StartAsync(method, nvram, need / Units.SectorBytes, workDirectory, ct).ConfigureAwait(false);
        var (d0, b0) = pair.Totals();
        var sw = Stopwatch.StartNew();
        int next = -1;
        async Task WriterAsync(int seed)
        {
            var data = new byte[bytes];
            new Random(seed).NextBytes(data);
            int i;
            while ((i = Interlocked.Increment(ref next)) < n)
                await pair.Cache.WriteAsync(ArrayNumber, i * stride / Units.SectorBytes, data, fua: false, ct).ConfigureAwait(false);
        }
        await Task.WhenAll(Enumerable.Range(1, qd).Select(s => Task.Run(() => WriterAsync(s), ct))).ConfigureAwait(false);
        var elapsed = sw.Elapsed;
        if (pair.Cache.Counters.WriteThroughs > 0)
            throw new InvalidOperationException($"the mirror went down during the {method} run: {pair.Mirror.DownReason}");
        // A status is counted by its sender after its frame is written: the writer it completes may
        // see it first. Read once the counters stop moving.
        var (d1, b1) = pair.Totals();
        for (int i = 0; i < 100; i++)
        {
            await Task.Delay(10, ct).ConfigureAwait(false);
            var now = pair.Totals();
            if (now == (d1, b1)) break;
            (d1, b1) = now;
        }
        return new CountResult(d1 - d0, b1 - b0, pair.Mirror.Counters, elapsed);
    }

    static long AlignUp(long v, long a) => (v + a - 1) / a * a;

    /// <summary>A's cache and mirror, B's receiver, over TCP on loopback.</summary>
    sealed class CountPair : IAsyncDisposable
    {
        public required string Dir { get; init; }
        public required NvramFile NvramA { get; init; }
        public required NvramFile NvramB { get; init; }
        public required TcpIclLink LinkA { get; init; }
        public required TcpIclLink LinkB { get; init; }
        public required PeerMirror Mirror { get; init; }
        public required WriteBackCache Cache { get; init; }

        public (long Doorbells, long Bytes) Totals()
        {
            var a = LinkA.Counters;
            var b = LinkB.Counters;
            return (a.DoorbellsRung + b.DoorbellsRung, a.MessageBytesSent + a.DataBytesSent + b.MessageBytesSent + b.DataBytesSent);
        }

        public static async Task<CountPair> StartAsync(MirrorMethod method, long nvramBytes, long arraySectors, string workDirectory, CancellationToken ct)
        {
            var dir = Path.Combine(workDirectory, $"duet-bench-mirror-pair.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
            Directory.CreateDirectory(dir);
            var layout = NvramLayout.For(nvramBytes);
            var pairId = Guid.NewGuid();
            NvramFile? a = null, b = null;
            TcpIclLink? la = null, lb = null;
            PeerMirror? mirror = null;
            try
            {
                a = NvramFile.Create(Path.Combine(dir, "a.nvram"), layout, "A", pairId);
                b = NvramFile.Create(Path.Combine(dir, "b.nvram"), layout, "B", pairId);
                // The window sizes `duet controller` uses.
                var icl = IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 };
                la = TcpIclTransport.Listen("A", "B", new IPEndPoint(IPAddress.Loopback, 0), icl);
                lb = TcpIclTransport.Connect("B", "A", la.ListenEndPoint!, icl);
                var m = mirror = new PeerMirror(la, () => 1, new PeerMirrorOptions { Path = method, SmallWriteOpcode = 0xA0 }, NullLogger.Instance);
                var linkB = lb;
                var receiver = new MirrorReceiver(new MirrorApplier(b.Peer, v => v == ArrayNumber ? ArraySerial : null),
                    status => linkB.PostAsync(IclSignal.Reply, 1, status, default), 0xA0, NullLogger.Instance);
                la.Start(t =>
                {
                    if (t.Signal == IclSignal.Reply) m.OnReply(t.Message.Span);
                    return ValueTask.CompletedTask;
                });
                lb.Start(async t =>
                {
                    if (t.Signal != IclSignal.Reply) await receiver.HandleAsync(t).ConfigureAwait(false);
                });
                var deadline = Stopwatch.StartNew();
                while (!(la.IsUp && lb.IsUp))
                {
                    if (deadline.Elapsed > TimeSpan.FromSeconds(10)) throw new TimeoutException("the TCP ICL on loopback did not come up within 10 s");
                    await Task.Delay(5, ct).ConfigureAwait(false);
                }
                // No destage and no eviction while counting: only the writes' own changes cross the link.
                var cache = new WriteBackCache(a.Own, mirror, new CacheOptions { DestageStartFraction = 1.0, IdleDestageDelay = TimeSpan.FromHours(1) }, NullLogger.Instance);
                cache.AddArray(new MemoryBacking(ArrayNumber, ArraySerial, arraySectors));
                cache.Start();
                mirror.Resume();
                return new CountPair { Dir = dir, NvramA = a, NvramB = b, LinkA = la, LinkB = lb, Mirror = mirror, Cache = cache };
            }
            catch
            {
                if (mirror is not null) await mirror.DisposeAsync().ConfigureAwait(false);
                if (la is not null) await la.DisposeAsync().ConfigureAwait(false);
                if (lb is not null) await lb.DisposeAsync().ConfigureAwait(false);
                a?.Dispose();
                b?.Dispose();
                Directory.Delete(dir, recursive: true);
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            await Cache.DisposeAsync().ConfigureAwait(false);
            await Mirror.DisposeAsync().ConfigureAwait(false);
            await LinkA.DisposeAsync().ConfigureAwait(false);
            await LinkB.DisposeAsync().ConfigureAwait(false);
            NvramA.Dispose();
            NvramB.Dispose();
            try { Directory.Delete(Dir, recursive: true); } catch (IOException) { }
        }
    }

    // ---------------------------------------------------------------- part two: NBD

    const string Test = "nbd.randwrite4k.qd32";

    static async Task RunNbdAsync(MirrorBenchOptions o, IReadOnlyList<string> duetCommand, TextWriter output, TextWriter log, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        await using var children = new Children(log);
        var root = Path.Combine(o.WorkDirectory, $"duet-bench-mirror.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        children.Track(root);
        Directory.CreateDirectory(root);
        var jsonPath = Path.Combine(root, "fio.json");
        var layout = NvramLayout.For(o.NvramBytes);
        // Burst: a working set of half the cache's elements (a 4 KiB random write takes a 16 KiB element).
        long burstBytes = Math.Max(Units.MiB(1), (long)layout.ElementCount * layout.ElementBytes / 2 / Units.MiB(1) * Units.MiB(1));
        long fillBytes = 3 * o.NvramBytes;
        log.WriteLine($"bench mirror: NVRAM {Units.FormatSize(o.NvramBytes)} per controller ({layout.ElementCount} elements of 16 KiB in region 1); " +
            $"burst working set {Units.FormatSize(burstBytes)}; steady after {Units.FormatSize(fillBytes)} of 4 KiB random writes; volume {Units.FormatSize(o.SizeBytes)}");

        async Task<NbdBench.Sample> FioAsync(string what, string url, long size, double? seconds, long? ioSize)
        {
            var args = NbdBench.FioArgs(url, what, "randwrite", "4k", 32, size, seconds, jsonPath);
            if (ioSize is { } io) args.Add($"--io_size={io.ToString(CultureInfo.InvariantCulture)}");
            var (code, text) = await children.RunAsync("fio", args, ct).ConfigureAwait(false);
            if (code != 0) throw new InvalidOperationException($"fio {what} on {url} failed (exit {code}):\n{text}");
            var s = NbdBench.ParseFio(jsonPath, read: false);
            log.WriteLine(FormattableString.Invariant($"  {what}: {s.Iops:F0} IOPS, {s.MiBps:F1} MiB/s, p99 {s.P99Us:F0} us"));
            return s;
        }

        async Task WaitCleanAsync(string dataDir)
        {
            if (o.Counters is null)
            {
                await Task.Delay(TimeSpan.FromSeconds(3), ct).ConfigureAwait(false);
                return;
            }
            var t = Stopwatch.StartNew();
            int dirty = -1, first = -1;
            while (t.Elapsed < TimeSpan.FromSeconds(60))
            {
                dirty = (await o.Counters(dataDir, ct).ConfigureAwait(false)).DirtyElements;
                if (first < 0) first = dirty;
                if (dirty == 0) { log.WriteLine($"bench mirror: cache clean after {t.Elapsed.TotalSeconds:F1} s ({first} elements dirty at first look)"); return; }
                await Task.Delay(200, ct).ConfigureAwait(false);
            }
            log.WriteLine($"bench mirror: WARNING {dirty} elements still dirty after 60 s; measuring anyway");
        }

        async Task<PairCounters?> CountersAsync(string dataDir) => o.Counters is null ? null : await o.Counters(dataDir, ct).ConfigureAwait(false);

        void LogDelta(string what, PairCounters? before, PairCounters? after)
        {
            if (before is not { } b || after is not { } a) return;
            long w = a.MirroredWrites - b.MirroredWrites;
            log.WriteLine(FormattableString.Invariant(
                $"    controller A during {what}: {w} cached writes, {a.Batches - b.Batches} batches, {a.WriteThroughs - b.WriteThroughs} write-throughs, {(w > 0 ? (double)(a.Doorbells - b.Doorbells) / w : 0):F2} doorbells (A's) and {(w > 0 ? (double)(a.LinkBytes - b.LinkBytes) / w : 0):F0} link bytes (A's) per cached write; {a.DirtyElements} dirty at the end"));
        }

        async Task<(NbdBench.Sample Burst, NbdBench.Sample Steady)> DuetAsync(string mirror)
        {
            var dataDir = Path.Combine(root, $"duet-{mirror}");
            await NbdBench.CreateLayoutAsync(dataDir, NbdBench.DriveBytesFor(o.SizeBytes), o.SizeBytes, ct).ConfigureAwait(false);
            int port = TcpPorts.FreePorts(TcpPorts.DuetUpPorts);
            var url = $"nbd://127.0.0.1:{port}/{NbdBench.VolumeName}";
            var duet = children.Start($"duet ({mirror})", duetCommand[0], duetCommand.Skip(1).Concat(["up", "--data", dataDir,
                .. TcpPorts.DuetUpArgs(port), "--nvram", o.NvramBytes.ToString(CultureInfo.InvariantCulture), "--mirror", mirror, "--quiet"]));
            try
            {
                await NbdBench.WaitReadyAsync(children, duet, url, ct).ConfigureAwait(false);
                log.WriteLine($"bench mirror: duet up --mirror {mirror} pid {duet.Pid} serving {url}; prefilling (1 MiB sequential, untimed)");
                var (code, text) = await children.RunAsync("fio", NbdBench.FioArgs(url, "prefill", "write", "1m", 8, o.SizeBytes, null, null), ct).ConfigureAwait(false);
                if (code != 0) throw new InvalidOperationException($"fio prefill failed (exit {code}):\n{text}");
                await WaitCleanAsync(dataDir).ConfigureAwait(false);
                var c0 = await CountersAsync(dataDir).ConfigureAwait(false);
                var cpu0 = Children.CpuSeconds(duet.Pid);
                var wall = Stopwatch.StartNew();
                var burst = await FioAsync($"duet --mirror {mirror} burst ({Units.FormatSize(burstBytes)} working set)", url, burstBytes, o.Seconds, null).ConfigureAwait(false);
                var cpu1 = Children.CpuSeconds(duet.Pid);
                double elapsed = wall.Elapsed.TotalSeconds;
                var c1 = await CountersAsync(dataDir).ConfigureAwait(false);
                LogDelta("the burst", c0, c1);
                foreach (var (pid, (cmd, secs)) in cpu1)
                    if (cpu0.TryGetValue(pid, out var before))
                        log.WriteLine(FormattableString.Invariant($"    CPU during the burst: {(secs - before.Seconds) / elapsed:F2} cores, pid {pid} {string.Join(' ', cmd.Split(' ').SkipWhile(a => a != "up" && a != "controller").Take(3))}"));
                await FioAsync($"duet --mirror {mirror} fill ({Units.FormatSize(fillBytes)}, whole volume)", url, o.SizeBytes, null, fillBytes).ConfigureAwait(false);
                var c2 = await CountersAsync(dataDir).ConfigureAwait(false);
                var steady = await FioAsync($"duet --mirror {mirror} steady (whole volume)", url, o.SizeBytes, o.Seconds, null).ConfigureAwait(false);
                LogDelta("steady", c2, await CountersAsync(dataDir).ConfigureAwait(false));
                if (duet.HasExited) throw new InvalidOperationException($"duet up exited (code {duet.Process.ExitCode}):\n{duet.OutputText}");
                return (burst, steady);
            }
            catch (InvalidOperationException e)
            {
                throw new InvalidOperationException($"{e.Message}\nduet up ({(duet.HasExited ? $"exited with code {duet.Process.ExitCode}" : "still running")}) printed:\n{duet.OutputText}", e);
            }
            finally
            {
                await children.StopAsync(duet).ConfigureAwait(false);
                try { Directory.Delete(dataDir, recursive: true); } catch (IOException) { }
            }
        }

        var mirrored = await DuetAsync("batched").ConfigureAwait(false);

        var nbdkitFile = Path.Combine(root, "nbdkit.img");
        await NbdBench.FillAsync(nbdkitFile, o.SizeBytes, ct).ConfigureAwait(false);
        int nbdkitPort = TcpPorts.FreePort();
        var nbdkitUrl = $"nbd://127.0.0.1:{nbdkitPort}";
        var nbdkit = children.Start("nbdkit", "nbdkit", ["-f", "-i", "127.0.0.1", "-p", nbdkitPort.ToString(CultureInfo.InvariantCulture), "file", nbdkitFile]);
        NbdBench.Sample peer;
        try
        {
            await NbdBench.WaitReadyAsync(children, nbdkit, nbdkitUrl, ct).ConfigureAwait(false);
            peer = await FioAsync("nbdkit (whole file)", nbdkitUrl, o.SizeBytes, o.Seconds, null).ConfigureAwait(false);
        }
        finally
        {
            await children.StopAsync(nbdkit).ConfigureAwait(false);
            File.Delete(nbdkitFile);
        }

        var unmirrored = await DuetAsync("none").ConfigureAwait(false);

        void Figure(string name, NbdBench.Sample s)
        {
            NbdBench.Print(output, $"{Test}.{name}_iops", s.Iops, "F0");
            NbdBench.Print(output, $"{Test}.{name}_p99_us", s.P99Us, "F0");
        }
        Figure("duet", mirrored.Burst);
        Figure("duet_steady", mirrored.Steady);
        Figure("duet_unmirrored", unmirrored.Burst);
        Figure("duet_unmirrored_steady", unmirrored.Steady);
        Figure("nbdkit", peer);
        NbdBench.Print(output, $"{Test}.duet_vs_nbdkit", mirrored.Burst.Iops / peer.Iops, "F2");
        NbdBench.Print(output, $"{Test}.duet_steady_vs_nbdkit", mirrored.Steady.Iops / peer.Iops, "F2");
        NbdBench.Print(output, $"{Test}.mirror_cost", 1 - mirrored.Burst.Iops / unmirrored.Burst.Iops, "F2");
        NbdBench.Print(output, $"{Test}.mirror_cost_steady", 1 - mirrored.Steady.Iops / unmirrored.Steady.Iops, "F2");
        await output.FlushAsync(ct).ConfigureAwait(false);
        log.WriteLine($"bench mirror: NBD part done in {sw.Elapsed.TotalSeconds:F0} s; removing {root}");
    }
}

/// <summary>An array in memory behind the bench's cache.</summary>
sealed class MemoryBacking(byte arrayNumber, ulong serial, long sectors) : ICacheBacking
{
    readonly byte[] _bytes = new byte[sectors * Units.SectorBytes];
    public byte ArrayNumber { get; } = arrayNumber;
    public ulong ArraySerial { get; } = serial;
    public long CapacitySectors { get; } = sectors;
    public long StripeSectors => 256;

    public ValueTask ReadAsync(long sector, Memory<byte> destination, CancellationToken ct)
    {
        lock (_bytes) _bytes.AsSpan((int)(sector * Units.SectorBytes), destination.Length).CopyTo(destination.Span);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long sector, ReadOnlyMemory<byte> source, bool recovery, CancellationToken ct)
    {
        lock (_bytes) source.Span.CopyTo(_bytes.AsSpan((int)(sector * Units.SectorBytes)));
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken ct) => ValueTask.CompletedTask;
}
