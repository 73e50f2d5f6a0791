namespace Duet.Interconnect.Wire;

// Every number that crosses the inter-controller link (ICL), in one place.
//
// Each ICL transfer carries exactly one message. The receiver tells which message it holds
// from its first bytes (MessageClassifier), so the first bytes of every family are disjoint:
//
//   first byte 0x3C            notification mirror message (seed 004, MR-2a), 10 bytes
//   first byte 0xA0 / 0xB0     small write mirror message (seed 004, MR-3), 12 bytes
//   first byte 0x3B            coherency-log batch, SCSI WRITE BUFFER(10) style (seed 003)
//   first bytes 0x00 0x01      metadata mirror message (MR-2b), 1024 bytes
//   first bytes 0x00 0x02      status message (MR-2d; layout defined by Duet)
//   first bytes 0x01 0x01..    Duet's own messages (type >= 0x0100), common 8-byte header
//
// A data mirror message (MR-2c) has no header: it is the raw user data of the preceding
// metadata mirror message, and only the link's signal identifier says "data follows".
// The sender's ownership epoch is not in any of these bytes: the link stamps it on every
// transfer, so the seed layouts stay byte-exact.
//
// All multi-byte integers are big-endian (network order), as the seed layouts are.

public static class MirrorWire
{
    // ---- sizes shared by every layout -------------------------------------------------

    /// <summary>The unit of LBAs, block counts and NVRAM descriptors: one 512-byte sector.</summary>
    public const int SectorBytes = 512;

    /// <summary>log2(SectorBytes): a descriptor is an NVRAM offset shifted right by this.</summary>
    public const int SectorShift = 9;

    /// <summary>An S/G element (and a cache element) covers at most 16 KiB.</summary>
    public const int ElementBytesMax = 16 * 1024;

    /// <summary>32 sectors per 16 KiB element; also the largest small-write block count.</summary>
    public const int ElementSectors = ElementBytesMax / SectorBytes;

    // ---- MR-2a notification mirror message --------------------------------------------

    /// <summary>Notification mirror message: a 10-byte SCSI-style command.</summary>
    public const int NotificationBytes = 10;

    /// <summary>Byte 0 of a notification; the seed's "3C". Bytes 1-9 are ignored on receipt.</summary>
    public const byte NotificationOpcode = 0x3C;

    // ---- MR-2b metadata mirror message (big-endian byte offsets) ----------------------

    /// <summary>The metadata mirror message is always 1024 bytes.</summary>
    public const int MetadataBytes = 1024;

    /// <summary>Bytes 0-1 message type: metadata.</summary>
    public const ushort MetadataType = 0x0001;

    public const int MetadataTypeOffset = 0;          // u16 message type
    public const int MetadataLengthOffset = 2;        // u16 message length (1024)
    public const int MetadataSequenceOffset = 4;      // u32 sequence, +1 per mirror message
    public const int MetadataLba32Offset = 8;         // u32 starting LBA, or 0xFFFFFFFF escape
    public const int MetadataBlockCountOffset = 12;   // u32 number of 512-byte blocks
    public const int MetadataArraySerialOffset = 16;  // u64 array serial number
    public const int MetadataRegionOffset = 24;       // u8 NVRAM region at the receiver: 1 or 2
    public const int MetadataArrayNumberOffset = 25;  // u8 array number
    public const int MetadataZero1Offset = 26;        // 26-31 zero
    public const int MetadataZero1Bytes = 6;
    public const int MetadataLba64Offset = 32;        // u64 starting LBA when it does not fit 32 bits
    public const int MetadataZero2Offset = 40;        // 40-511 zero
    public const int MetadataZero2Bytes = 512 - 40;
    public const int MetadataSgListOffset = 512;      // 512-1023 scatter/gather list
    public const int MetadataSgElementBytes = 8;      // u32 NVRAM offset within region, u32 byte count

    /// <summary>64 S/G elements of 8 bytes fill bytes 512-1023.</summary>
    public const int MetadataSgElementsMax = 64;

    /// <summary>One metadata message describes at most 64 x 16 KiB = 1 MiB of user data.</summary>
    public const int MetadataBytesCoveredMax = MetadataSgElementsMax * ElementBytesMax;

    /// <summary>Bytes 8-11 hold this when the real LBA is at bytes 32-39.</summary>
    public const uint Lba32Escape = 0xFFFF_FFFF;

    /// <summary>The two NVRAM regions of a controller (seed 004 "first region", "second region").</summary>
    public const byte RegionFirst = 1;
    public const byte RegionSecond = 2;

    // ---- MR-2d status message (Duet-defined; the seed leaves its layout open) ---------

    /// <summary>Bytes 0-1 message type: status.</summary>
    public const ushort StatusType = 0x0002;

