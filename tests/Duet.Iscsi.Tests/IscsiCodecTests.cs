using System.Buffers;
using System.Buffers.Binary;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI")]
public sealed class IscsiCodecTests
{
    private static IscsiHeader Sample() => new()
    {
        Opcode = IscsiOpcode.ScsiCommand,
        Immediate = true,
        Flags = 0xc1,
        Byte2 = 2,
        Byte3 = 3,
        DataSegmentLength = 5,
        Lun = 0x0001_0000_0000_0000UL,
        InitiatorTaskTag = 0xdeadbeef,
        Word20 = 20, Word24 = 24, Word28 = 28, Word32 = 32, Word36 = 36, Word40 = 40, Word44 = 0xffffffff,
    };

    [Fact]
    public void Header_round_trips_every_field()
    {
        var bytes = new byte[48];
        var h = Sample();
        IscsiCodec.WriteHeader(bytes, h);
        Assert.Equal(0x41, bytes[0]);
        Assert.Equal(0xc1, bytes[1]);
        Assert.Equal(new byte[] { 0, 0, 5 }, bytes[5..8]);
        Assert.Equal(h, IscsiCodec.ReadHeader(bytes));
    }

    [Fact]
    public void Login_fields_share_the_lun_bytes()
    {
        var h = new IscsiHeader { Opcode = IscsiOpcode.LoginRequest, Flags = 0x87 };
        h.Isid = 0x0023_4567_89ab;
        h.Tsih = 0x1234;
        h.Cid = 7;
        var bytes = new byte[48];
        IscsiCodec.WriteHeader(bytes, h);
        Assert.Equal(new byte[] { 0x00, 0x23, 0x45, 0x67, 0x89, 0xab, 0x12, 0x34 }, bytes[8..16]);
        Assert.Equal(new byte[] { 0, 7 }, bytes[20..22]);
        var back = IscsiCodec.ReadHeader(bytes);
        Assert.Equal(0x0023_4567_89abUL, back.Isid);
        Assert.Equal(0x1234, back.Tsih);
        Assert.Equal(LoginStage.Operational, back.CurrentStage);
        Assert.Equal(LoginStage.FullFeature, back.NextStage);
        Assert.True(back.Transit);
    }

    [Fact]
    public void Crc32c_matches_the_rfc_3720_test_vectors()
    {
        // RFC 3720 appendix B.4: 32 bytes of zeros, of 0xff, and ascending bytes.
        Assert.Equal(0x8a9136aau, IscsiCodec.Digest(new byte[32]));
        Assert.Equal(0x62a8ab43u, IscsiCodec.Digest(Enumerable.Repeat((byte)0xff, 32).ToArray()));
        Assert.Equal(0x46dd794eu, IscsiCodec.Digest(Enumerable.Range(0, 32).Select(i => (byte)i).ToArray()));
    }

