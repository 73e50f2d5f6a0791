namespace Duet.Nbd;

// The NBD wire format, as far as Duet speaks it: fixed newstyle handshake, simple and
// structured replies, base:allocation block status. Every integer on the wire is big-endian.
// Shared by the server, the test client and any fuzzer, so nothing here knows about sockets.
//
// Session shape:
//
//   server                                   client
//   NBDMAGIC IHAVEOPT u16 handshake-flags -->
//                                        <-- u32 client-flags
//                                        <-- IHAVEOPT u32 option u32 length [data]   (repeat)
//   ReplyMagic u32 option u32 type u32 len -->                                       (1..n each)
//   ...after NBD_OPT_GO+ACK or NBD_OPT_EXPORT_NAME: transmission phase...
//                                        <-- request (28 bytes) [write payload]      (pipelined)
//   simple reply (16 bytes) [read data]   -->   or, once negotiated,
//   structured chunk (20 bytes) [payload] -->   one or more per request, last has DONE.

/// <summary>Magic numbers and fixed sizes of the NBD protocol.</summary>
public static class NbdWire
{
    /// <summary>"NBDMAGIC" in ASCII: first 8 bytes the server sends.</summary>
    public const ulong InitMagic = 0x4e42444d41474943;

    /// <summary>"IHAVEOPT" in ASCII: follows InitMagic in the greeting (newstyle) and opens every client option.</summary>
    public const ulong OptionMagic = 0x49484156454f5054;

    /// <summary>Opens every server reply to a fixed-newstyle option.</summary>
    public const ulong OptionReplyMagic = 0x0003e889045565a9;

    /// <summary>Opens every transmission request (NBD_REQUEST_MAGIC).</summary>
    public const uint RequestMagic = 0x25609513;

    /// <summary>Opens a simple reply (NBD_SIMPLE_REPLY_MAGIC).</summary>
    public const uint SimpleReplyMagic = 0x67446698;

    /// <summary>Opens a structured reply chunk (NBD_STRUCTURED_REPLY_MAGIC).</summary>
    public const uint StructuredReplyMagic = 0x668e33ef;

    /// <summary>Server greeting: InitMagic (8) + OptionMagic (8) + handshake flags (2).</summary>
    public const int GreetingBytes = 18;

    /// <summary>Client flags after the greeting: one u32.</summary>
    public const int ClientFlagsBytes = 4;

    /// <summary>Option header: OptionMagic (8) + option (4) + data length (4).</summary>
    public const int OptionHeaderBytes = 16;

    /// <summary>Option reply header: OptionReplyMagic (8) + option (4) + reply type (4) + data length (4).</summary>
    public const int OptionReplyHeaderBytes = 20;

    /// <summary>Reply to NBD_OPT_EXPORT_NAME: size (8) + transmission flags (2), then 124 zero bytes unless NO_ZEROES.</summary>
    public const int ExportNameReplyBytes = 10;

    /// <summary>The legacy zero padding after the NBD_OPT_EXPORT_NAME reply.</summary>
    public const int ExportNameReplyPaddingBytes = 124;

    /// <summary>Request: magic (4) + command flags (2) + type (2) + cookie (8) + offset (8) + length (4).</summary>
    public const int RequestBytes = 28;

    /// <summary>Simple reply: magic (4) + error (4) + cookie (8); read data follows on success.</summary>
    public const int SimpleReplyBytes = 16;

    /// <summary>Structured chunk header: magic (4) + flags (2) + type (2) + cookie (8) + payload length (4).</summary>
    public const int StructuredReplyHeaderBytes = 20;

    /// <summary>NBD_REPLY_TYPE_OFFSET_DATA payload prefix: the absolute offset (8) before the data.</summary>
    public const int OffsetDataPrefixBytes = 8;

    /// <summary>NBD_REPLY_TYPE_ERROR payload prefix: error (4) + message length (2) before the message.</summary>
    public const int ErrorChunkPrefixBytes = 6;

    /// <summary>NBD_REPLY_TYPE_BLOCK_STATUS payload prefix: the metadata context id (4).</summary>
    public const int BlockStatusPrefixBytes = 4;

    /// <summary>One block status descriptor: extent length (4) + status flags (4).</summary>
    public const int BlockDescriptorBytes = 8;

    /// <summary>The protocol's limit on any string (names, descriptions, queries, messages).</summary>
    public const int MaxStringBytes = 4096;

