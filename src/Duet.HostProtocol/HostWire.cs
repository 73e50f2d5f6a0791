using Duet.Core;
using Duet.Interconnect.Wire;

namespace Duet.HostProtocol;

// Every number of Duet's host protocol, in one place (docs/internals/host-protocol.md).
//
// A host talks to one unit over TCP. It opens with a hello naming itself and the volume it
// attaches; the unit answers with the volume's size and its own identity. After that the host
// sends request frames and the unit answers with completion frames, in any order, matched by
// the host's tag. All integers are big-endian. Every frame starts with a 4-byte ASCII magic so
// that a reader that lost the framing notices at once.
//
//   hello        16 + n bytes    "DHHI" version name-length host-id name
//   hello reply  24 bytes        "DHHR" status size controller unit 0 payload-max
//   request      48 (+ length)   "DHRQ" op flags 0 host-id tag timestamp offset length 0
//   completion   24 (+ length)   "DHCP" status tag length 0

public static class HostWire
{
    // ---- hello (host -> unit) -----------------------------------------------------------

    /// <summary>"DHHI": Duet host hello.</summary>
    public const uint HelloMagic = 0x4448_4849;
    public const int HelloFixedBytes = 16;
    public const int HelloMagicOffset = 0;          // u32 "DHHI"
    public const int HelloVersionOffset = 4;        // u16 protocol version (1)
    public const int HelloNameLengthOffset = 6;     // u16 volume name length n (1..255)
    public const int HelloHostIdOffset = 8;         // u64 host id
    public const int HelloNameOffset = 16;          // n bytes volume name, UTF-8
    public const ushort Version = 1;
    public const int VolumeNameBytesMax = 255;

    // ---- hello reply (unit -> host) -----------------------------------------------------

    /// <summary>"DHHR": Duet host hello reply.</summary>
    public const uint HelloReplyMagic = 0x4448_4852;
    public const int HelloReplyBytes = 24;
    public const int HelloReplyMagicOffset = 0;       // u32 "DHHR"
    public const int HelloReplyStatusOffset = 4;      // u32 HostStatus (0 ok: attached)
    public const int HelloReplySizeOffset = 8;        // u64 volume size in bytes (0 unless ok)
    public const int HelloReplyControllerOffset = 16; // u8 controller, ASCII 'A' or 'B'
    public const int HelloReplyUnitOffset = 17;       // u8 unit number = multicast group
    public const int HelloReplyFlagsOffset = 18;      // u8 HostVolumeFlags: primary here, read-only
    public const int HelloReplyZeroOffset = 19;       // u8 zero
    public const int HelloReplyPayloadMaxOffset = 20; // u32 largest read/write length this unit takes

    // ---- volume list (host -> unit, before a hello) ---------------------------------------

    public const uint ListMagic = 0x4448_4C53;
    public const int ListBytes = 8;
    public const int ListMagicOffset = 0;         // u32 "DHLS"
    public const int ListVersionOffset = 4;       // u16 protocol version (1)
    public const int ListZeroOffset = 6;          // u16 zero

    // ---- volume list reply (unit -> host) -----------------------------------------------

    public const uint ListReplyMagic = 0x4448_4C52;
    public const int ListReplyHeaderBytes = 16;
    public const int ListReplyMagicOffset = 0;    // u32 "DHLR"
    public const int ListReplyStatusOffset = 4;   // u32 HostStatus
    public const int ListReplyCountOffset = 8;    // u32 number of entries
    public const int ListReplyBodyOffset = 12;    // u32 bytes of entries that follow
    // Each entry: u64 size in bytes, u8 HostVolumeFlags, u8 name length n (1..255), n bytes of name.
    public const int ListEntryFixedBytes = 10;
    public const int ListEntriesMax = 4096;

    // ---- request (host -> unit) ---------------------------------------------------------

    /// <summary>"DHRQ": Duet host request.</summary>
    public const uint RequestMagic = 0x4448_5251;
    public const int RequestHeaderBytes = 48;
    public const int RequestMagicOffset = 0;      // u32 "DHRQ"
    public const int RequestOpcodeOffset = 4;     // u8 HostOpcode
    public const int RequestFlagsOffset = 5;      // u8 HostRequestFlags
    public const int RequestZero1Offset = 6;      // u16 zero
    public const int RequestHostIdOffset = 8;     // u64 host id (the one of the hello)
    public const int RequestTagOffset = 16;       // u64 host tag, unique per host among its commands
    public const int RequestTimestampOffset = 24; // u64 host timestamp, µs since the Unix epoch
    public const int RequestOffsetOffset = 32;    // u64 byte offset, multiple of 512
    public const int RequestLengthOffset = 40;    // u32 byte length, multiple of 512 (0 for flush)
    public const int RequestZero2Offset = 44;     // u32 zero
    // A write's payload (length bytes) follows the header; reads and flushes have none.

    // ---- completion (unit -> host) ------------------------------------------------------

    /// <summary>"DHCP": Duet host completion.</summary>
    public const uint CompletionMagic = 0x4448_4350;
    public const int CompletionHeaderBytes = 24;
    public const int CompletionMagicOffset = 0;   // u32 "DHCP"
    public const int CompletionStatusOffset = 4;  // u32 HostStatus
    public const int CompletionTagOffset = 8;     // u64 host tag of the request (0 for a frame whose tag was unreadable)
    public const int CompletionLengthOffset = 16; // u32 payload length: a successful read's length, else 0
    public const int CompletionZeroOffset = 20;   // u32 zero
    // A successful read's data (length bytes) follows the header.

