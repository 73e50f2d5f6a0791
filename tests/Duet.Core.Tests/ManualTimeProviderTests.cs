namespace Duet.Core.Tests;

[Trait("Area", "Core")]
public class ManualTimeProviderTests
{
    static readonly TimeSpan Ms = TimeSpan.FromMilliseconds(1);

    [Fact]
    public void TimeStandsStillUntilAdvanced()
    {
        var time = new ManualTimeProvider();
        var start = time.GetUtcNow();
        long t0 = time.GetTimestamp();
        Assert.Equal(ManualTimeProvider.DefaultStart, start);
        Assert.Equal(start, time.GetUtcNow());
        time.Advance(TimeSpan.FromSeconds(3));
        Assert.Equal(start + TimeSpan.FromSeconds(3), time.GetUtcNow());
        Assert.Equal(TimeSpan.FromSeconds(3), time.GetElapsedTime(t0));
        time.AdvanceTo(start + TimeSpan.FromSeconds(10));
        Assert.Equal(TimeSpan.FromSeconds(10), time.GetElapsedTime(t0));
        Assert.Throws<ArgumentOutOfRangeException>(() => time.AdvanceTo(start));
        Assert.Throws<ArgumentOutOfRangeException>(() => time.Advance(-Ms));
    }

    [Fact]
    public void TimersFireInDueOrderThenCreationOrderOnlyWhenTimePassesTheirDueTime()
    {
        var time = new ManualTimeProvider();
        var start = time.GetUtcNow();
        var fired = new List<(string Name, TimeSpan At)>();
        void Make(string name, int dueMs) =>
            time.CreateTimer(_ => fired.Add((name, time.GetUtcNow() - start)), null, dueMs * Ms, Timeout.InfiniteTimeSpan);
        Make("c30", 30);
        Make("a10", 10);
        Make("b20-first", 20);
        Make("b20-second", 20);
        Make("d40", 40);

        time.Advance(9 * Ms);
        Assert.Empty(fired);
        time.Advance(1 * Ms); // exactly at the due time: fires
        Assert.Equal([("a10", 10 * Ms)], fired);
        time.Advance(25 * Ms);
        Assert.Equal([("a10", 10 * Ms), ("b20-first", 20 * Ms), ("b20-second", 20 * Ms), ("c30", 30 * Ms)], fired);
        Assert.Equal(35 * Ms, time.GetUtcNow() - start);
        Assert.Equal(1, time.ArmedTimerCount);
        Assert.Equal(start + 40 * Ms, time.NextDueUtc);
        time.Advance(100 * Ms);
        Assert.Equal(5, fired.Count);
        Assert.Equal(0, time.ArmedTimerCount);
        Assert.Null(time.NextDueUtc);
    }

    [Fact]
    public void PeriodicTimerReArmsAndFiresEachPeriodWithinOneAdvance()
    {
        var time = new ManualTimeProvider();
        var start = time.GetUtcNow();
        var ticks = new List<TimeSpan>();
        using var timer = time.CreateTimer(_ => ticks.Add(time.GetUtcNow() - start), null, 5 * Ms, 10 * Ms);
        time.Advance(36 * Ms);
        Assert.Equal([5 * Ms, 15 * Ms, 25 * Ms, 35 * Ms], ticks);
        Assert.Equal(36 * Ms, time.GetUtcNow() - start);
        time.Advance(9 * Ms);
        Assert.Equal(5, ticks.Count);
    }

