using Duet.Cache;
using Duet.Cache.Mirror;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Host.Controller;

/// <summary>What a <see cref="Controller"/> is, beyond the parts it is built from.</summary>
public sealed record ControllerCoreOptions
{
    /// <summary>"A" or "B".</summary>
    public required string Name { get; init; }
    /// <summary>This run's session id, sent in PairHello. The server draws a random one; the simulator one from its seed.</summary>
    public required ulong Session { get; init; }
    public MirrorMethod Mirror { get; init; } = MirrorMethod.Batched;
    /// <summary>AW-4's write log (and AW-3's checkpoints to the peer) for array writes. Off only to measure
    /// what it costs: without it a power cut or a takeover mid-destage can leave stripes whose parity
    /// disagrees with their data, and nothing names them.</summary>
    public bool WriteLog { get; init; } = true;
    public TimeSpan ForwardTimeout { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>How long an orderly stop waits for the cache to destage.</summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>AW-6: the graceful power-fail window, from the notice to the stop (the seed's battery hold-up
    /// time). See <see cref="Controller.PowerFailAsync"/>.</summary>
    public TimeSpan PowerFailWindow { get; init; } = DefaultPowerFailWindow;
    public static readonly TimeSpan DefaultPowerFailWindow = TimeSpan.FromSeconds(5);
    public TimeProvider Time { get; init; } = TimeProvider.System;
    public ILoggerFactory Loggers { get; init; } = NullLoggerFactory.Instance;
    /// <summary>How long pairing waits for the peer to answer its hello.</summary>
    public TimeSpan PairTimeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>How often a controller whose mirror failed while the link stayed up tries to pair again.</summary>
    public TimeSpan RepairInterval { get; init; } = TimeSpan.FromMilliseconds(500);
    /// <summary>The controller's port on the shared shelf. With it: heartbeats on the ICL and the shelf, a lease,
    /// takeover of a dead peer (issue 5). Without it (a single controller, older tests): none of that.</summary>
    public IShelfPort? Shelf { get; init; }
    /// <summary>With <see cref="Shelf"/>: the claims the array manager was opened with (<see cref="ShelfClaims.MayServe"/>).</summary>
    public ShelfClaims? Claims { get; init; }
    public FailoverOptions Failover { get; init; } = new();
    /// <summary>Where the APTPL persistent-reservation state survives a power loss (the shell: a file next to
    /// the NVRAM file). Null: nowhere (reservations are then lost with both controllers).</summary>
    public IReservationPersistence? ReservationPersistence { get; init; }
    /// <summary>Test only (the simulator's planted bugs): adjusts the cache's options.</summary>
    public Func<CacheOptions, CacheOptions>? ConfigureCache { get; init; }
    /// <summary>Test only (the simulator's planted bugs): wraps the mirror the cache sees.</summary>
    public Func<ICacheMirror, ICacheMirror>? WrapMirror { get; init; }
    /// <summary>Test only (the simulator's planted bug): array writes keep no partial parity.</summary>
    public bool PlantedNoPartialParity { get; init; }
    /// <summary>Sees every event of the host-protocol handshake (the simulator counts the runs of each host tag).</summary>
    public Action<Duet.HostProtocol.HandshakeEvent>? HandshakeObserver { get; init; }

    public string PeerName => Name == "A" ? "B" : "A";
}

/// <summary>
/// One controller of the pair (MR-1, active-active), without sockets or files: it serves the
/// arrays it owns through its write-back cache in NVRAM region 1, mirrors every write into the
/// peer's region 2 over the ICL before acknowledging it, keeps the peer's mirror in its own
/// region 2, and forwards requests for the peer's volumes to the peer. Both controllers open the
/// same drives; each writes only its own arrays.
///
/// Built from injected parts (array manager over some drive shelf, NVRAM over a file or a store,
/// an ICL link, a TimeProvider, a session id), so the same code runs in `duet controller`
/// (<see cref="ControllerServer"/> adds the management socket and NBD around it) and in the
/// simulator, two of them in one process on virtual time. Everything runs as continuations on
/// the caller's context: no threads, timers or thread-pool work of its own.
///
/// A crash is simply abandoning the object (its continuations stop running): nothing here
/// relies on finalizers or background threads to stay correct, and what survives is what the
/// parts hold (the drives, the NVRAM store). The orderly stop is <see cref="DisposeAsync"/>:
/// it destages the cache (the peer's mirror of us is then not needed) and disposes every part.
/// </summary>
public sealed partial class Controller : IAsyncDisposable
{
    readonly ControllerCoreOptions _options;
    readonly ILogger _logger;
    readonly Lock _volumesLock = new();
    // By name: the array manager makes new RaidVolume objects whenever its view changes (any
    // management operation), and a volume must keep its one CachedVolume (and so its hold during
    // a move or delete) across them.
    readonly Dictionary<string, CachedVolume> _cached = new(StringComparer.Ordinal);
    readonly Dictionary<string, ForwardedVolume> _forwarded = new(StringComparer.Ordinal);
    readonly HashSet<string> _cachedArrays = new(StringComparer.Ordinal);
    // Arrays in the middle of a move or delete here (the heartbeat must not finish their hand-over early).
    readonly HashSet<string> _givingUp = new(StringComparer.Ordinal);
    // The volumes a move or delete holds, by array: a CachedVolume made for one of them meanwhile (the array was
    // assembled again, a new RaidArray, by a rescan while the drain waited out the drives) joins the hold.
    readonly Dictionary<string, List<CachedVolume>> _holding = new(StringComparer.Ordinal);
    int _started;

    public ArrayManager Arrays { get; }
    public NvramFile Nvram { get; }
    public IIclLink Link { get; }
    public PeerMirror Mirror { get; }
    public MirrorReceiver Receiver { get; }
    public WriteBackCache Cache { get; }
    public ForwardingClient Forwarding { get; }
    public ForwardingServer ForwardingServer { get; }
    /// <summary>The volumes a front end serves: this controller's through the cache, the peer's forwarded.</summary>
    public IVolumeCatalog Volumes { get; }
    /// <summary>Management of this controller: the array manager's, plus the controller's state, array moves,
    /// and the peer told of every change.</summary>
    public IArrayService ArrayService { get; }
    public int ReplayedElements { get; private set; }
    public string Name => _options.Name;
    public string PeerName => _options.PeerName;
    public ulong Session => _options.Session;

    /// <summary>Builds the controller around its parts, which it owns from now on (<see cref="DisposeAsync"/>
    /// disposes them). Nothing runs until <see cref="Start"/>.</summary>
    public Controller(ControllerCoreOptions options, ArrayManager arrays, NvramFile nvram, IIclLink link)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Name is not ("A" or "B")) throw new ArgumentException($"controller name '{options.Name}' must be A or B", nameof(options));
        _options = options;
        var loggers = options.Loggers;
        _logger = loggers.CreateLogger($"Duet.Controller.{options.Name}");
        Arrays = arrays;
        Nvram = nvram;
        Link = link;
        ulong Epoch() => Nvram.Epoch;
        Mirror = new PeerMirror(link, Epoch, new PeerMirrorOptions
        {
            Path = options.Mirror, SmallWriteOpcode = options.Name == "A" ? (byte)0xA0 : (byte)0xB0, Time = options.Time,
        }, loggers.CreateLogger<PeerMirror>());
        // A by-reference mirror header names a multicast write this controller holds as secondary.
        Receiver = new MirrorReceiver(new MirrorApplier(nvram.Peer, SerialOfNumber, reference => Handshake?.QueuedPayload(reference)),
            status => link.PostAsync(IclSignal.Reply, Epoch(), status, default), options.Name == "A" ? (byte)0xB0 : (byte)0xA0,
            loggers.CreateLogger<MirrorReceiver>());
        ICacheMirror cacheMirror = options.Mirror == MirrorMethod.None ? new NoMirror() : Mirror;
        if (options.WrapMirror is { } wrap) cacheMirror = wrap(cacheMirror);
        var cacheOptions = new CacheOptions { Time = options.Time };
        if (options.ConfigureCache is { } configure) cacheOptions = configure(cacheOptions);
        WriteLog = new WriteLog(nvram);
        HostTags = new HostTagTable(nvram);
        Cache = new WriteBackCache(nvram.Own, cacheMirror, cacheOptions, loggers.CreateLogger<WriteBackCache>());
        if (options.PowerFailWindow <= TimeSpan.Zero) throw new ArgumentException($"the power-fail window ({options.PowerFailWindow}) must be positive", nameof(options));
        HostCommands = new HostCommandGate(options.Name);
        Forwarding = new ForwardingClient(link, Epoch, options.ForwardTimeout, options.Time, firstRequestId: options.Session);
        ForwardingServer = new ForwardingServer(link, Epoch, name => ServedVolume(name), loggers.CreateLogger<ForwardingServer>(), RescanAsync);
        Volumes = new Catalog(this);
        // LUNs stored after a rescan (a contested one moved, one a superblock lacked): the peer reads them at once.
        arrays.LunsStored += () => _ = NotifyPeerArraysChangedAsync();
        ArrayService = new ControllerArrayService(this);
        options.Failover.Validate();
        Handshake = CreateHandshake();
        Reservations = new MirroredReservationStore(SendReservationStateAsync, options.ReservationPersistence, SendScsiStateUpdateAsync);
        if (Reservations.LoadError is { } prError) LogUnknown("persisted reservation state (not used)", prError);
    }

