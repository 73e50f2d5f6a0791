using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Cache.Tests.Nvram;

/// <summary>Elements, descriptors, torn updates and replay order in one region.</summary>
[Trait("Claim", "MR-1")]
public sealed class NvramRegionTests : IDisposable
{
    readonly TempDir _dir = new();
    readonly NvramFile _nvram;

    public NvramRegionTests() => _nvram = NvramFile.Create(_dir.File("a.nvram"), Sample.Small, "A", Sample.Pair);

    public void Dispose()
    {
        _nvram.Dispose();
        _dir.Dispose();
    }

    NvramFile Reopen(NvramFile current)
    {
        var path = current.Path;
        current.Dispose();
        return NvramFile.Open(path);
    }

    [Fact]
    public void Region_1_and_region_2_are_the_same_shape_and_separate()
    {
        Assert.Equal(_nvram.Own.ElementCount, _nvram.Peer.ElementCount);
        Assert.Equal(_nvram.Own.RegionBytes, _nvram.Peer.RegionBytes);
        Assert.Equal(9, _nvram.Own.ElementCount);

        _nvram.Own.Write(4, Sample.Descriptor(4, 1), Sample.Sectors(32, 1));
        Assert.Equal(ElementState.Valid, _nvram.Own.StateOf(4));
        Assert.Equal(ElementState.Empty, _nvram.Peer.StateOf(4));
        Assert.True(_nvram.Peer.Data(4).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void A_written_element_reads_back_with_its_descriptor_and_data_after_reopen()
    {
        var d = Sample.Descriptor(7, 5, mask: 0b1011, blockCount: 4, dirty: true);
        var sectors = Sample.Sectors(4, 2);
        _nvram.Own.Write(7, d, sectors);
        Assert.Equal(d, _nvram.Own.Read(7));

        using var reopened = Reopen(_nvram);
        Assert.Equal(d, reopened.Own.Read(7));
        Assert.True(Sample.ValidSectorsEqual(reopened.Own.Data(7), sectors, d.ValidMask));
        // Sector 2 is not valid: it was not copied.
        Assert.True(reopened.Own.Data(7).Slice(2 * 512, 512).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void Reading_an_empty_element_is_an_error_and_try_read_says_no()
    {
        Assert.Contains("element 3 is empty", Assert.Throws<NvramException>(() => _nvram.Own.Read(3)).Message);
        Assert.False(_nvram.Own.TryRead(3, out _));
    }

    [Fact]
    [Trait("Claim", "CC-1")]
    public void Offsets_and_elements_are_inverse_and_the_mr3_descriptor_is_offset_over_512()
    {
        var region = _nvram.Peer;
        for (int e = 0; e < region.ElementCount; e++)
        {
            Assert.Equal(e * 16384L, region.OffsetOf(e));
            Assert.Equal(e, region.ElementAt(region.OffsetOf(e)));
            Assert.Equal(e * 32L, region.OffsetOf(e) / 512);
        }
        Assert.Equal((5, 3), region.Locate(5 * 16384 + 3 * 512));
        Assert.Throws<ArgumentException>(() => region.ElementAt(5 * 16384 + 512));
        Assert.Throws<ArgumentException>(() => region.ElementAt(100));
        Assert.Throws<ArgumentOutOfRangeException>(() => region.ElementAt(-16384));
        Assert.Throws<ArgumentOutOfRangeException>(() => region.ElementAt(region.RegionBytes));
        Assert.Throws<ArgumentOutOfRangeException>(() => region.Data(region.ElementCount));
        Assert.Throws<ArgumentOutOfRangeException>(() => region.OffsetOf(-1));
    }

    [Fact]
    [Trait("Claim", "CC-1")]
    public void The_peer_mirrors_an_element_at_the_same_index_with_data_placed_first()
    {
        // B's region 2 receives A's region 1 element 7: the ICL receiver puts the data straight
        // into the mapping, then stores the descriptor.
        using var b = NvramFile.Create(_dir.File("b.nvram"), Sample.Small, "B", Sample.Pair);
        Assert.Null(NvramFile.CompatibilityProblem(_nvram.Layout, b.Layout));
        var d = Sample.Descriptor(7, 77);
        _nvram.Own.Write(7, d, Sample.Sectors(32, 9));

        _nvram.Own.Data(7).CopyTo(b.Peer.Data(7));
        b.Peer.WriteDescriptorOnly(7, d);

        Assert.Equal(_nvram.Own.Read(7), b.Peer.Read(7));
        Assert.True(_nvram.Own.Data(7).SequenceEqual(b.Peer.Data(7)));
        Assert.Equal([(7, d)], b.Peer.ReplayOrder());
    }

    [Fact]
    public void Invalidate_and_clear_remove_elements_from_replay_durably()
    {
        for (int e = 0; e < 5; e++) _nvram.Own.Write(e, Sample.Descriptor(e, (ulong)e + 1), Sample.Sectors(32, e));
        _nvram.Own.Invalidate(2);
        _nvram.Peer.Write(0, Sample.Descriptor(0, 1), Sample.Sectors(32, 0));

        using var reopened = Reopen(_nvram);
        Assert.Equal([0, 1, 3, 4], reopened.Own.ReplayOrder().Select(x => x.Element));
        reopened.Own.Clear();
        Assert.Empty(reopened.Own.ReplayOrder());
        Assert.Single(reopened.Peer.ReplayOrder()); // the other region is untouched
    }

    [Fact]
    public void Set_clean_keeps_the_element_and_its_data()
    {
        var sectors = Sample.Sectors(32, 3);
        _nvram.Own.Write(1, Sample.Descriptor(1, 10, dirty: true), sectors);
        _nvram.Own.SetClean(1);
        using var reopened = Reopen(_nvram);
        var d = reopened.Own.Read(1);
        Assert.False(d.Dirty);
        Assert.Equal(10UL, d.Sequence);
        Assert.True(reopened.Own.Data(1).SequenceEqual(sectors));
    }

    [Fact]
    public void Replay_order_is_by_sequence_number_not_by_element()
    {
        ulong[] sequences = [50, 3, 900, 7, 8, 1];
        for (int e = 0; e < sequences.Length; e++) _nvram.Own.Write(e, Sample.Descriptor(e, sequences[e]), Sample.Sectors(32, e));
        var order = _nvram.Own.ReplayOrder();
        Assert.Equal([5, 1, 3, 4, 0, 2], order.Select(x => x.Element));
        Assert.Equal(sequences.Order(), order.Select(x => x.Descriptor.Sequence));
    }

    [Fact]
    public void Data_changed_after_its_descriptor_is_a_torn_update_and_is_skipped()
    {
        var d = Sample.Descriptor(2, 4, mask: 0x0000_00F0, blockCount: 8);
        _nvram.Own.Write(2, d, Sample.Sectors(8, 4));
        _nvram.Own.Write(3, Sample.Descriptor(3, 5), Sample.Sectors(32, 5));

        _nvram.Own.Data(2)[0] ^= 1;          // sector 0 is not valid: not covered, still replays
        Assert.Equal(2, _nvram.Own.ReplayOrder().Count);
        _nvram.Own.Data(2)[5 * 512 + 17] ^= 1; // sector 5 is valid: torn

        var order = _nvram.Own.ReplayOrder(out var skipped);
        Assert.Equal([3], order.Select(x => x.Element));
        var skip = Assert.Single(skipped);
        Assert.Equal(2, skip.Element);
        Assert.Contains("CRC32C mismatch", skip.Reason);
        Assert.Equal(ElementState.Damaged, _nvram.Own.StateOf(2));
        Assert.Contains("damaged", Assert.Throws<NvramException>(() => _nvram.Own.Read(2)).Message);
    }

    [Fact]
    public void A_flipped_descriptor_crc_or_field_is_skipped_after_reopen()
    {
        for (int e = 0; e < 3; e++) _nvram.Own.Write(e, Sample.Descriptor(e, (ulong)e + 1), Sample.Sectors(32, e));
        var path = _nvram.Path;
        var table = _nvram.Layout.DescriptorTable1Offset;
        _nvram.Dispose();
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            Flip(stream, table + 0 * 64 + 60);  // element 0: its CRC
            Flip(stream, table + 2 * 64 + 16);  // element 2: its array LBA
        }
        using var reopened = NvramFile.Open(path);
        var order = reopened.Own.ReplayOrder(out var skipped);
        Assert.Equal([1], order.Select(x => x.Element));
        Assert.Equal([0, 2], skipped.Select(s => s.Element));
    }

    [Fact]
    public void Data_placed_without_its_descriptor_is_not_replayed()
    {
        Sample.Sectors(32, 8).CopyTo(_nvram.Own.Data(6));
        Assert.Empty(_nvram.Own.ReplayOrder(out var skipped));
        Assert.Empty(skipped);
    }

    [Fact]
    public void A_descriptor_copied_into_another_slot_is_caught_by_its_stamp()
    {
        var sectors = Sample.Sectors(32, 1);
        _nvram.Own.Write(1, Sample.Descriptor(1, 1), sectors);
        sectors.CopyTo(_nvram.Own.Data(2));
        var path = _nvram.Path;
        var table = _nvram.Layout.DescriptorTable1Offset;
        _nvram.Dispose();
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            var slot = new byte[64];
            stream.Position = table + 64;
            stream.ReadExactly(slot);
            stream.Position = table + 128;
            stream.Write(slot);
        }
        using var reopened = NvramFile.Open(path);
        reopened.Own.ReplayOrder(out var skipped);
        Assert.Contains("stamped for element 1", Assert.Single(skipped).Reason);
    }

    [Theory]
    [InlineData(16L, 32, 1u, 1UL, "not aligned")]
    [InlineData(32L, 0, 1u, 1UL, "block count 0")]
    [InlineData(32L, 33, 1u, 1UL, "block count 33")]
    [InlineData(32L, 8, 0u, 1UL, "valid mask is empty")]
    [InlineData(32L, 8, 0x100u, 1UL, "bits at or above block count 8")]
    [InlineData(32L, 8, 1u, 0UL, "sequence number 0")]
    [InlineData(-32L, 8, 1u, 1UL, "negative")]
    public void Malformed_descriptors_are_refused_at_write(long lba, int blockCount, uint mask, ulong sequence, string reason)
    {
        var d = new ElementDescriptor(1, 1, lba, blockCount, mask, sequence, true);
        var data = new byte[Math.Clamp(blockCount, 0, 32) * 512];
        var e = Assert.Throws<InvariantViolationException>(() => _nvram.Own.Write(0, d, data));
        Assert.Contains(reason, e.Message);
        Assert.Throws<InvariantViolationException>(() => _nvram.Own.WriteDescriptorOnly(0, d));
        Assert.Equal(ElementState.Empty, _nvram.Own.StateOf(0));
    }

    [Fact]
    public void A_full_mask_with_32_blocks_is_accepted_and_data_must_match_the_block_count()
    {
        Assert.Null(Sample.Descriptor(0, 1).Problem());
        Assert.Throws<InvariantViolationException>(() => _nvram.Own.Write(0, Sample.Descriptor(0, 1, mask: 1, blockCount: 2), new byte[512]));
    }

    static void Flip(FileStream stream, long offset)
    {
        stream.Position = offset;
        int b = stream.ReadByte();
        stream.Position = offset;
        stream.WriteByte((byte)(b ^ 0x01));
    }
}
