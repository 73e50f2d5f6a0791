using System.Buffers;

namespace Duet.Nbd.Tests;

[Trait("Area", "Nbd")]
public class NbdCodecTests
{
    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, Segment? previous)
        {
            Memory = memory;
            if (previous is not null)
            {
                RunningIndex = previous.RunningIndex + previous.Memory.Length;
                previous.Next = this;
            }
        }
    }

    /// <summary>The bytes as a sequence cut at the given offsets (so every field can straddle segments).</summary>
    private static ReadOnlySequence<byte> Split(byte[] bytes, params int[] cuts)
    {
        var bounds = cuts.Where(c => c > 0 && c < bytes.Length).Distinct().Order().Append(bytes.Length).ToArray();
        if (bounds.Length == 1) return new ReadOnlySequence<byte>(bytes);
        Segment? first = null, last = null;
        int start = 0;
        foreach (var end in bounds)
        {
            last = new Segment(bytes.AsMemory(start, end - start), last);
            first ??= last;
            start = end;
        }
        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
    }

    /// <summary>Every way of cutting the bytes in two, and all 1-byte segments.</summary>
    private static IEnumerable<ReadOnlySequence<byte>> AllSplits(byte[] bytes)
    {
        yield return new ReadOnlySequence<byte>(bytes);
        for (int cut = 1; cut < bytes.Length; cut++) yield return Split(bytes, cut);
        yield return Split(bytes, Enumerable.Range(1, bytes.Length - 1).ToArray());
    }

    private static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", ""));

    // A READ request: flags FUA, type 0, cookie 0x0102030405060708, offset 0x1000, length 0x200.
    private static readonly byte[] ReadRequestBytes = Hex("25609513 0001 0000 0102030405060708 0000000000001000 00000200");

    [Fact]
    public void RequestHeaderDecodesFromHandBuiltBytesInAnySegmentation()
    {
        foreach (var sequence in AllSplits(ReadRequestBytes))
        {
            var reader = new SequenceReader<byte>(sequence);
            Assert.True(NbdCodec.TryReadRequest(ref reader, out var request));
            Assert.Equal(new NbdRequest(NbdCommandFlags.Fua, NbdCommand.Read, 0x0102030405060708, 0x1000, 0x200), request);
            Assert.Equal(28, reader.Consumed);
        }
    }

    [Fact]
    public void RequestHeaderNeedsAll28BytesAndConsumesNothingUntilThen()
    {
        for (int n = 0; n < ReadRequestBytes.Length; n++)
        {
            var reader = new SequenceReader<byte>(Split(ReadRequestBytes[..n], n / 2));
            Assert.False(NbdCodec.TryReadRequest(ref reader, out _));
            Assert.Equal(0, reader.Consumed);
        }
    }

    [Fact]
    public void RequestHeaderWithBadMagicIsATypedError()
    {
        var bytes = (byte[])ReadRequestBytes.Clone();
        bytes[0] = 0x26;
        var ex = Assert.Throws<NbdProtocolException>(() =>
        {
            var reader = new SequenceReader<byte>(Split(bytes, 2, 3));
            NbdCodec.TryReadRequest(ref reader, out _);
        });
        Assert.Equal(NbdProtocolError.BadRequestMagic, ex.Error);
    }

    [Fact]
    public void RequestEncodingIsTheInverseOfDecoding()
    {
        var bytes = new byte[NbdWire.RequestBytes];
        NbdCodec.WriteRequest(bytes, new NbdRequest(NbdCommandFlags.Fua, NbdCommand.Read, 0x0102030405060708, 0x1000, 0x200));
        Assert.Equal(ReadRequestBytes, bytes);
    }

    [Fact]
    public void SimpleReplyMatchesTheSpecLayout()
    {
        var bytes = new byte[NbdWire.SimpleReplyBytes];
        Assert.Equal(16, NbdCodec.WriteSimpleReply(bytes, NbdError.Inval, 0xAABBCCDDEEFF0011));
        Assert.Equal(Hex("67446698 00000016 AABBCCDDEEFF0011"), bytes);
        foreach (var sequence in AllSplits(bytes))
        {
            var reader = new SequenceReader<byte>(sequence);
            Assert.True(NbdCodec.TryReadReplyHeader(ref reader, out var header));
            Assert.False(header.IsStructured);
            Assert.Equal(NbdError.Inval, header.Error);
            Assert.Equal(0xAABBCCDDEEFF0011UL, header.Cookie);
        }
    }

    [Fact]
    public void OffsetDataChunkCarriesOffsetThenData()
    {
        var bytes = new byte[28];
        Assert.Equal(28, NbdCodec.WriteOffsetDataPrefix(bytes, NbdReplyFlags.Done, 7, 0x2000, 512));
        // magic, flags DONE, type OFFSET_DATA, cookie 7, length 8+512, offset 0x2000
        Assert.Equal(Hex("668e33ef 0001 0001 0000000000000007 00000208 0000000000002000"), bytes);
        foreach (var sequence in AllSplits(bytes))
        {
            var reader = new SequenceReader<byte>(sequence);
            Assert.True(NbdCodec.TryReadReplyHeader(ref reader, out var header));
            Assert.Equal(new NbdReplyHeader(true, NbdError.None, NbdReplyFlags.Done, NbdReplyType.OffsetData, 7, 520), header);
            Assert.Equal(20, reader.Consumed);
        }
    }

    [Fact]
    public void NoneErrorAndBlockStatusChunksMatchTheSpecLayout()
    {
        var none = new byte[20];
        NbdCodec.WriteStructuredReplyHeader(none, NbdReplyFlags.Done, NbdReplyType.None, 9, 0);
        Assert.Equal(Hex("668e33ef 0001 0000 0000000000000009 00000000"), none);

        var error = new byte[NbdCodec.MaxErrorChunkBytes];
        int n = NbdCodec.WriteErrorChunk(error, NbdReplyFlags.Done, 9, NbdError.Perm, "ro");
        // type 0x8001, length 6 + 2, error 1, message length 2, "ro"
        Assert.Equal(Hex("668e33ef 0001 8001 0000000000000009 00000008 00000001 0002 726f"), error[..n]);

        var status = new byte[NbdCodec.BlockStatusChunkBytes(2)];
        NbdCodec.WriteBlockStatusChunk(status, NbdReplyFlags.Done, 9, 1,
            [new NbdBlockDescriptor(4096, 0), new NbdBlockDescriptor(8192, (uint)(NbdAllocationState.Hole | NbdAllocationState.Zero))]);
        Assert.Equal(Hex("668e33ef 0001 0005 0000000000000009 00000014 00000001 00001000 00000000 00002000 00000003"), status);
    }

    [Fact]
    public void ErrorChunkMessageIsCutToTheLimitOnACharacterBoundary()
    {
        var bytes = new byte[NbdCodec.MaxErrorChunkBytes];
        int n = NbdCodec.WriteErrorChunk(bytes, NbdReplyFlags.Done, 1, NbdError.Io, new string('é', 2000));
        Assert.Equal(NbdCodec.MaxErrorChunkBytes, n);
        Assert.Equal(NbdCodec.MaxErrorMessageBytes, bytes[24] << 8 | bytes[25]);
    }

    [Fact]
    public void ReplyWithUnknownMagicIsATypedError()
    {
        var ex = Assert.Throws<NbdProtocolException>(() =>
        {
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(Hex("12345678 00000000 0000000000000000")));
            NbdCodec.TryReadReplyHeader(ref reader, out _);
        });
        Assert.Equal(NbdProtocolError.BadReplyMagic, ex.Error);
    }

    [Fact]
    public void GreetingIsNbdmagicIhaveoptAndFlags()
    {
        var bytes = new byte[NbdWire.GreetingBytes];
        NbdCodec.WriteGreeting(bytes, NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes);
        Assert.Equal("NBDMAGICIHAVEOPT"u8.ToArray(), bytes[..16]);
        Assert.Equal(new byte[] { 0, 3 }, bytes[16..]);
        foreach (var sequence in AllSplits(bytes))
        {
            var reader = new SequenceReader<byte>(sequence);
            Assert.True(NbdCodec.TryReadGreeting(ref reader, out var flags));
            Assert.Equal(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes, flags);
        }
    }

    [Fact]
    public void OptionHeaderDecodesInAnySegmentationAndRejectsBadMagic()
    {
        // IHAVEOPT, NBD_OPT_GO (7), 10 bytes of data
        var bytes = Hex("49484156454f5054 00000007 0000000a");
        foreach (var sequence in AllSplits(bytes))
        {
            var reader = new SequenceReader<byte>(sequence);
            Assert.True(NbdCodec.TryReadOptionHeader(ref reader, out var header));
            Assert.Equal(new NbdOptionHeader(NbdOption.Go, 10), header);
        }
        var partial = new SequenceReader<byte>(Split(bytes[..15], 5));
        Assert.False(NbdCodec.TryReadOptionHeader(ref partial, out _));

        bytes[7] = (byte)'X';
        var ex = Assert.Throws<NbdProtocolException>(() =>
        {
            var reader = new SequenceReader<byte>(Split(bytes, 3, 9));
            NbdCodec.TryReadOptionHeader(ref reader, out _);
        });
        Assert.Equal(NbdProtocolError.BadOptionMagic, ex.Error);
    }

    [Fact]
    public void OptionHagglingRepliesMatchTheSpecLayout()
    {
        var ack = new byte[20];
        NbdCodec.WriteOptionReplyHeader(ack, NbdOption.StructuredReply, NbdOptionReply.Ack, 0);
        Assert.Equal(Hex("0003e889045565a9 00000008 00000001 00000000"), ack);

        var info = new byte[32];
        NbdCodec.WriteInfoExport(info, NbdOption.Go, 0x100000, NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush);
        Assert.Equal(Hex("0003e889045565a9 00000007 00000003 0000000c 0000 0000000000100000 0005"), info);

        var sizes = new byte[34];
        NbdCodec.WriteInfoBlockSize(sizes, NbdOption.Info, 512, 4096, 32 << 20);
        Assert.Equal(Hex("0003e889045565a9 00000006 00000003 0000000e 0003 00000200 00001000 02000000"), sizes);

        var server = new byte[64];
        int n = NbdCodec.WriteServerReply(server, NbdOption.List, "vol", "d");
        Assert.Equal(Hex("0003e889045565a9 00000003 00000002 00000008 00000003 766f6c 64"), server[..n]);

        var context = new byte[64];
        n = NbdCodec.WriteMetaContextReply(context, NbdOption.SetMetaContext, 1, "base:allocation");
        Assert.Equal(Hex("0003e889045565a9 0000000a 00000004 00000013 00000001") .Concat("base:allocation"u8.ToArray()).ToArray(), context[..n]);

        var error = new byte[64];
        n = NbdCodec.WriteOptionReplyText(error, NbdOption.Go, NbdOptionReply.ErrUnknown, "no");
        Assert.Equal(Hex("0003e889045565a9 00000007 80000006 00000002 6e6f"), error[..n]);
        foreach (var sequence in AllSplits(error[..n]))
        {
            var reader = new SequenceReader<byte>(sequence);
            Assert.True(NbdCodec.TryReadOptionReplyHeader(ref reader, out var header));
            Assert.Equal(new NbdOptionReplyHeader(NbdOption.Go, NbdOptionReply.ErrUnknown, 2), header);
        }
    }

    [Fact]
    public void ExportNameReplyPadsWith124ZeroesUnlessNoZeroes()
    {
        var bytes = new byte[134];
        bytes.AsSpan().Fill(0xff);
        Assert.Equal(134, NbdCodec.WriteExportNameReply(bytes, 0x200, NbdTransmissionFlags.HasFlags, noZeroes: false));
        Assert.Equal(Hex("0000000000000200 0001"), bytes[..10]);
        Assert.All(bytes[10..], b => Assert.Equal(0, b));
        Assert.Equal(10, NbdCodec.WriteExportNameReply(bytes, 0x200, NbdTransmissionFlags.HasFlags, noZeroes: true));
    }

    [Fact]
    public void GoRequestDataDecodesNameAndInfoRequests()
    {
        // name "vol", 3 requests: NAME, BLOCK_SIZE, 0x7777 (unknown: ignored)
        var data = Hex("00000003 766f6c 0003 0001 0003 7777");
        var request = NbdCodec.ReadExportRequest(data);
        Assert.Equal(new NbdExportRequest("vol", WantsName: true, WantsDescription: false, WantsBlockSize: true), request);
        var encoded = new byte[64];
        int n = NbdCodec.WriteExportRequest(encoded, "vol", [NbdInfo.Name, NbdInfo.BlockSize, (NbdInfo)0x7777]);
        Assert.Equal(data, encoded[..n]);
    }

    [Theory]
    [InlineData("00000003 766f6c")]                 // no request count
    [InlineData("00000009 766f6c 0000")]            // name overruns the data
    [InlineData("00000003 766f6c 0002 0001")]       // 2 requests announced, 1 present
    [InlineData("00000001 ff 0000")]                // name is not UTF-8
    public void MalformedGoRequestDataIsATypedError(string hex)
    {
        var ex = Assert.Throws<NbdProtocolException>(() => NbdCodec.ReadExportRequest(Hex(hex)));
        Assert.Equal(NbdProtocolError.MalformedOptionData, ex.Error);
    }

    [Fact]
    public void MetaContextRequestDataRoundTrips()
    {
        var data = NbdTestClient.MetaContextData("vol", "base:allocation", "qemu:dirty-bitmap:x");
        var request = NbdCodec.ReadMetaContextRequest(data);
        Assert.Equal("vol", request.ExportName);
        Assert.Equal(["base:allocation", "qemu:dirty-bitmap:x"], request.Queries);
        Assert.Equal(Hex("00000003 766f6c 00000002 0000000f").Concat("base:allocation"u8.ToArray()), data[..(15 + 15)]);
    }

    [Theory]
    [InlineData("00000003 766f6c")]                         // no query count
    [InlineData("00000003 766f6c 00000001")]                // one query announced, none present
    [InlineData("00000003 766f6c 00000001 00000009 6162")]  // query overruns
    [InlineData("00000003 766f6c 00000000 00")]             // trailing byte
    [InlineData("00000003 766f6c 7fffffff 00000000")]       // absurd count
    public void MalformedMetaContextDataIsATypedError(string hex)
    {
        var ex = Assert.Throws<NbdProtocolException>(() => NbdCodec.ReadMetaContextRequest(Hex(hex)));
        Assert.Equal(NbdProtocolError.MalformedOptionData, ex.Error);
    }
}
