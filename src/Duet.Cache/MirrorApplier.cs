using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Interconnect.Wire;

namespace Duet.Cache;

/// <summary>
/// The receiving side of the mirror: applies the owner's changes to region 2 of this controller's
/// NVRAM at the same element index (CC-1). Changes arrive in the order the owner made them and are
/// applied in that order; the element's descriptor is written after its data (its CRC covers the
/// data), so a torn apply is never replayed.
///
/// Coherency headers address the element by NVRAM offset / 512 (the element index times 32 plus
/// the first sector carried); the array is named by its 8-bit volume number (MR-5).
/// </summary>
public sealed class MirrorApplier(NvramRegion region, Func<byte, ulong?> arraySerialOf,
    Func<HostDataReference, ReadOnlyMemory<byte>?>? hostData = null)
{
    /// <summary>Elements stored from a host command this controller held (by-reference headers).</summary>
    public long AppliedByReference { get; private set; }

    /// <summary>The bytes a by-reference header names, or why they are not here.</summary>
    public string? Resolve(in CoherencyHeader h, ReadOnlySpan<byte> block, out ReadOnlyMemory<byte> bytes)
    {
        bytes = default;
        if (!HostReferenceBlock.TryDecode(block, out var r)) return "malformed host reference block";
        if (hostData?.Invoke(r) is not { } payload) return $"host command (unit {r.Unit}, host {r.HostId:x}, tag {r.HostTag}) is not held here";
        long length = (long)h.BlockCount * Units.SectorBytes;
        if (r.PayloadOffset + length > payload.Length) return $"host command tag {r.HostTag} holds {payload.Length} bytes, not {r.PayloadOffset}+{length}";
        bytes = payload.Slice((int)r.PayloadOffset, (int)length);
        return null;
    }

    public NvramRegion Region { get; } = region;
    public long Applied { get; private set; }
    public long Invalidated { get; private set; }
    public long Rejected { get; private set; }

    /// <summary>Applies one header and its data. Returns null, or why the header was refused (nothing written).</summary>
    public string? Apply(in CoherencyHeader h, ReadOnlySpan<byte> data)
    {
        long offset = (long)h.ElementIndex * Units.SectorBytes;
        if (h.Validate(Region.RegionBytes) is var err && err != WireError.None) { Rejected++; return $"header refused: {err}"; }
        if (offset >= Region.RegionBytes) { Rejected++; return $"element index {h.ElementIndex} is outside region 2"; }
        int element = (int)(h.ElementIndex / WriteBackCache.SectorsPerElement);
        int first = (int)(h.ElementIndex % WriteBackCache.SectorsPerElement);
        if (h.Kind == CoherencyHeaderKind.Invalidate)
        {
            Region.Invalidate(element);
            Invalidated++;
            return null;
        }
        if (h.Kind == CoherencyHeaderKind.MirrorByReference)
        {
            if (Resolve(h, data, out var held) is { } missing) { Rejected++; return missing; }
            data = held.Span;
            AppliedByReference++;
        }
        if (arraySerialOf(h.Volume) is not { } serial) { Rejected++; return $"volume number {h.Volume} is not in the array table"; }
        if (data.Length != (int)h.BlockCount * Units.SectorBytes) { Rejected++; return $"header carries {h.BlockCount} blocks but {data.Length} bytes came"; }
        if ((long)h.Lba < first || (((long)h.Lba - first) % WriteBackCache.SectorsPerElement) != 0) { Rejected++; return $"LBA {h.Lba} does not sit at sector {first} of an element"; }
        var descriptor = new ElementDescriptor(serial, h.Volume, (long)h.Lba - first, WriteBackCache.SectorsPerElement, h.ValidMask, h.Sequence, Dirty: true);
        if (descriptor.Problem() is { } problem) { Rejected++; return problem; }
        // The valid sectors outside the carried range must already be there: the owner sends each
        // element whole from its first to its last valid sector.
        if ((h.ValidMask & ~h.CoveredMask) != 0) { Rejected++; return "valid mask names sectors the header does not carry"; }
        // Invalidate first: the element's old descriptor must not vouch for half-new data.
        Region.Invalidate(element);
        data.CopyTo(Region.Data(element)[(first * Units.SectorBytes)..]);
        Region.WriteDescriptorOnly(element, descriptor);
        Applied++;
        return null;
    }

    /// <summary>The header that carries a cache change: an element from its first to its last valid
    /// sector; with <paramref name="byReference"/> and a change that names its bytes in a host
    /// command the peer holds, a by-reference header and its 32-byte reference block instead.</summary>
    public static (CoherencyHeader Header, ReadOnlyMemory<byte> Data) Encode(in MirrorChange change, bool byReference = false)
    {
        uint baseIndex = (uint)(change.Element * WriteBackCache.SectorsPerElement);
        if (change.Invalidate)
            return (new CoherencyHeader(CoherencyHeaderKind.Invalidate, 0, 0, 0, baseIndex, 0, change.Descriptor.Sequence), default);
        var d = change.Descriptor;
        Invariant.Assert(d.ValidMask != 0);
        int first = System.Numerics.BitOperations.TrailingZeroCount(d.ValidMask);
        int last = 31 - System.Numerics.BitOperations.LeadingZeroCount(d.ValidMask);
        int count = last - first + 1;
        if (byReference && change.Reference is { } r)
        {
            var block = new byte[MirrorWire.HostReferenceBytes];
            HostReferenceBlock.Encode(r, block);
            return (new CoherencyHeader(CoherencyHeaderKind.MirrorByReference, d.ArrayNumber, (ulong)(d.ArrayLba + first), (uint)count,
                baseIndex + (uint)first, d.ValidMask, d.Sequence), block);
        }
        var header = new CoherencyHeader(CoherencyHeaderKind.Mirror, d.ArrayNumber, (ulong)(d.ArrayLba + first), (uint)count,
            baseIndex + (uint)first, d.ValidMask, d.Sequence);
        return (header, change.Data.Slice(first * Units.SectorBytes, count * Units.SectorBytes));
    }
}
