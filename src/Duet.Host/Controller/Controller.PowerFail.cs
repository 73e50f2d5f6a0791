using Duet.Cache;
using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

// AW-6, the graceful power-fail window (the seed's battery backup, 4a): on a power-fail notice the
// controller finishes or journals its pending work within a bounded time, then stops. What "journals"
// means here is that nothing has to be written anywhere new: every acknowledged write is already in
// NVRAM (region 1, and the peer's region 2), and every array write already has its record in the
// NVRAM write log (AW-4). So the window is short and bounded, never a destage of the whole cache:
//
//   t0            the gate closes: no new host command starts (it fails at once, not started);
//                 the front ends (the shell's) stop listening and reading; the peer is told
//   .. t0 + 3W/4  host commands in flight finish or fail; destage runs only to make room for a write in
//                 flight that waits for it (the dirty cache stays in NVRAM)
//   ..            no destage round starts again; the round writing finishes (its drive writes complete)
//   ..            the served arrays' drives are flushed: the records of the writes that returned are
//                 cleared (here and at the peer); records of writes still running stay for recovery
//   ..            the peer is told "done"; for a power failure of the pair, its "done" is awaited (its
//                 last mirror writes land in our region 2 until then)
//   .. t0 + W     NVRAM synced (msync); the report; the shell stops the process
//
// Every wait ends at its deadline: what did not finish is left as it is, and the next start recovers
// it as it recovers a crash (replay region 1, settle the logged stripes). W is
// ControllerCoreOptions.PowerFailWindow.
//
// The pair. A power failure strikes both controllers (scope Pair: `duet power-fail`, `./duet up`
// stopping): each runs its window, a controller told by its peer that the pair is failing begins its
// own, and neither takes the other over — a takeover would fence a peer that is only stopping, and
// make it discard its NVRAM at the next start. A controller stopped alone (scope Controller: SIGTERM
// to its process) is a failed controller that said so: its peer takes its arrays over as soon as it
// hears "done" (its dirty data is in the peer's region 2, its open write-log records in the peer's log
// 2), without waiting out the heartbeat timeout; if "done" is lost, the peer waits for the window and
// the heartbeat timeout before it decides the usual way. A controller in its own window never takes
// over.
public sealed partial class Controller
{
    /// <summary>AW-6: the host commands in flight here; a power-fail window closes it.</summary>
    public HostCommandGate HostCommands { get; }

