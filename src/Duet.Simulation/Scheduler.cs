using Duet.Core;

namespace Duet.Simulation;

/// <summary>
/// The one thread of a simulated run. Every piece of work — an async continuation, a timer
/// callback, a delivery on the link — is a work item in one ready list, tagged with the
/// <see cref="SimNode"/> (controller, host or the world) it belongs to. <see cref="RunUntil"/>
/// takes ready items one at a time (in FIFO order, or in a seeded random order when
/// <see cref="ShuffleReady"/> is on — both are orders a thread pool could produce) and, when
/// nothing is ready, moves virtual time to the next armed timer. Nothing else moves time, so a
/// run is a pure function of its seed.
///
/// Work posted from any other thread is a leak of real concurrency into the simulation (a real
/// timer, the thread pool, a socket): it is refused and recorded in <see cref="ForeignPosts"/>,
/// which the simulation reports as a failure.
/// </summary>
public sealed class SimScheduler
{
    readonly ManualTimeProvider _clock = new();
    readonly List<WorkItem> _ready = [];
    readonly int _thread = Environment.CurrentManagedThreadId;
    int _head; // items before _head have been taken (FIFO compaction)

    internal readonly record struct WorkItem(SimNode Node, SendOrPostCallback Callback, object? State, int Incarnation);

    public SimScheduler(DeterministicRandom random, SimTrace trace)
    {
        Random = random;
        Trace = trace;
    }

    public DeterministicRandom Random { get; }
    public SimTrace Trace { get; }
    /// <summary>Pick a random ready item instead of the oldest.</summary>
    public bool ShuffleReady { get; set; }
    public long Steps { get; private set; }
    /// <summary>Diagnostics: with DUET_SIM_STEPS set, every work item run goes into the trace (its node and the
    /// async method it resumes), so two traces that differ can be compared step by step.</summary>
    static readonly bool StepTrace = Environment.GetEnvironmentVariable("DUET_SIM_STEPS") is not null;
    int _foreign;
    public int ForeignPosts => Volatile.Read(ref _foreign);
    /// <summary>Where the first post from another thread came from (for the failure report).</summary>
    public string? FirstForeignPost { get; private set; }
    public DateTimeOffset Now => _clock.GetUtcNow();
    public TimeSpan Elapsed => _clock.GetUtcNow() - ManualTimeProvider.DefaultStart;
    internal ManualTimeProvider Clock => _clock;
    public int ReadyCount => _ready.Count - _head;

    /// <summary>Exceptions that escaped a work item (an async void or a posted callback): a bug in the code under test.</summary>
    public List<string> Escaped { get; } = [];

    internal void Enqueue(SimNode node, SendOrPostCallback callback, object? state)
    {
        if (Environment.CurrentManagedThreadId != _thread)
        {
            if (Interlocked.Increment(ref _foreign) == 1) FirstForeignPost = $"{node.Name}: {Environment.StackTrace}";
            return;
        }
        _ready.Add(new WorkItem(node, callback, state, node.Incarnation));
    }

    /// <summary>Puts a paused node's held items back in the ready queue, in the order they were held.</summary>
    internal void Requeue(IEnumerable<WorkItem> items) => _ready.AddRange(items);

    static string Describe(object? state)
    {
        if (state is Delegate d)
        {
            var t = d.Target;
            if (t is not null && t.GetType().GetField("StateMachine", System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance) is { } f)
            {
                var sm = f.GetValue(t);
                var st = sm?.GetType().GetField("<>1__state")?.GetValue(sm);
                return $"SM {sm?.GetType().FullName} state {st}";
            }
            return $"D {t?.GetType().FullName}.{d.Method.Name}";
        }
        return state?.GetType().FullName ?? "null";
    }

    /// <summary>Drops every ready item of <paramref name="node"/> (it crashed).</summary>
    internal void DropAll(SimNode node)
    {
        int kept = _head;
        for (int i = _head; i < _ready.Count; i++)
            if (_ready[i].Node != node) _ready[kept++] = _ready[i];
        _ready.RemoveRange(kept, _ready.Count - kept);
    }