    [Fact]
    public void ChangeReschedulesAndDisposeStops()
    {
        var time = new ManualTimeProvider();
        int a = 0, b = 0;
        var ta = time.CreateTimer(_ => a++, null, 10 * Ms, Timeout.InfiniteTimeSpan);
        var tb = time.CreateTimer(_ => b++, null, 10 * Ms, 10 * Ms);
        Assert.True(ta.Change(50 * Ms, Timeout.InfiniteTimeSpan));
        time.Advance(20 * Ms);
        Assert.Equal(0, a);
        Assert.Equal(2, b);
        tb.Dispose();
        Assert.False(tb.Change(1 * Ms, 1 * Ms));
        time.Advance(30 * Ms);
        Assert.Equal(1, a);
        Assert.Equal(2, b);
        Assert.True(ta.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan)); // disarmed, not disposed
        Assert.True(ta.Change(5 * Ms, Timeout.InfiniteTimeSpan));
        time.Advance(5 * Ms);
        Assert.Equal(2, a);
    }

    [Fact]
    public void InfiniteDueTimeNeverFiresAndZeroDueFiresOnNextAdvanceNotOnCreate()
    {
        var time = new ManualTimeProvider();
        int never = 0, zero = 0;
        time.CreateTimer(_ => never++, null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        time.CreateTimer(_ => zero++, null, TimeSpan.Zero, Timeout.InfiniteTimeSpan);
        Assert.Equal(0, zero);
        time.Advance(TimeSpan.Zero);
        Assert.Equal(1, zero);
        time.Advance(TimeSpan.FromDays(365));
        Assert.Equal(0, never);
    }

    [Fact]
    public void CallbackMayArmAnotherTimerThatFiresInTheSameAdvance()
    {
        var time = new ManualTimeProvider();
        var start = time.GetUtcNow();
        var log = new List<string>();
        time.CreateTimer(_ =>
        {
            log.Add("first");
            time.CreateTimer(_ => log.Add($"second@{(time.GetUtcNow() - start).TotalMilliseconds}"), null, 5 * Ms, Timeout.InfiniteTimeSpan);
        }, null, 10 * Ms, Timeout.InfiniteTimeSpan);
        time.Advance(20 * Ms);
        Assert.Equal(["first", "second@15"], log);
    }

    [Fact]
    public void AdvanceFromInsideACallbackIsRejected()
    {
        var time = new ManualTimeProvider();
        time.CreateTimer(_ => time.Advance(Ms), null, Ms, Timeout.InfiniteTimeSpan);
        Assert.Throws<InvalidOperationException>(() => time.Advance(2 * Ms));
        time.Advance(Ms); // the provider is usable afterwards
    }

    [Fact]
    public async Task DelayAsyncCompletesOnlyWhenVirtualTimePassesIt()
    {
        var time = new ManualTimeProvider();
        var delay = time.DelayAsync(100 * Ms);
        Assert.False(delay.IsCompleted);
        Assert.Equal(1, time.ArmedTimerCount);
        time.Advance(99 * Ms);
        Assert.False(delay.IsCompleted);
        time.Advance(1 * Ms);
        await delay; // completed by the timer; continuations run off the Advance thread
        Assert.True(delay.IsCompletedSuccessfully);
        Assert.Equal(0, time.ArmedTimerCount);
    }

    [Fact]
    public async Task DelayAsyncCancellationCancelsTheTaskAndReleasesTheTimer()
    {
        var time = new ManualTimeProvider();
        using var cts = new CancellationTokenSource();
        var delay = time.DelayAsync(TimeSpan.FromSeconds(1), cts.Token);
        Assert.Equal(1, time.ArmedTimerCount);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => delay);
        Assert.True(delay.IsCanceled);
        Assert.Equal(0, time.ArmedTimerCount);

        Assert.True(time.DelayAsync(Ms, cts.Token).IsCanceled); // already cancelled: no timer at all
        Assert.Equal(0, time.ArmedTimerCount);
    }

    [Fact]
    public void DelayAsyncOfZeroIsAlreadyCompleteAndNegativeIsRejected()
    {
        var time = new ManualTimeProvider();
        Assert.True(time.DelayAsync(TimeSpan.Zero).IsCompletedSuccessfully);
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = time.DelayAsync(-2 * Ms); }); // synchronously; (-1 ms is InfiniteTimeSpan)
        var forever = time.DelayAsync(Timeout.InfiniteTimeSpan);
        time.Advance(TimeSpan.FromDays(1000));
        Assert.False(forever.IsCompleted);
    }

    [Fact]
    public async Task DelayAsyncWorksOnTheSystemClock()
    {
        // A real (tiny) delay: checks the race-tolerant plumbing against real timer threads.
        await TimeProvider.System.DelayAsync(TimeSpan.FromMilliseconds(1)).WaitAsync(TimeSpan.FromSeconds(30));
    }
}
