namespace Duet.Core;

/// <summary>
/// A pool of bytes shared by many writers, taken in FIFO order: a request waits until the bytes
/// it asks for are free, and a later, smaller request never overtakes it (so a large write is not
/// starved). A request larger than the whole budget takes the whole budget. Used for the block
/// buffer of a front end (AW-2): write data accepted from clients and not yet completed.
/// </summary>
public sealed class ByteBudget
{
    readonly Lock _lock = new();
    readonly LinkedList<Waiter> _waiters = new();
    long _free;

    sealed class Waiter(long bytes) : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        public readonly long Bytes = bytes;
        public LinkedListNode<Waiter>? Node;
        public CancellationTokenRegistration Registration;
    }

    public ByteBudget(long capacityBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacityBytes, 1);
        Capacity = capacityBytes;
        _free = capacityBytes;
    }

    public long Capacity { get; }

    public long InUse { get { lock (_lock) return Capacity - _free; } }

    /// <summary>Requests waiting for bytes (back-pressure in effect).</summary>
    public int Waiting { get { lock (_lock) return _waiters.Count; } }

    /// <summary>The bytes a request of <paramref name="bytes"/> actually holds: at most the capacity.</summary>
    public long Charge(long bytes) => Math.Clamp(bytes, 0, Capacity);

    /// <summary>Waits for <see cref="Charge"/>(<paramref name="bytes"/>) bytes; release the same
    /// request size with <see cref="Release"/>.</summary>
    public Task AcquireAsync(long bytes, CancellationToken cancellationToken = default)
    {
        long charge = Charge(bytes);
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled(cancellationToken);
        Waiter w;
        lock (_lock)
        {
            if (_waiters.Count == 0 && _free >= charge)
            {
                _free -= charge;
                return Task.CompletedTask;
            }
            w = new Waiter(charge);
            w.Node = _waiters.AddLast(w);
        }
        if (cancellationToken.CanBeCanceled)
            w.Registration = cancellationToken.Register(() => Cancel(w, cancellationToken));
        return w.Task;
    }

    public void Release(long bytes)
    {
        long charge = Charge(bytes);
        List<Waiter> granted = [];
        lock (_lock)
        {
            _free += charge;
            Invariant.Assert(_free <= Capacity, "ByteBudget: released more bytes than were taken");
            while (_waiters.First is { } first && first.Value.Bytes <= _free)
            {
                _free -= first.Value.Bytes;
                _waiters.RemoveFirst();
                first.Value.Node = null;
                granted.Add(first.Value);
            }
        }
        foreach (var w in granted)
        {
            w.Registration.Dispose();
            w.TrySetResult();
        }
    }

    void Cancel(Waiter w, CancellationToken token)
    {
        lock (_lock)
        {
            if (w.Node is null) return; // granted already: the caller owns the bytes
            _waiters.Remove(w.Node);
            w.Node = null;
        }
        w.TrySetCanceled(token);
        Release(0); // the head may have been this waiter: let the next ones in
    }
}
