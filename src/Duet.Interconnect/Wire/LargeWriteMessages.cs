using System.Buffers.Binary;
using Duet.Core;

namespace Duet.Interconnect.Wire;

// MR-2, the seed's large-write mirroring, four transfers per mirror operation:
//
//   sender                                   receiver (peer NVRAM region 1 or 2)
//   NotificationMirrorMessage (10 B, 0x3C) -> "metadata follows"
//   MetadataMirrorMessage   (1024 B)       -> mark the named NVRAM blocks invalid
//   DataMirrorMessage       (raw data)     -> store the data, mark the blocks valid
//                                          <- StatusMessage (16 B)
//
// A write larger than 1 MiB is split (MetadataMirrorMessage.Split) into one such operation
// per 64 x 16 KiB.

/// <summary>MR-2a: 10-byte command whose byte 0 is 0x3C; bytes 1-9 are zero on send and ignored on receipt.</summary>
public readonly record struct NotificationMirrorMessage
{
    public const int Size = MirrorWire.NotificationBytes;

    public static bool TryDecode(ReadOnlySpan<byte> source, out NotificationMirrorMessage value, out WireError error)
    {
        value = default;
        if (source.Length < Size) { error = WireError.TooShort; return false; }
        if (source[0] != MirrorWire.NotificationOpcode) { error = WireError.BadType; return false; }
        error = WireError.None;
        return true;
    }

    public int Encode(Span<byte> destination)
    {
        var d = destination[..Size];
        d.Clear();
        d[0] = MirrorWire.NotificationOpcode;
        return Size;
    }
}

/// <summary>One scatter/gather element: where in the receiver's NVRAM region, and how many bytes.</summary>
public readonly record struct SgElement(uint NvramOffset, uint ByteCount)
{
    public uint BlockCount => ByteCount >> MirrorWire.SectorShift;

    /// <summary>The 20-bit descriptor of MR-3: NVRAM offset within the region / 512.</summary>
    public uint Descriptor => NvramOffset >> MirrorWire.SectorShift;
}

/// <summary>
/// MR-2b: the 1024-byte big-endian metadata mirror message. <see cref="Lba"/> is the logical
/// 64-bit LBA; the encoder writes it at bytes 8-11 when it is below 0xFFFFFFFF and otherwise
/// writes the escape 0xFFFFFFFF there and the LBA at bytes 32-39.
/// </summary>
public sealed record MetadataMirrorMessage
{
    public const int Size = MirrorWire.MetadataBytes;

    public required uint Sequence { get; init; }
    public required ulong Lba { get; init; }
    public required uint BlockCount { get; init; }
    public required ulong ArraySerial { get; init; }
    public required byte Region { get; init; }
    public required byte ArrayNumber { get; init; }

    /// <summary>The used S/G elements, packed, 1 to 64 of them.</summary>
    public required IReadOnlyList<SgElement> Elements { get; init; }

    /// <summary>Bytes of user data the following data mirror message must carry.</summary>
    public long DataBytes => (long)BlockCount * MirrorWire.SectorBytes;

