using Duet.Core;
using Duet.HostProtocol;

namespace Duet.Simulation;

// Hosts of Duet's host protocol (FO-3..FO-6; docs/internals/host-protocol.md), on for seeds with the
// `multicast` fault. Each host is a SimNode attached to unit N of both controllers (one multicast
// group). A command goes, as a real encoded request frame with one host tag and the host's timestamp,
// to both units with the multicast flag, as HostSession does in its multicast mode. Per seed, a share
// of commands goes to one unit only (that unit forwards it to its partner, FO-6) and a share of
// multicasts loses one of its two copies: the connection to that unit drops as the frame goes out. A
// unit is the controller's own CommandHandshake, fed on the controller's node after a network delay
// (in order per connection); the completion route posts the encoded answer back to the host's node. A
// controller's crash resets its connections (every attempt waiting on one learns so), and the host
// connects again once the controller is back.
//
//   host node ──frame (delay)──▶ unit N of A: Handshake.SubmitAsync(command, route)
//             ──frame (delay)──▶ unit N of B: Handshake.SubmitAsync(command, route)
//             ◀─completion (delay)── route.TrySendAsync, either unit; the first final answer wins
//
// The host takes the first answer other than Unavailable per tag. An attempt that every unit it
// reached lost (reset) or answered Unavailable, or that had no answer in AttemptTimeout, is sent again
// after RetryInterval: a write under its own tag (the pair runs it at most once, AW-1), a read or a
// flush under a new one. Checkers: every command ends with Ok (the host sees no error, whichever
// controller dies, hangs or is fenced); an attempt both controllers held ends within the time limit
// plus StallBound of virtual time; a write's tag is run at most once over both controllers and all
// their incarnations; and reads and the final read-back check the data (VolumeModel).
public sealed partial class Simulator
{
    /// <summary>A host gives an attempt this long before it sends the command again (HostSession's default).</summary>
    static readonly TimeSpan AttemptTimeout = TimeSpan.FromSeconds(5);
    static readonly TimeSpan RetryInterval = TimeSpan.FromMilliseconds(100);
    /// <summary>A command with no final answer after this long is given up: the host sees an error.</summary>
    static readonly TimeSpan GiveUpAfter = TimeSpan.FromSeconds(30);
    /// <summary>How much longer than the handshake's time limit an attempt both controllers held may take:
    /// the fence and takeover (FO-2), then running the command on the survivor.</summary>
    internal static readonly TimeSpan StallBound = TimeSpan.FromSeconds(1);

    sealed class ProtocolHost(SimNode node, ulong hostId, byte unit, TimeSpan clockSkew)
    {
        public readonly SimNode Node = node;
        public readonly ulong HostId = hostId;
        public readonly byte Unit = unit;
        /// <summary>How far the host's clock is off the controllers' (within the pair's allowance).</summary>
        public readonly TimeSpan ClockSkew = clockSkew;
        public ulong LastTag;
        public readonly Dictionary<ulong, HostAttempt> Pending = [];
        /// <summary>Per controller: the id of the host's connection to its unit, or -1 when not connected.</summary>
        public readonly long[] Connection = [-1, -1];
        public long LastConnectionId;
        /// <summary>Per controller: when the last frame sent on the connection arrives (a TCP stream keeps order).</summary>
        public readonly TimeSpan[] FramesArrive = new TimeSpan[2];
        public readonly TimeSpan[] AnswersArrive = new TimeSpan[2];
    }

    /// <summary>One try of a command: the controllers it went to, and which of them are out of it.</summary>
    sealed class HostAttempt(HostCommandKey key, HostOpcode opcode, int[] targets, long[] connections, TimeSpan sentAt)
    {
        public readonly HostOpcode Opcode = opcode;
        public readonly TaskCompletionSource<HostCompletion?> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly HostCommandKey Key = key;
        public readonly int[] Targets = targets;
        public readonly long[] Connections = connections;
        public readonly bool[] Out = new bool[2];
        public readonly TimeSpan SentAt = sentAt;
    }

