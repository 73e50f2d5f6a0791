using Duet.Core;

namespace Duet.Raid.Tests;

/// <summary>The stripe write's buffer pool keeps what a destage round held at once and returned from other threads.</summary>
public class BlockBuffersTests
{
    [Theory]
    [InlineData(300, Units.BlockBytes)] // a destage round's read-modify-writes: more than ArrayPool.Shared keeps per size and core
    [InlineData(2_000, Units.BlockBytes)] // a 512-element round of 4 KiB writes holds about this many single blocks
    [InlineData(300, 4 * Units.BlockBytes)]
    public async Task Buffers_held_at_once_and_returned_on_other_threads_are_handed_out_again(int held, int bytes)
    {
        var pool = BlockBuffers.Create(); // made as the shared one is, and used by this test alone
        var first = new byte[held][];
        for (int i = 0; i < held; i++) first[i] = pool.Rent(bytes);
        Assert.All(first, b => Assert.Equal(bytes, b.Length));
        Assert.Equal(held, first.Distinct().Count());

        // Returned from thread-pool threads, as the drives' completions do.
        await Task.WhenAll(Enumerable.Range(0, 4).Select(t => Task.Run(() =>
        {
            for (int i = t; i < held; i += 4) pool.Return(first[i]);
        })));

        var known = new HashSet<byte[]>(first, ReferenceEqualityComparer.Instance);
        var again = new byte[held][];
        for (int i = 0; i < held; i++) again[i] = pool.Rent(bytes);
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
