namespace Duet.Core;

/// <summary>
/// An async semaphore for core code, in place of <see cref="SemaphoreSlim"/>. SemaphoreSlim's
/// cancellable WaitAsync resumes on the thread pool internally, which would take a simulated
/// run off its one thread; this gate completes a waiter's task and lets the waiter's own
/// context (none in production, the simulator's node in a simulation) run the continuation.
/// Waiters are served first come, first served.
/// </summary>
public sealed class AsyncGate
{
    readonly Lock _lock = new();
    readonly LinkedList<Waiter> _waiters = new();
    readonly int _max;
    int _count;

    sealed class Waiter() : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public LinkedListNode<Waiter>? Node;
        public CancellationTokenRegistration Registration;
    }

    public AsyncGate(int initialCount, int maxCount = int.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(initialCount);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, Math.Max(1, initialCount));
        _count = initialCount;
        _max = maxCount;
    }

    public int CurrentCount { get { lock (_lock) return _count; } }

    public Task WaitAsync(CancellationToken cancellationToken = default)
    {
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled(cancellationToken);
        Waiter w;
        lock (_lock)
        {
            if (_count > 0)
            {
                _count--;
                return Task.CompletedTask;
            }
            w = new Waiter();
            w.Node = _waiters.AddLast(w);
        }
        if (cancellationToken.CanBeCanceled)
            w.Registration = cancellationToken.UnsafeRegister(static (s, ct) =>
            {
                var (gate, waiter) = ((AsyncGate, Waiter))s!;
                lock (gate._lock)
                {
                    if (waiter.Node is null) return; // already granted
                    gate._waiters.Remove(waiter.Node);
                    waiter.Node = null;
                }
                waiter.TrySetCanceled(ct);
            }, (this, w));
        return w.Task;
    }

    /// <summary>Takes the gate if it is free at once.</summary>
    public bool TryEnter()
    {
        lock (_lock)
        {
            if (_count == 0) return false;
            _count--;
            return true;
        }
    }

    /// <summary>Blocking wait, for shell code only (a simulated run must never block).</summary>
    public void Wait() => WaitAsync().GetAwaiter().GetResult();

    public void Release()
    {
        Waiter? next = null;
        lock (_lock)
        {
            if (_waiters.First is { } first)
            {
                next = first.Value;
                _waiters.RemoveFirst();
                next.Node = null;
            }
            else
            {
                if (_count >= _max) throw new SemaphoreFullException();
                _count++;
            }
        }
        if (next is null) return;
        next.Registration.Unregister();
        next.TrySetResult();
    }
}

/// <summary>
/// Waiting with a timeout or a cancellation in core code, in place of Task.WaitAsync and
/// Task.WhenAny: those complete through the thread pool when the awaited task was made with
/// RunContinuationsAsynchronously, which would take a simulated run off its one thread. These
/// resume on the caller's context.
/// </summary>
public static class Waits
{
    /// <summary>Waits for <paramref name="task"/>, or throws OperationCanceledException when <paramref name="ct"/> fires first.</summary>
    public static async Task OrCancel(Task task, CancellationToken ct)
    {
        if (!task.IsCompleted && ct.CanBeCanceled)
        {
            var first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using (ct.UnsafeRegister(static s => ((TaskCompletionSource)s!).TrySetResult(), first))
            {
                _ = Signal(task, first);
                await first.Task;
            }
        }
        if (!task.IsCompleted) ct.ThrowIfCancellationRequested();
        await task;
    }

    /// <summary>Waits for <paramref name="task"/> at most <paramref name="timeout"/> on <paramref name="time"/>: TimeoutException after that.</summary>
    public static async Task<T> WithTimeout<T>(Task<T> task, TimeSpan timeout, TimeProvider time, CancellationToken ct = default)
    {
        await WithTimeout((Task)task, timeout, time, ct);
        return await task;
    }

    public static async Task WithTimeout(Task task, TimeSpan timeout, TimeProvider time, CancellationToken ct = default)
    {
        if (!task.IsCompleted)
        {
            var first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using (time.CreateTimer(static s => ((TaskCompletionSource)s!).TrySetResult(), first, timeout, Timeout.InfiniteTimeSpan))
            using (ct.UnsafeRegister(static s => ((TaskCompletionSource)s!).TrySetResult(), first))
            {
                _ = Signal(task, first);
                await first.Task;
            }
        }
        if (!task.IsCompleted)
        {
            ct.ThrowIfCancellationRequested();
            throw new TimeoutException($"the operation did not complete within {timeout.TotalMilliseconds} ms");
        }
        await task;
    }

    /// <summary>Completes when either task has (never faults; look at the tasks).</summary>
    public static Task WhenAny(Task a, Task b)
    {
        if (a.IsCompleted || b.IsCompleted) return Task.CompletedTask;
        var first = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = Signal(a, first);
        _ = Signal(b, first);
        return first.Task;
    }

    /// <summary>Completes when every task has, sequentially awaited (first failure rethrown after all finished).</summary>
    public static async Task WhenAll(IEnumerable<Task> tasks)
    {
        Exception? failure = null;
        foreach (var t in tasks.ToList())
        {
            try { await t; }
            catch (Exception e) { failure ??= e; }
        }
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
    }

    static async Task Signal(Task task, TaskCompletionSource first)
    {
        try { await task; }
        catch { /* the caller looks at the task itself */ }
        first.TrySetResult();
    }
}
