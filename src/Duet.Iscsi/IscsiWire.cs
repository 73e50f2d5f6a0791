namespace Duet.Iscsi;

// Wire constants of RFC 7143 (iSCSI). Values are the protocol's; names follow the RFC.

/// <summary>The six-bit opcode of a PDU (byte 0, without the I bit).</summary>
public enum IscsiOpcode : byte
{
    // Initiator opcodes.
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskManagementRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    ScsiDataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,

    // Target opcodes.
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskManagementResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    ScsiDataIn = 0x25,
    LogoutResponse = 0x26,
    ReadyToTransfer = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

/// <summary>Login stages (CSG / NSG).</summary>
public enum LoginStage : byte { Security = 0, Operational = 1, FullFeature = 3 }

/// <summary>Login Response Status-Class (high byte) and Status-Detail (low byte), RFC 7143 §11.13.5.</summary>
public enum LoginStatus : ushort
{
    Success = 0x0000,
    InitiatorError = 0x0200,
    AuthenticationFailure = 0x0201,
    AuthorizationFailure = 0x0202,
    NotFound = 0x0203,
    UnsupportedVersion = 0x0205,
    TooManyConnections = 0x0206,
    MissingParameter = 0x0207,
    CantIncludeInSession = 0x0208,
    SessionTypeNotSupported = 0x0209,
    SessionDoesNotExist = 0x020a,
    InvalidDuringLogin = 0x020b,
    TargetError = 0x0300,
    ServiceUnavailable = 0x0301,
    OutOfResources = 0x0302,
}

/// <summary>Reject reasons, RFC 7143 §11.17.1.</summary>
public enum RejectReason : byte
{
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandRejected = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOperationReject = 0x0a,
    WaitingForLogout = 0x0c,
}

/// <summary>Task management functions, RFC 7143 §11.5.1.</summary>
public enum TmfFunction : byte
{
    AbortTask = 1,
    AbortTaskSet = 2,
    ClearAca = 3,
    ClearTaskSet = 4,
    LogicalUnitReset = 5,
    TargetWarmReset = 6,
    TargetColdReset = 7,
    TaskReassign = 8,
}

/// <summary>Task management responses, RFC 7143 §11.6.1.</summary>
public enum TmfResponse : byte
{
    FunctionComplete = 0,
    TaskDoesNotExist = 1,
    LunDoesNotExist = 2,
    TaskStillAllegiant = 3,
    ReassignmentNotSupported = 4,
    NotSupported = 5,
    AuthorizationFailed = 6,
    Rejected = 255,
}

/// <summary>Logout reason codes, RFC 7143 §11.14.1.</summary>
public enum LogoutReason : byte { CloseSession = 0, CloseConnection = 1, RemoveConnectionForRecovery = 2 }

/// <summary>Logout response codes, RFC 7143 §11.15.1.</summary>
public enum LogoutResponse : byte { Success = 0, CidNotFound = 1, RecoveryNotSupported = 2, CleanupFailed = 3 }

public static class IscsiWire
{
    /// <summary>The Basic Header Segment.</summary>
    public const int BhsBytes = 48;
    public const int DigestBytes = 4;
    /// <summary>The "no tag" value of ITT and TTT.</summary>
    public const uint ReservedTag = 0xffffffffu;
    /// <summary>The I bit of byte 0.</summary>
    public const byte ImmediateBit = 0x40;
    /// <summary>The F bit of byte 1.</summary>
    public const byte FinalBit = 0x80;

    // SCSI Command flags (byte 1).
    public const byte ReadBit = 0x40;
    public const byte WriteBit = 0x20;
    public const byte AttributeMask = 0x07;

    // SCSI Response / Data-In flags (byte 1).
    public const byte BidiOverflowBit = 0x10;
    public const byte BidiUnderflowBit = 0x08;
    public const byte ResidualOverflowBit = 0x04;
    public const byte ResidualUnderflowBit = 0x02;
    public const byte AckBit = 0x40;
    public const byte StatusBit = 0x01;

    // Login flags (byte 1).
    public const byte TransitBit = 0x80;
    public const byte ContinueBit = 0x40;

    /// <summary>Protocol version (Version-max / Version-active): RFC 7143 is 0x00.</summary>
    public const byte Version = 0x00;

    /// <summary>Limits RFC 7143 puts on negotiated lengths.</summary>
    public const int MinDataSegmentLength = 512;
    public const int MaxDataSegmentLength = (1 << 24) - 1;

    /// <summary>The MaxRecvDataSegmentLength in force until one is declared (and during login).</summary>
    public const int DefaultMaxRecvDataSegmentLength = 8192;

    /// <summary>Pads a data segment length to a multiple of 4.</summary>
    public static int Padded(int length) => (length + 3) & ~3;
}
