using System.Buffers;
using Duet.Interconnect.Wire;
using FsCheck;
using FsCheck.Fluent;
using static Duet.Interconnect.Tests.TestBytes;

namespace Duet.Interconnect.Tests;

public class DuetMessageTests
{
    static byte[] Encode<T>(T message) where T : IDuetMessage<T>
    {
        var b = new byte[DuetFrame.EncodedBytes(message)];
        Assert.Equal(b.Length, DuetFrame.Encode(message, b));
        return b;
    }

    /// <summary>Decodes from one span, from a 3-way split sequence and from one byte per segment; all must agree.</summary>
    static T RoundTrip<T>(T message) where T : IDuetMessage<T>
    {
        var b = Encode(message);
        Assert.Equal(OperationStatus.Done, DuetFrame.TryDecode<T>(b, out var fromSpan, out var consumed, out var error));
        Assert.Equal(WireError.None, error);
        Assert.Equal(b.Length, consumed);
        foreach (var seq in new[] { Split(b, 1, 7, b.Length - 1), OneBytePerSegment(b) })
        {
            var reader = new SequenceReader<byte>(seq);
            Assert.Equal(OperationStatus.Done, DuetFrame.TryDecode<T>(ref reader, out var fromSeq, out error));
            Assert.True(reader.End);
            Assert.Equal(fromSpan, fromSeq);
        }
        return fromSpan!;
    }

