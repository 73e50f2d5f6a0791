using Duet.Core;

namespace Duet.Iscsi;

/// <summary>
/// A volume held in a byte array: a real <see cref="IBlockVolume"/> for tests and for running the
/// iSCSI target without arrays. It validates like every volume (alignment, range, read-only),
/// tracks each 4 KiB block's allocation (hole / zeros / data) so GET LBA STATUS has something true
/// to report, and can make every operation complete asynchronously (<see cref="YieldOnIo"/>) so
/// that concurrent commands interleave.
/// </summary>
public sealed class MemoryBlockVolume : IBlockVolume
{
    enum BlockState : byte { Hole, Zero, Data }

    readonly byte[] _data;
    readonly BlockState[] _blocks;
    readonly Lock _lock = new();
    int _flushes, _fuaWrites;

    public MemoryBlockVolume(string name, long sizeBytes, bool readOnly = false)
    {
        if (sizeBytes <= 0 || sizeBytes % Units.SectorBytes != 0 || sizeBytes > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(sizeBytes));
        Name = name;
        SizeBytes = sizeBytes;
        ReadOnly = readOnly;
        _data = new byte[sizeBytes];
        _blocks = new BlockState[(sizeBytes + Units.BlockBytes - 1) / Units.BlockBytes];
    }

    public string Name { get; }
    public long SizeBytes { get; }
    public bool ReadOnly { get; }
    public bool YieldOnIo { get; set; }
    public int FlushCount => Volatile.Read(ref _flushes);
    public int FuaWriteCount => Volatile.Read(ref _fuaWrites);

    /// <summary>Consulted on every read: a non-null result is thrown (a medium error, a lost path).</summary>
    public Func<long, long, BlockIoException?>? ReadFault { get; set; }

    /// <summary>The bytes, for tests to inspect or seed.</summary>
    public Span<byte> Contents => _data;

    public async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        Check(offset, destination.Length, write: false);
        if (YieldOnIo) await Task.Yield();
        cancellationToken.ThrowIfCancellationRequested();
        if (ReadFault?.Invoke(offset, destination.Length) is { } fault) throw fault;
        lock (_lock) _data.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        Check(offset, source.Length, write: true);
        if (YieldOnIo) await Task.Yield();
        cancellationToken.ThrowIfCancellationRequested();
        lock (_lock)
        {
            source.Span.CopyTo(_data.AsSpan((int)offset));
            Mark(offset, source.Length, BlockState.Data);
        }
        if (fua) Interlocked.Increment(ref _fuaWrites);
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (YieldOnIo) await Task.Yield();
        cancellationToken.ThrowIfCancellationRequested();
        Interlocked.Increment(ref _flushes);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default)
    {
        Check(offset, length, write: true);
        if (YieldOnIo) await Task.Yield();
        cancellationToken.ThrowIfCancellationRequested();
        lock (_lock)
        {
            _data.AsSpan((int)offset, (int)length).Clear();
            Mark(offset, length, BlockState.Zero);
        }
        if (fua) Interlocked.Increment(ref _fuaWrites);
    }

    public async ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        Check(offset, length, write: true);
        if (YieldOnIo) await Task.Yield();
        cancellationToken.ThrowIfCancellationRequested();
        lock (_lock)
        {
            _data.AsSpan((int)offset, (int)length).Clear();
            Mark(offset, length, BlockState.Hole);
        }
    }

    public async ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        Check(offset, length, write: false);
        if (YieldOnIo) await Task.Yield();
        cancellationToken.ThrowIfCancellationRequested();
        var extents = new List<AllocationExtent>();
        lock (_lock)
        {
            long end = offset + length, at = offset;
            while (at < end)
            {
                var state = _blocks[at / Units.BlockBytes];
                long runEnd = (at / Units.BlockBytes + 1) * Units.BlockBytes;
                while (runEnd < end && _blocks[runEnd / Units.BlockBytes] == state) runEnd += Units.BlockBytes;
                runEnd = Math.Min(runEnd, end);
                var flags = state switch
                {
                    BlockState.Hole => AllocationFlags.Hole | AllocationFlags.Zero,
                    BlockState.Zero => AllocationFlags.Zero,
                    _ => AllocationFlags.None,
                };
                extents.Add(new AllocationExtent(runEnd - at, flags));
                at = runEnd;
            }
        }
        return extents;
    }

    /// <summary>Whole 4 KiB blocks take <paramref name="state"/>; a partly covered block becomes data
    /// unless it stays all zeros (a hole or zero block partly trimmed or zeroed).</summary>
    void Mark(long offset, long length, BlockState state)
    {
        long end = offset + length;
        for (long block = offset / Units.BlockBytes; block * Units.BlockBytes < end; block++)
        {
            long start = block * Units.BlockBytes;
            if (start >= offset && start + Units.BlockBytes <= end) _blocks[block] = state;
            else if (state == BlockState.Data || _blocks[block] == BlockState.Data) _blocks[block] = BlockState.Data;
        }
    }

    void Check(long offset, long length, bool write)
    {
        if (write && ReadOnly) throw new BlockIoException(BlockErrorKind.ReadOnly, $"volume {Name} is read-only");
        if (length <= 0 || offset < 0 || offset % Units.SectorBytes != 0 || length % Units.SectorBytes != 0)
            throw new BlockIoException(BlockErrorKind.Invalid, $"volume {Name}: offset {offset} length {length} is not a positive multiple of {Units.SectorBytes}");
        VolumeChecks.CheckRequest(Name, SizeBytes, offset, length);
    }
}

/// <summary>A fixed list of volumes (the catalog's order is the LUN order).</summary>
public sealed class VolumeList(params IBlockVolume[] volumes) : IVolumeCatalog
{
    public IReadOnlyList<IBlockVolume> Volumes { get; } = volumes;

    public bool TryGetVolume(string name, out IBlockVolume volume)
    {
        foreach (var v in Volumes)
        {
            if (v.Name != name) continue;
            volume = v;
            return true;
        }
        volume = null!;
        return false;
    }
}
