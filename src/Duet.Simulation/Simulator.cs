using Duet.Cache;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Drives;
using Duet.Drives.Faults;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;

namespace Duet.Simulation;

/// <summary>A bug switched on on purpose, to prove the checkers can fail (test-only).</summary>
public enum PlantedBug
{
    None,
    /// <summary>The cache is told its mirror group was mirrored as soon as it is sent, before the peer's status.</summary>
    AckBeforeMirror,
    /// <summary>A controller that hands over or deletes an array drops its cache elements but leaves the peer's copies in region 2.</summary>
    ForgetKeepsPeerCopies,
    /// <summary>A destage round marks its elements clean before the drives flushed what it wrote (a power cut then loses acknowledged writes).</summary>
    CleanBeforeFlush,
    /// <summary>Array writes keep no partial parity (a cut that tears a row, then a member lost, loses what it held).</summary>
    NoPartialParity,
}

public sealed record SimOptions
{
    /// <summary>Host operations in the safety phase (the issue's budget: at most 2,000).</summary>
    public int Operations { get; init; } = 1000;
    /// <summary>Faults a seed may draw (each is then on with probability 1/2).</summary>
    public FaultKind AllowedFaults { get; init; } = FaultKind.All;
    /// <summary>Use exactly these faults instead of drawing (null: draw).</summary>
    public FaultKind? ForcedFaults { get; init; }
    public bool KeepTrace { get; init; }
    public PlantedBug Bug { get; init; }
    /// <summary>Size of each simulated drive (the issue's budget: at most 16 MiB).</summary>
    public long DriveBytes { get; init; } = 8L << 20;
    /// <summary>How long, after the faults heal, the pair has to converge and serve every volume.</summary>
    public TimeSpan LivenessBudget { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Failback "auto" with this settle time (null: manual, the default, as `duet up`): a controller serving an
    /// array its peer prefers moves it back on its own once the pair has settled, among the faults.</summary>
    public TimeSpan? FailbackSettle { get; init; }
}

public sealed record SimStats(long Writes, long WritesAcked, long Reads, long ReadsOk, long Flushes, long Moves, long MovesDone,
    long Creates, long Deletes, long Crashes, long Partitions, long Dropped, long FailedDrives, long Steps, TimeSpan VirtualTime)
{
    public long Hangs { get; init; }
    public long Takeovers { get; init; }
    public long PowerCuts { get; init; }
    public long BlocksRolledBack { get; init; }
    /// <summary>Rows whose partial parity the controllers stored, and rows a full pool left unguarded.</summary>
    public long PartialParityRows { get; init; }
    public long UnguardedRows { get; init; }
    /// <summary>Arrays moved back to their preferred owner by the controllers themselves (<see cref="SimOptions.FailbackSettle"/>).</summary>
    public long FailBacks { get; init; }
    /// <summary>Host-protocol hosts (the multicast fault): commands, attempts sent again, time limits reached,
    /// the longest wait of an attempt both controllers held, and the longest command.</summary>
    public long HostCommands { get; init; }
    public long HostResends { get; init; }
    public long HostLimitsReached { get; init; }
    public TimeSpan HostStallMax { get; init; }
    public TimeSpan HostCommandMax { get; init; }
    /// <summary>Attempts the stall checker did not judge: both controllers were impaired at once near them.</summary>
    public long HostStallsExempt { get; init; }
}

public sealed record SimResult(ulong Seed, FaultPlan Plan, IReadOnlyList<string> Failures, ulong TraceHash, SimStats Stats, SimTrace Trace)
{
    public bool Passed => Failures.Count == 0;
}

/// <summary>
/// One seed of the simulator: both controllers, their NVRAM, the ICL, the drives and several
/// hosts, run on <see cref="SimScheduler"/> from one seed. The safety phase runs the workload
/// with the seed's faults and checks as it goes; the liveness phase heals every fault, gives the
/// pair <see cref="SimOptions.LivenessBudget"/> of virtual time to converge (both controllers
/// up, paired, mirrors healthy), then reads every written sector back through both
/// controllers and checks the mirror invariant with the link quiet. See docs/internals/simulator.md.
/// </summary>
public sealed partial class Simulator
{
    const int SectorBytes = Units.SectorBytes;
    static readonly string[] Controllers = ["A", "B"];

