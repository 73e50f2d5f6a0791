using Duet.Core;

namespace Duet.Raid;

/// <summary>
/// A volume: a contiguous extent of an array's capacity, served with 512-byte logical blocks.
/// Validates every request at the edge (alignment, range) with typed errors.
/// </summary>
public sealed class RaidVolume(string name, RaidArray array, long offsetBlocks, long sizeBlocks) : IBlockVolume
{
    public string Name { get; } = name;
    public RaidArray Array { get; } = array;
    public long OffsetBlocks { get; } = offsetBlocks;
    public long SizeBlocks { get; } = sizeBlocks;
    public long SizeBytes => SizeBlocks * Units.BlockBytes;
    public bool ReadOnly => false;

    long ArraySector(long offset) => OffsetBlocks * Units.SectorsPerBlock + offset / Units.SectorBytes;

    void Check(long offset, long length) => VolumeChecks.CheckRequest(Name, SizeBytes, offset, length);

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        Check(offset, destination.Length);
        if (destination.IsEmpty) return ValueTask.CompletedTask;
        var read = Array.ReadAsync(ArraySector(offset), destination, ct);
        return read.IsCompletedSuccessfully ? read : InVolumeTermsAsync(read);
    }

    /// <summary>Awaits an array request and reports its failure's sector as this volume's (a medium error's LBA goes to the host).</summary>
    async ValueTask InVolumeTermsAsync(ValueTask request)
    {
        try { await request; }
        catch (BlockIoException e) when (e.Lba >= 0) { throw VolumeChecks.InVolume(e, OffsetBlocks * Units.SectorsPerBlock, SizeBlocks * Units.SectorsPerBlock); }
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken ct = default)
    {
        Check(offset, source.Length);
        if (source.IsEmpty) return;
        await InVolumeTermsAsync(Array.WriteAsync(ArraySector(offset), source, ct));
        if (fua) await Array.FlushAsync(ct);
    }

    public ValueTask FlushAsync(CancellationToken ct = default) => Array.FlushAsync(ct);

    public async ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken ct = default)
    {
        Check(offset, length);
        if (length == 0) return;
        await Array.WriteZeroesAsync(ArraySector(offset), length / Units.SectorBytes, ct);
        if (fua) await Array.FlushAsync(ct);
    }

    public async ValueTask TrimAsync(long offset, long length, CancellationToken ct = default)
    {
        Check(offset, length);
        // Whole blocks become holes; partial blocks at either end are zeroed.
        long first = (offset + Units.BlockBytes - 1) / Units.BlockBytes * Units.BlockBytes;
        long last = (offset + length) / Units.BlockBytes * Units.BlockBytes;
        if (last <= first)
        {
            if (length > 0) await Array.WriteZeroesAsync(ArraySector(offset), length / Units.SectorBytes, ct);
            return;
        }
        if (first > offset) await Array.WriteZeroesAsync(ArraySector(offset), (first - offset) / Units.SectorBytes, ct);
        await Array.TrimAsync(ArraySector(first), (last - first) / Units.SectorBytes, ct);
        if (offset + length > last) await Array.WriteZeroesAsync(ArraySector(last), (offset + length - last) / Units.SectorBytes, ct);
    }

    /// <summary>At most this many blocks are looked at per call; the answer may cover less than asked.</summary>
    public const int AllocationScanBlocks = 8192;

    public async ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken ct = default)
    {
        Check(offset, length);
        var extents = new List<AllocationExtent>();
        if (length == 0) return extents;
        long block = offset / Units.BlockBytes;
        long end = Math.Min((offset + length + Units.BlockBytes - 1) / Units.BlockBytes, block + AllocationScanBlocks);
        long cursor = offset;
        for (long b = block; b < end; b++)
        {
            ulong? tag = await Array.DataTagAsync(OffsetBlocks + b, ct);
            var flags = tag == 0 ? AllocationFlags.Hole | AllocationFlags.Zero : AllocationFlags.None;
            long blockEnd = Math.Min((b + 1) * Units.BlockBytes, offset + length);
            long len = blockEnd - cursor;
            if (extents.Count > 0 && extents[^1].Flags == flags) extents[^1] = extents[^1] with { Length = extents[^1].Length + len };
            else extents.Add(new AllocationExtent(len, flags));
            cursor = blockEnd;
        }
        return extents;
    }
}
