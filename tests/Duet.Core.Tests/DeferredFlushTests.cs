using Duet.Core;

namespace Duet.Core.Tests;

/// <summary>The flush NBD replies and iSCSI responses queue behind the work in hand.</summary>
public class DeferredFlushTests
{
    sealed class Output
    {
        public readonly SemaphoreSlim Lock = new(1, 1);
        public int Flushes, Completes;
        public readonly List<Exception> Failures = [];
    }

    static DeferredFlush Make(Output o, Func<ValueTask>? flush = null, CancellationToken abort = default) =>
        new(o.Lock, flush ?? (() => { o.Flushes++; return ValueTask.CompletedTask; }), e => o.Failures.Add(e), e => e is IOException, abort);

    static async Task Until(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!condition() && DateTime.UtcNow < deadline) await Task.Delay(2);
        Assert.True(condition());
    }

    [Fact]
    public async Task Replies_written_before_the_queued_flush_runs_share_it()
    {
        var o = new Output();
        var f = Make(o);
        await o.Lock.WaitAsync();
        for (int i = 0; i < 12; i++) f.Request(); // a batch acknowledged in turn, under the lock
        o.Lock.Release();
        await Until(() => o.Flushes == 1);
        await Task.Delay(50);
        Assert.Equal(1, o.Flushes);

        await o.Lock.WaitAsync();
        f.Request(); // after it ran: another
        o.Lock.Release();
        await Until(() => o.Flushes == 2);
        Assert.Empty(o.Failures);
    }

    [Fact]
    public async Task Closing_flushes_and_completes_once_and_a_flush_still_queued_then_does_nothing()
    {
        var o = new Output();
        var f = Make(o);
        await o.Lock.WaitAsync();
        f.Request(); // queued; cannot run while the lock is held
        o.Lock.Release();
        await f.CloseAsync(() => { o.Completes++; return ValueTask.CompletedTask; });
        int afterClose = o.Flushes;
        Assert.InRange(afterClose, 1, 2); // the close's own flush, and the queued one if it ran first
        await Task.Delay(50);
        Assert.Equal(afterClose, o.Flushes);
        Assert.Equal(1, o.Completes);
        await o.Lock.WaitAsync();
        try { Assert.Throws<IOException>(f.Request); }
        finally { o.Lock.Release(); }
    }

    [Fact]
    public async Task A_flush_that_fails_with_a_transport_failure_is_reported_not_thrown()
    {
        var o = new Output();
        var f = Make(o, () => throw new IOException("peer gone"));
        await o.Lock.WaitAsync();
        f.Request();
        o.Lock.Release();
        await Until(() => o.Failures.Count == 1);
        Assert.IsType<IOException>(o.Failures[0]);
        await f.CloseAsync(() => ValueTask.CompletedTask); // its own failing flush is swallowed
        Assert.Single(o.Failures);
    }

    [Fact]
    public async Task An_aborted_connection_flushes_nothing_more()
    {
        var o = new Output();
        using var abort = new CancellationTokenSource();
        var f = Make(o, abort: abort.Token);
        await o.Lock.WaitAsync();
        f.Request();
        abort.Cancel(); // before the queued flush could take the lock
        o.Lock.Release();
        await f.CloseAsync(() => ValueTask.CompletedTask);
        await Task.Delay(50);
        Assert.Equal(0, o.Flushes);
    }
}