    readonly ulong _seed;
    readonly SimOptions _options;
    readonly DeterministicRandom _random;
    readonly SimTrace _trace;
    readonly SimScheduler _scheduler;
    readonly SimNode _world;
    readonly SimWire _wire;
    readonly MemoryShelf _shelf = new();
    // The enclosure both controllers reach through their own ports (fences, claims, heartbeat slots).
    Shelf.Shelf _enclosure = null!;
    readonly MemoryShelfStateStore _enclosureState = new();
    readonly Dictionary<string, FaultyDrive> _faulty = new(StringComparer.Ordinal);
    readonly Side[] _sides = new Side[2];
    readonly List<SimNode> _hosts = [];
    readonly Dictionary<string, VolumeModel> _volumes = new(StringComparer.Ordinal);
    readonly List<string> _fixedArrays = [];
    readonly List<string> _failures = [];
    readonly FaultPlan _plan;
    readonly Guid _pairId;
    NvramLayout _layout = null!;
    long _logical;
    ulong _nextWriteId;
    int _opsIssued;
    readonly SortedDictionary<int, string> _inflight = [];
    bool _safety = true, _done;
    int _scratchGeneration;
    TimeSpan _thinkMax;
    bool _scratchBusy;

    // statistics
    long _writes, _writesAcked, _reads, _readsOk, _flushes, _moves, _movesDone, _creates, _deletes, _crashes, _partitions, _failedDrives;

    sealed class Side(string name, SimNode node)
    {
        public readonly string Name = name;
        public readonly SimNode Node = node;
        public NvramStore Store = null!;
        public NvramFile? Nvram;          // the newest opened over Store (kept after a crash, for checkers)
        public Controller? Controller;    // null while down or starting
        public bool Starting;
        public bool ShelfPathLost;
        /// <summary>Whether the shelf counts a connection of this controller (<see cref="Shelf.Shelf.Attach"/>).</summary>
        public bool Attached;
        /// <summary>The last moment this controller could not be heard on both paths (down, hung, or its
        /// shelf path lost with the link cut): a takeover of it is legitimate only soon after one.</summary>
        public TimeSpan? LastSilent;
        public long TakeoversSeen, DecisionsSeen, FailBacksSeen;
        /// <summary>The last moment this controller's handshake held a host command past its time limit (FO-5).</summary>
        public TimeSpan? LastLimitReached;
        public bool IsUp => Node.IsAlive && Controller is not null;
    }

    Simulator(ulong seed, SimOptions options)
    {
        _seed = seed;
        _options = options;
        _random = new DeterministicRandom(seed);
        _trace = new SimTrace(options.KeepTrace);
        _scheduler = new SimScheduler(_random.Fork(), _trace);
        _trace.Clock = () => _scheduler.Elapsed;
        _world = new SimNode(_scheduler, "world");
        var plan = FaultPlan.Draw(_random, options.AllowedFaults);
        if (options.ForcedFaults is { } forced) plan = plan with { On = forced };
        _plan = plan;
        _scheduler.ShuffleReady = _plan.Has(FaultKind.Shuffle);
        // With host-protocol hosts a whole 512 KiB request frame travels as one ICL message (forwarded-frame,
        // completed with a read's data): the message buffer is 2 MiB, as `duet controller`'s.
        int messageBytes = _plan.Has(FaultKind.Multicast) ? 2 << 20 : 64 << 10;
        _wire = new SimWire(_world, _trace, IclWindowOptions.Default with
        {
            DataBufferBytes = 1 << 20, ReplyDataBufferBytes = 1 << 20, MessageBufferBytes = messageBytes, ReplyMessageBufferBytes = 64 << 10,
        });
        _pairId = new Guid((int)(seed >> 32), (short)seed, (short)(seed >> 16), 1, 2, 3, 4, 5, 6, 7, 8);
        for (int i = 0; i < 2; i++) _sides[i] = new Side(Controllers[i], new SimNode(_scheduler, Controllers[i]));
    }

