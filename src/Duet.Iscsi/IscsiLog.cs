using System.Net;
using Microsoft.Extensions.Logging;

namespace Duet.Iscsi;

// Event IDs are stable: dashboards and tests key on them. Add new ones at the end of a range.
//   1..9    server lifecycle       10..29  login       30..59  full feature phase
internal static partial class IscsiLog
{
    [LoggerMessage(1, LogLevel.Information, "iSCSI target {TargetName} listening on {EndPoint} (portal group {PortalGroupTag})")]
    public static partial void Listening(ILogger logger, string targetName, IPEndPoint endPoint, ushort portalGroupTag);

    [LoggerMessage(2, LogLevel.Information, "iSCSI server on {EndPoint} stopped")]
    public static partial void Stopped(ILogger logger, IPEndPoint endPoint);

    [LoggerMessage(3, LogLevel.Warning, "iSCSI accept failed")]
    public static partial void AcceptFailed(ILogger logger, Exception exception);

    [LoggerMessage(4, LogLevel.Warning, "iSCSI shutdown timed out after {Timeout}; cutting {Count} connection(s)")]
    public static partial void ShutdownTimedOut(ILogger logger, TimeSpan timeout, int count);

    [LoggerMessage(10, LogLevel.Debug, "iSCSI connection {ConnectionId} from {Remote} accepted")]
    public static partial void ConnectionAccepted(ILogger logger, long connectionId, EndPoint? remote);

    [LoggerMessage(11, LogLevel.Debug, "iSCSI connection {ConnectionId} closed")]
    public static partial void ConnectionClosed(ILogger logger, long connectionId);

    [LoggerMessage(12, LogLevel.Warning, "iSCSI connection {ConnectionId}: login failed ({Status}): {Reason}")]
    public static partial void LoginFailed(ILogger logger, long connectionId, LoginStatus status, string reason);

    [LoggerMessage(13, LogLevel.Information, "iSCSI connection {ConnectionId}: {SessionType} session TSIH {Tsih} for {Initiator} ISID 0x{Isid:x12} logged in ({Parameters})")]
    public static partial void LoggedIn(ILogger logger, long connectionId, string sessionType, ushort tsih, string initiator, ulong isid, IscsiParameters parameters);

    [LoggerMessage(14, LogLevel.Information, "iSCSI connection {ConnectionId}: session TSIH {OldTsih} of {Initiator} ISID 0x{Isid:x12} reinstated")]
    public static partial void SessionReinstated(ILogger logger, long connectionId, ushort oldTsih, string initiator, ulong isid);

    [LoggerMessage(15, LogLevel.Warning, "iSCSI connection {ConnectionId}: login timed out")]
    public static partial void LoginTimedOut(ILogger logger, long connectionId);

    [LoggerMessage(16, LogLevel.Debug, "iSCSI connection {ConnectionId}: peer closed during {Phase}")]
    public static partial void PeerClosed(ILogger logger, long connectionId, string phase);

    [LoggerMessage(17, LogLevel.Information, "iSCSI connection {ConnectionId}: key {Key}={Value} answered {Answer}")]
    public static partial void KeyRefused(ILogger logger, long connectionId, string key, string value, string answer);

    [LoggerMessage(30, LogLevel.Warning, "iSCSI connection {ConnectionId}: {Opcode} rejected ({Reason}): {Detail}")]
    public static partial void PduRejected(ILogger logger, long connectionId, IscsiOpcode opcode, RejectReason reason, string detail);

    [LoggerMessage(31, LogLevel.Warning, "iSCSI connection {ConnectionId}: protocol violation: {Reason}; closing")]
    public static partial void ProtocolViolation(ILogger logger, long connectionId, string reason);

    [LoggerMessage(32, LogLevel.Debug, "iSCSI connection {ConnectionId}: {Opcode} CmdSN {CmdSN} outside [{ExpCmdSN}, {MaxCmdSN}] dropped")]
    public static partial void CommandDropped(ILogger logger, long connectionId, IscsiOpcode opcode, uint cmdSN, uint expCmdSN, uint maxCmdSN);

    [LoggerMessage(33, LogLevel.Error, "iSCSI connection {ConnectionId}: command ITT 0x{Itt:x8} failed unexpectedly; answered target failure")]
    public static partial void CommandCrashed(ILogger logger, long connectionId, uint itt, Exception exception);

    [LoggerMessage(34, LogLevel.Debug, "iSCSI connection {ConnectionId}: connection failed")]
    public static partial void ConnectionFailed(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(35, LogLevel.Critical, "iSCSI connection {ConnectionId}: invariant violated; cutting the connection")]
    public static partial void InvariantViolated(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(36, LogLevel.Information, "iSCSI connection {ConnectionId}: task management {Function} LUN {Lun} RTT 0x{Rtt:x8} -> {Response}")]
    public static partial void TaskManagement(ILogger logger, long connectionId, TmfFunction function, ulong lun, uint rtt, TmfResponse response);

    [LoggerMessage(37, LogLevel.Information, "iSCSI connection {ConnectionId}: logout ({Reason})")]
    public static partial void LoggedOut(ILogger logger, long connectionId, LogoutReason reason);

    [LoggerMessage(38, LogLevel.Warning, "iSCSI connection {ConnectionId}: NOP-In ping unanswered for {Timeout}; closing")]
    public static partial void PingTimedOut(ILogger logger, long connectionId, TimeSpan timeout);

    [LoggerMessage(39, LogLevel.Warning, "iSCSI connection {ConnectionId}: {Error} on {Opcode}; closing")]
    public static partial void FrameError(ILogger logger, long connectionId, IscsiFrameError error, IscsiOpcode opcode);

    [LoggerMessage(40, LogLevel.Warning, "iSCSI connection {ConnectionId}: ITT 0x{Itt:x8}: {Detail}; its data is discarded and it ends CHECK CONDITION (protocol service CRC error) once every burst has ended")]
    public static partial void DataSequenceError(ILogger logger, long connectionId, uint itt, string detail);
}