    /// <summary>
    /// Reads bytes 0-1023 of <paramref name="source"/> and checks every rule of MR-2:
    /// type, length, region, element sizes and alignment, the elements inside a region of
    /// <paramref name="regionBytes"/>, packing, the byte total and the LBA escape, and the zero
    /// fields (26-31, 40-511, unused elements).
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<byte> source, long regionBytes, out MetadataMirrorMessage? value, out WireError error)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(regionBytes);
        value = null;
        if (source.Length < Size) { error = WireError.TooShort; return false; }
        var s = source[..Size];
        if (BinaryPrimitives.ReadUInt16BigEndian(s[MirrorWire.MetadataTypeOffset..]) != MirrorWire.MetadataType) { error = WireError.BadType; return false; }
        if (BinaryPrimitives.ReadUInt16BigEndian(s[MirrorWire.MetadataLengthOffset..]) != Size) { error = WireError.BadLength; return false; }
        uint sequence = BinaryPrimitives.ReadUInt32BigEndian(s[MirrorWire.MetadataSequenceOffset..]);
        uint lba32 = BinaryPrimitives.ReadUInt32BigEndian(s[MirrorWire.MetadataLba32Offset..]);
        uint blocks = BinaryPrimitives.ReadUInt32BigEndian(s[MirrorWire.MetadataBlockCountOffset..]);
        ulong serial = BinaryPrimitives.ReadUInt64BigEndian(s[MirrorWire.MetadataArraySerialOffset..]);
        byte region = s[MirrorWire.MetadataRegionOffset];
        byte arrayNumber = s[MirrorWire.MetadataArrayNumberOffset];
        ulong lba64 = BinaryPrimitives.ReadUInt64BigEndian(s[MirrorWire.MetadataLba64Offset..]);

        if (region is not (MirrorWire.RegionFirst or MirrorWire.RegionSecond)) { error = WireError.BadRegion; return false; }
        if (s.Slice(MirrorWire.MetadataZero1Offset, MirrorWire.MetadataZero1Bytes).ContainsAnyExcept((byte)0) ||
            s.Slice(MirrorWire.MetadataZero2Offset, MirrorWire.MetadataZero2Bytes).ContainsAnyExcept((byte)0))
        { error = WireError.NonZeroReserved; return false; }

        ulong lba;
        if (lba32 == MirrorWire.Lba32Escape)
        {
            // The escape is only for LBAs that do not fit: 0xFFFFFFFF itself is escaped too.
            if (lba64 < MirrorWire.Lba32Escape) { error = WireError.BadLbaEscape; return false; }
            lba = lba64;
        }
        else
        {
            if (lba64 != 0) { error = WireError.BadLbaEscape; return false; }
            lba = lba32;
        }
        if (blocks == 0) { error = WireError.BadBlockCount; return false; }
        if (lba > ulong.MaxValue - blocks) { error = WireError.BadLbaEscape; return false; }

        var elements = new List<SgElement>(4);
        bool seenUnused = false;
        long total = 0;
        for (int i = 0; i < MirrorWire.MetadataSgElementsMax; i++)
        {
            var e = s.Slice(MirrorWire.MetadataSgListOffset + i * MirrorWire.MetadataSgElementBytes, MirrorWire.MetadataSgElementBytes);
            uint offset = BinaryPrimitives.ReadUInt32BigEndian(e);
            uint count = BinaryPrimitives.ReadUInt32BigEndian(e[4..]);
            if (count == 0)
            {
                if (offset != 0) { error = WireError.NonZeroReserved; return false; }
                seenUnused = true;
                continue;
            }
            if (seenUnused) { error = WireError.ElementsNotPacked; return false; }
            if (count > MirrorWire.ElementBytesMax || count % MirrorWire.SectorBytes != 0) { error = WireError.BadByteCount; return false; }
            if (offset % MirrorWire.SectorBytes != 0) { error = WireError.BadOffset; return false; }
            if ((long)offset + count > regionBytes) { error = WireError.OutsideRegion; return false; }
            elements.Add(new SgElement(offset, count));
            total += count;
        }
        if (elements.Count == 0) { error = WireError.ElementsNotPacked; return false; }
        if (total != (long)blocks * MirrorWire.SectorBytes) { error = WireError.TotalMismatch; return false; }

        value = new MetadataMirrorMessage
        {
            Sequence = sequence, Lba = lba, BlockCount = blocks, ArraySerial = serial,
            Region = region, ArrayNumber = arrayNumber, Elements = elements,
        };
        error = WireError.None;
        return true;
    }

    /// <summary>Writes exactly 1024 bytes. The message must be valid (asserted, not checked).</summary>
    public int Encode(Span<byte> destination)
    {
        Invariant.Assert(Region is MirrorWire.RegionFirst or MirrorWire.RegionSecond);
        Invariant.Assert(Elements.Count is > 0 and <= MirrorWire.MetadataSgElementsMax);
        Invariant.Assert(BlockCount > 0);
        var d = destination[..Size];
        d.Clear();
        BinaryPrimitives.WriteUInt16BigEndian(d[MirrorWire.MetadataTypeOffset..], MirrorWire.MetadataType);
        BinaryPrimitives.WriteUInt16BigEndian(d[MirrorWire.MetadataLengthOffset..], Size);
        BinaryPrimitives.WriteUInt32BigEndian(d[MirrorWire.MetadataSequenceOffset..], Sequence);
        if (Lba < MirrorWire.Lba32Escape)
        {
            BinaryPrimitives.WriteUInt32BigEndian(d[MirrorWire.MetadataLba32Offset..], (uint)Lba);
        }
        else
        {
            BinaryPrimitives.WriteUInt32BigEndian(d[MirrorWire.MetadataLba32Offset..], MirrorWire.Lba32Escape);
            BinaryPrimitives.WriteUInt64BigEndian(d[MirrorWire.MetadataLba64Offset..], Lba);
        }
        BinaryPrimitives.WriteUInt32BigEndian(d[MirrorWire.MetadataBlockCountOffset..], BlockCount);
        BinaryPrimitives.WriteUInt64BigEndian(d[MirrorWire.MetadataArraySerialOffset..], ArraySerial);
        d[MirrorWire.MetadataRegionOffset] = Region;
        d[MirrorWire.MetadataArrayNumberOffset] = ArrayNumber;
        long total = 0;
        for (int i = 0; i < Elements.Count; i++)
        {
            var element = Elements[i];
            Invariant.Assert(element.ByteCount is > 0 and <= MirrorWire.ElementBytesMax);
            Invariant.Assert(element.ByteCount % MirrorWire.SectorBytes == 0);
            Invariant.Assert(element.NvramOffset % MirrorWire.SectorBytes == 0);
            var e = d.Slice(MirrorWire.MetadataSgListOffset + i * MirrorWire.MetadataSgElementBytes, MirrorWire.MetadataSgElementBytes);
            BinaryPrimitives.WriteUInt32BigEndian(e, element.NvramOffset);
            BinaryPrimitives.WriteUInt32BigEndian(e[4..], element.ByteCount);
            total += element.ByteCount;
        }
        Invariant.Assert(total == DataBytes);
        return Size;
    }

    /// <summary>
    /// Splits one write into as many metadata messages as it needs. The write of
    /// <paramref name="blockCount"/> sectors at <paramref name="lba"/> is cut from its start
    /// into 16 KiB pieces (the last may be shorter); <paramref name="pieceOffsets"/>[i] is the
    /// NVRAM offset within the region where piece i goes. Each message takes up to 64 pieces
    /// (1 MiB) and the next sequence number, starting at <paramref name="firstSequence"/>.
    /// </summary>
    public static IReadOnlyList<MetadataMirrorMessage> Split(
        uint firstSequence, ulong arraySerial, byte arrayNumber, byte region,
        ulong lba, long blockCount, IReadOnlyList<uint> pieceOffsets)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        if (region is not (MirrorWire.RegionFirst or MirrorWire.RegionSecond))
            throw new ArgumentOutOfRangeException(nameof(region), region, "region must be 1 or 2");
        long pieces = (blockCount + MirrorWire.ElementSectors - 1) / MirrorWire.ElementSectors;
        if (pieceOffsets.Count != pieces)
            throw new ArgumentException($"a write of {blockCount} blocks has {pieces} pieces of 16 KiB, not {pieceOffsets.Count}", nameof(pieceOffsets));
        if (lba > ulong.MaxValue - (ulong)blockCount)
            throw new ArgumentOutOfRangeException(nameof(lba), "the write runs past the last LBA");

        var messages = new List<MetadataMirrorMessage>((int)((pieces + MirrorWire.MetadataSgElementsMax - 1) / MirrorWire.MetadataSgElementsMax));
        long blocksLeft = blockCount;
        int piece = 0;
        uint sequence = firstSequence;
        ulong messageLba = lba;
        while (blocksLeft > 0)
        {
            var elements = new List<SgElement>(MirrorWire.MetadataSgElementsMax);
            uint messageBlocks = 0;
            while (blocksLeft > 0 && elements.Count < MirrorWire.MetadataSgElementsMax)
            {
                int blocks = (int)Math.Min(blocksLeft, MirrorWire.ElementSectors);
                uint offset = pieceOffsets[piece++];
                if (offset % MirrorWire.SectorBytes != 0)
                    throw new ArgumentException($"piece offset {offset} is not a multiple of 512", nameof(pieceOffsets));
                elements.Add(new SgElement(offset, (uint)(blocks * MirrorWire.SectorBytes)));
                messageBlocks += (uint)blocks;
                blocksLeft -= blocks;
            }
            messages.Add(new MetadataMirrorMessage
            {
                Sequence = sequence++, Lba = messageLba, BlockCount = messageBlocks, ArraySerial = arraySerial,
                Region = region, ArrayNumber = arrayNumber, Elements = elements,
            });
            messageLba += messageBlocks;
        }
        Invariant.Assert(piece == pieces);
        Invariant.Assert(messageLba == lba + (ulong)blockCount);
        return messages;
    }

    // Records compare lists by reference; compare the elements instead.
    public bool Equals(MetadataMirrorMessage? other) =>
        other is not null && Sequence == other.Sequence && Lba == other.Lba && BlockCount == other.BlockCount &&
        ArraySerial == other.ArraySerial && Region == other.Region && ArrayNumber == other.ArrayNumber &&
        Elements.SequenceEqual(other.Elements);

    public override int GetHashCode() => HashCode.Combine(Sequence, Lba, BlockCount, ArraySerial, Region, ArrayNumber, Elements.Count);
}