    /// <summary>Runs one seed to the end and returns what the checkers found.</summary>
    public static SimResult Run(ulong seed, SimOptions options)
    {
        var previous = SynchronizationContext.Current;
        Invariant.ResetThisThread();
        try
        {
            var sim = new Simulator(seed, options);
            return sim.RunCore();
        }
        finally { SynchronizationContext.SetSynchronizationContext(previous); }
    }

    SimResult RunCore()
    {
        _trace.Add($"seed {_seed} faults {_plan}");
        _world.Post(async () =>
        {
            try { await ScriptAsync(); }
            catch (Exception e) { Fail($"the simulation script failed: {e.GetType().Name}: {e.Message}"); }
            finally { _done = true; }
        });
        var deadline = _scheduler.Now + TimeSpan.FromMinutes(30);
        if (!_scheduler.RunUntil(() => _done, deadline, maxSteps: 50_000_000))
            Fail(_scheduler.ReadyCount == 0 && _scheduler.Clock.NextDueUtc is null
                ? "deadlock: nothing is ready and no timer is armed, but the run has not finished"
                : $"the run did not finish within its step or time budget; host operations still waiting: {string.Join("; ", _inflight.Values.Take(6))}; {string.Join("; ", _sides.Select(DescribeState))}");
        foreach (var e in _scheduler.Escaped) Fail($"an exception escaped a work item: {e}");
        // Every seed runs on this thread: a violation some catch (or an unobserved fire-and-forget task) swallowed
        // still fails the seed.
        var (violations, first) = Invariant.ViolationsOnThisThread;
        if (violations > 0) Fail($"{violations} invariant violations during the run (caught or not); the first: {first}");
        if (_scheduler.ForeignPosts > 0) Fail($"{_scheduler.ForeignPosts} work items were posted from another thread (real time or threads leaked into the simulation); the first: {_scheduler.FirstForeignPost}");
        var stats = new SimStats(_writes, _writesAcked, _reads, _readsOk, _flushes, _moves, _movesDone, _creates, _deletes, _crashes, _partitions,
            _wire.Dropped, _failedDrives, _scheduler.Steps, _scheduler.Elapsed) { Hangs = _hangs, Takeovers = _takeovers, FailBacks = _failBacks, PowerCuts = _powerCuts, BlocksRolledBack = _blocksRolledBack,
              PartialParityRows = _ppRows + _sides.Sum(x => x.Controller?.WriteLog.PartialParityStored ?? 0),
              UnguardedRows = _ppUnguarded + _sides.Sum(x => x.Controller?.WriteLog.PartialParityUnguarded ?? 0),
              HostCommands = _hostCommands, HostResends = _hostResends, HostLimitsReached = _limitsReached, HostStallMax = _maxStall, HostCommandMax = _maxCommand, HostStallsExempt = _stallsExempt };
        _trace.Add($"end: {_failures.Count} failures");
        return new SimResult(_seed, _plan, _failures.ToList(), _trace.Hash, stats, _trace);
    }

    static string DescribeState(Side s)
    {
        if (s.Controller is not { } c) return $"{s.Name} down";
        var i = c.Info();
        return $"{s.Name}: link {(i.LinkUp ? "up" : "down")}, mirror {i.Mirror}, dirty {i.DirtyElements}, serves [{string.Join(",", c.Arrays.ServedArrays.Select(a => a.Name))}], {c.Cache.DescribeState()}; {c.Mirror.DescribeState()}; write log: {c.WriteLog.DescribeState()}, waiting for a flush [{string.Join(",", c.WriteLog.ArraysWaitingForFlush())}], full {c.WriteLog.Waits} times";
    }

    void Fail(string what)
    {
        if (_failures.Count < 20) _failures.Add($"[{_scheduler.Elapsed.TotalMilliseconds:F3} ms] {what}");
        _trace.Add($"FAILURE {what}");
    }

    // ---- the script ------------------------------------------------------------------------

