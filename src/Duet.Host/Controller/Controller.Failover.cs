using Duet.Cache;
using Duet.Cache.Mirror;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Raid.Management;
using Duet.Shelf;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

/// <summary>Heartbeats, leases and takeover (issue 5; SPEC FO-1, FO-2, FO-7).</summary>
public sealed record FailoverOptions
{
    /// <summary>How often a heartbeat goes out on each path (the ICL and the shelf's heartbeat slot).</summary>
    public TimeSpan HeartbeatPeriod { get; init; } = TimeSpan.FromMilliseconds(100);
    /// <summary>Silence on both paths for this long is a dead peer. A controller serves only while it heard its
    /// peer or the shelf within half of it (its lease).</summary>
    public TimeSpan HeartbeatTimeout { get; init; } = TimeSpan.FromSeconds(1);
    /// <summary>A peer never heard since this controller started is given this long before it is taken over
    /// (two controllers started together must not fence each other while one is still starting).</summary>
    public TimeSpan StartGrace { get; init; } = TimeSpan.FromSeconds(3);
    /// <summary>How long a host request waits for a lease before it fails with an I/O error.</summary>
    public TimeSpan LeaseWait { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>FO-5: how long after a host sent a command the secondary waits for the primary to complete it
    /// before it fences the primary and runs the command itself. Never below the heartbeat timeout: a primary
    /// the heartbeats still call alive is given at least as long as a dead one.</summary>
    public TimeSpan HostCommandTimeLimit { get; init; } = Duet.HostProtocol.CommandHandshakeOptions.DefaultTimeLimit;
    /// <summary>Failback: whether this controller gives the arrays it serves whose preferred owner is its peer back by
    /// itself (<see cref="FailbackMode.Auto"/>) or only when an operator moves them. Manual by default: see
    /// docs/internals/cache-mirroring.md ("Failback") for why.</summary>
    public FailbackMode Failback { get; init; } = FailbackMode.Manual;
    /// <summary>With <see cref="FailbackMode.Auto"/>: how long the pair must have been healthy, without a break, before
    /// an array goes back to its preferred owner.</summary>
    public TimeSpan FailbackSettle { get; init; } = DefaultFailbackSettle;
    public static readonly TimeSpan DefaultFailbackSettle = TimeSpan.FromSeconds(10);

    public void Validate()
    {
        if (HeartbeatPeriod <= TimeSpan.Zero) throw new ArgumentException("the heartbeat period must be positive");
        if (HeartbeatTimeout < 2 * HeartbeatPeriod)
            throw new ArgumentException($"the heartbeat timeout ({HeartbeatTimeout.TotalMilliseconds} ms) must be at least two periods ({2 * HeartbeatPeriod.TotalMilliseconds} ms)");
        if (HostCommandTimeLimit < HeartbeatTimeout)
            throw new ArgumentException($"the host command time limit ({HostCommandTimeLimit.TotalMilliseconds} ms) must be at least the heartbeat timeout ({HeartbeatTimeout.TotalMilliseconds} ms)");
        if (FailbackSettle < TimeSpan.Zero) throw new ArgumentException($"the failback settle time ({FailbackSettle.TotalMilliseconds} ms) must not be negative");
    }
}

// How a controller decides its peer is dead, and what it does then.
//
// Two heartbeat paths, each a request and an answer, every HeartbeatPeriod:
//  - the ICL: a Heartbeat message; the peer answers on its reply queue with our own timestamp echoed;
//  - the shelf: our port writes a fresh number into its heartbeat slot and reads both slots back.
// A path "hears" the peer when its Heartbeat message arrives, or when the peer's shelf slot is seen
// to change. The lease: an answer to a heartbeat we sent at time t (from the peer, or the shelf
// accepting our slot write) proves the other side knew us alive at t; we hold the lease until
// t + timeout/2. Host requests wait for the lease (CachedVolume asks ServeGateAsync).
//
// The peer is declared dead only if (1) no ICL heartbeat of it arrived for the timeout, and (2) a
// shelf read that we *issued* at least the timeout after the last change of its slot still saw no
// change. (2) is what keeps a pause of our own (GC, SIGSTOP, a slow host) from looking like the
// peer's death: after the pause our first shelf read sees every beat the peer wrote meanwhile. And
// without the shelf there is no takeover at all: the takeover begins with a fence at the shelf.
//
// Takeover: fence the peer's port at the shelf (which waits out its accepted writes); drop
// everything the peer sends from then on (the epoch floor); claim its arrays at the shelf at new
// epochs; write ourselves into their superblocks and assemble them; adopt the peer's mirrored
// elements (our NVRAM region 2) into our cache in sequence order as replayed elements, which
// destage as recovery writes; serve (requests to the taken arrays waited at the serve gate until
// now); destage in the background.
//
// A controller that finds its port fenced steps down (SteppedDown): its process exits and is
// restarted. At start, a fenced controller discards both NVRAM regions and waits as standby; the
// owner lifts the fence when it hears a hello from a new session of it (the old, fenced session's
// messages are below the epoch floor), and the standby then registers and rescans the drives.
public sealed partial class Controller
{
    FailoverOptions Failover => _options.Failover;
    IShelfPort? Shelf => _options.Shelf;
    ShelfClaims? Claims => _options.Claims;

    long _startedAt;             // timestamp ticks
    long _leaseUntil;            // timestamp ticks; the lease is held while now < this
    long _peerIclHeardAt;        // last Heartbeat message of the peer
    bool _peerDeparted;          // the shelf's last status: every connection of the peer's port closed (PortState.Departed)
    long _iclQuietSince;         // the peer's last ICL contact as our beats saw it, or later: our start or a pause of our own (0: contact since our last beat)
    long _lastBeatAt;
    long _peerSlotChangedAt;     // when the last shelf read that saw the peer's slot change was issued
    ulong _peerSlot;
    ulong _shelfBoot;
    bool _peerSlotSeen;
    bool _peerHeard;             // ever, on either path, in this run
    long _lastShelfReadIssuedAt = long.MinValue;
    ulong _beat;
    bool _shelfLost;
    long _heartbeats;
    ulong _epochFloor;           // transfers stamped below this come from a fenced peer session: dropped
    long _staleDropped;
    volatile bool _peerFenced;
    volatile bool _peerRegistered = true; // as the last heartbeat found it: a standby is not, until it rejoins
    volatile bool _standby;      // our port is fenced: no arrays, no NVRAM, waiting to be let back in
    volatile bool _steppedDown;
    string? _stepDownReason;
    int _takingOver;
    long _takeovers;
    TakeoverInfo? _lastTakeover;
    long _lastHeardAtTakeover;
    HashSet<byte>? _adopting;    // array numbers being taken over: their requests wait
    TaskCompletionSource _beatDone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Raised once when the controller finds itself fenced: it serves nothing more and its process
    /// should exit (the supervisor restarts it; it rejoins as standby).</summary>
    public event Action<string>? SteppedDown;

