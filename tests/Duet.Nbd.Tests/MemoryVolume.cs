using Duet.Core;

namespace Duet.Nbd.Tests;

/// <summary>
/// A byte[]-backed volume that behaves like a real one at the seam: it validates like a volume
/// (512-byte alignment, range, read-only) and throws <see cref="BlockIoException"/>, and it
/// tracks each 4 KiB block's allocation so block status has something true to report.
/// </summary>
public sealed class MemoryVolume(string name, long sizeBytes, bool readOnly = false) : IBlockVolume
{
    private enum BlockState : byte { Hole, Data, Zero }

    private readonly byte[] _data = new byte[sizeBytes];
    private readonly BlockState[] _blocks = new BlockState[(sizeBytes + Units.BlockBytes - 1) / Units.BlockBytes];
    private int _flushCount;
    private int _fuaWriteCount;

    public string Name { get; } = name;
    public long SizeBytes { get; } = sizeBytes;
    public bool ReadOnly { get; } = readOnly;

    public int FlushCount => Volatile.Read(ref _flushCount);
    public int FuaWriteCount => Volatile.Read(ref _fuaWriteCount);

    /// <summary>When set, consulted on every read; a non-null result is thrown (fault injection).</summary>
    public Func<long, long, BlockIoException?>? ReadFault { get; set; }

    public Span<byte> Contents => _data;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        Check(offset, destination.Length, write: false);
        if (ReadFault?.Invoke(offset, destination.Length) is { } fault) throw fault;
        _data.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
        return ValueTask.CompletedTask;
    }

    /// <summary>When set, every write waits for it (after its range check): tests complete many writes at once.</summary>
    public TaskCompletionSource? WriteGate { get; set; }

    /// <summary>Writes waiting at <see cref="WriteGate"/>.</summary>
    public int WritesAtGate => Volatile.Read(ref _atGate);
    int _atGate;

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        if (WriteGate is { } gate) return GatedWriteAsync(gate, offset, source, fua);
        return WriteNow(offset, source, fua);
    }

    async ValueTask GatedWriteAsync(TaskCompletionSource gate, long offset, ReadOnlyMemory<byte> source, bool fua)
    {
        Check(offset, source.Length, write: true);
        Interlocked.Increment(ref _atGate);
        await gate.Task;
        Interlocked.Decrement(ref _atGate);
        await WriteNow(offset, source, fua);
    }

    ValueTask WriteNow(long offset, ReadOnlyMemory<byte> source, bool fua)
    {
        Check(offset, source.Length, write: true);
        source.Span.CopyTo(_data.AsSpan((int)offset));
        Mark(offset, source.Length, BlockState.Data, BlockState.Data);
        if (fua) Interlocked.Increment(ref _fuaWriteCount);
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref _flushCount);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default)
    {
        Check(offset, length, write: true);
        _data.AsSpan((int)offset, (int)length).Clear();
        Mark(offset, length, BlockState.Zero, BlockState.Data);
        if (fua) Interlocked.Increment(ref _fuaWriteCount);
        return ValueTask.CompletedTask;
    }

    public ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        Check(offset, length, write: true);
        _data.AsSpan((int)offset, (int)length).Clear();
        Mark(offset, length, BlockState.Hole, BlockState.Data);
        return ValueTask.CompletedTask;
    }

    public ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        Check(offset, length, write: false);
        var extents = new List<AllocationExtent>();
        long end = offset + length;
        long at = offset;
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
        return ValueTask.FromResult<IReadOnlyList<AllocationExtent>>(extents);
    }

    /// <summary>Whole 4 KiB blocks get <paramref name="whole"/>; partly covered ones <paramref name="partial"/>
    /// (unless still a hole and the operation leaves zeros).</summary>
    private void Mark(long offset, long length, BlockState whole, BlockState partial)
    {
        long end = offset + length;
        for (long block = offset / Units.BlockBytes; block * Units.BlockBytes < end; block++)
        {
            long start = block * Units.BlockBytes;
            bool covered = start >= offset && start + Units.BlockBytes <= end;
            if (covered) _blocks[block] = whole;
            else if (!(whole != BlockState.Data && _blocks[block] == BlockState.Hole)) _blocks[block] = partial;
        }
    }

    private void Check(long offset, long length, bool write)
    {
        if (write && ReadOnly) throw new BlockIoException(BlockErrorKind.ReadOnly, $"volume {Name} is read-only");
        if (length <= 0 || offset < 0 || offset % Units.SectorBytes != 0 || length % Units.SectorBytes != 0)
            throw new BlockIoException(BlockErrorKind.Invalid, $"offset {offset} length {length} is not a positive multiple of {Units.SectorBytes}");
        if (offset > SizeBytes || length > SizeBytes - offset)
            throw new BlockIoException(BlockErrorKind.OutOfRange, $"[{offset}, {offset + length}) is beyond {SizeBytes}", offset / Units.SectorBytes);
    }
}

public sealed class MemoryCatalog(params IBlockVolume[] volumes) : IVolumeCatalog
{
    public IReadOnlyList<IBlockVolume> Volumes { get; } = volumes;

    public bool TryGetVolume(string name, out IBlockVolume volume)
    {
        foreach (var v in Volumes)
        {
            if (v.Name == name)
            {
                volume = v;
                return true;
            }
        }
        volume = null!;
        return false;
    }
}
