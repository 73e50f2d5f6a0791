using System.Buffers.Binary;
using Duet.Interconnect.Wire;
using FsCheck;
using FsCheck.Fluent;
using static Duet.Interconnect.Tests.TestBytes;

namespace Duet.Interconnect.Tests;

[Trait("Claim", "MR-2")]
public class LargeWriteMessageTests
{
    const long Region = 64L << 20;
    static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(200);

    [Fact]
    public void Notification_is_0x3C_then_nine_zero_bytes()
    {
        var bytes = new byte[10];
        Array.Fill(bytes, (byte)0xEE);
        Assert.Equal(10, new NotificationMirrorMessage().Encode(bytes));
        Assert.Equal("3c000000000000000000", ToHex(bytes));
    }

    [Fact]
    public void Notification_decode_ignores_bytes_one_to_nine()
    {
        Assert.True(NotificationMirrorMessage.TryDecode(Hex("3c ff ff ff ff ff ff ff ff ff"), out _, out var error));
        Assert.Equal(WireError.None, error);
    }

    [Fact]
    public void Notification_decode_rejects_other_opcodes_and_short_input()
    {
        Assert.False(NotificationMirrorMessage.TryDecode(Hex("3d 00 00 00 00 00 00 00 00 00"), out _, out var error));
        Assert.Equal(WireError.BadType, error);
        Assert.False(NotificationMirrorMessage.TryDecode(Hex("3c 00 00"), out _, out error));
        Assert.Equal(WireError.TooShort, error);
    }

    /// <summary>Hand-built: seq 7, LBA 0x10000, 16 blocks, serial 0x0102..08, region 2, array 9,
    /// elements (0x4000, 4 KiB) and (0x8000, 4 KiB).</summary>
    static byte[] HandBuiltMetadata()
    {
        var b = new byte[1024];
        Hex("0001 0400 00000007 00010000 00000010 0102030405060708 02 09").CopyTo(b, 0);
        Hex("00004000 00001000 00008000 00001000").CopyTo(b, 512);
        return b;
    }

    static MetadataMirrorMessage HandBuiltMessage => new()
    {
        Sequence = 7, Lba = 0x10000, BlockCount = 16, ArraySerial = 0x0102030405060708, Region = 2, ArrayNumber = 9,
        Elements = [new SgElement(0x4000, 0x1000), new SgElement(0x8000, 0x1000)],
    };

    [Fact]
    public void Metadata_decodes_a_hand_built_vector()
    {
        Assert.True(MetadataMirrorMessage.TryDecode(HandBuiltMetadata(), Region, out var m, out var error), error.ToString());
        Assert.Equal(HandBuiltMessage, m);
        Assert.Equal(8192, m!.DataBytes);
    }

    [Fact]
    public void Metadata_encodes_the_hand_built_vector_byte_for_byte()
    {
        var b = new byte[1024];
        Array.Fill(b, (byte)0xAA); // stale bytes must become zero
        Assert.Equal(1024, HandBuiltMessage.Encode(b));
        Assert.Equal(ToHex(HandBuiltMetadata()), ToHex(b));
    }

    [Theory]
    [InlineData(0xFFFF_FFFEUL, "fffffffe", "0000000000000000")]
    [InlineData(0xFFFF_FFFFUL, "ffffffff", "00000000ffffffff")]
    [InlineData(0x1_0000_0000UL, "ffffffff", "0000000100000000")]
    [InlineData(0xFFFF_FFFF_FFFF_0000UL, "ffffffff", "ffffffffffff0000")]
    public void Metadata_escapes_LBAs_that_do_not_fit_32_bits(ulong lba, string bytes8to11, string bytes32to39)
    {
        var m = HandBuiltMessage with { Lba = lba };
        var b = new byte[1024];
        m.Encode(b);
        Assert.Equal(bytes8to11, ToHex(b.AsSpan(8, 4)));
        Assert.Equal(bytes32to39, ToHex(b.AsSpan(32, 8)));
        Assert.True(MetadataMirrorMessage.TryDecode(b, Region, out var back, out _));
        Assert.Equal(lba, back!.Lba);
    }

    [Fact]
    public void Metadata_at_its_extremes_64_full_elements_ending_at_the_region_end()
    {
        var elements = Enumerable.Range(0, 64).Select(i => new SgElement((uint)(Region - (64 - i) * 16384L), 16384)).ToList();
        var m = HandBuiltMessage with { BlockCount = 2048, Elements = elements, Sequence = uint.MaxValue, ArraySerial = ulong.MaxValue, ArrayNumber = 255, Region = 1 };
        var b = new byte[1024];
        m.Encode(b);
        Assert.Equal("03ffc00000004000", ToHex(b.AsSpan(1016, 8)));
        Assert.True(MetadataMirrorMessage.TryDecode(b, Region, out var back, out var error), error.ToString());
        Assert.Equal(m, back);
    }

