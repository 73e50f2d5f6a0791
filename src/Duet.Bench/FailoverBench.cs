using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using Duet.Core;
using Duet.Raid.Management;

namespace Duet.Bench;

public sealed record FailoverBenchOptions
{
    /// <summary>How to run the duet CLI; the bench appends `up --data DIR --nbd-port PORT`.</summary>
    public required IReadOnlyList<string> DuetCommand { get; init; }
    /// <summary>One controller's status from its own management socket, or null if it does not answer
    /// (down, starting). Arguments: data directory, controller name.</summary>
    public required Func<string, string, CancellationToken, Task<StatusInfo?>> Status { get; init; }
    /// <summary>`duet array move ARRAY --to TO` on a data directory.</summary>
    public required Func<string, string, string, CancellationToken, Task> MoveArray { get; init; }
    public int Rounds { get; init; } = 10;
    /// <summary>Controller A's NBD port (B uses the next one); 0: two free ports.</summary>
    public int NbdPort { get; init; }
    /// <summary>How long the write load runs on the owner before the kill.</summary>
    public double LoadSeconds { get; init; } = 2;
    /// <summary>Writers on the owner, each one connection with one 4 KiB write at a time.</summary>
    public int Writers { get; init; } = 4;
    /// <summary>The controllers' heartbeat timeout (what `duet up` runs with), subtracted for after_timeout_ms.</summary>
    public double HeartbeatTimeoutMs { get; init; } = 1000;
    public string WorkDirectory { get; init; } = "/dev/shm";
    /// <summary>Copy `duet up`'s output (the controllers' log) to the log writer at the end.</summary>
    public bool ShowLog { get; init; }
}

/// <summary>
/// Issue 5, item 8: how long the pair takes to serve again after the owning controller is killed.
///
/// One `duet up` child (the shelf, controllers A and B, its supervisor) on a fresh data directory
/// with the default layout (vol0 on arr0, served by A). Each round:
///
/// <code>
///   writers ──4 KiB writes──▶ A:vol0        (load for LoadSeconds; each acknowledged block noted)
///   kill -9 A  ─── t = 0 ───────────────────────────────────────────────────────────────────
///   probes  ──4 KiB write──▶ B:vol0         (a new connection every 50 ms until one write is
///                                            acknowledged: t = takeover_ms)
///   read back every acknowledged block through B (lost_writes)
///   B's status: LastTakeover phases (measured by B from when it last heard A)
///   the supervisor restarts A; A comes back fenced, standby, rejoins; mirror healthy again
///   duet array move arr0 --to A             (so the next round kills the owner A again)
/// </code>
///
/// Every write goes to its own block (never rewritten), so an unacknowledged write at the kill
/// cannot make an acknowledged one look lost, and each block's contents name it (round, block).
/// The probes are writes with their own blocks too, and those acknowledged are checked as well.
///
/// stdout: <c>key value</c> lines: per round, then the summary; the goals and the anchors as
/// <c>#</c> lines. Progress on the log writer; on a failed round, the controllers' log (relayed by
/// `duet up`).
/// </summary>
public static class FailoverBench
{
    public const string VolumeName = "vol0";
    public const string ArrayName = "arr0";
    const string Owner = "A", Survivor = "B";
    const int BlockBytes = 4096;
    const double GoalTakeoverMsP50 = 1200, GoalAfterTimeoutMsP50 = 200;
    static readonly TimeSpan ProbeEvery = TimeSpan.FromMilliseconds(50);
    static readonly TimeSpan ServeDeadline = TimeSpan.FromSeconds(60);
    static readonly TimeSpan RejoinDeadline = TimeSpan.FromSeconds(120);

    sealed record Round(int Number, double TakeoverMs, TakeoverInfo Phases, long Acked, long Lost, int Probes);

