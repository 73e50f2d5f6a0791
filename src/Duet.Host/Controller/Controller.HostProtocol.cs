using Duet.Core;
using Duet.HostProtocol;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Shelf;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

// Duet's host protocol served by the controller (SPEC FO-3..FO-6; docs/internals/host-protocol.md).
//
// One CommandHandshake per controller. Its seams are bound here:
//  - SendToPartner: a HandshakeMessage as one ICL message (command queue), stamped with our epoch so a
//    fenced peer's messages fall below the survivor's epoch floor. It throws when the link is down, the
//    peer's window stays full past the post timeout, or the peer is fenced (its session is dead): the
//    handshake then knows the partner is unreachable (a primary executes at once).
//  - IsPrimaryFor: this controller serves the volume's array.
//  - Execute: against Volumes, the catalog the units attach from: a served volume goes through the cache
//    and the serve gate (the lease, FO-7); the peer's volume is forwarded to it (the secondary runs a
//    command only after the takeover, so by then the volume is served here).
//  - FencePrimaryAndTakeOver: the FO-2 takeover (fence at the shelf, claim, adopt). It returns once the
//    peer is fenced and its arrays are ours, whether this call or a heartbeat-driven takeover did it, and
//    throws otherwise, so the handshake never runs a command beside a primary that may still write.
//    Without a shelf there is no fence, so it always throws: the secondary then never runs a command;
//    the primary's run is the only one (a primary that hangs leaves the host to time out and retry).
//  - Table: the controller's NVRAM table of finished host commands and its copy of the peer's
//    (Controller.HostTags.cs), so a write re-issued after a restart, a power cut or a takeover runs at most once.
//
// The units (HostUnitServer, two per controller) are the shell's (ControllerServer); the handshake is
// the controller's, so the ICL dispatcher reaches it and the simulator could drive it on virtual time.
public sealed partial class Controller
{
    /// <summary>The FO-3..FO-6 command handshake of this controller; its units hand every host command to it.</summary>
    public CommandHandshake Handshake { get; }

    CommandHandshake CreateHandshake()
    {
        var limit = Failover.HostCommandTimeLimit;
        return new CommandHandshake(new CommandHandshakeOptions
        {
            SendToPartner = SendHandshakeAsync,
            IsPrimaryFor = volume => Arrays.TryGetServedVolume(volume, out _),
            Execute = ExecuteHostCommandAsync,
            FencePrimaryAndTakeOver = FencePrimaryForHandshakeAsync,
            TimeLimit = limit,
            ReadyWait = limit / 3,
            MaxClockSkew = TimeSpan.FromTicks(Math.Min(CommandHandshakeOptions.DefaultTimeLimit.Ticks / 6, limit.Ticks / 4)),
            Time = _options.Time,
            Table = this,
            Observer = _options.HandshakeObserver,
            MayHoldCommands = () => !_standby && !_steppedDown,
        });
    }

    /// <summary>Runs a host command against <see cref="Volumes"/>. An error from a controller whose port the shelf
    /// has fenced (the peer took over; we learn it at our next heartbeat) is not the volume's: its drives refused
    /// us, and the survivor serves the volume. The host is told Unavailable (try again, on the other unit), not an
    /// I/O error that would be final for it. The same for an answer about what this controller serves (an I/O or
    /// medium error, no such volume) given without a lease, or while the shelf cannot say whether we are fenced:
    /// a fenced controller whose shelf path is down drops its arrays' members one by one ("port fenced") until the
    /// arrays fail and their volumes leave its catalog, and "no such volume" was final for a multicast write the
    /// survivor serves (simulator `failover,multicast --ops 1000` seed 9509).</summary>
    async ValueTask<HostCompletion> ExecuteHostCommandAsync(HostCommand command, CancellationToken ct)
    {
        var completion = await HostCommandExecutor.ExecuteAsync(Volumes, command, ct);
        if (completion.Status is HostStatus.Ok or HostStatus.Unavailable || Shelf is null) return completion;
        bool servesAnswer = completion.Status is HostStatus.IoError or HostStatus.MediumError or HostStatus.NoSuchVolume;
        bool fenced = _steppedDown || (servesAnswer && !HoldsLease);
        if (!fenced)
        {
            try { fenced = (await Shelf.StatusAsync(ct)).Port(Name).Fenced; }
            catch (ShelfException) { fenced = servesAnswer; }
        }
        return fenced ? HostCompletion.Error(command.Request.HostTag, HostStatus.Unavailable) : completion;
    }

    // The handshake's messages go out in the order they were sent, through one queue: a step that fits a
    // HandshakeBatch (ready, ready, ack, completed without a frame) joins the steps queued behind it, and the
    // run goes as one message when the link takes the next post (what queued while the last one was on the link,
    // as the coherency log's filling list). Under load that is 20 bytes a step instead of a 44-byte message and
    // a doorbell each; alone, a step goes at once, as one message.
    readonly Lock _handshakeSendLock = new();
    readonly Queue<(HandshakeMessage Message, TaskCompletionSource Posted)> _handshakeSends = new();
    bool _handshakePumping;
    long _handshakeBatches, _handshakeSteps;

    /// <summary>HandshakeBatch messages posted, and the steps they carried.</summary>
    public (long Batches, long Steps) HandshakeBatching => (Interlocked.Read(ref _handshakeBatches), Interlocked.Read(ref _handshakeSteps));