    public bool IsSteppedDown => _steppedDown;
    /// <summary>Taking the peer's arrays over: they are assembled here, but their requests wait until it is done.</summary>
    public bool IsAdoptingPeerArrays => Volatile.Read(ref _adopting) is not null;
    public bool IsStandby => _standby;
    public bool PeerFenced => _peerFenced;
    public long Takeovers => Interlocked.Read(ref _takeovers);
    /// <summary>Takeovers decided (each may still be running); the simulator judges a takeover when it is decided.</summary>
    public long TakeoverDecisions => Interlocked.Read(ref _decisions);
    long _decisions;
    public long StaleTransfersDropped => Interlocked.Read(ref _staleDropped);
    /// <summary>Host requests answered while this controller held no lease: must stay 0 (the simulator checks it).</summary>
    public long ServedWithoutLease => Interlocked.Read(ref _servedWithoutLease);
    long _servedWithoutLease;
    public TakeoverInfo? LastTakeover => Volatile.Read(ref _lastTakeover);

    long Now => _options.Time.GetTimestamp();
    TimeSpan Since(long ticks) => _options.Time.GetElapsedTime(ticks);

    /// <summary>Whether this controller may answer hosts now: no shelf configured (a single controller, or
    /// the pair without failover), or a lease held and not stepped down.</summary>
    public bool HoldsLease => Shelf is null || (!_steppedDown && !_standby && Now < Volatile.Read(ref _leaseUntil));

    /// <summary>
    /// Registers a controller's port at the shelf before its array manager reads any drive. Returns false
    /// if the port is fenced (the controller was declared dead while it was away): it must not register,
    /// and starts as standby.
    /// </summary>
    public static async Task<bool> JoinShelfAsync(IShelfPort shelf, ulong session, TimeProvider time, ShelfClaims claims, CancellationToken ct = default)
    {
        // A controller that cannot reach its shelf waits for it: it can do nothing useful without it.
        while (true)
        {
            try
            {
                claims.Replace((await shelf.StatusAsync()).Claims);
                return await TryJoinShelfAsync(shelf, session);
            }
            catch (ShelfException e) when (e.Error == ShelfError.Unreachable) { await time.DelayAsync(TimeSpan.FromMilliseconds(100), ct); }
        }
    }

    static async Task<bool> TryJoinShelfAsync(IShelfPort shelf, ulong session)
    {
        var status = await shelf.StatusAsync();
        if (status.Port(shelf.PortName).Fenced) return false;
        await shelf.RegisterAsync(session | 1);
        if (!status.Port(shelf.PortName).Enabled) await shelf.SetEnabledAsync(true);
        if (status.ReservationHolder == 0)
        {
            try { await shelf.ReserveAsync(); }
            catch (ShelfException e) when (e.Error == ShelfError.ReservationConflict) { } // the peer took it first: fine (registrants only)
        }
        return true;
    }

    /// <summary>
    /// Opens the array manager over a shelf port, again and again while the path to the shelf is down
    /// (<see cref="BlockErrorKind.PathDown"/>: assembling then would find every array without its members).
    /// </summary>
    public static async Task<ArrayManager> OpenArraysAsync(ArrayManagerOptions options, TimeProvider time, CancellationToken ct = default)
    {
        while (true)
        {
            try { return await ArrayManager.OpenAsync(options, ct); }
            catch (BlockIoException e) when (e.Kind == BlockErrorKind.PathDown) { await time.DelayAsync(TimeSpan.FromMilliseconds(100), ct); }
        }
    }

    /// <summary>What replay keeps, decided at the shelf: nothing if our port is fenced (we were declared dead
    /// and taken over: the survivor adopted our mirrored elements, and owns our arrays at a later epoch),
    /// else everything. The fence is the epoch check: a controller's arrays change owner without it only
    /// by a move, which destages and forgets their elements first.</summary>
    async Task DecideReplayAsync()
    {
        if (Shelf is null) return;
        ShelfStatus status;
        while (true)
        {
            try { status = await Shelf.StatusAsync(); break; }
            catch (ShelfException e) when (e.Error == ShelfError.Unreachable) { await _options.Time.DelayAsync(TimeSpan.FromMilliseconds(100)); }
        }
        var mine = status.Claims.Where(c => c.Owner == Name).Select(c => c.Epoch).DefaultIfEmpty(0UL).Max();
        // What the shelf says of our mirror outlives a process: the first mirrored acknowledgement must clear it.
        _markedStale = status.Port(Name).MirrorStale;
        _logMarkedStale = status.Port(Name).LogStale;
        _peerFencedAtStart = !status.Port(Name).Fenced && status.Port(PeerName).Fenced;
        if (status.Port(Name).Fenced)
        {
            _standby = true;
            // What the array manager assembled before the fence came (the peer may have taken us over
            // while we were starting) is not ours.
            await Arrays.ForgetServedAsync();
            int discarded = Nvram.Own.ReplayOrder().Count;
            Nvram.Own.Clear();
            Nvram.Peer.Clear();
            WriteLog.DiscardOwn();
            WriteLog.ClearAllMirrored();
            // The tables of finished host commands stay: they say what ran, which stays true; the
            // survivor's copy of ours is refreshed when we pair, and a host may still re-issue to us.
            // Our messages must clear the survivor's epoch floor when we come back.
            if (status.EpochCounter > Nvram.Epoch) Nvram.Epoch = status.EpochCounter;
            LogStandby(status.EpochCounter, discarded);
            return;
        }
        if (mine > Nvram.Epoch) Nvram.Epoch = mine;
    }

    void StartFailover()
    {
        if (Shelf is null) return;
        Failover.Validate();
        _startedAt = _peerIclHeardAt = _peerSlotChangedAt = Now;
        _beat = Session << 16;
        _failback = new FailbackPolicy(Failover.Failback, Failover.FailbackSettle, PeerName, _options.Time);
        _ = HeartbeatLoopAsync();
    }

    async Task HeartbeatLoopAsync()
    {
        var ct = _stopping.Token;
        while (!ct.IsCancellationRequested && !_steppedDown)
        {
            try { await BeatAsync(); }
            catch (Exception e) when (e is not OperationCanceledException) { LogHeartbeatFailed(e.Message); }
            WakeWaiters();
            try { await _options.Time.DelayAsync(Failover.HeartbeatPeriod, ct); }
            catch (OperationCanceledException) { return; }
        }
    }