    /// <summary>Status message: type u16, length u16, sequence u32, code u16, zero u16, stored u32.</summary>
    public const int StatusBytes = 16;

    // ---- MR-3 small write mirror message ----------------------------------------------

    /// <summary>The small write mirror message is a 12-byte CDB.</summary>
    public const int SmallWriteBytes = 12;

    /// <summary>Opcode when controller A mirrors to B; the data goes to region 1 of B's NVRAM.</summary>
    public const byte SmallWriteOpcodeAToB = 0xA0;

    /// <summary>Opcode when controller B mirrors to A; the data goes to region 2 of A's NVRAM.</summary>
    public const byte SmallWriteOpcodeBToA = 0xB0;

    /// <summary>Descriptors are 20 bits: 4 shared high bits + 16 low bits per element.</summary>
    public const int DescriptorBits = 20;
    public const int DescriptorLowBits = 16;
    public const uint DescriptorMax = (1u << DescriptorBits) - 1;

    /// <summary>20-bit descriptors of 512 bytes address at most 512 MiB per region.</summary>
    public const long SmallWriteRegionBytesMax = (1L << DescriptorBits) * SectorBytes;

    /// <summary>6-bit block count fields; values 33-63 are rejected, 0 means "no second element".</summary>
    public const int SmallWriteBlockCountMax = ElementSectors;

    // ---- seed 003 coherency-log batch (SCSI WRITE BUFFER(10) style) --------------------

    /// <summary>SCSI WRITE BUFFER operation code (SPC): byte 0 of the 10-byte command.</summary>
    public const byte WriteBufferOpcode = 0x3B;

    /// <summary>WRITE BUFFER is a 10-byte CDB.</summary>
    public const int WriteBufferCdbBytes = 10;

    /// <summary>Byte 1 (low 5 bits) mode: 0x02 "data" - write into the buffer named by byte 2.</summary>
    public const byte WriteBufferModeData = 0x02;

    /// <summary>Byte 2 buffer id: Duet's coherency log (buffer ids are vendor-defined).</summary>
    public const byte WriteBufferIdCoherencyLog = 0xD0;

    /// <summary>Bytes 6-8: 24-bit parameter list length, so one batch is below 16 MiB.</summary>
    public const int WriteBufferParameterListBytesMax = 0xFF_FFFF;

    /// <summary>Parameter list begins with: u32 header count, u32 data bytes.</summary>
    public const int BatchListHeaderBytes = 8;

    /// <summary>Each header block is 32 bytes (see CoherencyHeader).</summary>
    public const int CoherencyHeaderBytes = 32;

    /// <summary>Header block kind: the header's data follows and must be stored and marked valid.</summary>
    public const byte HeaderKindMirror = 1;

    /// <summary>Header block kind: drop the mirror of this element (CC-4); carries no data.</summary>
    public const byte HeaderKindInvalidate = 2;

    /// <summary>Header block kind: as <see cref="HeaderKindMirror"/>, but the data is a host command
    /// the receiver holds itself (multicast, FO-3); a 32-byte reference block names it instead.</summary>
    public const byte HeaderKindMirrorByReference = 3;

    /// <summary>A reference block: u8 unit, 3 zero bytes, u32 payload offset, u64 host id, u64 host tag, 8 zero bytes.</summary>
    public const int HostReferenceBytes = 32;

    /// <summary>Header block kind: a new element image built from the receiver's mirror of the element it
    /// replaces (the base) and the sectors the header carries; an 8-byte base block precedes the data.</summary>
    public const byte HeaderKindMirrorWithBase = 4;

    /// <summary>A base block: u32 base element + 1, u8 flags (bit 0: retires the base), 3 zero bytes.</summary>
    public const int BaseBlockBytes = 8;

    // ---- Duet's own messages ----------------------------------------------------------

    /// <summary>Duet message types start here, so byte 0 is 0x01 and never collides with the above.</summary>
    public const ushort DuetTypeFirst = 0x0100;

    /// <summary>Common header: u16 type, u16 zero (reserved), u32 whole-message length.</summary>
    public const int DuetHeaderBytes = 8;

    /// <summary>A Duet message is at most 1 MiB, so a corrupt length cannot stall a reader forever.</summary>
    public const int DuetMessageBytesMax = 1 << 20;

