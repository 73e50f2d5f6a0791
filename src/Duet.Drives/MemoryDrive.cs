using Duet.Core;

namespace Duet.Drives;

/// <summary>
/// A drive in memory. Storage is allocated lazily per 1 MiB extent, so a large, mostly
/// unwritten drive costs little; unwritten blocks read as zeros, like a sparse file.
/// Thread-safe for concurrent requests to different blocks.
/// </summary>
public sealed class MemoryDrive : IBlockDevice
{
    const int ExtentShift = 20;
    const int ExtentBytes = 1 << ExtentShift;
    readonly byte[]?[] _extents;
    readonly Lock _allocate = new();

    public MemoryDrive(string name, long blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        Name = name;
        BlockCount = blockCount;
        long bytes = blockCount * Units.BlockBytes;
        _extents = new byte[]?[(bytes + ExtentBytes - 1) >> ExtentShift];
    }

    public string Name { get; }
    public long BlockCount { get; }

    public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        BlockDeviceChecks.CheckRange(this, lba, destination.Length);
        var dst = destination.Span;
        long offset = lba * Units.BlockBytes;
        while (!dst.IsEmpty)
        {
            int index = (int)(offset >> ExtentShift);
            int within = (int)(offset & (ExtentBytes - 1));
            int n = Math.Min(dst.Length, ExtentBytes - within);
            var extent = Volatile.Read(ref _extents[index]);
            if (extent is null) dst[..n].Clear();
            else extent.AsSpan(within, n).CopyTo(dst);
            dst = dst[n..];
            offset += n;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken cancellationToken = default)
    {
        BlockDeviceChecks.CheckRange(this, lba, source.Length);
        var src = source.Span;
        long offset = lba * Units.BlockBytes;
        while (!src.IsEmpty)
        {
            int index = (int)(offset >> ExtentShift);
            int within = (int)(offset & (ExtentBytes - 1));
            int n = Math.Min(src.Length, ExtentBytes - within);
            var extent = Volatile.Read(ref _extents[index]);
            if (extent is null)
            {
                lock (_allocate) extent = _extents[index] ??= new byte[ExtentBytes];
            }
            src[..n].CopyTo(extent.AsSpan(within, n));
            src = src[n..];
            offset += n;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    /// <summary>Bytes of memory actually allocated (for tests and status).</summary>
    public long AllocatedBytes => _extents.Count(e => e is not null) * (long)ExtentBytes;

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
