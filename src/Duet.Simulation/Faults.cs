// The fault model of Duet's simulator.
//
// A simulated run is the real controller code of both controllers (Duet.Host's Controller,
// with its ArrayManager, RAID engine, write-back cache, mirror and forwarding), run on one
// thread under SimScheduler on virtual time. Everything outside the controllers is simulated
// and can misbehave, each fault switched on per seed "swarm" style: every seed draws which
// faults are on and at what rate, so some seeds hammer one fault and others mix several.
//
//   crash        A controller dies at a random moment: between any two of its work items, so
//                in the middle of a write, a mirror batch, a destage, a move or a pairing.
//                Its volatile state is gone (its queued work and timers never run, calls into
//                it fail like a reset connection); its NVRAM (an NvramStore) and the drives
//                keep exactly what was written. It restarts after a random down time: a new
//                ArrayManager assembles from the superblocks, the cache replays region 1, the
//                link reconnects and the pair resynchronises.
//   link-delay   Every ICL transfer waits a random latency (per queue in order: a ring never
//                reorders its own entries, so commands and replies, and the two directions,
//                reorder against each other).
//   link-drop    A transfer is lost on the wire although its sender believes it posted it
//                (the sender's status timeout must notice).
//   partition    The link is cut for a random time and then reconnected (a new connection);
//                transfers in flight are lost, both controllers see the link go down.
//   slow-drive   Some drives take a random latency per request (FaultyDrive on virtual time).
//   fail-drive   One member of a redundant array fails at a random moment (the array runs
//                degraded; it is not replaced during the run).
//   full-cache   The NVRAM holds only a few dozen elements, so hosts meet back-pressure and
//                the cache evicts and destages under load.
//   shuffle      Ready work items run in a random order instead of first-in first-out (both
//                are orders a thread pool could produce).
//   takeover     A controller dies and stays down for 1.2-3 s, longer than the heartbeat
//                timeout (1 s): the survivor fences it at the shelf, adopts its mirrored elements
//                and serves its arrays; the dead one restarts fenced, discards its NVRAM and
//                rejoins as standby; the workload moves arrays back.
//   hang         A controller stops (SIGSTOP, a long GC pause, a stalled host): its work items
//                and timers wait, for 5 ms-2.5 s, then run. Short hangs must not cause a
//                takeover; long ones do, and the woken controller must find itself fenced, serve
//                nothing stale, and step down (it is then restarted).
//   shelf-path   A controller loses its path to the shelf for 5 ms-2.5 s (its heartbeat slot
//                stops; its drive requests fail). With the ICL up, the peer must not take over.
//   shelf-restart The shelf process restarts: it reloads its state (fences, keys, claims,
//                epochs) from its store and forgets its heartbeat slots.
//   power        The power fails for the whole system at a random moment (AW-6, issue 6): both
//                controllers die at once (in the middle of destages, mirror batches, recovery
//                after an earlier cut...), the shelf restarts, and every drive keeps only what it
//                had flushed plus any subset of the writes since, block by block, so a multi-block
//                write, and a data block and its checksum tag, can land apart (torn). Requests in
//                flight at the cut never land. NVRAM keeps what was written (battery-backed). Power
//                returns after a random time and both controllers start and recover together.
//                `--faults power` also allows crash, full-cache, slow-drive and shuffle, swarm-style;
//                power is then on for every seed. `--faults power,fail-drive` adds a drive failure at
//                any time or, with power cuts, a parity-array drive that does not come back at power-on.
//   multicast    Not a fault of the pair but of the hosts' path (FO-3..FO-6): hosts speak Duet's host
//                protocol. Each command goes with one host tag and the host's timestamp (its clock
//                off by up to ±100 ms) to unit N of both controllers; per seed, a share of commands
//                goes to one unit only (forwarded to its partner, FO-6) and a share of multicasts
//                loses one of its two copies on the way. A controller's crash resets the host's
//                connections to its units; hung controllers hold the frames sent to them. Writes
//                are re-sent under their tag (at most once, AW-1), reads and flushes under a new
//                one. On for every seed whenever allowed (`--faults failover,multicast`: with the
//                failover faults drawn swarm-style; `failover` names takeover, hang, shelf-path and
//                shelf-restart).
//
// What is not modelled: torn or lost NVRAM writes (NVRAM is memory the controller writes
// synchronously), a drive that lies about a write, corruption on the link (the link carries
// CRCs in the protocol; the simulator does not flip bits), a controller that is alive but hung
// for longer than the runs last, and two controllers writing one drive (ownership is what the
// checkers verify; the shelf's fence is what prevents it after a takeover).

using Duet.Core;

namespace Duet.Simulation;

[Flags]
public enum FaultKind
{
    None = 0,
    Crash = 1 << 0,
    LinkDelay = 1 << 1,
    LinkDrop = 1 << 2,
    Partition = 1 << 3,
    SlowDrive = 1 << 4,
    FailDrive = 1 << 5,
    FullCache = 1 << 6,
    Shuffle = 1 << 7,
    Takeover = 1 << 8,
    Hang = 1 << 9,
    ShelfPath = 1 << 10,
    ShelfRestart = 1 << 11,
    /// <summary>Whole-system power cuts with torn drive writes (issue 6, AW-6). Not part of <see cref="All"/>.</summary>
    Power = 1 << 12,
    /// <summary>Hosts speak Duet's host protocol (FO-3..FO-6) to the units of both controllers instead of calling
    /// volumes directly. Not part of <see cref="All"/>: on for every seed whenever it is allowed.</summary>
    Multicast = 1 << 13,
    /// <summary>The faults of the simulator issue (4): what `./test.sh`'s campaign draws from.</summary>
    Classic = Crash | LinkDelay | LinkDrop | Partition | SlowDrive | FailDrive | FullCache | Shuffle,
    /// <summary>The failover issue's faults (5): takeover, hang, shelf path loss, shelf restart.</summary>
    Failover = Takeover | Hang | ShelfPath | ShelfRestart,
    All = Classic | Failover,
}

