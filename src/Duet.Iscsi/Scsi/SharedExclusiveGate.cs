namespace Duet.Iscsi.Scsi;

/// <summary>
/// A small async reader/writer gate: plain writes enter shared (no waiting, no allocation while
/// no exclusive holder is in or waiting); COMPARE AND WRITE enters exclusive, so no other write
/// lands between its compare and its write. An exclusive waiter stops new shared entries
/// (no starvation). A cancelled waiter that was granted at the same moment gives the grant back.
/// </summary>
sealed class SharedExclusiveGate
{
    readonly Lock _lock = new();
    readonly Queue<TaskCompletionSource> _exclusiveWaiters = new();
    readonly Queue<TaskCompletionSource> _sharedWaiters = new();
    int _shared;
    bool _exclusive;

    public ValueTask EnterSharedAsync(CancellationToken ct)
    {
        TaskCompletionSource tcs;
        lock (_lock)
        {
            if (!_exclusive && _exclusiveWaiters.Count == 0)
            {
                _shared++;
                return ValueTask.CompletedTask;
            }
            tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _sharedWaiters.Enqueue(tcs);
        }
        return WaitAsync(tcs, ct);
    }

    public ValueTask EnterExclusiveAsync(CancellationToken ct)
    {
        TaskCompletionSource tcs;
        lock (_lock)
        {
            if (!_exclusive && _shared == 0 && _exclusiveWaiters.Count == 0)
            {
                _exclusive = true;
                return ValueTask.CompletedTask;
            }
            tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _exclusiveWaiters.Enqueue(tcs);
        }
        return WaitAsync(tcs, ct);
    }

    static async ValueTask WaitAsync(TaskCompletionSource tcs, CancellationToken ct)
    {
        using (ct.UnsafeRegister(static s => ((TaskCompletionSource)s!).TrySetCanceled(), tcs))
            await tcs.Task.ConfigureAwait(false);
    }

    public void ExitShared()
    {
        List<(TaskCompletionSource, bool)>? wake = null;
        lock (_lock)
        {
            Duet.Core.Invariant.Assert(_shared > 0);
            _shared--;
            if (_shared == 0) wake = GrantLocked();
        }
        Wake(wake);
    }

    public void ExitExclusive()
    {
        List<(TaskCompletionSource, bool)>? wake;
        lock (_lock)
        {
            Duet.Core.Invariant.Assert(_exclusive);
            _exclusive = false;
            wake = GrantLocked();
        }
        Wake(wake);
    }

    List<(TaskCompletionSource, bool Shared)>? GrantLocked()
    {
        while (_exclusiveWaiters.TryPeek(out var e) && e.Task.IsCompleted) _exclusiveWaiters.Dequeue();
        if (_exclusiveWaiters.Count > 0)
        {
            if (_shared > 0) return null;
            _exclusive = true;
            return [(_exclusiveWaiters.Dequeue(), false)];
        }
        List<(TaskCompletionSource, bool)>? wake = null;
        while (_sharedWaiters.TryDequeue(out var s))
        {
            if (s.Task.IsCompleted) continue;
            _shared++;
            (wake ??= []).Add((s, true));
        }
        return wake;
    }

    void Wake(List<(TaskCompletionSource Waiter, bool Shared)>? wake)
    {
        if (wake is null) return;
        foreach (var (waiter, shared) in wake)
        {
            if (waiter.TrySetResult()) continue;
            // Cancelled between the grant and now: give the grant back.
            if (shared) ExitShared();
            else ExitExclusive();
        }
    }
}
