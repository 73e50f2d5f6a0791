using Duet.Core;

namespace Duet.HostProtocol.Tests;

/// <summary>A volume in memory; both controllers of a test pair share it, as they share the drives.</summary>
sealed class MemoryVolume(string name, long sizeBytes) : IBlockVolume
{
    readonly byte[] _data = new byte[sizeBytes];
    readonly Lock _lock = new();

    public string Name { get; } = name;
    public long SizeBytes { get; } = sizeBytes;
    public bool ReadOnly => false;

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        VolumeChecks.CheckRequest(Name, SizeBytes, offset, destination.Length);
        lock (_lock) _data.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default)
    {
        VolumeChecks.CheckRequest(Name, SizeBytes, offset, source.Length);
        lock (_lock) source.Span.CopyTo(_data.AsSpan((int)offset));
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) => throw new NotSupportedException();

    public ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default) => throw new NotSupportedException();

    public ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken cancellationToken = default) => throw new NotSupportedException();
}

sealed class MemoryCatalog(params IBlockVolume[] volumes) : IVolumeCatalog
{
    public IReadOnlyList<IBlockVolume> Volumes { get; } = volumes;

    public bool TryGetVolume(string name, out IBlockVolume volume)
    {
        volume = Volumes.FirstOrDefault(v => v.Name == name)!;
        return volume is not null;
    }
}