    async Task BeatAsync()
    {
        Interlocked.Increment(ref _heartbeats);
        // The ICL's evidence of silence is counted from our own beats: a beat long after the previous one
        // means we were stopped ourselves (GC, SIGSTOP), and what the peer sent meanwhile is still queued
        // for us; the count starts again.
        long now = Now;
        bool wePaused = _lastBeatAt != 0 && _options.Time.GetElapsedTime(_lastBeatAt, now) > 3 * Failover.HeartbeatPeriod;
        _lastBeatAt = now;
        // Otherwise silence counts from the contact itself, not from this beat: counted from the first beat after it,
        // a peer that died just after answering our beat was declared dead a whole period late.
        if (wePaused) Volatile.Write(ref _iclQuietSince, now);
        else if (Volatile.Read(ref _iclQuietSince) == 0) Volatile.Write(ref _iclQuietSince, Math.Min(now, Volatile.Read(ref _peerIclHeardAt)));
        if (Link.IsUp && !_peerFenced) _ = SendIclHeartbeatAsync();
        var issued = Now;
        ShelfStatus status;
        try { status = await Shelf!.HeartbeatAsync(++_beat); }
        catch (ShelfException e) when (e.Error == ShelfError.Fenced)
        {
            if (_standby && _joinedWhileStandby)
            {
                // Fenced again after our fence had been lifted and we had registered (the rejoin was under way): the
                // owner will not lift a fence for this session's hello any more. A new session will be let back in.
                StepDown("this controller's port was fenced again while it rejoined: the peer took over");
                return;
            }
            if (_standby)
            {
                // Still fenced: the owner lifts it when it hears our hello, which must carry an epoch at
                // least the owner's floor (the owner may have taken over again since we started).
                try
                {
                    var counter = (await Shelf!.StatusAsync()).EpochCounter;
                    if (counter > Nvram.Epoch) Nvram.Epoch = counter;
                }
                catch (ShelfException) { }
                return;
            }
            StepDown("this controller's port is fenced at the shelf: the peer took over");
            return;
        }
        catch (ShelfException e) when (e.Error is ShelfError.Unreachable or ShelfError.Disabled or ShelfError.NotRegistered)
        {
            if (!_shelfLost) LogShelfUnreachable(e.Message);
            _shelfLost = true;
            return;
        }
        if (_steppedDown) return;
        if (_standby)
        {
            // The fence is gone (the owner lifted it, or `duet shelf unfence`): register and look at the
            // drives again. Not awaited: the heartbeats never wait for a rescan.
            _ = TryRejoinAsync();
            return;
        }
        if (_shelfLost)
        {
            // The path is back: what the drives say was unreadable while it was down (a rescan then lost
            // sight of the peer's arrays); read them again.
            _shelfLost = false;
            _ = RescanAsync();
        }
        RenewLease(issued);
        var peer = status.Port(PeerName);
        // The shelf restarted since our last read: its slots started again from zero, and what we saw
        // before says nothing now (a beat of the peer in between may have been wiped).
        if (status.Boot != _shelfBoot)
        {
            _shelfBoot = status.Boot;
            _peerSlotSeen = false;
        }
        if (!_peerSlotSeen || peer.Heartbeat != _peerSlot)
        {
            if (_peerSlotSeen) _peerHeard = true;
            _peerSlotSeen = true;
            _peerSlot = peer.Heartbeat;
            // When the read was issued, not answered: silence is judged between the issue times of two reads, and
            // ten periods of reads are not always a round-trip longer than the timeout (the takeover came a whole
            // period late). The peer's beat may have landed up to a round-trip later; its lease (half the timeout
            // from when it sent that beat) is long gone by the time the timeout is reached either way.
            _peerSlotChangedAt = issued;
        }
        _lastShelfReadIssuedAt = issued;
        _peerFenced = peer.Fenced;
        _peerRegistered = peer.Key != 0 && peer.Enabled;
        _peerDeparted = peer.Departed;
        Claims?.Replace(status.Claims);
        await KeepClaimsAsync(status);
        // Not awaited: the heartbeats (and so our lease) go on while the takeover runs.
        if (ShouldTakeOver(out bool departed))
            _ = TakeOverAsync(departed
                ? $"controller {PeerName} closed every connection to the shelf and its ICL has been quiet for {IclQuiet.TotalMilliseconds:F0} ms"
                : $"no heartbeat from controller {PeerName} on the ICL or at the shelf for {Since(LastHeard).TotalMilliseconds:F0} ms " +
                $"(ICL quiet {IclQuiet.TotalMilliseconds:F1} ms, " +
                $"its shelf slot unchanged over {_options.Time.GetElapsedTime(_peerSlotChangedAt, _lastShelfReadIssuedAt).TotalMilliseconds:F1} ms of reads)");
        else EvaluateFailback();
    }

    void RenewLease(long sentAt)
    {
        long until = sentAt + (long)(Failover.HeartbeatTimeout.TotalSeconds / 2 * _options.Time.TimestampFrequency);
        long seen;
        do { seen = Volatile.Read(ref _leaseUntil); }
        while (until > seen && Interlocked.CompareExchange(ref _leaseUntil, until, seen) != seen);
    }

    long LastHeard => Math.Max(Volatile.Read(ref _peerIclHeardAt), _peerSlotChangedAt);

    /// <summary>How long our beats have found the ICL quiet: since the peer's last message, or since a pause of our own.
    /// (The contact's own time may be newer than the one the beat copied, if a heartbeat arrived meanwhile.)</summary>
    TimeSpan IclQuiet => Since(Math.Max(Volatile.Read(ref _iclQuietSince), Volatile.Read(ref _peerIclHeardAt)));

    static readonly TimeSpan TimerSlack = TimeSpan.FromMilliseconds(1);

    bool ShouldTakeOver(out bool departed)
    {
        departed = false;
        if (_peerFenced || _standby || _steppedDown || Volatile.Read(ref _takingOver) != 0) return false;
        // AW-6: not while this controller powers down, nor while the peer does (its "done" decides).
        if (_poweringDown || PeerInPowerFailWindow) return false;
        // Less a millisecond: the beats are timers, which fire up to a fraction of a millisecond early by the clock
        // they are judged on, so ten periods of them can add up to 999.9 ms and the takeover came a whole period
        // late. (The peer's lease, half the timeout, is long gone either way.)
        var timeout = Failover.HeartbeatTimeout - TimerSlack;
        if (!_peerHeard && Since(_startedAt) < Failover.StartGrace) return false;
        var iclQuiet = IclQuiet;
        // The peer's process is gone: the shelf saw every connection of its port close (none came since), and its
        // ICL heartbeats have stopped too (two periods missed). Both at once is a dead controller, not a slow one
        // (a hung process keeps its connections; a lost shelf path leaves its ICL beating): no need to wait out the
        // whole timeout, which was most of a takeover under load. The takeover fences it first as always, and waits
        // for the lease it may still hold (half a timeout from the fence) before it serves, unless the link proves its
        // process gone (TakeOverCoreAsync). Where the link can see the peer's process (both on one host), that proof
        // also stands in for the ICL's quiet: no need to wait two periods for it.
        if (_peerDeparted && (iclQuiet >= 2 * Failover.HeartbeatPeriod - TimerSlack || Link.PeerProcessGone))
        {
            departed = true;
            return true;
        }
        // The ICL: our beats have found no heartbeat of the peer for a whole timeout.
        // (The contact's own time may be newer than the one the beat copied, if a heartbeat arrived meanwhile.)
        if (iclQuiet < timeout) return false;
        // The shelf read that saw no change must have been issued a whole timeout after the last change.
        if (_options.Time.GetElapsedTime(_peerSlotChangedAt, _lastShelfReadIssuedAt) < timeout) return false;
        return true;
    }

    async Task SendIclHeartbeatAsync()
    {
        var hb = new Heartbeat(Side, HoldsLease, Nvram.Epoch, Now, Volatile.Read(ref _leaseUntil));
        await PostOrDropAsync(IclSignal.Message, DuetFrame.ToArray(hb));
    }

