using Duet.Drives;

namespace Duet.Shelf;

// The shelf wire: what `duet shelf` and its clients (RemoteShelfPort, ShelfAdminClient) say to
// each other over a Unix socket or TCP. Every integer is big-endian. Byte-by-byte description,
// with examples: docs/internals/shelf-protocol.md. Shared by the server, the clients and the
// tests, so nothing here knows about sockets.
//
// Session shape (no handshake is required; the socket decides the port):
//
//   client                                                   server
//   request header (20) [body]  -->                                   (pipelined, any number)
//                               <--  response header (20) [body]      (in completion order,
//                                                                      matched by the tag)
//
//   request header:  magic "DSRQ" u32 | opcode u16 | flags u16 | tag u64 | body length u32
//   response header: magic "DSRS" u32 | opcode u16 | status u8 | 0 u8 | tag u64 | body length u32
//
// Which controller port a connection acts for is decided by the socket it came in on
// (DATA/shelf-A.sock, DATA/shelf-B.sock, or a TCP listener the administrator bound to a port):
// nothing a client sends can make a connection on A's socket act as B. A client may send Hello
// naming the port it means to be; the shelf answers Invalid if the socket serves another port.

/// <summary>Magic numbers, fixed sizes and limits of the shelf protocol.</summary>
public static class ShelfWire
{
    /// <summary>"DSRQ" in ASCII: opens every request.</summary>
    public const uint RequestMagic = 0x44535251;

    /// <summary>"DSRS" in ASCII: opens every response.</summary>
    public const uint ResponseMagic = 0x44535253;

    /// <summary>Request header: magic (4) + opcode (2) + flags (2) + tag (8) + body length (4).</summary>
    public const int RequestHeaderBytes = 20;

    /// <summary>Response header: magic (4) + opcode (2) + status (1) + reserved zero (1) + tag (8) + body length (4).</summary>
    public const int ResponseHeaderBytes = 20;

    /// <summary>The protocol version Hello reports: 2 since WriteGather, 3 since SetLogStale. A client sends
    /// WriteGather only to a shelf that reported 2 or more (to an older one, the extents go as separate writes); an
    /// older shelf answers SetLogStale as an unknown opcode, which the controller takes as the shelf unreachable.</summary>
    public const ushort Version = 3;

    /// <summary>The most extents in one WriteGather.</summary>
    public const int MaxGatherExtents = 8;

    /// <summary>The largest read or write (bytes).</summary>
    public const int MaxTransferBytes = 8 << 20;

    /// <summary>The largest body of a request or a response. Beyond it the framing is not trusted: the connection closes.</summary>
    public const int MaxBodyBytes = MaxTransferBytes + (64 << 10);

    /// <summary>The longest string (UTF-8 bytes): names, messages.</summary>
    public const int MaxStringBytes = 4096;

    /// <summary>The most serials in one Claim or Release.</summary>
    public const int MaxSerials = 65536;

    /// <summary>The LBA field of an error response when the error has no LBA.</summary>
    public const ulong NoLba = ulong.MaxValue;

    /// <summary>What a Hello from the admin socket's client names instead of a port.</summary>
    public const string AdminRole = "admin";

    static ShelfWire()
    {
        Duet.Core.Invariant.Assert(MaxTransferBytes % Duet.Core.Units.BlockBytes == 0);
        Duet.Core.Invariant.Assert(MaxBodyBytes > MaxTransferBytes + 2 + MaxStringBytes + 8 + 4);
    }
}

/// <summary>Request opcodes. 1..31 are a controller port's; 32.. are the admin socket's.</summary>
public enum ShelfOp : ushort
{
    /// <summary>Body: string role ("A", "B" or "admin"). Result: string role served, u16 version.</summary>
    Hello = 1,
    /// <summary>Body: none. Result: u32 count, count strings (drive names, ordinal order).</summary>
    List = 2,
    /// <summary>Body: string drive. Result: u8 0/1.</summary>
    Contains = 3,
    /// <summary>Identify a drive. Body: string drive. Result: u64 block count, string serial.</summary>
    Open = 4,
    /// <summary>Body: string drive, u64 size in bytes. Result: as Open.</summary>
    Create = 5,
    /// <summary>Body: string drive, u64 LBA, u32 length in bytes. Result: the data (length bytes).</summary>
    Read = 6,
    /// <summary>Body: string drive, u64 LBA, u32 length, the data. Flag FUA. Result: none.</summary>
    Write = 7,
    /// <summary>Body: string drive. Result: none.</summary>
    Flush = 8,
    /// <summary>Body: u64 key. Result: none.</summary>
    Register = 9,
    /// <summary>Body: none. Result: none.</summary>
    Reserve = 10,
    /// <summary>Body: u64 victim key. Result: none.</summary>
    Preempt = 11,
    /// <summary>Body: u8 0 (disable) or 1 (enable). Result: none.</summary>
    SetEnabled = 12,
    /// <summary>Body: string victim port. Result: none, once the victim's accepted writes have finished.</summary>
    Fence = 13,
    /// <summary>Body: string victim port. Result: none.</summary>
    Unfence = 14,
    /// <summary>Body: u32 count, count u64 serials. Result: u32 count, count claims.</summary>
    Claim = 15,
    /// <summary>Body: u32 count, count u64 serials. Result: none.</summary>
    Release = 16,
    /// <summary>Body: u64 beat. Result: the shelf status.</summary>
    Heartbeat = 17,
    /// <summary>Body: none. Result: the shelf status. Allowed on every socket.</summary>
    Status = 18,
    /// <summary>Body: u8 0 or 1: whether the peer's copy of this port's cache (its NVRAM region 2) is stale. Result: none.</summary>
    SetMirrorStale = 19,
    /// <summary>Body: string owner port, u32 count, count u64 serials: names that port owner (an array handed over). Result: as Claim.</summary>
    ClaimFor = 20,
    /// <summary>Body: string drive, u8 count (1..<see cref="ShelfWire.MaxGatherExtents"/>), count × (u64 LBA, u32 length),
    /// then the extents' data one after another (at most <see cref="ShelfWire.MaxTransferBytes"/> in all). Each extent is
    /// written as a Write would be (no FUA); all are attempted, the first failure answers. Result: none.</summary>
    WriteGather = 21,
    /// <summary>Body: u8 0 or 1: whether the peer's copy of this port's write log (its NVRAM log 2) may lack a record
    /// of a write this port made to the drives. Result: none.</summary>
    SetLogStale = 22,

