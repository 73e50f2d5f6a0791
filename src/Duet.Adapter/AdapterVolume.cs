using Duet.Core;
using Duet.HostProtocol;

namespace Duet.Adapter;

/// <summary>
/// A volume of the pair as the adapter serves it: every request becomes host-protocol commands
/// on one <see cref="HostSession"/> (opened on first use, shared by every client of the volume),
/// split at the units' largest request. A write reaches this class whole — the NBD server took
/// all its data off the wire into the block buffer first (AW-2) — so nothing partial is ever sent.
/// In an adapter pair (AW-1) every write goes under a tag drawn here, checkpointed to the backup
/// before it is sent and after the pair answered it, and is re-sent only under that tag.
/// </summary>
public sealed class AdapterVolume : IBlockVolume, IAsyncDisposable
{
    readonly Func<string, CancellationToken, Task<HostSession>> _open;
    readonly SemaphoreSlim _opening = new(1, 1);
    readonly AdapterPairState? _pair;
    HostSession? _session;

    /// <summary>Zero-fill and discard go out as writes of this many zero bytes at a time.</summary>
    static readonly byte[] Zeros = new byte[HostWire.PayloadBytesMax];

    public AdapterVolume(HostVolumeEntry entry, Func<string, CancellationToken, Task<HostSession>> open)
        : this(entry, open, pair: null)
    {
    }

    internal AdapterVolume(HostVolumeEntry entry, Func<string, CancellationToken, Task<HostSession>> open, AdapterPairState? pair)
    {
        _pair = pair;
        Name = entry.Name;
        SizeBytes = (long)entry.SizeBytes;
        ReadOnly = (entry.Flags & HostVolumeFlags.ReadOnly) != 0;
        _open = open;
    }

    public string Name { get; }

    public long SizeBytes { get; }

    public bool ReadOnly { get; }

    /// <summary>The session, once a request opened it (for status and tests).</summary>
    public HostSession? Session => Volatile.Read(ref _session);

    /// <summary>The session, once the adapter serves (a backup that took over serves once it
    /// re-sent the unfinished writes).</summary>
    async ValueTask<HostSession> SessionAsync(CancellationToken cancellationToken)
    {
        if (_pair is not null && !_pair.Serving.IsCompleted) await _pair.Serving.WaitAsync(cancellationToken);
        return await OpenedSessionAsync(cancellationToken);
    }