    TaskCompletionSource<PowerFailReport>? _powerFail;
    PowerFailScope _powerFailScope;
    volatile bool _poweringDown;       // the window began: no new host command, no takeover, no pairing
    volatile bool _powerFailFinishing; // "done" is on its way: a fence found now is the peer's takeover we asked for
    // The peer's window, as its notices said (under _volumesLock).
    PowerFailScope? _peerPowerFailScope;
    long _peerPowerFailUntil;
    bool _peerPowerFailDone;
    readonly TaskCompletionSource _peerPowerFailed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The window began (by a local notice or the peer's): the shell stops its front ends and, once
    /// <see cref="PowerFailAsync"/> completes, the process.</summary>
    public event Action<PowerFailScope>? PowerFailBegan;

    public bool IsPoweringDown => _poweringDown;

    /// <summary>The window's report once it began (null before).</summary>
    public Task<PowerFailReport>? PowerFailCompletion => Volatile.Read(ref _powerFail)?.Task;

    /// <summary>The peer told us its window began and has not told us it ended; past its window and a
    /// heartbeat timeout we stop believing it.</summary>
    bool PeerInPowerFailWindow
    {
        get
        {
            lock (_volumesLock) return _peerPowerFailScope is not null && !_peerPowerFailDone && Now < _peerPowerFailUntil;
        }
    }

    /// <summary>
    /// AW-6: runs the power-fail window (see the top of this file) and returns what it did. Called again
    /// it returns the same window; a call for the pair during a window for this controller alone widens it
    /// to the pair (the peer is told). The controller serves nothing afterwards: dispose it (no destage).
    /// </summary>
    public Task<PowerFailReport> PowerFailAsync(PowerFailScope scope)
    {
        TaskCompletionSource<PowerFailReport> done;
        bool start = false, widen = false;
        lock (_volumesLock)
        {
            if (_powerFail is null)
            {
                _powerFail = new TaskCompletionSource<PowerFailReport>(TaskCreationOptions.RunContinuationsAsynchronously);
                _powerFailScope = scope;
                _poweringDown = true;
                start = true;
            }
            else if (scope == PowerFailScope.Pair && _powerFailScope == PowerFailScope.Controller && !_powerFailFinishing)
            {
                _powerFailScope = PowerFailScope.Pair;
                widen = true;
            }
            done = _powerFail;
        }
        if (start) _ = RunPowerFailAsync(done);
        else if (widen) _ = TellPeerAsync(new PowerFailNotice(PowerFailPhase.Began, PowerFailScope.Pair, false, WindowMs, 0, 0));
        return done.Task;
    }

    uint WindowMs => (uint)Math.Min(uint.MaxValue, _options.PowerFailWindow.TotalMilliseconds);

    async Task RunPowerFailAsync(TaskCompletionSource<PowerFailReport> done)
    {
        try { done.TrySetResult(await PowerFailWindowAsync()); }
        catch (Exception e) when (e is not InvariantViolationException)
        {
            // Nothing in the window should throw; if something did, the stop goes on (recovery is the same).
            LogPowerFailError(e.Message);
            done.TrySetResult(new PowerFailReport(Name, ScopeName(_powerFailScope), _options.PowerFailWindow.TotalMilliseconds, 0, true,
                0, 0, 0, HostCommands.InFlight, HostCommands.Refused, Cache.DestageStopped, false, false, Cache.DirtyCount, WriteLog.LiveCount, false, false));
        }
    }

    async Task<PowerFailReport> PowerFailWindowAsync()
    {
        var window = _options.PowerFailWindow;
        long began = Now;
        long hostsUntil = began + Ticks(window * 3 / 4), until = began + Ticks(window);
        int inFlight = HostCommands.Close();
        // Destage from now on only makes room for a host write in flight; the rest stays in NVRAM.
        Cache.DestageForRoomOnly();
        var scope = _powerFailScope;
        LogPowerFailBegan(ScopeName(scope), window.TotalMilliseconds, inFlight, Cache.DirtyCount);
        try { PowerFailBegan?.Invoke(scope); }
        catch (Exception e) when (e is not InvariantViolationException) { LogPowerFailError($"a listener of the window failed: {e.Message}"); }
        RaiseAccessChanged();
        bool peerTold = await TellPeerAsync(new PowerFailNotice(PowerFailPhase.Began, scope, false, WindowMs, 0, 0));
        bool expired = false;

        // Host commands in flight finish or fail; a takeover that was running finishes too (it cannot stop
        // half-way once the peer is fenced).
        expired |= !await WithinAsync(HostCommands.WhenIdleAsync(), hostsUntil);
        expired |= !await WithinAsync(UntilNoTakeoverAsync(), hostsUntil);

        // No new destage round; the one writing finishes (its drive writes complete, its flush runs).
        bool destageStopped = await WithinAsync(Cache.StopDestageAsync(), until);
        expired |= !destageStopped;
        // The drives of the arrays served here, flushed: the records of the writes that returned are cleared.
        bool drivesFlushed = destageStopped && await WithinAsync(FlushServedArraysAsync(), until);
        expired |= destageStopped && !drivesFlushed && Now >= until;

        // From here our fence would be the takeover we ask for (alone), or nothing (the pair): no step-down;
        // and the scope is what it is (a widening now would tell the peer "began" after "done").
        lock (_volumesLock)
        {
            _powerFailFinishing = true;
            scope = _powerFailScope; // widened meanwhile?
        }
        _stopping.Cancel(); // heartbeats, the mirror watchdog, a takeover's retries
        int dirty = Cache.DirtyCount, records = WriteLog.LiveCount;
        var (_, finished, failed, unfinished) = HostCommands.Outcomes();
        expired |= unfinished > 0;
        bool peerTold2 = await TellPeerAsync(new PowerFailNotice(PowerFailPhase.Done, scope, expired, WindowMs, (uint)dirty, (uint)records));
        peerTold |= peerTold2;
        bool peerDone = false;
        if (scope == PowerFailScope.Pair && Link.IsUp)
        {
            // The peer's last mirror writes are landing in our region 2 until it says it is done.
            peerDone = await WithinAsync(Waits.WhenAny(_peerPowerFailed.Task, LinkDownAsync()), until) && _peerPowerFailed.Task.IsCompleted;
        }
        else peerDone = _peerPowerFailed.Task.IsCompleted;

        bool synced = true;
        try { Nvram.Flush(); }
        catch (IOException e)
        {
            synced = false;
            LogPowerFailError($"NVRAM sync failed: {e.Message}");
        }
        var elapsed = Since(began);
        var report = new PowerFailReport(Name, ScopeName(scope), window.TotalMilliseconds, elapsed.TotalMilliseconds, expired,
            inFlight, finished, failed, unfinished, HostCommands.Refused, destageStopped, drivesFlushed, synced, dirty, records, peerTold, peerDone);
        LogPowerFailDone(elapsed.TotalMilliseconds, expired ? "ran out" : "finished", finished, failed, unfinished, HostCommands.Refused, dirty, records);
        return report;
    }

    static string ScopeName(PowerFailScope scope) => scope == PowerFailScope.Pair ? "pair" : "controller";

    long Ticks(TimeSpan span) => (long)(span.TotalSeconds * _options.Time.TimestampFrequency);

    /// <summary>Waits for <paramref name="task"/> until the timestamp <paramref name="deadline"/>: true if it
    /// completed in time and well, false if the deadline came first or it failed (logged).</summary>
    async Task<bool> WithinAsync(Task task, long deadline)
    {
        var left = _options.Time.GetElapsedTime(Now, deadline);
        try
        {
            if (left <= TimeSpan.Zero)
            {
                if (!task.IsCompleted) return false;
                await task;
                return true;
            }
            await Waits.WithTimeout(task, left, _options.Time);
            return true;
        }
        catch (TimeoutException) { return false; }
        catch (Exception e) when (e is not InvariantViolationException)
        {
            LogPowerFailError(e.Message);
            return false;
        }
    }

    async Task UntilNoTakeoverAsync()
    {
        while (Volatile.Read(ref _takingOver) != 0) await Volatile.Read(ref _beatDone).Task;
    }

    Task LinkDownAsync()
    {
        var down = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Link.UpChanged += up => { if (!up) down.TrySetResult(); };
        if (!Link.IsUp) down.TrySetResult();
        return down.Task;
    }

    async Task FlushServedArraysAsync()
    {
        List<RaidBacking> backings;
        lock (_backings) backings = [.. _backings.Values];
        var served = Arrays.ServedArrays;
        foreach (var b in backings)
            if (served.Contains(b.Array)) await b.FlushAsync(default);
    }

    /// <summary>Posts a notice to the peer, waiting at most 100 ms for room on the link (a hung peer must not
    /// hold the window up). True if it went out.</summary>
    async Task<bool> TellPeerAsync(PowerFailNotice notice)
    {
        if (!Link.IsUp || _peerFenced) return false;
        try
        {
            await Waits.WithTimeout(Link.PostAsync(IclSignal.Message, Nvram.Epoch, DuetFrame.ToArray(notice), default).AsTask(), CheckpointPostLimit, _options.Time);
            return true;
        }
        catch (Exception e) when (e is IclLinkDownException or TimeoutException) { return false; }
    }

    void OnPowerFailNotice(ReadOnlySpan<byte> message)
    {
        if (PowerFailNotice.TryDecode(message, out var notice, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("power-fail notice", error.ToString());
            return;
        }
        if (notice.Phase == PowerFailPhase.Began)
        {
            lock (_volumesLock)
            {
                _peerPowerFailScope = notice.Scope;
                _peerPowerFailDone = false;
                _peerPowerFailUntil = Now + Ticks(TimeSpan.FromMilliseconds(notice.WindowMs) + Failover.HeartbeatTimeout);
            }
            LogPeerPowerFailBegan(PeerName, ScopeName(notice.Scope), notice.WindowMs);
            // A power failure of the pair strikes this controller too.
            if (notice.Scope == PowerFailScope.Pair) _ = PowerFailAsync(PowerFailScope.Pair);
            return;
        }
        lock (_volumesLock)
        {
            _peerPowerFailScope ??= notice.Scope;
            _peerPowerFailDone = true;
        }
        _peerPowerFailed.TrySetResult();
        LogPeerPowerFailDone(PeerName, notice.WindowExpired ? "ran out" : "finished", notice.DirtyElements, notice.LogRecords);
        // Alone: the peer stops, and its arrays are ours to serve now (its dirty data is in our region 2).
        if (notice.Scope == PowerFailScope.Controller && !_poweringDown)
            _ = TakeOverAsync($"controller {PeerName} stopped alone (its power-fail window ended)");
    }

    [LoggerMessage(EventId = 7060, Level = LogLevel.Warning, Message = "power-fail window ({Scope}) began: {WindowMs:F0} ms; {InFlight} host commands in flight, {Dirty} dirty cache elements (kept in NVRAM); no new host command starts")]
    partial void LogPowerFailBegan(string scope, double windowMs, int inFlight, int dirty);
    [LoggerMessage(EventId = 7061, Level = LogLevel.Warning, Message = "power-fail window {How} after {Ms:F0} ms: host commands {Finished} finished, {Failed} failed, {Unfinished} unfinished, {Refused} not started; {Dirty} dirty cache elements and {Records} write-log records left to the next start")]
    partial void LogPowerFailDone(double ms, string how, int finished, int failed, int unfinished, long refused, int dirty, int records);
    [LoggerMessage(EventId = 7062, Level = LogLevel.Warning, Message = "controller {Peer} began a power-fail window ({Scope}, {WindowMs} ms)")]
    partial void LogPeerPowerFailBegan(string peer, string scope, uint windowMs);
    [LoggerMessage(EventId = 7063, Level = LogLevel.Warning, Message = "controller {Peer}'s power-fail window {How}: {Dirty} dirty cache elements and {Records} write-log records left")]
    partial void LogPeerPowerFailDone(string peer, string how, uint dirty, uint records);
    [LoggerMessage(EventId = 7064, Level = LogLevel.Error, Message = "power-fail window: {Error}")]
    partial void LogPowerFailError(string error);
}
