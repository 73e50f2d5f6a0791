using System.Buffers.Binary;

namespace Duet.Interconnect.Wire;

/// <summary>
/// MR-3: the 12-byte small write mirror message, notice and metadata in one command.
/// <code>
///  byte 0      opcode 0xA0 (A mirrors to B) | 0xB0 (B mirrors to A)
///  byte 1      high(4) &lt;&lt; 4 | count1 &gt;&gt; 2
///  byte 2      (count1 &amp; 3) &lt;&lt; 6 | count2(6)
///  byte 3      volume number (array table, MR-5)
///  bytes 4-5   low 16 bits of descriptor 1
///  bytes 6-7   low 16 bits of descriptor 2
///  bytes 8-11  starting array LBA (512-byte units)
/// </code>
/// A descriptor is the NVRAM offset within the region / 512, 20 bits: <see cref="DescriptorHigh"/>
/// holds the upper four bits both descriptors share. Block counts are 1-32 for element 1 and
/// 0-32 for element 2 (0: a single element; then low2 must be zero). Element 2's data follows
/// element 1's in the array: it starts at LBA + count1.
/// </summary>
public readonly record struct SmallWriteMirrorMessage(
    byte Opcode, byte DescriptorHigh, byte Count1, byte Count2, byte Volume, ushort Low1, ushort Low2, uint Lba)
{
    public const int Size = MirrorWire.SmallWriteBytes;

    public uint Descriptor1 => (uint)DescriptorHigh << MirrorWire.DescriptorLowBits | Low1;
    public uint Descriptor2 => (uint)DescriptorHigh << MirrorWire.DescriptorLowBits | Low2;
    public long NvramOffset1 => (long)Descriptor1 << MirrorWire.SectorShift;
    public long NvramOffset2 => (long)Descriptor2 << MirrorWire.SectorShift;
    public int ElementCount => Count2 == 0 ? 1 : 2;
    public int BlockCount => Count1 + Count2;
    public long DataBytes => (long)BlockCount * MirrorWire.SectorBytes;

    /// <summary>The NVRAM region the opcode selects at the receiver: 0xA0 region 1, 0xB0 region 2.</summary>
    public byte Region => RegionFor(Opcode);

    public static byte RegionFor(byte opcode) => opcode switch
    {
        MirrorWire.SmallWriteOpcodeAToB => MirrorWire.RegionFirst,
        MirrorWire.SmallWriteOpcodeBToA => MirrorWire.RegionSecond,
        _ => throw new ArgumentOutOfRangeException(nameof(opcode), opcode, "not a small write opcode"),
    };

    /// <summary>The metadata this message stands for, as the equivalent S/G elements.</summary>
    public IReadOnlyList<SgElement> Elements => Count2 == 0
        ? [new SgElement((uint)NvramOffset1, (uint)Count1 * MirrorWire.SectorBytes)]
        : [new SgElement((uint)NvramOffset1, (uint)Count1 * MirrorWire.SectorBytes),
           new SgElement((uint)NvramOffset2, (uint)Count2 * MirrorWire.SectorBytes)];

    /// <summary>
    /// Reads bytes 0-11. Rejects an unknown opcode, count1 0 or 33-63, count2 33-63, a
    /// non-zero low2 without a second element, and an element that leaves a region of
    /// <paramref name="regionBytes"/>.
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<byte> source, long regionBytes, out SmallWriteMirrorMessage value, out WireError error)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(regionBytes);
        value = default;
        if (source.Length < Size) { error = WireError.TooShort; return false; }
        byte opcode = source[0];
        if (opcode is not (MirrorWire.SmallWriteOpcodeAToB or MirrorWire.SmallWriteOpcodeBToA)) { error = WireError.BadType; return false; }
        byte high = (byte)(source[1] >> 4);
        byte count1 = (byte)((source[1] & 0x0F) << 2 | source[2] >> 6);
        byte count2 = (byte)(source[2] & 0x3F);
        byte volume = source[3];
        ushort low1 = BinaryPrimitives.ReadUInt16BigEndian(source[4..]);
        ushort low2 = BinaryPrimitives.ReadUInt16BigEndian(source[6..]);
        uint lba = BinaryPrimitives.ReadUInt32BigEndian(source[8..]);
        if (count1 is 0 or > MirrorWire.SmallWriteBlockCountMax) { error = WireError.BadBlockCount; return false; }
        if (count2 > MirrorWire.SmallWriteBlockCountMax) { error = WireError.BadBlockCount; return false; }
        if (count2 == 0 && low2 != 0) { error = WireError.NonZeroReserved; return false; }
        var candidate = new SmallWriteMirrorMessage(opcode, high, count1, count2, volume, low1, low2, lba);
        if (candidate.NvramOffset1 + count1 * MirrorWire.SectorBytes > regionBytes) { error = WireError.OutsideRegion; return false; }
        if (count2 != 0 && candidate.NvramOffset2 + count2 * MirrorWire.SectorBytes > regionBytes) { error = WireError.OutsideRegion; return false; }
        value = candidate;
        error = WireError.None;
        return true;
    }

    public int Encode(Span<byte> destination)
    {
        Duet.Core.Invariant.Assert(Opcode is MirrorWire.SmallWriteOpcodeAToB or MirrorWire.SmallWriteOpcodeBToA);
        Duet.Core.Invariant.Assert(DescriptorHigh <= 0x0F);
        Duet.Core.Invariant.Assert(Count1 is > 0 and <= MirrorWire.SmallWriteBlockCountMax);
        Duet.Core.Invariant.Assert(Count2 <= MirrorWire.SmallWriteBlockCountMax);
        var d = destination[..Size];
        d[0] = Opcode;
        d[1] = (byte)(DescriptorHigh << 4 | Count1 >> 2);
        d[2] = (byte)((Count1 & 3) << 6 | Count2);
        d[3] = Volume;
        BinaryPrimitives.WriteUInt16BigEndian(d[4..], Low1);
        BinaryPrimitives.WriteUInt16BigEndian(d[6..], Low2);
        BinaryPrimitives.WriteUInt32BigEndian(d[8..], Lba);
        return Size;
    }

    /// <summary>
    /// Builds the message from NVRAM offsets within the region and block counts
    /// (<paramref name="blocks2"/> = 0 for a single element). Throws if the write cannot be
    /// expressed (ask <see cref="MirrorPathChooser"/> first).
    /// </summary>
    public static SmallWriteMirrorMessage Create(byte opcode, uint nvramOffset1, int blocks1, uint nvramOffset2, int blocks2, byte volume, uint lba)
    {
        if (opcode is not (MirrorWire.SmallWriteOpcodeAToB or MirrorWire.SmallWriteOpcodeBToA))
            throw new ArgumentOutOfRangeException(nameof(opcode), opcode, "opcode must be 0xA0 or 0xB0");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blocks1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(blocks1, MirrorWire.SmallWriteBlockCountMax);
        ArgumentOutOfRangeException.ThrowIfNegative(blocks2);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(blocks2, MirrorWire.SmallWriteBlockCountMax);
        if (blocks2 == 0 && nvramOffset2 != 0)
            throw new ArgumentException("a single-element message has no second offset", nameof(nvramOffset2));
        if (nvramOffset1 % MirrorWire.SectorBytes != 0 || nvramOffset2 % MirrorWire.SectorBytes != 0)
            throw new ArgumentException("NVRAM offsets must be multiples of 512");
        uint d1 = nvramOffset1 >> MirrorWire.SectorShift;
        uint d2 = nvramOffset2 >> MirrorWire.SectorShift;
        if (d1 > MirrorWire.DescriptorMax || d2 > MirrorWire.DescriptorMax)
            throw new ArgumentOutOfRangeException(nameof(nvramOffset1), "descriptor does not fit 20 bits (region above 512 MiB)");
        uint high = d1 >> MirrorWire.DescriptorLowBits;
        if (blocks2 != 0 && d2 >> MirrorWire.DescriptorLowBits != high)
            throw new ArgumentException("the two descriptors do not share their upper four bits");
        return new SmallWriteMirrorMessage(opcode, (byte)high, (byte)blocks1, (byte)blocks2, volume,
            (ushort)d1, blocks2 == 0 ? (ushort)0 : (ushort)d2, lba);
    }
}