    [Fact]
    public void Heartbeat_has_the_documented_layout_and_round_trips()
    {
        var h = new Heartbeat(ControllerSide.B, LeaseHeld: true, Epoch: 7, TimestampTicks: 0x0102030405060708, LeaseExpiresTicks: -1);
        Assert.Equal("0101 0000 00000024 01 01 0000 0000000000000007 0102030405060708 ffffffffffffffff".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(h)));
        Assert.Equal(h, RoundTrip(h));
    }

    [Fact]
    public void Write_checkpoint_has_the_documented_layout_and_round_trips()
    {
        var c = new WriteCheckpoint(CheckpointPhase.Done, HostTag: 0xAABB, Volume: 3, Lba: 0x1_0000_0000, BlockCount: 8);
        Assert.Equal("0102 0000 00000020 02 03 0000 00000008 000000000000aabb 0000000100000000".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(c)));
        Assert.Equal(c, RoundTrip(c));
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public void Write_checkpoints_done_has_the_documented_layout_and_round_trips_long_lists()
    {
        var d = new WriteCheckpointsDone([0xAABB, 0x1_0000_0002]);
        Assert.Equal("010d 0000 00000020 00000002 00000000 000000000000aabb 0000000100000002".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(d)));
        Assert.Equal(d, RoundTrip(d));
        Assert.Equal(MessageKind.WriteCheckpointsDone, MessageClassifier.Classify(Encode(d)));
        var many = new WriteCheckpointsDone(Enumerable.Range(1, 5000).Select(i => (ulong)i << 16 | 3).ToArray());
        Assert.Equal(many, RoundTrip(many));
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public void Partial_sum_has_the_documented_layout_round_trips_and_rejects_a_damaged_sum_or_bad_fields()
    {
        var sum = new byte[PartialSumCheckpoint.SumBytes];
        new Random(3).NextBytes(sum);
        var m = new PartialSumCheckpoint(0x0000_0001_0002_0003, 7, 0x0102030405, 15, 0b110, sum);
        var b = Encode(m);
        Assert.Equal(8 + 40 + 4096, b.Length);
        Assert.Equal(("010f 0000 00001030 0000000100020003 07 000000 0000000f 0000000102030405 0000000000000006"
            + Duet.Core.Crc32C.Compute(sum).ToString("x8") + " 00000000").Replace(" ", "", StringComparison.Ordinal), ToHex(b.AsSpan(0, 48).ToArray()));
        Assert.Equal(sum, b.AsSpan(48).ToArray());
        Assert.Equal(m, RoundTrip(m));
        Assert.Equal(MessageKind.PartialSum, MessageClassifier.Classify(b));

        static WireError Decode(byte[] bytes) => PartialSumCheckpoint.TryDecode(bytes, out _, out _, out var e) == OperationStatus.Done ? WireError.None : e;
        var damaged = b.ToArray();
        damaged[^1] ^= 1; // the sum no longer matches its CRC
        Assert.Equal(WireError.BadChecksum, Decode(damaged));
        var reserved = b.ToArray();
        reserved[8 + 9] = 1;
        Assert.Equal(WireError.NonZeroReserved, Decode(reserved));
        var noneUnchanged = b.ToArray();
        noneUnchanged.AsSpan(8 + 24, 8).Clear();
        Assert.Equal(WireError.BadLba, Decode(noneUnchanged));
        var negativeRow = b.ToArray();
        negativeRow[8 + 12] = 0x80;
        Assert.Equal(WireError.BadLba, Decode(negativeRow));
        // A body a byte short, with its length saying so.
        var shortBody = b.AsSpan(0, b.Length - 1).ToArray();
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(shortBody.AsSpan(4), (uint)shortBody.Length);
        Assert.Equal(WireError.BadLength, Decode(shortBody));
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public void Partial_sums_released_has_the_documented_layout_round_trips_and_rejects_bad_fields()
    {
        var m = new PartialSumsReleased(0x0000_0001_0002_0003, 7, 0x0102030405);
        var b = Encode(m);
        Assert.Equal("0110 0000 00000020 0000000100020003 07 00000000000000 0000000102030405".Replace(" ", "", StringComparison.Ordinal), ToHex(b));
        Assert.Equal(m, RoundTrip(m));
        Assert.Equal(MessageKind.PartialSumsReleased, MessageClassifier.Classify(b));
        Assert.Equal(new PartialSumsReleased(ulong.MaxValue, 0xFF, long.MaxValue), RoundTrip(new PartialSumsReleased(ulong.MaxValue, 0xFF, long.MaxValue)));

        static WireError Decode(byte[] bytes) => PartialSumsReleased.TryDecode(bytes, out _, out _, out var e) == OperationStatus.Done ? WireError.None : e;
        var reserved = b.ToArray();
        reserved[8 + 15] = 1;
        Assert.Equal(WireError.NonZeroReserved, Decode(reserved));
        var negative = b.ToArray();
        negative[8 + 16] = 0x80;
        Assert.Equal(WireError.BadLba, Decode(negative));
        var shortBody = b.AsSpan(0, b.Length - 1).ToArray();
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(shortBody.AsSpan(4), (uint)shortBody.Length);
        Assert.Equal(WireError.BadLength, Decode(shortBody));
    }

    [Fact]
    [Trait("Claim", "FO-4")]
    public void Handshake_batch_has_the_documented_layout_and_round_trips_every_phase_and_field_extreme()
    {
        var b = new HandshakeBatch([
            new HandshakeStep(HandshakePhase.PrimaryReady, 0, 0x0102030405060708, 0xAABB),
            new HandshakeStep(HandshakePhase.Completed, 0xFF, ulong.MaxValue, ulong.MaxValue, Status: 0x0A),
        ]);
        Assert.Equal(("010e 0000 00000038 00000002 00000000 01 00 00 00 0102030405060708 000000000000aabb"
            + " 04 ff 0a 00 ffffffffffffffff ffffffffffffffff").Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(b)));
        Assert.Equal(b, RoundTrip(b));
        Assert.Equal(MessageKind.HandshakeBatch, MessageClassifier.Classify(Encode(b)));
        foreach (var phase in new[] { HandshakePhase.PrimaryReady, HandshakePhase.SecondaryReady, HandshakePhase.PrimaryAck, HandshakePhase.Completed })
        {
            var one = new HandshakeBatch([new HandshakeStep(phase, 1, 2, 3)]);
            Assert.Equal(one, RoundTrip(one));
        }
        var many = new HandshakeBatch(Enumerable.Range(0, 5000).Select(i => new HandshakeStep(HandshakePhase.PrimaryAck, (byte)i, (ulong)i * 7, (ulong)i)).ToArray());
        Assert.Equal(many, RoundTrip(many));
    }

    [Fact]
    [Trait("Claim", "FO-4")]
    public void Only_steps_without_a_name_timestamp_or_data_fit_a_batch_and_they_come_back_as_the_same_step()
    {
        var frame = new byte[] { 1, 2, 3 };
        var ready = new HandshakeMessage(HandshakePhase.SecondaryReady, 1, 5, 6, 0x1234, "vol0", default);
        var done = new HandshakeMessage(HandshakePhase.Completed, 1, 5, 6, 0x1234, "vol0", default) { Status = 3 };
        Assert.True(HandshakeStep.Fits(ready));
        Assert.True(HandshakeStep.Fits(done));
        Assert.False(HandshakeStep.Fits(done with { Data = frame }));
        Assert.False(HandshakeStep.Fits(new HandshakeMessage(HandshakePhase.ForwardedFrame, 1, 5, 6, 0x1234, "vol0", frame)));
        var back = HandshakeStep.Of(done).ToMessage();
        Assert.Equal((done.Phase, done.Unit, done.HostId, done.HostTag, done.Status), (back.Phase, back.Unit, back.HostId, back.HostTag, back.Status));
        Assert.Equal("", back.Volume);
        Assert.True(back.Data.IsEmpty);
    }

    [Fact]
    public void Destaged_notice_round_trips_empty_and_long_lists()
    {
        Assert.Equal("010300000000000c00000000", ToHex(Encode(new DestagedNotice([]))));
        Assert.Equal(new DestagedNotice([]), RoundTrip(new DestagedNotice([])));
        var many = new DestagedNotice(Enumerable.Range(0, 5000).Select(i => (uint)i * 32).ToArray());
        Assert.Equal(many, RoundTrip(many));
    }

    [Fact]
    public void Forwarded_request_and_response_round_trip()
    {
        var r = new ForwardedRequest(42, ForwardedOp.Write, "vol-é", 1 << 20, 65536, Fua: true);
        var b = Encode(r);
        Assert.Equal("0104 0000 00000026 000000000000002a 02 01 0006 0000000000100000 00010000".Replace(" ", "", StringComparison.Ordinal), ToHex(b)[..64]);
        Assert.Equal(r, RoundTrip(r));
        foreach (ForwardedOp op in Enum.GetValues<ForwardedOp>()) Assert.Equal(r with { Op = op, Fua = false }, RoundTrip(r with { Op = op, Fua = false }));
        var answer = new ForwardedResponse(42, 5, 0);
        Assert.Equal("0105 0000 00000020 000000000000002a 00000005 00000000 ffffffffffffffff".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(answer)));
        Assert.Equal(answer, RoundTrip(answer));
        // A medium error names the volume's first unreadable sector (AW-5: the asker's sense carries it).
        var medium = new ForwardedResponse(43, 61, 0, ErrorLba: 0x1_0000_0008);
        Assert.Equal("0105 0000 00000020 000000000000002b 0000003d 00000000 0000000100000008".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(medium)));
        Assert.Equal(medium, RoundTrip(medium));
        // A peer from before the field sends a 16-byte body: it names no sector.
        Assert.Equal(OperationStatus.Done, ForwardedResponse.TryDecode(Hex("0105 0000 00000018 000000000000002a 0000003d 00000000"), out var old, out _, out _));
        Assert.Equal(new ForwardedResponse(42, 61, 0), old);
        Assert.Equal(-1, old.ErrorLba);
    }

    [Fact]
    public void Scsi_state_update_carries_an_opaque_blob()
    {
        var s = new ScsiStateUpdate(ScsiStateKind.Alua, new byte[] { 1, 2, 3 });
        Assert.Equal("010700000000000f02000000010203", ToHex(Encode(s)));
        Assert.Equal(s, RoundTrip(s));
        Assert.Equal(new ScsiStateUpdate(ScsiStateKind.Reservations, Array.Empty<byte>()), RoundTrip(new ScsiStateUpdate(ScsiStateKind.Reservations, Array.Empty<byte>())));
        // A logical unit reset: the volume's name (empty: every volume).
        var reset = new ScsiStateUpdate(ScsiStateKind.UnitReset, "vol0"u8.ToArray());
        Assert.Equal("010700000000001003000000766f6c30", ToHex(Encode(reset)));
        Assert.Equal(reset, RoundTrip(reset));
    }

    [Theory]
    [InlineData("0101 0000 00000024 02 01 0000 0000000000000007 0102030405060708 ffffffffffffffff", WireError.BadEnum)]
    [InlineData("0101 0000 00000024 01 03 0000 0000000000000007 0102030405060708 ffffffffffffffff", WireError.NonZeroReserved)]
    [InlineData("0101 0001 00000024 01 01 0000 0000000000000007 0102030405060708 ffffffffffffffff", WireError.NonZeroReserved)]
    [InlineData("0101 0000 00000023 01 01 0000 0000000000000007 0102030405060708 ffffffffffffff", WireError.BadLength)]
    [InlineData("0101 0000 00000007", WireError.BadLength)]
    [InlineData("0101 0000 00100001", WireError.BadLength)]
    [InlineData("0102 0000 00000024 01 01 0000 0000000000000007 0102030405060708 ffffffffffffffff", WireError.BadType)]
    [InlineData("00ff 0000 00000024 01 01 0000 0000000000000007 0102030405060708 ffffffffffffffff", WireError.BadType)]
    public void Heartbeat_decode_rejects(string hex, WireError expected)
    {
        Assert.Equal(OperationStatus.InvalidData, Heartbeat.TryDecode(Hex(hex), out _, out _, out var error));
        Assert.Equal(expected, error);
    }

    [Theory]
    [InlineData("0102 0000 00000020 00 03 0000 00000008 000000000000aabb 0000000100000000", WireError.BadEnum)]
    [InlineData("0102 0000 00000020 03 03 0000 00000008 000000000000aabb 0000000100000000", WireError.BadEnum)]
    [InlineData("0102 0000 00000020 01 03 0100 00000008 000000000000aabb 0000000100000000", WireError.NonZeroReserved)]
    [InlineData("0103 0000 00000010 00000002 00000001", WireError.BadLength)]
    [InlineData("010d 0000 00000010 00000000 00000000", WireError.BadLength)]
    [InlineData("010d 0000 00000018 00000002 00000000 000000000000aabb", WireError.BadLength)]
    [InlineData("010d 0000 00000018 00000001 00000001 000000000000aabb", WireError.NonZeroReserved)]
    [InlineData("010e 0000 00000010 00000000 00000000", WireError.BadLength)]
    [InlineData("010e 0000 00000024 00000002 00000000 01 00 00 00 0102030405060708 000000000000aabb", WireError.BadLength)]
    [InlineData("010e 0000 00000024 00000001 00000001 01 00 00 00 0102030405060708 000000000000aabb", WireError.NonZeroReserved)]
    [InlineData("010e 0000 00000024 00000001 00000000 00 00 00 00 0102030405060708 000000000000aabb", WireError.BadEnum)]
    [InlineData("010e 0000 00000024 00000001 00000000 05 00 00 00 0102030405060708 000000000000aabb", WireError.BadEnum)]
    [InlineData("010e 0000 00000024 00000001 00000000 01 00 01 00 0102030405060708 000000000000aabb", WireError.NonZeroReserved)]
    [InlineData("010e 0000 00000024 00000001 00000000 04 00 01 01 0102030405060708 000000000000aabb", WireError.NonZeroReserved)]
    [InlineData("0104 0000 00000020 000000000000002a 06 00 0000 0000000000000000 00000000", WireError.BadEnum)]
    [InlineData("0104 0000 00000020 000000000000002a 01 02 0000 0000000000000000 00000000", WireError.NonZeroReserved)]
    [InlineData("0104 0000 00000020 000000000000002a 01 00 0000 0000000000000000 00000000", WireError.BadText)]
    [InlineData("0104 0000 00000021 000000000000002a 01 00 0001 0000000000000000 00000000 ff", WireError.BadText)]
    [InlineData("0104 0000 00000021 000000000000002a 01 00 0002 0000000000000000 00000000 41", WireError.BadLength)]
    [InlineData("0105 0000 00000018 000000000000002a ffffffff 00000000", WireError.BadEnum)]
    [InlineData("0105 0000 00000020 000000000000002a ffffffff 00000000 ffffffffffffffff", WireError.BadEnum)]
    [InlineData("0105 0000 00000020 000000000000002a 0000003d 00000000 8000000000000000", WireError.BadLba)]
    [InlineData("0105 0000 0000001c 000000000000002a 0000003d 00000000 00000000", WireError.BadLength)]
    [InlineData("0107 0000 0000000c 04 000000", WireError.BadEnum)]
    [InlineData("0107 0000 0000000c 01 000100", WireError.NonZeroReserved)]
    public void Other_Duet_messages_reject_malformed_bodies(string hex, WireError expected)
    {
        var b = Hex(hex);
        var status = MessageClassifier.Classify(b) switch
        {
            MessageKind.WriteCheckpoint => WriteCheckpoint.TryDecode(b, out _, out _, out var e) is var s ? (s, e) : default,
            MessageKind.DestagedNotice => DestagedNotice.TryDecode(b, out _, out _, out var e) is var s ? (s, e) : default,
            MessageKind.WriteCheckpointsDone => WriteCheckpointsDone.TryDecode(b, out _, out _, out var e) is var s ? (s, e) : default,
            MessageKind.HandshakeBatch => HandshakeBatch.TryDecode(b, out _, out _, out var e) is var s ? (s, e) : default,
            MessageKind.ForwardedRequest => ForwardedRequest.TryDecode(b, out _, out _, out var e) is var s ? (s, e) : default,
            MessageKind.ForwardedResponse => ForwardedResponse.TryDecode(b, out _, out _, out var e) is var s ? (s, e) : default,
            MessageKind.ScsiStateUpdate => ScsiStateUpdate.TryDecode(b, out _, out _, out var e) is var s ? (s, e) : default,
            var k => throw new InvalidOperationException(k.ToString()),
        };
        Assert.Equal((OperationStatus.InvalidData, expected), status);
    }

    [Fact]
    [Trait("Claim", "AW-6")]
    public void Power_fail_notice_has_the_documented_layout_and_round_trips()
    {
        var began = new PowerFailNotice(PowerFailPhase.Began, PowerFailScope.Pair, WindowExpired: false, WindowMs: 5000, DirtyElements: 0, LogRecords: 0);
        Assert.Equal("010b 0000 00000018 01 02 00 00 00001388 00000000 00000000".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(began)));
        Assert.Equal(began, RoundTrip(began));
        var done = new PowerFailNotice(PowerFailPhase.Done, PowerFailScope.Controller, WindowExpired: true, WindowMs: 250, DirtyElements: 0x01020304, LogRecords: 7);
        Assert.Equal("010b 0000 00000018 02 01 01 00 000000fa 01020304 00000007".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(done)));
        Assert.Equal(done, RoundTrip(done));
    }

    [Theory]
    [Trait("Claim", "AW-6")]
    [InlineData("010b 0000 00000018 00 02 00 00 00001388 00000000 00000000", WireError.BadEnum)]
    [InlineData("010b 0000 00000018 03 02 00 00 00001388 00000000 00000000", WireError.BadEnum)]
    [InlineData("010b 0000 00000018 01 00 00 00 00001388 00000000 00000000", WireError.BadEnum)]
    [InlineData("010b 0000 00000018 02 03 00 00 00001388 00000000 00000000", WireError.BadEnum)]
    [InlineData("010b 0000 00000018 02 02 02 00 00001388 00000000 00000000", WireError.NonZeroReserved)]
    [InlineData("010b 0000 00000018 02 02 00 01 00001388 00000000 00000000", WireError.NonZeroReserved)]
    [InlineData("010b 0000 00000018 01 02 01 00 00001388 00000000 00000000", WireError.NonZeroReserved)]
    [InlineData("010b 0000 00000018 01 02 00 00 00001388 00000001 00000000", WireError.NonZeroReserved)]
    [InlineData("010b 0000 00000018 01 02 00 00 00001388 00000000 00000001", WireError.NonZeroReserved)]
    [InlineData("010b 0000 00000014 01 02 00 00 00001388 00000000", WireError.BadLength)]
    public void Power_fail_notice_decode_rejects(string hex, WireError expected)
    {
        Assert.Equal(OperationStatus.InvalidData, PowerFailNotice.TryDecode(Hex(hex), out _, out _, out var error));
        Assert.Equal(expected, error);
    }

    [Fact]
    public void Duet_messages_need_more_bytes_until_the_declared_length_arrived()
    {
        var b = Encode(new DestagedNotice([1, 2, 3]));
        for (int n = 0; n < b.Length; n++)
        {
            Assert.Equal(OperationStatus.NeedMoreData, DestagedNotice.TryDecode(b.AsSpan(0, n), out _, out var consumed, out _));
            Assert.Equal(0, consumed);
            var reader = new SequenceReader<byte>(Split(b.AsSpan(0, n).ToArray(), n / 3, n / 2));
            Assert.Equal(OperationStatus.NeedMoreData, DestagedNotice.TryDecode(ref reader, out _, out _));
            Assert.Equal(0, reader.Consumed);
        }
    }

    [Fact]
    [Trait("Claim", "AW-1")]
    public void Host_tag_entries_have_the_documented_layout_and_round_trip()
    {
        var one = new HostTagEntries([new HostTagWireEntry(Unit: 1, HostId: 0x1122334455667788, HostTag: 0x0003_0000_0000_002a, Digest: 0xCAFEF00D, Status: 5, Sequence: 4097)]);
        Assert.Equal(("010c 0000 00000030 0001 00 0000000000" +
                      "01 05 0000 cafef00d 0000000000001001 1122334455667788 000300000000002a").Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(one)));
        Assert.Equal(one, RoundTrip(one));
        Assert.Equal(MessageKind.HostTagEntries, MessageClassifier.Classify(Encode(one)));

        var resend = new HostTagEntries([.. Enumerable.Range(1, HostTagEntries.EntriesMax).Select(i => new HostTagWireEntry((byte)(i % 2), 7, (ulong)i, (uint)i, 0, (ulong)(i * 3)))], Resend: true);
        Assert.Equal(8 + 8 + 32 * HostTagEntries.EntriesMax, Encode(resend).Length);
        Assert.Equal(resend, RoundTrip(resend));
    }

    [Theory]
    [Trait("Claim", "AW-1")]
    [InlineData("010c 0000 00000010 0000 00 0000000000", WireError.BadLength)]                     // no entries
    [InlineData("010c 0000 00000010 0201 00 0000000000", WireError.TooManyEntries)]                // 513
    [InlineData("010c 0000 00000010 0002 00 0000000000", WireError.BadLength)]                     // says 2, has none
    [InlineData("010c 0000 00000030 0001 02 0000000000 01 05 0000 cafef00d 0000000000001001 1122334455667788 000300000000002a", WireError.NonZeroReserved)] // unknown flag
    [InlineData("010c 0000 00000030 0001 00 0000000100 01 05 0000 cafef00d 0000000000001001 1122334455667788 000300000000002a", WireError.NonZeroReserved)]
    [InlineData("010c 0000 00000030 0001 00 0000000000 01 05 0001 cafef00d 0000000000001001 1122334455667788 000300000000002a", WireError.NonZeroReserved)]
    [InlineData("010c 0000 00000030 0001 00 0000000000 01 05 0000 cafef00d 0000000000000000 1122334455667788 000300000000002a", WireError.OutOfOrder)] // sequence 0
    [InlineData("010c 0000 00000050 0002 00 0000000000 01 05 0000 cafef00d 0000000000000002 1122334455667788 000300000000002a" +
                                                    " 01 05 0000 cafef00d 0000000000000002 1122334455667788 000300000000002b", WireError.OutOfOrder)] // not increasing
    public void Host_tag_entries_decode_rejects(string hex, WireError expected)
    {
        Assert.Equal(OperationStatus.InvalidData, HostTagEntries.TryDecode(Hex(hex), out _, out _, out var error));
        Assert.Equal(expected, error);
    }

    [Fact]
    [Trait("Claim", "CC-1")]
    public void Pair_hello_carries_the_nvram_format_and_reads_an_older_hello_as_format_0()
    {
        var hello = new PairHello('B', SessionId: 0x0102030405060708, NvramBytes: 1L << 28, ElementsPerRegion: 8141, ElementBytes: 16384, NvramFormat: 3);
        Assert.Equal("0108 0000 00000028 42 000000 00000003 0102030405060708 0000000010000000 00001fcd 00004000".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(hello)));
        Assert.Equal(hello, RoundTrip(hello));
        var older = Hex("0108 0000 00000028 42 000000 00000000 0102030405060708 0000000010000000 00001fcd 00004000");
        Assert.Equal(OperationStatus.Done, PairHello.TryDecode(older, out var decoded, out _, out _));
        Assert.Equal(0u, decoded.NvramFormat);
        var reserved = Hex("0108 0000 00000028 42 000100 00000003 0102030405060708 0000000010000000 00001fcd 00004000");
        Assert.Equal(OperationStatus.InvalidData, PairHello.TryDecode(reserved, out _, out _, out var error));
        Assert.Equal(WireError.NonZeroReserved, error);
    }

    [Fact]
    public void Heartbeats_round_trip() =>
        Prop.ForAll(
            (from side in Gen.Elements(ControllerSide.A, ControllerSide.B)
             from lease in ArbMap.Default.GeneratorFor<bool>()
             from epoch in ArbMap.Default.GeneratorFor<ulong>()
             from ts in ArbMap.Default.GeneratorFor<long>()
             from exp in ArbMap.Default.GeneratorFor<long>()
             select new Heartbeat(side, lease, epoch, ts, exp)).ToArbitrary(),
            h => RoundTrip(h) == h).Check(Config.QuickThrowOnFailure.WithMaxTest(100));
}

