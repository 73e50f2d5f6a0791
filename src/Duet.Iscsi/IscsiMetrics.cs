using System.Diagnostics.Metrics;

namespace Duet.Iscsi;

/// <summary>Counters for one server, on a Meter named "Duet.Iscsi". Tags are interned strings so
/// the hot path does not allocate.</summary>
internal sealed class IscsiMetrics : IDisposable
{
    public const string MeterName = "Duet.Iscsi";

    private readonly Meter _meter;
    private readonly Counter<long> _commands;
    private readonly Counter<long> _bytesIn;
    private readonly Counter<long> _bytesOut;
    private readonly Counter<long> _rejects;
    private readonly Counter<long> _loginFailures;
    private readonly UpDownCounter<long> _connections;
    private readonly UpDownCounter<long> _sessions;

    public IscsiMetrics()
    {
        _meter = new Meter(MeterName);
        _commands = _meter.CreateCounter<long>("duet.iscsi.commands", "{command}", "SCSI commands executed, by completion status.");
        _bytesIn = _meter.CreateCounter<long>("duet.iscsi.bytes_read", "By", "Bytes sent to initiators in Data-In.");
        _bytesOut = _meter.CreateCounter<long>("duet.iscsi.bytes_written", "By", "Bytes received from initiators (immediate data and Data-Out).");
        _rejects = _meter.CreateCounter<long>("duet.iscsi.rejects", "{pdu}", "PDUs answered with Reject, by reason.");
        _loginFailures = _meter.CreateCounter<long>("duet.iscsi.login_failures", "{login}", "Logins refused.");
        _connections = _meter.CreateUpDownCounter<long>("duet.iscsi.connections", "{connection}", "Open TCP connections.");
        _sessions = _meter.CreateUpDownCounter<long>("duet.iscsi.sessions", "{session}", "Logged-in sessions.");
    }

    public void Command(Scsi.ScsiStatus status) => _commands.Add(1, new KeyValuePair<string, object?>("status", StatusName(status)));

    public void BytesRead(long bytes) => _bytesIn.Add(bytes);

    public void BytesWritten(long bytes) => _bytesOut.Add(bytes);

    public void Rejected(RejectReason reason) => _rejects.Add(1, new KeyValuePair<string, object?>("reason", RejectName(reason)));

    public void LoginFailed() => _loginFailures.Add(1);

    public void ConnectionOpened() => _connections.Add(1);

    public void ConnectionClosed() => _connections.Add(-1);

    public void SessionOpened() => _sessions.Add(1);

    public void SessionClosed() => _sessions.Add(-1);

    public void Dispose() => _meter.Dispose();

    private static string StatusName(Scsi.ScsiStatus status) => status switch
    {
        Scsi.ScsiStatus.Good => "good",
        Scsi.ScsiStatus.CheckCondition => "check_condition",
        Scsi.ScsiStatus.ConditionMet => "condition_met",
        Scsi.ScsiStatus.Busy => "busy",
        Scsi.ScsiStatus.ReservationConflict => "reservation_conflict",
        Scsi.ScsiStatus.TaskSetFull => "task_set_full",
        Scsi.ScsiStatus.AcaActive => "aca_active",
        Scsi.ScsiStatus.TaskAborted => "task_aborted",
        _ => "other",
    };

    private static string RejectName(RejectReason reason) => reason switch
    {
        RejectReason.DataDigestError => "data_digest",
        RejectReason.ProtocolError => "protocol_error",
        RejectReason.CommandNotSupported => "not_supported",
        RejectReason.InvalidPduField => "invalid_field",
        RejectReason.WaitingForLogout => "waiting_for_logout",
        _ => "other",
    };
}
