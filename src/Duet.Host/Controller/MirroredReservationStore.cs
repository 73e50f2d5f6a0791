using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Iscsi.Scsi;

namespace Duet.Host.Controller;

/// <summary>
/// The controller's persistent-reservation store (the iSCSI device server's <see cref="IReservationStore"/>):
/// every change is kept here and sent to the peer as a <see cref="ReservationStateMessage"/> before the
/// PERSISTENT RESERVE OUT that made it completes; what the peer sends replaces the copy here and is
/// raised as <see cref="Changed"/> (the device server reloads the LUN and tells the registrants the
/// change affected). So an initiator sees the same registrations and reservation through either
/// controller, and the survivor of a takeover still holds them.
///
/// Rules (docs/internals/scsi.md, "Reservations across the pair"):
///  - with the link up, a change goes to the peer first, in the order the changes were made (one send
///    at a time, chained); the command completes once the message is in the peer's window;
///  - with the link down (or the peer fenced), the change is kept here only and the command completes;
///  - when the pair forms, each controller sends the whole state of every volume it holds state for
///    (a sync); the owner of a volume's array is authoritative: a sync for a volume the receiver does not
///    serve is applied, one for a volume it serves is answered with its own state, which the sender
///    applies. What the non-owner changed while the link was down is replaced; a volume neither side
///    holds state for costs nothing.
/// No clocks, threads or sockets: sending is an injected delegate (the controller posts on the ICL).
/// </summary>
public sealed class MirroredReservationStore : IReservationStore
{
    readonly Lock _lock = new();
    readonly Dictionary<string, PrSnapshot> _snapshots = new(StringComparer.Ordinal);
    readonly Func<ReservationStateMessage, ValueTask> _send;
    Task _tail = Task.CompletedTask;
    long _sent, _applied;

    /// <param name="send">Posts one message to the peer; throws (<see cref="IclLinkDownException"/>) when the
    /// link is down or the peer cannot be reached (the change then stays local).</param>
    public MirroredReservationStore(Func<ReservationStateMessage, ValueTask> send)
    {
        ArgumentNullException.ThrowIfNull(send);
        _send = send;
    }

    public event Action<string, PrSnapshot>? Changed;

    /// <summary>Changes sent to the peer (those dropped because the link was down are not counted).</summary>
    public long Sent => Interlocked.Read(ref _sent);
    /// <summary>States received from the peer and applied.</summary>
    public long Applied => Interlocked.Read(ref _applied);

    public PrSnapshot? Load(string volumeName)
    {
        lock (_lock) return _snapshots.TryGetValue(volumeName, out var s) ? s : null;
    }

    public ValueTask SaveAsync(string volumeName, PrSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        Task sent;
        lock (_lock)
        {
            _snapshots[volumeName] = snapshot;
            sent = _tail = SendAfterAsync(_tail, ToMessage(volumeName, snapshot, sync: false));
        }
        Changed?.Invoke(volumeName, snapshot);
        return new ValueTask(sent);
    }

    async Task SendAfterAsync(Task previous, ReservationStateMessage message)
    {
        await previous.ConfigureAwait(false); // never faults: see below
        try
        {
            await _send(message).ConfigureAwait(false);
            Interlocked.Increment(ref _sent);
        }
        catch (Exception e) when (e is not Duet.Core.InvariantViolationException)
        {
            // The peer is not there (IclLinkDownException: link down, window full past the post timeout, peer
            // fenced): the change is ours alone until the pair forms again (then the owner's state wins).
        }
    }

    /// <summary>A state the peer sent: replaces ours for that volume.</summary>
    public void Apply(ReservationStateMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        var snapshot = ToSnapshot(message);
        lock (_lock) _snapshots[message.Volume] = snapshot;
        Interlocked.Increment(ref _applied);
        Changed?.Invoke(message.Volume, snapshot);
    }

    /// <summary>The whole state of every volume this store holds state for, as the pairing sync sends it.</summary>
    public IReadOnlyList<ReservationStateMessage> SyncMessages()
    {
        lock (_lock) return [.. _snapshots.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => ToMessage(kv.Key, kv.Value, sync: true))];
    }

    /// <summary>The whole state of one volume (empty if none), as the owner answers a pairing sync.</summary>
    public ReservationStateMessage SyncMessage(string volume)
    {
        lock (_lock) return ToMessage(volume, _snapshots.TryGetValue(volume, out var s) ? s : PrSnapshot.Empty, sync: true);
    }

    /// <summary>Waits for every change saved so far to have been sent (or dropped with the link down).</summary>
    public Task FlushAsync()
    {
        lock (_lock) return _tail;
    }

    public static ReservationStateMessage ToMessage(string volume, PrSnapshot s, bool sync)
    {
        var regs = new ReservationRegistration[s.Registrations.Count];
        for (int i = 0; i < regs.Length; i++)
        {
            var r = s.Registrations[i];
            regs[i] = new ReservationRegistration(r.InitiatorName, r.Isid, r.TargetPortGroup, r.RelativeTargetPort, r.Key);
        }
        bool single = s.Type is not (PrType.None or PrType.WriteExclusiveAllRegistrants or PrType.ExclusiveAccessAllRegistrants);
        return new ReservationStateMessage(volume, s.Generation, s.Aptpl, (byte)s.Type, single ? s.HolderIndex : -1, regs, sync);
    }

    public static PrSnapshot ToSnapshot(ReservationStateMessage m)
    {
        var regs = new PrRegistration[m.Registrations.Count];
        for (int i = 0; i < regs.Length; i++)
        {
            var r = m.Registrations[i];
            regs[i] = new PrRegistration(r.InitiatorName, r.Isid, r.TargetPortGroup, r.RelativeTargetPort, r.Key);
        }
        return new PrSnapshot(m.Generation, m.Aptpl, regs, (PrType)m.Type, m.HolderIndex);
    }
}
