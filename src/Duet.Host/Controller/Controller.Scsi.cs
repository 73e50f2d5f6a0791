using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Iscsi.Scsi;

namespace Duet.Host.Controller;

// SCSI state that must survive a failover (SPEC "Duet's own messages on the ICL"; docs/internals/scsi.md):
// persistent reservations, mirrored to the peer as ReservationStateMessage (0x010A), and the ALUA states
// of each volume's two port groups, derived here from ownership, the link and the takeover (nothing of
// them needs to cross the link: each side derives its own view). The iSCSI front end (ControllerServer)
// builds its device server over Reservations and AccessStates, and refreshes it on AccessChanged.
//
// A change is posted on the command queue; the peer applies it and echoes the same bytes on our reply
// queue; the PERSISTENT RESERVE OUT completes after the echo (or, with the peer gone, after the link
// says so or ForwardTimeout passes: the change then stays ours until the pair forms again). The store
// sends one change at a time, so one echo is awaited at a time. A pairing sync (flag set) is not
// echoed: for a volume the receiver serves it is answered, on the reply queue, with the receiver's state.
public sealed partial class Controller
{
    /// <summary>The persistent-reservation store of this controller's iSCSI device server, mirrored to the peer.</summary>
    public MirroredReservationStore Reservations { get; }

    readonly Lock _reservationAckLock = new();
    TaskCompletionSource? _reservationAck;
    byte[]? _reservationPending;

    ValueTask SendReservationStateAsync(ReservationStateMessage message) => SendScsiStateAsync(DuetFrame.ToArray(message), "a reservation change");

    /// <summary>A logical unit reset made here (ScsiStateUpdate kind UnitReset), for the peer's nexuses.</summary>
    ValueTask SendScsiStateUpdateAsync(ScsiStateUpdate message) => SendScsiStateAsync(DuetFrame.ToArray(message), "a logical unit reset");