    async Task ScriptAsync()
    {
        await SetUpAsync();
        var workers = new List<Task>();
        int hosts = _random.Next(2, 5);
        _thinkMax = TimeSpan.FromMicroseconds(_random.Next(100, 20_000));
        if (_plan.Has(FaultKind.Multicast)) DrawProtocolHosts();
        for (int h = 0; h < hosts; h++)
        {
            var node = new SimNode(_scheduler, $"host{h}");
            _hosts.Add(node);
            if (_plan.Has(FaultKind.Multicast)) AddProtocolHost(node);
            int depth = _random.Next(1, 5);
            for (int q = 0; q < depth; q++) workers.Add(node.InvokeAsync(() => WorkerAsync(node)));
        }
        var faults = FaultsAsync();
        _ = CheckFailoverLoopAsync();
        await Waits.WhenAll(workers);
        _safety = false;
        await faults;
        await HealAsync();
        await LivenessAsync();
    }

    async Task SetUpAsync()
    {
        long elements = _plan.Has(FaultKind.FullCache) ? _plan.NvramElements : 256;
        _layout = NvramLayout.Of(2 * elements * NvramLayout.ElementBytesFixed + (4L << 20), (int)elements);
        foreach (var s in _sides) s.Store = NvramStore.For(_layout, $"nvram-{s.Name}");
        // The shelf: RAID 1 (2 drives), RAID 5 (3), RAID 6 (4), two drives for the scratch array, one spare.
        string[] drives = ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "s0", "s1"];
        foreach (var d in drives)
        {
            var memory = _shelf.Insert(d, _options.DriveBytes);
            var latency = _plan.Has(FaultKind.SlowDrive) && _random.Chance(0.5) ? _plan.MaxDriveLatency : TimeSpan.Zero;
            _faulty[d] = new FaultyDrive(memory, new FaultOptions
            {
                Seed = _random.NextUInt64(), TrackUnflushedWrites = _plan.Has(FaultKind.Power), LatencyJitterMax = latency,
            }, _world.Time);
        }
        _enclosure = new Shelf.Shelf(_shelf, _enclosureState, (name, inner) => _faulty.TryGetValue(name, out var f) ? f : inner)
        {
            Context = _world.CurrentContext,
        };
        await StartControllerAsync(_sides[0]);
        await StartControllerAsync(_sides[1]);
        _wire.Connect();
        await WaitForAsync(() => Paired(), TimeSpan.FromSeconds(10), "the pair to form at start");
        // Array 0 and 2 on A, 1 on B, as `duet up` would; levels 1, 5, 6.
        (string Name, int Level, string[] Drives, string Owner)[] arrays =
        [
            ("r1", 1, ["d0", "d1"], "A"), ("r5", 5, ["d2", "d3", "d4"], "B"), ("r6", 6, ["d5", "d6", "d7", "d8"], "A"),
        ];
        foreach (var (name, level, members, owner) in arrays)
        {
            var side = SideOf(owner);
            var info = await side.Node.InvokeAsync(() => side.Controller!.ArrayService.CreateArrayAsync(new CreateArrayRequest(name, level, members, ChunkKiB: 16 << _random.Next(3), Owner: owner)));
            _trace.Add($"array {name}: RAID {level}, chunk {info.ChunkKiB} KiB");
            long size = info.CapacityBytes / 2 / 4096 * 4096;
            for (int v = 0; v < 2; v++)
            {
                string vol = $"{name}v{v}";
                await side.Node.InvokeAsync(() => side.Controller!.ArrayService.CreateVolumeAsync(new CreateVolumeRequest(vol, name, size)));
                _volumes[vol] = new VolumeModel(vol, size / SectorBytes);
            }
            _fixedArrays.Add(name);
            await side.Node.InvokeAsync(() => side.Controller!.NotifyPeerArraysChangedAsync());
        }
        await _world.Time.DelayAsync(TimeSpan.FromMilliseconds(10));
        _trace.Add("set up: 3 arrays, 6 volumes");
    }

    Guid NewUuid()
    {
        Span<byte> b = stackalloc byte[16];
        _random.NextBytes(b);
        return new Guid(b);
    }

    Side SideOf(string name) => _sides[name == "A" ? 0 : 1];
    Side Other(Side s) => _sides[s == _sides[0] ? 1 : 0];

    bool Paired() => _sides.All(s => s.IsUp && s.Controller!.Link.IsUp && s.Controller.Mirror.Mode == MirrorMode.Healthy);