    async ValueTask SendHandshakeAsync(HandshakeMessage message)
    {
        if (_peerFenced) throw new IclLinkDownException($"controller {PeerName} is fenced: its session is dead");
        var posted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool pump;
        lock (_handshakeSendLock)
        {
            _handshakeSends.Enqueue((message, posted));
            pump = !_handshakePumping;
            _handshakePumping = true;
        }
        // The pump runs on its own: this sender waits for its own step only, not for the steps queued behind it.
        if (pump) _ = PumpHandshakesAsync();
        await posted.Task;
    }

    /// <summary>Posts what is queued, in order, until nothing is; the sender that found the queue idle starts it.</summary>
    async Task PumpHandshakesAsync()
    {
        // Let the sender go on first: the steps it (a unit reading a burst of host frames) and others send
        // meanwhile join this run.
        await Task.Yield();
        var run = new List<(HandshakeMessage Message, TaskCompletionSource Posted)>();
        while (true)
        {
            run.Clear();
            lock (_handshakeSendLock)
            {
                if (_handshakeSends.Count == 0)
                {
                    _handshakePumping = false;
                    return;
                }
                run.Add(_handshakeSends.Dequeue());
                if (HandshakeStep.Fits(run[0].Message))
                    while (run.Count < HandshakeBatch.StepsMax && _handshakeSends.TryPeek(out var next) && HandshakeStep.Fits(next.Message))
                        run.Add(_handshakeSends.Dequeue());
            }
            try
            {
                if (_peerFenced) throw new IclLinkDownException($"controller {PeerName} is fenced: its session is dead");
                byte[] bytes;
                if (HandshakeStep.Fits(run[0].Message))
                {
                    bytes = DuetFrame.ToArray(new HandshakeBatch([.. run.Select(r => HandshakeStep.Of(r.Message))]));
                    Interlocked.Increment(ref _handshakeBatches);
                    Interlocked.Add(ref _handshakeSteps, run.Count);
                }
                else bytes = DuetFrame.ToArray(run[0].Message);
                await Link.PostAsync(IclSignal.Message, Nvram.Epoch, bytes, default);
                foreach (var r in run) r.Posted.TrySetResult();
            }
            catch (Exception e)
            {
                foreach (var r in run) r.Posted.TrySetException(e);
                if (e is InvariantViolationException)
                {
                    // A broken invariant ends the pump; the next sender starts another rather than wait for ever.
                    lock (_handshakeSendLock) _handshakePumping = false;
                    throw;
                }
            }
        }
    }

    /// <summary>A batch of handshake steps from the peer, applied in order (not awaited, as <see cref="OnHostHandshake"/>).</summary>
    void OnHandshakeBatch(ReadOnlySpan<byte> bytes)
    {
        if (HandshakeBatch.TryDecode(bytes, out var batch, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("host handshake batch", error.ToString());
            return;
        }
        foreach (var step in batch!.Steps) _ = ReceiveHandshakeAsync(step.ToMessage());
    }

    /// <summary>A handshake message from the peer. Not awaited by the dispatcher: answering it may post to
    /// the peer, and two dispatchers each waiting for window space in the other's queue would stall both.</summary>
    void OnHostHandshake(ReadOnlyMemory<byte> bytes)
    {
        if (HandshakeMessage.TryDecode(bytes.Span, out var message, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("host handshake", error.ToString());
            return;
        }
        _ = ReceiveHandshakeAsync(message!);
    }

    async Task ReceiveHandshakeAsync(HandshakeMessage message)
    {
        try { await Handshake.ReceiveAsync(message); }
        catch (Exception e) when (e is not InvariantViolationException) { LogHandshakeFailed(message.Phase.ToString(), e.Message); }
    }

    /// <summary>FO-5: the secondary's limit passed. Fence the primary and own its arrays (FO-2); returns only
    /// when that is done, here or by a takeover already under way.</summary>
    async Task FencePrimaryForHandshakeAsync(CancellationToken ct)
    {
        if (Shelf is null) throw new InvalidOperationException($"controller {Name} has no shelf: it cannot fence controller {PeerName}");
        if (!_peerFenced) LogLimitReached(PeerName, Failover.HostCommandTimeLimit.TotalMilliseconds);
        await TakeOverAsync($"FO-5: a host command was not completed by controller {PeerName} within {Failover.HostCommandTimeLimit.TotalMilliseconds:F0} ms of its host timestamp");
        // A takeover started by the heartbeats may be running: TakeOverAsync returned at once. Wait for it.
        while (Volatile.Read(ref _takingOver) != 0)
        {
            if (_steppedDown) break;
            await Waits.OrCancel(Volatile.Read(ref _beatDone).Task, ct);
        }
        if (_steppedDown) throw new InvalidOperationException($"controller {Name} stepped down: {_stepDownReason}");
        if (_standby) throw new InvalidOperationException($"controller {Name} is standby: it owns no arrays");
        if (!_peerFenced) throw new InvalidOperationException($"controller {Name} could not fence controller {PeerName}");
    }

    [LoggerMessage(EventId = 7045, Level = LogLevel.Warning, Message = "FO-5: a host command was not completed by controller {Peer} within {LimitMs:F0} ms of its host timestamp: fencing it")]
    partial void LogLimitReached(string peer, double limitMs);
    [LoggerMessage(EventId = 7046, Level = LogLevel.Warning, Message = "host handshake message ({Phase}) failed: {Error}")]
    partial void LogHandshakeFailed(string phase, string error);
}
