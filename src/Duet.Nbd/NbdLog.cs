using System.Net;
using Microsoft.Extensions.Logging;

namespace Duet.Nbd;

// Event IDs are stable: dashboards and tests key on them. Add new ones at the end of a range.
//   1..9    server lifecycle       10..29  handshake       30..49  transmission
internal static partial class NbdLog
{
    [LoggerMessage(1, LogLevel.Information, "NBD server listening on {EndPoint}")]
    public static partial void Listening(ILogger logger, IPEndPoint endPoint);

    [LoggerMessage(2, LogLevel.Information, "NBD server on {EndPoint} stopped")]
    public static partial void Stopped(ILogger logger, IPEndPoint endPoint);

    [LoggerMessage(3, LogLevel.Warning, "NBD accept failed")]
    public static partial void AcceptFailed(ILogger logger, Exception exception);

    [LoggerMessage(4, LogLevel.Warning, "NBD shutdown timed out after {Timeout}; cutting {Count} connection(s)")]
    public static partial void ShutdownTimedOut(ILogger logger, TimeSpan timeout, int count);

    [LoggerMessage(10, LogLevel.Debug, "NBD connection {ConnectionId} from {Remote} accepted")]
    public static partial void ConnectionAccepted(ILogger logger, long connectionId, EndPoint? remote);

    [LoggerMessage(11, LogLevel.Debug, "NBD connection {ConnectionId} closed")]
    public static partial void ConnectionClosed(ILogger logger, long connectionId);

    [LoggerMessage(12, LogLevel.Warning, "NBD connection {ConnectionId}: protocol violation ({Error}): {Reason}; closing")]
    public static partial void ProtocolViolation(ILogger logger, long connectionId, NbdProtocolError error, string reason);

    [LoggerMessage(13, LogLevel.Warning, "NBD connection {ConnectionId}: unknown client flags 0x{Flags:x8}; closing")]
    public static partial void UnknownClientFlags(ILogger logger, long connectionId, uint flags);

    [LoggerMessage(14, LogLevel.Warning, "NBD connection {ConnectionId}: {Option} for unknown export '{ExportName}'")]
    public static partial void UnknownExport(ILogger logger, long connectionId, NbdOption option, string exportName);

    [LoggerMessage(15, LogLevel.Warning, "NBD connection {ConnectionId}: {Option} rejected with {Reply}: {Reason}")]
    public static partial void OptionRejected(ILogger logger, long connectionId, NbdOption option, NbdOptionReply reply, string reason);

    [LoggerMessage(16, LogLevel.Information, "NBD connection {ConnectionId}: export '{ExportName}' selected (structured replies {Structured}, block status {BlockStatus})")]
    public static partial void ExportSelected(ILogger logger, long connectionId, string exportName, bool structured, bool blockStatus);

    [LoggerMessage(17, LogLevel.Debug, "NBD connection {ConnectionId}: client aborted negotiation")]
    public static partial void NegotiationAborted(ILogger logger, long connectionId);

    [LoggerMessage(18, LogLevel.Debug, "NBD connection {ConnectionId}: peer closed during {Phase}")]
    public static partial void PeerClosed(ILogger logger, long connectionId, string phase);

    [LoggerMessage(19, LogLevel.Warning, "NBD connection {ConnectionId}: non-fixed-newstyle client sent {Option}; closing")]
    public static partial void NotFixedNewstyle(ILogger logger, long connectionId, NbdOption option);

    [LoggerMessage(20, LogLevel.Information, "NBD connection {ConnectionId}: unsupported option {Option} answered NBD_REP_ERR_UNSUP")]
    public static partial void OptionUnsupported(ILogger logger, long connectionId, NbdOption option);

    [LoggerMessage(30, LogLevel.Warning, "NBD connection {ConnectionId}: {Command} offset={Offset} length={Length} flags={Flags} rejected with {Error}: {Reason}")]
    public static partial void RequestRejected(ILogger logger, long connectionId, NbdCommand command, ulong offset, uint length, NbdCommandFlags flags, NbdError error, string reason);

    [LoggerMessage(31, LogLevel.Warning, "NBD connection {ConnectionId}: {Command} offset={Offset} length={Length} failed on volume '{Volume}' ({Kind}) -> {Error}: {Reason}")]
    public static partial void VolumeFailed(ILogger logger, long connectionId, NbdCommand command, ulong offset, uint length, string volume, Duet.Core.BlockErrorKind kind, NbdError error, string reason);

    [LoggerMessage(32, LogLevel.Error, "NBD connection {ConnectionId}: {Command} offset={Offset} length={Length} failed unexpectedly -> EIO")]
    public static partial void RequestCrashed(ILogger logger, long connectionId, NbdCommand command, ulong offset, uint length, Exception exception);

    [LoggerMessage(33, LogLevel.Debug, "NBD connection {ConnectionId}: client sent NBD_CMD_DISC")]
    public static partial void DisconnectRequested(ILogger logger, long connectionId);

    [LoggerMessage(34, LogLevel.Debug, "NBD connection {ConnectionId}: connection failed")]
    public static partial void ConnectionFailed(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(35, LogLevel.Critical, "NBD connection {ConnectionId}: invariant violated; cutting the connection")]
    public static partial void InvariantViolated(ILogger logger, long connectionId, Exception exception);

    [LoggerMessage(36, LogLevel.Warning, "NBD connection {ConnectionId}: could not refresh the export list ({Reason}); serving the exports known")]
    public static partial void CatalogRefreshFailed(ILogger logger, long connectionId, string reason);
}
