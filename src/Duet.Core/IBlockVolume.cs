namespace Duet.Core;

/// <summary>
/// A volume as front ends (NBD, iSCSI, the host protocol) see it: a byte-addressed device
/// with 512-byte logical blocks. Offsets and lengths are multiples of <see cref="Units.SectorBytes"/>;
/// implementations validate them and throw <see cref="BlockIoException"/> with a typed kind.
/// </summary>
public interface IBlockVolume
{
    string Name { get; }
    long SizeBytes { get; }
    bool ReadOnly { get; }

    ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default);

    /// <summary>With <paramref name="fua"/>, returns only when the data is durable.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default);

    /// <summary>Makes every completed write durable.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default);

    /// <summary>Advisory discard: afterwards the range reads as zeros.</summary>
    ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default);

    /// <summary>Allocation of [offset, offset+length): extents in order, covering at least the first byte.</summary>
    ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken cancellationToken = default);
}

[Flags]
public enum AllocationFlags : uint
{
    None = 0,
    /// <summary>Never written since the volume was created (NBD_STATE_HOLE).</summary>
    Hole = 1,
    /// <summary>Reads as zeros (NBD_STATE_ZERO).</summary>
    Zero = 2,
}

public readonly record struct AllocationExtent(long Length, AllocationFlags Flags);

/// <summary>The volumes a front end can serve, looked up by name.</summary>
public interface IVolumeCatalog
{
    bool TryGetVolume(string name, out IBlockVolume volume);
    IReadOnlyList<IBlockVolume> Volumes { get; }
}

/// <summary>A volume and its logical unit number (iSCSI).</summary>
public readonly record struct LunVolume(int Lun, IBlockVolume Volume);

/// <summary>
/// A catalog whose volumes keep their LUN for good (a controller's: each volume's LUN is stored in its array's
/// superblock), so a SCSI target maps LUNs by it and creating or deleting a volume renumbers no other. A target
/// over a plain <see cref="IVolumeCatalog"/> gives LUN i to its i-th volume instead.
/// </summary>
public interface ILunCatalog : IVolumeCatalog
{
    /// <summary>Every volume that has a LUN, in increasing LUN order, each LUN once.</summary>
    IReadOnlyList<LunVolume> LunVolumes { get; }
}

/// <summary>
/// Names the bytes of a host write the peer controller already holds (a multicast command, FO-3):
/// the command (unit, host id, host tag) and where in its payload the bytes start. The owner's
/// mirror then sends this instead of the bytes (seed 002: a listening secondary already has the
/// write image).
/// </summary>
public readonly record struct HostDataReference(byte Unit, ulong HostId, ulong HostTag, uint PayloadOffset)
{
    public HostDataReference At(long moreBytes) => this with { PayloadOffset = checked(PayloadOffset + (uint)moreBytes) };
}

/// <summary>A volume that can take a write whose bytes the peer controller holds too.</summary>
public interface IHostDataWriter
{
    /// <summary>As <see cref="IBlockVolume.WriteAsync"/>; <paramref name="reference"/> names
    /// <paramref name="source"/>'s first byte in the command the peer holds.</summary>
    ValueTask WriteHeldByPeerAsync(long offset, ReadOnlyMemory<byte> source, bool fua, HostDataReference reference, CancellationToken cancellationToken = default);
}

/// <summary>A catalog that learns its volumes from elsewhere (the host adapter asks the pair):
/// front ends refresh it once when a client connects, before looking names up.</summary>
public interface IRefreshingVolumeCatalog : IVolumeCatalog
{
    ValueTask RefreshAsync(CancellationToken cancellationToken = default);
}

/// <summary>Edge validation every volume does the same way: 512-byte alignment, then range.</summary>
public static class VolumeChecks
{
    public static void CheckRequest(string volume, long sizeBytes, long offset, long length)
    {
        if (offset % Units.SectorBytes != 0 || length % Units.SectorBytes != 0)
            throw new BlockIoException(BlockErrorKind.Invalid, $"volume {volume}: offset {offset} and length {length} must be multiples of {Units.SectorBytes}", offset / Units.SectorBytes);
        if (offset < 0 || length < 0 || offset > sizeBytes - length)
            throw new BlockIoException(BlockErrorKind.OutOfRange, $"volume {volume}: bytes {offset}+{length} are beyond its size {sizeBytes}", offset / Units.SectorBytes);
    }

    /// <summary>
    /// An error of the array under a volume, in the volume's terms: its <see cref="BlockIoException.Lba"/> (an
    /// array sector) becomes the volume's sector, or -1 if it lies outside the volume. A medium error's LBA is
    /// what SCSI sense reports to the host (the sector to write again, AW-5), so it must be the volume's.
    /// </summary>
    public static BlockIoException InVolume(BlockIoException e, long volumeFirstArraySector, long volumeSectors)
    {
        if (e.Lba < 0) return e;
        long lba = e.Lba - volumeFirstArraySector;
        return new BlockIoException(e.Kind, e.Message, lba >= 0 && lba < volumeSectors ? lba : -1, e);
    }
}