    async Task WaitForAsync(Func<bool> condition, TimeSpan budget, string what)
    {
        var until = _scheduler.Elapsed + budget;
        while (!condition())
        {
            if (_scheduler.Elapsed >= until) throw new TimeoutException($"waited {budget.TotalSeconds} s of virtual time for {what}");
            await _world.Time.DelayAsync(TimeSpan.FromMilliseconds(5));
        }
    }

    async Task StartControllerAsync(Side side)
    {
        side.Starting = true;
        try
        {
            var node = side.Node;
            var port = (LocalShelfPort)_enclosure.Port(side.Name);
            port.PathLost = () => side.ShelfPathLost;
            // As `duet shelf` counts a controller's connections: this one's process is there until it crashes.
            if (!side.Attached) _enclosure.Attach(side.Name);
            side.Attached = true;
            var loggers = new TraceLoggerFactory(_trace, side.Name);
            ulong session = _random.NextUInt64() | 1;
            var controller = await node.InvokeAsync(async () =>
            {
                var claims = new ShelfClaims(side.Name);
                bool joined = await Controller.JoinShelfAsync(port, session, node.Time, claims);
                _trace.Add($"{side.Name} {(joined ? "registered at the shelf" : "is fenced at the shelf: standby")}");
                var arrays = await Controller.OpenArraysAsync(new ArrayManagerOptions { Shelf = port, Time = node.Time, Controller = side.Name, NewUuid = NewUuid, LoggerFactory = loggers, MayServe = claims.MayServe }, node.Time);
                var nvram = NvramFile.OpenOrCreate(side.Store, _layout, side.Name, _pairId);
                side.Nvram = nvram;
                var link = _wire.Attach(node, side.Name);
                var c = new Controller(new ControllerCoreOptions
                {
                    Name = side.Name, Session = session, Time = node.Time, Loggers = loggers, Shelf = port, Claims = claims,
                    ForwardTimeout = TimeSpan.FromSeconds(2),
                    Failover = _options.FailbackSettle is { } settle ? new FailoverOptions { Failback = FailbackMode.Auto, FailbackSettle = settle } : new FailoverOptions(),
                    ConfigureCache = o => o with
                    {
                        PlantedForgetKeepsPeerCopies = _options.Bug == PlantedBug.ForgetKeepsPeerCopies,
                        PlantedCleanBeforeFlush = _options.Bug == PlantedBug.CleanBeforeFlush,
                    },
                    WrapMirror = _options.Bug == PlantedBug.AckBeforeMirror ? m => new AckBeforeMirror(m) : null,
                    PlantedNoPartialParity = _options.Bug == PlantedBug.NoPartialParity,
                    HandshakeObserver = _plan.Has(FaultKind.Multicast) ? e => OnHandshakeEvent(side, e) : null,
                }, arrays, nvram, link);
                c.SteppedDown += reason => _world.Post(() => OnSteppedDown(side, c, reason));
                await c.StartAsync();
                return c;
            });
            side.Controller = controller;
            _trace.Add($"controller {side.Name} started (incarnation {node.Incarnation}, replayed {controller.ReplayedElements})");
            // It may have found itself fenced while it started (settling its write log touches the drives):
            // the notice came before it was ours to act on, so act on it now.
            if (controller.IsSteppedDown) _world.Post(() => OnSteppedDown(side, controller, "stepped down while starting"));
        }
        finally { side.Starting = false; }
    }

    /// <summary>The planted bug of <see cref="PlantedBug.AckBeforeMirror"/>: reports every group mirrored at once.</summary>
    sealed class AckBeforeMirror(ICacheMirror inner) : ICacheMirror
    {
        public MirrorMode Mode => inner.Mode;

        public Task AppendGroup(IReadOnlyList<MirrorChange> changes)
        {
            var real = inner.AppendGroup(changes);
            if (real.IsFaulted) return real;
            _ = Observe(real);
            return Task.CompletedTask;
        }

        static async Task Observe(Task mirrored)
        {
            try { await mirrored; } catch (MirrorUnavailableException) { }
        }
    }
}