    // The peer's array table as its last ArrayTableUpdate gave it. Applied as the update arrives, in
    // order with the mirror traffic on the same queue, so a mirror write for an array the peer has
    // just created (or re-created under a reused number) is stored under that array's serial, not
    // under whatever a slower rescan of the drives last found.
    Dictionary<byte, ulong>? _announced;

    ulong? SerialOfNumber(byte number)
    {
        var announced = Volatile.Read(ref _announced);
        if (announced is not null && announced.TryGetValue(number, out var serial)) return serial;
        return Arrays.ArrayTable.TryGetValue(number, out var e) ? e.Serial : null;
    }

    void OnArrayTableUpdate(ReadOnlySpan<byte> message)
    {
        if (ArrayTableUpdate.TryDecode(message, out var update, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("array table update", error.ToString());
            return;
        }
        Volatile.Write(ref _announced, update!.Entries.ToDictionary(e => e.ArrayNumber, e => e.ArraySerial));
    }

    /// <summary>
    /// Replays NVRAM region 1 into the cache (with a shelf: only what the shelf still names this
    /// controller owner of, and nothing if its port is fenced), starts destaging, starts the link and
    /// pairs with the peer whenever the link comes up, and starts the heartbeats. Returns once replay
    /// is done; pairing goes on in the background.
    /// </summary>
    public async Task StartAsync()
    {
        if (Interlocked.Exchange(ref _started, 1) != 0) throw new InvalidOperationException($"controller {Name} is already started");
        LogHostTagsOpened();
        await DecideReplayAsync();
        RegisterServedArrays();
        ReplayedElements = Cache.Replay(KeepOnReplay(), out int dropped);
        if (ReplayedElements > 0) LogReplayed(ReplayedElements);
        if (dropped > 0) LogReplayDropped(dropped);
        // AW-4: before anything of ours writes to an array again.
        await SettleRecoveredWritesAsync();
        // AW-3: a takeover a stop cut after the superblocks named us left its whole settle owed (after our own
        // records: those are settled with their partial sums, which a whole settle does not have).
        StartOwedWholeSettles();
        Cache.Start();
        // A takeover of ours that a stop cut after the fence is finished first: before the link can bring a hello of
        // the peer (which would empty region 2) and before a request reaches those arrays.
        if (_peerFencedAtStart && ArraysOfACutTakeover() is { Count: > 0 } cut)
        {
            Volatile.Write(ref _takingOver, 1);
            Volatile.Write(ref _adopting, cut);
            _ = TakeOverCoreAsync($"controller {PeerName} is fenced at the shelf and this controller holds its arrays' mirrored writes or logged writes (a takeover cut by a stop): finishing it", cut);
        }
        Link.UpChanged += up =>
        {
            if (up) Interlocked.Increment(ref _linkUps);
            if (up) _ = PairAsync();
            else OnPeerLost("the link to the peer went down");
            RaiseAccessChanged();
        };
        Link.Salvage = OnSalvaged;
        Link.Start(DispatchAsync);
        if (Link.IsUp) _ = PairAsync();
        _ = WatchMirrorAsync();
        StartFailover();
    }

    readonly CancellationTokenSource _stopping = new();
    int _pairing;

    /// <summary>
    /// A mirror that failed while the link stayed up (a lost status, a peer that stalled past the
    /// status timeout) leaves this controller in error-recovery mode with nothing to end it: the
    /// link never goes down and up again. So, while the link is up and the mirror is not healthy,
    /// pair again every <see cref="ControllerCoreOptions.RepairInterval"/>.
    /// </summary>
    async Task WatchMirrorAsync()
    {
        var ct = _stopping.Token;
        while (!ct.IsCancellationRequested)
        {
            try { await _options.Time.DelayAsync(_options.RepairInterval, ct); }
            catch (OperationCanceledException) { return; }
            // A standby says hello again until the owner lifts its fence (a hello that found the shelf
            // unreachable there, or that the owner could not act on, is not answered again by itself).
            if (Link.IsUp && (Mirror.Mode != MirrorMode.Healthy || _standby) && Volatile.Read(ref _pairing) == 0) await PairAsync();
        }
    }

    /// <summary>
    /// Which NVRAM elements a start replays: every dirty one (it may be the only copy of acknowledged data:
    /// an array not served yet — its ownership still being settled after a move the power cut short —
    /// takes its elements when it arrives), and the clean ones of arrays served here under the same serial.
    /// A clean element of any other array is dropped: a move or delete drains first, so what it leaves
    /// behind when cut short is clean, and replaying it would serve stale data when the array comes back.
    /// A clean element is on the drives already; dropping one loses nothing.
    /// </summary>
    Func<ElementDescriptor, bool> KeepOnReplay()
    {
        // Served arrays by number and serial, built once (ArrayTable builds a new table on every read).
        var served = Arrays.ArrayTable.Where(kv => Arrays.Serves(kv.Value.Name)).Select(kv => (kv.Key, kv.Value.Serial)).ToHashSet();
        return d => d.Dirty || served.Contains((d.ArrayNumber, d.ArraySerial));
    }

    void RegisterServedArrays()
    {
        foreach (var raid in Arrays.ServedArrays)
        {
            lock (_volumesLock)
            {
                if (!_cachedArrays.Add(raid.Name)) continue;
                if (Arrays.SettleOwed(raid.Name)) _owedWhole.Add(raid.Name);
            }
            Cache.AddArray(NewBacking(raid));
        }
    }

    /// <summary>Pairing: announce ourselves (the peer checks the NVRAM layouts and clears its stale mirror
    /// of us), then resynchronise the peer's region 2 from our region 1; write-back resumes after that.</summary>
    async Task PairAsync()
    {
        // Not while taking the peer over: its copy in our region 2 is what we adopt; pairing would
        // resume the mirror under the adoption (the watchdog pairs again afterwards).
        if (Volatile.Read(ref _takingOver) != 0) return;
        // Nor in a power-fail window: the pair is stopping, not forming.
        if (_poweringDown) return;
        Interlocked.Increment(ref _pairing);
        // One pairing at a time. Each link-up starts one, and one can outlast the link it began on (waiting for the
        // shelf to record our mirror stale). Two at once let the later hello empty the peer's copy of us under a
        // mirror the earlier one had just made healthy: a write mirrored before that hello and acknowledged after it
        // (its acknowledgement waited for the stale record to clear) was nowhere but here, and the shelf no longer
        // said our copy was stale (simulator seed 9162 of `--ops 1000`).
        // (A standby's hellos, which ask the owner to lift its fence, are not held behind one another: it owns no
        // dirty data whose copy a hello could empty.)
        bool gated = !_standby;
        if (gated) await _pairGate.WaitAsync(CancellationToken.None);
        try
        {
            // Whatever started this was handled by the pairing we waited for: the mirror is whole, resynchronised after
            // a hello on this very link. (A standby keeps saying hello until the owner lifts its fence.)
            if (Mirror.Mode == MirrorMode.Healthy && !_standby && Volatile.Read(ref _pairedOnLink) == Volatile.Read(ref _linkUps)) return;
            if (Volatile.Read(ref _takingOver) != 0 || _poweringDown) return;
            // The peer answers our hello (on its reply queue) once it has cleared its mirror of us;
            // only then does the resynchronisation go out. A hello lost on the way would otherwise
            // leave the peer's stale copies under the new ones.
            // Our hello makes the peer clear its copy of our cache, which the resynchronisation then fills
            // again; if we died in between, a takeover would find nothing of our dirty data there. So
            // first everything dirty goes to the drives and the shelf records the peer's copy stale.
            // (A standby, or a cache with nothing dirty, has nothing the copy alone would hold.)
            if (Shelf is not null && !_standby && Cache.DirtyCount > 0) await StaleMarkAsync();
            long holes = Interlocked.Read(ref _logHoles);
            var ack = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Volatile.Write(ref _helloAck, ack);
            long link = Volatile.Read(ref _linkUps);
            await Link.PostAsync(IclSignal.Message, Nvram.Epoch, HelloBytes(), default);
            await Waits.WithTimeout(ack.Task, _options.PairTimeout, _options.Time);
            // A standby's hello is what makes the owner lift its fence.
            if (_standby) await TryRejoinAsync();
            // The array table before any mirror data: the peer names our arrays by number with it
            // (a change announced while the link was down never reached it).
            await NotifyPeerArraysChangedAsync();
            await SendReservationSyncAsync();
            await SendOpenCheckpointsAsync(holes);
            // The peer heard our hello on the link the resynchronisation goes on (one that came up since did not
            // carry it: its own pairing, waiting for this one, says hello there).
            if (Volatile.Read(ref _linkUps) != link) throw new IclLinkDownException("the link went down and up again while pairing");
            await Cache.ResyncMirrorAsync(Mirror.Resume);
            await SendHostTagsAsync();
            await ClearStaleAsync();
            Volatile.Write(ref _pairedOnLink, link);
            Interlocked.Increment(ref _pairGeneration);
            LogPaired(_options.PeerName);
        }
        catch (Exception e) when (e is IclLinkDownException or MirrorUnavailableException or TimeoutException or ShelfException or BlockIoException)
        {
            OnPeerLost($"pairing failed: {e.Message}");
        }
        finally
        {
            if (gated) _pairGate.Release();
            Interlocked.Decrement(ref _pairing);
        }
    }

    readonly AsyncGate _pairGate = new(1, 1);
    /// <summary>Link-ups seen, and the one the last pairing said hello and resynchronised on.</summary>
    long _linkUps, _pairedOnLink = -1;

    TaskCompletionSource? _helloAck;
    /// <summary>The session id of the peer's last hello, and of the peer when we fenced it (0: none).</summary>
    ulong _peerSession, _fencedPeerSession;

    byte[] HelloBytes()
    {
        var layout = Nvram.Layout;
        return DuetFrame.ToArray(new PairHello(Name[0], _options.Session, layout.TotalBytes, layout.ElementCount, layout.ElementBytes, NvramFile.FormatVersion));
    }

    /// <summary>Posts one of Duet's own messages, stamped with our epoch; a link that is down drops it (the
    /// sender's timeouts and the next pairing take care of what was lost).</summary>
    async Task PostOrDropAsync(IclSignal signal, byte[] message)
    {
        try { await Link.PostAsync(signal, Nvram.Epoch, message, default); }
        catch (IclLinkDownException) { }
    }

    async Task AnswerHelloAsync()
    {
        // A new session of a peer we fenced: it discarded its NVRAM at start; let it back in first.
        if (_peerFenced) await UnfencePeerAsync();
        // Still fenced (the shelf could not be reached): no answer; the peer's pairing tries again later.
        if (_peerFenced) return;
        await PostOrDropAsync(IclSignal.Reply, HelloBytes()); // lost: the peer's pairing times out and tries again
    }

    void OnPeerLost(string why)
    {
        Interlocked.Increment(ref _pairGeneration);
        Mirror.Fail(why);
        FailReservationAck(why);
        // Error-recovery mode: the data only this controller holds now goes to the drives — unless this
        // controller is powering down itself: its NVRAM keeps that data for the next start (AW-6).
        if (!_poweringDown) _ = DrainAfterLossAsync();
    }

    async Task DrainAfterLossAsync()
    {
        try { await Cache.DrainAsync(); }
        catch (Exception e) { LogDrainFailed(e.Message); }
    }

    async ValueTask DispatchAsync(IclTransfer t)
    {
        var kind = t.Message.IsEmpty ? MessageKind.Unknown : MessageClassifier.Classify(t.Message.Span);
        if (t.Epoch < _epochFloor)
        {
            // From a session of the peer we fenced (it was hung, and woke up): its heartbeats, mirror
            // writes, hellos and answers count for nothing. Except the entries of its table of finished host
            // writes: each says a write ran whole before the fence cut it off (after the fence its drive
            // writes fail, and its mirror writes are dropped here, so it can finish none). A command we hold
            // as secondary is looked up there before it runs after the takeover: an entry dropped here let a
            // write the fenced primary finished and answered run a second time (simulator seed 10376 of
            // --faults failover,multicast --ops 1000: the primary finished it in the instant we fenced it).
            if (kind == MessageKind.HostTagEntries && t.Signal == IclSignal.Message)
            {
                OnHostTagEntries(t.Message.Span);
                return;
            }
            Interlocked.Increment(ref _staleDropped);
            return;
        }
        if (kind == MessageKind.Heartbeat)
        {
            OnPeerHeartbeat(t.Message.Span, t.Signal == IclSignal.Reply);
            return;
        }
        if (t.Signal == IclSignal.Reply)
        {
            if (kind == MessageKind.Status) Mirror.OnReply(t.Message.Span);
            else if (kind == MessageKind.PairHello) Volatile.Read(ref _helloAck)?.TrySetResult();
            else if (kind == MessageKind.ForwardedResponse) Forwarding.OnResponse(t.Message.Span, t.Data.Span);
            else if (kind == MessageKind.ReservationState) OnReservationStateReply(t.Message.Span);
            else if (kind == MessageKind.ScsiStateUpdate) AckScsiState(t.Message.Span);
            else LogUnknown("reply", kind.ToString());
            return;
        }
        switch (kind)
        {
            case MessageKind.PairHello:
                OnPeerHello(t.Message.Span);
                return;
            case MessageKind.ForwardedRequest:
                ForwardingServer.OnRequest(t.Message.Span, t.Data.Span);
                return;
            case MessageKind.WriteCheckpoint:
                OnWriteCheckpoint(t.Message.Span);
                return;
            case MessageKind.WriteCheckpointsDone:
                OnWriteCheckpointsDone(t.Message.Span);
                return;
            case MessageKind.PartialSum:
                OnPartialSum(t.Message.Span);
                return;
            case MessageKind.PartialSumsReleased:
                OnPartialSumsReleased(t.Message.Span);
                return;
            case MessageKind.ArrayTableUpdate:
                OnArrayTableUpdate(t.Message.Span);
                _ = RescanAsync();
                return;
            case MessageKind.HostHandshake:
                OnHostHandshake(t.Message);
                return;
            case MessageKind.HandshakeBatch:
                OnHandshakeBatch(t.Message.Span);
                return;
            case MessageKind.ReservationState:
                OnReservationState(t);
                return;
            case MessageKind.ScsiStateUpdate:
                OnScsiStateUpdate(t);
                return;
            case MessageKind.PowerFail:
                OnPowerFailNotice(t.Message.Span);
                return;
            case MessageKind.HostTagEntries:
                OnHostTagEntries(t.Message.Span);
                return;
        }
        if (!await Receiver.HandleAsync(t)) LogUnknown("command", kind.ToString());
    }

    void OnPeerHello(ReadOnlySpan<byte> message)
    {
        // A takeover of the peer still running holds its mirrored writes in region 2, not yet adopted:
        // the peer's new session must wait (its pairing times out and tries again).
        if (Volatile.Read(ref _takingOver) != 0) return;
        if (PairHello.TryDecode(message, out var hello, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("pair hello", error.ToString());
            return;
        }
        if (_peerFenced && hello.SessionId != 0 && hello.SessionId == Volatile.Read(ref _fencedPeerSession))
        {
            // The session we fenced, back on the link after a hang or a partition before its shelf path told it: it
            // steps down when its next heartbeat reaches the shelf. Lifting the fence now let it serve on, with
            // its registration preempted (classic seed 131: a mirror that never formed again).
            LogFencedSessionHello(_options.PeerName);
            return;
        }
        Volatile.Write(ref _peerSession, hello.SessionId);
        var mine = Nvram.Layout;
        if (hello.NvramBytes != mine.TotalBytes || hello.ElementsPerRegion != mine.ElementCount || hello.ElementBytes != mine.ElementBytes
            || hello.NvramFormat != NvramFile.FormatVersion)
        {
            // The format fixes where the write logs and the host tag tables are, and their sizes: equal
            // sizes of another format are not the same layout.
            var why = $"the pair refuses to form: NVRAM layouts differ (mine: format {NvramFile.FormatVersion}, {mine.TotalBytes} bytes, {mine.ElementCount} elements of {mine.ElementBytes}; " +
                      $"{hello.Controller}'s: format {hello.NvramFormat}, {hello.NvramBytes} bytes, {hello.ElementsPerRegion} elements of {hello.ElementBytes})";
            Receiver.RefuseAll = why;
            LogRefused(why);
            return;
        }
        Receiver.RefuseAll = null;
        Interlocked.Increment(ref _pairGeneration);
        // A new session of the peer: it replayed its own region 1 and resynchronises us next, with
        // sequence numbers that may start lower than its old session's.
        Receiver.Reset();
        Nvram.Peer.Clear();
        ForgetPeerCheckpoints();
        // The peer sends its array table right after its hello; until then, what the drives say.
        Volatile.Write(ref _announced, null);
        // Array changes announced while the link was down (a move finished during a partition)
        // never reached us: read the superblocks again.
        _ = RescanAsync();
        _ = AnswerHelloAsync();
    }

    public async Task RescanAsync()
    {
        // Whether an array handed to us may be served yet is the shelf's to say: ask it first.
        if (Shelf is not null && Claims is not null)
        {
            try { Claims.Replace((await Shelf.StatusAsync()).Claims); }
            catch (ShelfException) { }
        }
        try { await Arrays.RescanAsync(); }
        catch (BlockIoException e) when (e.Kind == BlockErrorKind.PathDown)
        {
            // The shelf cannot be reached: the view stays as it was; the heartbeat rescans when it is back.
            _shelfLost = true;
            return;
        }
        RegisterServedArrays();
        StartOwedWholeSettles();
        lock (_volumesLock) _forwarded.Clear();
    }

    /// <summary>Tells the peer that arrays changed (MR-5: both keep the array table in step).</summary>
    public async Task NotifyPeerArraysChangedAsync()
    {
        if (!Link.IsUp) return;
        var table = new ArrayTable();
        foreach (var (number, e) in Arrays.ArrayTable.OrderBy(kv => kv.Key)) table.TryAdd(e.Serial, number, out _);
        await PostOrDropAsync(IclSignal.Message, DuetFrame.ToArray(table.Snapshot()));
    }

    /// <summary>
    /// Hands an array this controller serves to the peer (MR-1), losing nothing: hold new requests to
    /// its volumes and wait out those in flight; destage the cache; write the peer into the
    /// superblocks; drop the cache's elements of the array (and the peer's mirrors of them); tell the
    /// peer to take the array; release the held requests, which now go to the peer.
    /// </summary>
    public async Task<ArrayInfo> MoveArrayAsync(string array, string to, CancellationToken ct)
    {
        await _arrayChanges.WaitAsync(ct);
        try { return await MoveArrayLockedAsync(array, to, ct); }
        finally { _arrayChanges.Release(); }
    }

    // Moves and deletes run one at a time: each holds its array's volumes and checks ownership first.
    readonly AsyncGate _arrayChanges = new(1, 1);

    async Task<ArrayInfo> MoveArrayLockedAsync(string array, string to, CancellationToken ct)
    {
        if (to is not ("A" or "B")) throw new ManagementException(ManagementErrorKind.Invalid, $"'{to}' is not a controller: use A or B");
        if (!Arrays.Serves(array))
        {
            var owner = Arrays.Status().Arrays.FirstOrDefault(a => a.Name == array)?.Owner;
            if (owner is null) throw new ManagementException(ManagementErrorKind.NotFound, $"no array named '{array}' (see: duet array list)");
            if (owner == to) throw new ManagementException(ManagementErrorKind.Invalid, $"array '{array}' is already served by controller {to}");
            throw new ManagementException(ManagementErrorKind.Conflict, $"array '{array}' is served by controller {owner}; ask it (duet --controller {owner} ...)");
        }
        if (to == Name) throw new ManagementException(ManagementErrorKind.Invalid, $"array '{array}' is already served by controller {Name}");
        CheckPeerMayTake(array, to, "");
        ulong serial = ArrayManager.SerialOf(Arrays.ServedArrays.First(a => a.Name == array).Uuid);
        // The shelf names us owner until the very end of the move (an array created before it had a claim
        // gets one now): the peer serves it only once the shelf names it.
        if (Claims?.Of(serial) is null) await ClaimAsync(serial, Name);
        // Asked again once the cache has drained, just before the superblocks name the peer: the drain can take as
        // long as the drives are out of reach, and meanwhile the peer may have been fenced (an FO-5 takeover by this
        // very controller). Handed over then, the array was served by nobody: the fenced peer cannot reach its
        // drives, and the commands for it waited here as secondary until the peer stepped down (simulator seed 5159
        // of --faults failover,multicast --ops 300: answers 3.3 s late). Refused, the held requests go back to the
        // array here.
        var info = await GiveUpArrayAsync(array, async () =>
            {
                // Rows our failed writes may have torn are settled from their sums first: the sums are in our NVRAM
                // only, and the next owner, finding such a row with a member missing, could not rebuild that member's
                // block (simulator seed 9385: a failed write-through of a host write tore a RAID 6 row, a drive failed,
                // and after the move the new owner listed the block as lost).
                await SettleFailedWritesAsync(Arrays.NumberOf(Arrays.ServedArrays.First(a => a.Name == array)), ct);
                CheckPeerMayTake(array, to, " (it changed while the move drained the cache)");
                return await Arrays.HandOverAsync(array, to, ct);
            },
            // Held requests were admitted (and are counted) by their CachedVolume: no second count.
            v => new ForwardedVolume(v.Name, v.SizeBytes, Forwarding), () => HandOverClaimAsync(to, serial), ct);
        LogMoved(array, to);
        return info;
    }

    /// <summary>Refuses a move to a peer that cannot take the array now: fenced, not registered at the shelf, or not paired.</summary>
    void CheckPeerMayTake(string array, string to, string when)
    {
        if (_peerFenced)
            throw new ManagementException(ManagementErrorKind.Conflict, $"controller {to} is fenced at the shelf (standby until its fence is lifted: `duet shelf unfence {to}`); it cannot take array '{array}' now{when}");
        if (Shelf is not null && !_peerRegistered)
            throw new ManagementException(ManagementErrorKind.Conflict, $"controller {to} is not registered at the shelf yet (a standby rejoining); it cannot take array '{array}' now{when}");
        if (!Link.IsUp || Mirror.Mode != MirrorMode.Healthy)
            throw new ManagementException(ManagementErrorKind.Conflict, $"controller {to} is not paired with {Name} (link {(Link.IsUp ? "up" : "down")}, mirror {(Mirror.Mode == MirrorMode.Healthy ? "healthy" : "in error-recovery mode")}); it cannot take array '{array}' now{when}");
    }

    /// <summary>Names <paramref name="owner"/> owner of an array at the shelf (a new array; an array about to
    /// move). Without a shelf, nothing. A shelf that cannot be reached leaves it to the heartbeat.</summary>
    internal async Task ClaimAsync(ulong serial, string owner)
    {
        if (Shelf is null || Claims is null) return;
        try { Claims.Merge(await Shelf.ClaimForAsync(owner, [serial])); }
        catch (ShelfException e) { LogUnknown("claim", e.Message); }
    }

    /// <summary>The last step of a move: the shelf names the new owner (only then does it serve the array), and
    /// the peer is told to look.</summary>
    async Task HandOverClaimAsync(string to, ulong serial)
    {
        await ClaimAsync(serial, to); // if the shelf cannot be reached, the heartbeat finishes it
        await NotifyPeerArraysChangedAsync();
    }

    /// <summary>
    /// What a move and a delete share: hold new requests to the array's volumes and wait out those in
    /// flight; destage the cache; make the change (hand-over or delete); drop the cache's elements of
    /// the array and the peer's mirrors of them (its number may name another array next); run
    /// <paramref name="then"/>; release the held requests to <paramref name="heldGoTo"/> — or, if
    /// the change failed, back to the array here.
    /// </summary>
    async Task<T> GiveUpArrayAsync<T>(string array, Func<Task<T>> change, Func<CachedVolume, IBlockVolume> heldGoTo, Func<Task>? then, CancellationToken ct)
    {
        List<CachedVolume> volumes;
        lock (_volumesLock)
        {
            volumes = _cached.Values.Where(v => v.Volume.Array.Name == array).ToList();
            _holding[array] = volumes;
        }
        foreach (var name in Arrays.Status().Volumes.Where(v => v.Array == array).Select(v => v.Name))
            if (ServedVolume(name) is CachedVolume cv)
                lock (_volumesLock)
                    if (!volumes.Contains(cv)) volumes.Add(cv);
        List<CachedVolume> first;
        lock (_volumesLock) first = [.. volumes];
        await Waits.WhenAll(first.Select(v => v.HoldAsync()));
        lock (_volumesLock) _givingUp.Add(array);
        bool changed = false;
        try
        {
            await Cache.DrainAsync(ct);
            var raid = Arrays.ServedArrays.First(a => a.Name == array);
            // Stripes a takeover still owes a settle are settled here, not left torn to the next owner.
            await raid.SettleMarkedAsync(ct: ct);
            byte number = Arrays.NumberOf(raid);
            T result;
            try
            {
                result = await change();
            }
            catch (HandOverInterruptedException e)
            {
                // Some superblocks may name the peer now: the volumes stay held (no write is taken, so none is
                // acknowledged that a restart finding the array the peer's would lose) until ours say it is ours.
                await ReassertOwnerAsync(array);
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException ?? e);
                throw;
            }
            changed = true;
            await Cache.ForgetAsync(number);
            lock (_volumesLock)
            {
                _cachedArrays.Remove(array);
                foreach (var v in volumes) _cached.Remove(v.Name);
            }
            if (then is not null) await then();
            return result;
        }
        finally
        {
            List<CachedVolume> held;
            lock (_volumesLock)
            {
                _givingUp.Remove(array);
                _holding.Remove(array);
                held = [.. volumes];
            }
            foreach (var v in held) v.Release(changed ? heldGoTo(v) : null);
        }
    }

    /// <summary>After a hand-over cut part-way: writes our ownership back into the array's superblocks, again every
    /// 100 ms while the drives cannot be reached, until it is done, the array is no longer ours, or we stop.</summary>
    async Task ReassertOwnerAsync(string array)
    {
        while (!_stopping.IsCancellationRequested && Arrays.Serves(array))
        {
            try
            {
                await Arrays.ReassertOwnerAsync(array, _stopping.Token);
                return;
            }
            catch (BlockIoException e) when (e.Kind == BlockErrorKind.PathDown)
            {
                LogReassertWaits(array, e.Message);
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            try { await _options.Time.DelayAsync(TimeSpan.FromMilliseconds(100), _stopping.Token); }
            catch (OperationCanceledException) { return; }
        }
    }

    /// <summary>
    /// Deletes an array this controller serves. Its volumes are held while the cache destages
    /// (the array's data is gone either way, but no element of it may outlive it: its number can
    /// be reused by the next array); then the array is deleted, the cache drops its elements and
    /// the peer's mirrors of them, and the array leaves the cache's table.
    /// </summary>
    public async Task DeleteArrayAsync(string array, CancellationToken ct)
    {
        await _arrayChanges.WaitAsync(ct);
        try { await DeleteArrayLockedAsync(array, ct); }
        finally { _arrayChanges.Release(); }
    }

    async Task DeleteArrayLockedAsync(string array, CancellationToken ct)
    {
        if (!Arrays.Serves(array))
        {
            await Arrays.DeleteArrayAsync(array, ct); // the manager's own error: not found, or served by the peer
            return;
        }
        await GiveUpArrayAsync(array, async () => { await Arrays.DeleteArrayAsync(array, ct); return true; },
            v => new GoneVolume(v.Name, v.SizeBytes), null, ct);
    }

    internal IBlockVolume? ServedVolume(string name)
    {
        if (!Arrays.TryGetServedVolume(name, out var rv)) return null;
        RegisterServedArrays();
        lock (_volumesLock)
        {
            if (!_cached.TryGetValue(name, out var cv) || cv.Volume.Array != rv.Array || cv.Volume.OffsetBlocks != rv.OffsetBlocks)
            {
                _cached[name] = cv = new CachedVolume(rv, Cache, Arrays.NumberOf(rv.Array), this);
                // Made while a move or delete of its array holds the array's volumes: held too. Unheld, a request
                // forwarded by the peer wrote into the cache after the drain, and the move forgot a dirty element
                // (simulator seeds 11710 and 11997 of --faults all --ops 1000: an invariant violation; the write,
                // acknowledged, would have been lost with it).
                if (_holding.TryGetValue(rv.Array.Name, out var held))
                {
                    Invariant.Assert(cv.HoldAsync().IsCompleted, "a new volume has no request in flight");
                    held.Add(cv);
                }
            }
            return cv;
        }
    }

    /// <summary>Served and forwarded volumes; each volume's LUN is the one stored in its array's superblock, the
    /// same on both controllers (<see cref="ArrayManager.LunAssignments"/>).</summary>
    sealed class Catalog(Controller c) : ILunCatalog
    {
        public bool TryGetVolume(string name, out IBlockVolume volume)
        {
            if (c.ServedVolume(name) is { } served) { volume = served; return true; }
            var peer = c.Arrays.PeerVolumes.FirstOrDefault(v => v.Name == name);
            if (peer is not null)
            {
                lock (c._volumesLock)
                {
                    if (!c._forwarded.TryGetValue(name, out var fv) || fv.SizeBytes != peer.SizeBytes)
                        c._forwarded[name] = fv = new ForwardedVolume(name, peer.SizeBytes, c.Forwarding, c.HostCommands);
                    volume = fv;
                }
                return true;
            }
            volume = null!;
            return false;
        }

        public IReadOnlyList<IBlockVolume> Volumes =>
            c.Arrays.Status().Volumes.Select(v => TryGetVolume(v.Name, out var vol) ? vol : null).Where(v => v is not null).Select(v => v!).ToList();

        public IReadOnlyList<LunVolume> LunVolumes
        {
            get
            {
                var list = new List<LunVolume>();
                foreach (var (lun, name) in c.Arrays.LunAssignments)
                    if (TryGetVolume(name, out var volume)) list.Add(new LunVolume(lun, volume));
                return list;
            }
        }
    }

    public ControllerInfo Info()
    {
        var cc = Cache.Counters;
        var mc = Mirror.Counters;
        var lc = Link.Counters;
        return new ControllerInfo(Name, _options.PeerName, Link.IsUp, Mirror.Mode == MirrorMode.Healthy ? "healthy" : "error-recovery",
            Mirror.DownReason, _options.Mirror.ToString().ToLowerInvariant(), Cache.ElementCount, cc.Dirty, cc.Hits, cc.Misses, cc.DestagedElements,
            cc.WriteThroughs, cc.Mirrored, mc.Batches, mc.SmallWrites, mc.LargeWrites, lc.DoorbellsRung, lc.MessageBytesSent, lc.DataBytesSent,
            Forwarding.Forwarded, Interlocked.Read(ref ForwardingServer.Served), Receiver.Refused) { Failover = FailoverState(), PoweringDown = _poweringDown, Failback = FailbackState(),
              LinkBytesByType = lc.SentByType.ToDictionary(kv => kv.Key, kv => kv.Value.MessageBytes + kv.Value.DataBytes),
              InvariantViolations = Invariant.Violations, LastInvariantViolation = Invariant.LastViolation };
    }

    /// <summary>Logs a violation where it happens, whoever catches it (or nobody: a fire-and-forget task). The process
    /// host (<see cref="ControllerServer"/>) hands it every violation of its process: they are all this controller's.
    /// (Not subscribed by the controller itself: the simulator abandons crashed controllers, and a static event would
    /// keep each alive.)</summary>
    internal void OnInvariantViolated(string message) => LogInvariantViolated(message, Environment.StackTrace);

    [LoggerMessage(EventId = 7080, Level = LogLevel.Critical, Message = "{Message}: this controller's own state is wrong; the operation stopped there (the stack: {Stack})")]
    partial void LogInvariantViolated(string message, string stack);

    /// <summary>
    /// Stops the controller and disposes its parts. The orderly stop destages the whole cache first (the
    /// peer's mirror of us is then not needed); after a power-fail window (<see cref="PowerFailAsync"/>)
    /// nothing is destaged: the dirty elements stay in NVRAM for the next start to replay.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        _stopping.Cancel();
        Handshake.Stop();
        if (!_poweringDown)
        {
            try { await Waits.WithTimeout(Cache.DrainAsync(), _options.DrainTimeout, _options.Time); }
            catch (Exception e) { LogDrainFailed(e.Message); }
        }
        await Cache.DisposeAsync();
        await Mirror.DisposeAsync();
        await Link.DisposeAsync();
        await Arrays.DisposeAsync();
        if (Shelf is IAsyncDisposable port) await port.DisposeAsync();
        Nvram.Dispose();
        if (_poweringDown) LogPoweredDown(Name);
        else LogStopped(Name);
    }

    [LoggerMessage(EventId = 7002, Level = LogLevel.Information, Message = "replayed {Count} cache elements from NVRAM region 1")]
    partial void LogReplayed(int count);
    [LoggerMessage(EventId = 7044, Level = LogLevel.Warning, Message = "dropped {Count} clean NVRAM elements of arrays not served here (left by a move or delete cut short after the array left)")]
    partial void LogReplayDropped(int count);
    [LoggerMessage(EventId = 7003, Level = LogLevel.Information, Message = "paired with controller {Peer}; mirror resynchronised, write-back on")]
    partial void LogPaired(string peer);
    [LoggerMessage(EventId = 7004, Level = LogLevel.Error, Message = "{Why}")]
    partial void LogRefused(string why);
    [LoggerMessage(EventId = 7010, Level = LogLevel.Warning, Message = "array {Array}: a hand-over was cut part-way; its volumes wait until its superblocks name this controller again: {Why}")]
    partial void LogReassertWaits(string array, string why);
    [LoggerMessage(EventId = 7005, Level = LogLevel.Warning, Message = "unknown {Where} on the ICL refused: {Kind}")]
    partial void LogUnknown(string where, string kind);
    [LoggerMessage(EventId = 7006, Level = LogLevel.Error, Message = "destage after losing the peer failed: {Error}")]
    partial void LogDrainFailed(string error);
    [LoggerMessage(EventId = 7007, Level = LogLevel.Information, Message = "controller {Name} stopped; cache destaged")]
    partial void LogStopped(string name);
    [LoggerMessage(EventId = 7009, Level = LogLevel.Information, Message = "controller {Name} stopped after its power-fail window; its dirty cache is in NVRAM")]
    partial void LogPoweredDown(string name);
    [LoggerMessage(EventId = 7008, Level = LogLevel.Information, Message = "array {Array} moved to controller {To}; its requests are forwarded there")]
    partial void LogMoved(string array, string to);
}
