using Duet.Cache;
using Duet.Cache.Mirror;
using Duet.Core;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Raid;
using Duet.Raid.Management;

namespace Duet.Simulation;

public sealed partial class Simulator
{
    // ---- hosts ---------------------------------------------------------------------------

    async Task WorkerAsync(SimNode host)
    {
        while (_opsIssued < _options.Operations)
        {
            int op = ++_opsIssued;
            try
            {
                int dice = _random.Next(100);
                _inflight[op] = dice < 50 ? "write" : dice < 85 ? "read" : dice < 92 ? "flush" : dice < 96 ? "move" : "create/delete";
                if (_protocolHosts.TryGetValue(host, out var ph) && dice < 92)
                {
                    if (dice < 50) await ProtocolWriteAsync(ph, op);
                    else if (dice < 85) await ProtocolReadAsync(ph, op);
                    else await ProtocolFlushAsync(ph, op);
                }
                else if (dice < 50) await WriteAsync(host, op);
                else if (dice < 85) await ReadAsync(host, op);
                else if (dice < 92) await FlushAsync(host, op);
                else if (dice < 96) await MoveAsync(op);
                else await ScratchAsync(op);
            }
            finally { _inflight.Remove(op); }
            // Think time: spreads a seed's operations over a few hundred milliseconds of virtual
            // time, so crashes and partitions land among them.
            await host.Time.DelayAsync(TimeSpan.FromTicks(_random.NextInt64(_thinkMax.Ticks + 1)));
        }
    }

    (string Name, VolumeModel Model)? PickVolume()
    {
        var live = _volumes.Where(v => !v.Value.Deleted).ToList();
        if (live.Count == 0) return null;
        var (name, model) = live[_random.Next(live.Count)];
        return (name, model);
    }

    long PickLength(VolumeModel m)
    {
        // Every size from 512 bytes to 1 MiB, most of them small.
        long max = Math.Min(2048, m.Sectors);
        long n = _random.Next(10) switch
        {
            < 4 => 8,
            < 6 => _random.Next(1, 33),
            < 8 => _random.Next(1, 257),
            _ => _random.Next(1, (int)max + 1),
        };
        return Math.Min(n, max);
    }

    Side PickController() => _sides[_random.Next(2)];

    async Task WriteAsync(SimNode host, int op)
    {
        if (PickVolume() is not var (name, model)) return;
        long count = PickLength(model);
        long sector = _random.NextInt64(model.Sectors - count + 1);
        if (model.OverlapsWriteInFlight(sector, count)) { await ReadRangeAsync(name, model, sector, count); return; }
        ulong id = ++_nextWriteId;
        var data = new byte[count * SectorBytes];
        Content.Fill(data, id, sector);
        bool fua = _random.Chance(0.1);
        var side = PickController();
        _inflight[op] = $"write {id} {name} {sector}+{count} via {side.Name}";
        _writes++;
        model.WriteIssued(id, sector, count, ++_logical);
        bool ok = false;
        try
        {
            await side.Node.InvokeAsync(async () =>
            {
                var c = side.Controller ?? throw new NodeCrashedException(side.Name);
                if (!c.Volumes.TryGetVolume(name, out var volume)) throw new VolumeGoneException(name);
                await volume.WriteAsync(sector * SectorBytes, data, fua);
                CheckMirroredBeforeAck(name, sector, count, id);
            });
            ok = true;
            _writesAcked++;
        }
        catch (Exception e) when (Expected(e)) { _trace.Add($"write {id} failed: {e.GetType().Name}"); }
        catch (Exception e) { Fail($"write {id} to {name} through {side.Name}: unexpected {e.GetType().Name}: {e.Message}{Where(e)}"); }
        finally { model.WriteDone(id, sector, count, ok, ++_logical); }
        _trace.Add($"write {id} {name} {sector}+{count} via {side.Name} {(ok ? "ok" : "failed")}");
    }

    async Task ReadAsync(SimNode host, int op)
    {
        if (PickVolume() is not var (name, model)) return;
        long count = PickLength(model);
        long sector = _random.NextInt64(model.Sectors - count + 1);
        _inflight[op] = $"read {name} {sector}+{count}";
        await ReadRangeAsync(name, model, sector, count);
    }

