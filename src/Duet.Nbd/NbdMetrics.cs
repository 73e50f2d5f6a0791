using System.Diagnostics.Metrics;

namespace Duet.Nbd;

/// <summary>Counters for one server, on a Meter named "Duet.Nbd". Tags are interned strings so
/// the hot path does not allocate.</summary>
internal sealed class NbdMetrics : IDisposable
{
    public const string MeterName = "Duet.Nbd";

    private readonly Meter _meter;
    private readonly Counter<long> _requests;
    private readonly Counter<long> _bytesRead;
    private readonly Counter<long> _bytesWritten;
    private readonly Counter<long> _errors;
    private readonly UpDownCounter<long> _connections;

    public NbdMetrics()
    {
        _meter = new Meter(MeterName);
        _requests = _meter.CreateCounter<long>("duet.nbd.requests", "{request}", "Transmission requests received, by command.");
        _bytesRead = _meter.CreateCounter<long>("duet.nbd.bytes_read", "By", "Bytes returned by successful NBD_CMD_READ.");
        _bytesWritten = _meter.CreateCounter<long>("duet.nbd.bytes_written", "By", "Bytes stored by successful NBD_CMD_WRITE.");
        _errors = _meter.CreateCounter<long>("duet.nbd.errors", "{error}", "Requests answered with an error, by command and NBD error.");
        _connections = _meter.CreateUpDownCounter<long>("duet.nbd.connections", "{connection}", "Open client connections.");
    }

    public void Request(NbdCommand command) => _requests.Add(1, new KeyValuePair<string, object?>("command", CommandName(command)));

    public void BytesRead(long bytes) => _bytesRead.Add(bytes);

    public void BytesWritten(long bytes) => _bytesWritten.Add(bytes);

    public void Error(NbdCommand command, NbdError error) => _errors.Add(1,
        new KeyValuePair<string, object?>("command", CommandName(command)),
        new KeyValuePair<string, object?>("error", ErrorName(error)));

    public void ConnectionOpened() => _connections.Add(1);

    public void ConnectionClosed() => _connections.Add(-1);

    public void Dispose() => _meter.Dispose();

    public static string CommandName(NbdCommand command) => command switch
    {
        NbdCommand.Read => "read",
        NbdCommand.Write => "write",
        NbdCommand.Disconnect => "disc",
        NbdCommand.Flush => "flush",
        NbdCommand.Trim => "trim",
        NbdCommand.Cache => "cache",
        NbdCommand.WriteZeroes => "write_zeroes",
        NbdCommand.BlockStatus => "block_status",
        NbdCommand.Resize => "resize",
        _ => "unknown",
    };

    public static string ErrorName(NbdError error) => error switch
    {
        NbdError.Perm => "EPERM",
        NbdError.Io => "EIO",
        NbdError.NoMem => "ENOMEM",
        NbdError.Inval => "EINVAL",
        NbdError.NoSpc => "ENOSPC",
        NbdError.Overflow => "EOVERFLOW",
        NbdError.NotSup => "ENOTSUP",
        NbdError.Shutdown => "ESHUTDOWN",
        _ => "other",
    };
}
