using System.Buffers;
using Duet.Interconnect.Wire;
using static Duet.Interconnect.Tests.TestBytes;

namespace Duet.Interconnect.Tests;

[Trait("Claim", "FO-4")]
public class HandshakeMessageTests
{
    static byte[] Encode(HandshakeMessage m)
    {
        var b = new byte[DuetFrame.EncodedBytes(m)];
        Assert.Equal(b.Length, m.Encode(b));
        return b;
    }

    [Fact]
    public void Primary_ready_has_every_field_at_its_offset()
    {
        var m = new HandshakeMessage(HandshakePhase.PrimaryReady, 1, 0x0102030405060708, 0xAA, 0x1122334455667788, "vol", ReadOnlyMemory<byte>.Empty);
        Assert.Equal("0109 0000 0000002b 01 01 03 00 00000000 0102030405060708 00000000000000aa 1122334455667788 766f6c".Replace(" ", "", StringComparison.Ordinal), ToHex(Encode(m)));
        Assert.Equal(MessageKind.HostHandshake, MessageClassifier.Classify(Encode(m)));
    }

    [Fact, Trait("Claim", "FO-6")]
    public void Forwarded_frame_carries_the_host_frame_and_round_trips_in_any_segmentation()
    {
        var frame = Enumerable.Range(0, 100).Select(i => (byte)i).ToArray();
        var m = new HandshakeMessage(HandshakePhase.ForwardedFrame, 0, 7, 9, 11, "é", frame);
        var b = Encode(m);
        Assert.Equal("0109 0000 0000008e 05 00 02 00 00000064".Replace(" ", "", StringComparison.Ordinal), ToHex(b)[..32]);
        Assert.Equal(frame, b[(8 + 32 + 2)..]);
        foreach (var seq in new[] { Split(b, 3, 40, b.Length - 1), OneBytePerSegment(b) })
        {
            var reader = new SequenceReader<byte>(seq);
            Assert.Equal(OperationStatus.Done, HandshakeMessage.TryDecode(ref reader, out var back, out _));
            Assert.Equal(m, back);
            Assert.True(reader.End);
        }
        foreach (var phase in Enum.GetValues<HandshakePhase>().Where(p => p != HandshakePhase.ForwardedFrame))
        {
            var other = m with { Phase = phase, Data = phase == HandshakePhase.Completed ? frame : ReadOnlyMemory<byte>.Empty };
            Assert.Equal(OperationStatus.Done, HandshakeMessage.TryDecode(Encode(other), out var back, out _, out _));
            Assert.Equal(other, back);
        }
    }

    [Fact, Trait("Claim", "AW-1")]
    public void Completed_carries_the_command_status_in_byte_3_and_other_phases_refuse_it()
    {
        var m = new HandshakeMessage(HandshakePhase.Completed, 1, 2, 3, 4, "v", ReadOnlyMemory<byte>.Empty) { Status = 7 };
        var b = Encode(m);
        Assert.Equal("0109 0000 00000029 04 01 01 07 00000000".Replace(" ", "", StringComparison.Ordinal), ToHex(b)[..32]);
        Assert.Equal(OperationStatus.Done, HandshakeMessage.TryDecode(b, out var back, out _, out _));
        Assert.Equal(m, back);
        Assert.Equal(7, back!.Status);
        Assert.NotEqual(m with { Status = 1 }, back);

        b[8] = (byte)HandshakePhase.PrimaryAck;
        Assert.Equal(OperationStatus.InvalidData, HandshakeMessage.TryDecode(b, out _, out _, out var error));
        Assert.Equal(WireError.NonZeroReserved, error);
    }

    [Theory]
    [InlineData("0109 0000 00000028 00 01 00 00 00000000 0000000000000001 0000000000000002 0000000000000003", WireError.BadEnum)]
    [InlineData("0109 0000 00000028 06 01 00 00 00000000 0000000000000001 0000000000000002 0000000000000003", WireError.BadEnum)]
    [InlineData("0109 0000 00000028 01 01 00 01 00000000 0000000000000001 0000000000000002 0000000000000003", WireError.NonZeroReserved)]
    [InlineData("0109 0000 00000028 01 01 01 00 00000000 0000000000000001 0000000000000002 0000000000000003", WireError.BadLength)]
    [InlineData("0109 0000 00000029 01 01 00 00 00000001 0000000000000001 0000000000000002 0000000000000003 ff", WireError.BadLength)]
    [InlineData("0109 0000 00000029 05 01 00 00 00000001 0000000000000001 0000000000000002 0000000000000003 ff", WireError.BadText)]
    [InlineData("0109 0000 00000029 05 01 01 00 00000000 0000000000000001 0000000000000002 0000000000000003 41", WireError.BadLength)]
    [InlineData("0109 0000 00000029 04 01 01 00 00000000 0000000000000001 0000000000000002 0000000000000003 ff", WireError.BadText)]
    [InlineData("0109 0000 00000027 01 01 00 00 00000000 0000000000000001 0000000000000002 00000000000000", WireError.BadLength)]
    public void Malformed_handshake_messages_are_refused(string hex, WireError expected)
    {
        Assert.Equal(OperationStatus.InvalidData, HandshakeMessage.TryDecode(Hex(hex), out _, out _, out var error));
        Assert.Equal(expected, error);
    }
}
