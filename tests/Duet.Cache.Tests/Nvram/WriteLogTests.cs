using Duet.Cache.Nvram;

namespace Duet.Cache.Tests.Nvram;

/// <summary>The AW-4 write log in NVRAM: records outlive a crash, close only after a flush, and a torn record reads as free.</summary>
[Trait("Claim", "AW-4")]
public sealed class WriteLogTests
{
    [Fact]
    public void Records_still_open_or_written_or_closing_at_a_crash_are_recovered_in_sequence_order_and_closed_ones_are_gone()
    {
        var store = NvramStore.For(Sample.Small, "nvram-A");
        var log = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Empty(log.Recovered);
        Assert.True(log.TryOpen(1, 100, 8, out int s1, out var r1));
        Assert.True(log.TryOpen(1, 300, 4, out int s2, out var r2));
        Assert.True(log.TryOpen(2, 0, 16, out int s3, out var r3));
        Assert.True(log.TryOpen(1, 900, 1, out int s4, out var r4));
        Assert.True(r1.Sequence < r2.Sequence && r2.Sequence < r3.Sequence && r3.Sequence < r4.Sequence);
        log.Written(s1);
        log.Written(s2);
        log.Written(s3);
        var taken = log.TakeWritten(1);
        Assert.Equal([s1, s2], taken.Order());
        Assert.Equal([r1, r2], log.Close(taken).OrderBy(r => r.Sequence));
        log.Written(s4);
        Assert.Equal([s4], log.TakeWritten(1));
        // Crash: s3 written (array 2 not flushed), s4 closing (its flush never finished).

        var again = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Equal([r3, r4], again.Recovered.Select(x => x.Record));
        Assert.Equal(2, again.LiveCount);
        Assert.True(again.TryOpen(3, 7, 1, out int s5, out var r5));
        Assert.True(r5.Sequence > r4.Sequence, "sequences go on increasing across a restart");
        Assert.DoesNotContain(s5, new[] { s3, s4 });
        foreach (var (slot, _) in again.Recovered) again.Retire(slot);
        Assert.Empty(again.Recovered);
        Assert.Equal(1, again.LiveCount);
    }

