using Duet.Cache.Nvram;

namespace Duet.Cache.Tests.Nvram;

/// <summary>NVRAM over a caller-owned store (the simulator's NVRAM): same format, and it outlives the NvramFile.</summary>
[Trait("Claim", "MR-1")]
public sealed class NvramStoreTests
{
    [Fact]
    public void Elements_written_survive_a_dropped_nvram_and_replay_in_order_from_the_same_store()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var first = NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair);
        Assert.Equal(1UL, first.Generation);
        first.Own.Write(4, Sample.Descriptor(4, 2), Sample.Sectors(32, 1));
        first.Own.Write(1, Sample.Descriptor(1, 1), Sample.Sectors(32, 2));
        first.Own.Write(7, Sample.Descriptor(7, 3, mask: 0b1011, blockCount: 4), Sample.Sectors(4, 3));
        first.Peer.Write(0, Sample.Descriptor(0, 9), Sample.Sectors(32, 4));
        first.Epoch = 5;
        // A crash: the object is dropped, neither flushed nor disposed.

        var again = NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair);
        Assert.Equal(2UL, again.Generation);
        Assert.Equal(5UL, again.Epoch);
        Assert.Equal([1, 4, 7], again.Own.ReplayOrder().Select(x => x.Element));
        Assert.Equal(Sample.Descriptor(7, 3, mask: 0b1011, blockCount: 4), again.Own.Read(7));
        Assert.True(Sample.ValidSectorsEqual(again.Own.Data(4), Sample.Sectors(32, 1), uint.MaxValue));
        Assert.Equal([0], again.Peer.ReplayOrder().Select(x => x.Element));

        // The one it superseded cannot scribble on the store any more.
        Assert.Throws<ObjectDisposedException>(() => first.Own.Write(2, Sample.Descriptor(2, 4), Sample.Sectors(32, 5)));
        Assert.Equal(ElementState.Empty, again.Own.StateOf(2));
    }

    [Fact]
    public void Dispose_leaves_the_store_alone()
    {
        var store = NvramStore.For(Sample.Small);
        using (var nvram = NvramFile.OpenOrCreate(store, Sample.Small, "B", Sample.Pair))
            nvram.Own.Write(3, Sample.Descriptor(3, 1), Sample.Sectors(32, 1));
        using var reopened = NvramFile.OpenOrCreate(store, Sample.Small, "B", Sample.Pair);
        Assert.Equal([3], reopened.Own.ReplayOrder().Select(x => x.Element));
    }

    [Fact]
    public void A_store_is_checked_like_a_file_owner_pair_and_header()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair).Dispose();
        Assert.Contains("belongs to controller 'A', not 'B'",
            Assert.Throws<NvramException>(() => NvramFile.OpenOrCreate(store, Sample.Small, "B", Sample.Pair)).Message);
        Assert.Contains("belongs to pair",
            Assert.Throws<NvramException>(() => NvramFile.OpenOrCreate(store, Sample.Small, "A", Guid.Empty)).Message);

        store.Span[..NvramLayout.HeaderBytes].Fill(0x5A); // both header copies damaged
        Assert.Contains("NVRAM nvram-A:", Assert.Throws<NvramException>(() => NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair)).Message);

        var small = new NvramStore(Sample.Small.TotalBytes / 2);
        Assert.Contains("the store is", Assert.Throws<NvramException>(() => NvramFile.OpenOrCreate(small, Sample.Small, "A", Sample.Pair)).Message);
    }
}