/// <summary>
/// MR-2c: the data mirror message has no header of its own. It is exactly the user data of
/// the metadata message before it (BlockCount x 512 bytes), laid out in S/G element order;
/// the receiver copies element i's ByteCount bytes to element i's NvramOffset.
/// </summary>
public readonly record struct DataMirrorMessage(ReadOnlyMemory<byte> Data)
{
    public static bool TryDecode(ReadOnlyMemory<byte> source, MetadataMirrorMessage metadata, out DataMirrorMessage value, out WireError error)
    {
        value = default;
        if (source.Length != metadata.DataBytes) { error = WireError.BadLength; return false; }
        value = new DataMirrorMessage(source);
        error = WireError.None;
        return true;
    }

    /// <summary>The slice of the data that belongs to S/G element <paramref name="index"/>.</summary>
    public ReadOnlyMemory<byte> ElementData(MetadataMirrorMessage metadata, int index)
    {
        int start = 0;
        for (int i = 0; i < index; i++) start += (int)metadata.Elements[i].ByteCount;
        return Data.Slice(start, (int)metadata.Elements[index].ByteCount);
    }

    public int Encode(Span<byte> destination)
    {
        Data.Span.CopyTo(destination);
        return Data.Length;
    }
}

/// <summary>Status codes of <see cref="StatusMessage"/>.</summary>
public enum MirrorStatusCode : ushort
{
    /// <summary>The data is stored in NVRAM and marked valid.</summary>
    Ok = 0,
    /// <summary>The command or metadata was malformed; nothing was stored.</summary>
    Malformed = 1,
    /// <summary>The data transfer did not match the metadata (length); nothing was stored.</summary>
    DataMismatch = 2,
    /// <summary>A small write named a volume number the receiver's array table does not hold.</summary>
    UnknownVolume = 3,
    /// <summary>The receiver's NVRAM could not store the data (e.g. NVRAM fault).</summary>
    NvramError = 4,
    /// <summary>The receiver is not in a state to accept mirrors (not paired, fenced, stale epoch).</summary>
    NotReady = 5,
}