    async Task<bool> ReadRangeAsync(string name, VolumeModel model, long sector, long count, Side? via = null, bool mustSucceed = false)
    {
        var side = via ?? PickController();
        var data = new byte[count * SectorBytes];
        long start = ++_logical;
        _reads++;
        try
        {
            await side.Node.InvokeAsync(async () =>
            {
                var c = side.Controller ?? throw new NodeCrashedException(side.Name);
                if (!c.Volumes.TryGetVolume(name, out var volume)) throw new VolumeGoneException(name);
                await volume.ReadAsync(sector * SectorBytes, data);
            });
        }
        catch (Exception e) when (Expected(e))
        {
            _trace.Add($"read {name} {sector}+{count} via {side.Name} failed: {e.GetType().Name}");
            if (mustSucceed) Fail($"read of {name} {sector}+{count} through {side.Name} failed after the faults healed: {e.GetType().Name}: {e.Message}");
            return false;
        }
        catch (Exception e)
        {
            Fail($"read of {name} through {side.Name}: unexpected {e.GetType().Name}: {e.Message}");
            return false;
        }
        long end = ++_logical;
        if (model.Deleted) return true;
        _readsOk++;
        int bad = 0;
        for (long i = 0; i < count; i++)
        {
            var problem = model.Check(sector + i, data.AsSpan((int)(i * SectorBytes), SectorBytes), start, end);
            if (problem is null) continue;
            if (bad++ == 0) Fail($"read through {side.Name}: {problem}");
        }
        if (bad > 1) Fail($"read through {side.Name}: {bad} sectors of {name} {sector}+{count} were wrong in all");
        _trace.Add($"read {name} {sector}+{count} via {side.Name} ok");
        return true;
    }

    async Task FlushAsync(SimNode host, int op)
    {
        if (PickVolume() is not var (name, _)) return;
        var side = PickController();
        _inflight[op] = $"flush {name} via {side.Name}";
        _flushes++;
        try
        {
            await side.Node.InvokeAsync(async () =>
            {
                var c = side.Controller ?? throw new NodeCrashedException(side.Name);
                if (!c.Volumes.TryGetVolume(name, out var volume)) throw new VolumeGoneException(name);
                await volume.FlushAsync();
            });
        }
        catch (Exception e) when (Expected(e)) { }
        catch (Exception e) { Fail($"flush of {name} through {side.Name}: unexpected {e.GetType().Name}: {e.Message}"); }
    }

    /// <summary>Moves a random array to the other controller, asking its owner (as `duet array move` does).</summary>
    async Task MoveAsync(int op)
    {
        var array = _fixedArrays[_random.Next(_fixedArrays.Count)];
        var owner = _sides.FirstOrDefault(s => s.IsUp && s.Controller!.Arrays.Serves(array));
        if (owner is null) return;
        _moves++;
        var to = Other(owner).Name;
        _inflight[op] = $"move {array} {owner.Name}->{to}";
        try
        {
            await owner.Node.InvokeAsync(() => owner.Controller!.MoveArrayAsync(array, to, CancellationToken.None));
            _movesDone++;
            _trace.Add($"moved {array} {owner.Name}->{to}");
        }
        catch (Exception e) when (Expected(e)) { _trace.Add($"move {array} {owner.Name}->{to} failed: {e.GetType().Name}: {e.Message}"); }
        catch (Exception e) { Fail($"move of {array} to {to}: unexpected {e.GetType().Name}: {e.Message}"); }
        CheckOwners();
    }