    readonly Dictionary<SimNode, ProtocolHost> _protocolHosts = [];
    /// <summary>Diagnostics: with DUET_SIM_HANDSHAKE set, every handshake event of both controllers goes into the trace.</summary>
    static readonly bool HandshakeTrace = Environment.GetEnvironmentVariable("DUET_SIM_HANDSHAKE") is not null;
    // Per seed: the share of commands sent to one unit only (FO-6), and of multicasts that lose a copy.
    double _singleUnitShare, _dropCopyShare;
    // Per command key: when each controller queued it (the latest time), and how often a write ran.
    readonly Dictionary<HostCommandKey, TimeSpan[]> _queuedAt = [];
    readonly Dictionary<HostCommandKey, int> _writeRuns = [];
    readonly HashSet<HostCommandKey> _writeKeys = [];
    long _hostCommands, _hostAttempts, _hostResends, _hostDuplicates, _singleUnitSends, _droppedCopies, _limitsReached;
    TimeSpan _maxStall, _maxCommand;
    /// <summary>The last moment both controllers were impaired at once (down, starting, hung, standby after a fence, or
    /// without their shelf path).</summary>
    TimeSpan? _lastDoubleFault;
    long _stallsExempt;

    /// <summary>Every millisecond (from the failover checker): notes when both controllers are impaired at once.</summary>
    void NoteDoubleFault()
    {
        static bool Impaired(Side s) => !s.Node.IsAlive || s.Node.IsPaused || s.Controller is null || s.Starting || s.ShelfPathLost
            || s.Controller.IsStandby || s.Controller.IsSteppedDown;
        if (Impaired(_sides[0]) && Impaired(_sides[1])) _lastDoubleFault = _scheduler.Elapsed;
    }

    void DrawProtocolHosts()
    {
        _singleUnitShare = _random.Next(0, 31) / 100.0;
        _dropCopyShare = _random.Next(0, 11) / 100.0;
        _trace.Add($"host protocol: single-unit share {_singleUnitShare:F2}, dropped-copy share {_dropCopyShare:F2}");
    }

    ProtocolHost AddProtocolHost(SimNode node)
    {
        var h = new ProtocolHost(node, _random.NextUInt64() | 1, (byte)_random.Next(2), TimeSpan.FromMilliseconds(_random.Next(-100, 101)));
        _protocolHosts[node] = h;
        _trace.Add($"{node.Name}: host protocol, host id {h.HostId:x}, group {h.Unit}, clock {h.ClockSkew.TotalMilliseconds:F0} ms off");
        return h;
    }

    /// <summary>Handshake events of one controller (on its node): when it queued a command, and each run of a write.</summary>
    void OnHandshakeEvent(Side side, HandshakeEvent e)
    {
        int i = side == _sides[0] ? 0 : 1;
        if (HandshakeTrace) _trace.Add($"{side.Name} handshake: {e.Kind} {e.Key}");
        switch (e.Kind)
        {
            case HandshakeEventKind.Queued:
                if (!_queuedAt.TryGetValue(e.Key, out var at)) _queuedAt[e.Key] = at = [TimeSpan.MinValue, TimeSpan.MinValue];
                at[i] = _scheduler.Elapsed;
                break;
            case HandshakeEventKind.RecordedInTable or HandshakeEventKind.TableRecordFailed:
                // A write that ran (any status but Unavailable, which means it did not).
                if (!_writeKeys.Contains(e.Key)) break;
                int runs = _writeRuns[e.Key] = _writeRuns.GetValueOrDefault(e.Key) + 1;
                if (runs > 1) Fail($"host write {e.Key} ran {runs} times (the second on {side.Name}): a tag must run at most once");
                break;
            case HandshakeEventKind.LimitReached:
                _limitsReached++;
                side.LastLimitReached = _scheduler.Elapsed;
                _trace.Add($"{side.Name}: time limit reached for {e.Key}");
                break;
        }
    }

    // ---- the host side -------------------------------------------------------------------------

    (string Name, VolumeModel Model)? PickProtocolVolume()
    {
        // The fixed arrays' volumes: the scratch array comes and goes, and a host attached to a deleted volume only sees errors.
        var live = _volumes.Where(v => !v.Value.Deleted && !v.Key.StartsWith("scratch", StringComparison.Ordinal)).ToList();
        if (live.Count == 0) return null;
        var (name, model) = live[_random.Next(live.Count)];
        return (name, model);
    }

