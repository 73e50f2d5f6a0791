using Duet.Core;

namespace Duet.Cache.Nvram;

/// <summary>
/// Where everything lives in a controller's NVRAM file. Both controllers of a pair must have
/// equal layouts (CC-1): the peer mirrors element e of our region 1 into element e of its
/// region 2, so the element size, count and offsets must agree.
///
/// <code>
///  0                  HeaderBytes (4 KiB): two 512-byte copies of the header
///  DescriptorTable1   ElementCount x 64-byte descriptors for region 1, padded to 4 KiB
///  DescriptorTable2   the same for region 2
///  Region1            ElementCount x 16 KiB: this controller's own write-back cache
///  Region2            ElementCount x 16 KiB: the mirror of the peer's region 1
///  Log1               LogSlots x 64-byte write-log records (AW-4): this controller's array writes in flight
///  Log2               the same for the peer's (the mirror of its Log1)
///  Tags1              TagSlots x 64-byte entries: the host commands this controller finished (host-protocol.md)
///  Tags2              the same for the peer's (the mirror of its Tags1)
///  PpDescriptors      PpSlots x 64-byte descriptors of the partial-parity pool (AW-4, write-log.md), padded to 4 KiB
///  PpBlocks           PpSlots x 4 KiB: partial parity of the rows this controller's array writes change in part
///  UsedBytes..Total   unused slack (zero)
/// </code>
///
/// An element is 32 sectors of 512 bytes, so its valid mask is exactly one u32. A region is
/// at most 512 MiB because the small-write message (MR-3) names an element by its offset in
/// the region divided by 512, in 20 bits. Every instance is consistent: the only ways to get
/// one are <see cref="For"/> and <see cref="Of"/>, which check every relationship.
/// </summary>
public sealed record NvramLayout
{
    public const int SectorBytes = Units.SectorBytes;
    public const int PageBytes = 4096;
    public const int HeaderBytes = 4096;
    /// <summary>The element size of this format: 32 sectors, one bit each in the valid mask.</summary>
    public const int ElementSectors = 32;
    public const int ElementBytesFixed = ElementSectors * SectorBytes;
    public const int DescriptorBytes = 64;
    /// <summary>Bits of the MR-2/MR-3 "descriptor" (offset within the region / 512).</summary>
    public const int OffsetUnitBits = 20;
    public const long MaxRegionBytes = (1L << OffsetUnitBits) * SectorBytes;
    public const long MaxTotalBytes = 1L << 30;
    public const long MinTotalBytes = 1L << 20;
    public const long DefaultTotalBytes = 256L << 20;
    /// <summary>Write-log records per log (AW-4): array writes started and not yet durable.</summary>
    public const int LogSlots = 512;
    public const int LogRecordBytes = 64;
    public const int LogBytes = LogSlots * LogRecordBytes;
    /// <summary>Entries per table of finished host commands (idempotent re-issue; host-protocol.md):
    /// as many as the handshake remembers in memory, so a restart forgets nothing memory held.</summary>
    public const int TagSlots = 4096;
    public const int TagEntryBytes = 64;
    public const int TagTableBytes = TagSlots * TagEntryBytes;
    /// <summary>Partial-parity pool entries (write-log.md "Closing the hole with a member missing"): half the
    /// element count, within these bounds. The pool bounds how many array writes run at once with their sums
    /// promised (a write waits for its promise), not what they store.</summary>
    public const int MinPpSlots = 32, MaxPpSlots = 1024;
    public const int PpDescriptorBytes = 64;
    public const int PpBlockBytes = Units.BlockBytes;

    /// <summary>Partial-parity entries of a layout with <paramref name="elementCount"/> elements per region.</summary>
    public static int PpSlotsFor(long elementCount) => (int)Math.Clamp(elementCount / 2, MinPpSlots, MaxPpSlots);

    static NvramLayout()
    {
        // The relationships between the constants, checked once (STYLE.md).
        Invariant.Assert(ElementBytesFixed % SectorBytes == 0);
        Invariant.Assert(ElementBytesFixed / SectorBytes == sizeof(uint) * 8);
        Invariant.Assert(ElementBytesFixed % PageBytes == 0);
        Invariant.Assert(HeaderBytes % PageBytes == 0);
        Invariant.Assert(PageBytes % DescriptorBytes == 0);
        Invariant.Assert(MaxRegionBytes == 512L << 20);
        Invariant.Assert(MaxRegionBytes % ElementBytesFixed == 0);
        Invariant.Assert(MaxTotalBytes % PageBytes == 0);
        Invariant.Assert(MinTotalBytes % PageBytes == 0);
        Invariant.Assert(DefaultTotalBytes >= MinTotalBytes);
        Invariant.Assert(DefaultTotalBytes <= MaxTotalBytes);
        Invariant.Assert(LogBytes % PageBytes == 0);
        Invariant.Assert(TagTableBytes % PageBytes == 0);
        Invariant.Assert(PpBlockBytes % PageBytes == 0);
        Invariant.Assert(PageBytes % PpDescriptorBytes == 0);
        // An entry's slot is its sequence number modulo the slot count, taken as a mask.
        Invariant.Assert(System.Numerics.BitOperations.IsPow2(TagSlots));
        // Two maximal regions would not fit beside the header: 1 GiB never needs > 512 MiB.
        Invariant.Assert(2 * MaxRegionBytes + HeaderBytes > MaxTotalBytes);
        // The smallest file holds at least one element per region.
        Invariant.Assert(MaxElementCount(MinTotalBytes) >= 1);
    }

