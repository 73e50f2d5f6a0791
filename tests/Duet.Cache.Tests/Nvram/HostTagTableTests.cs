using System.Buffers.Binary;
using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Cache.Tests.Nvram;

/// <summary>
/// The tables of finished host commands in NVRAM (idempotent re-issue): entries encode and check
/// themselves, the own table is a ring bounded by sequence, both tables are read back after a
/// reopen of the file, and a torn or misplaced entry reads as free.
/// </summary>
[Trait("Claim", "AW-1")]
public sealed class HostTagTableTests : IDisposable
{
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    static HostTagKey Key(ulong tag, byte unit = 0, ulong host = 0xAB) => new(unit, host, tag);

    [Fact]
    public void An_entry_encodes_to_the_documented_bytes_and_decodes_back()
    {
        var entry = new HostTagEntry(new HostTagKey(1, 0x1122334455667788, (3UL << 48) | 42), 0xCAFEF00D, 5, 4097);
        var slot = new byte[NvramLayout.TagEntryBytes];
        entry.Encode(slot, table: 1);

        Assert.Equal(HostTagEntry.Magic, BinaryPrimitives.ReadUInt32LittleEndian(slot));
        Assert.Equal("HTG1"u8.ToArray(), slot[..4]);
        Assert.Equal((byte)1, slot[4]); // unit
        Assert.Equal((byte)5, slot[5]); // status
        Assert.Equal((byte)1, slot[6]); // table stamp
        Assert.Equal(4097UL, BinaryPrimitives.ReadUInt64LittleEndian(slot.AsSpan(8)));
        Assert.Equal(0x1122334455667788UL, BinaryPrimitives.ReadUInt64LittleEndian(slot.AsSpan(16)));
        Assert.Equal((3UL << 48) | 42, BinaryPrimitives.ReadUInt64LittleEndian(slot.AsSpan(24)));
        Assert.Equal(0xCAFEF00Du, BinaryPrimitives.ReadUInt32LittleEndian(slot.AsSpan(32)));
        Assert.All(slot[36..60], b => Assert.Equal(0, b));
        Assert.Equal(Crc32C.Compute(slot.AsSpan(0, 60)), BinaryPrimitives.ReadUInt32LittleEndian(slot.AsSpan(60)));

        Assert.Equal(1, entry.Slot); // 4097 mod 4096
        Assert.Equal(entry, HostTagEntry.Decode(slot, table: 1, slotIndex: 1, out var problem));
        Assert.Null(problem);
    }

    [Fact]
    public void A_free_slot_reads_as_free_and_a_damaged_or_misplaced_entry_reads_as_free_with_the_reason()
    {
        Assert.Null(HostTagEntry.Decode(new byte[64], 1, 0, out var none));
        Assert.Null(none);

        var entry = new HostTagEntry(Key(7), 0x1234, 0, 9);
        var good = new byte[64];
        entry.Encode(good, table: 2);

        var torn = (byte[])good.Clone();
        torn[20] ^= 0x01; // a cut in the middle of the store, or a bit gone bad
        Assert.Null(HostTagEntry.Decode(torn, 2, 9, out var why));
        Assert.Contains("CRC32C mismatch", why);

        Assert.Null(HostTagEntry.Decode(good, 1, 9, out why)); // the peer's entry found in the own table
        Assert.Contains("stamped for table 2", why);

        Assert.Null(HostTagEntry.Decode(good, 2, 10, out why)); // in a slot its sequence does not name
        Assert.Contains("does not belong in slot 10", why);

        var noMagic = (byte[])good.Clone();
        noMagic[0] = 0;
        Assert.Null(HostTagEntry.Decode(noMagic, 2, 9, out why));
        Assert.Equal("no magic", why);
    }

    [Fact]
    public void Entries_recorded_before_the_file_is_closed_are_found_after_it_is_opened_again_and_the_sequence_goes_on()
    {
        var path = _dir.File("a.nvram");
        using (var nvram = NvramFile.Create(path, Sample.Small, "A", Sample.Pair))
        {
            var tags = new HostTagTable(nvram);
            Assert.Equal((0, 0), (tags.RecoveredOwn, tags.RecoveredPeer));
            Assert.Equal(1UL, tags.Record(Key(1), 0x11, 0).Sequence);
            Assert.Equal(2UL, tags.Record(Key(2, unit: 1), 0x22, 1).Sequence);
            Assert.True(tags.StoreMirrored(new HostTagEntry(Key(3, host: 0xCD), 0x33, 0, 77)));
        } // no Flush: a closed (or killed) process leaves its stores in the file

        using var again = NvramFile.Open(path);
        var reopened = new HostTagTable(again);
        Assert.Equal((2, 1), (reopened.RecoveredOwn, reopened.RecoveredPeer));
        Assert.Empty(reopened.Skipped);
        Assert.True(reopened.TryFind(Key(2, unit: 1), out var e, out bool peers));
        Assert.Equal((new HostTagEntry(Key(2, unit: 1), 0x22, 1, 2), false), (e, peers));
        Assert.True(reopened.TryFind(Key(3, host: 0xCD), out e, out peers));
        Assert.Equal((new HostTagEntry(Key(3, host: 0xCD), 0x33, 0, 77), true), (e, peers));
        Assert.False(reopened.TryFind(Key(2), out _, out _)); // unit 0, not 1: another key
        Assert.Equal(3UL, reopened.Record(Key(4), 0x44, 0).Sequence);
    }