    /// <summary>The one metadata context Duet serves.</summary>
    public const string BaseAllocationContext = "base:allocation";

    /// <summary>The wildcard that lists every base: context during NBD_OPT_LIST_META_CONTEXT.</summary>
    public const string BaseNamespaceQuery = "base:";
}

/// <summary>Handshake flags (u16), sent by the server in the greeting.</summary>
[Flags]
public enum NbdHandshakeFlags : ushort
{
    None = 0,
    /// <summary>NBD_FLAG_FIXED_NEWSTYLE: the server answers unknown options instead of hanging up.</summary>
    FixedNewstyle = 1 << 0,
    /// <summary>NBD_FLAG_NO_ZEROES: the server can omit the 124 padding bytes after EXPORT_NAME.</summary>
    NoZeroes = 1 << 1,
}

/// <summary>Client flags (u32), the client's answer to the greeting.</summary>
[Flags]
public enum NbdClientFlags : uint
{
    None = 0,
    /// <summary>NBD_FLAG_C_FIXED_NEWSTYLE: the client speaks fixed newstyle.</summary>
    FixedNewstyle = 1 << 0,
    /// <summary>NBD_FLAG_C_NO_ZEROES: the client wants no padding after EXPORT_NAME.</summary>
    NoZeroes = 1 << 1,
    /// <summary>Every bit Duet understands; any other bit makes the server hang up (the spec's rule).</summary>
    Known = FixedNewstyle | NoZeroes,
}

/// <summary>Transmission flags (u16), per export, in NBD_INFO_EXPORT and the EXPORT_NAME reply.</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    None = 0,
    /// <summary>NBD_FLAG_HAS_FLAGS: always set; the other bits are meaningful.</summary>
    HasFlags = 1 << 0,
    /// <summary>NBD_FLAG_READ_ONLY: writes, trims and zeroes fail with EPERM.</summary>
    ReadOnly = 1 << 1,
    /// <summary>NBD_FLAG_SEND_FLUSH: NBD_CMD_FLUSH is supported.</summary>
    SendFlush = 1 << 2,
    /// <summary>NBD_FLAG_SEND_FUA: NBD_CMD_FLAG_FUA is honoured.</summary>
    SendFua = 1 << 3,
    /// <summary>NBD_FLAG_ROTATIONAL: a hint that seeks are costly (never set by Duet).</summary>
    Rotational = 1 << 4,
    /// <summary>NBD_FLAG_SEND_TRIM: NBD_CMD_TRIM is supported.</summary>
    SendTrim = 1 << 5,
    /// <summary>NBD_FLAG_SEND_WRITE_ZEROES: NBD_CMD_WRITE_ZEROES is supported.</summary>
    SendWriteZeroes = 1 << 6,
    /// <summary>NBD_FLAG_SEND_DF: NBD_CMD_FLAG_DF is honoured (only with structured replies).</summary>
    SendDf = 1 << 7,
    /// <summary>NBD_FLAG_CAN_MULTI_CONN: a flush on any connection covers writes completed on every connection.</summary>
    CanMultiConn = 1 << 8,
    /// <summary>NBD_FLAG_SEND_RESIZE: experimental resize extension (not supported).</summary>
    SendResize = 1 << 9,
    /// <summary>NBD_FLAG_SEND_CACHE: NBD_CMD_CACHE (not supported).</summary>
    SendCache = 1 << 10,
    /// <summary>NBD_FLAG_SEND_FAST_ZERO: NBD_CMD_FLAG_FAST_ZERO (not supported).</summary>
    SendFastZero = 1 << 11,
}