public class MessageClassifierTests
{
    [Theory]
    [InlineData("3c", MessageKind.Notification)]
    [InlineData("a0 32 00 05 12 34 00 00 00 01 00 00", MessageKind.SmallWrite)]
    [InlineData("b0", MessageKind.SmallWrite)]
    [InlineData("0001 0400", MessageKind.Metadata)]
    [InlineData("0002 0010", MessageKind.Status)]
    [InlineData("3b 02 d0", MessageKind.CoherencyBatch)]
    [InlineData("0101", MessageKind.Heartbeat)]
    [InlineData("0102", MessageKind.WriteCheckpoint)]
    [InlineData("0103", MessageKind.DestagedNotice)]
    [InlineData("0104", MessageKind.ForwardedRequest)]
    [InlineData("0105", MessageKind.ForwardedResponse)]
    [InlineData("0106", MessageKind.ArrayTableUpdate)]
    [InlineData("0107", MessageKind.ScsiStateUpdate)]
    [InlineData("", MessageKind.Unknown)]
    [InlineData("00", MessageKind.Unknown)]
    [InlineData("0000", MessageKind.Unknown)]
    [InlineData("0003", MessageKind.Unknown)]
    [InlineData("0100", MessageKind.Unknown)]
    [InlineData("0108", MessageKind.PairHello)]
    [InlineData("0109", MessageKind.HostHandshake)]
    [InlineData("010a", MessageKind.ReservationState)]
    [InlineData("010b", MessageKind.PowerFail)]
    [InlineData("010c", MessageKind.HostTagEntries)]
    [InlineData("010d", MessageKind.WriteCheckpointsDone)]
    [InlineData("010e", MessageKind.HandshakeBatch)]
    [InlineData("010f", MessageKind.PartialSum)]
    [InlineData("0110", MessageKind.PartialSumsReleased)]
    [InlineData("0111", MessageKind.Unknown)]
    [InlineData("a1", MessageKind.Unknown)]
    [InlineData("ff ff", MessageKind.Unknown)]
    public void Classifies_by_first_bytes(string hex, MessageKind expected) =>
        Assert.Equal(expected, MessageClassifier.Classify(TestBytes.Hex(hex)));