    async Task ProtocolWriteAsync(ProtocolHost h, int op)
    {
        if (PickProtocolVolume() is not var (name, model)) return;
        long count = Math.Min(PickLength(model), HostWire.PayloadBytesMax / SectorBytes);
        long sector = _random.NextInt64(model.Sectors - count + 1);
        if (model.OverlapsWriteInFlight(sector, count)) { await ProtocolReadRangeAsync(h, op, name, model, sector, count); return; }
        ulong id = ++_nextWriteId;
        var data = new byte[count * SectorBytes];
        Content.Fill(data, id, sector);
        bool fua = _random.Chance(0.1);
        _inflight[op] = $"host-protocol write {id} {name} {sector}+{count} from {h.Node.Name}";
        _writes++;
        model.WriteIssued(id, sector, count, ++_logical);
        var completion = await RunCommandAsync(h, HostOpcode.Write, name, sector * SectorBytes, (int)(count * SectorBytes), data, fua, $"write {id}");
        bool ok = completion?.Status == HostStatus.Ok;
        if (ok) _writesAcked++;
        model.WriteDone(id, sector, count, ok, ++_logical);
        _trace.Add($"host-protocol write {id} {name} {sector}+{count} from {h.Node.Name} {(ok ? "ok" : completion is null ? "given up" : completion.Status.ToString())}");
    }

    async Task ProtocolReadAsync(ProtocolHost h, int op)
    {
        if (PickProtocolVolume() is not var (name, model)) return;
        long count = Math.Min(PickLength(model), HostWire.PayloadBytesMax / SectorBytes);
        long sector = _random.NextInt64(model.Sectors - count + 1);
        await ProtocolReadRangeAsync(h, op, name, model, sector, count);
    }

    async Task ProtocolReadRangeAsync(ProtocolHost h, int op, string name, VolumeModel model, long sector, long count)
    {
        _inflight[op] = $"host-protocol read {name} {sector}+{count} from {h.Node.Name}";
        _reads++;
        long start = ++_logical;
        var completion = await RunCommandAsync(h, HostOpcode.Read, name, sector * SectorBytes, (int)(count * SectorBytes), ReadOnlyMemory<byte>.Empty, false, "read");
        long end = ++_logical;
        _trace.Add($"host-protocol read {name} {sector}+{count} from {h.Node.Name} {(completion is null ? "given up" : completion.Status.ToString())}");
        if (completion is not { Status: HostStatus.Ok }) return;
        if (completion.Data.Length != count * SectorBytes)
        {
            Fail($"host-protocol read of {name} {sector}+{count}: {completion.Data.Length} bytes of data, not {count * SectorBytes}");
            return;
        }
        _readsOk++;
        int bad = 0;
        for (long i = 0; i < count; i++)
        {
            var problem = model.Check(sector + i, completion.Data.Span.Slice((int)(i * SectorBytes), SectorBytes), start, end);
            if (problem is null) continue;
            if (bad++ == 0) Fail($"host-protocol read from {h.Node.Name}: {problem}");
        }
        if (bad > 1) Fail($"host-protocol read from {h.Node.Name}: {bad} sectors of {name} {sector}+{count} were wrong in all");
    }

    async Task ProtocolFlushAsync(ProtocolHost h, int op)
    {
        if (PickProtocolVolume() is not var (name, _)) return;
        _inflight[op] = $"host-protocol flush {name} from {h.Node.Name}";
        _flushes++;
        var completion = await RunCommandAsync(h, HostOpcode.Flush, name, 0, 0, ReadOnlyMemory<byte>.Empty, false, "flush");
        _trace.Add($"host-protocol flush {name} from {h.Node.Name} {(completion is null ? "given up" : completion.Status.ToString())}");
    }

