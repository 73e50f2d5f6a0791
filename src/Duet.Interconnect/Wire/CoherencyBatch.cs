using System.Buffers;
using System.Buffers.Binary;

namespace Duet.Interconnect.Wire;

// Seed 003 (CC-2/CC-3/CC-4): one batch of coherency-log header blocks and their dirty data,
// sent as a single command modelled on SCSI WRITE BUFFER(10):
//
//   +----------------------+  10-byte CDB
//   | 0    0x3B WRITE BUFFER
//   | 1    mode (low 5 bits) 0x02 "data"; bits 5-7 zero
//   | 2    buffer id 0xD0 (Duet coherency log)
//   | 3-5  buffer offset: Duet uses it as the 24-bit batch number (echoed by the status)
//   | 6-8  parameter list length: bytes that follow the CDB
//   | 9    control: zero
//   +----------------------+  parameter list
//   | 0-3  header count n
//   | 4-7  data bytes d (sum of the mirror headers' blocks x 512)
//   | 8..  n x 32-byte header blocks, in append order
//   | ..   d bytes of data: each mirror header's data, in header order
//   +----------------------+
//
// Header block (32 bytes, big-endian):
//   0      kind: 1 mirror data, 2 invalidate, 3 mirror by reference, 4 mirror with base
//   1      volume number (MR-5)
//   2-3    zero
//   4-7    cache element index = NVRAM offset within the region / 512 where the data starts
//   8-15   array LBA (512-byte units)
//   16-19  block count (mirror: 1-32; invalidate: 0-32, the range being dropped)
//   20-23  valid mask of the element's new image: bit i = sector i of the 16 KiB element
//   24-31  sequence number (strictly increasing; replay applies in this order)
//
// A header's sectors stay inside one 16 KiB element: (index mod 32) + blocks <= 32.
// A mirror header replaces the element at the peer with a new image (Duet's cache never updates
// an element in place: a rewrite goes to a fresh element): it carries the image from its first to
// its last valid sector, so its mask lies inside the carried range, with the first and the last
// carried sectors valid (sectors between them may be invalid gaps). An invalidate header's mask is zero.
//
// Kind 4, mirror with base: a rewrite of part of a dirty element. The new image is the receiver's
// own mirror of the element it replaces (the base) with the carried sectors written over it: the
// header's range (index, block count) is the sectors carried, every one of them valid, and the
// mask's other sectors are the ones kept from the base, which must hold them (same array, same
// element LBA). The data is an 8-byte base block (u32 base element + 1, never 0; u8 flags, bit 0:
// the base is retired, i.e. invalidated once the image is stored, and the owner sends no
// invalidation header for it; 3 zero bytes), then the carried sectors. A 4 KiB rewrite of a full
// 16 KiB element travels as 4 KiB + 8 bytes instead of 16 KiB.

public enum CoherencyHeaderKind : byte
{
    Mirror = MirrorWire.HeaderKindMirror,
    Invalidate = MirrorWire.HeaderKindInvalidate,
    MirrorByReference = MirrorWire.HeaderKindMirrorByReference,
    MirrorWithBase = MirrorWire.HeaderKindMirrorWithBase,
}

/// <summary>The 8 bytes before a <see cref="CoherencyHeaderKind.MirrorWithBase"/> header's sectors: the element of the
/// receiver's region 2 the image keeps its other sectors from, and whether the image retires it.</summary>
public readonly record struct BaseBlock(int BaseElement, bool RetiresBase)
{
    const byte FlagRetiresBase = 0x01;

    public void Encode(Span<byte> destination)
    {
        Duet.Core.Invariant.Assert(BaseElement >= 0 && BaseElement < int.MaxValue);
        var d = destination[..MirrorWire.BaseBlockBytes];
        BinaryPrimitives.WriteUInt32BigEndian(d, (uint)BaseElement + 1);
        d[4] = RetiresBase ? FlagRetiresBase : (byte)0;
        d[5] = 0; d[6] = 0; d[7] = 0;
    }

    public static bool TryDecode(ReadOnlySpan<byte> source, out BaseBlock value)
    {
        value = default;
        if (source.Length < MirrorWire.BaseBlockBytes || (source[4] & ~FlagRetiresBase) != 0 || source[5] != 0 || source[6] != 0 || source[7] != 0) return false;
        uint element = BinaryPrimitives.ReadUInt32BigEndian(source);
        if (element == 0 || element > int.MaxValue) return false;
        value = new BaseBlock((int)element - 1, (source[4] & FlagRetiresBase) != 0);
        return true;
    }
}

