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
    /// I/O error that would be final for it.</summary>
    async ValueTask<HostCompletion> ExecuteHostCommandAsync(HostCommand command, CancellationToken ct)
    {
        var completion = await HostCommandExecutor.ExecuteAsync(Volumes, command, ct);
        if (completion.Status is HostStatus.Ok or HostStatus.Unavailable || Shelf is null) return completion;
        bool fenced = _steppedDown;
        if (!fenced)
        {
            try { fenced = (await Shelf.StatusAsync(ct)).Port(Name).Fenced; }
            catch (ShelfException) { }
        }
        return fenced ? HostCompletion.Error(command.Request.HostTag, HostStatus.Unavailable) : completion;
    }

    async ValueTask SendHandshakeAsync(HandshakeMessage message)
    {
        if (_peerFenced) throw new IclLinkDownException($"controller {PeerName} is fenced: its session is dead");
        await Link.PostAsync(IclSignal.Message, Nvram.Epoch, DuetFrame.ToArray(message), default);
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