    async ValueTask<HostSession> OpenedSessionAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _session) is { } s) return s;
        await _opening.WaitAsync(cancellationToken);
        try
        {
            if (_session is null)
            {
                try
                {
                    var session = await _open(Name, cancellationToken);
                    if (session.SizeBytes != SizeBytes)
                    {
                        await session.DisposeAsync();
                        throw new BlockIoException(BlockErrorKind.Unavailable, $"volume {Name}: the pair now reports {session.SizeBytes} bytes, not {SizeBytes}; reconnect", 0);
                    }
                    Volatile.Write(ref _session, session);
                }
                catch (IOException e)
                {
                    throw new BlockIoException(BlockErrorKind.Unavailable, $"volume {Name}: {e.Message}", 0);
                }
            }
            return _session!;
        }
        finally
        {
            _opening.Release();
        }
    }

    public async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        VolumeChecks.CheckRequest(Name, SizeBytes, offset, destination.Length);
        var session = await SessionAsync(cancellationToken);
        await ForEachChunkAsync(session, offset, destination.Length, async (o, n) =>
        {
            var completion = await session.ExecuteAsync(HostOpcode.Read, o, n, ReadOnlyMemory<byte>.Empty, fua: false, cancellationToken);
            Check(completion, o, n);
            if (completion.Data.Length != n)
                throw new BlockIoException(BlockErrorKind.Io, $"volume {Name}: read {o}+{n} came back with {completion.Data.Length} bytes", o / Units.SectorBytes);
            completion.Data.CopyTo(destination.Slice((int)(o - offset), n));
        });
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        VolumeChecks.CheckRequest(Name, SizeBytes, offset, source.Length);
        if (ReadOnly) throw new BlockIoException(BlockErrorKind.ReadOnly, $"volume {Name} is read-only", offset / Units.SectorBytes);
        var session = await SessionAsync(cancellationToken);
        await ForEachChunkAsync(session, offset, source.Length, (o, n) => WriteChunkAsync(session, o, source.Slice((int)(o - offset), n), fua, cancellationToken));
    }

    /// <summary>One host command's worth of a write. In a pair: tag, "before" checkpoint (the
    /// backup holds the whole write before any byte goes to a controller), the command under that
    /// tag only, "after" checkpoint; then the client may be answered. Once the "before" is taken,
    /// the client going away cancels nothing: the write runs to its answer, or the backup re-sends it.</summary>
    async Task WriteChunkAsync(HostSession session, long offset, ReadOnlyMemory<byte> data, bool fua, CancellationToken cancellationToken)
    {
        if (_pair is null)
        {
            Check(await session.ExecuteAsync(HostOpcode.Write, offset, data.Length, data, fua, cancellationToken), offset, data.Length);
            return;
        }
        cancellationToken.ThrowIfCancellationRequested();
        ulong tag = _pair.Tags.Next();
        var checkpoints = _pair.Checkpoints;
        if (checkpoints is not null) await checkpoints.BeforeAsync(new CheckpointBefore(tag, Name, offset, fua, data), CancellationToken.None);
        HostCompletion completion;
        try
        {
            completion = await session.ExecuteAsync(HostOpcode.Write, offset, data.Length, data, fua, tag, CancellationToken.None);
        }
        catch (ObjectDisposedException)
        {
            // The adapter is stopping: the write stays unfinished in the checkpoints, for the backup.
            throw new BlockIoException(BlockErrorKind.Unavailable, $"volume {Name}: the adapter is stopping", offset / Units.SectorBytes);
        }
        if (checkpoints is not null) await checkpoints.AfterAsync(tag, completion.Status);
        Check(completion, offset, data.Length);
    }

    /// <summary>A backup taking over: sends a write the primary checkpointed and did not finish,
    /// under its own tag — the pair runs it if it never got it, merges it with a copy it holds, or
    /// answers it from memory; it never runs twice.</summary>
    internal async Task<HostStatus> ReissueAsync(CheckpointBefore write, CancellationToken cancellationToken)
    {
        var session = await OpenedSessionAsync(cancellationToken);
        var completion = await session.ExecuteAsync(HostOpcode.Write, write.Offset, write.Data.Length, write.Data, write.Fua, write.Tag, cancellationToken);
        return completion.Status;
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        var session = await SessionAsync(cancellationToken);
        Check(await session.ExecuteAsync(HostOpcode.Flush, 0, 0, ReadOnlyMemory<byte>.Empty, fua: false, cancellationToken), 0, 0);
    }

    /// <summary>The host protocol carries no zero-fill: zeros go out as ordinary writes.</summary>
    public async ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default)
    {
        VolumeChecks.CheckRequest(Name, SizeBytes, offset, length);
        if (ReadOnly) throw new BlockIoException(BlockErrorKind.ReadOnly, $"volume {Name} is read-only", offset / Units.SectorBytes);
        var session = await SessionAsync(cancellationToken);
        await ForEachChunkAsync(session, offset, length, (o, n) => WriteChunkAsync(session, o, Zeros.AsMemory(0, n), fua, cancellationToken));
    }

    /// <summary>Discard keeps its promise that the range reads as zeros by writing them.</summary>
    public ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default) =>
        WriteZeroesAsync(offset, length, fua: false, cancellationToken);

    /// <summary>The host protocol does not report allocation: everything is data.</summary>
    public ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        VolumeChecks.CheckRequest(Name, SizeBytes, offset, length);
        return ValueTask.FromResult<IReadOnlyList<AllocationExtent>>([new AllocationExtent(length, AllocationFlags.None)]);
    }

    /// <summary>Runs <paramref name="chunk"/> for each piece of at most the session's largest
    /// request, up to eight at a time.</summary>
    static async Task ForEachChunkAsync(HostSession session, long offset, long length, Func<long, int, Task> chunk)
    {
        int max = session.PayloadBytesMax;
        if (length <= max)
        {
            await chunk(offset, (int)length);
            return;
        }
        var pieces = new List<(long Offset, int Length)>();
        for (long at = 0; at < length; at += max) pieces.Add((offset + at, (int)Math.Min(max, length - at)));
        await Parallel.ForEachAsync(pieces, new ParallelOptions { MaxDegreeOfParallelism = 8 }, async (p, _) => await chunk(p.Offset, p.Length));
    }

    void Check(HostCompletion completion, long offset, int length)
    {
        if (completion.Status == HostStatus.Ok) return;
        var kind = completion.Status switch
        {
            HostStatus.Invalid => BlockErrorKind.Invalid,
            HostStatus.OutOfRange => BlockErrorKind.OutOfRange,
            HostStatus.ReadOnly => BlockErrorKind.ReadOnly,
            HostStatus.MediumError => BlockErrorKind.Medium,
            HostStatus.Unavailable or HostStatus.NoSuchVolume or HostStatus.NotAttached => BlockErrorKind.Unavailable,
            _ => BlockErrorKind.Io,
        };
        throw new BlockIoException(kind, $"volume {Name}: {offset}+{length}: the pair answered {completion.Status}", offset / Units.SectorBytes);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _session, null) is { } s) await s.DisposeAsync();
    }
}