    /// <summary>Creates the scratch array (RAID 1 on s0, s1) with one volume, or deletes it.</summary>
    async Task ScratchAsync(int op)
    {
        if (_scratchBusy) return;
        _scratchBusy = true;
        try
        {
            var owner = _sides.FirstOrDefault(s => s.IsUp && s.Controller!.Arrays.Serves("scratch"));
            bool exists = _sides.Any(s => s.IsUp && s.Controller!.ArrayService.Status().Arrays.Any(a => a.Name == "scratch"));
            if (!exists)
            {
                var side = PickController();
                if (!side.IsUp) return;
                _creates++;
                string vol = $"scratch{++_scratchGeneration}";
                try
                {
                    await side.Node.InvokeAsync(async () =>
                    {
                        var svc = side.Controller!.ArrayService;
                        var info = await svc.CreateArrayAsync(new CreateArrayRequest("scratch", 1, ["s0", "s1"], Owner: side.Name));
                        long size = info.CapacityBytes / 4096 * 4096;
                        await svc.CreateVolumeAsync(new CreateVolumeRequest(vol, "scratch", size));
                        _volumes[vol] = new VolumeModel(vol, size / SectorBytes);
                        await side.Controller.NotifyPeerArraysChangedAsync();
                    });
                    _trace.Add($"created scratch array with {vol} on {side.Name}");
                }
                catch (Exception e) when (Expected(e)) { _trace.Add($"create scratch failed: {e.GetType().Name}: {e.Message}"); }
                catch (Exception e) { Fail($"create of the scratch array on {side.Name}: unexpected {e.GetType().Name}: {e.Message}"); }
            }
            else if (owner is not null)
            {
                _deletes++;
                var vols = _volumes.Where(v => v.Key.StartsWith("scratch", StringComparison.Ordinal) && !v.Value.Deleted).ToList();
                // The hosts stop using the volume before it is deleted (its data is gone either way).
                foreach (var (_, m) in vols) m.Deleted = true;
                try
                {
                    await owner.Node.InvokeAsync(async () =>
                    {
                        var svc = owner.Controller!.ArrayService;
                        foreach (var (v, _) in vols)
                            try { await svc.DeleteVolumeAsync(v); } catch (ManagementException e) when (e.Kind == ManagementErrorKind.NotFound) { }
                        await svc.DeleteArrayAsync("scratch");
                        await owner.Controller.NotifyPeerArraysChangedAsync();
                    });
                    _trace.Add($"deleted scratch array on {owner.Name}");
                }
                catch (Exception e) when (Expected(e)) { _trace.Add($"delete scratch failed: {e.GetType().Name}: {e.Message}"); }
                catch (Exception e) { Fail($"delete of the scratch array on {owner.Name}: unexpected {e.GetType().Name}: {e.Message}"); }
            }
            CheckOwners();
        }
        finally { _scratchBusy = false; }
    }

    /// <summary>Where an unexpected exception came from: the first frames of its stack (for the report).</summary>
    static string Where(Exception e) =>
        e.StackTrace is { } st ? " at " + string.Join(" < ", st.Split('\n').Select(l => l.Trim()).Where(l => l.StartsWith("at Duet.", StringComparison.Ordinal)).Take(3).Select(l => l[3..].Split(" in ")[0])) : "";

    /// <summary>Errors a host may see while faults are on: the protocol's own errors, never a crash of the code.</summary>
    static bool Expected(Exception e) => e is BlockIoException or NodeCrashedException or VolumeGoneException or ManagementException
        or IclLinkDownException or MirrorUnavailableException or OperationCanceledException or TimeoutException;

    sealed class VolumeGoneException(string name) : Exception($"no volume named {name}");

    // ---- faults ------------------------------------------------------------------------------