    [Fact]
    public void The_own_table_keeps_the_newest_TagSlots_entries_and_evicts_the_oldest_first_across_a_reopen()
    {
        var store = NvramStore.For(Sample.Small);
        var tags = new HostTagTable(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        int n = tags.Slots + 10;
        for (int i = 1; i <= n; i++) tags.Record(Key((ulong)i), (uint)i, 0);
        Assert.Equal(tags.Slots, tags.OwnCount);
        for (int i = 1; i <= 10; i++) Assert.False(tags.TryFind(Key((ulong)i), out _, out _), $"tag {i} was evicted");
        Assert.True(tags.TryFind(Key(11), out var oldest, out _));
        Assert.Equal(11UL, oldest.Sequence);
        Assert.True(tags.TryFind(Key((ulong)n), out var newest, out _));
        Assert.Equal(newest.Sequence % (ulong)tags.Slots, (ulong)newest.Slot);

        var again = new HostTagTable(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Equal(tags.Slots, again.RecoveredOwn);
        Assert.Equal((ulong)n, again.Sequence);
        Assert.Equal(Enumerable.Range(11, tags.Slots).Select(i => (ulong)i), again.OwnEntries().Select(e => e.Sequence));
        // The next entry takes the slot of the oldest (sequence 11).
        var next = again.Record(Key(100_000), 1, 0);
        Assert.Equal(oldest.Slot, next.Slot);
        Assert.False(again.TryFind(Key(11), out _, out _));
        Assert.True(again.TryFind(Key(12), out _, out _));
    }

    [Fact]
    public void A_torn_newest_entry_is_skipped_at_the_reopen_and_its_slot_is_the_next_one_used()
    {
        var store = NvramStore.For(Sample.Small);
        var nvram = NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair);
        var tags = new HostTagTable(nvram);
        tags.Record(Key(1), 1, 0);
        var last = tags.Record(Key(2), 2, 0);
        nvram.Own.TagEntry(last.Slot)[17] ^= 0x80; // kill -9 or a power cut in the middle of storing it

        var again = new HostTagTable(NvramFile.OpenOrCreate(store, Sample.Small, "A", Sample.Pair));
        Assert.Equal(1, again.RecoveredOwn);
        Assert.Single(again.Skipped);
        Assert.Contains($"table 1 slot {last.Slot}: CRC32C mismatch", again.Skipped[0]);
        Assert.False(again.TryFind(Key(2), out _, out _));
        Assert.True(again.TryFind(Key(1), out _, out _));
        Assert.Equal(last.Slot, again.Record(Key(3), 3, 0).Slot);
    }

    [Fact]
    public void The_peers_copy_keeps_the_newer_entry_of_a_slot_and_the_own_table_is_consulted_first()
    {
        var tags = new HostTagTable(NvramFile.OpenOrCreate(NvramStore.For(Sample.Small), Sample.Small, "B", Sample.Pair));
        var newer = new HostTagEntry(Key(5), 0x55, 0, 5 + (ulong)tags.Slots);
        var older = new HostTagEntry(Key(6), 0x66, 0, 5); // the same slot, a resend that crossed the live entry
        Assert.True(tags.StoreMirrored(newer));
        Assert.False(tags.StoreMirrored(older));
        Assert.Equal(1, tags.StaleMirrored);
        Assert.False(tags.TryFind(Key(6), out _, out _));

        // An entry overwriting its slot evicts the key it held.
        var later = new HostTagEntry(Key(7), 0x77, 0, 5 + 2 * (ulong)tags.Slots);
        Assert.True(tags.StoreMirrored(later));
        Assert.False(tags.TryFind(Key(5), out _, out _));
        Assert.Equal(1, tags.PeerCount);

        // The same key in both tables: ours wins (both say how the command ended; ours is what ran here).
        tags.Record(Key(7), 0x70, 1);
        Assert.True(tags.TryFind(Key(7), out var found, out bool peers));
        Assert.Equal((0x70u, false), (found.Digest, peers));
        Assert.Equal(0UL, tags.Sequence - 1); // the peer's sequences never move ours
    }
}