/// <summary>
/// The data of a by-reference mirror header: which host command's payload holds the new bytes, and
/// optionally an element of the receiver's region 2 (the mirror of the element the new image
/// replaces) whose sectors in <see cref="KeepMask"/> the new image keeps, and which the receiver
/// invalidates once the image is stored when <see cref="RetiresBase"/> is set (the owner retired it:
/// the invalidation header that would follow is not sent).
///
/// 32 bytes, big-endian: 0 unit; 1 flags (bit 0: retires the base element; other bits zero); 2-3 zero;
/// 4-7 payload offset; 8-15 host id; 16-23 host tag; 24-27 base element + 1 (0: none); 28-31 keep mask.
/// A base element needs a keep mask or the retire flag; no base, neither.
/// </summary>
public readonly record struct HostReferenceBlock(Duet.Core.HostDataReference Host, int BaseElement = -1, uint KeepMask = 0, bool RetiresBase = false)
{
    const byte FlagRetiresBase = 0x01;

    public void Encode(Span<byte> destination)
    {
        Duet.Core.Invariant.Assert(BaseElement >= 0 ? KeepMask != 0 || RetiresBase : KeepMask == 0 && !RetiresBase);
        var d = destination[..MirrorWire.HostReferenceBytes];
        d.Clear();
        d[0] = Host.Unit;
        d[1] = RetiresBase ? FlagRetiresBase : (byte)0;
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], Host.PayloadOffset);
        BinaryPrimitives.WriteUInt64BigEndian(d[8..], Host.HostId);
        BinaryPrimitives.WriteUInt64BigEndian(d[16..], Host.HostTag);
        BinaryPrimitives.WriteUInt32BigEndian(d[24..], (uint)(BaseElement + 1));
        BinaryPrimitives.WriteUInt32BigEndian(d[28..], KeepMask);
    }

    public static bool TryDecode(ReadOnlySpan<byte> source, out HostReferenceBlock value)
    {
        value = default;
        if (source.Length != MirrorWire.HostReferenceBytes || (source[1] & ~FlagRetiresBase) != 0 || source[2] != 0 || source[3] != 0) return false;
        bool retires = (source[1] & FlagRetiresBase) != 0;
        uint baseElement = BinaryPrimitives.ReadUInt32BigEndian(source[24..]);
        uint keep = BinaryPrimitives.ReadUInt32BigEndian(source[28..]);
        if (baseElement > int.MaxValue) return false;
        if (baseElement == 0 ? keep != 0 || retires : keep == 0 && !retires) return false;
        value = new HostReferenceBlock(new Duet.Core.HostDataReference(source[0], BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[16..]), BinaryPrimitives.ReadUInt32BigEndian(source[4..])), (int)baseElement - 1, keep, retires);
        return true;
    }
}

