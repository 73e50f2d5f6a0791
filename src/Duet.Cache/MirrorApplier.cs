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

    /// <summary>Elements built from a base element of region 2 and the sectors carried (with-base headers).</summary>
    public long AppliedWithBase { get; private set; }

    /// <summary>
    /// The carried sectors a by-reference header names (first to last valid sector of its image),
    /// or why they cannot be had here: the host's bytes from the command this controller holds, and
    /// the kept sectors from this region's mirror of the element the image replaces.
    /// </summary>
    /// <summary>As <see cref="Resolve"/>, for a receiver checking a batch before it applies any of it: no
    /// bytes are composed, and a base element an earlier header of the batch stores
    /// (<paramref name="baseStoredEarlier"/>) is checked when the batch is applied, in order.
    /// <paramref name="retires"/>: the element the header retires (its reference block's flag), or -1.</summary>
    public string? Check(in CoherencyHeader h, ReadOnlySpan<byte> block, Func<int, bool> baseStoredEarlier, out int retires) =>
        Resolve(h, block, out _, out retires, baseStoredEarlier, compose: false);

    public string? Resolve(in CoherencyHeader h, ReadOnlySpan<byte> block, out ReadOnlyMemory<byte> bytes, out int retires) =>
        Resolve(h, block, out bytes, out retires, baseStoredEarlier: null, compose: true);

    string? Resolve(in CoherencyHeader h, ReadOnlySpan<byte> block, out ReadOnlyMemory<byte> bytes, out int retires, Func<int, bool>? baseStoredEarlier, bool compose)
    {
        bytes = default;
        retires = -1;
        if (!HostReferenceBlock.TryDecode(block, out var b)) return "malformed host reference block";
        var r = b.Host;
        if (hostData?.Invoke(r) is not { } payload) return $"host command (unit {r.Unit}, host {r.HostId:x}, tag {r.HostTag}) is not held here";
        int first = (int)(h.ElementIndex % WriteBackCache.SectorsPerElement);
        if (b.RetiresBase && (b.BaseElement >= Region.ElementCount || b.BaseElement == (int)(h.ElementIndex / WriteBackCache.SectorsPerElement)))
            return $"host reference: element {b.BaseElement} cannot be retired by the image at element {h.ElementIndex / WriteBackCache.SectorsPerElement}";
        if (b.RetiresBase) retires = b.BaseElement;
        uint carried = h.CoveredMask;
        uint fresh = h.ValidMask & ~b.KeepMask;
        if ((b.KeepMask & ~h.ValidMask) != 0 || fresh == 0 || !Contiguous(fresh)) return "host reference: keep mask does not fit the image";
        int freshFirst = System.Numerics.BitOperations.TrailingZeroCount(fresh);
        long freshBytes = (long)System.Numerics.BitOperations.PopCount(fresh) * Units.SectorBytes;
        if (r.PayloadOffset + freshBytes > payload.Length) return $"host command tag {r.HostTag} holds {payload.Length} bytes, not {r.PayloadOffset}+{freshBytes}";
        if (b.KeepMask == 0 && fresh == carried)
        {
            bytes = payload.Slice((int)r.PayloadOffset, (int)freshBytes);
            return null;
        }
        if (b.BaseElement >= 0 && baseStoredEarlier?.Invoke(b.BaseElement) == true) return null;
        // Compose: kept sectors from the mirror of the old element, new ones from the command.
        if (b.BaseElement < 0 || b.BaseElement >= Region.ElementCount || !Region.TryRead(b.BaseElement, out var old)) return $"host reference: base element {b.BaseElement} is not valid here";
        long lba = (long)h.Lba - first;
        if (old.ArrayNumber != h.Volume || old.ArrayLba != lba || (old.ValidMask & b.KeepMask) != b.KeepMask)
            return $"host reference: base element {b.BaseElement} holds array {old.ArrayNumber} LBA {old.ArrayLba} mask {old.ValidMask:x8}, not the kept sectors {b.KeepMask:x8} of LBA {lba}";
        if (!compose) return null;
        var image = new byte[h.BlockCount * Units.SectorBytes];
        var oldData = Region.Data(b.BaseElement);
        for (int s = first; s < first + (int)h.BlockCount; s++)
        {
            var to = image.AsSpan((s - first) * Units.SectorBytes, Units.SectorBytes);
            if ((b.KeepMask & (1u << s)) != 0) oldData.Slice(s * Units.SectorBytes, Units.SectorBytes).CopyTo(to);
            else if ((fresh & (1u << s)) != 0) payload.Span.Slice((int)r.PayloadOffset + (s - freshFirst) * Units.SectorBytes, Units.SectorBytes).CopyTo(to);
        }
        bytes = image;
        return null;
    }

    /// <summary>A with-base header's base block and base element, or why the image cannot be built here. A base an
    /// earlier header of the batch stores (<paramref name="baseStoredEarlier"/>) is checked when the batch is applied.</summary>
    string? CheckBase(in CoherencyHeader h, ReadOnlySpan<byte> data, out BaseBlock block, Func<int, bool>? baseStoredEarlier)
    {
        int element = (int)(h.ElementIndex / WriteBackCache.SectorsPerElement);
        if (!BaseBlock.TryDecode(data, out block)) return "malformed base block";
        if (block.BaseElement >= Region.ElementCount || block.BaseElement == element)
            return $"with-base image at element {element}: element {block.BaseElement} cannot be its base";
        if (baseStoredEarlier?.Invoke(block.BaseElement) == true) return null;
        uint kept = h.KeptMask;
        long lba = (long)h.Lba - (int)(h.ElementIndex % WriteBackCache.SectorsPerElement);
        if (!Region.TryReadFields(block.BaseElement, out var old)) return $"with-base image: base element {block.BaseElement} is not valid here";
        if (old.ArrayNumber != h.Volume || old.ArrayLba != lba || (old.ValidMask & kept) != kept)
            return $"with-base image: base element {block.BaseElement} holds array {old.ArrayNumber} LBA {old.ArrayLba} mask {old.ValidMask:x8}, not the kept sectors {kept:x8} of LBA {lba}";
        return null;
    }

    /// <summary>For a receiver checking a batch before it applies any of it (see <see cref="Check"/>).</summary>
    public string? CheckWithBase(in CoherencyHeader h, ReadOnlySpan<byte> data, Func<int, bool> baseStoredEarlier, out int retires)
    {
        retires = -1;
        if (CheckBase(h, data, out var block, baseStoredEarlier) is { } why) return why;
        if (block.RetiresBase) retires = block.BaseElement;
        return null;
    }

    static bool Contiguous(uint mask)
    {
        uint m = mask >> System.Numerics.BitOperations.TrailingZeroCount(mask);
        return (m & (m + 1)) == 0;
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
        int retire = -1;
        int baseElement = -1;
        if (h.Kind == CoherencyHeaderKind.MirrorByReference)
        {
            if (Resolve(h, data, out var held, out retire) is { } missing) { Rejected++; return missing; }
            data = held.Span;
            AppliedByReference++;
        }
        else if (h.Kind == CoherencyHeaderKind.MirrorWithBase)
        {
            if (CheckBase(h, data, out var block, baseStoredEarlier: null) is { } why) { Rejected++; return why; }
            baseElement = block.BaseElement;
            if (block.RetiresBase) retire = block.BaseElement;
            data = data[MirrorWire.BaseBlockBytes..];
        }
        if (arraySerialOf(h.Volume) is not { } serial) { Rejected++; return $"volume number {h.Volume} is not in the array table"; }
        if (data.Length != (int)h.BlockCount * Units.SectorBytes) { Rejected++; return $"header carries {h.BlockCount} blocks but {data.Length} bytes came"; }
        if ((long)h.Lba < first || (((long)h.Lba - first) % WriteBackCache.SectorsPerElement) != 0) { Rejected++; return $"LBA {h.Lba} does not sit at sector {first} of an element"; }
        var descriptor = new ElementDescriptor(serial, h.Volume, (long)h.Lba - first, WriteBackCache.SectorsPerElement, h.ValidMask, h.Sequence, Dirty: true);
        if (descriptor.Problem() is { } problem) { Rejected++; return problem; }
        // The valid sectors outside the carried range must already be there: the owner sends each
        // element whole from its first to its last valid sector (or, with a base, the base has them).
        if ((h.ValidMask & ~h.CoveredMask) != 0 && baseElement < 0) { Rejected++; return "valid mask names sectors the header does not carry"; }
        // Invalidate first: the element's old descriptor must not vouch for half-new data.
        Region.Invalidate(element);
        var image = Region.Data(element);
        if (baseElement >= 0)
        {
            var from = Region.Data(baseElement);
            foreach (var (s, k) in WriteBackCache.Runs(h.KeptMask))
                from.Slice(s * Units.SectorBytes, k * Units.SectorBytes).CopyTo(image[(s * Units.SectorBytes)..]);
            AppliedWithBase++;
        }
        data.CopyTo(image[(first * Units.SectorBytes)..]);
        Region.WriteDescriptorOnly(element, descriptor);
        Applied++;
        // The element this image replaced, which the owner retired: as the invalidation header that used to
        // follow (after the new image, so a stop in between leaves both, and replay in sequence order ends
        // with the new one).
        if (retire >= 0)
        {
            Region.Invalidate(retire);
            Invalidated++;
        }
        return null;
    }

    /// <summary>Whether a change can travel as a with-base header: a rewrite that keeps sectors of the element it
    /// replaces (<see cref="MirrorChange.KeepFrom"/>, which the peer holds) and writes one run of others.</summary>
    public static bool GoesWithBase(in MirrorChange change)
    {
        if (change.Invalidate || change.Reference is not null || change.KeepFrom < 0 || change.KeepMask == 0) return false;
        uint carried = change.Descriptor.ValidMask & ~change.KeepMask;
        return carried != 0 && Contiguous(carried) && (change.KeepMask & ~change.Descriptor.ValidMask) == 0;
    }

    /// <summary>The header that carries a cache change: an element from its first to its last valid
    /// sector; with <paramref name="byReference"/> and a change that names its bytes in a host
    /// command the peer holds, a by-reference header and its 32-byte reference block instead, which
    /// with <paramref name="retiresReplaced"/> also retires the element the change replaces
    /// (<see cref="MirrorChange.Replaces"/>) at the peer. With <paramref name="withBase"/> a rewrite that
    /// <see cref="GoesWithBase"/> travels as a with-base header: its base block and the sectors it wrote.</summary>
    public static (CoherencyHeader Header, ReadOnlyMemory<byte> Data) Encode(in MirrorChange change, bool byReference = false, bool retiresReplaced = false,
        bool withBase = false)
    {
        var (header, prefix, data) = EncodeParts(change, byReference, retiresReplaced, withBase);
        if (prefix.IsEmpty) return (header, data);
        if (data.IsEmpty) return (header, prefix);
        var bytes = new byte[prefix.Length + data.Length];
        prefix.Span.CopyTo(bytes);
        data.Span.CopyTo(bytes.AsSpan(prefix.Length));
        return (header, bytes);
    }

    /// <summary><see cref="Encode"/> with the header's data in two parts, to be sent one after the other: a block of its
    /// own (a reference or base block; empty for a plain image) and a slice of the change's data (empty by reference).
    /// Only the small block is allocated: the host's bytes are not copied.</summary>
    public static (CoherencyHeader Header, ReadOnlyMemory<byte> Prefix, ReadOnlyMemory<byte> Data) EncodeParts(in MirrorChange change, bool byReference = false,
        bool retiresReplaced = false, bool withBase = false)
    {
        uint baseIndex = (uint)(change.Element * WriteBackCache.SectorsPerElement);
        if (change.Invalidate)
            return (new CoherencyHeader(CoherencyHeaderKind.Invalidate, 0, 0, 0, baseIndex, 0, change.Descriptor.Sequence), default, default);
        var d = change.Descriptor;
        Invariant.Assert(d.ValidMask != 0);
        int first = System.Numerics.BitOperations.TrailingZeroCount(d.ValidMask);
        int last = 31 - System.Numerics.BitOperations.LeadingZeroCount(d.ValidMask);
        int count = last - first + 1;
        if (byReference && change.Reference is { } r)
        {
            var block = new byte[MirrorWire.HostReferenceBytes];
            Invariant.Assert(!retiresReplaced || (change.Replaces >= 0 && (change.KeepFrom < 0 || change.KeepFrom == change.Replaces)));
            var reference = retiresReplaced
                ? new HostReferenceBlock(r, change.Replaces, change.KeepMask, RetiresBase: true)
                : new HostReferenceBlock(r, change.KeepFrom, change.KeepMask);
            reference.Encode(block);
            return (new CoherencyHeader(CoherencyHeaderKind.MirrorByReference, d.ArrayNumber, (ulong)(d.ArrayLba + first), (uint)count,
                baseIndex + (uint)first, d.ValidMask, d.Sequence), block, default);
        }
        if (withBase && GoesWithBase(change))
        {
            Invariant.Assert(!retiresReplaced || change.KeepFrom == change.Replaces);
            uint carried = d.ValidMask & ~change.KeepMask;
            int at = System.Numerics.BitOperations.TrailingZeroCount(carried);
            int n = System.Numerics.BitOperations.PopCount(carried);
            var block = new byte[MirrorWire.BaseBlockBytes];
            new BaseBlock(change.KeepFrom, retiresReplaced).Encode(block);
            return (new CoherencyHeader(CoherencyHeaderKind.MirrorWithBase, d.ArrayNumber, (ulong)(d.ArrayLba + at), (uint)n,
                baseIndex + (uint)at, d.ValidMask, d.Sequence), block, change.Data.Slice(at * Units.SectorBytes, n * Units.SectorBytes));
        }
        var header = new CoherencyHeader(CoherencyHeaderKind.Mirror, d.ArrayNumber, (ulong)(d.ArrayLba + first), (uint)count,
            baseIndex + (uint)first, d.ValidMask, d.Sequence);
        return (header, default, change.Data.Slice(first * Units.SectorBytes, count * Units.SectorBytes));
    }
}
