using System.Diagnostics;
using System.Globalization;
using Duet.Cache;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Raid;
using Duet.Raid.Management;

namespace Duet.Bench;

public sealed record RecoveryBenchOptions
{
    /// <summary>Data capacity of the RAID 6 array (4 data + 2 parity drives).</summary>
    public long ArrayBytes { get; init; } = 4L << 30;
    /// <summary>Where the drive files and NVRAM go (a tmpfs: the figures are about Duet, not a disk).</summary>
    public string WorkDirectory { get; init; } = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
    public IReadOnlyList<int> LoggedStripes { get; init; } = [10, 100, 1000];
    public int Seed { get; init; } = 1;
}

/// <summary>
/// AW-4: how long recovery takes after a power cut with N logged stripes, beside a full parity check of
/// the same array. A RAID 6 array of file drives is filled with data through the RAID engine (every
/// block and tag written: nothing sparse); then, for each N, records naming N distinct random stripes
/// are opened in a write log in an NVRAM file, the parity of those stripes is overwritten with garbage
/// (the torn writes the records stand for), the NVRAM is reopened as a restarted controller reopens it,
/// and the time is taken of <see cref="WriteLog.SettleRecoveredAsync"/> settling the recovered records
/// with <see cref="RaidArray.SettleStripesAsync"/> — the controller's start-up path. A scrub without
/// repair checks afterwards that every stripe agrees again. The full check is a scrub of the whole array.
/// </summary>
public static class RecoveryBench
{
    public static async Task<int> RunAsync(RecoveryBenchOptions o, TextWriter output, TextWriter log, CancellationToken ct = default)
    {
        var root = Path.Combine(o.WorkDirectory, $"duet-bench-recovery.{Environment.ProcessId}.{Guid.NewGuid().ToString("N")[..6]}");
        Directory.CreateDirectory(root);
        try
        {
            long driveBytes = o.ArrayBytes / 4 + (64L << 20); // room for superblocks and tag blocks
            await using var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { DataDirectory = root }, ct);
            var names = new List<string>();
            for (int i = 0; i < 6; i++)
            {
                names.Add($"d{i}");
                await arrays.AddDriveAsync(new AddDriveRequest($"d{i}", driveBytes), ct);
            }
            await arrays.CreateArrayAsync(new CreateArrayRequest("arr0", 6, names), ct);
            var raid = arrays.ServedArrays.Single();
            var g = raid.Geometry;
            long stripes = Math.Min(g.CapacityBlocks, o.ArrayBytes / Units.BlockBytes) / g.StripeDataBlocks;
            if (o.LoggedStripes.FirstOrDefault(n => n > stripes) is > 0 and var tooMany)
            {
                log.WriteLine(FormattableString.Invariant($"duet bench recovery: {tooMany} logged stripes, but an array of {o.ArrayBytes >> 20} MiB has {stripes} stripes; use a larger --size"));
                return 2;
            }
            log.WriteLine(FormattableString.Invariant($"recovery bench: RAID 6, 4+2 drives of {driveBytes >> 20} MiB in {root}; {stripes} stripes of {g.StripeDataBlocks * Units.BlockBytes >> 10} KiB data"));

            var fill = Stopwatch.StartNew();
            var buffer = new byte[g.StripeDataBlocks * Units.BlockBytes * 16];
            var random = new Random(o.Seed);
            for (long s = 0; s < stripes; s += 16)
            {
                random.NextBytes(buffer);
                long n = Math.Min(16, stripes - s);
                await raid.WriteAsync(s * g.StripeDataBlocks * Units.SectorsPerBlock, buffer.AsMemory(0, (int)(n * g.StripeDataBlocks * Units.BlockBytes)), ct);
            }
            await raid.FlushAsync(ct);
            log.WriteLine(FormattableString.Invariant($"  filled {stripes * g.StripeDataBlocks * Units.BlockBytes >> 20} MiB through the array in {fill.Elapsed.TotalSeconds:F1} s"));

            var layout = NvramLayout.For(16L << 20);
            var nvramPath = Path.Combine(root, "nvram.bin");
            var pair = Guid.NewGuid();
            int failures = 0;
            // The first pass warms up (JIT, first touch of the code paths) and is not printed.
            bool warmup = true;
            foreach (int logged in o.LoggedStripes.Prepend(Math.Min(10, (int)stripes)))
            {
                // A record names up to StripesPerRecord consecutive stripes when the log has fewer slots than stripes.
                int perRecord = (logged + NvramLayout.LogSlots - 1) / NvramLayout.LogSlots;
                var chosen = PickRuns(random, stripes, logged, perRecord);
                using (var nvram = File.Exists(nvramPath) ? NvramFile.Open(nvramPath) : NvramFile.Create(nvramPath, layout, "A", pair))
                {
                    var wl = new WriteLog(nvram);
                    foreach (var (first, count) in chosen)
                        if (!wl.TryOpen(0, first * g.StripeDataBlocks, (int)(count * g.StripeDataBlocks), out _, out _))
                            throw new InvalidOperationException("the write log is full");
                }
                // The torn writes: each logged stripe's P block (row 0) gets content its data does not give.
                var garbage = new byte[Units.BlockBytes];
                foreach (var (first, count) in chosen)
                    for (long s = first; s < first + count; s++)
                    {
                        random.NextBytes(garbage);
                        await raid.Member(g.PMember(s))!.WriteAsync(s * g.ChunkBlocks, garbage, ct: ct);
                    }
                await raid.FlushAsync(ct);

                // The restart: the NVRAM opened again, and only its records' stripes checked and settled.
                var sw = Stopwatch.StartNew();
                int retired;
                using (var nvram = NvramFile.Open(nvramPath))
                {
                    var wl = new WriteLog(nvram);
                    retired = await wl.SettleRecoveredAsync(async (_, r) =>
                    {
                        await raid.SettleStripesAsync(r.FirstBlock, r.BlockCount, ct);
                        return true;
                    });
                }
                double ms = sw.Elapsed.TotalMilliseconds;
                var check = new ScrubResult();
                await raid.ScrubAsync(false, check, new PassProgress(), ct);
                bool clean = check.ParityMismatches == 0 && check.ChecksumErrors == 0;
                log.WriteLine(FormattableString.Invariant($"  {(warmup ? "warm-up: " : "")}{logged} logged stripes in {retired} records: settled in {ms:F1} ms; the array scrubs {(clean ? "clean" : $"with {check.ParityMismatches} parity mismatches and {check.ChecksumErrors} checksum errors")}"));
                if (!clean || retired != chosen.Count) failures++;
                if (!warmup) Print(output, $"recovery.logged{logged}.ms", ms);
                warmup = false;
            }

            var full = Stopwatch.StartNew();
            var result = new ScrubResult();
            await raid.ScrubAsync(false, result, new PassProgress(), ct);
            double fullMs = full.Elapsed.TotalMilliseconds;
            log.WriteLine(FormattableString.Invariant($"  full parity check: {result.StripesChecked} stripes in {fullMs:F0} ms"));
            Print(output, "recovery.fullcheck.ms", fullMs);
            return failures == 0 ? 0 : 1;
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary><paramref name="logged"/> distinct stripes in runs of up to <paramref name="perRecord"/>, none overlapping.</summary>
    static List<(long First, long Count)> PickRuns(Random random, long stripes, int logged, int perRecord)
    {
        var taken = new HashSet<long>();
        var runs = new List<(long, long)>();
        int left = logged;
        while (left > 0)
        {
            int n = Math.Min(perRecord, left);
            long first = random.NextInt64(0, stripes - n + 1);
            bool free = true;
            for (long s = first; s < first + n && free; s++) free = !taken.Contains(s);
            if (!free) continue;
            for (long s = first; s < first + n; s++) taken.Add(s);
            runs.Add((first, n));
            left -= n;
        }
        return runs;
    }

    static void Print(TextWriter output, string key, double value) =>
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{key} {value:F1}"));
}