/// <summary>One coherency-log header block (32 bytes on the wire).</summary>
public readonly record struct CoherencyHeader(
    CoherencyHeaderKind Kind, byte Volume, ulong Lba, uint BlockCount, uint ElementIndex, uint ValidMask, ulong Sequence)
{
    public const int Size = MirrorWire.CoherencyHeaderBytes;

    public long DataBytes => Kind switch
    {
        CoherencyHeaderKind.Mirror => (long)BlockCount * MirrorWire.SectorBytes,
        CoherencyHeaderKind.MirrorByReference => MirrorWire.HostReferenceBytes,
        CoherencyHeaderKind.MirrorWithBase => MirrorWire.BaseBlockBytes + (long)BlockCount * MirrorWire.SectorBytes,
        _ => 0,
    };

    /// <summary>A header that stores an element image (its bytes carried or named).</summary>
    public bool Stores => Kind is CoherencyHeaderKind.Mirror or CoherencyHeaderKind.MirrorByReference or CoherencyHeaderKind.MirrorWithBase;

    /// <summary>A with-base header's sectors kept from the base element: the valid ones it does not carry.</summary>
    public uint KeptMask => Kind == CoherencyHeaderKind.MirrorWithBase ? ValidMask & ~CoveredMask : 0;

    /// <summary>The sectors of the 16 KiB element this header covers, as a mask.</summary>
    public uint CoveredMask => BlockCount == 0 ? 0
        : (uint)((1UL << (int)BlockCount) - 1) << (int)(ElementIndex % MirrorWire.ElementSectors);

    /// <summary>Checks the header rules; <paramref name="regionBytes"/> bounds the element index.</summary>
    public WireError Validate(long regionBytes)
    {
        if (Kind is not (CoherencyHeaderKind.Mirror or CoherencyHeaderKind.Invalidate or CoherencyHeaderKind.MirrorByReference or CoherencyHeaderKind.MirrorWithBase)) return WireError.BadEnum;
        if (BlockCount > MirrorWire.ElementSectors) return WireError.BadBlockCount;
        if (Stores && BlockCount == 0) return WireError.BadBlockCount;
        if (ElementIndex % MirrorWire.ElementSectors + BlockCount > MirrorWire.ElementSectors) return WireError.BadBlockCount;
        if (((long)ElementIndex + Math.Max(BlockCount, 1u)) * MirrorWire.SectorBytes > regionBytes) return WireError.OutsideRegion;
        if (Stores)
        {
            uint covered = CoveredMask;
            int first = (int)(ElementIndex % MirrorWire.ElementSectors);
            int last = first + (int)BlockCount - 1;
            if (Kind == CoherencyHeaderKind.MirrorWithBase)
            {
                // Every carried sector is valid, and some are kept from the base (else it is a plain mirror header).
                if ((covered & ~ValidMask) != 0 || (ValidMask & ~covered) == 0) return WireError.BadValidMask;
                return WireError.None;
            }
            if (ValidMask == 0 || (ValidMask & ~covered) != 0) return WireError.BadValidMask;
            if ((ValidMask & (1u << first)) == 0 || (ValidMask & (1u << last)) == 0) return WireError.BadValidMask;
        }
        if (Kind == CoherencyHeaderKind.Invalidate && ValidMask != 0) return WireError.BadValidMask;
        return WireError.None;
    }

    public static bool TryDecode(ReadOnlySpan<byte> source, long regionBytes, out CoherencyHeader value, out WireError error)
    {
        value = default;
        if (source.Length < Size) { error = WireError.TooShort; return false; }
        if (source[2] != 0 || source[3] != 0) { error = WireError.NonZeroReserved; return false; }
        value = new CoherencyHeader((CoherencyHeaderKind)source[0], source[1],
            BinaryPrimitives.ReadUInt64BigEndian(source[8..]), BinaryPrimitives.ReadUInt32BigEndian(source[16..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[4..]), BinaryPrimitives.ReadUInt32BigEndian(source[20..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[24..]));
        error = value.Validate(regionBytes);
        if (error != WireError.None) { value = default; return false; }
        return true;
    }

    public int Encode(Span<byte> destination)
    {
        var d = destination[..Size];
        d[0] = (byte)Kind;
        d[1] = Volume;
        d[2] = 0; d[3] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], ElementIndex);
        BinaryPrimitives.WriteUInt64BigEndian(d[8..], Lba);
        BinaryPrimitives.WriteUInt32BigEndian(d[16..], BlockCount);
        BinaryPrimitives.WriteUInt32BigEndian(d[20..], ValidMask);
        BinaryPrimitives.WriteUInt64BigEndian(d[24..], Sequence);
        return Size;
    }
}

/// <summary>
/// The decoded batch command. <see cref="Data"/> is a slice of the decoder's input: it is
/// valid only as long as that buffer is, so the receiver copies it into NVRAM before it
/// releases the transfer.
/// </summary>
public sealed record CoherencyBatchCommand(uint BatchNumber, IReadOnlyList<CoherencyHeader> Headers, ReadOnlySequence<byte> Data)
{
    public const int CdbSize = MirrorWire.WriteBufferCdbBytes;

    /// <summary>Batch numbers are the CDB's 24-bit buffer offset, so they wrap at 2^24.</summary>
    public const uint BatchNumberMask = 0xFF_FFFF;

    public static int HeadBytes(int headerCount) => CdbSize + MirrorWire.BatchListHeaderBytes + headerCount * CoherencyHeader.Size;

    /// <summary>Where header <paramref name="index"/>'s data starts within <see cref="Data"/>.</summary>
    public long DataOffsetOf(int index)
    {
        long offset = 0;
        for (int i = 0; i < index; i++) offset += Headers[i].DataBytes;
        return offset;
    }

    public ReadOnlySequence<byte> DataOf(int index) => Data.Slice(DataOffsetOf(index), Headers[index].DataBytes);

    /// <summary>
    /// Writes the CDB, the list header and the header blocks (not the data, which the sender
    /// transmits from where it lies). Returns <see cref="HeadBytes"/>.
    /// </summary>
    public static int EncodeHead(uint batchNumber, IReadOnlyList<CoherencyHeader> headers, Span<byte> destination)
    {
        long dataBytes = 0;
        foreach (var h in headers) dataBytes += h.DataBytes;
        long parameterListBytes = MirrorWire.BatchListHeaderBytes + (long)headers.Count * CoherencyHeader.Size + dataBytes;
        Duet.Core.Invariant.Assert(parameterListBytes <= MirrorWire.WriteBufferParameterListBytesMax);
        Duet.Core.Invariant.Assert(batchNumber <= BatchNumberMask);
        int head = HeadBytes(headers.Count);
        var d = destination[..head];
        d[0] = MirrorWire.WriteBufferOpcode;
        d[1] = MirrorWire.WriteBufferModeData;
        d[2] = MirrorWire.WriteBufferIdCoherencyLog;
        WriteUInt24(d[3..], batchNumber);
        WriteUInt24(d[6..], (uint)parameterListBytes);
        d[9] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(d[CdbSize..], (uint)headers.Count);
        BinaryPrimitives.WriteUInt32BigEndian(d[(CdbSize + 4)..], (uint)dataBytes);
        for (int i = 0; i < headers.Count; i++)
            headers[i].Encode(d[(CdbSize + MirrorWire.BatchListHeaderBytes + i * CoherencyHeader.Size)..]);
        return head;
    }