    public static TheoryData<string, int, string, WireError> Corruptions => new()
    {
        { "type 0x0002", 0, "0002", WireError.BadType },
        { "type 0x0101", 0, "0101", WireError.BadType },
        { "length 512", 2, "0200", WireError.BadLength },
        { "length 1025", 2, "0401", WireError.BadLength },
        { "region 0", 24, "00", WireError.BadRegion },
        { "region 3", 24, "03", WireError.BadRegion },
        { "region 255", 24, "ff", WireError.BadRegion },
        { "byte 26 non-zero", 26, "01", WireError.NonZeroReserved },
        { "byte 31 non-zero", 31, "80", WireError.NonZeroReserved },
        { "byte 40 non-zero", 40, "01", WireError.NonZeroReserved },
        { "byte 511 non-zero", 511, "01", WireError.NonZeroReserved },
        { "64-bit LBA without escape", 32, "0000000100000000", WireError.BadLbaEscape },
        { "escape with small 64-bit LBA", 8, "ffffffff", WireError.BadLbaEscape },
        { "zero blocks", 12, "00000000", WireError.BadBlockCount },
        { "blocks disagree with elements", 12, "00000011", WireError.TotalMismatch },
        { "element count 16 KiB + 512", 516, "00004200", WireError.BadByteCount },
        { "element count not a multiple of 512", 516, "00000fff", WireError.BadByteCount },
        { "element offset not a multiple of 512", 512, "00004001", WireError.BadOffset },
        { "element leaves the region", 520, "03fff200", WireError.OutsideRegion },
        { "element offset far outside", 520, "ffffe000", WireError.OutsideRegion },
        { "used element after an unused one", 536, "0000000000000200", WireError.ElementsNotPacked },
        { "unused element with an offset", 528, "0000020000000000", WireError.NonZeroReserved },
        { "unused first element", 512, "0000000000000000", WireError.ElementsNotPacked },
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void Metadata_decode_rejects(string what, int offset, string bytes, WireError expected)
    {
        var b = HandBuiltMetadata();
        Hex(bytes).CopyTo(b, offset);
        Assert.False(MetadataMirrorMessage.TryDecode(b, Region, out var m, out var error), what);
        Assert.Null(m);
        Assert.Equal(expected, error);
    }

    [Fact]
    public void Metadata_decode_rejects_a_list_with_no_used_element()
    {
        var b = HandBuiltMetadata();
        b.AsSpan(512).Clear();
        Assert.False(MetadataMirrorMessage.TryDecode(b, Region, out _, out var error));
        Assert.Equal(WireError.ElementsNotPacked, error);
    }

    [Fact]
    public void Metadata_decode_rejects_short_input()
    {
        Assert.False(MetadataMirrorMessage.TryDecode(HandBuiltMetadata().AsSpan(0, 1023), Region, out _, out var error));
        Assert.Equal(WireError.TooShort, error);
    }

    static readonly Arbitrary<MetadataMirrorMessage> Messages =
        (from count in Gen.Choose(1, 64)
         from sizes in Gen.ArrayOf(Gen.Choose(1, 32), count)
         from offsets in Gen.ArrayOf(Gen.Choose(0, (int)(Region / 512) - 32), count)
         from seq in ArbMap.Default.GeneratorFor<uint>()
         from lba in Gen.OneOf(Gen.Choose(0, int.MaxValue).Select(i => (ulong)i), ArbMap.Default.GeneratorFor<ulong>().Select(l => l >> 2))
         from serial in ArbMap.Default.GeneratorFor<ulong>()
         from region in Gen.Elements((byte)1, (byte)2)
         from array in ArbMap.Default.GeneratorFor<byte>()
         select new MetadataMirrorMessage
         {
             Sequence = seq, Lba = lba, BlockCount = (uint)sizes.Sum(), ArraySerial = serial, Region = region, ArrayNumber = array,
             Elements = sizes.Select((s, i) => new SgElement((uint)offsets[i] * 512, (uint)s * 512)).ToList(),
         }).ToArbitrary();

    [Fact]
    public void Metadata_round_trips() =>
        Prop.ForAll(Messages, m =>
        {
            var b = new byte[1024];
            m.Encode(b);
            return MetadataMirrorMessage.TryDecode(b, Region, out var back, out _) && back == m;
        }).Check(Quick);

    [Theory]
    [InlineData(4 << 10, 1, new[] { 1 })]
    [InlineData(1 << 20, 1, new[] { 64 })]
    [InlineData((1 << 20) + (4 << 10), 2, new[] { 64, 1 })]
    [InlineData(3 << 20, 3, new[] { 64, 64, 64 })]
    [InlineData(512, 1, new[] { 1 })]
    [InlineData((2 << 20) - 512, 2, new[] { 64, 64 })]
    public void Split_cuts_a_write_into_1_MiB_metadata_messages(int bytes, int messages, int[] elementsPerMessage)
    {
        long blocks = bytes / 512;
        int pieces = (int)((blocks + 31) / 32);
        var offsets = Enumerable.Range(0, pieces).Select(i => (uint)(i * 16384 + 4096)).ToList();
        const ulong lba = 0xFFFF_F000;
        var split = MetadataMirrorMessage.Split(100, 0xABCD, 3, 1, lba, blocks, offsets);

        Assert.Equal(messages, split.Count);
        Assert.Equal(elementsPerMessage, split.Select(m => m.Elements.Count));
        Assert.Equal(blocks, split.Sum(m => (long)m.BlockCount));
        ulong expectedLba = lba;
        for (int i = 0; i < split.Count; i++)
        {
            var m = split[i];
            Assert.Equal(100u + (uint)i, m.Sequence);
            Assert.Equal(expectedLba, m.Lba);
            Assert.True(m.DataBytes <= 1 << 20);
            expectedLba += m.BlockCount;
            var b = new byte[1024];
            m.Encode(b);
            Assert.True(MetadataMirrorMessage.TryDecode(b, Region, out var back, out var error), error.ToString());
            Assert.Equal(m, back);
        }
        Assert.Equal(offsets, split.SelectMany(m => m.Elements).Select(e => e.NvramOffset));
        Assert.Equal((uint)(bytes - (pieces - 1) * 16384), split[^1].Elements[^1].ByteCount);
    }

    [Fact]
    public void Split_refuses_the_wrong_number_of_piece_offsets()
    {
        Assert.Throws<ArgumentException>(() => MetadataMirrorMessage.Split(0, 1, 1, 1, 0, 64, [0u]));
        Assert.Throws<ArgumentOutOfRangeException>(() => MetadataMirrorMessage.Split(0, 1, 1, 3, 0, 8, [0u]));
    }

    [Fact]
    public void Data_mirror_message_is_exactly_the_data_the_metadata_announces()
    {
        var data = Enumerable.Range(0, 8192).Select(i => (byte)i).ToArray();
        Assert.True(DataMirrorMessage.TryDecode(data, HandBuiltMessage, out var d, out _));
        Assert.Equal(data.AsSpan(4096, 4096).ToArray(), d.ElementData(HandBuiltMessage, 1).ToArray());
        Assert.False(DataMirrorMessage.TryDecode(data.AsMemory(0, 8191), HandBuiltMessage, out _, out var error));
        Assert.Equal(WireError.BadLength, error);
    }

    [Fact]
    public void Status_message_has_the_documented_16_byte_layout()
    {
        var s = new StatusMessage(0x01020304, MirrorStatusCode.UnknownVolume, 2);
        var b = new byte[16];
        Assert.Equal(16, s.Encode(b));
        Assert.Equal("0002" + "0010" + "01020304" + "0003" + "0000" + "00000002", ToHex(b));
        Assert.True(StatusMessage.TryDecode(b, out var back, out _));
        Assert.Equal(s, back);
    }

    [Theory]
    [InlineData("0001 0010 00000000 0000 0000 00000000", WireError.BadType)]
    [InlineData("0002 0400 00000000 0000 0000 00000000", WireError.BadLength)]
    [InlineData("0002 0010 00000000 0063 0000 00000000", WireError.BadEnum)]
    [InlineData("0002 0010 00000000 0000 0001 00000000", WireError.NonZeroReserved)]
    [InlineData("0002 0010 00000000 0000", WireError.TooShort)]
    public void Status_decode_rejects(string hex, WireError expected)
    {
        Assert.False(StatusMessage.TryDecode(Hex(hex), out _, out var error));
        Assert.Equal(expected, error);
    }

    [Fact]
    public void Metadata_constants_agree_with_the_seed_table()
    {
        Assert.Equal(1024, MirrorWire.MetadataBytes);
        Assert.Equal(512, MirrorWire.MetadataSgListOffset);
        Assert.Equal(1 << 20, MirrorWire.MetadataBytesCoveredMax);
        var b = new byte[1024];
        HandBuiltMessage.Encode(b);
        Assert.Equal(0x0102030405060708UL, BinaryPrimitives.ReadUInt64BigEndian(b.AsSpan(16)));
    }
}
