using Duet.Interconnect.Wire;
using FsCheck;
using FsCheck.Fluent;
using static Duet.Interconnect.Tests.TestBytes;

namespace Duet.Interconnect.Tests;

[Trait("Claim", "MR-3")]
public class SmallWriteMirrorMessageTests
{
    const long Region = 512L << 20;
    const string Golden = "a0 32 00 05 12 34 00 00 00 01 00 00";
    static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(300);

    [Fact]
    public void Encodes_the_golden_vector()
    {
        var m = new SmallWriteMirrorMessage(0xA0, DescriptorHigh: 3, Count1: 8, Count2: 0, Volume: 5, Low1: 0x1234, Low2: 0, Lba: 0x10000);
        var b = new byte[12];
        Assert.Equal(12, m.Encode(b));
        Assert.Equal(Hex(Golden), b);
    }

    [Fact]
    public void Decodes_the_golden_vector()
    {
        Assert.True(SmallWriteMirrorMessage.TryDecode(Hex(Golden), Region, out var m, out var error), error.ToString());
        Assert.Equal(new SmallWriteMirrorMessage(0xA0, 3, 8, 0, 5, 0x1234, 0, 0x10000), m);
        Assert.Equal(0x31234u, m.Descriptor1);
        Assert.Equal(0x31234L * 512, m.NvramOffset1);
        Assert.Equal(1, m.ElementCount);
        Assert.Equal(4096, m.DataBytes);
        Assert.Equal(MirrorWire.RegionFirst, m.Region);
        Assert.Equal([new SgElement(0x31234u * 512, 4096)], m.Elements);
    }

    [Fact]
    public void Create_from_NVRAM_offsets_builds_the_golden_vector()
    {
        var m = SmallWriteMirrorMessage.Create(0xA0, 0x31234u * 512, 8, 0, 0, volume: 5, lba: 0x10000);
        var b = new byte[12];
        m.Encode(b);
        Assert.Equal(Hex(Golden), b);
    }

    [Theory]
    // opcode, high, count1, count2, volume, low1, low2, lba -> bytes
    [InlineData(0xB0, 15, 32, 32, 255, 0xFFFF, 0xFFFF, 0xFFFF_FFFFu, "b0 f8 20 ff ff ff ff ff ff ff ff ff")]
    [InlineData(0xA0, 0, 1, 0, 0, 0, 0, 0u, "a0 00 40 00 00 00 00 00 00 00 00 00")]
    [InlineData(0xA0, 0, 1, 1, 0, 0, 1, 0u, "a0 00 41 00 00 00 00 01 00 00 00 00")]
    [InlineData(0xA0, 0, 2, 0, 0, 0, 0, 0u, "a0 00 80 00 00 00 00 00 00 00 00 00")]
    [InlineData(0xA0, 0, 3, 0, 0, 0, 0, 0u, "a0 00 c0 00 00 00 00 00 00 00 00 00")]
    [InlineData(0xA0, 0, 4, 0, 0, 0, 0, 0u, "a0 01 00 00 00 00 00 00 00 00 00 00")]
    [InlineData(0xA0, 8, 31, 17, 128, 0x8000, 0x0001, 0x8000_0001u, "a0 87 d1 80 80 00 00 01 80 00 00 01")]
    public void Packs_every_bit_field_at_its_extremes(int opcode, int high, int count1, int count2, int volume, int low1, int low2, uint lba, string hex)
    {
        var m = new SmallWriteMirrorMessage((byte)opcode, (byte)high, (byte)count1, (byte)count2, (byte)volume, (ushort)low1, (ushort)low2, lba);
        var b = new byte[12];
        m.Encode(b);
        Assert.Equal(hex.Replace(" ", "", StringComparison.Ordinal), ToHex(b));
        Assert.True(SmallWriteMirrorMessage.TryDecode(b, 1L << 30, out var back, out var error), error.ToString());
        Assert.Equal(m, back);
    }

