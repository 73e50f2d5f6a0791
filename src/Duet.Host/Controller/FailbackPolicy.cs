namespace Duet.Host.Controller;

// Failback (issue 5): after a takeover the survivor serves every array; once the controller it took over
// is back (restarted, rejoined as standby, fence lifted, paired), the arrays whose preferred owner is that
// controller go back to it — by `duet array move`, or by the survivor itself with failback "auto".
//
// The decision is this class alone, pure and on the injected clock, so that it can be tested by ticking
// time. The controller feeds it, every heartbeat, what it sees of the pair and which arrays it serves for
// its peer; it answers what to show (pending, waiting and why, settling and for how long) and which arrays
// to move now. The move itself is the ordinary one (Controller.MoveArrayAsync): hold, drain, hand over,
// claim at the shelf — the same guarantees as `duet array move`, and it checks the pair again itself.
//
//   pair not healthy ──► waiting (why)        any break restarts the settle clock
//        │ healthy
//        ▼
//   settling: healthy without a break for SettleTime ──► move (one array at a time)
//
// Ping-pong: (1) nothing moves until the pair has been healthy, without a break, for the settle time
// (a controller that dies again soon after it rejoined never gets its arrays back); (2) the controller
// serving an array never moves it anywhere but to its preferred owner, and a move by an operator carries
// the preference with it (ArrayManager.HandOverAsync), so failback never undoes one; (3) if the peer has
// to be taken over again soon after a failback (within FlapWindowSettles settle times), the settle time
// doubles, up to MaxBackoff times the configured one, for as long as this controller runs.

/// <summary>How a controller gives back the arrays it serves whose preferred owner is its peer.</summary>
public enum FailbackMode
{
    /// <summary>Only `duet array move` moves them (the pending failback is shown by `duet status`).</summary>
    Manual,
    /// <summary>The controller moves them itself once the pair has been healthy for the settle time.</summary>
    Auto,
}

/// <summary>What one evaluation sees of the pair. <see cref="PairGeneration"/> changes whenever the pair broke or
/// formed again (a pairing, a hello of a new session of the peer, a lost peer, a takeover): a break between two
/// evaluations, invisible in the flags, still restarts the settle time.</summary>
public readonly record struct PairHealth(
    bool LinkUp, bool MirrorHealthy, bool PeerFenced, bool PeerRegistered, bool PeerLeaseHeld, bool Standby, bool SteppedDown,
    bool TakingOver, bool PoweringDown, bool PeerPoweringDown, bool ShelfLost, long PairGeneration);

/// <summary>An array served here whose preferred owner is the peer. <paramref name="Busy"/>: why it cannot move now
/// (a rebuild or a scrub must finish first), or null.</summary>
public sealed record FailbackCandidate(string Array, string? Busy);

/// <param name="State">"none", "waiting", "settling", "moving" or "manual" (see <see cref="Duet.Raid.Management.FailbackInfo"/>).</param>
/// <param name="MoveNow">The arrays to move to the peer now (only in state "moving").</param>
public sealed record FailbackDecision(string State, IReadOnlyList<string> Pending, IReadOnlyList<string> MoveNow, string? Waiting, TimeSpan? DueIn)
{
    public static readonly FailbackDecision None = new("none", [], [], null, null);
}

public sealed class FailbackPolicy
{
    /// <summary>A takeover of the peer within this many settle times after a failback to it doubles the settle time.</summary>
    public const int FlapWindowSettles = 10;
    /// <summary>The settle time grows to at most this many times the configured one.</summary>
    public const int MaxBackoff = 16;

    readonly TimeProvider _time;
    readonly string _peer;
    long? _healthySince;         // timestamp; null: the pair is not healthy
    long _generation = long.MinValue;
    long? _lastFailBackAt;       // timestamp of the last automatic move
    long? _retryAfter;           // timestamp before which a refused or failed move is not tried again

    public FailbackPolicy(FailbackMode mode, TimeSpan settle, string peer, TimeProvider time)
    {
        if (settle < TimeSpan.Zero) throw new ArgumentException($"the failback settle time ({settle}) must not be negative", nameof(settle));
        Mode = mode;
        BaseSettle = Settle = settle;
        _peer = peer;
        _time = time;
    }

