using Duet.Core;

namespace Duet.Raid.Tests;

/// <summary>The stripe write's buffer pool keeps what a destage round held at once and returned from other threads.</summary>
public class BlockBuffersTests
{
    [Fact]
    public async Task Buffers_held_at_once_and_returned_on_other_threads_are_handed_out_again()
    {
        const int held = 300; // a destage round's read-modify-writes: more than ArrayPool.Shared keeps per size and core
        var pool = BlockBuffers.Create(); // made as the shared one is, and used by this test alone
        var first = new byte[held][];
        for (int i = 0; i < held; i++) first[i] = pool.Rent(Units.BlockBytes);
        Assert.All(first, b => Assert.Equal(Units.BlockBytes, b.Length));
        Assert.Equal(held, first.Distinct().Count());

        // Returned from thread-pool threads, as the drives' completions do.
        await Task.WhenAll(Enumerable.Range(0, 4).Select(t => Task.Run(() =>
        {
            for (int i = t; i < held; i += 4) pool.Return(first[i]);
        })));

        var known = new HashSet<byte[]>(first, ReferenceEqualityComparer.Instance);
        var again = new byte[held][];
        for (int i = 0; i < held; i++) again[i] = pool.Rent(Units.BlockBytes);
        try
        {
            Assert.All(again, b => Assert.Contains(b, known)); // none allocated afresh
        }
        finally
        {
            foreach (var b in again) pool.Return(b);
        }
    }

    [Fact]
    public void A_buffer_larger_than_the_pooled_sizes_is_given_and_taken_back_without_complaint()
    {
        var big = BlockBuffers.Rent(BlockBuffers.LargestPooled * 2);
        Assert.True(big.Length >= BlockBuffers.LargestPooled * 2);
        BlockBuffers.Return(big); // not kept; no exception
    }
}