    /// <summary>
    /// Runs one command to its final answer, as HostSession does in multicast mode: every attempt to the
    /// connected units (or, as the seed draws, to one of them), the first answer other than Unavailable
    /// wins; an attempt every target lost or refused, or left unanswered for <see cref="AttemptTimeout"/>,
    /// is sent again. Null when given up after <see cref="GiveUpAfter"/>. Checks the host-visible outcome.
    /// </summary>
    async Task<HostCompletion?> RunCommandAsync(ProtocolHost h, HostOpcode opcode, string volume, long offset, int length, ReadOnlyMemory<byte> payload, bool fua, string what)
    {
        _hostCommands++;
        var start = _scheduler.Elapsed;
        // A write keeps its tag across attempts (it must run at most once); a read or a flush takes a new one each time.
        ulong writeTag = opcode == HostOpcode.Write ? ++h.LastTag : 0;
        if (writeTag != 0) _writeKeys.Add(new HostCommandKey(h.Unit, h.HostId, writeTag));
        HostCompletion? answer = null;
        for (int tries = 0; ; tries++)
        {
            if (_scheduler.Elapsed - start >= GiveUpAfter) break;
            var targets = Connect(h);
            if (targets.Count == 0)
            {
                await h.Node.Time.DelayAsync(RetryInterval);
                continue;
            }
            if (tries > 0) _hostResends++;
            answer = await AttemptAsync(h, targets, opcode, volume, offset, length, payload, fua, writeTag, what);
            if (answer is not null) break;
            await h.Node.Time.DelayAsync(RetryInterval);
        }
        var took = _scheduler.Elapsed - start;
        if (took > _maxCommand) _maxCommand = took;
        if (answer is null) Fail($"host {h.Node.Name} gave up on {what} ({opcode} {volume} @{offset}+{length}) after {took.TotalSeconds:F1} s: the host saw an error");
        else if (answer.Status != HostStatus.Ok) Fail($"host {h.Node.Name}: {what} ({opcode} {volume} @{offset}+{length}) answered {answer.Status}: the host saw an error");
        return answer;
    }

    /// <summary>The controllers the host is connected to now (connecting to those that are up again).</summary>
    List<int> Connect(ProtocolHost h)
    {
        var targets = new List<int>(2);
        for (int i = 0; i < 2; i++)
        {
            var s = _sides[i];
            if (!s.Node.IsAlive || s.Controller is null || s.Starting) { h.Connection[i] = -1; continue; }
            if (h.Connection[i] < 0)
            {
                // A hung process takes no new connection (its hello would not be answered).
                if (s.Node.IsPaused) continue;
                h.Connection[i] = ++h.LastConnectionId;
                h.FramesArrive[i] = h.AnswersArrive[i] = TimeSpan.Zero;
                _trace.Add($"{h.Node.Name} connected to unit {s.Name}{h.Unit}");
            }
            targets.Add(i);
        }
        return targets;
    }

