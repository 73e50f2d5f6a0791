using System.Net;
using Microsoft.Extensions.Logging;

namespace Duet.Shelf;

// Event IDs are stable: add new ones at the end of a range.
//   1..9  server lifecycle     10..29  connections and requests
internal static partial class ShelfLog
{
    [LoggerMessage(1, LogLevel.Information, "shelf serving {Role} on {EndPoint}")]
    public static partial void Listening(ILogger logger, string role, EndPoint endPoint);

    [LoggerMessage(2, LogLevel.Information, "shelf stopped")]
    public static partial void Stopped(ILogger logger);

    [LoggerMessage(3, LogLevel.Warning, "shelf accept on {Role} failed")]
    public static partial void AcceptFailed(ILogger logger, string role, Exception exception);

    [LoggerMessage(4, LogLevel.Warning, "shelf stop: {Count} connection(s) still had requests running after {Timeout}; not waiting for them")]
    public static partial void ShutdownTimedOut(ILogger logger, int count, TimeSpan timeout);

    [LoggerMessage(10, LogLevel.Debug, "shelf connection {ConnectionId} on {Role} accepted")]
    public static partial void ConnectionAccepted(ILogger logger, long connectionId, string role);

    [LoggerMessage(11, LogLevel.Debug, "shelf connection {ConnectionId} on {Role} closed")]
    public static partial void ConnectionClosed(ILogger logger, long connectionId, string role);

    [LoggerMessage(12, LogLevel.Warning, "shelf connection {ConnectionId} on {Role}: protocol error: {Reason}")]
    public static partial void ProtocolError(ILogger logger, long connectionId, string role, string reason);

    [LoggerMessage(13, LogLevel.Warning, "shelf connection {ConnectionId} on {Role}: framing lost ({Reason}); closing")]
    public static partial void FramingLost(ILogger logger, long connectionId, string role, string reason);

    [LoggerMessage(14, LogLevel.Error, "shelf connection {ConnectionId} on {Role}: {Op} failed unexpectedly")]
    public static partial void RequestFailed(ILogger logger, long connectionId, string role, ShelfOp op, Exception exception);

    [LoggerMessage(15, LogLevel.Warning, "shelf connection {ConnectionId} on {Role} failed")]
    public static partial void ConnectionFailed(ILogger logger, long connectionId, string role, Exception exception);

    [LoggerMessage(16, LogLevel.Information, "shelf admin: {Action} {Target}")]
    public static partial void Admin(ILogger logger, string action, string target);
}
