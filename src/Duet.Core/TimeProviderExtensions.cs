namespace Duet.Core;

/// <summary>
/// Waiting on an injected clock. Core code calls <c>time.DelayAsync(...)</c> instead of the
/// framework's delay on the system clock, so that under <see cref="ManualTimeProvider"/> a
/// delay ends exactly when a test or the simulator advances virtual time past it, and never
/// on its own.
/// </summary>
public static class TimeProviderExtensions
{
    /// <summary>
    /// A task that completes once <paramref name="delay"/> has passed on <paramref name="timeProvider"/>,
    /// or is cancelled by <paramref name="cancellationToken"/>. Continuations never run inline on
    /// the timer's thread (or inside <see cref="ManualTimeProvider.Advance"/>). A zero delay
    /// completes at once; <see cref="Timeout.InfiniteTimeSpan"/> waits for cancellation only.
    /// </summary>
    public static Task DelayAsync(this TimeProvider timeProvider, TimeSpan delay, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(timeProvider);
        if (delay < TimeSpan.Zero && delay != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(delay), delay, "must be non-negative or Timeout.InfiniteTimeSpan");
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled(cancellationToken);
        if (delay == TimeSpan.Zero) return Task.CompletedTask;

        var pending = new PendingDelay(cancellationToken);
        var timer = timeProvider.CreateTimer(static s => ((PendingDelay)s!).Elapse(), pending, delay, Timeout.InfiniteTimeSpan);
        pending.Attach(timer);
        if (cancellationToken.CanBeCanceled)
            pending.Attach(cancellationToken.UnsafeRegister(static s => ((PendingDelay)s!).Cancel(), pending));
        return pending.Task;
    }

    /// <summary>
    /// One delay in flight. The timer may fire (on a real clock) or the token may be cancelled
    /// before Attach runs, so whichever of completion and Attach comes second releases the timer
    /// and the registration.
    /// </summary>
    sealed class PendingDelay(CancellationToken cancellationToken)
        : TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    {
        readonly Lock _lock = new();
        ITimer? _timer;
        CancellationTokenRegistration _registration;
        bool _done;

        public void Attach(ITimer timer)
        {
            lock (_lock)
            {
                _timer = timer;
                if (!_done) return;
            }
            timer.Dispose();
        }

        public void Attach(CancellationTokenRegistration registration)
        {
            lock (_lock)
            {
                _registration = registration;
                if (!_done) return;
            }
            registration.Unregister();
        }

        public void Elapse()
        {
            if (TrySetResult()) Release();
        }

        public void Cancel()
        {
            if (TrySetCanceled(cancellationToken)) Release();
        }

        void Release()
        {
            ITimer? timer;
            CancellationTokenRegistration registration;
            lock (_lock)
            {
                _done = true;
                timer = _timer;
                registration = _registration;
            }
            timer?.Dispose();
            registration.Unregister(); // never blocks, unlike Dispose, so safe inside the callback itself
        }
    }
}
