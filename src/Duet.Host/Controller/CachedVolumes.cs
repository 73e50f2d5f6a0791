using Duet.Cache;
using Duet.Core;
using Duet.Raid;

namespace Duet.Host.Controller;

/// <summary>A served RAID array as the cache's backing store.</summary>
public sealed class RaidBacking(RaidArray array, byte number, ulong serial) : ICacheBacking
{
    public RaidArray Array { get; } = array;
    public byte ArrayNumber { get; } = number;
    public ulong ArraySerial { get; } = serial;
    public long CapacitySectors => Array.CapacitySectors;
    public long StripeSectors => Array.Geometry.StripeDataBlocks * Units.SectorsPerBlock;
    public ValueTask ReadAsync(long sector, Memory<byte> destination, CancellationToken ct) => Array.ReadAsync(sector, destination, ct);
    public ValueTask WriteAsync(long sector, ReadOnlyMemory<byte> source, CancellationToken ct) => Array.WriteAsync(sector, source, ct);
    public ValueTask FlushAsync(CancellationToken ct) => Array.FlushAsync(ct);
}

/// <summary>
/// A volume of an array this controller serves, through its write-back cache: writes are
/// acknowledged once mirrored (or, in error-recovery mode, once on the drives); reads see the
/// cache first. Edge validation is the underlying <see cref="RaidVolume"/>'s.
/// </summary>
public sealed class CachedVolume(RaidVolume volume, WriteBackCache cache, byte arrayNumber) : IBlockVolume
{
    public RaidVolume Volume { get; } = volume;
    public string Name => Volume.Name;
    public long SizeBytes => Volume.SizeBytes;
    public bool ReadOnly => false;

    long ArraySector(long offset) => Volume.OffsetBlocks * Units.SectorsPerBlock + offset / Units.SectorBytes;

    void Check(long offset, long length)
    {
        if (offset % Units.SectorBytes != 0 || length % Units.SectorBytes != 0)
            throw new BlockIoException(BlockErrorKind.Invalid, $"volume {Name}: offset {offset} and length {length} must be multiples of {Units.SectorBytes}", offset / Units.SectorBytes);
        if (offset < 0 || length < 0 || offset > SizeBytes - length)
            throw new BlockIoException(BlockErrorKind.OutOfRange, $"volume {Name}: bytes {offset}+{length} are beyond its size {SizeBytes}", offset / Units.SectorBytes);
    }

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        Check(offset, destination.Length);
        return destination.IsEmpty ? ValueTask.CompletedTask : cache.ReadAsync(arrayNumber, ArraySector(offset), destination, ct);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken ct = default)
    {
        Check(offset, source.Length);
        return source.IsEmpty ? ValueTask.CompletedTask : cache.WriteAsync(arrayNumber, ArraySector(offset), source, fua, ct);
    }

    /// <summary>FLUSH: with a healthy mirror every acknowledged write is already in two NVRAMs.</summary>
    public ValueTask FlushAsync(CancellationToken ct = default) => cache.FlushAsync(arrayNumber, ct);

    public async ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken ct = default)
    {
        Check(offset, length);
        const int Step = 1 << 20;
        var zeros = new byte[(int)Math.Min(length, Step)];
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(Step, length - done);
            await cache.WriteAsync(arrayNumber, ArraySector(offset + done), zeros.AsMemory(0, n), fua, ct).ConfigureAwait(false);
            done += n;
        }
    }

    /// <summary>TRIM through the cache is a zero write: the cache must not keep older data for the range.</summary>
    public ValueTask TrimAsync(long offset, long length, CancellationToken ct = default) => WriteZeroesAsync(offset, length, false, ct);

    public async ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken ct = default)
    {
        var extents = await Volume.GetAllocationAsync(offset, length, ct).ConfigureAwait(false);
        // Data still in the cache is allocated whatever the drives say.
        var result = new List<AllocationExtent>();
        long at = offset;
        foreach (var e in extents)
        {
            for (long b = at; b < at + e.Length;)
            {
                long blockEnd = Math.Min(at + e.Length, (b / Units.BlockBytes + 1) * Units.BlockBytes);
                long elementLba = ArraySector(b / Units.SectorBytes * Units.SectorBytes) / WriteBackCache.SectorsPerElement * WriteBackCache.SectorsPerElement;
                var flags = e.Flags != AllocationFlags.None && cache.IsCached(arrayNumber, elementLba) ? AllocationFlags.None : e.Flags;
                if (result.Count > 0 && result[^1].Flags == flags) result[^1] = result[^1] with { Length = result[^1].Length + (blockEnd - b) };
                else result.Add(new AllocationExtent(blockEnd - b, flags));
                b = blockEnd;
            }
            at += e.Length;
        }
        return result;
    }
}