/// <summary>
/// MR-2d / MR-3 / CC-3: the receiver's answer, 16 bytes, big-endian:
/// 0-1 type 0x0002, 2-3 length 16, 4-7 sequence of the message answered (metadata sequence;
/// 0 for a small write; batch number low 24 bits for a coherency batch), 8-9 status code,
/// 10-11 zero, 12-15 number of S/G elements (or header blocks) stored.
/// </summary>
public readonly record struct StatusMessage(uint Sequence, MirrorStatusCode Code, uint ElementsStored)
{
    public const int Size = MirrorWire.StatusBytes;

    public static bool TryDecode(ReadOnlySpan<byte> source, out StatusMessage value, out WireError error)
    {
        value = default;
        if (source.Length < Size) { error = WireError.TooShort; return false; }
        if (BinaryPrimitives.ReadUInt16BigEndian(source) != MirrorWire.StatusType) { error = WireError.BadType; return false; }
        if (BinaryPrimitives.ReadUInt16BigEndian(source[2..]) != Size) { error = WireError.BadLength; return false; }
        var code = (MirrorStatusCode)BinaryPrimitives.ReadUInt16BigEndian(source[8..]);
        if (!Enum.IsDefined(code)) { error = WireError.BadEnum; return false; }
        if (BinaryPrimitives.ReadUInt16BigEndian(source[10..]) != 0) { error = WireError.NonZeroReserved; return false; }
        value = new StatusMessage(BinaryPrimitives.ReadUInt32BigEndian(source[4..]), code, BinaryPrimitives.ReadUInt32BigEndian(source[12..]));
        error = WireError.None;
        return true;
    }

    public int Encode(Span<byte> destination)
    {
        var d = destination[..Size];
        BinaryPrimitives.WriteUInt16BigEndian(d, MirrorWire.StatusType);
        BinaryPrimitives.WriteUInt16BigEndian(d[2..], Size);
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], Sequence);
        BinaryPrimitives.WriteUInt16BigEndian(d[8..], (ushort)Code);
        BinaryPrimitives.WriteUInt16BigEndian(d[10..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(d[12..], ElementsStored);
        return Size;
    }
}
