using Duet.Core;

namespace Duet.Core.Tests;

public class ByteBudgetTests
{
    [Fact, Trait("Claim", "AW-2")]
    public async Task Requests_wait_in_order_for_bytes_and_a_later_small_one_never_overtakes_a_large_one()
    {
        var budget = new ByteBudget(100);
        await budget.AcquireAsync(60);
        var large = budget.AcquireAsync(80);
        var small = budget.AcquireAsync(10);
        Assert.False(large.IsCompleted);
        Assert.False(small.IsCompleted); // 40 bytes are free, but the large request is first
        Assert.Equal(2, budget.Waiting);

        budget.Release(60);
        await large;
        await small;
        Assert.Equal(90, budget.InUse);
        budget.Release(80);
        budget.Release(10);
        Assert.Equal(0, budget.InUse);
    }

    [Fact, Trait("Claim", "AW-2")]
    public async Task A_request_larger_than_the_budget_takes_all_of_it()
    {
        var budget = new ByteBudget(100);
        await budget.AcquireAsync(1000);
        Assert.Equal(100, budget.InUse);
        var next = budget.AcquireAsync(1);
        Assert.False(next.IsCompleted);
        budget.Release(1000);
        await next;
        Assert.Equal(1, budget.InUse);
    }

    [Fact, Trait("Claim", "AW-2")]
    public async Task A_cancelled_waiter_at_the_head_lets_the_next_ones_in()
    {
        var budget = new ByteBudget(100);
        await budget.AcquireAsync(50);
        using var cts = new CancellationTokenSource();
        var head = budget.AcquireAsync(90, cts.Token);
        var behind = budget.AcquireAsync(40);
        Assert.False(behind.IsCompleted);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => head);
        await behind;
        Assert.Equal(90, budget.InUse);
    }

    [Fact]
    public void Releasing_more_than_was_taken_is_an_invariant_violation()
    {
        var budget = new ByteBudget(10);
        Assert.Throws<InvariantViolationException>(() => budget.Release(1));
    }
}
