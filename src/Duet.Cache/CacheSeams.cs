using Duet.Cache.Nvram;

namespace Duet.Cache;

/// <summary>What the cache sees of the peer: where mirrored elements go (region 2 of the peer's NVRAM).</summary>
public enum MirrorMode
{
    /// <summary>The peer answers: writes are acknowledged once mirrored.</summary>
    Healthy,
    /// <summary>The peer is gone (MR-4's error-recovery mode): writes go through to the drives before they are acknowledged.</summary>
    ErrorRecovery,
}

/// <summary>One change the peer must apply, in order: store an element's data and descriptor at the
/// same index of its region 2, or invalidate an element there. <see cref="Reference"/>, when set, names the same bytes in a host command the peer holds (a
/// multicast write): a mirror that can may send the name instead of the bytes.
/// <see cref="KeepFrom"/> (when not -1) is the element the image replaces, whose sectors in
/// <see cref="KeepMask"/> the image keeps: the peer has them in its own mirror of it (a multicast write
/// names the rest in the host command; any other may send just the rest, with that element as its base).
/// <see cref="Replaces"/> is the element an image replaces (-1: none), whose invalidation follows in the same
/// group: a mirror that can may fold the two into one header.</summary>
public readonly record struct MirrorChange(int Element, ElementDescriptor Descriptor, ReadOnlyMemory<byte> Data, bool Invalidate,
    Duet.Core.HostDataReference? Reference = null, int KeepFrom = -1, uint KeepMask = 0, int Replaces = -1);

/// <summary>
/// How the cache reaches the peer. Implementations batch (CC-2/CC-3) or send the seed's per-write
/// messages (MR-2/MR-3); the cache does not care. <see cref="AppendGroup"/> is called in the order
/// the changes must be applied, with the elements of one host write together (in address order,
/// then the invalidations of the elements they replace); the returned task completes when the
/// peer's status for every change of the group has come back, and faults with
/// <see cref="MirrorUnavailableException"/> if the peer is gone (the cache then writes through).
/// Implementations must not block: the cache calls this under its lock.
/// </summary>
public interface ICacheMirror
{
    MirrorMode Mode { get; }
    Task AppendGroup(IReadOnlyList<MirrorChange> changes);

    /// <summary>Whether an element image may have gaps (invalid sectors between valid ones) on its way to the
    /// peer: the coherency batch's headers carry them (CC-3); the seed's per-write messages carry one run of
    /// sectors, so without this the cache fills a gap from the array before it mirrors the image.</summary>
    bool CarriesGaps => false;
}

public sealed class MirrorUnavailableException(string message) : Exception(message);

/// <summary>The array behind the cache, addressed in 512-byte sectors (a RaidArray in the controller).</summary>
public interface ICacheBacking
{
    /// <summary>The 8-bit volume number of MR-5 that names this array on the link.</summary>
    byte ArrayNumber { get; }
    ulong ArraySerial { get; }
    long CapacitySectors { get; }
    /// <summary>Sectors of data in one stripe: destage prefers runs that cover whole stripes.</summary>
    long StripeSectors { get; }
    ValueTask ReadAsync(long sector, Memory<byte> destination, CancellationToken ct);
    /// <summary>Writes sectors. <paramref name="recovery"/> marks the first destage (or write-through) of data
    /// the cache replayed from NVRAM after a restart: the crash may have torn the blocks it covers (some
    /// written, their tags or parity not), and the array may then keep a torn block's content as read
    /// where it can no longer check or reconstruct it (<c>RaidArray.RecoveryWriteAsync</c>).</summary>
    ValueTask WriteAsync(long sector, ReadOnlyMemory<byte> source, bool recovery, CancellationToken ct);
    ValueTask FlushAsync(CancellationToken ct);
}
