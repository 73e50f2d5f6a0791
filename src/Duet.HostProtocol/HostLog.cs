using System.Net;
using Microsoft.Extensions.Logging;

namespace Duet.HostProtocol;

internal static partial class HostLog
{
    [LoggerMessage(EventId = 5001, Level = LogLevel.Information, Message = "host protocol unit {Controller}{Unit} listening on {EndPoint}")]
    public static partial void Listening(ILogger logger, char controller, byte unit, IPEndPoint endPoint);

    [LoggerMessage(EventId = 5002, Level = LogLevel.Debug, Message = "host connection {Id} from {Remote}")]
    public static partial void Accepted(ILogger logger, long id, EndPoint? remote);

    [LoggerMessage(EventId = 5003, Level = LogLevel.Information, Message = "host connection {Id} attached host {HostId:x} to volume {Volume}")]
    public static partial void Attached(ILogger logger, long id, ulong hostId, string volume);

    [LoggerMessage(EventId = 5004, Level = LogLevel.Warning, Message = "host connection {Id}: {Error} ({Detail})")]
    public static partial void ProtocolError(ILogger logger, long id, HostWireError error, string detail);

    [LoggerMessage(EventId = 5005, Level = LogLevel.Debug, Message = "host connection {Id} closed")]
    public static partial void Closed(ILogger logger, long id);

    [LoggerMessage(EventId = 5006, Level = LogLevel.Warning, Message = "host connection {Id} failed")]
    public static partial void Failed(ILogger logger, long id, Exception exception);

    [LoggerMessage(EventId = 5007, Level = LogLevel.Warning, Message = "host protocol accept failed")]
    public static partial void AcceptFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 5008, Level = LogLevel.Warning, Message = "host connection {Id}: {Count} commands still in flight at close")]
    public static partial void ClosedWithInFlight(ILogger logger, long id, int count);
}
