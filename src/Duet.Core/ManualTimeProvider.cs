namespace Duet.Core;

/// <summary>
/// Virtual time for tests and the simulator. Time stands still until <see cref="Advance"/> or
/// <see cref="AdvanceTo"/> moves it; nothing ever happens on its own.
///
/// <code>
///   now ──────────────●────────●───●───────────────▶ target
///                     t1       t2  t3 (t2 re-armed: periodic)
///   Advance(target - now): fire t1, t2, t3, t2' ... in (due time, creation order) order;
///   while a callback runs, GetUtcNow() == its due time; finally now = target.
/// </code>
///
/// Timer callbacks run synchronously on the thread calling Advance, one at a time, outside the
/// provider's lock (so a callback may create, change or dispose timers; a timer it arms at or
/// before the target fires in the same Advance). A timer due at or before "now" fires on the
/// next Advance, including <c>Advance(TimeSpan.Zero)</c>; creating or changing a timer never
/// runs its callback. Advance is not reentrant: a callback that calls Advance throws.
/// An exception thrown by a callback propagates out of Advance with time left at that
/// callback's due time.
///
/// Timestamps count <see cref="TimeSpan"/> ticks since the provider was created
/// (<see cref="TimestampFrequency"/> = 10^7), so <see cref="TimeProvider.GetElapsedTime(long)"/>
/// measures virtual time.
/// </summary>
public sealed class ManualTimeProvider : TimeProvider
{
    /// <summary>The default start: an arbitrary, fixed instant, so runs are reproducible.</summary>
    public static readonly DateTimeOffset DefaultStart = new(2000, 1, 1, 0, 0, 0, TimeSpan.Zero);

    readonly Lock _lock = new();
    readonly SortedSet<ManualTimer> _armed = new(DueOrder.Instance);
    readonly DateTimeOffset _start;
    DateTimeOffset _now;
    long _nextTimerId;
    bool _advancing;

    public ManualTimeProvider() : this(DefaultStart) { }

    public ManualTimeProvider(DateTimeOffset startUtc)
    {
        _start = startUtc.ToUniversalTime();
        _now = _start;
    }

    public override DateTimeOffset GetUtcNow()
    {
        lock (_lock) return _now;
    }

    public override long GetTimestamp()
    {
        lock (_lock) return (_now - _start).Ticks;
    }

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

    /// <summary>Timers currently armed (created or changed with a finite due time, not yet fired or disposed).</summary>
    public int ArmedTimerCount
    {
        get { lock (_lock) return _armed.Count; }
    }

    /// <summary>The due time of the next timer to fire, or null when none is armed.</summary>
    public DateTimeOffset? NextDueUtc
    {
        get { lock (_lock) return _armed.Count == 0 ? null : _armed.Min!.Due; }
    }

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        ArgumentNullException.ThrowIfNull(callback);
        CheckTimerSpan(dueTime, nameof(dueTime));
        CheckTimerSpan(period, nameof(period));
        lock (_lock)
        {
            var timer = new ManualTimer(this, callback, state, _nextTimerId++);
            ArmLocked(timer, dueTime, period);
            return timer;
        }
    }

    /// <summary>Moves time forward by <paramref name="delta"/>, firing every timer that falls due on the way.</summary>
    public void Advance(TimeSpan delta)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(delta, TimeSpan.Zero);
        DateTimeOffset target;
        lock (_lock) target = _now + delta;
        AdvanceTo(target);
    }

    /// <summary>Moves time forward to <paramref name="targetUtc"/> (not backwards), firing every timer due at or before it.</summary>
    public void AdvanceTo(DateTimeOffset targetUtc)
    {
        lock (_lock)
        {
            if (targetUtc < _now)
                throw new ArgumentOutOfRangeException(nameof(targetUtc), $"cannot move time backwards from {_now:O} to {targetUtc:O}");
            if (_advancing)
                throw new InvalidOperationException("Advance is already running (called from a timer callback or another thread)");
            _advancing = true;
        }
        try
        {
            while (true)
            {
                ManualTimer timer;
                lock (_lock)
                {
                    if (_armed.Count == 0 || _armed.Min!.Due > targetUtc)
                    {
                        _now = targetUtc;
                        return;
                    }
                    timer = _armed.Min;
                    _armed.Remove(timer);
                    Invariant.Assert(timer.Due >= _now);
                    _now = timer.Due;
                    if (timer.Period is { } period)
                    {
                        timer.Due += period;
                        _armed.Add(timer);
                    }
                    else
                    {
                        timer.Armed = false;
                    }
                }
                timer.Callback(timer.State);
            }
        }
        finally
        {
            lock (_lock) _advancing = false;
        }
    }

    static void CheckTimerSpan(TimeSpan span, string name)
    {
        if (span < TimeSpan.Zero && span != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(name, span, "must be non-negative or Timeout.InfiniteTimeSpan");
    }

    void ArmLocked(ManualTimer timer, TimeSpan dueTime, TimeSpan period)
    {
        if (timer.Armed) _armed.Remove(timer);
        timer.Armed = false;
        if (dueTime == Timeout.InfiniteTimeSpan) return;
        // As with System.Threading.Timer, a zero or infinite period means "fire once".
        timer.Period = period == Timeout.InfiniteTimeSpan || period == TimeSpan.Zero ? null : period;
        timer.Due = _now + dueTime;
        timer.Armed = true;
        _armed.Add(timer);
    }

    bool Change(ManualTimer timer, TimeSpan dueTime, TimeSpan period)
    {
        CheckTimerSpan(dueTime, nameof(dueTime));
        CheckTimerSpan(period, nameof(period));
        lock (_lock)
        {
            if (timer.Disposed) return false;
            ArmLocked(timer, dueTime, period);
            return true;
        }
    }

    void Dispose(ManualTimer timer)
    {
        lock (_lock)
        {
            if (timer.Disposed) return;
            timer.Disposed = true;
            if (timer.Armed) _armed.Remove(timer);
            timer.Armed = false;
        }
    }

    sealed class ManualTimer(ManualTimeProvider owner, TimerCallback callback, object? state, long id) : ITimer
    {
        public readonly TimerCallback Callback = callback;
        public readonly object? State = state;
        public readonly long Id = id;
        // Guarded by owner._lock. Due and Id must not change while the timer is in _armed.
        public DateTimeOffset Due;
        public TimeSpan? Period;
        public bool Armed;
        public bool Disposed;

        public bool Change(TimeSpan dueTime, TimeSpan period) => owner.Change(this, dueTime, period);

        public void Dispose() => owner.Dispose(this);

        public ValueTask DisposeAsync()
        {
            owner.Dispose(this);
            return ValueTask.CompletedTask;
        }
    }

    sealed class DueOrder : IComparer<ManualTimer>
    {
        public static readonly DueOrder Instance = new();

        public int Compare(ManualTimer? x, ManualTimer? y)
        {
            Invariant.Assert(x is not null);
            Invariant.Assert(y is not null);
            int c = x.Due.CompareTo(y.Due);
            return c != 0 ? c : x.Id.CompareTo(y.Id);
        }
    }
}