    public static async Task<int> RunAsync(FailoverBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        if (o.Rounds < 1) throw new ArgumentOutOfRangeException(nameof(o), "rounds must be >= 1");
        if (o.Writers < 1) throw new ArgumentOutOfRangeException(nameof(o), "writers must be >= 1");
        if (!(o.LoadSeconds > 0)) throw new ArgumentOutOfRangeException(nameof(o), "load seconds must be > 0");
        if (o.NbdPort is < 0 or > 65534) throw new ArgumentOutOfRangeException(nameof(o), $"--nbd-port {o.NbdPort} is not a port number");

        using var signals = new TerminationSignals(ct);
        ct = signals.Token;
        var total = Stopwatch.StartNew();
        await using var children = new Children(log);
        var root = Path.Combine(o.WorkDirectory, $"duet-bench-failover.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        children.Track(root);
        var dataDir = Path.Combine(root, "data");
        Directory.CreateDirectory(root);

        int port = o.NbdPort > 0 ? o.NbdPort : TcpPorts.FreePorts(TcpPorts.DuetUpPorts);
        var ownerEndPoint = new IPEndPoint(IPAddress.Loopback, port);
        var survivorEndPoint = new IPEndPoint(IPAddress.Loopback, port + 1);
        // Not --quiet: the controllers' log (takeover, standby, rejoin) is what a failed round is judged by.
        var up = children.Start("duet up", o.DuetCommand[0],
            o.DuetCommand.Skip(1).Concat(["up", "--data", dataDir, .. TcpPorts.DuetUpArgs(port)]));
        log.WriteLine($"bench failover: duet up pid {up.Pid} on {dataDir}, NBD {port} (A) and {port + 1} (B)");
        await WaitForOutputAsync(up, "duet: ready", TimeSpan.FromSeconds(120), ct).ConfigureAwait(false);
        await WaitPairReadyAsync(o, dataDir, up, ct).ConfigureAwait(false);

        ulong volumeBytes;
        await using (var probe = await BenchNbdClient.OpenAsync(ownerEndPoint, VolumeName, ct).ConfigureAwait(false))
            volumeBytes = probe.ExportBytes;
        long regionBlocks = (long)(volumeBytes / BlockBytes) / o.Rounds;
        log.WriteLine($"bench failover: {VolumeName} is {Units.FormatSize((long)volumeBytes)}; {o.Rounds} rounds of {Units.FormatSize(regionBlocks * BlockBytes)} each; " +
            $"{o.Writers} writers x 4 KiB at QD 1 on A for {o.LoadSeconds:0.##} s, then kill -9 of A");

        var rounds = new List<Round>();
        for (int n = 1; n <= o.Rounds; n++)
        {
            var r = await RunRoundAsync(o, n, dataDir, up, ownerEndPoint, survivorEndPoint, (n - 1) * regionBlocks, regionBlocks, log, ct).ConfigureAwait(false);
            if (r is null)
            {
                log.WriteLine($"bench failover: round {n} FAILED; the controllers' log (relayed by duet up):\n{up.OutputText}");
                PrintSummary(output, rounds, o);
                return 1;
            }
            rounds.Add(r);
            PrintRound(output, r, o);
            await output.FlushAsync(ct).ConfigureAwait(false);
            if (n < o.Rounds)
            {
                var restore = Stopwatch.StartNew();
                await RestoreOwnerAsync(o, dataDir, up, ct).ConfigureAwait(false);
                log.WriteLine($"bench failover: A restarted, rejoined, mirror healthy and arr0 moved back to A in {restore.Elapsed.TotalSeconds:F1} s");
            }
        }
        PrintSummary(output, rounds, o);
        if (o.ShowLog) log.WriteLine($"bench failover: duet up's output:\n{up.OutputText}");
        log.WriteLine($"bench failover: done in {total.Elapsed.TotalSeconds:F0} s; stopping duet up, removing {root}");
        return rounds.Sum(r => r.Lost) == 0 ? 0 : 1;
    }

    static async Task<Round?> RunRoundAsync(FailoverBenchOptions o, int n, string dataDir, Children.Child up,
        IPEndPoint ownerEndPoint, IPEndPoint survivorEndPoint, long firstBlock, long regionBlocks, TextWriter log, CancellationToken ct)
    {
        var before = await o.Status(dataDir, Survivor, ct).ConfigureAwait(false)
            ?? throw new InvalidOperationException("controller B does not answer its status before the kill");
        long takeoversBefore = before.Controller?.Failover?.Takeovers ?? 0;

        long next = firstBlock - 1, end = firstBlock + regionBlocks;
        var acked = new ConcurrentBag<long>();
        long TakeBlock()
        {
            long b = Interlocked.Increment(ref next);
            return b < end ? b : throw new InvalidOperationException($"round {n} used up its {regionBlocks} blocks; use fewer rounds or a shorter load");
        }

        // ---- load on the owner ----
        using var roundCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        roundCts.CancelAfter(TimeSpan.FromMinutes(3));
        var writerErrors = new ConcurrentBag<string>();
        var writers = Enumerable.Range(0, o.Writers).Select(_ => Task.Run(async () =>
        {
            try
            {
                await using var c = await BenchNbdClient.OpenAsync(ownerEndPoint, VolumeName, roundCts.Token).ConfigureAwait(false);
                var buffer = new byte[BlockBytes];
                while (true)
                {
                    long b = TakeBlock();
                    Fill(buffer, n, b);
                    await c.WriteAsync((ulong)(b * BlockBytes), buffer, roundCts.Token).ConfigureAwait(false);
                    acked.Add(b);
                }
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or NbdRequestException or OperationCanceledException)
            {
                writerErrors.Add(e.GetType().Name + ": " + e.Message);
            }
        })).ToList();
        await Task.Delay(TimeSpan.FromSeconds(o.LoadSeconds), ct).ConfigureAwait(false);
        if (writers.Any(w => w.IsCompleted))
        {
            log.WriteLine($"bench failover: round {n}: a writer stopped before the kill: {string.Join("; ", writerErrors)}");
            return null;
        }
        long ackedAtKill = acked.Count;

        // ---- kill -9 the owner; probe the survivor ----
        int pid = ControllerPid(dataDir, Owner);
        var sinceKill = Stopwatch.StartNew();
        using (var victim = Process.GetProcessById(pid)) victim.Kill(); // SIGKILL
        var firstServed = new TaskCompletionSource<double>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var probesCts = CancellationTokenSource.CreateLinkedTokenSource(roundCts.Token);
        var probes = new List<Task>();
        string lastProbeError = "", served = "";
        var probeErrors = new List<string>();
        while (!firstServed.Task.IsCompleted && sinceKill.Elapsed < ServeDeadline)
        {
            probes.Add(Task.Run(async () =>
            {
                try
                {
                    double startMs = sinceKill.Elapsed.TotalMilliseconds;
                    await using var c = await BenchNbdClient.OpenAsync(survivorEndPoint, VolumeName, probesCts.Token).ConfigureAwait(false);
                    double connectedMs = sinceKill.Elapsed.TotalMilliseconds;
                    var buffer = new byte[BlockBytes];
                    long b = TakeBlock();
                    Fill(buffer, n, b);
                    await c.WriteAsync((ulong)(b * BlockBytes), buffer, probesCts.Token).ConfigureAwait(false);
                    double ms = sinceKill.Elapsed.TotalMilliseconds;
                    acked.Add(b);
                    if (firstServed.TrySetResult(ms)) served = FormattableString.Invariant($"started {startMs:F0}, connected {connectedMs:F0}, acknowledged {ms:F0} ms");
                }
                catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException or NbdRequestException or OperationCanceledException)
                {
                    Volatile.Write(ref lastProbeError, e.Message);
                    if (e is not OperationCanceledException)
                        lock (probeErrors) probeErrors.Add(FormattableString.Invariant($"{sinceKill.Elapsed.TotalMilliseconds:F0} ms: {e.Message}"));
                }
            }));
            await Task.WhenAny(firstServed.Task, Task.Delay(ProbeEvery, ct)).ConfigureAwait(false);
        }
        if (!firstServed.Task.IsCompleted)
        {
            await probesCts.CancelAsync().ConfigureAwait(false);
            log.WriteLine($"bench failover: round {n}: B did not serve {VolumeName} within {ServeDeadline.TotalSeconds:F0} s of the kill ({probes.Count} probes; last error: {lastProbeError})");
            return null;
        }
        double takeoverMs = await firstServed.Task.ConfigureAwait(false);
        await probesCts.CancelAsync().ConfigureAwait(false); // the probes still out are unacknowledged: not checked
        await Task.WhenAll(probes).ConfigureAwait(false);
        var allWriters = Task.WhenAll(writers);
        if (await Task.WhenAny(allWriters, Task.Delay(TimeSpan.FromSeconds(30), ct)).ConfigureAwait(false) != allWriters)
        {
            log.WriteLine($"bench failover: round {n}: a writer on the killed controller A did not fail within 30 s");
            return null;
        }

        // ---- every acknowledged block reads back through the survivor ----
        long lost = await VerifyAsync(survivorEndPoint, n, firstBlock, Interlocked.Read(ref next), acked, log, ct).ConfigureAwait(false);

        // ---- the survivor's own account of the phases ----
        TakeoverInfo? phases = null;
        var wait = Stopwatch.StartNew();
        while (wait.Elapsed < TimeSpan.FromSeconds(10))
        {
            var s = await o.Status(dataDir, Survivor, ct).ConfigureAwait(false);
            if (s?.Controller?.Failover is { } f && f.Takeovers > takeoversBefore && f.LastTakeover is { FirstIoMs: not null } t) { phases = t; break; }
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        if (phases is null)
        {
            log.WriteLine($"bench failover: round {n}: B served {VolumeName} but its status reports no new takeover with a first I/O");
            return null;
        }
        log.WriteLine(FormattableString.Invariant(
            $"  round {n}: kill -> first write acknowledged by B {takeoverMs:F0} ms ({probes.Count} probes; the first served: {served}); B's phases from A last heard: detect {phases.DetectedMs:F0}, fence {phases.FencedMs:F0}, adopt {phases.AdoptedMs:F0}, first I/O {phases.FirstIoMs:F0} ms; ") +
            $"{phases.AdoptedElements} mirrored elements adopted; {acked.Count} writes acknowledged ({ackedAtKill} before the kill), {lost} lost");
        lock (probeErrors)
            if (probeErrors.Count > 0)
                log.WriteLine($"    probes that failed ({probeErrors.Count}; ms from the kill): first {probeErrors[0]}; last {probeErrors[^1]}");
        return new Round(n, takeoverMs, phases, acked.Count, lost, probes.Count);
    }

    /// <summary>Reads the round's blocks through the survivor and counts acknowledged blocks whose contents are not theirs.</summary>
    static async Task<long> VerifyAsync(IPEndPoint endPoint, int round, long firstBlock, long lastBlock, ConcurrentBag<long> acked, TextWriter log, CancellationToken ct)
    {
        var want = acked.ToHashSet();
        const int ChunkBlocks = 64;
        var chunk = new byte[ChunkBlocks * BlockBytes];
        var expected = new byte[BlockBytes];
        long lost = 0;
        await using var c = await BenchNbdClient.OpenAsync(endPoint, VolumeName, ct).ConfigureAwait(false);
        for (long b = firstBlock; b <= lastBlock; b += ChunkBlocks)
        {
            int blocks = (int)Math.Min(ChunkBlocks, lastBlock - b + 1);
            var into = chunk.AsMemory(0, blocks * BlockBytes);
            await c.ReadAsync((ulong)(b * BlockBytes), into, ct).ConfigureAwait(false);
            for (int i = 0; i < blocks; i++)
            {
                if (!want.Contains(b + i)) continue;
                Fill(expected, round, b + i);
                if (into.Span.Slice(i * BlockBytes, BlockBytes).SequenceEqual(expected)) continue;
                if (lost++ < 10) log.WriteLine($"bench failover: round {round}: LOST acknowledged write of block {b + i} (offset {(b + i) * BlockBytes})");
            }
        }
        return lost;
    }

    /// <summary>A block's contents: its round and number, then bytes from a generator seeded by both.</summary>
    static void Fill(Span<byte> block, int round, long blockNumber)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(block, blockNumber);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(block[8..], round);
        ulong x = (ulong)blockNumber * 0x9E3779B97F4A7C15UL ^ (ulong)round << 48 ^ 0xD1B54A32D192ED03UL;
        for (int i = 16; i < block.Length; i += 8)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17; // xorshift64
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(block[i..], x);
        }
    }

    /// <summary>Both controllers answer, hold a lease, mirror to each other, and A serves arr0 (optimal).</summary>
    static async Task WaitPairReadyAsync(FailoverBenchOptions o, string dataDir, Children.Child up, CancellationToken ct)
    {
        var wait = Stopwatch.StartNew();
        string why = "";
        while (wait.Elapsed < RejoinDeadline)
        {
            if (up.HasExited) throw new InvalidOperationException($"duet up exited (code {up.Process.ExitCode}):\n{up.OutputText}");
            var a = await o.Status(dataDir, Owner, ct).ConfigureAwait(false);
            var b = await o.Status(dataDir, Survivor, ct).ConfigureAwait(false);
            why = a is null ? "A does not answer" : b is null ? "B does not answer"
                : a.Controller?.Failover?.State != "active" ? $"A is {a.Controller?.Failover?.State}"
                : b.Controller?.Failover?.State != "active" ? $"B is {b.Controller?.Failover?.State}"
                : b.Controller.Failover.PeerFenced ? "A is still fenced"
                : a.Controller.Mirror != "healthy" ? $"A's mirror is {a.Controller.Mirror}"
                : b.Controller.Mirror != "healthy" ? $"B's mirror is {b.Controller.Mirror}"
                : a.Arrays.FirstOrDefault(x => x.Name == ArrayName) is not { } arr ? "A does not list arr0"
                : arr.Owner != Owner || arr.State == "peer" ? $"arr0 is served by {arr.Owner}"
                : arr.State != "optimal" ? $"arr0 is {arr.State}"
                : "";
            if (why == "") return;
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        throw new TimeoutException($"the pair was not ready within {RejoinDeadline.TotalSeconds:F0} s ({why}):\n{up.OutputText}");
    }

    /// <summary>After a round: the supervisor restarts A, A rejoins; then arr0 is moved back to A.</summary>
    static async Task RestoreOwnerAsync(FailoverBenchOptions o, string dataDir, Children.Child up, CancellationToken ct)
    {
        var wait = Stopwatch.StartNew();
        while (true)
        {
            if (up.HasExited) throw new InvalidOperationException($"duet up exited (code {up.Process.ExitCode}):\n{up.OutputText}");
            var a = await o.Status(dataDir, Owner, ct).ConfigureAwait(false);
            var b = await o.Status(dataDir, Survivor, ct).ConfigureAwait(false);
            if (a?.Controller?.Failover?.State == "active" && b?.Controller is { Mirror: "healthy", Failover.PeerFenced: false } && a.Controller.Mirror == "healthy") break;
            if (wait.Elapsed > RejoinDeadline)
                throw new TimeoutException($"A did not rejoin within {RejoinDeadline.TotalSeconds:F0} s of the takeover (A: {a?.Controller?.Failover?.State ?? "no answer"}, " +
                    $"mirror {a?.Controller?.Mirror}; B: mirror {b?.Controller?.Mirror}, peer fenced {b?.Controller?.Failover?.PeerFenced}):\n{up.OutputText}");
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
        await o.MoveArray(dataDir, ArrayName, Owner, ct).ConfigureAwait(false);
        await WaitPairReadyAsync(o, dataDir, up, ct).ConfigureAwait(false);
    }

    /// <summary>Controller NAME of the pair on DIR: the `duet controller` process `duet up` started.</summary>
    internal static int ControllerPid(string dataDir, string name)
    {
        string needle = $"controller --name {name} --data {dataDir} ";
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out int pid)) continue;
            try
            {
                if (File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' ').Contains(needle, StringComparison.Ordinal)) return pid;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        throw new InvalidOperationException($"no process of controller {name} for {dataDir}");
    }

    internal static async Task WaitForOutputAsync(Children.Child c, string text, TimeSpan limit, CancellationToken ct)
    {
        var wait = Stopwatch.StartNew();
        while (!c.OutputText.Contains(text, StringComparison.Ordinal))
        {
            if (c.HasExited) throw new InvalidOperationException($"{c.Name} exited (code {c.Process.ExitCode}) before '{text}':\n{c.OutputText}");
            if (wait.Elapsed > limit) throw new TimeoutException($"{c.Name} did not print '{text}' within {limit.TotalSeconds:F0} s:\n{c.OutputText}");
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
    }

    static void PrintRound(TextWriter output, Round r, FailoverBenchOptions o)
    {
        string k = $"failover.round.{r.Number.ToString(CultureInfo.InvariantCulture)}";
        Print(output, $"{k}.takeover_ms", r.TakeoverMs, "F0");
        Print(output, $"{k}.after_timeout_ms", r.TakeoverMs - o.HeartbeatTimeoutMs, "F0");
        Print(output, $"{k}.detect_ms", r.Phases.DetectedMs, "F0");
        Print(output, $"{k}.fence_ms", r.Phases.FencedMs, "F0");
        Print(output, $"{k}.adopt_ms", r.Phases.AdoptedMs, "F0");
        Print(output, $"{k}.first_io_ms", r.Phases.FirstIoMs ?? double.NaN, "F0");
        Print(output, $"{k}.acked_writes", r.Acked, "F0");
        Print(output, $"{k}.lost_writes", r.Lost, "F0");
    }

    static void PrintSummary(TextWriter output, List<Round> rounds, FailoverBenchOptions o)
    {
        Print(output, "failover.rounds", rounds.Count, "F0");
        Print(output, "failover.lost_writes", rounds.Sum(r => r.Lost), "F0");
        if (rounds.Count == 0) return;
        double p50 = Median(rounds.Select(r => r.TakeoverMs));
        double afterP50 = Median(rounds.Select(r => r.TakeoverMs - o.HeartbeatTimeoutMs));
        Print(output, "failover.takeover_ms.p50", p50, "F0");
        Print(output, "failover.takeover_ms.max", rounds.Max(r => r.TakeoverMs), "F0");
        Print(output, "failover.after_timeout_ms.p50", afterP50, "F0");
        Print(output, "failover.detect_ms.p50", Median(rounds.Select(r => r.Phases.DetectedMs)), "F0");
        Print(output, "failover.fence_ms.p50", Median(rounds.Select(r => r.Phases.FencedMs)), "F0");
        Print(output, "failover.adopt_ms.p50", Median(rounds.Select(r => r.Phases.AdoptedMs)), "F0");
        Print(output, "failover.first_io_ms.p50", Median(rounds.Select(r => r.Phases.FirstIoMs ?? double.NaN)), "F0");
        Print(output, "failover.heartbeat_timeout_ms", o.HeartbeatTimeoutMs, "F0");
        output.WriteLine(FormattableString.Invariant(
            $"# goal: takeover p50 <= {GoalTakeoverMsP50:F0} ms: {(p50 <= GoalTakeoverMsP50 ? "met" : "MISSED")} ({p50:F0} ms over {rounds.Count} rounds)"));
        output.WriteLine(FormattableString.Invariant(
            $"# goal: after_timeout p50 <= {GoalAfterTimeoutMsP50:F0} ms: {(afterP50 <= GoalAfterTimeoutMsP50 ? "met" : "MISSED")} ({afterP50:F0} ms)"));
        output.WriteLine("# goal: lost_writes 0: " + (rounds.Sum(r => r.Lost) == 0 ? "met" : "MISSED"));
        output.WriteLine("# anchor: DRBD with a cluster manager (Pacemaker/Corosync) typically fails over in 15-30 s");
        output.WriteLine("# anchor: NetApp ONTAP storage failover takes up to 15 s by default");
        output.WriteLine("# phases (detect, fence, adopt, first_io) are the survivor's own, from when it last heard the owner (<= the kill)");
    }

    static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    static void Print(TextWriter output, string key, double value, string format) =>
        output.WriteLine($"{key} {value.ToString(format, CultureInfo.InvariantCulture)}");
}
