namespace Duet.Interconnect.Wire;

public enum MirrorPath
{
    /// <summary>One 12-byte small write mirror message (MR-3): 3 doorbells.</summary>
    Small,
    /// <summary>Notification + metadata + data + status (MR-2): 4 doorbells.</summary>
    Large,
}

/// <summary>The chooser's answer and a sentence saying which test of figure 7 decided it.</summary>
public readonly record struct MirrorPathDecision(MirrorPath Path, string Reason);

/// <summary>
/// MR-4, seed 004 figure 7, in the figure's order:
/// <code>
///  700 more than two S/G elements?            yes -> large (704)
///  708 pair in error-recovery mode?           yes -> large
///  712 peer not initialised (table stale)?    yes -> large
///  716 descriptors differ in upper 4 bits?    yes -> large
///      (Duet) starting LBA above 32 bits?     yes -> large
///  720 small
/// </code>
/// Duet also sends large when an element cannot be expressed in the 12 bytes at all
/// (more than 32 blocks, offset not sector-aligned, descriptor above 20 bits). Pure.
/// </summary>
public static class MirrorPathChooser
{
    /// <param name="elements">The S/G elements the write needs: NVRAM offsets within the region and byte counts.</param>
    /// <param name="errorRecovery">The pair is recovering from a controller failure.</param>
    /// <param name="peerInitialised">The peer is initialised, so its array table is current.</param>
    /// <param name="lba">The starting array LBA of the write (512-byte units).</param>
    public static MirrorPathDecision Choose(IReadOnlyList<SgElement> elements, bool errorRecovery, bool peerInitialised, ulong lba)
    {
        ArgumentNullException.ThrowIfNull(elements);
        if (elements.Count == 0) throw new ArgumentException("a write needs at least one S/G element", nameof(elements));
        if (elements.Count > 2)
            return new(MirrorPath.Large, $"needs {elements.Count} S/G elements; the small message holds 2");
        if (errorRecovery)
            return new(MirrorPath.Large, "the pair is in error-recovery mode");
        if (!peerInitialised)
            return new(MirrorPath.Large, "the peer is not initialised, so its array table may not be current");
        foreach (var e in elements)
        {
            if (e.ByteCount == 0 || e.ByteCount % MirrorWire.SectorBytes != 0 || e.ByteCount > MirrorWire.ElementBytesMax)
                return new(MirrorPath.Large, $"an element of {e.ByteCount} bytes is not 1-32 blocks");
            if (e.NvramOffset % MirrorWire.SectorBytes != 0)
                return new(MirrorPath.Large, $"NVRAM offset {e.NvramOffset} is not sector-aligned");
            if (e.Descriptor > MirrorWire.DescriptorMax)
                return new(MirrorPath.Large, $"descriptor {e.Descriptor:X} does not fit 20 bits");
        }
        if (elements.Count == 2 && elements[0].Descriptor >> MirrorWire.DescriptorLowBits != elements[1].Descriptor >> MirrorWire.DescriptorLowBits)
            return new(MirrorPath.Large, "the two descriptors differ in their upper four bits");
        if (lba > uint.MaxValue)
            return new(MirrorPath.Large, $"LBA {lba} does not fit 32 bits");
        return new(MirrorPath.Small, $"{elements.Count} element(s), peer initialised, shared upper bits, 32-bit LBA");
    }
}