/// <summary>Option codes (u32) a client sends during haggling.</summary>
public enum NbdOption : uint
{
    /// <summary>NBD_OPT_EXPORT_NAME: pick an export and enter transmission; no reply on failure, only a hang-up.</summary>
    ExportName = 1,
    /// <summary>NBD_OPT_ABORT: the client ends the session (soft disconnect).</summary>
    Abort = 2,
    /// <summary>NBD_OPT_LIST: list exports as NBD_REP_SERVER replies.</summary>
    List = 3,
    /// <summary>NBD_OPT_PEEK_EXPORT: withdrawn.</summary>
    PeekExport = 4,
    /// <summary>NBD_OPT_STARTTLS: upgrade to TLS (Duet answers UNSUP; the ports are loopback only).</summary>
    StartTls = 5,
    /// <summary>NBD_OPT_INFO: describe an export without entering transmission.</summary>
    Info = 6,
    /// <summary>NBD_OPT_GO: describe an export and enter transmission.</summary>
    Go = 7,
    /// <summary>NBD_OPT_STRUCTURED_REPLY: use structured reply chunks in transmission.</summary>
    StructuredReply = 8,
    /// <summary>NBD_OPT_LIST_META_CONTEXT: list metadata contexts matching queries.</summary>
    ListMetaContext = 9,
    /// <summary>NBD_OPT_SET_META_CONTEXT: select metadata contexts for NBD_CMD_BLOCK_STATUS.</summary>
    SetMetaContext = 10,
    /// <summary>NBD_OPT_EXTENDED_HEADERS: 64-bit headers extension (not supported).</summary>
    ExtendedHeaders = 11,
}

/// <summary>Option reply types (u32); bit 31 marks an error.</summary>
public enum NbdOptionReply : uint
{
    /// <summary>NBD_REP_ACK: the option succeeded; the final reply of a list.</summary>
    Ack = 1,
    /// <summary>NBD_REP_SERVER: one export: u32 name length, name, optional description.</summary>
    Server = 2,
    /// <summary>NBD_REP_INFO: u16 info type then its payload (see <see cref="NbdInfo"/>).</summary>
    Info = 3,
    /// <summary>NBD_REP_META_CONTEXT: u32 context id, context name.</summary>
    MetaContext = 4,
    /// <summary>NBD_REP_ERR_UNSUP: option unknown to this server.</summary>
    ErrUnsupported = 0x8000_0001,
    /// <summary>NBD_REP_ERR_POLICY: known and valid, but refused by policy.</summary>
    ErrPolicy = 0x8000_0002,
    /// <summary>NBD_REP_ERR_INVALID: syntactically or semantically invalid.</summary>
    ErrInvalid = 0x8000_0003,
    /// <summary>NBD_REP_ERR_PLATFORM: not supported on this platform.</summary>
    ErrPlatform = 0x8000_0004,
    /// <summary>NBD_REP_ERR_TLS_REQD: TLS required first.</summary>
    ErrTlsRequired = 0x8000_0005,
    /// <summary>NBD_REP_ERR_UNKNOWN: no such export.</summary>
    ErrUnknown = 0x8000_0006,
    /// <summary>NBD_REP_ERR_SHUTDOWN: the server is shutting down.</summary>
    ErrShutdown = 0x8000_0007,
    /// <summary>NBD_REP_ERR_BLOCK_SIZE_REQD: the client must ask for NBD_INFO_BLOCK_SIZE.</summary>
    ErrBlockSizeRequired = 0x8000_0008,
    /// <summary>NBD_REP_ERR_TOO_BIG: request or reply too large.</summary>
    ErrTooBig = 0x8000_0009,
}

/// <summary>Information types (u16) inside NBD_REP_INFO, also requested by INFO/GO.</summary>
public enum NbdInfo : ushort
{
    /// <summary>NBD_INFO_EXPORT: u64 size, u16 transmission flags (payload 10 bytes after the type).</summary>
    Export = 0,
    /// <summary>NBD_INFO_NAME: the canonical export name.</summary>
    Name = 1,
    /// <summary>NBD_INFO_DESCRIPTION: a human-readable description.</summary>
    Description = 2,
    /// <summary>NBD_INFO_BLOCK_SIZE: u32 minimum, u32 preferred, u32 maximum payload.</summary>
    BlockSize = 3,
}

/// <summary>Request types (u16) in the transmission phase.</summary>
public enum NbdCommand : ushort
{
    /// <summary>NBD_CMD_READ: reply carries length bytes of data.</summary>
    Read = 0,
    /// <summary>NBD_CMD_WRITE: request carries length bytes of data.</summary>
    Write = 1,
    /// <summary>NBD_CMD_DISC: soft disconnect; no reply.</summary>
    Disconnect = 2,
    /// <summary>NBD_CMD_FLUSH: make every completed write durable; offset and length must be 0.</summary>
    Flush = 3,
    /// <summary>NBD_CMD_TRIM: discard a range (reads as zeros afterwards on Duet).</summary>
    Trim = 4,
    /// <summary>NBD_CMD_CACHE: prefetch hint (not advertised, so EINVAL).</summary>
    Cache = 5,
    /// <summary>NBD_CMD_WRITE_ZEROES: zero a range without a payload.</summary>
    WriteZeroes = 6,
    /// <summary>NBD_CMD_BLOCK_STATUS: report extents for each selected metadata context.</summary>
    BlockStatus = 7,
    /// <summary>NBD_CMD_RESIZE: experimental (not supported, so EINVAL).</summary>
    Resize = 8,
}

