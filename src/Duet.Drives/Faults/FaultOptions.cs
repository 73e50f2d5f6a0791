namespace Duet.Drives.Faults;

/// <summary>
/// How one <see cref="FaultyDrive"/> misbehaves. All randomness comes from <see cref="Seed"/>;
/// the defaults inject nothing (a transparent decorator that still records unflushed writes
/// so <see cref="FaultyDrive.PowerCutAsync"/> works). Probabilities are per request, in [0, 1].
/// See the fault model at the top of FaultyDrive.cs.
/// </summary>
public sealed record FaultOptions
{
    /// <summary>Seeds every random decision this drive makes.</summary>
    public ulong Seed { get; init; }

    // (a) Failed drive.

    /// <summary>The drive starts failed (as if <see cref="FaultyDrive.Fail"/> had been called).</summary>
    public bool StartFailed { get; init; }

    // (b) Medium errors.

    /// <summary>Blocks that always fail with <see cref="Duet.Core.BlockErrorKind.Medium"/> (more can be added at run time).</summary>
    public IReadOnlySet<long> BadBlocks { get; init; } = new HashSet<long>();

    /// <summary>Reads touching a bad block fail.</summary>
    public bool BadBlocksFailReads { get; init; } = true;

    /// <summary>Writes touching a bad block fail (and write nothing).</summary>
    public bool BadBlocksFailWrites { get; init; } = true;

    /// <summary>Chance that a read fails with a medium error at a random block of its range.</summary>
    public double ReadMediumErrorProbability { get; init; }

    /// <summary>Chance that a write fails with a medium error at a random block of its range (and writes nothing).</summary>
    public double WriteMediumErrorProbability { get; init; }

    // (c) Latency.

    /// <summary>Added to every read, write and flush, on the drive's <see cref="TimeProvider"/>.</summary>
    public TimeSpan LatencyFixed { get; init; }

    /// <summary>Plus a uniform random extra in [0, LatencyJitterMax] (whole ticks).</summary>
    public TimeSpan LatencyJitterMax { get; init; }

    // (d) Torn writes.

    /// <summary>Chance that a multi-block write lands only a random proper subset of its blocks.</summary>
    public double TornWriteProbability { get; init; }

    /// <summary>A torn write reports success (a silent tear) instead of failing with <see cref="Duet.Core.BlockErrorKind.Io"/>.</summary>
    public bool TornWriteSilent { get; init; }

    // (e) Power cut.

    /// <summary>
    /// Record, per block written since the last flush, its flushed content and the versions
    /// written since, so <see cref="FaultyDrive.PowerCutAsync"/> can roll them back. Costs one
    /// inner read on the first write to each block after a flush. Off: PowerCutAsync throws.
    /// </summary>
    public bool TrackUnflushedWrites { get; init; } = true;

    /// <summary>At a power cut, the chance that each unflushed version of a block survives; the block keeps the newest survivor, or its flushed content if none does.</summary>
    public double PowerCutKeepProbability { get; init; } = 0.5;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid setting.</summary>
    public void Validate()
    {
        CheckProbability(ReadMediumErrorProbability, nameof(ReadMediumErrorProbability));
        CheckProbability(WriteMediumErrorProbability, nameof(WriteMediumErrorProbability));
        CheckProbability(TornWriteProbability, nameof(TornWriteProbability));
        CheckProbability(PowerCutKeepProbability, nameof(PowerCutKeepProbability));
        if (LatencyFixed < TimeSpan.Zero)
            throw new ArgumentException($"{nameof(LatencyFixed)} {LatencyFixed} is negative", nameof(LatencyFixed));
        if (LatencyJitterMax < TimeSpan.Zero)
            throw new ArgumentException($"{nameof(LatencyJitterMax)} {LatencyJitterMax} is negative", nameof(LatencyJitterMax));
        ArgumentNullException.ThrowIfNull(BadBlocks);
    }

    static void CheckProbability(double p, string name)
    {
        if (!(p >= 0 && p <= 1)) throw new ArgumentException($"{name} {p} is not a probability in [0, 1]", name);
    }
}
