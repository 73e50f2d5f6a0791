using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Cache.Tests.Nvram;

/// <summary>The partial-parity pool beside the AW-4 write log: entries live and die with their record, outlive a
/// crash with it, and a write waits for the room its sums need (a sum past that is refused and counted unguarded).</summary>
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
    public async Task A_write_waits_until_the_pool_can_promise_its_sums_and_is_promised_what_others_are_not()
    {
        var log = new WriteLog(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "A", Sample.Pair));
        Assert.Equal(32, log.PartialParityCapacity);
        Assert.True(log.TryOpen(1, 0, 64, out int a, out _, partialSums: 20, out _));
        Assert.True(log.TryOpen(1, 64, 64, out int b, out _, partialSums: 10, out _));
        Assert.Equal(30, log.PartialParityReserved);
        // Two entries left and three asked for: the record does not open (a sum refused later could leave a torn
        // row with nothing to rebuild a lost member's block from); the write waits for room.
        Assert.False(log.TryOpen(1, 128, 1, out _, out _, partialSums: 3, out bool poolShort));
        Assert.True(poolShort);
        var room = log.PoolRoomAsync(3);
        Assert.False(room.IsCompleted);
        for (int r = 0; r < 20; r++) Assert.True(log.StorePartialParity(a, 0, r, 1, Sum((byte)r)));
        Assert.True(log.StorePartialParity(a, 1, 0, 1, Sum(99)));    // beyond A's promise: one of the two unpromised
        Assert.False(room.IsCompleted);
        log.Written(b);                                               // B stored nothing: its promise goes back
        await room;
        Assert.True(log.TryOpen(1, 128, 1, out int c, out _, partialSums: 3, out _));
        Assert.Equal(3, log.PartialParityReserved);
        Assert.Equal(1L, log.PoolWaits);
        log.Written(a);
        log.Written(c);
        Assert.Equal(0, log.PartialParityReserved);
        log.Close(log.TakeWritten(1));
        Assert.Equal(32, log.PartialParityFree);
        Assert.Equal((21L, 0L), (log.PartialParityStored, log.PartialParityUnguarded));

        // A write that asks for more than half the pool waits only for half of it, and is promised all that is free.
        Assert.True(log.TryOpen(1, 0, 64, out int big, out _, partialSums: 40, out _));
        Assert.Equal(32, log.PartialParityReserved);
        Assert.False(log.TryOpen(1, 64, 1, out _, out _, partialSums: 1, out poolShort));
        Assert.True(poolShort);
        for (int r = 0; r < 32; r++) Assert.True(log.StorePartialParity(big, 0, r, 1, Sum(1)));
        Assert.False(log.StorePartialParity(big, 1, 0, 1, Sum(1)));  // past the whole pool: unguarded
        Assert.Equal(1L, log.PartialParityUnguarded);
    }

    [Fact]
    public void A_stripe_claims_room_for_its_sums_before_it_stores_them_and_the_sums_of_stripes_written_and_flushed_go_early()
    {
        var log = new WriteLog(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "A", Sample.Pair));
        Assert.Equal(32, log.PartialParityCapacity);
        Assert.True(log.TryOpen(1, 0, 64, out int a, out _, partialSums: 16, out _));
        Assert.True(log.TryOpen(2, 0, 64, out int b, out _, partialSums: 16, out _));
        Assert.Equal(32, log.PartialParityReserved);

        // A claim takes its record's promise first; past it, what others were promised but have not claimed (B may
        // be waiting for a stripe lock A's waiting stripe holds): only claims are kept apart.
        Assert.True(log.TryClaimPartialSums(a, 20, out _, out bool never));
        Assert.False(never);
        for (int r = 0; r < 16; r++) Assert.True(log.StorePartialParity(a, 0, r, 1, Sum((byte)r)));
        for (int r = 0; r < 4; r++) Assert.True(log.StorePartialParity(a, 1, r, 1, Sum((byte)r)));
        Assert.Equal(12, log.PartialParityFree);
        // B's promise is worth 12 entries now; a claim of 13 waits.
        Assert.False(log.TryClaimPartialSums(b, 13, out var room, out never));
        Assert.False(never);
        Assert.NotNull(room);
        Assert.False(room!.IsCompleted);
        Assert.Equal(1L, log.ClaimWaits);
        // An unclaimed store does not take what a claim set aside.
        Assert.True(log.TryClaimPartialSums(b, 12, out _, out _));
        Assert.False(log.StorePartialParity(a, 2, 0, 1, Sum(7)));
        Assert.Equal(1L, log.PartialParityUnguarded);
        for (int r = 0; r < 12; r++) Assert.True(log.StorePartialParity(b, 0, r, 1, Sum((byte)r)));

        // A's stripe 0 is written: once the array is flushed, its 16 sums go (its record stays open, with stripe 1's).
        log.StripeWritten(a, 0);
        Assert.True(room.IsCompleted);
        var written = log.TakeStripesWritten();
        Assert.Equal([(a, 1UL, (byte)1, 0L)], written.Select(x => (x.Slot, x.Sequence, x.Array, x.Stripe)));
        log.ReleaseStripeSums(written);
        Assert.Equal(16L, log.StripeSumsReleased);
        Assert.Equal(16, log.PartialParityFree); // A's 4 of stripe 1 and B's 12 stay
        Assert.True(log.TryClaimPartialSums(b, 13, out _, out _));

        // A need larger than the whole pool is never met: the stripe goes on, a refused sum counted unguarded.
        Assert.False(log.TryClaimPartialSums(a, 33, out room, out never));
        Assert.True(never);
        Assert.Null(room);

        log.Written(a);
        log.Written(b);
        Assert.Equal(0, log.PartialParityReserved);
        log.Close(log.TakeWritten(1));
        log.Close(log.TakeWritten(2));
        Assert.Equal(32, log.PartialParityFree);
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
    [Fact]
    public void A_failed_writes_record_keeps_its_sums_past_flushes_until_later_writes_have_covered_its_blocks()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var log = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        // A write in flight when the other fails opened before the failure: it settles nothing.
        Assert.True(log.TryOpen(1, 100, 8, out int before, out _));
        Assert.True(log.TryOpen(1, 100, 8, out int failed, out _));
        Assert.True(log.StorePartialParity(failed, 12, 4, 0b10, Sum(7)));
        log.Written(failed, failed: true);
        log.Written(before);
        Assert.Equal([before], log.TakeWritten(1));
        log.Close([before]);
        var (sum, _) = Assert.Single(log.HeldPartialParity(1, 12, 0, 16));
        Assert.Equal((12L, 4, 0b10UL), (sum.Stripe, sum.Row, sum.Unchanged));
        Assert.Empty(log.HeldPartialParity(1, 12, 5, 11));  // other rows
        Assert.Empty(log.HeldPartialParity(2, 12, 0, 16));  // another array

        // The recovery writes come: half of its blocks, then (after a write that failed again, with no sums) the rest.
        Assert.True(log.TryOpen(1, 96, 8, out int half, out _));
        log.Written(half);
        Assert.Equal([half], log.TakeWritten(1));
        log.Close([half]);
        Assert.True(log.TryOpen(1, 104, 4, out int again, out _));
        log.Written(again, failed: true);                   // no sums stored: an ordinary record, closed by a flush
        Assert.Equal([again], log.TakeWritten(1));
        log.Close([again]);
        Assert.Single(log.HeldPartialParity(1, 12, 0, 16));
        Assert.Equal((1L, 0L, 1), log.FailedWrites);
        Assert.True(log.TryOpen(1, 104, 40, out int rest, out _));
        log.Written(rest);
        Assert.Equal((1L, 1L, 0), log.FailedWrites);
        Assert.Empty(log.HeldPartialParity(1, 12, 0, 16));
        Assert.Equal(new[] { failed, rest }.Order(), log.TakeWritten(1).Order());
        log.Close([failed, rest]);
        Assert.Equal(32, log.PartialParityFree);
        Assert.Equal(0, log.LiveCount);
    }

    [Fact]
    public void A_later_write_that_never_started_settles_nothing_of_a_failed_record()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var log = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.True(log.TryOpen(1, 100, 8, out int failed, out _));
        Assert.True(log.StorePartialParity(failed, 12, 4, 0b10, Sum(7)));
        log.Written(failed, failed: true);
        // A recovery write of every block of it opens its record, but the shelf cannot record the peer's log copy
        // stale, so it does not start: the failed record keeps its range unsettled and its sum.
        Assert.True(log.TryOpen(1, 96, 24, out int refused, out _));
        log.NotStarted(refused);
        Assert.Equal((1L, 0L, 1), log.FailedWrites);
        Assert.Equal((100L, 108L), Assert.Single(Assert.Single(log.FailedRecords(1)).Unsettled));
        Assert.Equal([refused], log.TakeWritten(1));
        log.Close([refused]);
        Assert.Single(log.HeldPartialParity(1, 12, 0, 16));
        // The same write started and returned well settles it.
        Assert.True(log.TryOpen(1, 96, 24, out int wrote, out _));
        log.Written(wrote);
        Assert.Equal((1L, 1L, 0), log.FailedWrites);
    }

    [Fact]
    public void A_claim_counts_the_sums_others_hold_for_its_rows_as_room_and_supersedes_them_only_when_it_succeeds()
    {
        var log = new WriteLog(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "A", Sample.Pair));
        // A failed write holds sums for rows 0-9 of stripe 5 (rows it may have torn); 22 entries are free.
        Assert.True(log.TryOpen(1, 0, 64, out int failed, out _));
        for (int r = 0; r < 10; r++) Assert.True(log.StorePartialParity(failed, 5, r, 0b10, Sum((byte)r)));
        log.Written(failed, failed: true);
        Assert.True(log.TryOpen(1, 0, 64, out int retry, out _));
        // The retry changes rows 0-3 and needs 24: with only the free entries it waits, and supersedes nothing.
        Assert.False(log.TryClaimPartialSums(retry, 24, out var room, out bool never));
        Assert.False(never);
        Assert.NotNull(room);
        Assert.Equal(22, log.PartialParityFree);
        // Named with its rows, the 4 entries the failed write holds there count as room, and go when the claim is made.
        Assert.Equal(4, log.HeldPartialParity(1, 5, 0, 4).Count);
        Assert.True(log.TryClaimPartialSums(retry, 24, out _, out _, (5, 0, 4)));
        Assert.Empty(log.HeldPartialParity(1, 5, 0, 4));
        Assert.Equal(6, log.HeldPartialParity(1, 5, 4, 6).Count);   // its other rows keep theirs
        Assert.Equal(26, log.PartialParityFree);
        // A claim that fails supersedes nothing.
        Assert.True(log.TryOpen(1, 0, 64, out int third, out _));
        Assert.False(log.TryClaimPartialSums(third, 10, out _, out _, (5, 4, 2)));
        Assert.Equal(6, log.HeldPartialParity(1, 5, 4, 6).Count);
    }

    [Fact]
    public void Failed_records_that_alone_hold_the_room_a_write_waits_for_are_named_for_a_settle_and_keep_their_sums_until_it()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var log = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.True(log.TryOpen(3, 0, 64, out int failed, out var failedRecord));
        for (int r = 0; r < 20; r++) Assert.True(log.StorePartialParity(failed, r / 16, r % 16, 0b10, Sum((byte)r)));
        log.Written(failed, failed: true);
        Assert.True(log.TryOpen(3, 500, 1, out int inFlight, out _));
        // 12 entries free; a write asking for 16 waits. A write in flight may still free room: no settle yet.
        Assert.False(log.TryOpen(3, 600, 64, out _, out _, 16, out bool poolShort));
        Assert.True(poolShort);
        Assert.False(log.OnlyFailedHold);
        Assert.Empty(log.ArraysWaitingForFlush());
        log.Written(inFlight);
        Assert.Equal([inFlight], log.TakeWritten(3));
        log.Close([inFlight]);
        Assert.False(log.TryOpen(3, 600, 64, out _, out _, 16, out poolShort));
        // Now only the failed record holds it. A flush does not take it (its sums are all that holds the blocks of a
        // member that cannot be read in the rows it may have tore): its rows are to be settled from its sums first.
        Assert.True(log.OnlyFailedHold);
        Assert.Empty(log.ArraysWaitingForFlush());
        Assert.Empty(log.TakeWritten(3));
        Assert.Equal(20, log.HeldPartialParity(3, 0, 0, 16).Count + log.HeldPartialParity(3, 1, 0, 16).Count);
        Assert.True(log.AnyFailed);
        var (slot, sequence, array, unsettled) = Assert.Single(log.FailedRecords());
        Assert.Equal((failed, failedRecord.Sequence, (byte)3), (slot, sequence, array));
        Assert.Equal([(0L, 64L)], unsettled);
        Assert.Empty(log.FailedRecords(4));
        log.FailedSettled(slot, sequence + 1);              // not that record: nothing happens
        Assert.Single(log.FailedRecords(3));
        log.FailedSettled(slot, sequence);
        Assert.Empty(log.FailedRecords(3));
        Assert.False(log.AnyFailed);
        Assert.Equal(1, log.FailedSettledBySettle);
        Assert.Equal([failed], log.TakeWritten(3));
        log.Close([failed]);
        Assert.True(log.TryOpen(3, 600, 64, out _, out _, 16, out _));
    }

    [Fact]
    public void A_failed_record_of_a_failed_array_is_given_up_and_goes_with_the_next_flush_uncounted_as_settled()
    {
        var log = new WriteLog(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small, "nvram-A"), Sample.Small, "A", Sample.Pair));
        Assert.True(log.TryOpen(5, 0, 8, out int failed, out var record));
        Assert.True(log.StorePartialParity(failed, 0, 0, 0b10, Sum(1)));
        log.Written(failed, failed: true);
        Assert.Empty(log.TakeWritten(5));
        log.FailedGivenUp(failed, record.Sequence);
        Assert.False(log.AnyFailed);
        Assert.Equal(0, log.FailedSettledBySettle);
        Assert.Equal([failed], log.TakeWritten(5));
        log.Close([failed]);
        Assert.Equal(32, log.PartialParityFree);
    }
}