    [Fact]
    public void Opcode_selects_the_region()
    {
        Assert.Equal(1, SmallWriteMirrorMessage.RegionFor(0xA0));
        Assert.Equal(2, SmallWriteMirrorMessage.RegionFor(0xB0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SmallWriteMirrorMessage.RegionFor(0x3C));
    }

    [Theory]
    [InlineData(0x00)]
    [InlineData(0x3C)]
    [InlineData(0xA1)]
    [InlineData(0xAF)]
    [InlineData(0xB1)]
    [InlineData(0xC0)]
    [InlineData(0xFF)]
    public void Decode_rejects_unknown_opcodes(int opcode)
    {
        var b = Hex(Golden);
        b[0] = (byte)opcode;
        Assert.False(SmallWriteMirrorMessage.TryDecode(b, Region, out _, out var error));
        Assert.Equal(WireError.BadType, error);
    }

    public static TheoryData<int> BadCounts => [0, .. Enumerable.Range(33, 31)];

    [Theory]
    [MemberData(nameof(BadCounts))]
    public void Decode_rejects_count1_zero_and_33_to_63(int count1)
    {
        var b = Hex(Golden);
        b[1] = (byte)(b[1] & 0xF0 | count1 >> 2);
        b[2] = (byte)((count1 & 3) << 6 | b[2] & 0x3F);
        Assert.False(SmallWriteMirrorMessage.TryDecode(b, Region, out _, out var error));
        Assert.Equal(WireError.BadBlockCount, error);
    }

    [Theory]
    [MemberData(nameof(BadCounts))]
    public void Decode_rejects_count2_33_to_63(int count2)
    {
        if (count2 == 0) return; // count2 = 0 is a single element, tested by the golden vector
        var b = Hex(Golden);
        b[2] = (byte)(b[2] & 0xC0 | count2);
        Assert.False(SmallWriteMirrorMessage.TryDecode(b, Region, out _, out var error));
        Assert.Equal(WireError.BadBlockCount, error);
    }

    [Fact]
    public void Decode_rejects_a_second_descriptor_without_a_second_element()
    {
        var b = Hex("a0 32 00 05 12 34 00 01 00 01 00 00");
        Assert.False(SmallWriteMirrorMessage.TryDecode(b, Region, out _, out var error));
        Assert.Equal(WireError.NonZeroReserved, error);
    }

    [Fact]
    public void Decode_rejects_descriptors_outside_the_region()
    {
        // Golden vector: descriptor 0x31234, 8 blocks, ends at sector 0x3123C.
        Assert.True(SmallWriteMirrorMessage.TryDecode(Hex(Golden), 0x3123CL * 512, out _, out _));
        Assert.False(SmallWriteMirrorMessage.TryDecode(Hex(Golden), 0x3123BL * 512, out _, out var error));
        Assert.Equal(WireError.OutsideRegion, error);

        // Element 2 outside, element 1 inside: a0, high 0, count1 1, count2 32, low2 0xFFF0.
        var two = Hex("a0 00 60 00 00 00 ff f0 00 00 00 00");
        Assert.True(SmallWriteMirrorMessage.TryDecode(two, 0x10010L * 512, out _, out _));
        Assert.False(SmallWriteMirrorMessage.TryDecode(two, 0x1000FL * 512, out _, out error));
        Assert.Equal(WireError.OutsideRegion, error);
    }

    [Fact]
    public void The_last_descriptor_of_a_512_MiB_region_fits()
    {
        var m = SmallWriteMirrorMessage.Create(0xB0, (MirrorWire.DescriptorMax - 31) * 512, 32, 0, 0, 1, 0);
        var b = new byte[12];
        m.Encode(b);
        Assert.True(SmallWriteMirrorMessage.TryDecode(b, Region, out var back, out _));
        Assert.Equal(Region, back.NvramOffset1 + back.DataBytes);
    }

    [Fact]
    public void Decode_rejects_short_input()
    {
        Assert.False(SmallWriteMirrorMessage.TryDecode(Hex(Golden).AsSpan(0, 11), Region, out _, out var error));
        Assert.Equal(WireError.TooShort, error);
    }

    [Fact]
    public void Create_refuses_what_twelve_bytes_cannot_say()
    {
        Assert.Throws<ArgumentException>(() => SmallWriteMirrorMessage.Create(0xA0, 0x0FFFFu * 512, 1, 0x10000u * 512, 1, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SmallWriteMirrorMessage.Create(0xA0, 0, 33, 0, 0, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SmallWriteMirrorMessage.Create(0xA0, 0, 0, 0, 0, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SmallWriteMirrorMessage.Create(0xA0, 0x100000u * 512, 1, 0, 0, 0, 0));
        Assert.Throws<ArgumentException>(() => SmallWriteMirrorMessage.Create(0xA0, 100, 1, 0, 0, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SmallWriteMirrorMessage.Create(0xC0, 0, 1, 0, 0, 0, 0));
    }

    static readonly Arbitrary<SmallWriteMirrorMessage> Messages =
        (from opcode in Gen.Elements((byte)0xA0, (byte)0xB0)
         from high in Gen.Choose(0, 15)
         from count1 in Gen.Choose(1, 32)
         from count2 in Gen.Choose(0, 32)
         from volume in Gen.Choose(0, 255)
         from low1 in Gen.Choose(0, 0xFFFF - 32)
         from low2 in Gen.Choose(0, 0xFFFF - 32)
         from lba in ArbMap.Default.GeneratorFor<uint>()
         select new SmallWriteMirrorMessage(opcode, (byte)high, (byte)count1, (byte)count2, (byte)volume, (ushort)low1,
             count2 == 0 ? (ushort)0 : (ushort)low2, lba)).ToArbitrary();

    [Fact]
    public void Round_trips_every_valid_message() =>
        Prop.ForAll(Messages, m =>
        {
            var b = new byte[12];
            m.Encode(b);
            var viaCreate = SmallWriteMirrorMessage.Create(m.Opcode, (uint)m.NvramOffset1, m.Count1,
                m.Count2 == 0 ? 0 : (uint)m.NvramOffset2, m.Count2, m.Volume, m.Lba);
            return SmallWriteMirrorMessage.TryDecode(b, Region, out var back, out _) && back == m && viaCreate == m;
        }).Check(Quick);
}