    async Task FaultsAsync()
    {
        var nextCrash = _scheduler.Elapsed + Exp(_plan.CrashEvery);
        var nextPartition = _scheduler.Elapsed + Exp(_plan.PartitionEvery);
        var failDriveAt = _scheduler.Elapsed + TimeSpan.FromMilliseconds(_random.Next(1, 3000));
        if (_plan.Has(FaultKind.LinkDelay) || _plan.Has(FaultKind.LinkDrop))
            _wire.Faults = new LinkFaults
            {
                MaxDelay = _plan.Has(FaultKind.LinkDelay) ? _plan.MaxLinkDelay : TimeSpan.Zero,
                DropProbability = _plan.Has(FaultKind.LinkDrop) ? _plan.DropProbability : 0,
            };
        var restarts = _restarts;
        var nextTakeover = _scheduler.Elapsed + Exp(_plan.TakeoverEvery);
        var nextHang = _scheduler.Elapsed + Exp(_plan.HangEvery);
        var nextPathLoss = _scheduler.Elapsed + Exp(_plan.ShelfPathEvery);
        var nextShelfRestart = _scheduler.Elapsed + Exp(_plan.HangEvery);
        var nextPowerCut = _plan.Has(FaultKind.Power) ? _scheduler.Elapsed + Exp(_plan.PowerEvery) : TimeSpan.MaxValue;
        bool tookOver = false;
        while (_safety)
        {
            await _world.Time.DelayAsync(TimeSpan.FromMilliseconds(1));
            var now = _scheduler.Elapsed;
            if (_plan.Has(FaultKind.Takeover) && now >= nextTakeover && !tookOver)
            {
                // One long outage per seed: the survivor takes over, the dead one comes back as standby.
                nextTakeover = now + Exp(_plan.TakeoverEvery);
                var side = _sides[_random.Next(2)];
                if (Quiet(side) && Quiet(Other(side)))
                {
                    tookOver = true;
                    Crash(side);
                    restarts.Add(RestartLaterAsync(side, TimeSpan.FromMilliseconds(_random.Next(1200, 3000))));
                }
            }
            if (_plan.Has(FaultKind.Hang) && now >= nextHang)
            {
                nextHang = now + Exp(_plan.HangEvery);
                var side = _sides[_random.Next(2)];
                if (Quiet(side) && Quiet(Other(side)))
                {
                    var length = TimeSpan.FromTicks(_random.NextInt64(_plan.MaxHang.Ticks) + 1);
                    _trace.Add($"hang {side.Name} for {length.TotalMilliseconds:F1} ms");
                    _hangs++;
                    side.Node.Pause();
                    restarts.Add(ResumeLaterAsync(side, length));
                }
            }
            if (_plan.Has(FaultKind.ShelfPath) && now >= nextPathLoss)
            {
                nextPathLoss = now + Exp(_plan.ShelfPathEvery);
                var side = _sides[_random.Next(2)];
                if (!side.ShelfPathLost && !Other(side).ShelfPathLost)
                {
                    var length = TimeSpan.FromTicks(_random.NextInt64(_plan.MaxShelfPathLoss.Ticks) + 1);
                    _trace.Add($"shelf path of {side.Name} lost for {length.TotalMilliseconds:F1} ms");
                    side.ShelfPathLost = true;
                    restarts.Add(RestoreShelfPathLaterAsync(side, length));
                }
            }
            if (_plan.Has(FaultKind.ShelfRestart) && now >= nextShelfRestart)
            {
                nextShelfRestart = now + Exp(_plan.HangEvery);
                _trace.Add("shelf restarts");
                _enclosure.Restart();
            }
            if (_plan.Has(FaultKind.Crash) && now >= nextCrash)
            {
                nextCrash = now + Exp(_plan.CrashEvery);
                var side = _sides[_random.Next(2)];
                if (side.Node.IsAlive && !side.Starting && Other(side).Node.IsAlive)
                {
                    Crash(side);
                    restarts.Add(RestartLaterAsync(side, TimeSpan.FromTicks(_random.NextInt64(_plan.MaxDownTime.Ticks) + 1)));
                }
            }
            if (_plan.Has(FaultKind.Partition) && now >= nextPartition && !_wire.Partitioned)
            {
                nextPartition = now + Exp(_plan.PartitionEvery);
                _partitions++;
                _wire.Partition(true);
                var length = TimeSpan.FromTicks(_random.NextInt64(_plan.MaxPartition.Ticks) + 1);
                restarts.Add(HealPartitionLaterAsync(length));
            }
            if (now >= nextPowerCut && !_powerOff)
            {
                nextPowerCut = now + Exp(_plan.PowerEvery);
                restarts.Add(PowerCutAsync(TimeSpan.FromTicks(_random.NextInt64(_plan.MaxPowerDown.Ticks) + 1)));
            }
            if (_plan.Has(FaultKind.FailDrive) && !_driveFailed && now >= failDriveAt)
            {
                _driveFailed = true;
                string[] candidates = ["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"];
                var d = candidates[_random.Next(candidates.Length)];
                _faulty[d].Fail();
                _failedDrives++;
                _trace.Add($"drive {d} failed");
            }
        }
        await Waits.WhenAll(restarts);
    }

    readonly List<Task> _restarts = [];
    long _failBacks;
    long _hangs, _takeovers, _powerCuts, _blocksRolledBack, _ppRows, _ppUnguarded;
    bool _powerOff, _driveFailed;