    [Fact]
    public void A_failed_flush_puts_the_records_back_for_the_next_one()
    {
        var log = new WriteLog(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "A", Sample.Pair));
        Assert.True(log.TryOpen(1, 0, 8, out int s, out _));
        Assert.Empty(log.TakeWritten(1)); // still being written: no flush can cover it yet
        log.Written(s);
        Assert.Equal([(byte)1], log.ArraysWaitingForFlush());
        var taken = log.TakeWritten(1);
        Assert.Empty(log.ArraysWaitingForFlush());
        log.FlushFailed(taken);
        Assert.Equal([s], log.TakeWritten(1));
    }

    [Fact]
    public void A_full_log_refuses_and_a_close_wakes_the_waiter()
    {
        var log = new WriteLog(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "A", Sample.Pair));
        var slots = new List<int>();
        for (int i = 0; i < log.Slots; i++)
        {
            Assert.True(log.TryOpen(1, i * 8L, 8, out int s, out _));
            slots.Add(s);
        }
        Assert.False(log.TryOpen(1, 0, 1, out _, out _));
        Assert.Equal(1, log.Waits);
        var freed = log.SlotFreedAsync();
        Assert.False(freed.IsCompleted);
        log.Written(slots[7]);
        log.Close(log.TakeWritten(1));
        Assert.True(freed.IsCompleted);
        Assert.True(log.TryOpen(1, 0, 1, out int again, out _));
        Assert.Equal(slots[7], again);
    }

    [Fact]
    public void A_torn_record_reads_as_free()
    {
        var store = NvramStore.For(Sample.Small);
        var nvram = NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair);
        var log = new WriteLog(nvram);
        Assert.True(log.TryOpen(1, 40, 8, out int a, out _));
        Assert.True(log.TryOpen(1, 80, 8, out int b, out var rb));
        nvram.Own.LogRecord(a)[9] ^= 0x40; // a cut in the middle of storing it
        var again = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Equal([(b, rb)], again.Recovered);
        Assert.Equal(1, again.LiveCount);
    }

    [Fact]
    public void The_peers_records_are_kept_by_slot_cleared_only_by_their_own_sequence_and_survive_a_restart()
    {
        var store = NvramStore.For(Sample.Small);
        var log = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "B", Sample.Pair));
        log.StoreMirrored(3, new WriteLogRecord(1, 64, 16, 10));
        log.StoreMirrored(9, new WriteLogRecord(1, 0, 4, 11));
        log.ClearMirrored(9, 12); // an older "done" for what the slot held before: ignored
        Assert.Equal([3, 9], log.Mirrored().Select(m => m.Slot));
        Assert.Empty(log.Recovered); // the peer's records are not ours to settle at our start

        var again = new WriteLog(NvramFile.OpenOrCreate(store, Sample.Small, "B", Sample.Pair));
        Assert.Equal([new WriteLogRecord(1, 64, 16, 10), new WriteLogRecord(1, 0, 4, 11)], again.Mirrored().Select(m => m.Record));
        again.ClearMirrored(3, 10);
        Assert.Equal([9], again.Mirrored().Select(m => m.Slot));
        again.ClearAllMirrored();
        Assert.Empty(again.Mirrored());
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public void The_peers_partial_sums_are_kept_only_for_its_records_and_go_with_them()
    {
        var nvram = NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "B", Sample.Pair);
        var log = new WriteLog(nvram);
        var sum = new byte[NvramLayout.PpBlockBytes];
        log.StoreMirrored(3, new WriteLogRecord(1, 64, 16, 10));
        log.StoreMirrored(9, new WriteLogRecord(2, 0, 4, 11));
        Assert.True(log.StoreMirroredSum(3, 10, 1, 4, 0, 0b10, sum));
        Assert.True(log.StoreMirroredSum(3, 10, 1, 4, 1, 0b10, sum));
        Assert.True(log.StoreMirroredSum(9, 11, 2, 0, 0, 0b1, sum));
        // Refused: no such record, an older sequence of the slot, another array than the record's.
        Assert.False(log.StoreMirroredSum(4, 10, 1, 4, 0, 0b10, sum));
        Assert.False(log.StoreMirroredSum(3, 9, 1, 4, 0, 0b10, sum));
        Assert.False(log.StoreMirroredSum(3, 10, 2, 4, 0, 0b10, sum));
        Assert.Equal(3, log.PeerPartialSums);
        Assert.Equal(3, log.PeerPartialSumsRefused);
        Assert.Equal([(4L, 0, 10UL), (4L, 1, 10UL)], log.MirroredPartialParity(1).Select(x => (x.Meta.Stripe, x.Meta.Row, x.Meta.Sequence)).Order());
        Assert.Single(log.MirroredPartialParity(2));

        log.ClearMirrored(3, 9); // not the record the slot holds: nothing goes
        Assert.Equal(3, log.PeerPartialSums);
        // The peer freed its record's sums of one stripe (written and flushed while the write went on): only those go.
        Assert.True(log.StoreMirroredSum(3, 10, 1, 5, 0, 0b10, sum));
        Assert.Equal(0, log.DropMirroredStripe(3, 9, 1, 5));  // another record of the slot
        Assert.Equal(0, log.DropMirroredStripe(9, 11, 2, 5)); // another record's stripe
        Assert.Equal(1, log.DropMirroredStripe(3, 10, 1, 5));
        Assert.Equal(3, log.PeerPartialSums);
        Assert.Equal([4L, 4L], log.MirroredPartialParity(1).Select(x => x.Meta.Stripe));
        log.ClearMirrored(3, 10);
        Assert.Empty(log.MirroredPartialParity(1));
        log.StoreMirrored(9, new WriteLogRecord(2, 8, 4, 12)); // the slot's next record: the old one's sums go
        Assert.Empty(log.MirroredPartialParity(2));
        Assert.True(log.StoreMirroredSum(9, 12, 2, 1, 0, 0b1, sum));
        log.ClearAllMirrored();
        Assert.Equal(0, log.PeerPartialSums);

        // At most twice our own pool's entries.
        log.StoreMirrored(5, new WriteLogRecord(1, 0, 1, 20));
        int kept = 0;
        for (int i = 0; i < 2 * nvram.Layout.PpSlots + 3; i++) if (log.StoreMirroredSum(5, 20, 1, i, 0, 1, sum)) kept++;
        Assert.Equal(2 * nvram.Layout.PpSlots, kept);
    }

    [Fact]
    public void The_link_id_carries_slot_and_sequence()
    {
        Assert.Equal((511, 123456789UL), WriteLog.FromLinkId(WriteLog.LinkId(511, 123456789)));
    }
}
