using Duet.Core;

namespace Duet.Drives.Faults;

// Fault model
// ===========
// A FaultyDrive wraps any IBlockDevice (a MemoryDrive, a FileDrive, another FaultyDrive) and
// misbehaves as its FaultOptions say, drawing every random choice from DeterministicRandom
// streams forked from FaultOptions.Seed: one stream per fault kind, so turning one fault on
// does not shift another's decisions. Range and alignment are checked first, exactly as a
// real drive does (Invalid / OutOfRange), and are never faults.
//
// Every request is decided when it is issued, synchronously and in issue order (latency,
// medium error, tear), before anything is awaited; the same seed and the same sequence of
// calls give the same faults however the awaits interleave afterwards.
//
//   request ──▶ check range ──▶ failed? ──▶ decide ──▶ delay ──▶ failed? ──▶ medium? ──▶ inner
//                                (a)         (b,c,d)    (c)       (a)         (b)    (d: subset)
//
// (a) Failed drive. While failed (FaultOptions.StartFailed, Fail() ... Heal()), every read,
//     write and flush throws BlockIoException Unavailable, including requests already
//     delayed when Fail() is called. Nothing reaches the inner drive.
// (b) Medium errors. A read or write touching a bad block (FaultOptions.BadBlocks,
//     AddBadBlock) throws Medium with the first bad LBA in its range; independently, with
//     Read/WriteMediumErrorProbability a request throws Medium at a random LBA of its range.
//     A failing write writes nothing; a failing read leaves the buffer unspecified.
// (c) Latency. Each request waits LatencyFixed + uniform[0, LatencyJitterMax] on the injected
//     TimeProvider (TimeProviderExtensions.DelayAsync), before it reaches the inner drive.
// (d) Torn writes. With TornWriteProbability a write of two or more blocks lands only a random
//     proper subset of its blocks (possibly none), then throws Io, or, with TornWriteSilent,
//     reports success. Single-block writes are atomic.
// (e) Power cut. The inner drive holds the newest data, as a drive's volatile cache would.
//     For each block written since the last successful flush (and not since by a FUA write),
//     the decorator remembers its flushed content, read from the inner drive before the first
//     overwrite, and every version written since. PowerCutAsync() then keeps, per block and
//     independently, each version with PowerCutKeepProbability, and leaves the block holding
//     the newest kept version, or its flushed content if none is kept: any subset of the
//     unflushed writes is lost, and a block may end up at an older version than its newest.
//     It flushes the inner drive and forgets the record; the drive keeps working. Writes that
//     are still delayed at the cut land afterwards, like writes issued after power returns;
//     with discardInFlight (a cut that takes the whole enclosure down, hosts' requests included)
//     every write and flush issued before the cut that has not reached the inner drive fails
//     with Unavailable instead, and writes nothing.
//     A block whose flushed content could not be read (Medium from the inner drive) cannot be
//     rolled back to it; if none of its versions is kept, it keeps its newest.
//
// Writes, flushes and power cuts are serialized by one async gate (the record must match what
// the inner drive holds); reads are not. The decorator owns the inner drive and disposes it.

/// <summary>
/// A stackable <see cref="IBlockDevice"/> decorator that injects the faults described in
/// <see cref="FaultOptions"/>: failed drive, medium errors, latency, torn writes, power cuts.
/// See the fault model at the top of this file.
/// </summary>
public sealed class FaultyDrive : IBlockDevice
{
    readonly IBlockDevice _inner;
    readonly FaultOptions _options;
    readonly TimeProvider _time;

    // Guards the decision streams and the bad-block set: decisions are made under it, in issue order.
    readonly Lock _decide = new();
    readonly DeterministicRandom _latencyRandom;
    readonly DeterministicRandom _mediumRandom;
    readonly DeterministicRandom _tearRandom;
    readonly DeterministicRandom _powerCutRandom; // used only under _writeGate
    readonly HashSet<long> _badBlocks;

    // Serializes writes, flushes and power cuts; guards _unflushed.
    readonly AsyncGate _writeGate = new(1, 1);
    readonly Dictionary<long, UnflushedBlock> _unflushed = [];
    // Taken (briefly, never across an await) around every change of _unflushed's key set, so
    // UnflushedBlockCount can read it without waiting for the async gate, which a write holds
    // across awaits (a synchronous wait there deadlocks a single-threaded simulator).
    readonly Lock _record = new();

    volatile bool _failed;
    // Bumped by a discarding power cut: requests issued in an older epoch never reach the inner drive.
    long _powerEpoch;
    long _requests, _delayed, _unavailable, _mediumReads, _mediumWrites, _tornWrites, _silentTornWrites, _powerCuts, _blocksRolledBack;