    NvramLayout(long totalBytes, int elementCount)
    {
        TotalBytes = totalBytes;
        ElementCount = elementCount;
        DescriptorTableBytes = AlignUp((long)elementCount * DescriptorBytes, PageBytes);
        DescriptorTable1Offset = HeaderBytes;
        DescriptorTable2Offset = DescriptorTable1Offset + DescriptorTableBytes;
        Region1Offset = DescriptorTable2Offset + DescriptorTableBytes;
        RegionBytes = (long)elementCount * ElementBytesFixed;
        Region2Offset = Region1Offset + RegionBytes;
        Log1Offset = Region2Offset + RegionBytes;
        Log2Offset = Log1Offset + LogBytes;
        Tags1Offset = Log2Offset + LogBytes;
        Tags2Offset = Tags1Offset + TagTableBytes;
        PpSlots = PpSlotsFor(elementCount);
        PpDescriptorsOffset = Tags2Offset + TagTableBytes;
        PpBlocksOffset = PpDescriptorsOffset + AlignUp((long)PpSlots * PpDescriptorBytes, PageBytes);
        UsedBytes = PpBlocksOffset + (long)PpSlots * PpBlockBytes;

        Invariant.Assert(UsedBytes <= TotalBytes);
        Invariant.Assert(RegionBytes <= MaxRegionBytes);
        Invariant.Assert(DescriptorTable1Offset % PageBytes == 0);
        Invariant.Assert(DescriptorTable2Offset % PageBytes == 0);
        Invariant.Assert(Region1Offset % PageBytes == 0);
        Invariant.Assert(Region2Offset % PageBytes == 0);
        Invariant.Assert(Log1Offset % PageBytes == 0 && Log2Offset % PageBytes == 0);
        Invariant.Assert(Tags1Offset % PageBytes == 0 && Tags2Offset % PageBytes == 0);
        Invariant.Assert(PpDescriptorsOffset % PageBytes == 0 && PpBlocksOffset % PageBytes == 0);
        Invariant.Assert(UsedBytes == UsedFor(elementCount));
        Invariant.Assert(TotalBytes % PageBytes == 0);
        Invariant.Assert(DescriptorTableBytes >= (long)ElementCount * DescriptorBytes);
        // The last element's MR-3 descriptor fits 20 bits.
        Invariant.Assert((RegionBytes - ElementBytesFixed) / SectorBytes < 1L << OffsetUnitBits);
    }

    /// <summary>Size of the file. The regions and tables fill it as far as whole elements go.</summary>
    public long TotalBytes { get; }
    public int ElementBytes => ElementBytesFixed;
    /// <summary>Elements in each region (both regions have the same count).</summary>
    public int ElementCount { get; }
    public long RegionBytes { get; }
    public long DescriptorTableBytes { get; }
    public long DescriptorTable1Offset { get; }
    public long DescriptorTable2Offset { get; }
    public long Region1Offset { get; }
    public long Region2Offset { get; }
    /// <summary>This controller's write log (AW-4), after region 2.</summary>
    public long Log1Offset { get; }
    /// <summary>The mirror of the peer's write log.</summary>
    public long Log2Offset { get; }
    /// <summary>This controller's table of finished host commands, after the write logs.</summary>
    public long Tags1Offset { get; }
    /// <summary>The mirror of the peer's table of finished host commands.</summary>
    public long Tags2Offset { get; }
    /// <summary>Entries of this controller's partial-parity pool.</summary>
    public int PpSlots { get; }
    /// <summary>The partial-parity pool's descriptors, after the tag tables.</summary>
    public long PpDescriptorsOffset { get; }
    /// <summary>The partial-parity pool's 4 KiB blocks, after its descriptors.</summary>
    public long PpBlocksOffset { get; }
    /// <summary>End of the partial-parity pool; the bytes from here to <see cref="TotalBytes"/> are unused.</summary>
    public long UsedBytes { get; }

    public long DescriptorTableOffset(int region) => region switch
    {
        1 => DescriptorTable1Offset,
        2 => DescriptorTable2Offset,
        _ => throw new ArgumentOutOfRangeException(nameof(region), region, "NVRAM regions are 1 and 2"),
    };

    public long LogOffset(int region) => region switch
    {
        1 => Log1Offset,
        2 => Log2Offset,
        _ => throw new ArgumentOutOfRangeException(nameof(region), region, "NVRAM regions are 1 and 2"),
    };

