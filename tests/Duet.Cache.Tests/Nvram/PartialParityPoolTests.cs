using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Cache.Tests.Nvram;

/// <summary>The partial-parity pool beside the AW-4 write log: entries live and die with their record, outlive a
/// crash with it, and a full pool refuses (counted as unguarded) instead of waiting.</summary>
[Trait("Claim", "AW-4")]
public sealed class PartialParityPoolTests
{
    static byte[] Sum(byte seed)
    {
        var b = new byte[Units.BlockBytes];
        new System.Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public void The_partial_parity_of_a_record_open_at_a_crash_comes_back_with_it_and_a_closed_records_is_gone()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var log = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Equal(32, log.PartialParityCapacity);
        Assert.True(log.TryOpen(1, 100, 2, out int open, out _));
        Assert.True(log.TryOpen(1, 300, 1, out int closed, out _));
        Assert.True(log.StorePartialParity(open, 8, 1, 0b110, Sum(1)));
        Assert.True(log.StorePartialParity(open, 8, 2, 0b100, Sum(2)));
        Assert.True(log.StorePartialParity(closed, 25, 0, 0b011, Sum(3)));
        Assert.Equal(29, log.PartialParityFree);
        log.Written(open);
        log.Written(closed);
        var taken = log.TakeWritten(1);
        log.FlushFailed(taken);
        Assert.Equal([closed], log.TakeWritten(1).Where(s => s == closed));
        log.Close([closed]);
        Assert.Equal(30, log.PartialParityFree); // closed with its record
        // Crash.

        var again = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        var (slot, _) = Assert.Single(again.Recovered);
        Assert.Equal(open, slot);
        var pp = again.RecoveredPartialParity(slot).OrderBy(x => x.Meta.Row).ToList();
        Assert.Equal(2, pp.Count);
        Assert.Equal((1, 8L, 1, 0b110UL), (pp[0].Meta.Array, pp[0].Meta.Stripe, pp[0].Meta.Row, pp[0].Meta.Unchanged));
        Assert.Equal(Sum(1), pp[0].Sum);
        Assert.Equal((2, 0b100UL), (pp[1].Meta.Row, pp[1].Meta.Unchanged));
        Assert.Equal(Sum(2), pp[1].Sum);
        Assert.Equal(30, again.PartialParityFree);
        again.Retire(slot);
        Assert.Equal(32, again.PartialParityFree);
    }

    [Fact]
    public void An_entry_whose_block_or_descriptor_was_cut_reads_as_free_and_so_does_one_without_its_record()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var nvram = NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair);
        var log = new WriteLog(nvram);
        Assert.True(log.TryOpen(1, 0, 1, out int s, out _));
        for (byte i = 0; i < 3; i++) Assert.True(log.StorePartialParity(s, 0, i, 0b10, Sum(i)));
        // Which pool entries hold rows 0..2: the descriptors say.
        int EntryOf(int row) => Enumerable.Range(0, nvram.Layout.PpSlots)
            .First(e => PartialParityEntry.Decode(nvram.PpDescriptor(e), nvram.PpBlock(e)) is { } m && m.Row == row);
        nvram.PpBlock(EntryOf(0))[7] ^= 1;        // the block changed after its descriptor (a cut mid-store of a reused entry)
        nvram.PpDescriptor(EntryOf(1))[20] ^= 1;  // a descriptor cut half-way
        // Crash.
        var again = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        var only = Assert.Single(again.RecoveredPartialParity(s));
        Assert.Equal(2, only.Meta.Row);
        Assert.Equal(31, again.PartialParityFree);
        // Its record cleared at the cut (between the record and the pool): the entry is freed at the next start.
        again.Retire(s);
        var third = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Empty(third.Recovered);
        Assert.Equal(32, third.PartialParityFree);
    }

    [Fact]
    public void A_write_is_promised_what_is_not_promised_to_others_and_a_row_beyond_its_promise_takes_what_is_left_or_is_unguarded()
    {
        var log = new WriteLog(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "A", Sample.Pair));
        Assert.Equal(32, log.PartialParityCapacity);
        Assert.True(log.TryOpen(1, 0, 64, out int a, out _, partialSums: 20));
        Assert.True(log.TryOpen(1, 64, 64, out int b, out _, partialSums: 10));
        Assert.True(log.TryOpen(1, 128, 1, out int c, out _, partialSums: 3)); // never waits: promised the 2 left
        Assert.Equal(32, log.PartialParityReserved);
        for (int r = 0; r < 20; r++) Assert.True(log.StorePartialParity(a, 0, r, 1, Sum((byte)r)));
        Assert.False(log.StorePartialParity(a, 1, 0, 1, Sum(99)));   // beyond A's promise, and the rest is promised
        Assert.Equal(1L, log.PartialParityUnguarded);
        log.Written(b);                                               // B stored nothing: its promise goes back
        Assert.Equal(2, log.PartialParityReserved);
        Assert.True(log.StorePartialParity(a, 1, 0, 1, Sum(99)));    // now unpromised entries are free
        for (int r = 0; r < 3; r++) log.StorePartialParity(c, 2, r, 1, Sum(7)); // two promised, the third from what is left
        log.Written(a);
        log.Written(c);
        Assert.Equal(0, log.PartialParityReserved);
        Assert.Equal(8, log.PartialParityFree);
        log.Close(log.TakeWritten(1));
        Assert.Equal(32, log.PartialParityFree);
        Assert.Equal((24L, 1L), (log.PartialParityStored, log.PartialParityUnguarded));
    }

    [Fact]
    public void A_newer_write_of_a_row_frees_the_sums_older_records_hold_for_it_and_keeps_its_own()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var log = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.True(log.TryOpen(1, 0, 8, out int older, out _, partialSums: 4));
        Assert.True(log.StorePartialParity(older, 3, 0, 0b10, Sum(1)));
        Assert.True(log.StorePartialParity(older, 3, 1, 0b10, Sum(2)));
        Assert.True(log.TryOpen(2, 0, 8, out int other, out _, partialSums: 1));
        Assert.True(log.StorePartialParity(other, 3, 0, 0b10, Sum(3)));   // another array's row 0 of stripe 3
        log.Written(older);
        Assert.True(log.TryOpen(1, 0, 1, out int newer, out _, partialSums: 1));
        log.SupersedePartialParity(newer, 3, 0);
        Assert.True(log.StorePartialParity(newer, 3, 0, 0b10, Sum(4)));
        log.SupersedePartialParity(newer, 3, 0);                          // its own sum stays
        // Crash: the older record's row 1 and the newer record's row 0 are what is left of array 1; array 2's stays.
        var again = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Equal([1], again.RecoveredPartialParity(older).Select(x => x.Meta.Row));
        Assert.Equal(Sum(4), Assert.Single(again.RecoveredPartialParity(newer)).Sum);
        Assert.Equal(Sum(3), Assert.Single(again.RecoveredPartialParity(other)).Sum);
    }
}
