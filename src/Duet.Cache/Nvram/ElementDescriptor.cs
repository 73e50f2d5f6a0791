using System.Buffers.Binary;
using System.Numerics;
using Duet.Core;

namespace Duet.Cache.Nvram;

/// <summary>
/// What one NVRAM cache element holds: up to 32 sectors of one array, starting at an
/// element-aligned array LBA. <see cref="ValidMask"/> has one bit per 512-byte sector of the
/// element (bit i = sector i); only bits below <see cref="BlockCount"/> may be set.
/// <see cref="Sequence"/> orders replay: a later sequence number wins. Sequence 0 is never used.
/// </summary>
public readonly record struct ElementDescriptor(
    ulong ArraySerial,
    byte ArrayNumber,
    long ArrayLba,
    int BlockCount,
    uint ValidMask,
    ulong Sequence,
    bool Dirty)
{
    /// <summary>Why this descriptor may not be stored, or null if it may.</summary>
    public string? Problem()
    {
        if (ArrayLba < 0) return $"array LBA {ArrayLba} is negative";
        if (ArrayLba % NvramLayout.ElementSectors != 0) return $"array LBA {ArrayLba} is not aligned to an element ({NvramLayout.ElementSectors} sectors)";
        if (BlockCount < 1 || BlockCount > NvramLayout.ElementSectors) return $"block count {BlockCount} is outside 1..{NvramLayout.ElementSectors}";
        if (ValidMask == 0) return "valid mask is empty";
        if (((ulong)ValidMask >> BlockCount) != 0) return $"valid mask 0x{ValidMask:x8} has bits at or above block count {BlockCount}";
        if (Sequence == 0) return "sequence number 0 is reserved";
        return null;
    }

    /// <summary>Number of valid sectors (bits set in the mask).</summary>
    public int ValidSectorCount => BitOperations.PopCount(ValidMask);

    public bool IsSectorValid(int sector) => sector is >= 0 and < NvramLayout.ElementSectors && (ValidMask >> sector & 1) != 0;
}

/// <summary>
/// The 64-byte non-volatile form of an <see cref="ElementDescriptor"/> (little-endian):
/// <code>
///  0      flags: bit 0 valid, bit 1 dirty; other bits zero
///  1      array number
///  2-3    block count (1..32)
///  4-7    valid mask (bit i = sector i of the element)
///  8-15   array serial number
///  16-23  array LBA, 512-byte units, multiple of 32
///  24-31  sequence number (never 0 in a valid descriptor)
///  32-35  element index (stamp: a descriptor copied to the wrong slot fails)
///  36     region number (1 or 2; stamp, likewise)
///  37-59  zero
///  60-63  CRC32C over bytes 0..59, then the data of every valid sector in ascending order
/// </code>
/// A descriptor whose valid bit is clear is empty whatever its other bytes hold.
/// </summary>
internal static class DescriptorCodec
{
    public const byte FlagValid = 1;
    public const byte FlagDirty = 2;
    public const byte KnownFlags = FlagValid | FlagDirty;
    public const int CrcOffset = 60;

    static DescriptorCodec()
    {
        Invariant.Assert(CrcOffset + sizeof(uint) == NvramLayout.DescriptorBytes);
    }

    /// <summary>Writes every field except the CRC.</summary>
    public static void EncodeFields(Span<byte> slot, in ElementDescriptor d, int element, int region)
    {
        Invariant.Assert(slot.Length == NvramLayout.DescriptorBytes);
        slot[0] = (byte)(FlagValid | (d.Dirty ? FlagDirty : 0));
        slot[1] = d.ArrayNumber;
        BinaryPrimitives.WriteUInt16LittleEndian(slot[2..], (ushort)d.BlockCount);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[4..], d.ValidMask);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[8..], d.ArraySerial);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[16..], (ulong)d.ArrayLba);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[24..], d.Sequence);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[32..], (uint)element);
        slot[36] = (byte)region;
        slot[37..CrcOffset].Clear();
    }

    public static ElementDescriptor DecodeFields(ReadOnlySpan<byte> slot) => new(
        ArraySerial: BinaryPrimitives.ReadUInt64LittleEndian(slot[8..]),
        ArrayNumber: slot[1],
        ArrayLba: (long)BinaryPrimitives.ReadUInt64LittleEndian(slot[16..]),
        BlockCount: BinaryPrimitives.ReadUInt16LittleEndian(slot[2..]),
        ValidMask: BinaryPrimitives.ReadUInt32LittleEndian(slot[4..]),
        Sequence: BinaryPrimitives.ReadUInt64LittleEndian(slot[24..]),
        Dirty: (slot[0] & FlagDirty) != 0);

    public static bool IsValid(ReadOnlySpan<byte> slot) => (slot[0] & FlagValid) != 0;

    public static uint StoredCrc(ReadOnlySpan<byte> slot) => BinaryPrimitives.ReadUInt32LittleEndian(slot[CrcOffset..]);

    /// <summary>CRC32C over the descriptor fields and the valid sectors of <paramref name="data"/>.</summary>
    public static uint ComputeCrc(ReadOnlySpan<byte> slot, uint validMask, ReadOnlySpan<byte> data)
    {
        Invariant.Assert(data.Length == NvramLayout.ElementBytesFixed);
        uint state = Crc32C.Append(Crc32C.Start, slot[..CrcOffset]);
        // The valid sectors in order, a run of consecutive ones at a time (the same bytes as sector by
        // sector, in longer spans, which Crc32C takes in parallel lanes).
        var mask = validMask;
        while (mask != 0)
        {
            int sector = BitOperations.TrailingZeroCount(mask);
            int run = BitOperations.TrailingZeroCount(~(mask >> sector));
            if (sector + run >= 32) run = 32 - sector;
            mask = sector + run >= 32 ? 0 : mask & ~(((1u << run) - 1) << sector);
            state = Crc32C.Append(state, data.Slice(sector * NvramLayout.SectorBytes, run * NvramLayout.SectorBytes));
        }
        return Crc32C.Finish(state);
    }

    /// <summary>Why a slot marked valid must not be replayed, or null if it checks.</summary>
    public static string? Check(ReadOnlySpan<byte> slot, ReadOnlySpan<byte> data, int element, int region)
    {
        Invariant.Assert(IsValid(slot));
        if ((slot[0] & ~KnownFlags) != 0) return $"unknown flags 0x{slot[0]:x2}";
        uint stored = StoredCrc(slot);
        uint computed = ComputeCrc(slot, BinaryPrimitives.ReadUInt32LittleEndian(slot[4..]), data);
        if (stored != computed) return $"CRC32C mismatch (stored 0x{stored:x8}, computed 0x{computed:x8}): torn or damaged update";
        uint stampedElement = BinaryPrimitives.ReadUInt32LittleEndian(slot[32..]);
        if (stampedElement != (uint)element) return $"descriptor is stamped for element {stampedElement}";
        if (slot[36] != region) return $"descriptor is stamped for region {slot[36]}";
        if (DecodeFields(slot).Problem() is { } problem) return problem;
        return null;
    }
}