    /// <summary>
    /// The power fails everywhere at once: both controllers die wherever they are (even while they
    /// start or recover from the last cut), the shelf restarts, every drive keeps its flushed data
    /// plus any subset of its unflushed writes, and nothing in flight lands. After
    /// <paramref name="down"/> both controllers start together and recover from NVRAM and the write log.
    /// </summary>
    async Task PowerCutAsync(TimeSpan down)
    {
        _powerOff = true;
        _powerCuts++;
        _trace.Add($"power cut (down {down.TotalMilliseconds:F1} ms)");
        foreach (var s in _sides)
            if (s.Node.IsAlive) Crash(s); // a hung one too: its held work is dropped
        _enclosure.Restart();
        int rolledBack = 0;
        foreach (var name in _faulty.Keys.Order(StringComparer.Ordinal))
            rolledBack += await _faulty[name].PowerCutAsync(discardInFlight: true);
        _blocksRolledBack += rolledBack;
        _trace.Add($"power cut: {rolledBack} drive blocks rolled back");
        if (_plan.Has(FaultKind.FailDrive) && !_driveFailed && _random.Chance(0.25))
        {
            // A drive of a parity array does not come back with the power: the stripes the cut tore are settled
            // with a member missing (the write hole; write-log.md, "Closing the hole with a member missing").
            _driveFailed = true;
            string[] candidates = ["d2", "d3", "d4", "d5", "d6", "d7", "d8"];
            var d = candidates[_random.Next(candidates.Length)];
            _faulty[d].Fail();
            _failedDrives++;
            _trace.Add($"drive {d} does not come back after the power cut");
        }
        await _world.Time.DelayAsync(down);
        _powerOff = false;
        _trace.Add("power returns");
        await Waits.WhenAll(_sides.Select(RestartAsync).ToList());
    }

    /// <summary>Up, not starting, not hung: a side a new fault may hit.</summary>
    static bool Quiet(Side s) => s.Node.IsAlive && !s.Starting && !s.Node.IsPaused && s.Controller is { IsSteppedDown: false };

    async Task ResumeLaterAsync(Side side, TimeSpan length)
    {
        await _world.Time.DelayAsync(length);
        _trace.Add($"{side.Name} resumes");
        side.Node.Resume();
    }

    async Task RestoreShelfPathLaterAsync(Side side, TimeSpan length)
    {
        await _world.Time.DelayAsync(length);
        side.ShelfPathLost = false;
    }

    /// <summary>A controller found itself fenced and stepped down: its process exits; it is restarted.</summary>
    void OnSteppedDown(Side side, Controller c, string reason)
    {
        _trace.Add($"{side.Name} stepped down: {reason}");
        if (side.Controller != c || !side.Node.IsAlive) return;
        Crash(side);
        _restarts.Add(RestartLaterAsync(side, TimeSpan.FromMilliseconds(_random.Next(1, 200))));
    }

