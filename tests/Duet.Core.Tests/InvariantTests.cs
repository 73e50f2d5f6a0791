using Duet.Core;

namespace Duet.Core.Tests;

public sealed class InvariantTests
{
    sealed class Counted
    {
        public int Formatted;
        public override string ToString() { Formatted++; return "counted"; }
    }

    [Fact]
    public void An_interpolated_message_is_formatted_only_when_the_assertion_fails()
    {
        var value = new Counted();
        for (int i = 0; i < 3; i++) Invariant.Assert(i >= 0, $"i {i} is {value}");
        Assert.Equal(0, value.Formatted);

        var e = Assert.Throws<InvariantViolationException>(() => Invariant.Assert(value.Formatted > 0, $"element {7} is {value}"));
        Assert.Equal(1, value.Formatted);
        Assert.Equal("invariant violated: element 7 is counted", e.Message);
    }

    [Fact]
    public async Task A_violation_is_counted_and_told_even_when_something_swallows_it()
    {
        var told = new List<string>();
        void Listen(string m) { lock (told) told.Add(m); }
        Invariant.Violated += Listen;
        try
        {
            // On a thread of its own, so that this thread's count is this test's alone.
            var (after, first) = await Task.Factory.StartNew(() =>
            {
                Invariant.ResetThisThread();
                // A fire-and-forget task that ends on a violation: nothing observes the exception.
                _ = Task.Run(() => Invariant.Assert(1 > 2, $"the first {1}"));
                try { Invariant.Assert(false, $"the second {2}"); } catch (InvariantViolationException) { }
                return (Invariant.ViolationsOnThisThread.Count, Invariant.ViolationsOnThisThread.First);
            }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            Assert.Equal(1, after); // the task ran on another thread: counted there, not here
            Assert.Equal("invariant violated: the second 2", first);
            for (int i = 0; i < 500 && !told.Contains("invariant violated: the first 1"); i++) await Task.Delay(10);
            lock (told)
            {
                Assert.Contains("invariant violated: the first 1", told);
                Assert.Contains("invariant violated: the second 2", told);
            }
            Assert.True(Invariant.Violations >= 2);
            Assert.NotNull(Invariant.LastViolation);
        }
        finally { Invariant.Violated -= Listen; }
    }

    [Fact]
    public void A_plain_assertion_names_its_expression()
    {
        int pins = 0;
        var e = Assert.Throws<InvariantViolationException>(() => Invariant.Assert(pins > 0));
        Assert.Equal("invariant violated: pins > 0", e.Message);
    }
}