    [Fact]
    public void Every_encoder_output_classifies_as_its_own_kind()
    {
        var b = new byte[1024];
        new NotificationMirrorMessage().Encode(b);
        Assert.Equal(MessageKind.Notification, MessageClassifier.Classify(b));
        new StatusMessage(1, MirrorStatusCode.Ok, 1).Encode(b);
        Assert.Equal(MessageKind.Status, MessageClassifier.Classify(b));
        MetadataMirrorMessage.Split(0, 1, 1, 2, 0, 8, [0u])[0].Encode(b);
        Assert.Equal(MessageKind.Metadata, MessageClassifier.Classify(b));
        SmallWriteMirrorMessage.Create(0xB0, 0, 1, 0, 0, 0, 0).Encode(b);
        Assert.Equal(MessageKind.SmallWrite, MessageClassifier.Classify(b));
        CoherencyBatchCommand.EncodeHead(0, [], b);
        Assert.Equal(MessageKind.CoherencyBatch, MessageClassifier.Classify(b));
        new ForwardedResponse(1, 0, 0).Encode(b);
        Assert.Equal(MessageKind.ForwardedResponse, MessageClassifier.Classify(b));
        new ArrayTableUpdate(1, []).Encode(b);
        Assert.Equal(MessageKind.ArrayTableUpdate, MessageClassifier.Classify(b));
        new PowerFailNotice(PowerFailPhase.Began, PowerFailScope.Pair, false, 5000, 0, 0).Encode(b);
        Assert.Equal(MessageKind.PowerFail, MessageClassifier.Classify(b));
    }
}