    /// <summary>
    /// FO checkers, every millisecond of virtual time: a controller that cannot be heard is noted; a
    /// takeover must follow such silence (never while both heartbeat paths of its peer were alive); no
    /// write from a fenced port may land after its fence completed; no host is answered without a lease;
    /// and never two owners: no array is served by two controllers that both hold a lease.
    /// </summary>
    void CheckFailover()
    {
        var now = _scheduler.Elapsed;
        foreach (var s in _sides)
            if (!s.Node.IsAlive || s.Node.IsPaused || s.Controller is null || (s.ShelfPathLost && (_wire.Partitioned || !s.Controller.Link.IsUp)))
                s.LastSilent = now;
        NoteDoubleFault();
        foreach (var s in _sides)
        {
            if (s.Controller is not { } c || !s.Node.IsAlive) continue;
            // Judged when the takeover is decided (it may take a while to finish: the fence waits for the
            // peer's accepted writes).
            if (c.TakeoverDecisions > s.DecisionsSeen)
            {
                s.DecisionsSeen = c.TakeoverDecisions;
                var peer = Other(s);
                // FO-5: a host command held past its time limit is the other legitimate trigger.
                bool limit = s.LastLimitReached is { } reached && now - reached <= TimeSpan.FromMilliseconds(50);
                if (!limit && (peer.LastSilent is not { } silent || now - silent > TimeSpan.FromMilliseconds(1300)))
                    Fail($"{s.Name} decided to take over from {peer.Name}, which was heard on both heartbeat paths (last silent {(peer.LastSilent is { } t ? $"at {t.TotalMilliseconds:F0} ms" : "never")})");
            }
            if (c.Takeovers > s.TakeoversSeen)
            {
                s.TakeoversSeen = c.Takeovers;
                _takeovers++;
                _trace.Add($"{s.Name} took over from {Other(s).Name}");
            }
            if (c.FailBacks > s.FailBacksSeen)
            {
                _failBacks += c.FailBacks - s.FailBacksSeen;
                s.FailBacksSeen = c.FailBacks;
                _trace.Add($"{s.Name} failed back to {Other(s).Name} ({c.FailBacks} so far)");
            }
            if (c.ServedWithoutLease > 0) Fail($"controller {s.Name} answered {c.ServedWithoutLease} host requests without a lease");
        }
        if (_enclosure.LateWrites > 0 && !_lateWritesReported)
        {
            _lateWritesReported = true;
            Fail($"{_enclosure.LateWrites} writes from a fenced port reached a drive after the fence completed");
        }
        // A controller still taking the peer's arrays over holds their requests until it is done (and, after an FO-5
        // fence, until the peer's lease has lapsed): it does not serve them yet.
        if (_sides.All(x => x.Controller is { } c && x.Node.IsAlive && !x.Node.IsPaused && c.HoldsLease && !c.IsAdoptingPeerArrays))
            foreach (var a in _sides[0].Controller!.Arrays.ServedArrays)
                if (_sides[1].Controller!.Arrays.Serves(a.Name) && !_twoOwnersReported)
                {
                    _twoOwnersReported = true;
                    Fail($"array {a.Name} is served by both controllers, both holding a lease");
                }
    }

    bool _lateWritesReported, _twoOwnersReported;

    /// <summary>The failover checkers, every millisecond of virtual time from the first host operation to the end.</summary>
    async Task CheckFailoverLoopAsync()
    {
        while (!_done)
        {
            CheckFailover();
            await _world.Time.DelayAsync(TimeSpan.FromMilliseconds(1));
        }
    }

    TimeSpan Exp(TimeSpan mean) => TimeSpan.FromTicks((long)(-Math.Log(1 - _random.NextDouble()) * mean.Ticks) + 1);

    void Crash(Side side)
    {
        _crashes++;
        _ppRows += side.Controller?.WriteLog.PartialParityStored ?? 0;
        _ppUnguarded += side.Controller?.WriteLog.PartialParityUnguarded ?? 0;
        _trace.Add($"crash {side.Name}");
        side.Node.Crash();
        side.Controller = null;
        // Every other crash is its process dying: its connection to the shelf closes with it and the shelf says the port
        // departed (the survivor may take over after two quiet ICL periods). The others are its host lost: the
        // connection lingers until that controller starts again, and only the heartbeat timeout tells. (By the count,
        // not a draw: the seed's random stream stays what it was.)
        if ((_crashes & 1) == 1 && side.Attached)
        {
            _enclosure.Detach(side.Name);
            side.Attached = false;
        }
        _wire.Cut($"{side.Name} crashed");
        ResetHostConnections(side);
    }

    async Task RestartLaterAsync(Side side, TimeSpan down)
    {
        await _world.Time.DelayAsync(down);
        await RestartAsync(side);
    }

    async Task RestartAsync(Side side)
    {
        if (side.Node.IsAlive || _powerOff) return; // the power's return restarts both
        side.Node.Restart();
        try { await StartControllerAsync(side); }
        catch (NodeCrashedException) { return; }
        catch (Exception e)
        {
            Fail($"controller {side.Name} failed to restart: {e.GetType().Name}: {e.Message}");
            return;
        }
        _wire.Connect();
    }

    async Task HealPartitionLaterAsync(TimeSpan length)
    {
        await _world.Time.DelayAsync(length);
        _wire.Partition(false);
    }

    async Task HealAsync()
    {
        _wire.Faults = new LinkFaults();
        if (_wire.Partitioned) _wire.Partition(false);
        foreach (var s in _sides) { s.ShelfPathLost = false; s.Node.Resume(); }
        foreach (var s in _sides) if (!s.Node.IsAlive) await RestartAsync(s);
        _wire.Connect();
        _trace.Add("faults healed");
    }