    /// <summary>Admin: `duet shelf pull`. Body: string slot. Result: none.</summary>
    Pull = 32,
    /// <summary>Admin: `duet shelf insert`. Body: string slot. Result: none.</summary>
    Insert = 33,
    /// <summary>Admin: `duet shelf fence`. Body: string port. Result: none, once its accepted writes have finished.</summary>
    AdminFence = 34,
    /// <summary>Admin: `duet shelf unfence`. Body: string port. Result: none.</summary>
    AdminUnfence = 35,
}

[Flags]
public enum ShelfRequestFlags : ushort
{
    None = 0,
    /// <summary>Write only: durable before the response (fdatasync underneath).</summary>
    Fua = 1,
}

/// <summary>One request. Which fields an opcode carries is listed on <see cref="ShelfOp"/>; the others are ignored by the encoder
/// and left at their defaults by the decoder.</summary>
public sealed record ShelfRequest(ShelfOp Op, ulong Tag)
{
    public ShelfRequestFlags Flags { get; init; }
    /// <summary>Drive, slot or port name; the role of a Hello.</summary>
    public string Name { get; init; } = "";
    public long Lba { get; init; }
    /// <summary>Read: the bytes to read (a write's length is its payload's).</summary>
    public int Length { get; init; }
    /// <summary>Create: the new drive's size in bytes.</summary>
    public long SizeBytes { get; init; }
    /// <summary>Register: the key; Preempt: the victim's key; Heartbeat: the beat; SetEnabled: 0 or 1.</summary>
    public ulong Value { get; init; }
    /// <summary>Claim and Release.</summary>
    public IReadOnlyList<ulong> Serials { get; init; } = [];
    /// <summary>Write: the data.</summary>
    public ReadOnlyMemory<byte> Payload { get; init; }
    /// <summary>WriteGather: the extents (each one's data decoded as a slice of the request's body).</summary>
    public IReadOnlyList<WriteExtent> Extents { get; init; } = [];
}

/// <summary>One response: <see cref="Status"/> None with the opcode's result, or an error with its message (and LBA, or -1).</summary>
public sealed record ShelfResponse(ShelfOp Op, ulong Tag, ShelfError Status)
{
    public string Message { get; init; } = "";
    public long Lba { get; init; } = -1;
    /// <summary>Hello: the role served. Open/Create: the serial.</summary>
    public string Name { get; init; } = "";
    /// <summary>Hello: the version. Open/Create: the block count. Contains: 0 or 1.</summary>
    public long Value { get; init; }
    /// <summary>List.</summary>
    public IReadOnlyList<string> Names { get; init; } = [];
    /// <summary>Claim.</summary>
    public IReadOnlyList<ArrayClaim> Claims { get; init; } = [];
    /// <summary>Heartbeat and Status.</summary>
    public ShelfStatus? ShelfStatus { get; init; }
    /// <summary>Read: the data.</summary>
    public ReadOnlyMemory<byte> Payload { get; init; }
}

public readonly record struct ShelfRequestHeader(ShelfOp Op, ShelfRequestFlags Flags, ulong Tag, int BodyBytes);

public readonly record struct ShelfResponseHeader(ShelfOp Op, ShelfError Status, ulong Tag, int BodyBytes);

/// <summary>Bytes that are not the shelf protocol. <see cref="FramingLost"/>: the stream cannot be resynchronised
/// (bad magic, impossible length), so the connection closes after answering.</summary>
public sealed class ShelfProtocolException(string message, bool framingLost = false) : Exception(message)
{
    public bool FramingLost { get; } = framingLost;
}
