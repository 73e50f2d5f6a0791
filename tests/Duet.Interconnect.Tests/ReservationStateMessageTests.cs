using System.Buffers;
using Duet.Interconnect.Wire;
using static Duet.Interconnect.Tests.TestBytes;

namespace Duet.Interconnect.Tests;

[Trait("Claim", "ISCSI-FO")]
public class ReservationStateMessageTests
{
    static byte[] Encode(ReservationStateMessage m)
    {
        var b = new byte[DuetFrame.EncodedBytes(m)];
        Assert.Equal(b.Length, m.Encode(b));
        return b;
    }

    static readonly ReservationRegistration First = new("iqn.a", 0x0000_0102_0304_0506, 1, 1, 0xAABB);
    static readonly ReservationRegistration Second = new("iq", 0x23d_0000_0001, 2, 2, 0x1122334455667788);

    [Fact]
    public void A_write_exclusive_reservation_has_every_field_at_its_offset()
    {
        var m = new ReservationStateMessage("v0", 7, Aptpl: true, Type: 1, HolderIndex: 1, [First, Second]);
        var expected =
            "010a 0000 00000051" +                                   // header: type, zero, length 81
            "01 01 02 00 00000007 0002 0001 00000000" + "7630" +     // APTPL, WE, name 2, gen 7, 2 regs, holder 1; "v0"
            "000000000000aabb 0000010203040506 0001 0001 05 000000" + "69716e2e61" +
            "1122334455667788 0000023d00000001 0002 0002 02 000000" + "6971";
        Assert.Equal(expected.Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(m)));
        Assert.Equal(MessageKind.ReservationState, MessageClassifier.Classify(Encode(m)));
    }

    [Fact]
    public void Every_type_round_trips_in_any_segmentation()
    {
        foreach (byte type in new byte[] { 0, 1, 3, 5, 6, 7, 8 })
        {
            int holder = type is 0 or 7 or 8 ? -1 : 0;
            foreach (var sync in new[] { false, true })
            {
                var m = new ReservationStateMessage("volume-é", uint.MaxValue, Aptpl: type % 2 == 0, type, holder, [First, Second], sync);
                var b = Encode(m);
                foreach (var seq in new[] { Split(b, 3, 20, b.Length - 1), OneBytePerSegment(b) })
                {
                    var reader = new SequenceReader<byte>(seq);
                    Assert.Equal(OperationStatus.Done, ReservationStateMessage.TryDecode(ref reader, out var back, out _));
                    Assert.Equal(m, back);
                    Assert.True(reader.End);
                }
            }
        }
        var empty = new ReservationStateMessage("v", 0, false, 0, -1, []);
        Assert.Equal("010a 0000 00000019 00 00 01 00 00000000 0000 ffff 00000000 76".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(empty)));
        Assert.Equal(OperationStatus.Done, ReservationStateMessage.TryDecode(Encode(empty), out var e, out _, out _));
        Assert.Equal(empty, e);
    }

    [Fact]
    public void An_SPC2_holder_follows_the_registrations_with_a_zero_key_and_round_trips()
    {
        var holder = new ReservationRegistration("iqn.c", 0x23d_0000_0009, 2, 2, 0);
        var m = new ReservationStateMessage("v0", 3, Aptpl: false, Type: 0, HolderIndex: -1, [First], Spc2Holder: holder);
        var b = Encode(m);
        Assert.Equal(0x04, b[8]); // flag bit 2
        Assert.EndsWith("0000000000000000 0000023d00000009 0002 0002 05 000000 69716e2e63".Replace(" ", "", StringComparison.Ordinal), ToHex(b), StringComparison.Ordinal);
        Assert.Equal(OperationStatus.Done, ReservationStateMessage.TryDecode(b, out var back, out _, out _));
        Assert.Equal(m, back);
        Assert.NotEqual(m with { Spc2Holder = null }, back);

        // A holder with a key, or the flag with nothing after the registrations, is refused.
        var keyed = Encode(m);
        keyed[^(24 + 5 - 7)] = 1; // last byte of the holder's key
        Assert.Equal(OperationStatus.InvalidData, ReservationStateMessage.TryDecode(keyed, out _, out _, out var error));
        Assert.Equal(WireError.BadEnum, error);
        var flagOnly = Encode(m with { Spc2Holder = null });
        flagOnly[8] |= 0x04;
        Assert.Equal(OperationStatus.InvalidData, ReservationStateMessage.TryDecode(flagOnly, out _, out _, out error));
        Assert.Equal(WireError.BadLength, error);
    }

    const string Head = "010a 0000 ";

    [Theory]
    [InlineData("00000019 08 00 01 00 00000000 0000 ffff 00000000 76", WireError.NonZeroReserved)]  // unknown flag
    [InlineData("00000019 00 00 01 01 00000000 0000 ffff 00000000 76", WireError.NonZeroReserved)]  // byte 3
    [InlineData("00000019 00 00 01 00 00000000 0000 ffff 00000001 76", WireError.NonZeroReserved)]  // bytes 12-15
    [InlineData("00000019 00 02 01 00 00000000 0000 ffff 00000000 76", WireError.BadEnum)]          // type 2
    [InlineData("00000019 00 01 01 00 00000000 0000 ffff 00000000 76", WireError.BadEnum)]          // WE without a holder
    [InlineData("00000019 00 00 01 00 00000000 0000 0000 00000000 76", WireError.BadEnum)]          // a holder without a reservation
    [InlineData("00000019 00 07 01 00 00000000 0000 0000 00000000 76", WireError.BadEnum)]          // all-registrants with a holder
    [InlineData("00000018 00 00 00 00 00000000 0000 ffff 00000000", WireError.BadText)]             // no volume name
    [InlineData("00000019 00 00 01 00 00000000 0000 ffff 00000000 ff", WireError.BadText)]          // not UTF-8
    [InlineData("0000001a 00 00 01 00 00000000 0000 ffff 00000000 76 00", WireError.BadLength)]     // trailing byte
    [InlineData("00000019 00 00 01 00 00000000 0801 ffff 00000000 76", WireError.TooManyEntries)]   // 2049 registrations
    [InlineData("00000019 00 00 01 00 00000000 0001 ffff 00000000 76", WireError.BadLength)]        // a registration missing
    [InlineData("00000032 00 00 01 00 00000000 0001 ffff 00000000 76 0000000000000000 0000000000000001 0001 0001 01 000000 41", WireError.BadEnum)]         // key 0
    [InlineData("00000032 00 00 01 00 00000000 0001 ffff 00000000 76 0000000000000001 0001000000000001 0001 0001 01 000000 41", WireError.NonZeroReserved)] // ISID over 48 bits
    [InlineData("00000032 00 00 01 00 00000000 0001 ffff 00000000 76 0000000000000001 0000000000000001 0001 0001 01 000100 41", WireError.NonZeroReserved)] // bytes 21-23
    [InlineData("00000031 00 00 01 00 00000000 0001 ffff 00000000 76 0000000000000001 0000000000000001 0001 0001 00 000000", WireError.BadText)]            // no initiator name
    [InlineData("00000032 00 00 01 00 00000000 0001 ffff 00000000 76 0000000000000001 0000000000000001 0001 0001 02 000000 41", WireError.BadLength)]       // name runs past the end
    [InlineData("0000004b 00 00 01 00 00000000 0002 ffff 00000000 76 0000000000000001 0000000000000001 0001 0001 01 000000 41 0000000000000002 0000000000000001 0001 0001 01 000000 41", WireError.DuplicateEntry)]
    public void Malformed_reservation_states_are_refused(string hex, WireError expected)
    {
        Assert.Equal(OperationStatus.InvalidData, ReservationStateMessage.TryDecode(Hex(Head + hex), out _, out _, out var error));
        Assert.Equal(expected, error);
    }

    [Fact]
    public void The_encoder_refuses_what_the_decoder_would()
    {
        Assert.Throws<Duet.Core.InvariantViolationException>(() => Encode(new ReservationStateMessage("v", 0, false, 1, -1, [First])));
        Assert.Throws<Duet.Core.InvariantViolationException>(() => Encode(new ReservationStateMessage("", 0, false, 0, -1, [])));
        Assert.Throws<Duet.Core.InvariantViolationException>(() => Encode(new ReservationStateMessage("v", 0, false, 0, -1, [First with { Key = 0 }])));
    }
}