    async Task LivenessAsync()
    {
        var deadline = _scheduler.Elapsed + _options.LivenessBudget;
        try { await WaitForAsync(Paired, _options.LivenessBudget, "the pair to converge (both up, link up, mirrors healthy)"); }
        catch (TimeoutException e)
        {
            Fail($"liveness: {e.Message}; {Describe(_sides[0])}; {Describe(_sides[1])}");
            return;
        }
        CheckOwners();
        // Every volume is served: every written sector reads back right through both controllers
        // (a request may be what makes a controller notice an array it was handed; it is retried
        // until the budget runs out).
        foreach (var (name, model) in _volumes.Where(v => !v.Value.Deleted).ToList())
        {
            var sectors = model.WrittenSectors.Order().ToList();
            if (sectors.Count == 0) sectors.Add(0);
            foreach (var side in _sides)
            {
                int i = 0;
                while (i < sectors.Count)
                {
                    long first = sectors[i], last = first;
                    while (i + 1 < sectors.Count && sectors[i + 1] - first < 512) last = sectors[++i];
                    i++;
                    while (!await ReadRangeAsync(name, model, first, last - first + 1, side, mustSucceed: _scheduler.Elapsed >= deadline))
                    {
                        if (_scheduler.Elapsed >= deadline) return;
                        await _world.Time.DelayAsync(TimeSpan.FromMilliseconds(50));
                    }
                }
            }
        }
        bool Served() => _fixedArrays.All(a => _sides.Any(s => s.Controller!.Arrays.Serves(a)));
        try { await WaitForAsync(Served, deadline - _scheduler.Elapsed + TimeSpan.FromMilliseconds(1), "every array to be served"); }
        catch (TimeoutException)
        {
            Fail($"liveness: served by neither controller: {string.Join(", ", _fixedArrays.Where(a => !_sides.Any(s => s.Controller!.Arrays.Serves(a))))}");
        }
        // Quiet: no host I/O; let destage and the mirror settle (longer than a status timeout, so a
        // transfer the link lost before it healed has been noticed and the pair has paired again),
        // then the mirror invariant must hold.
        await _world.Time.DelayAsync(TimeSpan.FromSeconds(3));
        try { await WaitForAsync(Paired, TimeSpan.FromSeconds(10), "the pair to settle before the mirror check"); }
        catch (TimeoutException e) { Fail($"liveness: {e.Message}; {Describe(_sides[0])}; {Describe(_sides[1])}"); return; }
        CheckMirrorInvariant(_sides[0]);
        CheckMirrorInvariant(_sides[1]);
        await CheckArraysConsistentAsync();
        _trace.Add("liveness checked");
    }

    /// <summary>
    /// After everything settled: a scrub without repair of every array finds every block agreeing
    /// with its checksum and every complete row's parity agreeing with its data: no write hole was
    /// left open by a crash or a power cut (issue 6).
    /// </summary>
    async Task CheckArraysConsistentAsync()
    {
        foreach (var side in _sides)
        {
            if (side.Controller is not { } c) continue;
            foreach (var raid in c.Arrays.ServedArrays)
            {
                var result = new ScrubResult();
                try
                {
                    await side.Node.InvokeAsync(() => raid.ScrubAsync(repair: false, result, new PassProgress(), CancellationToken.None));
                }
                catch (Exception e) when (Expected(e))
                {
                    Fail($"scrub of {raid.Name} on {side.Name} failed: {e.GetType().Name}: {e.Message}");
                    continue;
                }
                if (result.ChecksumErrors + result.ParityMismatches + result.Unrepairable > 0)
                    Fail($"scrub of {raid.Name} on {side.Name}: {result.ChecksumErrors} checksum errors, {result.ParityMismatches} parity mismatches, " +
                         $"{result.Unrepairable} unrepairable: {string.Join("; ", result.Findings.Take(4))}");
            }
        }
    }

    static string Describe(Side s) => s.Controller is { } c
        ? $"{s.Name}: up, link {(c.Link.IsUp ? "up" : "down")}, mirror {c.Mirror.Mode}{(c.Mirror.DownReason is { } r ? $" ({r})" : "")}"
        : $"{s.Name}: {(s.Node.IsAlive ? "starting" : "down")}";
}
