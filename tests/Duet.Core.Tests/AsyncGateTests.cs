using Duet.Core;

namespace Duet.Core.Tests;

public sealed class AsyncGateTests
{
    [Fact]
    public async Task Waiters_are_served_first_come_first_served()
    {
        var gate = new AsyncGate(1, 1);
        await gate.WaitAsync();
        var order = new List<int>();
        var waiters = Enumerable.Range(0, 3).Select(i => Enter(i)).ToList();
        Assert.All(waiters, w => Assert.False(w.IsCompleted));
        gate.Release();
        await waiters[0];
        gate.Release();
        await waiters[1];
        gate.Release();
        await waiters[2];
        Assert.Equal([0, 1, 2], order);
        gate.Release();
        Assert.Equal(1, gate.CurrentCount);
        Assert.Throws<SemaphoreFullException>(gate.Release);

        async Task Enter(int i)
        {
            await gate.WaitAsync();
            order.Add(i);
        }
    }

    [Fact]
    public async Task A_cancelled_waiter_leaves_the_queue_and_is_never_granted()
    {
        var gate = new AsyncGate(0, 1);
        using var cts = new CancellationTokenSource();
        var cancelled = gate.WaitAsync(cts.Token);
        var next = gate.WaitAsync();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancelled);
        gate.Release();
        await next; // the grant went to the waiter behind the cancelled one
        Assert.Equal(0, gate.CurrentCount);
        Assert.True(gate.WaitAsync(new CancellationToken(true)).IsCanceled);
    }

    [Fact]
    public async Task WithTimeout_throws_when_virtual_time_passes_and_returns_the_result_otherwise()
    {
        var time = new ManualTimeProvider();
        var never = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var waiting = Waits.WithTimeout(never.Task, TimeSpan.FromSeconds(2), time);
        time.Advance(TimeSpan.FromSeconds(1));
        Assert.False(waiting.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(1));
        await Assert.ThrowsAsync<TimeoutException>(() => waiting);

        var soon = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var answered = Waits.WithTimeout(soon.Task, TimeSpan.FromSeconds(2), time);
        soon.SetResult(7);
        Assert.Equal(7, await answered);
        Assert.Equal(0, time.ArmedTimerCount);
    }

    [Fact]
    public async Task OrCancel_WhenAny_and_WhenAll()
    {
        var never = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var cts = new CancellationTokenSource();
        var waiting = Waits.OrCancel(never.Task, cts.Token);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);

        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var any = Waits.WhenAny(never.Task, done.Task);
        Assert.False(any.IsCompleted);
        done.SetResult();
        await any;

        var failing = Task.FromException(new InvalidOperationException("first"));
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Waits.WhenAll([Task.CompletedTask, failing, Task.CompletedTask]));
        Assert.Equal("first", e.Message);
    }
}