    /// <summary>A Heartbeat from the peer: it is alive; answer with its own timestamp, which renews its lease.</summary>
    void OnPeerHeartbeat(ReadOnlySpan<byte> message, bool reply)
    {
        if (Heartbeat.TryDecode(message, out var hb, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("heartbeat", error.ToString());
            return;
        }
        Volatile.Write(ref _peerIclHeardAt, Now);
        Volatile.Write(ref _iclQuietSince, 0);
        _peerLeaseHeld = hb.LeaseHeld;
        if (reply)
        {
            // The peer heard the heartbeat we sent at hb.TimestampTicks (our clock).
            if (Shelf is not null && !_steppedDown && !_standby) RenewLease(hb.TimestampTicks);
            return;
        }
        _peerHeard = true;
        // A peer we fenced gets no answer: an answer renews its lease (FO-7), and the takeover waits for that
        // lease to lapse before it serves the peer's arrays. (Its traffic falls below our epoch floor only once
        // the claims are made, after that wait.)
        if (_peerFenced) return;
        _ = PostOrDropAsync(IclSignal.Reply, DuetFrame.ToArray(hb with { Controller = Side, Epoch = Nvram.Epoch, LeaseHeld = HoldsLease }));
    }

    ControllerSide Side => Name == "A" ? ControllerSide.A : ControllerSide.B;

    /// <summary>
    /// Keeps the shelf's claims and the superblocks in step, every heartbeat: arrays this controller serves
    /// with no claim (new ones) are claimed in its name; a move of ours interrupted after its superblocks
    /// named the peer (we crashed) is finished by naming the peer at the shelf; an array the shelf gives
    /// us that we do not serve yet (the peer's notice was lost) is looked for. The NVRAM's epoch follows
    /// the largest claim this controller holds.
    /// </summary>
    async Task KeepClaimsAsync(ShelfStatus status)
    {
        var missing = new List<ulong>();
        foreach (var raid in Arrays.ServedArrays)
        {
            var serial = ArrayManager.SerialOf(raid.Uuid);
            if (status.Claim(serial) is null) missing.Add(serial);
        }
        var handedOver = new List<ulong>();
        bool lookAgain = false;
        if (Volatile.Read(ref _takingOver) == 0)
            foreach (var (_, a) in Arrays.ArrayTable)
            {
                if (status.Claim(a.Serial) is not { } c || Arrays.Serves(a.Name)) continue;
                bool givingUp;
                lock (_volumesLock) givingUp = _givingUp.Contains(a.Name);
                if (c.Owner == Name && a.Owner == PeerName && !givingUp) handedOver.Add(a.Serial);
                if (c.Owner == Name && a.Owner == Name) lookAgain = true;
            }
        var epochs = status.Claims.Where(c => c.Owner == Name).Select(c => c.Epoch).ToList();
        try
        {
            if (missing.Count > 0)
            {
                var mine = await Shelf!.ClaimAsync(missing);
                Claims?.Merge(mine);
                epochs.AddRange(mine.Select(c => c.Epoch));
            }
            if (handedOver.Count > 0) Claims?.Merge(await Shelf!.ClaimForAsync(PeerName, handedOver));
        }
        catch (ShelfException e) { LogShelfUnreachable(e.Message); }
        if (epochs.Count > 0 && epochs.Max() > Nvram.Epoch) Nvram.Epoch = epochs.Max();
        if (lookAgain) _ = RescanAsync();
    }

    /// <summary>The serve gate: a host request on array <paramref name="arrayNumber"/> waits here for a
    /// lease (and for a takeover of the array to finish). Fails with Unavailable once the controller has
    /// stepped down, or after <see cref="FailoverOptions.LeaseWait"/> without a lease.</summary>
    internal ValueTask ServeGateAsync(byte arrayNumber, CancellationToken ct)
    {
        if (Shelf is null) return ValueTask.CompletedTask;
        if (HoldsLease && !IsAdopting(arrayNumber)) return ValueTask.CompletedTask;
        return WaitToServeAsync(arrayNumber, ct);
    }

    bool IsAdopting(byte arrayNumber)
    {
        var adopting = Volatile.Read(ref _adopting);
        return adopting is not null && adopting.Contains(arrayNumber);
    }

    async ValueTask WaitToServeAsync(byte arrayNumber, CancellationToken ct)
    {
        var since = Now;
        while (true)
        {
            if (_steppedDown) throw new BlockIoException(BlockErrorKind.Unavailable, $"controller {Name} stepped down: {_stepDownReason}");
            if (HoldsLease && !IsAdopting(arrayNumber)) return;
            if (Since(since) >= Failover.LeaseWait)
                throw new BlockIoException(BlockErrorKind.Unavailable, $"controller {Name} holds no lease (it has heard neither its peer nor the shelf for {Failover.HeartbeatTimeout.TotalMilliseconds / 2:F0} ms)");
            await Waits.OrCancel(Volatile.Read(ref _beatDone).Task, ct);
        }
    }

    // The peer's copy of our cache (its region 2) is what it adopts if it takes us over. Once our mirror
    // has failed we acknowledge writes it never saw (write-through), and that copy can be older than the
    // drives: adopting it would write old data over acknowledged data. So before the first such
    // acknowledgement, we destage everything the copy may hold newer than the drives and then record
    // "mirror stale" at the shelf (the peer then adopts nothing); once the mirror is resynchronised,
    // before the first mirrored acknowledgement, we clear it. One gate serialises the two.
    readonly AsyncGate _staleGate = new(1, 1);
    Task? _staleMark;
    volatile bool _markedStale, _marking;

    /// <summary>A write is acknowledged only after this: with a healthy mirror, once the shelf no longer says
    /// our mirror is stale; in error-recovery mode, once it does (see above).</summary>
    internal async ValueTask AckGateAsync(CancellationToken ct)
    {
        if (Shelf is null) return;
        if (Mirror.Mode == MirrorMode.Healthy)
        {
            if (_markedStale || _marking) await ClearStaleAsync();
            return;
        }
        // A fenced peer cannot take us over: it discards its copy of us when it comes back, and we
        // record the copy stale before we lift its fence (UnfencePeerAsync). So after a takeover the
        // survivor acknowledges at once, without destaging what it adopted first.
        if (_peerFenced) return;
        try { await Waits.WithTimeout(StaleMarkAsync(), Failover.LeaseWait, _options.Time); }
        catch (TimeoutException)
        {
            throw new BlockIoException(BlockErrorKind.Unavailable, $"controller {Name} cannot record its stale mirror at the shelf; the write is not acknowledged");
        }
    }

    /// <summary>This error-recovery episode's: destage what the peer's copy may hold, then record it stale.</summary>
    Task StaleMarkAsync()
    {
        lock (_volumesLock) return _staleMark ??= MarkStaleAsync();
    }

    async Task MarkStaleAsync()
    {
        try { await MarkStaleCoreAsync(); }
        catch
        {
            lock (_volumesLock) _staleMark = null; // the next write or pairing tries again
            throw;
        }
    }

    async Task MarkStaleCoreAsync()
    {
        while (true)
        {
            await Cache.DestageCurrentAsync();
            await _staleGate.WaitAsync(CancellationToken.None);
            _marking = true;
            try
            {
                if (Mirror.Mode == MirrorMode.Healthy)
                {
                    // Re-paired meanwhile: the peer's copy is whole again; nothing to record. This task then records
                    // nothing, so it must not stand for the next episode's mark: a later error-recovery episode whose
                    // writes found it done acknowledged write-through writes with the shelf still saying the copy was
                    // whole, and the peer's takeover adopted it over them (simulator seed 10664, --faults all --ops 1000).
                    lock (_volumesLock) _staleMark = null;
                    if (Mirror.Mode == MirrorMode.Healthy) return;
                    continue; // down again before the line above: a write may hold this task; destage again, then mark
                }
                await UntilShelfAnswersAsync(() => Shelf!.SetMirrorStaleAsync(true));
                _markedStale = true;
                LogMirrorStale(true);
                return;
            }
            finally
            {
                _marking = false;
                _staleGate.Release();
            }
        }
    }

    /// <summary>After a resynchronisation: the peer's copy is whole; the shelf stops saying otherwise.</summary>
    async Task ClearStaleAsync()
    {
        lock (_volumesLock) _staleMark = null;
        if (Shelf is null) return;
        await _staleGate.WaitAsync(CancellationToken.None);
        try
        {
            if (!_markedStale) return;
            await UntilShelfAnswersAsync(() => Shelf.SetMirrorStaleAsync(false));
            _markedStale = false;
            LogMirrorStale(false);
        }
        finally { _staleGate.Release(); }
    }

    async Task UntilShelfAnswersAsync(Func<Task> request)
    {
        while (true)
        {
            try { await request(); return; }
            catch (ShelfException e) when (e.Error == ShelfError.Unreachable)
            {
                if (_steppedDown) throw;
                await _options.Time.DelayAsync(Failover.HeartbeatPeriod);
            }
        }
    }

    /// <summary>The first host request completed on a taken array after a takeover: the takeover's last phase.</summary>
    internal void OnServed(byte arrayNumber)
    {
        if (!HoldsLease) Interlocked.Increment(ref _servedWithoutLease);
        if (Volatile.Read(ref _lastTakeover) is not { FirstIoMs: null } t || !_takenNumbers.Contains(arrayNumber)) return;
        var first = t with { FirstIoMs = _options.Time.GetElapsedTime(_lastHeardAtTakeover).TotalMilliseconds };
        Interlocked.CompareExchange(ref _lastTakeover, first, t);
    }

    HashSet<byte> _takenNumbers = [];
    bool _peerFencedAtStart;

    /// <summary>
    /// Takes over the peer's arrays (FO-2): fence, claim, assemble, adopt, serve. Also the handshake's
    /// trigger (FO-5) calls it. Safe to call more than once: a takeover in progress or done is not repeated.
    /// </summary>
    public async Task TakeOverAsync(string reason)
    {
        if (Shelf is null || _standby || _steppedDown || _peerFenced) return;
        // AW-6: a controller powering down takes nothing over; a peer powering down is taken over once it
        // says it is done (alone), or never (with the pair).
        if (_poweringDown || PeerInPowerFailWindow) return;
        if (Interlocked.Exchange(ref _takingOver, 1) != 0) return;
        await TakeOverCoreAsync(reason, resume: null);
    }

    /// <summary>
    /// Start-up, with the peer's port fenced at the shelf and our own not: a takeover of ours may have been cut
    /// (this controller stopped) after the fence and before the peer's mirrored writes were adopted and its logged
    /// writes settled. Those are still in our NVRAM (region 2, log 2), and the peer, fenced, discards its own when
    /// it comes back: so the takeover is finished now, before anything else — no hello of the peer is answered and
    /// no request to those arrays runs until it is. Returns the arrays it takes: those whose superblocks or claims
    /// still name the peer, and those region 2 or log 2 hold anything of (the takeover's first step after the fence
    /// dropped every other element of region 2, so what is left is the peer's arrays' at the fence).
    /// </summary>
    HashSet<byte> ArraysOfACutTakeover()
    {
        var table = Arrays.ArrayTable;
        var numbers = PeerArrayNumbers(table);
        foreach (var (_, d) in Nvram.Peer.ReplayOrder())
            if (d.Dirty && table.TryGetValue(d.ArrayNumber, out var a) && a.Serial == d.ArraySerial) numbers.Add(d.ArrayNumber);
        foreach (var (_, r) in WriteLog.Mirrored())
            if (table.ContainsKey(r.Array)) numbers.Add(r.Array);
        return numbers;
    }

    /// <summary>The peer's arrays: those its superblocks name, and those the shelf still gives it (a move to us it did
    /// not finish).</summary>
    HashSet<byte> PeerArrayNumbers(IReadOnlyDictionary<byte, (ulong Serial, string Name, string Owner)> table) =>
        table.Where(kv => kv.Value.Owner == PeerName || Claims?.Of(kv.Value.Serial)?.Owner == PeerName).Select(kv => kv.Key).ToHashSet();

    /// <summary>The takeover after <see cref="TakeOverAsync"/>'s checks, or (<paramref name="resume"/>: the arrays) the
    /// rest of one a stop cut after the fence (<see cref="ArraysOfACutTakeover"/>). Runs with <c>_takingOver</c> set.</summary>
    async Task TakeOverCoreAsync(string reason, HashSet<byte>? resume)
    {
        RaiseAccessChanged();
        try
        {
            Interlocked.Increment(ref _decisions);
            long heard = LastHeard;
            _lastHeardAtTakeover = heard;
            double detected = Since(heard).TotalMilliseconds;
            LogTakingOver(reason);
            if (resume is null)
            {
                try { await Shelf!.FenceAsync(PeerName); }
                catch (ShelfException e) when (e.Error == ShelfError.Fenced) { StepDown("fenced at the shelf while taking over: the peer took over first"); return; }
                catch (ShelfException e) { LogTakeoverFailed(e.Message); return; }
            }
            _peerFenced = true;
            // FO-7's proof, asked as soon as the peer is fenced (the lease wait below uses it): the link proves the
            // peer's process gone and no later one there (IIclLink.PeerProcessGone). A process that no longer runs
            // answers nobody, whatever lease it held. A later one makes its window before it can hold a lease, so one
            // made by now shows; one that makes it from now on finds its port fenced and starts as a standby (its
            // beats are refused at the shelf, we answer none of its ICL beats: it never holds a lease). A supervisor
            // restarts a killed controller once it is fenced: asked after the adoption, the restarted process was
            // there already.
            bool peerGone = resume is null && Link.PeerProcessGone;
            // That session of the peer may not know yet (its shelf path down, hung): if it was registered at the
            // shelf (serving, or a standby already rejoining), a hello of it must not lift the fence; only a new
            // session, which discarded its NVRAM, is let back in (OnPeerHello). A standby that never registered
            // holds nothing and serves nothing: its hello lifts the fence as before (it would wait for good
            // otherwise); a standby fenced again after it registered steps down (BeatAsync), as a new session.
            Volatile.Write(ref _fencedPeerSession, resume is null && _peerRegistered ? Volatile.Read(ref _peerSession) : 0);
            double fenced = Since(heard).TotalMilliseconds;
            // Nothing the fenced session sends counts any more: its heartbeats, mirror writes, hellos.
            Mirror.Fail($"controller {PeerName} was fenced: {reason}");
            FailReservationAck($"controller {PeerName} was fenced: {reason}");
            long fencedAt = Now;
            // (Resumed: we do not know when the peer was last heard; its lease is waited out from now.)
            bool peerMayHoldLease = resume is not null || Since(heard) < Failover.HeartbeatTimeout;
            // The peer's arrays: those its superblocks name, and those the shelf still gives it (a move
            // to us it did not finish).
            var numbers = resume ?? PeerArrayNumbers(Arrays.ArrayTable);
            Volatile.Write(ref _adopting, numbers);
            // Region 2 keeps only what this takeover adopts (copies of an array the peer handed us earlier, whose
            // invalidations it did not get to send, are older than the drives): in the same step as the fence, so a
            // start that finds this takeover cut adopts all that is left (ArraysOfACutTakeover).
            DropPeerCopiesNotTaken(numbers);
            // Once the peer is fenced the takeover must finish, whatever fails on the way (the shelf path
            // dropping, a drive): until it has, the peer's arrays are served by nobody and its mirrored
            // writes live only in our region 2. Each step is safe to repeat.
            int adopted = 0, settled = 0, orphans = 0;
            List<string> settledWhole = [];
            var settle = new List<PeerSettle>();
            IReadOnlyList<string> taken = [];
            for (int attempt = 0; ; attempt++)
            {
                try
                {
                    // Region 2 may hold writes of an array our table does not name: its drives could not be read when
                    // we last looked (a superblock unreadable then). They are read again before deciding what
                    // to take; the copies were kept at the fence. Taken without them, the fenced peer discards its
                    // NVRAM and those acknowledged writes are nowhere (simulator seed 10005 of `--faults all --exact`).
                    // Not when the shelf says the copy is stale (the adoption takes nothing of it), nor when every drive
                    // on the shelf was read: then no array on it is theirs (the peer deleted it, and the link lost the
                    // invalidations). Both waited out every attempt, the peer's arrays served by nobody meanwhile
                    // (5.5 s in simulator seed 10664 of `--ops 1000`).
                    if (UnknownPeerCopies() > 0 && !(await Shelf!.StatusAsync()).Port(PeerName).MirrorStale)
                    {
                        await Arrays.RescanAsync();
                        var more = PeerArrayNumbers(Arrays.ArrayTable);
                        more.UnionWith(numbers);
                        if (more.Count > numbers.Count)
                        {
                            numbers = more;
                            Volatile.Write(ref _adopting, numbers);
                        }
                        DropPeerCopiesNotTaken(numbers);
                        int unknown = UnknownPeerCopies();
                        if (unknown > 0 && Arrays.UnreadableDrives == 0)
                        {
                            orphans = unknown;
                            LogOrphanCopiesDropped(unknown);
                        }
                        else if (unknown > 0)
                        {
                            if (attempt < UnknownCopyAttempts)
                                throw new ManagementException(ManagementErrorKind.Conflict,
                                    $"region 2 holds {unknown} writes of arrays no superblock here names yet (their drives unreadable)");
                            LogUnknownCopiesLost(unknown);
                        }
                    }
                    var serials = Arrays.ArrayTable.Where(kv => numbers.Contains(kv.Key)).Select(kv => kv.Value.Serial).ToList();
                    var claims = serials.Count > 0 ? await Shelf!.ClaimAsync(serials) : [];
                    Claims?.Merge(claims);
                    var status = await Shelf!.StatusAsync();
                    var epoch = Math.Max(Math.Max(Nvram.Epoch, claims.Select(c => c.Epoch).DefaultIfEmpty(0UL).Max()), status.EpochCounter);
                    Nvram.Epoch = epoch;
                    _epochFloor = epoch;
                    bool logStale = status.Port(PeerName).LogStale;
                    taken = [.. taken.Concat(await Arrays.TakeOverAsync(PeerName, settleWhole: logStale)).Distinct()];
                    RegisterServedArrays();
                    lock (_volumesLock) _forwarded.Clear();
                    double before = Since(heard).TotalMilliseconds;
                    adopted += await AdoptPeerElementsAsync(numbers);
                    double afterAdopt = Since(heard).TotalMilliseconds;
                    settled = MarkPeerCheckpoints(numbers, settle, logStale);
                    // The shelf's record was final at the fence: a fenced port can set nothing, and writes nothing.
                    // The superblocks keep the settle owed until it is done (the arrays the peer's superblocks named
                    // were marked as they were taken; those the shelf gave it are marked here). This step ends the
                    // loop once it marks, so it marks once.
                    if (logStale)
                        foreach (var raid in Arrays.ServedArrays)
                            if (numbers.Contains(Arrays.NumberOf(raid))) await Arrays.SetSettleOwedAsync(raid.Name, true);
                    var owed = TakeOwedWhole();
                    if (logStale || owed.Count > 0)
                    {
                        settledWhole = MarkWholeArrays(raid => owed.Contains(raid.Name) || (logStale && numbers.Contains(Arrays.NumberOf(raid))), settle, own: false);
                        LogSettlingWhole(PeerName, string.Join(", ", settledWhole));
                    }
                    LogTakeoverPhases(before, afterAdopt - before, settled);
                    _takenNumbers = numbers;
                    break;
                }
                catch (Exception e) when (e is ShelfException or BlockIoException or ManagementException)
                {
                    if (_steppedDown || _stopping.IsCancellationRequested) return;
                    LogTakeoverFailed($"attempt {attempt + 1}: {e.Message}; trying again");
                    try { await _options.Time.DelayAsync(Failover.HeartbeatPeriod, _stopping.Token); }
                    catch (OperationCanceledException) { return; }
                }
            }
            // FO-7 after an FO-5 fence: a peer heard within the timeout may still be beating, and holds its lease
            // until half a timeout after its last successful beat — issued before the fence completed; beats
            // after it fail at the shelf, and we answer none of its ICL beats. Its arrays' requests go on waiting
            // here (they wait while we adopt) until that lease has lapsed: until then the fenced peer may still
            // answer hosts (from its cache; the drives refuse it). A peer silent for the whole timeout (the
            // heartbeats' trigger) holds no lease already. The wait comes after the claims and the adoption,
            // never between the fence and them: a crash there leaves the peer's mirrored writes adopted by
            // nobody (the peer, restarted fenced, discards its NVRAM), and it widened that window to half a
            // timeout (seed 87 of the simulator's --faults failover,multicast --ops 300: writes lost).
            // Unless the link proved the peer's process gone at the fence (above): then no process of the peer holds a
            // lease, and a kill -9 of the owner on one host does not cost the takeover half a timeout.
            var lapse = Failover.HeartbeatTimeout / 2 - Since(fencedAt);
            if (peerMayHoldLease && lapse > TimeSpan.Zero)
            {
                if (peerGone) LogPeerProcessGone(PeerName, lapse.TotalMilliseconds);
                else
                {
                    try { await _options.Time.DelayAsync(lapse, _stopping.Token); }
                    catch (OperationCanceledException) { return; }
                }
            }
            Volatile.Write(ref _adopting, null);
            // The requests held while we adopted go on now, not at the next heartbeat (up to a period later: the
            // first write of the bench's takeover waited for it).
            WakeWaiters();
            double adoptedMs = Since(heard).TotalMilliseconds;
            Interlocked.Increment(ref _takeovers);
            Interlocked.Increment(ref _pairGeneration);
            lock (_failbackLock) _failback?.PeerTakenOver();
            Volatile.Write(ref _lastTakeover, new TakeoverInfo(reason, taken, adopted, detected, fenced, adoptedMs, null) { SettledWrites = settled, SettledWhole = settledWhole, PeerProcessGone = peerGone, OrphanCopies = orphans });
            LogTookOver(PeerName, string.Join(", ", taken), adopted, adoptedMs);
            // The host commands held as secondary for the peer's volumes run now, not at their time limit.
            Handshake.PartnerTakenOver();
            _ = SettlePeerWritesAsync(settle);
            _ = DrainAfterLossAsync();
        }
        finally
        {
            Volatile.Write(ref _takingOver, 0);
            WakeWaiters();
            RaiseAccessChanged();
        }
    }

    /// <summary>Takeover attempts (a heartbeat period apart) that wait for the drives of arrays region 2 holds writes
    /// of and our table does not name; after them the takeover goes on without those writes (and says so).</summary>
    const int UnknownCopyAttempts = 50;

    /// <summary>Dirty elements of region 2 whose array number our array table does not name at all.</summary>
    int UnknownPeerCopies()
    {
        var table = Arrays.ArrayTable;
        int n = 0;
        foreach (var (_, d) in Nvram.Peer.ReplayOrder())
            if (d.Dirty && !table.ContainsKey(d.ArrayNumber)) n++;
        return n;
    }

    [LoggerMessage(EventId = 7086, Level = LogLevel.Warning, Message = "takeover: {Count} mirrored writes of arrays no drive on the shelf holds (deleted by the peer) are not adopted")]
    partial void LogOrphanCopiesDropped(int count);

    [LoggerMessage(EventId = 7085, Level = LogLevel.Error, Message = "takeover: {Count} mirrored writes of arrays whose drives this controller cannot read are given up (no superblock here names their arrays)")]
    partial void LogUnknownCopiesLost(int count);

    /// <summary>Drops region 2's copies of arrays this takeover does not take. Copies of an array our table does not
    /// name are kept: the takeover reads the drives again for them (<see cref="UnknownPeerCopies"/>).</summary>
    void DropPeerCopiesNotTaken(HashSet<byte> numbers)
    {
        var peer = Nvram.Peer;
        var table = Arrays.ArrayTable;
        int dropped = 0;
        foreach (var (e, d) in peer.ReplayOrder())
        {
            if (!table.TryGetValue(d.ArrayNumber, out var a)) continue;
            if (numbers.Contains(d.ArrayNumber) && a.Serial == d.ArraySerial) continue;
            peer.Invalidate(e);
            dropped++;
        }
        if (dropped > 0) LogNotAdoptedDropped(dropped);
    }

    [LoggerMessage(EventId = 7078, Level = LogLevel.Information, Message = "controller {Peer}'s process is gone and no later one is there (the ICL sees it): no lease to wait out ({LapseMs:F0} ms it would have waited)")]
    partial void LogPeerProcessGone(string peer, double lapseMs);

    [LoggerMessage(EventId = 7077, Level = LogLevel.Information, Message = "takeover: {Count} elements of region 2 dropped at the fence (copies of arrays not taken now)")]
    partial void LogNotAdoptedDropped(int count);

    /// <summary>Wakes whoever waits for a heartbeat to look again (the serve gate, a takeover's end): each beat does,
    /// and so does the end of an adoption or a takeover.</summary>
    void WakeWaiters() =>
        Interlocked.Exchange(ref _beatDone, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

    /// <summary>The peer's mirrored elements (region 2), valid and dirty, in sequence order, into our cache.</summary>
    async Task<int> AdoptPeerElementsAsync(HashSet<byte> numbers)
    {
        var peer = Nvram.Peer;
        var table = Arrays.ArrayTable;
        var list = new List<(ElementDescriptor, ReadOnlyMemory<byte>)>();
        if ((await Shelf!.StatusAsync()).Port(PeerName).MirrorStale)
        {
            // The peer acknowledged writes we never saw (its mirror to us had failed), after destaging
            // everything our copy holds: the drives are newer than our copy.
            LogStaleCopyDropped(PeerName, peer.ReplayOrder().Count);
            peer.Clear();
            Receiver.Reset();
            return 0;
        }
        var taken = new List<(int Element, ElementDescriptor Descriptor)>();
        foreach (var (e, d) in peer.ReplayOrder())
        {
            if (!d.Dirty) continue;
            // Only arrays taken from the peer now: its copies of an array it handed to us earlier (a move whose
            // invalidations it did not get to send) are older than what we have written there since.
            if (!numbers.Contains(d.ArrayNumber) || !table.TryGetValue(d.ArrayNumber, out var a) || a.Owner != Name || a.Serial != d.ArraySerial)
            {
                LogNotAdopted(d.ArrayNumber, d.ArrayLba);
                continue;
            }
            taken.Add((e, d));
        }
        // Straight from region 2: nothing writes there until it is cleared below (the fenced session's traffic is
        // under the epoch floor, and a new session's hello waits for the takeover), and the cache copies each into
        // its own element anyway. A copy first cost a buffer of every element: 80 MiB for 5,000 elements, whose
        // fresh pages faulted in one by one (about half of a 500-700 ms adoption in the adapter bench's takeover).
        foreach (var (e, d) in taken) list.Add((d, peer.Memory(e)));
        // A pairing that was already under way when the takeover began may have resumed the mirror: the
        // adopted elements are not on it, so it goes down again (the next pairing resynchronises them).
        if (Mirror.Mode == MirrorMode.Healthy) Mirror.Fail($"taking over from controller {PeerName}");
        int n = await Cache.AdoptAsync(list);
        peer.Clear();
        Receiver.Reset();
        return n;
    }

    void StepDown(string reason)
    {
        if (_steppedDown) return;
        if (_powerFailFinishing)
        {
            // The peer took us over after our power-fail window, as we asked: we are stopping anyway.
            _steppedDown = true;
            Volatile.Write(ref _leaseUntil, 0);
            LogSteppedDown($"{reason} (after this controller's power-fail window)");
            return;
        }
        _stepDownReason = reason;
        _steppedDown = true;
        Volatile.Write(ref _leaseUntil, 0);
        Mirror.Fail(reason);
        LogSteppedDown(reason);
        Volatile.Read(ref _beatDone).TrySetResult();
        SteppedDown?.Invoke(reason);
        RaiseAccessChanged();
    }

    /// <summary>A standby whose fence was lifted (by the owner after our hello, or by `duet shelf unfence`):
    /// register, and read the drives again.</summary>
    async Task TryRejoinAsync()
    {
        if (!_standby || Shelf is null || Interlocked.Exchange(ref _rejoining, 1) != 0) return;
        try
        {
            ShelfStatus status;
            try { status = await Shelf.StatusAsync(); }
            catch (ShelfException) { return; }
            if (status.Port(Name).Fenced) return;
            try { if (!await TryJoinShelfAsync(Shelf, Session)) return; }
            catch (ShelfException) { return; } // the next heartbeat tries again
            _joinedWhileStandby = true;
            // Look at the drives before leaving standby: the rescans while fenced read nothing (a fenced port's
            // reads are refused), so until this one the view lacks every array, and a controller shown active
            // answered "no array named ..." to a move of its peer's array (the failover bench's restore did).
            await RescanAsync();
            _standby = false;
            LogRejoined();
            RaiseAccessChanged();
        }
        finally { Volatile.Write(ref _rejoining, 0); }
    }

    int _rejoining;
    /// <summary>This standby session registered at the shelf again (its fence had been lifted); see BeatAsync.</summary>
    volatile bool _joinedWhileStandby;

    /// <summary>The owner's side of a standby's return: a hello from a new session of a fenced peer lifts the fence.
    /// Hellos that come while it is being lifted wait for the same lifting (two ran it twice: two unfences, two log lines).</summary>
    async Task UnfencePeerAsync()
    {
        TaskCompletionSource? mine = null;
        Task? running;
        lock (_unfenceLock)
        {
            running = _unfencing is { IsCompleted: false } r ? r : null;
            if (running is null) _unfencing = (mine = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
        }
        if (running is not null)
        {
            await running;
            return;
        }
        try { await UnfencePeerCoreAsync(); }
        finally { mine!.SetResult(); }
    }

    readonly Lock _unfenceLock = new();
    Task? _unfencing;

    async Task UnfencePeerCoreAsync()
    {
        if (Shelf is null || !_peerFenced) return;
        try
        {
            // Once unfenced the peer could take us over, with an empty copy of our cache until the
            // resynchronisation: what is dirty here goes to the drives first, and the copy is recorded stale.
            if (Cache.DirtyCount > 0 || Volatile.Read(ref _staleMark) is not null) await StaleMarkAsync();
            await Shelf.UnfenceAsync(PeerName);
            _peerFenced = false;
            // The peer is back and heard: measure its silence from now.
            Volatile.Write(ref _peerIclHeardAt, Now);
            Volatile.Write(ref _iclQuietSince, 0);
            _peerSlotChangedAt = Now;
            LogUnfenced(PeerName);
            RaiseAccessChanged();
            // Host writes finished while the peer was fenced went into our table only (HostTagsFlow): the peer, which
            // may take us over from now on, gets the whole table now, even before our pairing (which sends it again),
            // or it would run a re-issued tag a second time (simulator seeds 10652 and 10524 of
            // --faults failover,multicast --ops 1000: in 10524 we hung before our pairing and the peer took us over).
            if (Link.IsUp) await SendHostTagsAsync();
        }
        catch (ShelfException e) { LogTakeoverFailed($"could not lift the fence of {PeerName}: {e.Message}"); }
    }

    FailoverInfo? FailoverState()
    {
        if (Shelf is null) return null;
        string state = _steppedDown ? "stepped down" : _standby ? "standby" : HoldsLease ? "active" : "no lease";
        return new FailoverInfo(state, HoldsLease, _peerFenced, Nvram.Epoch, Interlocked.Read(ref _heartbeats), Takeovers,
            Since(LastHeard).TotalMilliseconds, LastTakeover) { LogStale = _logMarkedStale };
    }

    [LoggerMessage(EventId = 7072, Level = LogLevel.Warning, Message = "a hello from the session of controller {Peer} that was fenced (it has not stepped down yet): not paired, the fence stays; a new session is let back in")]
    partial void LogFencedSessionHello(string peer);

    [LoggerMessage(EventId = 7020, Level = LogLevel.Warning, Message = "taking over: {Reason}")]
    partial void LogTakingOver(string reason);
    [LoggerMessage(EventId = 7021, Level = LogLevel.Warning, Message = "took over from controller {Peer}: arrays [{Arrays}], {Adopted} mirrored elements adopted, serving {Ms:F0} ms after the peer was last heard")]
    partial void LogTookOver(string peer, string arrays, int adopted, double ms);

    [LoggerMessage(EventId = 7036, Level = LogLevel.Information, Message = "takeover phases: fenced, claimed and assembled at {Ready:F0} ms; adopting region 2 took {Adopt:F0} ms; {Settled} logged writes of the peer are settled behind it (a request to one of their stripes settles that stripe first)")]
    partial void LogTakeoverPhases(double ready, double adopt, int settled);
    [LoggerMessage(EventId = 7022, Level = LogLevel.Error, Message = "takeover failed: {Error}")]
    partial void LogTakeoverFailed(string error);
    [LoggerMessage(EventId = 7023, Level = LogLevel.Error, Message = "stepping down: {Reason}")]
    partial void LogSteppedDown(string reason);
    [LoggerMessage(EventId = 7024, Level = LogLevel.Warning, Message = "this controller's port is fenced at the shelf (epoch {Epoch}): NVRAM discarded ({Elements} elements the peer adopted when it took over), standby until the owner lets it back")]
    partial void LogStandby(ulong epoch, int elements);
    [LoggerMessage(EventId = 7025, Level = LogLevel.Information, Message = "fence lifted: registered at the shelf again, rescanning the drives")]
    partial void LogRejoined();
    [LoggerMessage(EventId = 7026, Level = LogLevel.Information, Message = "controller {Peer} is back (a new session): its fence is lifted; it rejoins as standby")]
    partial void LogUnfenced(string peer);
    [LoggerMessage(EventId = 7027, Level = LogLevel.Warning, Message = "shelf: {Error}")]
    partial void LogShelfUnreachable(string error);
    [LoggerMessage(EventId = 7028, Level = LogLevel.Warning, Message = "heartbeat failed: {Error}")]
    partial void LogHeartbeatFailed(string error);
    [LoggerMessage(EventId = 7030, Level = LogLevel.Information, Message = "mirror stale at the shelf: {Stale}")]
    partial void LogMirrorStale(bool stale);

    [LoggerMessage(EventId = 7076, Level = LogLevel.Warning, Message = "controller {Peer} wrote while its write log's copy here was incomplete (the shelf says so): settling the whole of {Arrays} behind the takeover (AW-3)")]
    partial void LogSettlingWhole(string peer, string arrays);
    [LoggerMessage(EventId = 7031, Level = LogLevel.Warning, Message = "controller {Peer} had acknowledged writes without its mirror: its {Count} mirrored elements here are older than the drives and are dropped, not adopted")]
    partial void LogStaleCopyDropped(string peer, int count);
    [LoggerMessage(EventId = 7029, Level = LogLevel.Warning, Message = "mirrored element of array {Array} at {Lba} not adopted: the array is not one this controller took over")]
    partial void LogNotAdopted(byte array, long lba);
}