    public FailbackMode Mode { get; }
    public TimeSpan BaseSettle { get; }
    /// <summary>The settle time now: the configured one, or more after flapping.</summary>
    public TimeSpan Settle { get; private set; }
    public long FailBacks { get; private set; }
    public string? LastError { get; private set; }
    public FailbackDecision Last { get; private set; } = FailbackDecision.None;

    /// <summary>Why the pair is not healthy enough to hand the peer an array, or null.</summary>
    public string? WhyNotHealthy(PairHealth h) =>
        h.SteppedDown ? "this controller stepped down"
        : h.Standby ? "this controller is standby"
        : h.PoweringDown ? "this controller is in its power-fail window"
        : h.PeerPoweringDown ? $"controller {_peer} is in its power-fail window"
        : h.TakingOver ? $"taking controller {_peer} over"
        : h.ShelfLost ? "the shelf cannot be reached"
        : h.PeerFenced ? $"controller {_peer} is fenced at the shelf (down, or restarting as standby)"
        : !h.PeerRegistered ? $"controller {_peer} is not registered at the shelf yet (rejoining)"
        : !h.LinkUp ? $"the link to controller {_peer} is down"
        : !h.MirrorHealthy ? $"the mirror to controller {_peer} is not healthy (resynchronising, or in error-recovery mode)"
        : !h.PeerLeaseHeld ? $"controller {_peer} holds no lease yet (standby, or still starting)"
        : null;

    /// <summary>One evaluation (every heartbeat). <paramref name="candidates"/>: the arrays served here whose preferred
    /// owner is the peer, and not being moved or deleted now.</summary>
    public FailbackDecision Evaluate(PairHealth health, IReadOnlyList<FailbackCandidate> candidates)
    {
        long now = _time.GetTimestamp();
        string? why = WhyNotHealthy(health);
        // The settle clock: healthy without a break since _healthySince.
        if (why is not null) _healthySince = null;
        else if (_healthySince is null || health.PairGeneration != _generation) _healthySince = now;
        _generation = health.PairGeneration;
        List<string> pending = [.. candidates.Select(c => c.Array)];
        if (pending.Count == 0) return Last = FailbackDecision.None;
        if (Mode == FailbackMode.Manual)
            return Last = new FailbackDecision("manual", pending, [], why ?? $"failback is manual: `duet array move NAME --to {_peer}`", null);
        if (why is not null) return Last = new FailbackDecision("waiting", pending, [], why, null);
        var ready = candidates.Where(c => c.Busy is null).Select(c => c.Array).ToList();
        if (ready.Count == 0) return Last = new FailbackDecision("waiting", pending, [], string.Join("; ", candidates.Select(c => c.Busy)), null);
        long since = _healthySince!.Value;
        long due = since + (long)(Settle.TotalSeconds * _time.TimestampFrequency);
        if (_retryAfter is { } retry && retry > due) due = retry;
        if (now < due)
        {
            var left = _time.GetElapsedTime(now, due);
            string settling = $"the pair has been healthy for {_time.GetElapsedTime(since, now).TotalSeconds:0.0} s of {Settle.TotalSeconds:0.#} s";
            return Last = new FailbackDecision("settling", pending, [], settling, left);
        }
        return Last = new FailbackDecision("moving", pending, ready, null, TimeSpan.Zero);
    }

    /// <summary>An automatic move finished: the array is the peer's.</summary>
    public void Moved()
    {
        FailBacks++;
        LastError = null;
        _retryAfter = null;
        _lastFailBackAt = _time.GetTimestamp();
    }

    /// <summary>An automatic move was refused or failed: it is tried again after another settle time (at least
    /// one second), whatever the pair does meanwhile.</summary>
    public void Failed(string error)
    {
        LastError = error;
        var wait = Settle > TimeSpan.FromSeconds(1) ? Settle : TimeSpan.FromSeconds(1);
        _retryAfter = _time.GetTimestamp() + (long)(wait.TotalSeconds * _time.TimestampFrequency);
    }

    /// <summary>This controller took its peer over. Soon after a failback to it, that is flapping: the settle time doubles.</summary>
    public void PeerTakenOver()
    {
        _healthySince = null;
        if (_lastFailBackAt is not { } last) return;
        var since = _time.GetElapsedTime(last);
        if (since > FlapWindowSettles * Settle) return;
        var doubled = Settle * 2;
        var max = BaseSettle * MaxBackoff;
        Settle = doubled < max ? doubled : max;
    }
}
