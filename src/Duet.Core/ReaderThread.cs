using System.Runtime.CompilerServices;

namespace Duet.Core;

/// <summary>
/// A connection reader's own thread: it runs, in order, what is posted to it. A reader awaits
/// <see cref="SwitchTo"/> to carry on here; from then on it runs here up to its first wait that does not
/// complete at once, and after such a wait (it resumed on the thread pool) it awaits SwitchTo again before
/// its next read. Reads on this thread sleep in the socket (<see cref="ThreadReceiveStream"/>), so a request
/// that arrives wakes the thread that decodes it. <see cref="Stop"/> lets the thread end once what is queued
/// has run; anything posted after that runs on the thread pool.
/// </summary>
public sealed class ReaderThread
{
    readonly object _lock = new(); // Monitor: Wait and Pulse
    readonly Queue<Action> _queue = new();
    readonly Thread _thread;
    bool _stopped;
    long _switches;

    public ReaderThread(string name)
    {
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>True on this reader's thread.</summary>
    public bool IsCurrent => ReferenceEquals(Thread.CurrentThread, _thread);

    /// <summary>Times a reader moved onto this thread (the first time included).</summary>
    public long Switches => Interlocked.Read(ref _switches);

    /// <summary>Carries on on this thread (at once when already on it).</summary>
    public SwitchAwaitable SwitchTo() => new(this);

    /// <summary>No more work after what is queued: the thread ends; later posts run on the thread pool.</summary>
    public void Stop()
    {
        lock (_lock)
        {
            _stopped = true;
            Monitor.PulseAll(_lock);
        }
    }

    void Post(Action continuation)
    {
        Interlocked.Increment(ref _switches);
        lock (_lock)
        {
            if (!_stopped)
            {
                _queue.Enqueue(continuation);
                Monitor.Pulse(_lock);
                return;
            }
        }
        ThreadPool.UnsafeQueueUserWorkItem(static c => c(), continuation, preferLocal: false);
    }

    void Run()
    {
        while (true)
        {
            Action next;
            lock (_lock)
            {
                while (_queue.Count == 0 && !_stopped) Monitor.Wait(_lock);
                if (!_queue.TryDequeue(out next!)) return;
            }
            next(); // an async method's continuation: its exceptions go to its task
        }
    }

    public readonly struct SwitchAwaitable(ReaderThread thread) : ICriticalNotifyCompletion
    {
        public SwitchAwaitable GetAwaiter() => this;
        public bool IsCompleted => thread.IsCurrent;
        public void GetResult() { }
        public void OnCompleted(Action continuation)
        {
            if (ExecutionContext.Capture() is not { } context) thread.Post(continuation);
            else thread.Post(() => ExecutionContext.Run(context, static c => ((Action)c!)(), continuation));
        }

        public void UnsafeOnCompleted(Action continuation) => thread.Post(continuation);
    }
}