    /// <summary>Posts one SCSI state message (the store sends one at a time) and waits for the peer's echo.</summary>
    async ValueTask SendScsiStateAsync(byte[] bytes, string what)
    {
        if (_peerFenced) throw new IclLinkDownException($"controller {PeerName} is fenced: its session is dead");
        if (!Link.IsUp) throw new IclLinkDownException($"the link to controller {PeerName} is down");
        var ack = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_reservationAckLock)
        {
            _reservationAck = ack;
            _reservationPending = bytes;
        }
        try
        {
            await Link.PostAsync(IclSignal.Message, Nvram.Epoch, bytes, default);
            try { await Waits.WithTimeout(ack.Task, _options.ForwardTimeout, _options.Time); }
            catch (TimeoutException) { throw new IclLinkDownException($"controller {PeerName} did not answer {what} within {_options.ForwardTimeout.TotalMilliseconds:F0} ms"); }
        }
        finally
        {
            lock (_reservationAckLock)
            {
                if (_reservationAck == ack) (_reservationAck, _reservationPending) = (null, null);
            }
        }
    }

    void OnReservationState(IclTransfer t)
    {
        if (ReservationStateMessage.TryDecode(t.Message.Span, out var message, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("reservation state", error.ToString());
            return;
        }
        if (!message!.Sync)
        {
            Reservations.Apply(message);
            _ = PostOrDropAsync(IclSignal.Reply, t.Message.ToArray());
        }
        else if (!_standby && Arrays.TryGetServedVolume(message.Volume, out _))
        {
            // Pairing: we own the volume's array, so our state is the one both keep.
            _ = PostOrDropAsync(IclSignal.Reply, DuetFrame.ToArray(Reservations.SyncMessage(message.Volume)));
        }
        else Reservations.Apply(message);
    }

    /// <summary>On the reply queue: the echo of a change we sent (the PERSISTENT RESERVE OUT may complete), or
    /// the owner's answer to our pairing sync (applied).</summary>
    void OnReservationStateReply(ReadOnlySpan<byte> bytes)
    {
        if (ReservationStateMessage.TryDecode(bytes, out var message, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("reservation state reply", error.ToString());
            return;
        }
        if (message!.Sync)
        {
            Reservations.Apply(message);
            return;
        }
        AckScsiState(bytes);
    }

    /// <summary>The peer's echo of the SCSI state message we sent last: its sender may go on.</summary>
    void AckScsiState(ReadOnlySpan<byte> bytes)
    {
        TaskCompletionSource? ack = null;
        lock (_reservationAckLock)
        {
            if (_reservationPending is { } pending && bytes.SequenceEqual(pending))
            {
                ack = _reservationAck;
                (_reservationAck, _reservationPending) = (null, null);
            }
        }
        ack?.TrySetResult();
    }

    /// <summary>A logical unit reset made through the peer's port (kind UnitReset; the blob names the volume, empty:
    /// every volume): our device server's nexuses see it too; echoed so that the peer's task management completes.</summary>
    void OnScsiStateUpdate(IclTransfer t)
    {
        if (ScsiStateUpdate.TryDecode(t.Message.Span, out var message, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("SCSI state update", error.ToString());
            return;
        }
        if (message!.Kind != ScsiStateKind.UnitReset || message.Blob.Length > ReservationStateMessage.VolumeNameBytesMax)
        {
            LogUnknown("SCSI state update", message.Kind.ToString());
            return;
        }
        string? volume;
        try { volume = message.Blob.IsEmpty ? null : StrictUtf8.GetString(message.Blob.Span); }
        catch (System.Text.DecoderFallbackException)
        {
            LogUnknown("SCSI state update", "volume name is not UTF-8");
            return;
        }
        Reservations.ApplyReset(volume);
        _ = PostOrDropAsync(IclSignal.Reply, t.Message.ToArray());
    }

    static readonly System.Text.UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>The link went down or the peer was fenced: a reservation change waiting for its echo completes
    /// without it.</summary>
    void FailReservationAck(string why)
    {
        TaskCompletionSource? ack;
        lock (_reservationAckLock) (ack, _reservationAck, _reservationPending) = (_reservationAck, null, null);
        ack?.TrySetException(new IclLinkDownException(why));
    }

    /// <summary>Pairing: the owner of an array is authoritative for its volumes' reservations. Each controller
    /// sends the whole state of every volume it holds state for; the peer applies it for a volume it does not
    /// serve and answers with its own for one it serves (what the non-owner changed while the link was down
    /// is replaced). Nothing goes for volumes neither side holds state for.</summary>
    async Task SendReservationSyncAsync()
    {
        foreach (var m in Reservations.SyncMessages())
            await Link.PostAsync(IclSignal.Message, Nvram.Epoch, DuetFrame.ToArray(m), default);
    }

    /// <summary>Raised when something the ALUA states depend on changed (the link went up or down, a takeover
    /// started or ended, this controller stepped down or rejoined, the peer was fenced or let back in), on the
    /// thread that noticed: the front end refreshes its view at once instead of at its next tick.</summary>
    public event Action? AccessChanged;

    void RaiseAccessChanged() => AccessChanged?.Invoke();

    /// <summary>
    /// The ALUA access states of every volume's two target port groups as this controller sees them
    /// (group 1 = controller A's port, group 2 = B's), docs/internals/scsi.md "ALUA across the pair":
    ///  - a volume this controller serves: its group active/optimized; the peer's active/non-optimized
    ///    while the pair can forward (link up, peer not fenced), else unavailable;
    ///  - a volume the peer serves: ours active/non-optimized (forwarded over the ICL) and the peer's
    ///    active/optimized while the link is up; with the link down ours is unavailable (nothing to
    ///    forward to); while a takeover runs ours is transitioning and the peer's unavailable;
    ///  - stepped down (fenced by the peer): ours unavailable, the peer's active/optimized.
    /// </summary>
    public IReadOnlyList<(string Volume, AluaState Own, AluaState Peer)> AccessStates()
    {
        var list = new List<(string, AluaState, AluaState)>();
        bool paired = Link.IsUp && !_peerFenced;
        bool takingOver = Volatile.Read(ref _takingOver) != 0;
        var status = Arrays.Status();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var v in status.Volumes)
        {
            if (!seen.Add(v.Name)) continue;
            if (_steppedDown) list.Add((v.Name, AluaState.Unavailable, AluaState.ActiveOptimized));
            else if (Arrays.Serves(v.Array)) list.Add((v.Name, AluaState.ActiveOptimized, paired ? AluaState.ActiveNonOptimized : AluaState.Unavailable));
            else list.Add(PeerServed(v.Name));
        }
        foreach (var v in Arrays.PeerVolumes)
            if (seen.Add(v.Name)) list.Add(_steppedDown ? (v.Name, AluaState.Unavailable, AluaState.ActiveOptimized) : PeerServed(v.Name));
        return list;

        (string, AluaState, AluaState) PeerServed(string name) =>
            takingOver ? (name, AluaState.Transitioning, AluaState.Unavailable)
            : paired ? (name, AluaState.ActiveNonOptimized, AluaState.ActiveOptimized)
            : (name, AluaState.Unavailable, AluaState.ActiveOptimized);
    }
}