    async Task<HostCompletion?> AttemptAsync(ProtocolHost h, List<int> connected, HostOpcode opcode, string volume, long offset, int length,
        ReadOnlyMemory<byte> payload, bool fua, ulong writeTag, string what)
    {
        // The path, drawn per attempt: both units (FO-3), one unit only (FO-6: it forwards), or both with one copy
        // lost: the connection to that unit drops as the frame goes out (the host learns it, as from a reset).
        int[] targets = [.. connected];
        int dropped = -1;
        if (targets.Length == 2 && _random.Chance(_singleUnitShare)) { targets = [targets[_random.Next(2)]]; _singleUnitSends++; }
        else if (targets.Length == 2 && _random.Chance(_dropCopyShare)) { dropped = targets[_random.Next(2)]; _droppedCopies++; }
        var flags = (fua ? HostRequestFlags.Fua : HostRequestFlags.None) | (targets.Length == 2 ? HostRequestFlags.Multicast : HostRequestFlags.None);
        ulong tag = writeTag != 0 ? writeTag : ++h.LastTag;
        var key = new HostCommandKey(h.Unit, h.HostId, tag);
        var hostNow = h.Node.Time.GetUtcNow() + h.ClockSkew;
        ulong timestamp = (ulong)(hostNow - DateTimeOffset.UnixEpoch).Ticks / 10;
        var frame = HostCodec.EncodeRequest(new HostRequest(opcode, flags, h.HostId, tag, timestamp, (ulong)offset, (uint)length, payload));
        var attempt = new HostAttempt(key, opcode, targets, [.. targets.Select(i => h.Connection[i])], _scheduler.Elapsed);
        Invariant.Assert(!h.Pending.ContainsKey(tag));
        h.Pending[tag] = attempt;
        _hostAttempts++;
        _trace.Add($"{h.Node.Name} sends {what} ({volume}) as tag {tag} to {string.Join("+", targets.Select(i => $"{_sides[i].Name}{h.Unit}"))}{(flags.HasFlag(HostRequestFlags.Multicast) ? " multicast" : "")}{(dropped >= 0 ? $", the copy to {_sides[dropped].Name} lost" : "")}");
        foreach (var i in targets)
            if (i != dropped) SendFrame(h, i, volume, frame);
        if (dropped >= 0) ResetConnection(h, dropped);
        HostCompletion? answer;
        try { answer = await Waits.WithTimeout(attempt.Done.Task, AttemptTimeout, h.Node.Time); }
        catch (TimeoutException) { answer = null; }
        h.Pending.Remove(tag);
        var now = _scheduler.Elapsed;
        // The stall checker: once both controllers held the command, the handshake owes the host an answer
        // (or the news that its unit is gone) within the time limit, plus the takeover and the run.
        // Promised to a multicast that reached both units (FO-3): the host then has a connection to each controller
        // that holds it. (Sent to one unit, or with a copy lost, the host hears only through that unit; the partner
        // holds the forwarded copy with no connection to the host.) Not promised when both controllers were
        // impaired at once near or during the attempt (one hung or down, the other without its shelf path, say:
        // the secondary cannot fence, the primary cannot answer).
        if (_queuedAt.Remove(key, out var queued) && targets.Length == 2 && dropped < 0 && queued[0] >= attempt.SentAt && queued[1] >= attempt.SentAt)
        {
            var held = queued[0] > queued[1] ? queued[0] : queued[1];
            var stall = now - held;
            var limit = _sides.Select(s => s.Controller?.Handshake.TimeLimit).FirstOrDefault(t => t is not null) ?? CommandHandshakeOptions.DefaultTimeLimit;
            bool doubleFault = _lastDoubleFault is { } df && df >= held - limit;
            if (doubleFault) _stallsExempt++;
            else if (stall > _maxStall) _maxStall = stall;
            if (!doubleFault && stall > limit + StallBound)
                Fail($"host {h.Node.Name}: {what} (tag {tag}) held by both controllers waited {stall.TotalMilliseconds:F0} ms for its answer " +
                     $"(time limit {limit.TotalMilliseconds:F0} ms + {StallBound.TotalMilliseconds:F0} ms); {(answer is null ? "no answer" : answer.Status.ToString())}");
        }
        if (answer is null) _trace.Add($"{h.Node.Name}: tag {tag} {(attempt.Targets.All(t => attempt.Out[t]) ? "lost by every unit" : "timed out")}");
        return answer;
    }

    /// <summary>A frame on its way to the unit of controller <paramref name="i"/> (in order with the connection's earlier frames).</summary>
    void SendFrame(ProtocolHost h, int i, string volume, byte[] frame)
    {
        var now = _scheduler.Elapsed;
        var arrive = now + TimeSpan.FromMicroseconds(_random.Next(20, 500));
        if (arrive < h.FramesArrive[i]) arrive = h.FramesArrive[i];
        h.FramesArrive[i] = arrive;
        _ = DeliverFrameAsync(h, i, h.Connection[i], volume, frame, arrive - now);
    }

    async Task DeliverFrameAsync(ProtocolHost h, int i, long connection, string volume, byte[] frame, TimeSpan delay)
    {
        await h.Node.Time.DelayAsync(delay);
        var s = _sides[i];
        // A connection reset (the controller's crash, or the host's side) loses what was on it.
        if (!s.Node.IsAlive || h.Connection[i] != connection) return;
        s.Node.Post(() => OnFrameAtUnit(h, s, i, connection, volume, frame));
    }

