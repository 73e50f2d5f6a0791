using System.Buffers;
using Duet.Interconnect.Wire;
using FsCheck;
using FsCheck.Fluent;

namespace Duet.HostProtocol.Tests;

[Trait("Claim", "FO-3")]
public class HostCodecTests
{
    static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));
    static string ToHex(ReadOnlySpan<byte> b) => Convert.ToHexString(b).ToLowerInvariant();

    static ReadOnlySequence<byte> OneBytePerSegment(byte[] bytes) =>
        SegmentSequence.Create([.. Enumerable.Range(0, bytes.Length).Select(i => (ReadOnlyMemory<byte>)bytes.AsMemory(i, 1))]);

    static ReadOnlySequence<byte> Split(byte[] bytes, int cut) =>
        SegmentSequence.Create([bytes.AsMemory(0, cut), bytes.AsMemory(cut)]);

    static HostRequest ReadRequest(byte[] bytes, out HostWireError error, out long consumed, int max = HostWire.PayloadBytesMax)
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        var status = HostCodec.TryReadRequest(ref reader, max, out var request, out error);
        consumed = reader.Consumed;
        Assert.NotEqual(OperationStatus.NeedMoreData, status);
        return request!;
    }

    const string WriteVector =
        "44485251" + "02" + "03" + "0000" + "0000000000000007" + "00000000000000aa" + "0001020304050607" +
        "0000000000001000" + "00000200" + "00000000";

    [Fact]
    public void Write_request_has_every_field_at_its_offset()
    {
        var payload = Enumerable.Range(0, 512).Select(i => (byte)i).ToArray();
        var r = new HostRequest(HostOpcode.Write, HostRequestFlags.Fua | HostRequestFlags.Multicast, 7, 0xAA, 0x0001020304050607, 4096, 512, payload);
        var b = HostCodec.EncodeRequest(r);
        Assert.Equal(48 + 512, b.Length);
        Assert.Equal(WriteVector, ToHex(b.AsSpan(0, 48)));
        Assert.Equal(payload, b[48..]);
        Assert.Equal(r, ReadRequest(b, out var error, out var consumed));
        Assert.Equal(HostWireError.None, error);
        Assert.Equal(b.Length, consumed);
    }

    [Fact]
    public void Hand_built_read_and_flush_decode()
    {
        var read = ReadRequest(Hex("44485251 01 04 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000200 00001000 00000000"), out var e1, out _);
        Assert.Equal(new HostRequest(HostOpcode.Read, HostRequestFlags.Forwarded, 1, 2, 3, 512, 4096, ReadOnlyMemory<byte>.Empty), read);
        Assert.Equal(HostWireError.None, e1);
        var flush = ReadRequest(Hex("44485251 03 00 0000 0000000000000001 0000000000000009 0000000000000003 0000000000000000 00000000 00000000"), out var e2, out _);
        Assert.Equal((HostOpcode.Flush, 9UL), (flush.Opcode, flush.HostTag));
        Assert.Equal(HostWireError.None, e2);
    }

    [Fact]
    public void Hello_and_hello_reply_have_every_field_at_its_offset()
    {
        var hello = new HostHello(0x0102030405060708, "vol");
        var b = new byte[HostCodec.HelloBytes(hello)];
        HostCodec.WriteHello(hello, b);
        Assert.Equal("44484849 0001 0003 0102030405060708 766f6c".Replace(" ", "", StringComparison.Ordinal), ToHex(b));
        var reader = new SequenceReader<byte>(OneBytePerSegment(b));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadHello(ref reader, out var back, out _));
        Assert.Equal(hello, back);

        var reply = new HostHelloReply(HostStatus.Ok, 1 << 20, 'B', 1, 512 * 1024);
        var r = new byte[HostWire.HelloReplyBytes];
        HostCodec.WriteHelloReply(reply, r);
        Assert.Equal("44484852 00000000 0000000000100000 42 01 0000 00080000".Replace(" ", "", StringComparison.Ordinal), ToHex(r));
        reader = new SequenceReader<byte>(Split(r, 9));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadHelloReply(ref reader, out var replyBack, out _));
        Assert.Equal(reply, replyBack);
    }

    [Fact]
    public void Completion_has_every_field_at_its_offset()
    {
        var c = new HostCompletion(0xAA, HostStatus.Ok, new byte[] { 1, 2 });
        Assert.Equal("44484350 00000000 00000000000000aa 00000002 00000000 0102".Replace(" ", "", StringComparison.Ordinal), ToHex(HostCodec.EncodeCompletion(c)));
        Assert.Equal("44484350 00000003 0000000000000005 00000000 00000000".Replace(" ", "", StringComparison.Ordinal),
            ToHex(HostCodec.EncodeCompletion(HostCompletion.Error(5, HostStatus.OutOfRange))));
        var bytes = HostCodec.EncodeCompletion(c);
        var reader = new SequenceReader<byte>(OneBytePerSegment(bytes));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadCompletion(ref reader, HostWire.PayloadBytesMax, out var back, out _));
        Assert.Equal(c, back);
    }

    [Fact]
    public void Frames_need_more_bytes_until_the_whole_frame_is_in_and_consume_nothing_meanwhile()
    {
        var b = HostCodec.EncodeRequest(new HostRequest(HostOpcode.Write, 0, 1, 2, 3, 0, 1024, new byte[1024]));
        for (int n = 0; n < b.Length; n += 37)
        {
            var reader = new SequenceReader<byte>(Split(b[..n], n / 2));
            Assert.Equal(OperationStatus.NeedMoreData, HostCodec.TryReadRequest(ref reader, HostWire.PayloadBytesMax, out _, out _));
            Assert.Equal(0, reader.Consumed);
        }
        var all = new SequenceReader<byte>(OneBytePerSegment(b));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadRequest(ref all, HostWire.PayloadBytesMax, out _, out _));
        Assert.True(all.End);
    }

    [Theory]
    // recoverable: the frame is skipped whole and its tag is reported
    [InlineData("44485251 01 80 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000200 00000000", HostWireError.BadFlags, 48)]
    [InlineData("44485251 01 00 0001 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000200 00000000", HostWireError.NonZeroReserved, 48)]
    [InlineData("44485251 01 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000200 00000001", HostWireError.NonZeroReserved, 48)]
    [InlineData("44485251 01 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000001 00000200 00000000", HostWireError.BadLength, 48)]
    [InlineData("44485251 01 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000000 00000000", HostWireError.BadLength, 48)]
    [InlineData("44485251 01 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000100 00000000", HostWireError.BadLength, 48)]
    [InlineData("44485251 03 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000200 00000000", HostWireError.BadLength, 48)]
    [InlineData("44485251 01 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00100000 00000000", HostWireError.BadLength, 48)]
    // framing lost: nothing consumed
    [InlineData("44485252 01 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000200 00000000", HostWireError.BadMagic, 0)]
    [InlineData("44485251 07 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00000200 00000000", HostWireError.BadOpcode, 0)]
    [InlineData("44485251 02 00 0000 0000000000000001 0000000000000002 0000000000000003 0000000000000000 00100000 00000000", HostWireError.TooLong, 0)]
    public void Malformed_requests_are_typed_errors(string hex, HostWireError expected, int consumedBytes)
    {
        var request = ReadRequest(Hex(hex), out var error, out var consumed);
        Assert.Equal(expected, error);
        Assert.Equal(consumedBytes, consumed);
        Assert.Equal(consumedBytes > 0, !error.LosesFraming());
        if (expected != HostWireError.BadMagic) Assert.Equal(2UL, request.HostTag);
    }

    [Fact]
    public void Garbage_is_refused_after_four_bytes()
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(Hex("47455420")));
        Assert.Equal(OperationStatus.InvalidData, HostCodec.TryReadRequest(ref reader, HostWire.PayloadBytesMax, out _, out var error));
        Assert.Equal(HostWireError.BadMagic, error);
    }

    [Theory]
    [InlineData("44484849 0001 0000 0000000000000001", HostWireError.BadText)]
    [InlineData("44484849 0001 0001 0000000000000001 ff", HostWireError.BadText)]
    [InlineData("44485251 0001 0001 0000000000000001 41", HostWireError.BadMagic)]
    public void Malformed_hellos_are_typed_errors(string hex, HostWireError expected)
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(Hex(hex)));
        Assert.Equal(OperationStatus.InvalidData, HostCodec.TryReadHello(ref reader, out _, out var error));
        Assert.Equal(expected, error);
    }

    [Fact]
    public void Malformed_completions_are_typed_errors()
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(Hex("44484350 000000ff 0000000000000001 00000000 00000000")));
        Assert.Equal(OperationStatus.InvalidData, HostCodec.TryReadCompletion(ref reader, HostWire.PayloadBytesMax, out _, out var error));
        Assert.Equal((HostWireError.BadEnum, 24L), (error, reader.Consumed));
        reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(Hex("44484350 00000001 0000000000000001 00000001 00000000 00")));
        Assert.Equal(OperationStatus.InvalidData, HostCodec.TryReadCompletion(ref reader, HostWire.PayloadBytesMax, out _, out error));
        Assert.Equal(HostWireError.BadLength, error);
    }

    [Fact]
    public void Default_ports_are_10811_to_10814()
    {
        Assert.Equal([10811, 10812, 10813, 10814], new[] { HostWire.DefaultPort('A', 0), HostWire.DefaultPort('A', 1), HostWire.DefaultPort('B', 0), HostWire.DefaultPort('B', 1) });
    }

    static readonly Gen<HostRequest> Requests =
        from op in Gen.Elements(HostOpcode.Read, HostOpcode.Write, HostOpcode.Flush)
        from flags in Gen.Choose(0, 7)
        from host in ArbMap.Default.GeneratorFor<ulong>()
        from tag in ArbMap.Default.GeneratorFor<ulong>()
        from ts in ArbMap.Default.GeneratorFor<ulong>()
        from sector in ArbMap.Default.GeneratorFor<uint>()
        from sectors in Gen.Choose(1, 16)
        from seed in ArbMap.Default.GeneratorFor<byte>()
        let length = op == HostOpcode.Flush ? 0u : (uint)sectors * 512
        select new HostRequest(op, (HostRequestFlags)flags, host, tag, ts, op == HostOpcode.Flush ? 0 : (ulong)sector * 512, length,
            op == HostOpcode.Write ? Enumerable.Range(0, (int)length).Select(i => (byte)(i ^ seed)).ToArray() : ReadOnlyMemory<byte>.Empty);

    [Fact]
    public void Requests_round_trip_in_any_segmentation() =>
        Prop.ForAll(Requests.ToArbitrary(), Gen.Choose(1, 47).ToArbitrary(), (r, cut) =>
        {
            var b = HostCodec.EncodeRequest(r);
            var reader = new SequenceReader<byte>(Split(b, cut));
            return HostCodec.TryReadRequest(ref reader, HostWire.PayloadBytesMax, out var back, out _) == OperationStatus.Done && reader.End && r.Equals(back);
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(200));

    [Fact]
    public void Completions_round_trip() =>
        Prop.ForAll(ArbMap.Default.GeneratorFor<ulong>().ToArbitrary(), Gen.Choose(0, 10).ToArbitrary(), Gen.Choose(0, 2048).ToArbitrary(), (tag, status, length) =>
        {
            var c = new HostCompletion(tag, (HostStatus)status, status == 0 ? new byte[length] : ReadOnlyMemory<byte>.Empty);
            var reader = new SequenceReader<byte>(Split(HostCodec.EncodeCompletion(c), 5));
            return HostCodec.TryReadCompletion(ref reader, HostWire.PayloadBytesMax, out var back, out _) == OperationStatus.Done && c.Equals(back);
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(200));

    [Fact]
    public void Hello_reply_flags_say_primary_and_read_only_and_unknown_flags_are_refused()
    {
        var reply = new HostHelloReply(HostStatus.Ok, 4096, 'A', 0, 512 * 1024, HostVolumeFlags.Primary | HostVolumeFlags.ReadOnly);
        var r = new byte[HostWire.HelloReplyBytes];
        HostCodec.WriteHelloReply(reply, r);
        Assert.Equal("44484852 00000000 0000000000001000 41 00 03 00 00080000".Replace(" ", "", StringComparison.Ordinal), ToHex(r));
        var reader = new SequenceReader<byte>(OneBytePerSegment(r));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadHelloReply(ref reader, out var back, out _));
        Assert.Equal(reply, back);

        r[HostWire.HelloReplyFlagsOffset] = 0x80;
        reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(r));
        Assert.Equal(OperationStatus.InvalidData, HostCodec.TryReadHelloReply(ref reader, out _, out var error));
        Assert.Equal(HostWireError.BadFlags, error);
    }

    [Fact]
    public void List_request_and_reply_round_trip_with_every_field_at_its_offset()
    {
        var q = new byte[HostWire.ListBytes];
        HostCodec.WriteList(q);
        Assert.Equal("44484c53 0001 0000".Replace(" ", "", StringComparison.Ordinal), ToHex(q));
        var reader = new SequenceReader<byte>(OneBytePerSegment(q));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadList(ref reader, out ushort version, out _));
        Assert.Equal(HostWire.Version, version);

        var list = new HostVolumeList(HostStatus.Ok, [new("vol0", 1 << 20, HostVolumeFlags.Primary), new("v\u00e9", 512, HostVolumeFlags.None)]);
        var bytes = HostCodec.EncodeListReply(list);
        Assert.Equal(("44484c52 00000000 00000002 0000001b" + "0000000000100000 01 04 766f6c30" + "0000000000000200 00 03 76c3a9").Replace(" ", "", StringComparison.Ordinal), ToHex(bytes));
        reader = new SequenceReader<byte>(Split(bytes, 7));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadListReply(ref reader, out var back, out _));
        Assert.Equal(list.Volumes, back!.Volumes);
        Assert.Equal(bytes.Length, reader.Consumed);
    }

    [Theory]
    [InlineData(16, HostWireError.BadLength)]      // the body claims more than the entries hold
    [InlineData(0x0f, HostWireError.BadLength)]    // a name runs past the body
    [InlineData(0xff, HostWireError.BadFlags)]     // unknown volume flags
    public void Malformed_list_replies_are_refused(int corruption, HostWireError expected)
    {
        var bytes = HostCodec.EncodeListReply(new HostVolumeList(HostStatus.Ok, [new("vol0", 1 << 20, HostVolumeFlags.None)]));
        switch (corruption)
        {
            case 16: bytes[HostWire.ListReplyCountOffset + 3] = 2; break;
            case 0x0f: bytes[HostWire.ListReplyHeaderBytes + 9] = 0x0f; break;
            default: bytes[HostWire.ListReplyHeaderBytes + 8] = 0xff; break;
        }
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.Equal(OperationStatus.InvalidData, HostCodec.TryReadListReply(ref reader, out _, out var error));
        Assert.Equal(expected, error);
    }
}
