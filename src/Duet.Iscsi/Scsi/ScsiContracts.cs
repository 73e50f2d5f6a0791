namespace Duet.Iscsi.Scsi;

// The seam between the iSCSI transport (Duet.Iscsi: PDUs, login, sessions, R2T/Data-Out,
// Data-In) and the SCSI device server (Duet.Iscsi.Scsi: CDBs, sense, VPD, mode pages,
// reservations, ALUA). The transport never parses a CDB; the device server never sees a PDU.
// Additions are allowed; changing a member here means changing both sides.

/// <summary>SAM status codes.</summary>
public enum ScsiStatus : byte
{
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

/// <summary>SAM task attribute, from the SCSI Command PDU's ATTR field.</summary>
public enum TaskAttribute : byte { Untagged = 0, Simple = 1, Ordered = 2, HeadOfQueue = 3, Aca = 4 }

/// <summary>
/// One I_T nexus: the initiator port (iSCSI name + ISID) and the target port it came in through
/// (target portal group tag = target port group; relative target port identifier). Reservations,
/// registrations and unit attentions are kept per nexus.
/// </summary>
public sealed record ItNexus(string InitiatorName, ulong Isid, ushort TargetPortGroup, ushort RelativeTargetPort)
{
    /// <summary>The initiator port's SCSI name, as SPC-4 and RFC 7143 spell it.</summary>
    public string InitiatorPortName => $"{InitiatorName},i,0x{Isid:x12}";
}

/// <summary>
/// A SCSI command as the transport hands it over: every byte of Data-Out the initiator sends
/// (solicited or not, up to the PDU's Expected Data Transfer Length) has already arrived.
/// </summary>
public sealed class ScsiCommand
{
    public required ItNexus Nexus { get; init; }
    /// <summary>The LUN, decoded from the 8-byte LUN field (peripheral or flat addressing).</summary>
    public required ulong Lun { get; init; }
    public required ReadOnlyMemory<byte> Cdb { get; init; }
    /// <summary>The Data-Out buffer (empty for commands without one).</summary>
    public ReadOnlyMemory<byte> DataOut { get; init; }
    /// <summary>The initiator's Expected Data Transfer Length for Data-In (0 if not a read).</summary>
    public int ExpectedDataInLength { get; init; }
    /// <summary>The initiator's Expected Data Transfer Length for Data-Out (0 if not a write).</summary>
    public int ExpectedDataOutLength { get; init; }
    public TaskAttribute Attribute { get; init; } = TaskAttribute.Simple;
    /// <summary>The initiator task tag (for logs and ABORT TASK).</summary>
    public uint Tag { get; init; }
}

/// <summary>
/// What a command produced. <see cref="DataIn"/> may be longer than the initiator asked for (the
/// transport sends at most ExpectedDataInLength and reports the overflow);
/// <see cref="TransferLength"/> is the number of bytes the CDB called for in its data direction,
/// from which the transport reports residual underflow or overflow.
/// </summary>
public readonly record struct ScsiResult(ScsiStatus Status, ReadOnlyMemory<byte> DataIn, ReadOnlyMemory<byte> Sense, int TransferLength)
{
    public static ScsiResult Good(ReadOnlyMemory<byte> dataIn, int transferLength) => new(ScsiStatus.Good, dataIn, default, transferLength);
}

/// <summary>Task management functions the device server carries out (ABORT TASK and ABORT TASK SET
/// are the transport's: it cancels the commands).</summary>
public enum TaskManagementFunction : byte { LogicalUnitReset = 5, TargetWarmReset = 6, TargetColdReset = 7, ClearTaskSet = 3 }

/// <summary>The SCSI device server behind a target: what the transport calls.</summary>
public interface IScsiDevice
{
    /// <summary>The LUNs REPORT LUNS would list, for the transport's logs and checks.</summary>
    IReadOnlyList<ulong> Luns { get; }

    /// <summary>Executes one command. Never throws for a bad CDB, a bad LUN or a failed I/O: those
    /// become CHECK CONDITION with sense. Cancellation means the task was aborted.</summary>
    ValueTask<ScsiResult> ExecuteAsync(ScsiCommand command, CancellationToken cancellationToken);

    /// <summary>LUN RESET, TARGET WARM/COLD RESET, CLEAR TASK SET's device-server side (reservations,
    /// unit attentions). Returns the TMF response code (0 = function complete).</summary>
    ValueTask<byte> TaskManagementAsync(ItNexus nexus, TaskManagementFunction function, ulong lun, CancellationToken cancellationToken);

    /// <summary>The nexus is gone (its session logged out or was dropped).</summary>
    void NexusLost(ItNexus nexus);
}
