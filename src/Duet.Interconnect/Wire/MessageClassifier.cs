using System.Buffers.Binary;

namespace Duet.Interconnect.Wire;

public enum MessageKind
{
    Unknown = 0,
    Notification,
    SmallWrite,
    Metadata,
    Status,
    CoherencyBatch,
    Heartbeat,
    WriteCheckpoint,
    DestagedNotice,
    ForwardedRequest,
    ForwardedResponse,
    ArrayTableUpdate,
    ScsiStateUpdate,
    PairHello,
    HostHandshake,
    ReservationState,
    PowerFail,
    HostTagEntries,
    WriteCheckpointsDone,
    HandshakeBatch,
    PartialSum,
    PartialSumsReleased,
}

/// <summary>
/// The dispatch rule: which codec reads a transfer, from its first bytes only. The families
/// are disjoint by construction (see <see cref="MirrorWire"/>): a single first byte names the
/// SCSI-style commands (0x3C, 0xA0, 0xB0, 0x3B), and a big-endian u16 type names the rest
/// (0x0001 metadata, 0x0002 status, 0x0101-0x0110 Duet). A data mirror message has no header
/// and is never classified: the link's signal identifier says it is data. Classifying does
/// not validate; the codec does.
/// </summary>
public static class MessageClassifier
{
    public static MessageKind Classify(ReadOnlySpan<byte> message)
    {
        if (message.IsEmpty) return MessageKind.Unknown;
        switch (message[0])
        {
            case MirrorWire.NotificationOpcode: return MessageKind.Notification;
            case MirrorWire.SmallWriteOpcodeAToB or MirrorWire.SmallWriteOpcodeBToA: return MessageKind.SmallWrite;
            case MirrorWire.WriteBufferOpcode: return MessageKind.CoherencyBatch;
        }
        if (message.Length < 2) return MessageKind.Unknown;
        return BinaryPrimitives.ReadUInt16BigEndian(message) switch
        {
            MirrorWire.MetadataType => MessageKind.Metadata,
            MirrorWire.StatusType => MessageKind.Status,
            MirrorWire.TypeHeartbeat => MessageKind.Heartbeat,
            MirrorWire.TypeWriteCheckpoint => MessageKind.WriteCheckpoint,
            MirrorWire.TypeDestagedNotice => MessageKind.DestagedNotice,
            MirrorWire.TypeForwardedRequest => MessageKind.ForwardedRequest,
            MirrorWire.TypeForwardedResponse => MessageKind.ForwardedResponse,
            MirrorWire.TypeArrayTableUpdate => MessageKind.ArrayTableUpdate,
            MirrorWire.TypeScsiStateUpdate => MessageKind.ScsiStateUpdate,
            MirrorWire.TypePairHello => MessageKind.PairHello,
            MirrorWire.TypeHostHandshake => MessageKind.HostHandshake,
            MirrorWire.TypeReservationState => MessageKind.ReservationState,
            MirrorWire.TypePowerFail => MessageKind.PowerFail,
            MirrorWire.TypeHostTagEntries => MessageKind.HostTagEntries,
            MirrorWire.TypeWriteCheckpointsDone => MessageKind.WriteCheckpointsDone,
            MirrorWire.TypeHandshakeBatch => MessageKind.HandshakeBatch,
            MirrorWire.TypePartialSum => MessageKind.PartialSum,
            MirrorWire.TypePartialSumsReleased => MessageKind.PartialSumsReleased,
            _ => MessageKind.Unknown,
        };
    }
}
