using Duet.Iscsi.Scsi;

namespace Duet.Iscsi;

/// <summary>
/// One logged-in session. Duet negotiates MaxConnections=1 and ErrorRecoveryLevel=0, so a session
/// has exactly one connection and ends with it; the session owns the command numbering
/// (ExpCmdSN, MaxCmdSN) and the connection owns the status numbering (StatSN).
/// </summary>
internal sealed class IscsiSession
{
    private readonly Lock _gate = new();
    private readonly int _window;
    private uint _expCmdSn;
    private uint _maxCmdSn;
    private int _active;

    public IscsiSession(ushort tsih, string initiatorName, ulong isid, bool discovery, ItNexus? nexus, uint initialCmdSn, int window, IscsiConnection connection)
    {
        Tsih = tsih;
        InitiatorName = initiatorName;
        Isid = isid;
        Discovery = discovery;
        Nexus = nexus;
        Connection = connection;
        _window = window;
        _expCmdSn = initialCmdSn;
        _maxCmdSn = initialCmdSn + (uint)window - 1;
    }

    public ushort Tsih { get; }
    public string InitiatorName { get; }
    public ulong Isid { get; }
    public bool Discovery { get; }
    /// <summary>The I_T nexus of a normal session (null for discovery).</summary>
    public ItNexus? Nexus { get; }
    public IscsiConnection Connection { get; }

    /// <summary>(ExpCmdSN, MaxCmdSN) to put in a response now.</summary>
    public (uint ExpCmdSn, uint MaxCmdSn) Window
    {
        get
        {
            lock (_gate)
            {
                // MaxCmdSN = ExpCmdSN - 1 + free slots, never announced lower than before (the
                // initiator keeps the highest it saw anyway).
                uint candidate = _expCmdSn - 1 + (uint)Math.Max(0, _window - _active);
                if (SerialNumber.Greater(candidate, _maxCmdSn)) _maxCmdSn = candidate;
                return (_expCmdSn, _maxCmdSn);
            }
        }
    }

    /// <summary>
    /// Decides whether a non-Data-Out PDU is taken: immediate ones always are (and do not advance
    /// CmdSN); others only with CmdSN == ExpCmdSN inside the window (RFC 7143 §3.2.2.1: a target
    /// silently drops commands outside it). <paramref name="isTask"/> counts it against the window
    /// until <see cref="TaskDone"/>.
    /// </summary>
    public bool TryAccept(bool immediate, uint cmdSn, bool isTask, out uint expCmdSn, out uint maxCmdSn)
    {
        lock (_gate)
        {
            expCmdSn = _expCmdSn;
            maxCmdSn = _maxCmdSn;
            if (!immediate)
            {
                if (cmdSn != _expCmdSn || SerialNumber.Greater(cmdSn, _maxCmdSn)) return false;
                _expCmdSn++;
            }
            if (isTask) _active++;
            return true;
        }
    }

    public void TaskDone()
    {
        lock (_gate)
        {
            _active--;
        }
    }

    public int ActiveTasks
    {
        get
        {
            lock (_gate) return _active;
        }
    }
}

/// <summary>RFC 1982 serial number arithmetic on 32 bits, as CmdSN and StatSN use it.</summary>
public static class SerialNumber
{
    public static bool Greater(uint a, uint b) => a != b && (int)(a - b) > 0;

    public static bool Less(uint a, uint b) => a != b && (int)(a - b) < 0;

    /// <summary>a in [low, high] in serial order.</summary>
    public static bool InRange(uint a, uint low, uint high) => !Less(a, low) && !Greater(a, high);
}