    public long TagTableOffset(int region) => region switch
    {
        1 => Tags1Offset,
        2 => Tags2Offset,
        _ => throw new ArgumentOutOfRangeException(nameof(region), region, "NVRAM regions are 1 and 2"),
    };

    public long RegionOffset(int region) => region switch
    {
        1 => Region1Offset,
        2 => Region2Offset,
        _ => throw new ArgumentOutOfRangeException(nameof(region), region, "NVRAM regions are 1 and 2"),
    };

    /// <summary>The layout with as many elements as fit in <paramref name="totalBytes"/>.</summary>
    public static NvramLayout For(long totalBytes)
    {
        if (SizeProblem(totalBytes) is { } problem) throw new ArgumentOutOfRangeException(nameof(totalBytes), totalBytes, problem);
        return new NvramLayout(totalBytes, MaxElementCount(totalBytes));
    }

    /// <summary>A layout with an explicit element count (fewer than fit is allowed).</summary>
    public static NvramLayout Of(long totalBytes, int elementCount)
    {
        if (Problem(totalBytes, elementCount) is { } problem) throw new ArgumentOutOfRangeException(nameof(elementCount), elementCount, problem);
        return new NvramLayout(totalBytes, elementCount);
    }

    /// <summary>Why (totalBytes, elementCount) is not a layout, or null if it is.</summary>
    public static string? Problem(long totalBytes, long elementCount)
    {
        if (SizeProblem(totalBytes) is { } problem) return problem;
        if (elementCount < 1) return $"an NVRAM region needs at least one element, not {elementCount}";
        if (elementCount * ElementBytesFixed > MaxRegionBytes)
            return $"{elementCount} elements of {Units.FormatSize(ElementBytesFixed)} make a region of {Units.FormatSize(elementCount * ElementBytesFixed)}, " +
                   $"over the {Units.FormatSize(MaxRegionBytes)} that 20-bit offsets in 512-byte units can address";
        long used = UsedFor(elementCount);
        if (used > totalBytes)
            return $"{elementCount} elements per region need {Units.FormatSize(used)}, more than the {Units.FormatSize(totalBytes)} NVRAM";
        return null;
    }

    static string? SizeProblem(long totalBytes)
    {
        if (totalBytes > MaxTotalBytes)
            return $"NVRAM size {Units.FormatSize(totalBytes)} is over the maximum of {Units.FormatSize(MaxTotalBytes)}";
        if (totalBytes < MinTotalBytes)
            return $"NVRAM size {Units.FormatSize(totalBytes)} is under the minimum of {Units.FormatSize(MinTotalBytes)}";
        if (totalBytes % PageBytes != 0)
            return $"NVRAM size {totalBytes} bytes is not a multiple of {PageBytes}";
        return null;
    }

    static long UsedFor(long elementCount) =>
        HeaderBytes + 2 * AlignUp(elementCount * DescriptorBytes, PageBytes) + 2 * elementCount * ElementBytesFixed + 2L * LogBytes + 2L * TagTableBytes
        + AlignUp((long)PpSlotsFor(elementCount) * PpDescriptorBytes, PageBytes) + (long)PpSlotsFor(elementCount) * PpBlockBytes;

    static int MaxElementCount(long totalBytes)
    {
        long n = Math.Min((totalBytes - HeaderBytes - 2L * LogBytes - 2L * TagTableBytes) / (2 * (ElementBytesFixed + DescriptorBytes)), MaxRegionBytes / ElementBytesFixed);
        while (n > 0 && UsedFor(n) > totalBytes) n--;
        Invariant.Assert(n >= 0);
        Invariant.Assert(n <= int.MaxValue);
        return (int)n;
    }

    static long AlignUp(long value, long alignment) => (value + alignment - 1) / alignment * alignment;

    public string Describe() =>
        $"NVRAM {Units.FormatSize(TotalBytes)}: header {Units.FormatSize(HeaderBytes)} at 0x0; " +
        $"descriptor tables of {ElementCount} x {DescriptorBytes} B ({Units.FormatSize(DescriptorTableBytes)} each) at 0x{DescriptorTable1Offset:x} and 0x{DescriptorTable2Offset:x}; " +
        $"region 1 at 0x{Region1Offset:x} and region 2 at 0x{Region2Offset:x}, each {ElementCount} elements of {Units.FormatSize(ElementBytes)} ({Units.FormatSize(RegionBytes)}); " +
        $"write logs of {LogSlots} x {LogRecordBytes} B at 0x{Log1Offset:x} and 0x{Log2Offset:x}; " +
        $"host tag tables of {TagSlots} x {TagEntryBytes} B at 0x{Tags1Offset:x} and 0x{Tags2Offset:x}; " +
        $"partial-parity pool of {PpSlots} x ({PpDescriptorBytes} B + {Units.FormatSize(PpBlockBytes)}) at 0x{PpDescriptorsOffset:x}; " +
        $"{Units.FormatSize(TotalBytes - UsedBytes)} unused";
}
