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
///
/// APTPL (SPC-4 5.12.4): the states whose APTPL is set are written whole to the injected
/// <see cref="IReservationPersistence"/> (<see cref="ReservationFile"/>: a file next to the NVRAM, with
/// a CRC32C) whenever one of them changes, before the change is sent or completes, and loaded when the
/// store is built. States without APTPL are lost with the controller's power, as SPC-4 says.
/// No clocks, threads or sockets: sending and persisting are injected (the controller posts on the ICL,
/// the shell writes the file).
/// </summary>
public sealed class MirroredReservationStore : IReservationStore, IUnitResetRelay
{
    readonly Lock _lock = new();
    readonly Dictionary<string, PrSnapshot> _snapshots = new(StringComparer.Ordinal);
    readonly Func<ReservationStateMessage, ValueTask> _send;
    readonly IReservationPersistence? _persistence;
    readonly Func<ScsiStateUpdate, ValueTask>? _sendUpdate;
    Task _tail = Task.CompletedTask;
    long _sent, _applied, _persisted, _resetsSent, _resetsApplied;

    /// <param name="send">Posts one message to the peer; throws (<see cref="IclLinkDownException"/>) when the
    /// link is down or the peer cannot be reached (the change then stays local).</param>
    /// <param name="persistence">Where APTPL states survive a power loss (null: nowhere).</param>
    /// <param name="sendUpdate">Posts a logical unit reset (<see cref="ScsiStateUpdate"/>, kind
    /// <see cref="ScsiStateKind.UnitReset"/>) to the peer, in the same order as the states, and throws as
    /// <paramref name="send"/> does (null: resets stay here).</param>
    public MirroredReservationStore(Func<ReservationStateMessage, ValueTask> send, IReservationPersistence? persistence = null,
        Func<ScsiStateUpdate, ValueTask>? sendUpdate = null)
    {
        ArgumentNullException.ThrowIfNull(send);
        _send = send;
        _sendUpdate = sendUpdate;
        _persistence = persistence;
        if (persistence?.Read() is not { } bytes) return;
        if (!ReservationFile.TryDecode(bytes, out var states, out var why))
        {
            LoadError = why;
            return;
        }
        foreach (var m in states) _snapshots[m.Volume] = ToSnapshot(m);
    }

    /// <summary>Why the persisted APTPL state was not used (null: it was, or there was none).</summary>
    public string? LoadError { get; }
    /// <summary>Times the APTPL state was written.</summary>
    public long Persisted => Interlocked.Read(ref _persisted);

    /// <summary>Writes the APTPL states if <paramref name="before"/> or <paramref name="after"/> is one (caller holds the lock).</summary>
    void PersistIfAptpl(PrSnapshot? before, PrSnapshot after)
    {
        if (_persistence is null || !(after.Aptpl || before?.Aptpl == true)) return;
        var states = _snapshots.Where(kv => kv.Value.Aptpl).OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => ToMessage(kv.Key, kv.Value with { Spc2Holder = null }, sync: false)).ToList(); // SPC-2 reservations end with the power
        _persistence.Write(ReservationFile.Encode(states));
        Interlocked.Increment(ref _persisted);
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
        // The send takes its place in the chain under the lock (the order of the changes) and starts outside it
        // (the link's code never runs under our lock), once the send before it is done.
        Task previous;
        var done = new TaskCompletionSource();
        lock (_lock)
        {
            _snapshots.TryGetValue(volumeName, out var before);
            _snapshots[volumeName] = snapshot;
            PersistIfAptpl(before, snapshot);
            previous = _tail;
            _tail = done.Task;
        }
        var message = ToMessage(volumeName, snapshot, sync: false);
        var sent = SendAfterAsync(previous, () => _send(message), () => Interlocked.Increment(ref _sent), done);
        Changed?.Invoke(volumeName, snapshot);
        return new ValueTask(sent);
    }

    public event Action<string?>? ResetElsewhere;

    /// <summary>Logical unit resets sent to the peer; received from it and raised.</summary>
    public long ResetsSent => Interlocked.Read(ref _resetsSent);
    public long ResetsApplied => Interlocked.Read(ref _resetsApplied);

    /// <summary>A LUN (null: every LUN) was reset here: the peer is told, after every change saved before it; the
    /// task completes when it has been (or could not be: the peer is not there, and then it has no nexuses to tell).</summary>
    public ValueTask RelayResetAsync(string? volumeName)
    {
        if (_sendUpdate is null) return ValueTask.CompletedTask;
        var message = new ScsiStateUpdate(ScsiStateKind.UnitReset, volumeName is null ? Array.Empty<byte>() : System.Text.Encoding.UTF8.GetBytes(volumeName));
        Task previous;
        var done = new TaskCompletionSource();
        lock (_lock)
        {
            previous = _tail;
            _tail = done.Task;
        }
        return new ValueTask(SendAfterAsync(previous, () => _sendUpdate(message), () => Interlocked.Increment(ref _resetsSent), done));
    }

    /// <summary>A reset the peer made (null: of every LUN): raised for the device server.</summary>
    public void ApplyReset(string? volumeName)
    {
        Interlocked.Increment(ref _resetsApplied);
        ResetElsewhere?.Invoke(volumeName);
    }

    async Task SendAfterAsync(Task previous, Func<ValueTask> send, Action sent, TaskCompletionSource done)
    {
        await previous.ConfigureAwait(false); // never faults: see below
        try
        {
            await send().ConfigureAwait(false);
            sent();
        }
        catch (Exception e) when (e is not Duet.Core.InvariantViolationException)
        {
            // The peer is not there (IclLinkDownException: link down, window full past the post timeout, peer
            // fenced): the change is ours alone until the pair forms again (then the owner's state wins).
        }
        finally { done.SetResult(); }
    }

    /// <summary>A state the peer sent: replaces ours for that volume.</summary>
    public void Apply(ReservationStateMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        var snapshot = ToSnapshot(message);
        lock (_lock)
        {
            _snapshots.TryGetValue(message.Volume, out var before);
            _snapshots[message.Volume] = snapshot;
            PersistIfAptpl(before, snapshot);
        }
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
        var h = s.Spc2Holder;
        return new ReservationStateMessage(volume, s.Generation, s.Aptpl, (byte)s.Type, single ? s.HolderIndex : -1, regs, sync,
            h is null ? null : new ReservationRegistration(h.InitiatorName, h.Isid, h.TargetPortGroup, h.RelativeTargetPort, 0));
    }

    public static PrSnapshot ToSnapshot(ReservationStateMessage m)
    {
        var regs = new PrRegistration[m.Registrations.Count];
        for (int i = 0; i < regs.Length; i++)
        {
            var r = m.Registrations[i];
            regs[i] = new PrRegistration(r.InitiatorName, r.Isid, r.TargetPortGroup, r.RelativeTargetPort, r.Key);
        }
        var h = m.Spc2Holder;
        return new PrSnapshot(m.Generation, m.Aptpl, regs, (PrType)m.Type, m.HolderIndex,
            h is null ? null : new ItNexus(h.InitiatorName, h.Isid, h.TargetPortGroup, h.RelativeTargetPort));
    }
}