    /// <summary>Runs one ready item; false when none is ready.</summary>
    public bool RunOne()
    {
        if (_head >= _ready.Count) return false;
        int pick = _head;
        if (ShuffleReady && _ready.Count - _head > 1) pick = _head + Random.Next(_ready.Count - _head);
        var item = _ready[pick];
        _ready[pick] = _ready[_head];
        _ready[_head] = default;
        _head++;
        if (_head > 1024 && _head * 2 > _ready.Count)
        {
            _ready.RemoveRange(0, _head);
            _head = 0;
        }
        if (!item.Node.IsAlive || item.Incarnation != item.Node.Incarnation) return true; // posted before a crash
        if (item.Node.IsPaused)
        {
            item.Node.Held.Add(item);
            return true;
        }
        Steps++;
        if (StepTrace) Trace.Add($"step {item.Node.Name} {item.Callback.Method.DeclaringType?.Name}.{item.Callback.Method.Name} {Describe(item.State)} ready {_ready.Count - _head}");
        var previous = SynchronizationContext.Current;
        // The context of the item's incarnation: an await inside it that completes later (on another node's
        // timer, say) posts back only if that incarnation is still the live one.
        SynchronizationContext.SetSynchronizationContext(item.Node.CurrentContext);
        try { item.Callback(item.State); }
        catch (Exception e)
        {
            if (Escaped.Count < 20) Escaped.Add($"{item.Node.Name}: {e.GetType().Name}: {e.Message}");
            Trace.Add($"escaped {item.Node.Name} {e.GetType().Name}");
        }
        finally { SynchronizationContext.SetSynchronizationContext(previous); }
        return true;
    }

    /// <summary>
    /// Runs until <paramref name="done"/> holds (checked between items), virtual time passes
    /// <paramref name="deadline"/>, or nothing is ready and no timer is armed. Returns whether
    /// <paramref name="done"/> held.
    /// </summary>
    public bool RunUntil(Func<bool> done, DateTimeOffset deadline, long maxSteps = long.MaxValue)
    {
        long start = Steps;
        while (true)
        {
            if (done()) return true;
            if (Steps - start >= maxSteps) return false;
            if (RunOne()) continue;
            var next = _clock.NextDueUtc;
            if (next is null || next.Value > deadline) return false;
            var delta = next.Value - _clock.GetUtcNow();
            _clock.Advance(delta < TimeSpan.Zero ? TimeSpan.Zero : delta);
        }
    }
}

/// <summary>
/// One simulated process: a controller, a host, or the world (faults, the link's wire). It is
/// the <see cref="SynchronizationContext"/> its code runs under, so every continuation of that
/// code comes back to it, and its <see cref="Time"/> posts timer callbacks to it. A crash
/// (<see cref="Crash"/>) drops its ready items and every later post: its volatile state is
/// simply never run again. <see cref="Restart"/> begins a new incarnation.
/// </summary>
public sealed class SimNode : SynchronizationContext
{
    readonly SimScheduler _scheduler;
    readonly List<Action<Exception>> _onCrash = [];

    public SimNode(SimScheduler scheduler, string name)
    {
        _scheduler = scheduler;
        Name = name;
        Time = new NodeTime(this);
    }

    public string Name { get; }
    public bool IsAlive { get; private set; } = true;
    /// <summary>Hung (a process stopped, or stalled in a long pause): its work items wait until <see cref="Resume"/>.</summary>
    public bool IsPaused { get; private set; }
    internal List<SimScheduler.WorkItem> Held { get; } = [];

    /// <summary>The process hangs: nothing of it runs (its timers fire into the held queue) until <see cref="Resume"/>.</summary>
    public void Pause() => IsPaused = true;

