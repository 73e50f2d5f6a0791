using Duet.Cache.Nvram;
using Duet.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Cache.Tests.Cache;

/// <summary>
/// After a restart (a power cut), NVRAM may hold elements of arrays the controller does not serve:
/// clean left-overs of a move or delete the cut interrupted (dropped at replay), and dirty elements
/// of an array not assembled yet (parked until it arrives: never destaged elsewhere, never lost).
/// </summary>
public sealed class ReplayParkingTests
{
    static async Task<WriteBackCache> RestartWithoutArrayAsync(CacheHarness h)
    {
        await h.Cache.DisposeAsync();
        var path = h.Owner.Path;
        h.Owner.Dispose();
        h.Owner = NvramFile.Open(path);
        var cache = new WriteBackCache(h.Owner.Own, h.Mirror, h.Options, NullLogger.Instance);
        h.Cache = cache;
        return cache;
    }

    [Fact]
    [Trait("Claim", "AW-6")]
    public async Task Dirty_elements_of_an_array_not_assembled_are_parked_until_it_arrives()
    {
        await using var h = new CacheHarness();
        for (int i = 0; i < 10; i++) await h.WriteAsync(i * 64, 16);
        long writesBefore = h.Backing.Writes;
        var cache = await RestartWithoutArrayAsync(h);
        Assert.Equal(10, cache.Replay());
        cache.Start();
        // Nothing can destage them, and a drain (error-recovery mode, a move of another array) does not wait for them.
        await cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(10, cache.DirtyCount);
        Assert.Equal(writesBefore, h.Backing.Writes);
        // The array arrives: they are destaged, as recovery writes (the cut may have torn their rows).
        cache.AddArray(h.Backing);
        await cache.DrainAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, cache.DirtyCount);
        Assert.True(h.Backing.WriteLog.Skip((int)writesBefore).All(w => w.Recovery));
        Assert.Equal(h.Model, h.Backing.Bytes);
    }

    [Fact]
    [Trait("Claim", "AW-6")]
    public async Task A_replay_drops_the_elements_it_is_told_to_and_forgets_them_in_nvram()
    {
        await using var h = new CacheHarness();
        for (int i = 0; i < 6; i++) await h.WriteAsync(i * 64, 16);
        await h.Cache.DrainAsync();          // clean now
        await h.WriteAsync(1000, 8);         // one dirty
        var cache = await RestartWithoutArrayAsync(h);
        Assert.Equal(1, cache.Replay(keep: d => d.Dirty, out int dropped));
        Assert.Equal(6, dropped);
        // Dropped in NVRAM too: the next replay finds only the dirty one.
        cache = await RestartWithoutArrayAsync(h);
        Assert.Equal(1, cache.Replay());
        cache.AddArray(h.Backing);
        cache.Start();
        await h.VerifyAsync();
    }
}