/// <summary>Command flags (u16) on a request.</summary>
[Flags]
public enum NbdCommandFlags : ushort
{
    None = 0,
    /// <summary>NBD_CMD_FLAG_FUA: reply only once the data is durable. Valid on any command.</summary>
    Fua = 1 << 0,
    /// <summary>NBD_CMD_FLAG_NO_HOLE: WRITE_ZEROES must not deallocate.</summary>
    NoHole = 1 << 1,
    /// <summary>NBD_CMD_FLAG_DF: READ must be answered in one content chunk.</summary>
    DontFragment = 1 << 2,
    /// <summary>NBD_CMD_FLAG_REQ_ONE: BLOCK_STATUS returns exactly one extent.</summary>
    ReqOne = 1 << 3,
    /// <summary>NBD_CMD_FLAG_FAST_ZERO: fail WRITE_ZEROES fast unless cheap (not advertised).</summary>
    FastZero = 1 << 4,
    /// <summary>NBD_CMD_FLAG_PAYLOAD_LEN: extended headers only (not supported).</summary>
    PayloadLength = 1 << 5,
}

/// <summary>Structured reply chunk flags (u16).</summary>
[Flags]
public enum NbdReplyFlags : ushort
{
    None = 0,
    /// <summary>NBD_REPLY_FLAG_DONE: the last chunk for this cookie.</summary>
    Done = 1 << 0,
}

/// <summary>Structured reply chunk types (u16); bit 15 marks an error chunk.</summary>
public enum NbdReplyType : ushort
{
    /// <summary>NBD_REPLY_TYPE_NONE: no payload; always with DONE.</summary>
    None = 0,
    /// <summary>NBD_REPLY_TYPE_OFFSET_DATA: u64 offset then data.</summary>
    OffsetData = 1,
    /// <summary>NBD_REPLY_TYPE_OFFSET_HOLE: u64 offset, u32 length of zeros.</summary>
    OffsetHole = 2,
    /// <summary>NBD_REPLY_TYPE_BLOCK_STATUS: u32 context id then (u32 length, u32 flags) descriptors.</summary>
    BlockStatus = 5,
    /// <summary>NBD_REPLY_TYPE_ERROR: u32 error, u16 message length, message.</summary>
    Error = 0x8001,
    /// <summary>NBD_REPLY_TYPE_ERROR_OFFSET: as Error, then u64 offset.</summary>
    ErrorOffset = 0x8002,
}

/// <summary>Error values in replies; fixed by the protocol, not the host's errno.</summary>
public enum NbdError : uint
{
    None = 0,
    /// <summary>NBD_EPERM: write to a read-only export.</summary>
    Perm = 1,
    /// <summary>NBD_EIO: I/O error.</summary>
    Io = 5,
    /// <summary>NBD_ENOMEM: out of memory.</summary>
    NoMem = 12,
    /// <summary>NBD_EINVAL: bad request (range, alignment, flags, command).</summary>
    Inval = 22,
    /// <summary>NBD_ENOSPC: write past the end of the export.</summary>
    NoSpc = 28,
    /// <summary>NBD_EOVERFLOW: value too large (DF reads, oversized payload-less commands).</summary>
    Overflow = 75,
    /// <summary>NBD_ENOTSUP: operation not supported (FAST_ZERO only).</summary>
    NotSup = 95,
    /// <summary>NBD_ESHUTDOWN: the server is shutting down.</summary>
    Shutdown = 108,
}

/// <summary>base:allocation status flags in a block status descriptor.</summary>
[Flags]
public enum NbdAllocationState : uint
{
    None = 0,
    /// <summary>NBD_STATE_HOLE: not allocated.</summary>
    Hole = 1 << 0,
    /// <summary>NBD_STATE_ZERO: reads as zeros.</summary>
    Zero = 1 << 1,
}