    /// <summary>The process runs again: everything that came due while it hung runs now, in order.</summary>
    public void Resume()
    {
        if (!IsPaused) return;
        IsPaused = false;
        _scheduler.Requeue(Held);
        Held.Clear();
    }
    public int Incarnation { get; private set; }
    /// <summary>Virtual time whose timers fire on this node (and never after it crashed).</summary>
    public TimeProvider Time { get; }
    internal SimScheduler Scheduler => _scheduler;

    public override void Post(SendOrPostCallback d, object? state)
    {
        if (IsAlive) _scheduler.Enqueue(this, d, state);
    }

    /// <summary>What code running on this node captures: tied to the incarnation it ran in, so a
    /// continuation of a crashed incarnation never runs in the next one (a restarted process does not
    /// resume its predecessor's awaits).</summary>
    internal SynchronizationContext CurrentContext => _context ??= new IncarnationContext(this, Incarnation);
    IncarnationContext? _context;

    sealed class IncarnationContext(SimNode node, int incarnation) : SynchronizationContext
    {
        public override void Post(SendOrPostCallback d, object? state)
        {
            if (node.IsAlive && node.Incarnation == incarnation) node._scheduler.Enqueue(node, d, state);
        }

        public override void Send(SendOrPostCallback d, object? state) =>
            throw new NotSupportedException("a simulated node never blocks on another");

        public override SynchronizationContext CreateCopy() => this;
    }

    public override void Send(SendOrPostCallback d, object? state) =>
        throw new NotSupportedException("a simulated node never blocks on another");

    public override SynchronizationContext CreateCopy() => this;

    public void Post(Action action) => Post(static s => ((Action)s!)(), action);

    /// <summary>
    /// Runs <paramref name="work"/> on this node (as a request arriving over a socket would) and
    /// completes on the caller's node. If this node crashes first, the call fails with
    /// <see cref="NodeCrashedException"/>, as a connection reset would.
    /// </summary>
    public Task<T> InvokeAsync<T>(Func<Task<T>> work)
    {
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!IsAlive)
        {
            tcs.SetException(new NodeCrashedException(Name));
            return tcs.Task;
        }
        Action<Exception> onCrash = e => tcs.TrySetException(e);
        _onCrash.Add(onCrash);
        Post(async () =>
        {
            try { tcs.TrySetResult(await work()); }
            catch (Exception e) { tcs.TrySetException(e); }
            finally { _onCrash.Remove(onCrash); }
        });
        return tcs.Task;
    }

    public Task InvokeAsync(Func<Task> work) => InvokeAsync<bool>(async () => { await work(); return true; });

    /// <summary>The process dies: nothing it queued or armed runs any more; calls into it fail.</summary>
    public void Crash()
    {
        if (!IsAlive) return;
        IsAlive = false;
        IsPaused = false;
        Held.Clear();
        _scheduler.DropAll(this);
        var waiting = _onCrash.ToArray();
        _onCrash.Clear();
        foreach (var fail in waiting) fail(new NodeCrashedException(Name));
    }

    /// <summary>A new incarnation after a crash (the caller builds its state again).</summary>
    public void Restart()
    {
        Invariant.Assert(!IsAlive, "restart of a live node");
        IsAlive = true;
        Incarnation++;
        _context = null;
    }

    sealed class NodeTime(SimNode node) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => node._scheduler.Clock.GetUtcNow();
        public override long GetTimestamp() => node._scheduler.Clock.GetTimestamp();
        public override long TimestampFrequency => node._scheduler.Clock.TimestampFrequency;
        public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            int incarnation = node.Incarnation;
            return node._scheduler.Clock.CreateTimer(_ =>
            {
                if (node.IsAlive && node.Incarnation == incarnation) node.Post(s => callback(s), state);
            }, null, dueTime, period);
        }
    }
}

/// <summary>A call into a simulated process that crashed before answering (a connection reset).</summary>
public sealed class NodeCrashedException(string node) : Exception($"controller {node} crashed");