    [Theory]
    [InlineData(false, false, 0)]
    [InlineData(false, false, 5)]
    [InlineData(true, false, 5)]
    [InlineData(false, true, 7)]
    [InlineData(true, true, 8)]
    [InlineData(true, true, 0)]
    public void Pdu_round_trips_with_padding_and_digests(bool hd, bool dd, int dataLength)
    {
        var data = Enumerable.Range(0, dataLength).Select(i => (byte)(i + 1)).ToArray();
        var bytes = new byte[IscsiCodec.PduBytes(dataLength, hd, dd)];
        int n = IscsiCodec.WritePdu(bytes, Sample(), data, hd, dd);
        Assert.Equal(bytes.Length, n);
        Assert.Equal(0, bytes.Length % 4);
        // Every prefix is incomplete; the whole thing frames.
        for (int cut = 0; cut < n; cut++)
        {
            var partial = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes, 0, cut));
            Assert.False(IscsiCodec.TryReadPdu(ref partial, hd, dd, 1 << 20, out _) && cut < 48);
        }
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(IscsiCodec.TryReadPdu(ref reader, hd, dd, 1 << 20, out var frame));
        Assert.Equal(IscsiFrameError.None, frame.Error);
        Assert.Equal(data, frame.Data.ToArray());
        Assert.Equal(n, reader.Consumed);
        Assert.Equal(dataLength, frame.Header.DataSegmentLength);
    }

    [Fact]
    public void Digest_errors_are_reported()
    {
        var data = new byte[] { 1, 2, 3, 4, 5 };
        var bytes = new byte[IscsiCodec.PduBytes(data.Length, true, true)];
        IscsiCodec.WritePdu(bytes, Sample(), data, true, true);

        var badHeader = (byte[])bytes.Clone();
        badHeader[47] ^= 1;
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(badHeader));
        Assert.True(IscsiCodec.TryReadPdu(ref reader, true, true, 1 << 20, out var frame));
        Assert.Equal(IscsiFrameError.HeaderDigest, frame.Error);

        var badData = (byte[])bytes.Clone();
        badData[53] ^= 1;
        reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(badData));
        Assert.True(IscsiCodec.TryReadPdu(ref reader, true, true, 1 << 20, out frame));
        Assert.Equal(IscsiFrameError.DataDigest, frame.Error);
        Assert.Equal(bytes.Length, reader.Consumed);
    }

    [Fact]
    public void Digests_go_on_the_wire_little_endian()
    {
        var bytes = new byte[IscsiCodec.PduBytes(0, true, false)];
        IscsiCodec.WritePdu(bytes, default, default, true, false);
        Assert.Equal(IscsiCodec.Digest(bytes.AsSpan(0, 48)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(48)));
    }

    [Fact]
    public void Oversized_data_segment_is_reported_before_the_data_arrives()
    {
        var header = Sample();
        var bytes = new byte[48];
        header.DataSegmentLength = 100_000;
        IscsiCodec.WriteHeader(bytes, header);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(IscsiCodec.TryReadPdu(ref reader, false, false, 8192, out var frame));
        Assert.Equal(IscsiFrameError.DataSegmentTooLong, frame.Error);
    }

    [Fact]
    public void Ahs_is_framed_and_covered_by_the_header_digest()
    {
        var header = Sample();
        header.TotalAhsWords = 2;
        header.DataSegmentLength = 0;
        var bytes = new byte[48 + 8 + 4];
        IscsiCodec.WriteHeader(bytes, header);
        bytes[48] = 0; bytes[49] = 5; bytes[50] = 1;
        uint crc = IscsiCodec.Digest(bytes.AsSpan(0, 56));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(56), crc);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(IscsiCodec.TryReadPdu(ref reader, true, false, 8192, out var frame));
        Assert.Equal(IscsiFrameError.None, frame.Error);
        Assert.Equal(8, frame.Ahs.Length);
    }

    [Fact]
    public void Text_keys_parse_and_reject_malformed_input()
    {
        var pairs = new List<KeyValuePair<string, string>>();
        Assert.True(IscsiCodec.TryParseText("A=1\0B=\0C=x=y\0"u8, pairs));
        Assert.Equal([new("A", "1"), new("B", ""), new("C", "x=y")], pairs);
        Assert.False(IscsiCodec.TryParseText("novalue\0"u8, []));
        Assert.False(IscsiCodec.TryParseText("=v\0"u8, []));
        Assert.False(IscsiCodec.TryParseText(new byte[] { (byte)'K', (byte)'=', 0xff, 0 }, []));
        Assert.False(IscsiCodec.TryParseText(System.Text.Encoding.ASCII.GetBytes(new string('k', 64) + "=v\0"), []));
    }

    [Theory]
    [InlineData(0x0000_0000_0000_0000UL, 0UL)]
    [InlineData(0x0005_0000_0000_0000UL, 5UL)]
    [InlineData(0x4123_0000_0000_0000UL, 0x123UL)]
    public void Lun_decodes_peripheral_and_flat_addressing(ulong field, ulong lun)
    {
        Assert.Equal(lun, IscsiCodec.DecodeLun(field));
        Assert.Equal(field, IscsiCodec.EncodeLun(lun));
    }

    [Fact]
    public void Serial_numbers_wrap()
    {
        Assert.True(SerialNumber.Greater(1, 0xffffffff));
        Assert.True(SerialNumber.Less(0xfffffff0, 3));
        Assert.True(SerialNumber.InRange(2, 0xfffffffe, 5));
        Assert.False(SerialNumber.InRange(6, 0xfffffffe, 5));
    }

    [Fact]
    public void Chap_md5_response_matches_rfc_1994()
    {
        // MD5(id || secret || challenge), cross-checked with System.Security.Cryptography.
        var challenge = Enumerable.Range(0, 16).Select(i => (byte)i).ToArray();
        var expected = System.Security.Cryptography.MD5.HashData([7, .. "secret"u8.ToArray(), .. challenge]);
        Assert.Equal(expected, IscsiChap.Response(7, "secret", challenge));
        Assert.Equal(challenge, IscsiChap.Decode(IscsiChap.Encode(challenge)));
        Assert.Equal(challenge, IscsiChap.Decode("0b" + Convert.ToBase64String(challenge)));
        Assert.Null(IscsiChap.Decode("0xzz"));
        Assert.Null(IscsiChap.Decode("abc"));
    }
}
