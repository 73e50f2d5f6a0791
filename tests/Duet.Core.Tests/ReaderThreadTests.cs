using Duet.Core;

namespace Duet.Core.Tests;

/// <summary>The thread a connection's reader carries on on (NBD's request loop).</summary>
public class ReaderThreadTests
{
    static readonly AsyncLocal<string?> Flowing = new();

    [Fact]
    public async Task A_reader_that_switches_runs_on_the_thread_and_comes_back_after_a_wait_on_the_pool()
    {
        var reader = new ReaderThread("reader-test");
        try
        {
            Assert.False(reader.IsCurrent);
            var names = await Task.Run(async () =>
            {
                var seen = new List<string?>();
                await reader.SwitchTo();
                seen.Add(Thread.CurrentThread.Name);
                await reader.SwitchTo(); // already there: no move
                seen.Add(reader.IsCurrent ? "still" : "moved");
                await Task.Delay(5); // resumes on the pool
                seen.Add(reader.IsCurrent ? "reader" : "pool");
                await reader.SwitchTo();
                seen.Add(Thread.CurrentThread.Name);
                return seen;
            });
            Assert.Equal(["reader-test", "still", "pool", "reader-test"], names);
            Assert.Equal(2, reader.Switches);
        }
        finally
        {
            reader.Stop();
        }
    }

    [Fact]
    public async Task Work_runs_in_the_order_it_was_posted_and_the_execution_context_flows()
    {
        var reader = new ReaderThread("reader-order");
        try
        {
            var order = new List<int>();
            var gate = new ManualResetEventSlim();
            var tasks = new List<Task>();
            // The first holds the thread until all are queued behind it.
            tasks.Add(Task.Run(async () => { await reader.SwitchTo(); gate.Wait(); order.Add(0); }));
            for (int i = 0; i < 200 && reader.Switches < 1; i++) await Task.Delay(1);
            for (int i = 1; i <= 5; i++)
            {
                int n = i;
                tasks.Add(Task.Run(async () => { await reader.SwitchTo(); order.Add(n); }));
                for (int j = 0; j < 200 && reader.Switches < i + 1; j++) await Task.Delay(1);
            }
            Assert.Equal(6, reader.Switches);
            gate.Set();
            await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(20));
            Assert.Equal([0, 1, 2, 3, 4, 5], order);

            // OnCompleted (not the builder's UnsafeOnCompleted) carries the caller's execution context.
            Flowing.Value = "carried";
            var seen = new TaskCompletionSource<string?>();
            reader.SwitchTo().OnCompleted(() => seen.SetResult(Flowing.Value));
            Flowing.Value = null;
            Assert.Equal("carried", await seen.Task.WaitAsync(TimeSpan.FromSeconds(20)));
        }
        finally
        {
            reader.Stop();
        }
    }

    [Fact]
    public async Task After_stop_the_queue_drains_the_thread_ends_and_later_switches_run_on_the_pool()
    {
        var reader = new ReaderThread("reader-stop");
        Thread? thread = null;
        await Task.Run(async () => { await reader.SwitchTo(); thread = Thread.CurrentThread; });
        reader.Stop();
        Assert.True(thread!.Join(TimeSpan.FromSeconds(20)), "the reader's thread did not end");
        bool onReader = await Task.Run(async () => { await reader.SwitchTo(); return reader.IsCurrent || Thread.CurrentThread == thread; })
            .WaitAsync(TimeSpan.FromSeconds(20));
        Assert.False(onReader);
    }
}
