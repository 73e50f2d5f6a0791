using System.Buffers;
using Duet.Interconnect.Wire;
using FsCheck;
using FsCheck.Fluent;
using static Duet.Interconnect.Tests.TestBytes;

namespace Duet.Interconnect.Tests;

public class CoherencyTests
{
    const long Region = 64L << 20;

    static CoherencyHeader Mirror(uint element, uint blocks, ulong seq, ulong lba = 1000, byte volume = 1) =>
        new(CoherencyHeaderKind.Mirror, volume, lba, blocks, element, ((uint)((1UL << (int)blocks) - 1)) << (int)(element % 32), seq);

    static CoherencyHeader Invalidate(uint element, ulong seq, ulong lba = 1000) =>
        new(CoherencyHeaderKind.Invalidate, 1, lba, 32, element, 0, seq);

    static byte[] Data(uint blocks, byte fill) => Enumerable.Repeat(fill, (int)blocks * 512).ToArray();

    static byte[] Flatten(CoherencyBatch batch) => batch.ToSequence().ToArray();

    static CoherencyBatchCommand Decode(ReadOnlySequence<byte> seq)
    {
        var reader = new SequenceReader<byte>(seq);
        Assert.Equal(OperationStatus.Done, CoherencyBatchCommand.TryDecode(ref reader, Region, out var cmd, out var error));
        Assert.Equal(WireError.None, error);
        Assert.True(reader.End);
        return cmd!;
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void Batch_command_has_the_documented_layout()
    {
        var headers = new[] { Mirror(64, 1, 5, lba: 0x0102030405060708, volume: 9), Invalidate(96, 6) };
        var b = new byte[CoherencyBatchCommand.HeadBytes(2)];
        Assert.Equal(10 + 8 + 64, CoherencyBatchCommand.EncodeHead(0x123456, headers, b));
        Assert.Equal((
            "3b 02 d0 123456 000248 00" +            // CDB: param length 8 + 64 + 512 = 0x248
            "00000002 00000200" +                    // 2 headers, 512 data bytes
            "01 09 0000 00000040 0102030405060708 00000001 00000001 0000000000000005" +
            "02 01 0000 00000060 00000000000003e8 00000020 00000000 0000000000000006")
            .Replace(" ", "", StringComparison.Ordinal),
            ToHex(b));
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void Batch_command_decodes_when_split_across_segments_anywhere()
    {
        var log = new CoherencyLog();
        log.AppendMirror(Mirror(0, 8, 1), Data(8, 0x11));
        log.AppendInvalidate(Invalidate(32, 2));
        log.AppendMirror(Mirror(70, 3, 3), Data(3, 0x22));
        Assert.True(log.TryTakeActive(out var batch));
        var bytes = Flatten(batch);
        Assert.True(batch.Segments.Count == 3); // head + two data buffers, not copied
        for (int cut = 0; cut <= bytes.Length; cut += 97)
            foreach (var seq in new[] { Split(bytes, cut), Split(bytes, cut, cut + 5, cut + 600) })
            {
                var cmd = Decode(seq);
                Assert.Equal(batch.Headers, cmd.Headers);
                Assert.Equal(Data(8, 0x11), cmd.DataOf(0).ToArray());
                Assert.Empty(cmd.DataOf(1).ToArray());
                Assert.Equal(Data(3, 0x22), cmd.DataOf(2).ToArray());
            }
        var worst = Decode(OneBytePerSegment(bytes));
        Assert.Equal(batch.Headers, worst.Headers);
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void A_header_whose_data_comes_in_two_parts_sends_them_in_order_without_copying()
    {
        var log = new CoherencyLog();
        var withBase = new CoherencyHeader(CoherencyHeaderKind.MirrorWithBase, 1, 1008, 8, 8, uint.MaxValue, 1);
        var block = Enumerable.Range(1, MirrorWire.BaseBlockBytes).Select(i => (byte)i).ToArray();
        var host = Data(8, 0x5A);
        Assert.Equal(block.Length + host.Length, (int)withBase.DataBytes);
        log.AppendMirror(withBase, block, host);
        log.AppendMirror(Mirror(64, 2, 2), Data(2, 0x66));
        // The parts must add up to what the header says.
        Assert.Throws<ArgumentException>(() => log.AppendMirror(withBase with { Sequence = 3 }, block, Data(7, 0)));
        Assert.Throws<ArgumentException>(() => log.AppendMirror(withBase with { Sequence = 3 }, default, host));
        Assert.True(log.TryTakeActive(out var batch));
        Assert.Equal(4, batch.Segments.Count); // head, the block, the host's bytes, the second image
        Assert.True(batch.Segments[1].Span == block.AsSpan());
        Assert.True(batch.Segments[2].Span == host.AsSpan()); // the caller's buffers themselves
        var cmd = Decode(batch.ToSequence());
        Assert.Equal(block.Concat(host).ToArray(), cmd.DataOf(0).ToArray());
        Assert.Equal(Data(2, 0x66), cmd.DataOf(1).ToArray());
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void Batch_command_needs_more_bytes_until_the_whole_parameter_list_arrived()
    {
        var log = new CoherencyLog();
        log.AppendMirror(Mirror(0, 2, 1), Data(2, 0x33));
        log.TryTakeActive(out var batch);
        var bytes = Flatten(batch!);
        for (int n = 0; n < bytes.Length; n++)
        {
            var reader = new SequenceReader<byte>(Split(bytes.AsSpan(0, n).ToArray(), n / 2));
            Assert.Equal(OperationStatus.NeedMoreData, CoherencyBatchCommand.TryDecode(ref reader, Region, out _, out _));
            Assert.Equal(0, reader.Consumed);
        }
        // Two batches back to back: the reader stops after the first.
        var two = bytes.Concat(bytes).ToArray();
        var r = new SequenceReader<byte>(Split(two, bytes.Length - 3));
        Assert.Equal(OperationStatus.Done, CoherencyBatchCommand.TryDecode(ref r, Region, out _, out _));
        Assert.Equal(bytes.Length, r.Consumed);
        Assert.Equal(OperationStatus.Done, CoherencyBatchCommand.TryDecode(ref r, Region, out _, out _));
        Assert.True(r.End);
    }

    public static TheoryData<string, int, string, WireError> Corruptions => new()
    {
        { "opcode", 0, "3c", WireError.BadType },
        { "mode", 1, "01", WireError.BadEnum },
        { "buffer id", 2, "00", WireError.BadEnum },
        { "control", 9, "01", WireError.NonZeroReserved },
        { "header count", 10, "00000003", WireError.BadLength },
        { "data bytes", 14, "00000600", WireError.BadLength },
        { "kind", 18, "05", WireError.BadEnum },
        { "header reserved", 20, "0001", WireError.NonZeroReserved },
        { "mirror blocks 0", 34, "00000000", WireError.BadBlockCount },
        { "blocks 33", 34, "00000021", WireError.BadBlockCount },
        { "crosses the 16 KiB element", 22, "0000001f", WireError.BadBlockCount },
        { "element outside region", 22, "00020000", WireError.OutsideRegion },
        { "valid mask misses a written sector", 38, "00000000", WireError.BadValidMask },
        { "invalidate with a mask", 70, "00000001", WireError.BadValidMask },
        { "sequence not increasing", 74, "0000000000000001", WireError.OutOfOrder },
    };

    [Theory]
    [Trait("Claim", "CC-3")]
    [MemberData(nameof(Corruptions))]
    public void Batch_command_decode_rejects(string what, int offset, string hex, WireError expected)
    {
        var headers = new[] { Mirror(0, 2, 5), Invalidate(32, 6) };
        var bytes = new byte[CoherencyBatchCommand.HeadBytes(2) + 1024];
        CoherencyBatchCommand.EncodeHead(1, headers, bytes);
        Hex(hex).CopyTo(bytes, offset);
        var reader = new SequenceReader<byte>(Split(bytes, 7, 40));
        Assert.Equal(OperationStatus.InvalidData, CoherencyBatchCommand.TryDecode(ref reader, Region, out var cmd, out var error));
        Assert.Null(cmd);
        Assert.True(expected == error, $"{what}: {error}");
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void Batch_round_trips_through_any_segmentation() =>
        Prop.ForAll(
            (from ops in Gen.ListOf(from k in Gen.Choose(0, 1) from s in Gen.Choose(0, 4000) from n in Gen.Choose(1, 32) select (kind: k, slot: s, blocks: n))
             from cut1 in Gen.Choose(0, 4000)
             from cut2 in Gen.Choose(0, 40000)
             select (ops, cut1, cut2)).ToArbitrary(),
            input =>
            {
                var log = new CoherencyLog();
                ulong seq = 10;
                foreach (var (kind, slot, blocks) in input.ops)
                {
                    uint element = (uint)slot * 32;
                    if (kind == 0) log.AppendMirror(Mirror(element, (uint)blocks, seq++), Data((uint)blocks, (byte)seq));
                    else log.AppendInvalidate(Invalidate(element, seq++));
                }
                if (!log.TryTakeActive(out var batch)) return input.ops.Count == 0;
                var bytes = Flatten(batch);
                var cmd = Decode(Split(bytes, input.cut1, input.cut2));
                for (int i = 0; i < cmd.Headers.Count; i++)
                    if (cmd.DataOf(i).Length != cmd.Headers[i].DataBytes) return false;
                return cmd.Headers.SequenceEqual(batch.Headers) && cmd.BatchNumber == batch.BatchNumber && bytes.Length == batch.TotalBytes;
            }).Check(Config.QuickThrowOnFailure.WithMaxTest(60));

    [Fact]
    [Trait("Claim", "CC-2")]
    public void Appends_fill_while_a_batch_is_in_flight_and_the_lists_swap_on_completion()
    {
        var log = new CoherencyLog();
        Assert.False(log.TryTakeActive(out _)); // nothing to send
        log.AppendMirror(Mirror(0, 1, 1), Data(1, 1));
        log.AppendMirror(Mirror(32, 1, 2), Data(1, 2));
        Assert.True(log.TryTakeActive(out var first));
        Assert.Equal([1UL, 2UL], first.Headers.Select(h => h.Sequence));
        Assert.Equal(0, log.FillingCount);
        Assert.True(log.IsActiveInFlight);

        log.AppendMirror(Mirror(64, 1, 3), Data(1, 3));
        Assert.Equal(1, log.FillingCount);
        Assert.False(log.TryTakeActive(out var none)); // no second active while one is in flight
        Assert.Null(none);
        Assert.Same(first, log.Active);

        log.AppendInvalidate(Invalidate(0, 4));
        Assert.Same(first, log.CompleteActive());
        Assert.False(log.IsActiveInFlight);
        Assert.True(log.TryTakeActive(out var second));
        Assert.Equal([3UL, 4UL], second.Headers.Select(h => h.Sequence));
        Assert.Equal(first.BatchNumber + 1, second.BatchNumber);
        Assert.Same(second, log.CompleteActive());
        Assert.Throws<InvalidOperationException>(() => log.CompleteActive());

        Assert.Equal(2, log.BatchesSent);
        Assert.Equal(2, log.BatchesCompleted);
        Assert.Equal(4, log.HeadersSent);
        Assert.Equal(1, log.InvalidationsSent);
        Assert.Equal(3 * 512, log.MirrorBytesSent);
    }

    [Fact]
    [Trait("Claim", "CC-2")]
    public void A_long_filling_list_goes_out_as_several_batches_in_order()
    {
        var log = new CoherencyLog(batchBytesMax: 64 << 10);
        for (uint i = 0; i < 10; i++) log.AppendMirror(Mirror(i * 32, 32, i + 1), Data(32, (byte)i));
        var sent = new List<ulong>();
        while (log.TryTakeActive(out var batch))
        {
            Assert.True(batch.TotalBytes <= 64 << 10);
            sent.AddRange(batch.Headers.Select(h => h.Sequence));
            log.CompleteActive();
        }
        Assert.Equal(Enumerable.Range(1, 10).Select(i => (ulong)i), sent);
        Assert.Equal(0, log.FillingCount);
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void A_mirror_header_carries_a_whole_image_whose_mask_lies_inside_the_carried_range()
    {
        static CoherencyHeader H(uint index, uint blocks, uint mask) => new(CoherencyHeaderKind.Mirror, 1, 64 + index % 32, blocks, index, mask, 1);
        Assert.Equal(WireError.None, H(32, 12, 0b1111_0000_1111).Validate(Region));          // a gap between two runs
        Assert.Equal(WireError.None, H(32, 32, uint.MaxValue).Validate(Region));
        Assert.Equal(WireError.BadValidMask, H(32, 4, 0b1_1111).Validate(Region));          // names a sector it does not carry
        Assert.Equal(WireError.BadValidMask, H(32, 4, 0b0111).Validate(Region));            // last carried sector not valid
        Assert.Equal(WireError.BadValidMask, H(33, 4, 0b1110 << 1).Validate(Region));       // first carried sector not valid
        Assert.Equal(WireError.BadValidMask, H(32, 4, 0).Validate(Region));
    }

    [Fact]
    [Trait("Claim", "CC-2")]
    public void Appends_must_carry_increasing_sequence_numbers_and_matching_data()
    {
        var log = new CoherencyLog();
        log.AppendMirror(Mirror(0, 1, 5), Data(1, 0));
        Assert.Throws<ArgumentException>(() => log.AppendMirror(Mirror(32, 1, 5), Data(1, 0)));
        Assert.Throws<ArgumentException>(() => log.AppendMirror(Mirror(32, 2, 6), Data(1, 0)));
        Assert.Throws<ArgumentException>(() => log.AppendMirror(Invalidate(32, 6), Data(1, 0)));
        Assert.Throws<ArgumentException>(() => log.AppendInvalidate(Mirror(32, 1, 6)));
        Assert.Throws<ArgumentException>(() => log.AppendMirror(Mirror(31, 2, 6) with { ValidMask = uint.MaxValue }, Data(2, 0)));
    }

    [Fact]
    [Trait("Claim", "CC-4")]
    public void An_invalidation_reaches_the_peer_before_a_later_mirror_of_the_same_element()
    {
        var log = new CoherencyLog();
        log.AppendMirror(Mirror(128, 32, 1, lba: 5000), Data(32, 0xAA));
        Assert.True(log.TryTakeActive(out _));
        // Flushed to make room for a read: the read's fill is not mirrored, so only the invalidation goes.
        log.AppendInvalidate(Invalidate(128, 2, lba: 5000));
        log.CompleteActive();
        Assert.True(log.TryTakeActive(out var batch));
        Assert.Equal([CoherencyHeaderKind.Invalidate], Decode(batch.ToSequence()).Headers.Select(h => h.Kind));
        log.CompleteActive();
        // Later the element is reused for another LBA: the mirror follows the invalidation.
        log.AppendMirror(Mirror(128, 8, 3, lba: 9000), Data(8, 0xBB));
        Assert.True(log.TryTakeActive(out batch));
        var cmd = Decode(batch.ToSequence());
        Assert.Equal([CoherencyHeaderKind.Mirror], cmd.Headers.Select(h => h.Kind));
        Assert.Equal(Data(8, 0xBB), cmd.DataOf(0).ToArray());
        Assert.Equal(1, log.InvalidationsSent);
        Assert.Equal(0, log.InvalidationsAbsorbed);
    }

    [Fact]
    [Trait("Claim", "CC-4")]
    public void An_invalidation_a_store_of_the_same_element_follows_in_the_batch_is_not_sent()
    {
        var log = new CoherencyLog();
        log.AppendMirror(Mirror(0, 1, 1), Data(1, 1));
        Assert.True(log.TryTakeActive(out _));
        // Evicted for a write that reuses the element (sequence 3): the store drops the old image at the peer.
        log.AppendInvalidate(Invalidate(128, 2, lba: 5000));
        log.AppendInvalidate(Invalidate(160, 3, lba: 6000)); // evicted for a read: nothing stores element 5
        log.AppendMirror(Mirror(128 + 8, 8, 4, lba: 9000 + 8), Data(8, 0xBB));
        log.AppendMirror(Mirror(64, 1, 5), Data(1, 2));
        log.CompleteActive();
        Assert.True(log.TryTakeActive(out var batch));
        var cmd = Decode(batch.ToSequence());
        Assert.Equal([3UL, 4UL, 5UL], cmd.Headers.Select(h => h.Sequence));
        Assert.Equal(CoherencyHeaderKind.Invalidate, cmd.Headers[0].Kind);
        Assert.Equal(Data(8, 0xBB), cmd.DataOf(1).ToArray());
        Assert.Equal(4, batch.Appends); // every append is carried out, the absorbed one too
        Assert.Equal(1, log.InvalidationsAbsorbed);
        Assert.Equal(1, log.InvalidationsSent);
        Assert.Equal(batch.TotalBytes, Flatten(batch).Length);
    }

    [Fact]
    [Trait("Claim", "CC-4")]
    public void An_invalidation_whose_store_falls_into_the_next_batch_is_sent()
    {
        // 64 KiB batches: the invalidation of element 9 ends the first, the store of element 9 starts the second.
        var log = new CoherencyLog(batchBytesMax: 64 << 10);
        ulong seq = 0;
        for (uint i = 0; i < 3; i++) log.AppendMirror(Mirror(i * 32, 32, ++seq), Data(32, (byte)i));
        log.AppendInvalidate(Invalidate(9 * 32, ++seq));
        log.AppendMirror(Mirror(9 * 32, 32, ++seq), Data(32, 9));
        log.AppendInvalidate(Invalidate(10 * 32, ++seq));
        log.AppendMirror(Mirror(10 * 32, 1, ++seq), Data(1, 10));
        var kinds = new List<(CoherencyHeaderKind, uint)>();
        int appends = 0;
        while (log.TryTakeActive(out var batch))
        {
            Assert.True(batch.TotalBytes <= 64 << 10);
            kinds.AddRange(Decode(batch.ToSequence()).Headers.Select(h => (h.Kind, h.ElementIndex / 32)));
            appends += batch.Appends;
            log.CompleteActive();
        }
        Assert.Equal(7, appends);
        Assert.Contains((CoherencyHeaderKind.Invalidate, 9u), kinds);
        Assert.DoesNotContain((CoherencyHeaderKind.Invalidate, 10u), kinds);
        Assert.Equal(1, log.InvalidationsAbsorbed);
        Assert.Equal(0, log.FillingCount);
    }

    [Fact]
    [Trait("Claim", "CC-5")]
    public void Periodic_flushes_send_nothing_the_log_stays_empty_and_takes_no_batch()
    {
        // A periodic destage is not an event of the log: the cache does not call it, so the
        // peer keeps its (now clean) mirror and no batch, header or byte crosses the link.
        var log = new CoherencyLog();
        log.AppendMirror(Mirror(0, 8, 1), Data(8, 1));
        log.TryTakeActive(out _);
        log.CompleteActive();
        long batches = log.BatchesSent, headers = log.HeadersSent, bytes = log.MirrorBytesSent;
        // ... the owner destages element 0 on its timer here; nothing is appended ...
        Assert.False(log.TryTakeActive(out _));
        Assert.Equal((batches, headers, bytes, 0L), (log.BatchesSent, log.HeadersSent, log.MirrorBytesSent, log.InvalidationsSent));
        Assert.DoesNotContain(typeof(CoherencyLog).GetMethods(), m => m.Name.Contains("Flush", StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public void Host_reference_block_has_every_field_at_its_offset_and_refuses_a_half_named_base()
    {
        var block = new HostReferenceBlock(new Duet.Core.HostDataReference(1, 0x0102030405060708, 0x1112131415161718, 0x2000), BaseElement: 5, KeepMask: 0xFF00);
        var b = new byte[MirrorWire.HostReferenceBytes];
        block.Encode(b);
        Assert.Equal("01000000 00002000 0102030405060708 1112131415161718 00000006 0000ff00".Replace(" ", ""), Convert.ToHexString(b).ToLowerInvariant());
        Assert.True(HostReferenceBlock.TryDecode(b, out var back));
        Assert.Equal(block, back);
        b[31] = 0; b[30] = 0; // a base element with nothing to keep
        Assert.False(HostReferenceBlock.TryDecode(b, out _));
        Assert.False(HostReferenceBlock.TryDecode(b.AsSpan(0, 31), out _));
    }

    [Fact]
    [Trait("Claim", "FO-3")]
    public void Host_reference_block_retire_flag_sits_in_byte_1_and_needs_a_base_element()
    {
        var host = new Duet.Core.HostDataReference(255, ulong.MaxValue, ulong.MaxValue, uint.MaxValue);
        // Retiring the replaced element with nothing kept: a base with a zero keep mask is valid with the flag.
        var retire = new HostReferenceBlock(host, BaseElement: int.MaxValue - 1, KeepMask: 0, RetiresBase: true);
        var b = new byte[MirrorWire.HostReferenceBytes];
        retire.Encode(b);
        Assert.Equal("ff010000 ffffffff ffffffffffffffff ffffffffffffffff 7fffffff 00000000".Replace(" ", ""), Convert.ToHexString(b).ToLowerInvariant());
        Assert.True(HostReferenceBlock.TryDecode(b, out var back));
        Assert.Equal(retire, back);
        // Keeping sectors and retiring the same element.
        var both = retire with { BaseElement = 0, KeepMask = 0x80000001 };
        both.Encode(b);
        Assert.True(HostReferenceBlock.TryDecode(b, out back));
        Assert.Equal(both, back);

        var bad = (byte[])b.Clone();
        bad[1] = 0x02; // an unknown flag
        Assert.False(HostReferenceBlock.TryDecode(bad, out _));
        bad = (byte[])b.Clone();
        bad[1] = 0x03;
        Assert.False(HostReferenceBlock.TryDecode(bad, out _));
        bad = new byte[MirrorWire.HostReferenceBytes];
        bad[1] = 0x01; // the flag without a base element
        Assert.False(HostReferenceBlock.TryDecode(bad, out _));
        bad[24] = 0x80; // a base element beyond int range
        Assert.False(HostReferenceBlock.TryDecode(bad, out _));
        Assert.ThrowsAny<Exception>(() => new HostReferenceBlock(host, RetiresBase: true).Encode(new byte[MirrorWire.HostReferenceBytes]));
    }

    [Fact]
    [Trait("Claim", "CC-3")]
    public void Base_block_has_its_fields_at_their_offsets_and_refuses_reserved_bits_and_a_missing_base()
    {
        var b = new byte[MirrorWire.BaseBlockBytes];
        new BaseBlock(5, RetiresBase: true).Encode(b);
        Assert.Equal("00000006 01000000".Replace(" ", ""), Convert.ToHexString(b).ToLowerInvariant());
        Assert.True(BaseBlock.TryDecode(b, out var back));
        Assert.Equal(new BaseBlock(5, true), back);
        new BaseBlock(int.MaxValue - 1, RetiresBase: false).Encode(b);
        Assert.Equal("7fffffff 00000000".Replace(" ", ""), Convert.ToHexString(b).ToLowerInvariant());
        Assert.True(BaseBlock.TryDecode(b, out back));
        Assert.Equal(new BaseBlock(int.MaxValue - 1, false), back);

        Assert.False(BaseBlock.TryDecode(new byte[MirrorWire.BaseBlockBytes], out _)); // base element + 1 = 0: none named
        var bad = (byte[])b.Clone(); bad[0] = 0x80; // beyond int range
        Assert.False(BaseBlock.TryDecode(bad, out _));
        bad = (byte[])b.Clone(); bad[4] = 0x02; // an unknown flag
        Assert.False(BaseBlock.TryDecode(bad, out _));
        bad = (byte[])b.Clone(); bad[7] = 0x01;
        Assert.False(BaseBlock.TryDecode(bad, out _));
        Assert.False(BaseBlock.TryDecode(b.AsSpan(0, 7), out _));
    }

    [Theory]
    [InlineData(8u, 8u, 0xFFFFFFFFu, WireError.None)]          // 4 KiB carried, the rest kept
    [InlineData(0u, 31u, 0xFFFFFFFFu, WireError.None)]         // all but the last sector carried
    [InlineData(31u, 1u, 0x80000001u, WireError.None)]         // one carried, one kept, a gap between
    [InlineData(8u, 8u, 0x0000FF00u, WireError.BadValidMask)]  // nothing kept: a plain mirror header
    [InlineData(8u, 8u, 0xFFFF7FFFu, WireError.BadValidMask)]  // a carried sector not valid
    [InlineData(0u, 32u, 0xFFFFFFFFu, WireError.BadValidMask)] // the whole element carried: nothing kept
    [InlineData(8u, 0u, 0xFFFFFFFFu, WireError.BadBlockCount)]
    [InlineData(30u, 3u, 0xFFFFFFFFu, WireError.BadBlockCount)] // past the element
    [Trait("Claim", "CC-3")]
    public void A_with_base_header_carries_only_valid_sectors_and_keeps_some(uint first, uint count, uint mask, WireError expected)
    {
        var h = new CoherencyHeader(CoherencyHeaderKind.MirrorWithBase, 1, 64 + first, count, 2 * 32 + first, mask, 9);
        Assert.Equal(expected, h.Validate(1 << 20));
        if (expected != WireError.None) return;
        Assert.Equal(MirrorWire.BaseBlockBytes + count * 512L, h.DataBytes);
        Assert.True(h.Stores);
        Assert.Equal(mask & ~h.CoveredMask, h.KeptMask);
        // In a batch it round-trips, its data (base block, then the sectors) framed by the header.
        var data = new byte[h.DataBytes];
        new BaseBlock(1, false).Encode(data);
        var head = new byte[CoherencyBatchCommand.HeadBytes(1)];
        CoherencyBatchCommand.EncodeHead(4, [h], head);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(head.Concat(data).ToArray()));
        Assert.Equal(OperationStatus.Done, CoherencyBatchCommand.TryDecode(ref reader, 1 << 20, out var batch, out var error));
        Assert.Equal(WireError.None, error);
        Assert.Equal(h, batch!.Headers.Single());
        Assert.Equal(data, batch.DataOf(0).ToArray());
    }
}
