using Duet.Cache;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

/// <summary>
/// Failback (issue 5): the arrays this controller serves whose preferred owner is its peer go back to the peer
/// once the pair is healthy again — by `duet array move`, or, with <see cref="FailbackMode.Auto"/>, by this
/// controller once the pair has been healthy for the settle time (<see cref="FailbackPolicy"/> decides, every
/// heartbeat; the move is <see cref="MoveArrayAsync"/>, with its guarantees).
/// </summary>
public sealed partial class Controller
{
    readonly Lock _failbackLock = new();
    FailbackPolicy? _failback;       // with a shelf, from StartFailover
    long _pairGeneration;            // + 1 whenever the pair formed or broke (see PairHealth)
    volatile bool _peerLeaseHeld;    // as the peer's last heartbeat said
    int _failingBack;

    /// <summary>Arrays this controller moved back to the peer by itself (failback "auto").</summary>
    public long FailBacks { get { lock (_failbackLock) return _failback?.FailBacks ?? 0; } }

    PairHealth CurrentPairHealth() => new(
        Link.IsUp, Mirror.Mode == MirrorMode.Healthy, _peerFenced, _peerRegistered, _peerLeaseHeld, _standby, _steppedDown,
        Volatile.Read(ref _takingOver) != 0, _poweringDown, PeerInPowerFailWindow, _shelfLost, Interlocked.Read(ref _pairGeneration));

    /// <summary>The arrays served here whose preferred owner is the peer (not those being moved or deleted now).</summary>
    List<FailbackCandidate> FailbackCandidates()
    {
        var list = new List<FailbackCandidate>();
        foreach (var (array, busy) in Arrays.PreferringServed(PeerName))
        {
            lock (_volumesLock) if (_givingUp.Contains(array)) continue;
            list.Add(new FailbackCandidate(array, busy));
        }
        return list;
    }

    /// <summary>Every heartbeat: what the failback waits for, and the moves it starts (one at a time, not awaited).</summary>
    void EvaluateFailback()
    {
        if (_failback is null) return;
        var health = CurrentPairHealth();
        var candidates = FailbackCandidates();
        FailbackDecision decision;
        lock (_failbackLock) decision = _failback.Evaluate(health, candidates);
        if (decision.MoveNow.Count == 0 || Interlocked.Exchange(ref _failingBack, 1) != 0) return;
        _ = FailBackAsync(decision.MoveNow);
    }

    async Task FailBackAsync(IReadOnlyList<string> arrays)
    {
        try
        {
            foreach (var array in arrays)
            {
                LogFailingBack(array, PeerName);
                try
                {
                    // The ordinary move: it checks the pair again (link, mirror, the peer registered and not
                    // fenced), holds the volumes, drains, hands over, and names the peer at the shelf last.
                    await MoveArrayAsync(array, PeerName, _stopping.Token);
                    lock (_failbackLock) _failback!.Moved();
                    LogFailedBack(array, PeerName);
                }
                catch (OperationCanceledException) { return; }
                catch (Exception e)
                {
                    lock (_failbackLock) _failback!.Failed($"moving {array} to {PeerName}: {e.Message}");
                    LogFailbackFailed(array, PeerName, e.Message);
                    return;
                }
            }
        }
        finally { Volatile.Write(ref _failingBack, 0); }
    }

    FailbackInfo? FailbackState()
    {
        if (_failback is null) return null;
        lock (_failbackLock)
        {
            var d = _failback.Last;
            string state = Volatile.Read(ref _failingBack) != 0 ? "moving" : d.State;
            return new FailbackInfo(_failback.Mode == FailbackMode.Auto ? "auto" : "manual", _failback.Settle.TotalMilliseconds, d.Pending, state,
                d.Waiting, d.DueIn?.TotalMilliseconds, _failback.FailBacks, _failback.LastError);
        }
    }

    /// <summary>For `duet status` and `duet array list`: the failback pending for an array served here, or null.</summary>
    internal string? FailbackNote(string array)
    {
        if (_failback is null) return null;
        lock (_failbackLock)
        {
            var d = _failback.Last;
            if (!d.Pending.Contains(array)) return null;
            if (Volatile.Read(ref _failingBack) != 0 || d.State == "moving") return "moving now";
            return d.State switch
            {
                "manual" => $"pending (failback is manual): `duet array move {array} --to {PeerName}`" + (d.Waiting is { } w && !w.StartsWith("failback is manual", StringComparison.Ordinal) ? $" (not yet possible: {w})" : ""),
                "settling" => $"in {d.DueIn?.TotalSeconds ?? 0:0.0} s ({d.Waiting})",
                _ => $"waiting: {d.Waiting}" + (_failback.LastError is { } e ? $" (last attempt: {e})" : ""),
            };
        }
    }

    [LoggerMessage(EventId = 7050, Level = LogLevel.Information, Message = "failback: moving array {Array} back to its preferred owner, controller {To}")]
    partial void LogFailingBack(string array, string to);
    [LoggerMessage(EventId = 7051, Level = LogLevel.Information, Message = "failback: array {Array} is served by controller {To} again")]
    partial void LogFailedBack(string array, string to);
    [LoggerMessage(EventId = 7052, Level = LogLevel.Warning, Message = "failback of array {Array} to controller {To} did not happen (tried again after the settle time): {Error}")]
    partial void LogFailbackFailed(string array, string to, string error);
}