    public FaultyDrive(IBlockDevice inner, FaultOptions options, TimeProvider timeProvider)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(timeProvider);
        options.Validate();
        _inner = inner;
        _options = options;
        _time = timeProvider;
        var root = new DeterministicRandom(options.Seed);
        _latencyRandom = root.Fork();
        _mediumRandom = root.Fork();
        _tearRandom = root.Fork();
        _powerCutRandom = root.Fork();
        _badBlocks = [.. options.BadBlocks];
        _failed = options.StartFailed;
    }

    public string Name => _inner.Name;
    public long BlockCount => _inner.BlockCount;
    public IBlockDevice Inner => _inner;
    public FaultOptions Options => _options;

    public bool IsFailed => _failed;

    /// <summary>Fails the drive: from now on every request throws <see cref="BlockErrorKind.Unavailable"/>.</summary>
    public void Fail() => _failed = true;

    /// <summary>Brings a failed drive back, contents as they were.</summary>
    public void Heal() => _failed = false;

    public void AddBadBlock(long lba)
    {
        lock (_decide) _badBlocks.Add(lba);
    }

    public void RemoveBadBlock(long lba)
    {
        lock (_decide) _badBlocks.Remove(lba);
    }

    /// <summary>Blocks written since the last flush that a power cut could roll back (a snapshot).</summary>
    public int UnflushedBlockCount
    {
        get
        {
            lock (_record) return _unflushed.Count;
        }
    }

    public FaultCounters Counters => new(
        Requests: Interlocked.Read(ref _requests),
        Delayed: Interlocked.Read(ref _delayed),
        Unavailable: Interlocked.Read(ref _unavailable),
        MediumReadErrors: Interlocked.Read(ref _mediumReads),
        MediumWriteErrors: Interlocked.Read(ref _mediumWrites),
        TornWrites: Interlocked.Read(ref _tornWrites),
        SilentTornWrites: Interlocked.Read(ref _silentTornWrites),
        PowerCuts: Interlocked.Read(ref _powerCuts),
        BlocksRolledBack: Interlocked.Read(ref _blocksRolledBack));

    public async ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        BlockDeviceChecks.CheckRange(this, lba, destination.Length);
        Interlocked.Increment(ref _requests);
        ThrowIfFailed(lba);
        int blocks = destination.Length / Units.BlockBytes;
        TimeSpan delay;
        long mediumLba;
        lock (_decide)
        {
            delay = DrawDelay();
            mediumLba = DrawMediumError(lba, blocks, _options.BadBlocksFailReads, _options.ReadMediumErrorProbability);
        }
        await DelayAsync(delay, cancellationToken);
        ThrowIfFailed(lba);
        if (mediumLba >= 0)
        {
            Interlocked.Increment(ref _mediumReads);
            throw new BlockIoException(BlockErrorKind.Medium, $"{Name}: read error at block {mediumLba} (injected)", mediumLba);
        }
        await _inner.ReadAsync(lba, destination, cancellationToken);
    }

    public async ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken cancellationToken = default)
    {
        BlockDeviceChecks.CheckRange(this, lba, source.Length);
        Interlocked.Increment(ref _requests);
        ThrowIfFailed(lba);
        int blocks = source.Length / Units.BlockBytes;
        TimeSpan delay;
        long mediumLba;
        bool[]? landed;
        long epoch = Interlocked.Read(ref _powerEpoch);
        lock (_decide)
        {
            delay = DrawDelay();
            mediumLba = DrawMediumError(lba, blocks, _options.BadBlocksFailWrites, _options.WriteMediumErrorProbability);
            landed = DrawTear(blocks);
        }
        await DelayAsync(delay, cancellationToken);
        ThrowIfFailed(lba);
        if (mediumLba >= 0)
        {
            Interlocked.Increment(ref _mediumWrites);
            throw new BlockIoException(BlockErrorKind.Medium, $"{Name}: write error at block {mediumLba} (injected)", mediumLba);
        }

        await _writeGate.WaitAsync(cancellationToken);
        try
        {
            ThrowIfPowerLost(epoch, lba);
            if (landed is null)
            {
                await WriteRecordedAsync(lba, source, fua, cancellationToken);
                return;
            }
            int landedCount = 0;
            for (int start = 0; start < blocks;)
            {
                if (!landed[start]) { start++; continue; }
                int end = start;
                while (end < blocks && landed[end]) end++;
                await WriteRecordedAsync(lba + start, source[(start * Units.BlockBytes)..(end * Units.BlockBytes)], fua, cancellationToken);
                landedCount += end - start;
                start = end;
            }
            Invariant.Assert(landedCount < blocks);
            Interlocked.Increment(ref _tornWrites);
            if (_options.TornWriteSilent)
            {
                Interlocked.Increment(ref _silentTornWrites);
                return;
            }
            throw new BlockIoException(BlockErrorKind.Io,
                $"{Name}: write of blocks {lba}..{lba + blocks - 1} was torn (injected): {landedCount} of {blocks} blocks landed", lba);
        }
        finally
        {
            _writeGate.Release();
        }
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref _requests);
        ThrowIfFailed(-1);
        TimeSpan delay;
        long epoch = Interlocked.Read(ref _powerEpoch);
        lock (_decide) delay = DrawDelay();
        await DelayAsync(delay, cancellationToken);
        ThrowIfFailed(-1);
        await _writeGate.WaitAsync(cancellationToken);
        try
        {
            ThrowIfPowerLost(epoch, -1);
            await _inner.FlushAsync(cancellationToken);
            lock (_record) _unflushed.Clear(); // only once the inner flush succeeded
        }
        finally
        {
            _writeGate.Release();
        }
    }

    /// <summary>
    /// Simulates losing power: rolls each block written since the last flush back to its flushed
    /// content or to one of the versions written since (fault model (e)), then flushes the inner
    /// drive. Returns how many blocks now hold something other than their newest write.
    /// Not a request: works on a failed drive, counts no request, has no latency.
    /// </summary>
    public ValueTask<int> PowerCutAsync(CancellationToken cancellationToken = default) => PowerCutAsync(discardInFlight: false, cancellationToken);

    /// <summary>
    /// <see cref="PowerCutAsync(CancellationToken)"/>; with <paramref name="discardInFlight"/> every write and
    /// flush issued before the cut that has not yet reached the inner drive fails with Unavailable and
    /// writes nothing (the whole enclosure lost power, not only the drive's cache).
    /// </summary>
    public async ValueTask<int> PowerCutAsync(bool discardInFlight, CancellationToken cancellationToken = default)
    {
        if (!_options.TrackUnflushedWrites)
            throw new InvalidOperationException($"{Name}: PowerCutAsync needs FaultOptions.TrackUnflushedWrites");
        if (discardInFlight) Interlocked.Increment(ref _powerEpoch); // before the gate: whatever waits for it is older
        await _writeGate.WaitAsync(cancellationToken);
        try
        {
            Interlocked.Increment(ref _powerCuts);
            var lbas = _unflushed.Keys.ToArray();
            Array.Sort(lbas); // decide in LBA order, not dictionary order, so the seed alone fixes the outcome
            int rolledBack = 0;
            foreach (long lba in lbas)
            {
                var block = _unflushed[lba];
                int kept = -1;
                for (int v = 0; v < block.Versions.Count; v++)
                    if (_powerCutRandom.Chance(_options.PowerCutKeepProbability)) kept = v;
                if (block.Versions.Count > 0 && kept == block.Versions.Count - 1) continue; // the newest survives: already there
                byte[]? content = kept >= 0 ? block.Versions[kept] : block.Flushed;
                if (content is null) continue; // flushed content unknown (unreadable): keep the newest
                await _inner.WriteAsync(lba, content, fua: false, cancellationToken);
                rolledBack++;
            }
            await _inner.FlushAsync(cancellationToken);
            lock (_record) _unflushed.Clear();
            Interlocked.Add(ref _blocksRolledBack, rolledBack);
            return rolledBack;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _inner.DisposeAsync();
    }

    void ThrowIfPowerLost(long epoch, long lba)
    {
        if (Interlocked.Read(ref _powerEpoch) == epoch) return;
        Interlocked.Increment(ref _unavailable);
        throw new BlockIoException(BlockErrorKind.Unavailable, $"{Name}: power was lost while this request was in flight (injected)", lba);
    }

    void ThrowIfFailed(long lba)
    {
        if (!_failed) return;
        Interlocked.Increment(ref _unavailable);
        throw new BlockIoException(BlockErrorKind.Unavailable, $"{Name}: drive has failed (injected)", lba);
    }

    Task DelayAsync(TimeSpan delay, CancellationToken cancellationToken)
    {
        if (delay == TimeSpan.Zero) return Task.CompletedTask;
        Interlocked.Increment(ref _delayed);
        return _time.DelayAsync(delay, cancellationToken);
    }

    // The Draw* methods run under _decide. Each draws only when its fault is configured, so a
    // stream's sequence depends only on the requests that could have hit that fault.

    TimeSpan DrawDelay()
    {
        var delay = _options.LatencyFixed;
        if (_options.LatencyJitterMax > TimeSpan.Zero)
            delay += TimeSpan.FromTicks(_latencyRandom.NextInt64(_options.LatencyJitterMax.Ticks + 1));
        return delay;
    }

    /// <summary>The LBA of an injected medium error in [lba, lba + blocks), or -1.</summary>
    long DrawMediumError(long lba, int blocks, bool badBlocksFail, double probability)
    {
        long hit = -1;
        if (badBlocksFail && _badBlocks.Count > 0)
        {
            for (long b = lba; b < lba + blocks; b++)
                if (_badBlocks.Contains(b)) { hit = b; break; }
        }
        if (probability > 0 && _mediumRandom.Chance(probability))
        {
            long random = lba + _mediumRandom.Next(blocks);
            if (hit < 0) hit = random;
        }
        return hit;
    }

    /// <summary>For a torn write, which blocks land (a proper subset); null for a whole write.</summary>
    bool[]? DrawTear(int blocks)
    {
        if (blocks < 2 || _options.TornWriteProbability <= 0) return null;
        if (!_tearRandom.Chance(_options.TornWriteProbability)) return null;
        var landed = new bool[blocks];
        int count = 0;
        for (int i = 0; i < blocks; i++)
        {
            landed[i] = _tearRandom.Chance(0.5);
            if (landed[i]) count++;
        }
        if (count == blocks) landed[_tearRandom.Next(blocks)] = false;
        return landed;
    }

    /// <summary>Writes through to the inner drive, keeping the unflushed-write record in step. Runs under _writeGate.</summary>
    async ValueTask WriteRecordedAsync(long lba, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken)
    {
        if (!_options.TrackUnflushedWrites)
        {
            await _inner.WriteAsync(lba, source, fua, cancellationToken);
            return;
        }
        int blocks = source.Length / Units.BlockBytes;
        if (!fua) await CaptureFlushedAsync(lba, blocks, cancellationToken);
        await _inner.WriteAsync(lba, source, fua, cancellationToken);
        for (int i = 0; i < blocks; i++)
        {
            if (fua)
            {
                lock (_record) _unflushed.Remove(lba + i); // this version is durable; nothing older can come back
            }
            else
            {
                var version = source.Slice(i * Units.BlockBytes, Units.BlockBytes).ToArray();
                _unflushed[lba + i].Versions.Add(version);
            }
        }
    }

    /// <summary>Records the flushed content of each block in range not yet written since the last flush, reading runs at a time.</summary>
    async ValueTask CaptureFlushedAsync(long lba, int blocks, CancellationToken cancellationToken)
    {
        for (int start = 0; start < blocks;)
        {
            if (_unflushed.ContainsKey(lba + start)) { start++; continue; }
            int end = start;
            while (end < blocks && !_unflushed.ContainsKey(lba + end)) end++;
            var run = new byte[(end - start) * Units.BlockBytes];
            bool whole = true;
            try
            {
                await _inner.ReadAsync(lba + start, run, cancellationToken);
            }
            catch (BlockIoException e) when (e.Kind == BlockErrorKind.Medium)
            {
                whole = false;
            }
            for (int i = start; i < end; i++)
            {
                byte[]? flushed = null;
                if (whole)
                {
                    flushed = run.AsSpan((i - start) * Units.BlockBytes, Units.BlockBytes).ToArray();
                }
                else
                {
                    // Some block of the run is unreadable: find which, one block at a time.
                    var one = new byte[Units.BlockBytes];
                    try
                    {
                        await _inner.ReadAsync(lba + i, one, cancellationToken);
                        flushed = one;
                    }
                    catch (BlockIoException e) when (e.Kind == BlockErrorKind.Medium)
                    {
                    }
                }
                lock (_record) _unflushed.Add(lba + i, new UnflushedBlock(flushed));
            }
            start = end;
        }
    }

    /// <summary>A block written since the last flush: its flushed content (null if unreadable) and the versions written since, oldest first.</summary>
    sealed class UnflushedBlock(byte[]? flushed)
    {
        public byte[]? Flushed { get; } = flushed;
        public List<byte[]> Versions { get; } = [];
    }
}

/// <summary>What a <see cref="FaultyDrive"/> has done: requests seen and faults injected, by kind.</summary>
public readonly record struct FaultCounters(
    long Requests,
    long Delayed,
    long Unavailable,
    long MediumReadErrors,
    long MediumWriteErrors,
    long TornWrites,
    long SilentTornWrites,
    long PowerCuts,
    long BlocksRolledBack);