    // ---- limits -------------------------------------------------------------------------

    /// <summary>Largest read or write length: a forwarded write frame (48 + 512 KiB) and a
    /// completion carrying read data must fit one ICL handshake message.</summary>
    public const int PayloadBytesMax = 512 * 1024;

    /// <summary>The protocol's units are 512-byte sectors.</summary>
    public const int SectorBytes = Units.SectorBytes;

    /// <summary>The default ports: controller A units 0 and 1, then controller B units 0 and 1.</summary>
    public const int PortA0 = 10811;
    public const int PortA1 = 10812;
    public const int PortB0 = 10813;
    public const int PortB1 = 10814;

    /// <summary>Units per controller: unit N of A and unit N of B form multicast group N.</summary>
    public const int UnitsPerController = 2;

    public static int DefaultPort(char controller, int unit)
    {
        if (controller is not ('A' or 'B')) throw new ArgumentOutOfRangeException(nameof(controller), controller, "must be 'A' or 'B'");
        ArgumentOutOfRangeException.ThrowIfNegative(unit);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(unit, UnitsPerController);
        return PortA0 + (controller == 'A' ? 0 : UnitsPerController) + unit;
    }

    static HostWire()
    {
        Invariant.Assert(RequestZero2Offset + 4 == RequestHeaderBytes);
        Invariant.Assert(CompletionZeroOffset + 4 == CompletionHeaderBytes);
        Invariant.Assert(HelloReplyPayloadMaxOffset + 4 == HelloReplyBytes);
        Invariant.Assert(PayloadBytesMax % SectorBytes == 0);
        Invariant.Assert(RequestHeaderBytes + PayloadBytesMax <= HandshakeMessage.DataBytesMax);
        Invariant.Assert(CompletionHeaderBytes + PayloadBytesMax <= HandshakeMessage.DataBytesMax);
        Invariant.Assert(HostWire.PortB1 == DefaultPort('B', 1));
    }
}

/// <summary>What a unit says about a volume in a hello reply or a list entry.</summary>
[Flags]
public enum HostVolumeFlags : byte
{
    None = 0,
    /// <summary>This unit's controller serves the volume's array now: it is the primary for its commands.</summary>
    Primary = 1,
    ReadOnly = 2,
    Known = Primary | ReadOnly,
}

public enum HostOpcode : byte
{
    Read = 1,
    Write = 2,
    Flush = 3,
}

[Flags]
public enum HostRequestFlags : byte
{
    None = 0,
    /// <summary>Force unit access: the write is durable before it completes.</summary>
    Fua = 1,
    /// <summary>The host sent this same frame to the partner unit of its group too (FO-3).</summary>
    Multicast = 2,
    /// <summary>A unit forwarded this frame to its partner unit (FO-6); set by units, never by hosts.</summary>
    Forwarded = 4,
    Known = Fua | Multicast | Forwarded,
}

/// <summary>The status of a hello reply or a completion. 0 is success.</summary>
public enum HostStatus : uint
{
    Ok = 0,
    /// <summary>The volume failed the request (a drive, the array); the data may be partly written.</summary>
    IoError = 1,
    /// <summary>The request is well framed but not valid: misaligned, zero or too long, reserved bits set.</summary>
    Invalid = 2,
    /// <summary>The byte range leaves the volume.</summary>
    OutOfRange = 3,
    /// <summary>Hello: the unit serves no volume of that name.</summary>
    NoSuchVolume = 4,
    /// <summary>A write to a read-only volume.</summary>
    ReadOnly = 5,
    /// <summary>The volume is not available here now (fenced, failed over, shutting down): retry, on the other unit if need be.</summary>
    Unavailable = 6,
    /// <summary>An unreadable block with no redundancy left.</summary>
    MediumError = 7,
    /// <summary>The bytes are not this protocol (bad magic, unknown opcode, request before hello):
    /// the unit closes the connection after sending this.</summary>
    ProtocolError = 8,
    /// <summary>Hello: unsupported protocol version.</summary>
    BadVersion = 9,
    /// <summary>A request before a successful hello.</summary>
    NotAttached = 10,
}

/// <summary>Why the codec refused its input; one value per rule, so tests can name the rule.</summary>
public enum HostWireError
{
    None = 0,
    /// <summary>The first four bytes are not the magic the reader expects. The framing is lost.</summary>
    BadMagic,
    /// <summary>Unknown opcode: the reader cannot know whether a payload follows. The framing is lost.</summary>
    BadOpcode,
    /// <summary>A write longer than the unit takes: skipping it would mean reading it. The framing is given up.</summary>
    TooLong,
    /// <summary>Unknown flag bits, or the "forwarded" flag from a host.</summary>
    BadFlags,
    /// <summary>A field the layout says is zero is not.</summary>
    NonZeroReserved,
    /// <summary>Offset or length not a multiple of 512, a read or write of length 0, or a flush with a length.</summary>
    BadLength,
    /// <summary>The volume name is empty, too long or not UTF-8.</summary>
    BadText,
    /// <summary>An enumerated field (status, controller) has an unknown value.</summary>
    BadEnum,
}

public static class HostWireErrors
{
    /// <summary>True when the reader can no longer tell where the next frame starts.</summary>
    public static bool LosesFraming(this HostWireError error) => error is HostWireError.BadMagic or HostWireError.BadOpcode or HostWireError.TooLong;
}