    /// <summary>
    /// Decodes one batch command. NeedMoreData (reader untouched) until the CDB and the whole
    /// parameter list it announces are present, however they are split across segments;
    /// InvalidData with an error for any broken rule; Done with the reader past the batch.
    /// </summary>
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, long regionBytes,
        out CoherencyBatchCommand? value, out WireError error)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(regionBytes);
        value = null;
        error = WireError.None;
        Span<byte> cdb = stackalloc byte[CdbSize + MirrorWire.BatchListHeaderBytes];
        if (!reader.TryCopyTo(cdb[..CdbSize])) return OperationStatus.NeedMoreData;
        if (cdb[0] != MirrorWire.WriteBufferOpcode) { error = WireError.BadType; return OperationStatus.InvalidData; }
        if (cdb[1] != MirrorWire.WriteBufferModeData || cdb[2] != MirrorWire.WriteBufferIdCoherencyLog) { error = WireError.BadEnum; return OperationStatus.InvalidData; }
        if (cdb[9] != 0) { error = WireError.NonZeroReserved; return OperationStatus.InvalidData; }
        uint batchNumber = ReadUInt24(cdb[3..]);
        uint parameterListBytes = ReadUInt24(cdb[6..]);
        if (parameterListBytes < MirrorWire.BatchListHeaderBytes) { error = WireError.BadLength; return OperationStatus.InvalidData; }
        if (reader.Remaining < CdbSize + parameterListBytes) return OperationStatus.NeedMoreData;

        var rest = reader.UnreadSequence.Slice(CdbSize, parameterListBytes);
        rest.Slice(0, MirrorWire.BatchListHeaderBytes).CopyTo(cdb[CdbSize..]);
        uint count = BinaryPrimitives.ReadUInt32BigEndian(cdb[CdbSize..]);
        uint dataBytes = BinaryPrimitives.ReadUInt32BigEndian(cdb[(CdbSize + 4)..]);
        if ((ulong)MirrorWire.BatchListHeaderBytes + (ulong)count * CoherencyHeader.Size + dataBytes != parameterListBytes)
        { error = WireError.BadLength; return OperationStatus.InvalidData; }

        var headerBytes = rest.Slice(MirrorWire.BatchListHeaderBytes, count * CoherencyHeader.Size);
        ReadOnlySpan<byte> list = headerBytes.IsSingleSegment ? headerBytes.FirstSpan : headerBytes.ToArray();
        var headers = new CoherencyHeader[count];
        long mirrorBytes = 0;
        for (int i = 0; i < headers.Length; i++)
        {
            if (!CoherencyHeader.TryDecode(list[(i * CoherencyHeader.Size)..], regionBytes, out headers[i], out error))
                return OperationStatus.InvalidData;
            if (i > 0 && headers[i].Sequence <= headers[i - 1].Sequence) { error = WireError.OutOfOrder; return OperationStatus.InvalidData; }
            mirrorBytes += headers[i].DataBytes;
        }
        if (mirrorBytes != dataBytes) { error = WireError.TotalMismatch; return OperationStatus.InvalidData; }

        value = new CoherencyBatchCommand(batchNumber, headers, rest.Slice(MirrorWire.BatchListHeaderBytes + headerBytes.Length));
        reader.Advance(CdbSize + parameterListBytes);
        return OperationStatus.Done;
    }

    static void WriteUInt24(Span<byte> d, uint v)
    {
        d[0] = (byte)(v >> 16);
        d[1] = (byte)(v >> 8);
        d[2] = (byte)v;
    }

    static uint ReadUInt24(ReadOnlySpan<byte> s) => (uint)(s[0] << 16 | s[1] << 8 | s[2]);
}

/// <summary>Builds a (possibly multi-segment) <see cref="ReadOnlySequence{T}"/> over a list of buffers, without copying.</summary>
public static class SegmentSequence
{
    public static ReadOnlySequence<byte> Create(IReadOnlyList<ReadOnlyMemory<byte>> segments)
    {
        Segment? first = null, last = null;
        foreach (var memory in segments)
        {
            if (memory.IsEmpty) continue;
            var segment = new Segment(memory, last is null ? 0 : last.RunningIndex + last.Memory.Length);
            if (last is null) first = segment; else last.SetNext(segment);
            last = segment;
        }
        return first is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public void SetNext(Segment next) => Next = next;
    }
}