/// <summary>The faults of one seed and their rates.</summary>
public sealed record FaultPlan
{
    public FaultKind On { get; init; }
    /// <summary>Mean virtual time between controller crashes.</summary>
    public TimeSpan CrashEvery { get; init; }
    public TimeSpan MaxDownTime { get; init; }
    public TimeSpan MaxLinkDelay { get; init; }
    public double DropProbability { get; init; }
    public TimeSpan PartitionEvery { get; init; }
    public TimeSpan MaxPartition { get; init; }
    public TimeSpan MaxDriveLatency { get; init; }
    public int NvramElements { get; init; }
    /// <summary>Mean time between long crashes (down for longer than the heartbeat timeout: the peer takes over).</summary>
    public TimeSpan TakeoverEvery { get; init; }
    public TimeSpan HangEvery { get; init; }
    public TimeSpan MaxHang { get; init; }
    public TimeSpan ShelfPathEvery { get; init; }
    public TimeSpan MaxShelfPathLoss { get; init; }
    /// <summary>Mean time between power cuts.</summary>
    public TimeSpan PowerEvery { get; init; }
    public TimeSpan MaxPowerDown { get; init; }

    public bool Has(FaultKind k) => (On & k) != 0;

    public static readonly string[] Names = ["crash", "link-delay", "link-drop", "partition", "slow-drive", "fail-drive", "full-cache", "shuffle", "takeover", "hang", "shelf-path", "shelf-restart", "power", "multicast"];

    public static FaultKind Parse(string list)
    {
        var k = FaultKind.None;
        foreach (var part in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (part == "all") { k |= FaultKind.All; continue; }
            if (part == "failover") { k |= FaultKind.Failover; continue; }
            if (part == "none") continue;
            int i = Array.IndexOf(Names, part);
            if (i < 0) throw new ArgumentException($"unknown fault '{part}' (known: {string.Join(", ", Names)}, all, failover, none)");
            k |= (FaultKind)(1 << i);
            // The power campaign: power cuts, with controller crashes, small caches (destage under load,
            // so cuts land mid-destage), slow drives and shuffled work swarm-style. With fail-drive too
            // (`power,fail-drive`), a drive fails before, between or right after cuts: the write hole with a
            // member missing (write-log.md, "Closing the hole with a member missing").
            if (part == "power") k |= FaultKind.Crash | FaultKind.FullCache | FaultKind.SlowDrive | FaultKind.Shuffle;
        }
        return k;
    }

    public static string Describe(FaultKind k) =>
        k == FaultKind.None ? "none" : string.Join(",", Names.Where((_, i) => (k & (FaultKind)(1 << i)) != 0));

    /// <summary>Draws a plan: each fault allowed by <paramref name="allowed"/> is on with probability 1/2 (swarm testing),
    /// except power, which is on whenever it is allowed (it is what a power campaign is for).</summary>
    public static FaultPlan Draw(DeterministicRandom r, FaultKind allowed)
    {
        var on = FaultKind.None;
        for (int i = 0; i < Names.Length; i++)
        {
            var k = (FaultKind)(1 << i);
            if ((allowed & k) == 0) continue;
            // Power and multicast draw nothing: seeds of campaigns without them keep their old random streams.
            if (k is FaultKind.Power or FaultKind.Multicast) on |= k;
            else if (r.Chance(0.5)) on |= k;
        }
        var plan = new FaultPlan
        {
            On = on,
            // A seed's safety phase lasts a few hundred milliseconds of virtual time (less without
            // slow drives): several crashes and partitions fit in it.
            CrashEvery = TimeSpan.FromMilliseconds(r.Next(5, 150)),
            MaxDownTime = TimeSpan.FromMilliseconds(r.Next(1, 100)),
            MaxLinkDelay = TimeSpan.FromMicroseconds(r.Next(5, 3000)),
            DropProbability = r.Next(1, 40) / 1000.0,
            PartitionEvery = TimeSpan.FromMilliseconds(r.Next(5, 150)),
            MaxPartition = TimeSpan.FromMilliseconds(r.Next(1, 100)),
            MaxDriveLatency = TimeSpan.FromMicroseconds(r.Next(20, 5000)),
            NvramElements = r.Next(24, 96),
            TakeoverEvery = TimeSpan.FromMilliseconds(r.Next(50, 400)),
            HangEvery = TimeSpan.FromMilliseconds(r.Next(20, 300)),
            MaxHang = TimeSpan.FromMilliseconds(r.Next(5, 2500)),
            ShelfPathEvery = TimeSpan.FromMilliseconds(r.Next(20, 300)),
            MaxShelfPathLoss = TimeSpan.FromMilliseconds(r.Next(5, 2500)),
        };
        if ((allowed & FaultKind.Power) != 0)
            plan = plan with
            {
                PowerEvery = TimeSpan.FromMilliseconds(r.Next(20, 200)),
                MaxPowerDown = TimeSpan.FromMilliseconds(r.Next(1, 200)),
            };
        return plan;
    }

    public override string ToString() => Describe(On);
}