    /// <summary>The unit's side (on the controller's node): decode the frame as HostUnitConnection does and hand it to the handshake.</summary>
    void OnFrameAtUnit(ProtocolHost h, Side s, int i, long connection, string volume, byte[] frame)
    {
        if (h.Connection[i] != connection || s.Controller is not { } c) return;
        var error = HostCodec.TryDecodeRequest(frame, out var request);
        if (error != HostWireError.None || request is null)
        {
            Fail($"unit {s.Name}{h.Unit} could not decode a request frame of {h.Node.Name}: {error}");
            return;
        }
        Invariant.Assert(request.HostId == h.HostId);
        _ = c.Handshake.SubmitAsync(new HostCommand(h.Unit, volume, request), new SimRoute(this, h, i, connection));
    }

    /// <summary>The host's connection to one unit as the handshake answers on it.</summary>
    sealed class SimRoute(Simulator sim, ProtocolHost h, int i, long connection) : IHostCompletionRoute
    {
        public ValueTask<bool> TrySendAsync(HostCompletion completion)
        {
            if (!sim._sides[i].Node.IsAlive || h.Connection[i] != connection) return ValueTask.FromResult(false);
            var frame = HostCodec.EncodeCompletion(completion);
            var now = sim._scheduler.Elapsed;
            var arrive = now + TimeSpan.FromMicroseconds(sim._random.Next(20, 500));
            if (arrive < h.AnswersArrive[i]) arrive = h.AnswersArrive[i];
            h.AnswersArrive[i] = arrive;
            h.Node.Post(() => _ = sim.DeliverCompletionAsync(h, i, connection, frame, arrive - now));
            return ValueTask.FromResult(true);
        }
    }

    async Task DeliverCompletionAsync(ProtocolHost h, int i, long connection, byte[] frame, TimeSpan delay)
    {
        await h.Node.Time.DelayAsync(delay);
        if (h.Connection[i] != connection) return; // the connection was reset meanwhile
        var completion = HostCodec.TryDecodeCompletion(frame);
        if (completion is null)
        {
            Fail($"{h.Node.Name} could not decode a completion frame from unit {_sides[i].Name}{h.Unit}");
            return;
        }
        if (!h.Pending.TryGetValue(completion.HostTag, out var attempt)) { _hostDuplicates++; return; }
        if (completion.Status is HostStatus.Unavailable or HostStatus.NotAttached) TakeOut(attempt, i);
        else if (!attempt.Done.TrySetResult(completion)) _hostDuplicates++;
    }

    /// <summary>Controller <paramref name="i"/> will not answer this attempt; when no target is left, it ends without an answer.</summary>
    static void TakeOut(HostAttempt attempt, int i)
    {
        attempt.Out[i] = true;
        if (attempt.Targets.All(t => attempt.Out[t])) attempt.Done.TrySetResult(null);
    }

    /// <summary>A controller died: every host connection to its units is reset, and attempts waiting on it learn so.</summary>
    void ResetHostConnections(Side side)
    {
        int i = side == _sides[0] ? 0 : 1;
        foreach (var h in _protocolHosts.Values) ResetConnection(h, i);
    }

    /// <summary>The host's connection to controller <paramref name="i"/>'s unit is gone: what was on it is lost,
    /// attempts waiting on it learn so; the host connects again for its next attempt.</summary>
    void ResetConnection(ProtocolHost h, int i)
    {
        long connection = h.Connection[i];
        if (connection < 0) return;
        h.Connection[i] = -1;
        _trace.Add($"{h.Node.Name}: connection to unit {_sides[i].Name}{h.Unit} reset");
        foreach (var attempt in h.Pending.Values.ToList())
            for (int t = 0; t < attempt.Targets.Length; t++)
                if (attempt.Targets[t] == i && attempt.Connections[t] == connection)
                {
                    TakeOut(attempt, i);
                    // A successful read is answered with its data by the unit that ran it only (the other unit is told
                    // it completed, not what it read): if that answer was on this connection, no unit will send it
                    // again. A read is sent again at once, under a new tag, rather than after the attempt's timeout.
                    if (attempt.Opcode == HostOpcode.Read) attempt.Done.TrySetResult(null);
                }
    }
}
