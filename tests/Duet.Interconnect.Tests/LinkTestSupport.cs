using Duet.Interconnect.Link;

namespace Duet.Interconnect.Tests;

/// <summary>A transfer copied out of the handler (the original is valid only during the call).</summary>
public sealed record Received(IclSignal Signal, ulong Epoch, byte[] Message, byte[] Data);

/// <summary>A handler that records what it is given and can be held (to block the receiver).</summary>
public sealed class Recorder
{
    readonly Lock _lock = new();
    readonly List<Received> _items = [];
    TaskCompletionSource _gate = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly List<(int Count, TaskCompletionSource Done)> _waiters = [];

    public Recorder(bool blocked = false)
    {
        if (!blocked) _gate.TrySetResult();
    }

    public Func<Received, ValueTask>? OnReceived { get; set; }

    public List<Received> Items { get { lock (_lock) return [.. _items]; } }

    public int Count { get { lock (_lock) return _items.Count; } }

    public void Release() => _gate.TrySetResult();

    public async ValueTask Handle(IclTransfer t)
    {
        await _gate.Task;
        var r = new Received(t.Signal, t.Epoch, t.Message.ToArray(), t.Data.ToArray());
        if (OnReceived is { } on) await on(r);
        lock (_lock)
        {
            _items.Add(r);
            foreach (var w in _waiters)
                if (_items.Count >= w.Count) w.Done.TrySetResult();
        }
    }

    /// <summary>Completes once <paramref name="count"/> transfers have been handled (real-time bound, never hangs a test).</summary>
    public Task WaitForAsync(int count, int seconds = 20)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            if (_items.Count >= count) return Task.CompletedTask;
            _waiters.Add((count, done));
        }
        return done.Task.WaitAsync(TimeSpan.FromSeconds(seconds));
    }
}

public static class LinkTestUtil
{
    /// <summary>Real-time poll for test conditions that have no event (TCP/shm tests only).</summary>
    public static async Task Until(Func<bool> condition, int seconds = 10)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("condition not met in time");
            await Task.Delay(5);
        }
    }

    public static byte[] Bytes(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }
}