    public const ushort TypeHeartbeat = 0x0101;
    public const ushort TypeWriteCheckpoint = 0x0102;
    public const ushort TypeDestagedNotice = 0x0103;
    public const ushort TypeForwardedRequest = 0x0104;
    public const ushort TypeForwardedResponse = 0x0105;
    public const ushort TypeArrayTableUpdate = 0x0106;
    public const ushort TypeScsiStateUpdate = 0x0107;
    /// <summary>Pairing: a controller announces itself and its NVRAM layout when the link comes up.</summary>
    public const ushort TypePairHello = 0x0108;
    /// <summary>FO-3..FO-6: the command handshake for a host command, and forwarded host frames.</summary>
    public const ushort TypeHostHandshake = 0x0109;
    /// <summary>A LUN's persistent-reservation state, mirrored so that it survives a failover.</summary>
    public const ushort TypeReservationState = 0x010A;
    /// <summary>AW-6: a controller's power-fail window began or ended (<see cref="PowerFailNotice"/>).</summary>
    public const ushort TypePowerFail = 0x010B;
    /// <summary>Idempotent re-issue: entries of the sender's table of finished host commands (<see cref="HostTagEntries"/>).</summary>
    public const ushort TypeHostTagEntries = 0x010C;
    /// <summary>AW-3: the "done" checkpoints of every record one flush cleared, in one message (<see cref="WriteCheckpointsDone"/>).</summary>
    public const ushort TypeWriteCheckpointsDone = 0x010D;
    /// <summary>FO-4: several handshake steps (ready, ready, ack, completed without data) in one compact message (<see cref="HandshakeBatch"/>).</summary>
    public const ushort TypeHandshakeBatch = 0x010E;
    /// <summary>AW-4 with AW-3: a partial sum of a write to an array with a member missing (<see cref="PartialSumCheckpoint"/>).</summary>
    public const ushort TypePartialSum = 0x010F;
    /// <summary>AW-4 with AW-3: the partial sums a record sent for one stripe may go (<see cref="PartialSumsReleased"/>).</summary>
    public const ushort TypePartialSumsReleased = 0x0110;

    /// <summary>The array table maps to 8-bit volume numbers: at most 256 arrays (MR-5).</summary>
    public const int ArrayTableEntriesMax = 256;

    static MirrorWire()
    {
        Duet.Core.Invariant.Assert(1 << SectorShift == SectorBytes);
        Duet.Core.Invariant.Assert(SectorBytes == Duet.Core.Units.SectorBytes);
        Duet.Core.Invariant.Assert(MetadataSgListOffset + MetadataSgElementsMax * MetadataSgElementBytes == MetadataBytes);
        Duet.Core.Invariant.Assert(MetadataBytesCoveredMax == 1 << 20);
        Duet.Core.Invariant.Assert(SmallWriteRegionBytesMax == 512L << 20);
        Duet.Core.Invariant.Assert(ElementSectors == 32);
        Duet.Core.Invariant.Assert(SmallWriteBlockCountMax < 1 << 6);
        Duet.Core.Invariant.Assert(DuetTypeFirst >> 8 != 0x00);
    }
}

/// <summary>Why a codec refused its input. One value per rule, so tests can name the rule.</summary>
public enum WireError
{
    None = 0,
    /// <summary>A fixed-size message is shorter than its size.</summary>
    TooShort,
    /// <summary>The message type / opcode is not the one this codec reads.</summary>
    BadType,
    /// <summary>The length field disagrees with the layout or the bytes present.</summary>
    BadLength,
    /// <summary>NVRAM region not 1 or 2.</summary>
    BadRegion,
    /// <summary>A block count is zero or above its maximum (small write: 33-63).</summary>
    BadBlockCount,
    /// <summary>An S/G byte count is zero, above 16 KiB or not a multiple of 512.</summary>
    BadByteCount,
    /// <summary>An NVRAM offset is not a multiple of 512.</summary>
    BadOffset,
    /// <summary>An NVRAM range (offset or descriptor + length) leaves the region.</summary>
    OutsideRegion,
    /// <summary>A used S/G element follows an unused one, or none is used.</summary>
    ElementsNotPacked,
    /// <summary>The S/G byte counts do not add up to block count x 512.</summary>
    TotalMismatch,
    /// <summary>32-bit LBA escape misused (64-bit field set without the escape, or vice versa).</summary>
    BadLbaEscape,
    /// <summary>A field the layout says is zero is not.</summary>
    NonZeroReserved,
    /// <summary>An enumerated field (kind, op, phase, status code, mode, buffer id) has an unknown value.</summary>
    BadEnum,
    /// <summary>A valid mask disagrees with the header's blocks.</summary>
    BadValidMask,
    /// <summary>An array-table snapshot repeats a volume number or an array.</summary>
    DuplicateEntry,
    /// <summary>A list is longer than its maximum.</summary>
    TooManyEntries,
    /// <summary>A text field is empty or not UTF-8.</summary>
    BadText,
    /// <summary>Coherency header sequence numbers do not strictly increase within a batch.</summary>
    OutOfOrder,
    /// <summary>An LBA field holds a value no volume has (a forwarded answer's error LBA at or above 2^63, not all ones).</summary>
    BadLba,
    /// <summary>A payload fails the CRC32C the message carries for it.</summary>
    BadChecksum,
}
