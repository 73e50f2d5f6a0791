using System.Buffers;
using System.Text;
using FsCheck;
using FsCheck.Fluent;

namespace Duet.Shelf.Tests;

/// <summary>The shelf wire against hand-built byte vectors (docs/internals/shelf-protocol.md), in every
/// segmentation, and random requests and responses round-tripped through the codec.</summary>
public class ShelfCodecTests
{
    sealed class Segment : ReadOnlySequenceSegment<byte>
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

    static ReadOnlySequence<byte> Split(byte[] bytes, params int[] cuts)
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

    /// <summary>Whole, every cut in two, and all 1-byte segments.</summary>
    static IEnumerable<ReadOnlySequence<byte>> AllSplits(byte[] bytes)
    {
        yield return new ReadOnlySequence<byte>(bytes);
        for (int cut = 1; cut < bytes.Length; cut++) yield return Split(bytes, cut);
        yield return Split(bytes, Enumerable.Range(1, bytes.Length - 1).ToArray());
    }

    static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", ""));

    /// <summary>What a connection does: header from the sequence, then the body as one span.</summary>
    static ShelfRequest DecodeRequest(ReadOnlySequence<byte> sequence)
    {
        var reader = new SequenceReader<byte>(sequence);
        Assert.True(ShelfCodec.TryReadRequestHeader(ref reader, out var header));
        Assert.Equal(sequence.Length - ShelfWire.RequestHeaderBytes, header.BodyBytes);
        return ShelfCodec.ReadRequestBody(header, reader.UnreadSequence.ToArray());
    }

    static ShelfResponse DecodeResponse(ReadOnlySequence<byte> sequence)
    {
        var reader = new SequenceReader<byte>(sequence);
        Assert.True(ShelfCodec.TryReadResponseHeader(ref reader, out var header));
        Assert.Equal(sequence.Length - ShelfWire.ResponseHeaderBytes, header.BodyBytes);
        return ShelfCodec.ReadResponseBody(header, reader.UnreadSequence.ToArray());
    }

    // A FUA write of 4 bytes "DEADBEEF" to drive "d1" at LBA 3, tag 0x1112131415161718.
    static readonly byte[] WriteRequestBytes = Hex(
        "44535251 0007 0001 1112131415161718 00000014" +
        "0002 6431  0000000000000003  00000004  DEADBEEF");

    [Fact]
    public void A_write_request_decodes_from_hand_built_bytes_in_any_segmentation()
    {
        foreach (var sequence in AllSplits(WriteRequestBytes))
        {
            var r = DecodeRequest(sequence);
            Assert.Equal(ShelfOp.Write, r.Op);
            Assert.Equal(ShelfRequestFlags.Fua, r.Flags);
            Assert.Equal(0x1112131415161718UL, r.Tag);
            Assert.Equal("d1", r.Name);
            Assert.Equal(3, r.Lba);
            Assert.Equal(Hex("DEADBEEF"), r.Payload.ToArray());
        }
        var encoded = ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Write, 0x1112131415161718)
        {
            Flags = ShelfRequestFlags.Fua, Name = "d1", Lba = 3, Payload = Hex("DEADBEEF"),
        });
        Assert.Equal(WriteRequestBytes, encoded);
    }

    // A gathered write to drive "d1", tag 5: 2 bytes "AAAA" at LBA 3, then 1 byte "BB" at LBA 9.
    static readonly byte[] GatherRequestBytes = Hex(
        "44535251 0015 0000 0000000000000005 00000020" +
        "0002 6431  02  0000000000000003 00000002  0000000000000009 00000001  AAAA BB");

    [Fact]
    public void A_gathered_write_decodes_from_hand_built_bytes_in_any_segmentation()
    {
        foreach (var sequence in AllSplits(GatherRequestBytes))
        {
            var r = DecodeRequest(sequence);
            Assert.Equal((ShelfOp.WriteGather, 5UL, "d1", 2), (r.Op, r.Tag, r.Name, r.Extents.Count));
            Assert.Equal((3L, 9L), (r.Extents[0].Lba, r.Extents[1].Lba));
            Assert.Equal(Hex("AAAA"), r.Extents[0].Data.ToArray());
            Assert.Equal(Hex("BB"), r.Extents[1].Data.ToArray());
        }
        var encoded = ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.WriteGather, 5)
        {
            Name = "d1", Extents = [new(3, Hex("AAAA")), new(9, Hex("BB"))],
        });
        Assert.Equal(GatherRequestBytes, encoded);
    }

    [Fact]
    public void Read_claim_and_set_enabled_requests_encode_to_the_documented_bytes()
    {
        Assert.Equal(Hex("44535251 0006 0000 000000000000000f 00000010  0002 6430  0000000000000002  00001000"),
            ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Read, 15) { Name = "d0", Lba = 2, Length = 4096 }));
        Assert.Equal(Hex("44535251 000f 0000 0000000000000001 00000014  00000002  0123456789abcdef  0000000000000007"),
            ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Claim, 1) { Serials = [0x0123456789abcdef, 7] }));
        Assert.Equal(Hex("44535251 000c 0000 0000000000000002 00000001  01"),
            ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.SetEnabled, 2) { Value = 1 }));
        Assert.Equal(Hex("44535251 0012 0000 0000000000000003 00000000"),
            ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Status, 3)));
    }

    // Open's answers: NoSuchSlot with message "no" and no LBA; and a drive of 256 blocks, serial "DUET0001".
    static readonly byte[] ErrorResponseBytes = Hex("44535253 0004 05 00 0000000000000009 0000000c  ffffffffffffffff 0002 6e6f");
    static readonly byte[] OpenResponseBytes = Hex("44535253 0004 00 00 000000000000000a 00000012  0000000000000100 0008 4455455430303031");

    [Fact]
    public void Responses_decode_from_hand_built_bytes_in_any_segmentation()
    {
        foreach (var sequence in AllSplits(ErrorResponseBytes))
        {
            var r = DecodeResponse(sequence);
            Assert.Equal((ShelfOp.Open, 9UL, ShelfError.NoSuchSlot, "no", -1L), (r.Op, r.Tag, r.Status, r.Message, r.Lba));
        }
        foreach (var sequence in AllSplits(OpenResponseBytes))
        {
            var r = DecodeResponse(sequence);
            Assert.Equal((ShelfOp.Open, 10UL, ShelfError.None, 256L, "DUET0001"), (r.Op, r.Tag, r.Status, r.Value, r.Name));
        }
        Assert.Equal(ErrorResponseBytes, ShelfCodec.EncodeResponse(new ShelfResponse(ShelfOp.Open, 9, ShelfError.NoSuchSlot) { Message = "no" }));
        Assert.Equal(OpenResponseBytes, ShelfCodec.EncodeResponse(new ShelfResponse(ShelfOp.Open, 10, ShelfError.None) { Value = 256, Name = "DUET0001" }));
    }

    [Fact]
    public void A_medium_error_carries_its_lba()
    {
        var bytes = ShelfCodec.EncodeResponse(new ShelfResponse(ShelfOp.Read, 4, ShelfError.Medium) { Message = "bad block", Lba = 77 });
        Assert.Equal(Hex("44535253 0006 0c 00 0000000000000004 00000013 000000000000004d 0009"), bytes[..30]);
        var r = DecodeResponse(new ReadOnlySequence<byte>(bytes));
        Assert.Equal((ShelfError.Medium, 77L, "bad block"), (r.Status, r.Lba, r.Message));
    }

    [Fact]
    public void A_short_header_needs_more_bytes()
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(WriteRequestBytes[..19]));
        Assert.False(ShelfCodec.TryReadRequestHeader(ref reader, out _));
    }

    [Fact]
    public void Bad_magic_and_oversized_bodies_lose_the_framing()
    {
        var bad = (byte[])WriteRequestBytes.Clone();
        bad[0] = 0x45;
        var e = Assert.Throws<ShelfProtocolException>(() => DecodeRequest(new ReadOnlySequence<byte>(bad)));
        Assert.True(e.FramingLost);
        Assert.Contains("magic", e.Message);

        var huge = Hex("44535251 0002 0000 0000000000000001 7fffffff");
        var e2 = Assert.Throws<ShelfProtocolException>(() => DecodeRequest(new ReadOnlySequence<byte>(huge)));
        Assert.True(e2.FramingLost);
    }

    static ShelfProtocolException BodyError(string hex)
    {
        var bytes = Hex(hex);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(ShelfCodec.TryReadRequestHeader(ref reader, out var header));
        var body = reader.UnreadSequence.ToArray();
        var e = Assert.Throws<ShelfProtocolException>(() => ShelfCodec.ReadRequestBody(header, body));
        Assert.False(e.FramingLost); // the header's length still frames the stream
        return e;
    }

    [Fact]
    public void Malformed_bodies_are_typed_protocol_errors_that_keep_the_framing()
    {
        Assert.Contains("unknown opcode 99", BodyError("44535251 0063 0000 0000000000000001 00000000").Message);
        Assert.Contains("short", BodyError("44535251 0009 0000 0000000000000001 00000004 01020304").Message);
        Assert.Contains("left over", BodyError("44535251 000a 0000 0000000000000001 00000001 00").Message);
        Assert.Contains("UTF-8", BodyError("44535251 0003 0000 0000000000000001 00000003 0001 ff").Message);
        Assert.Contains("FUA", BodyError("44535251 0008 0001 0000000000000001 00000004 0002 6430").Message);
        Assert.Contains("0 or 1", BodyError("44535251 000c 0000 0000000000000001 00000001 02").Message);
        Assert.Contains("holds", BodyError("44535251 0007 0000 0000000000000001 00000011 0002 6430 0000000000000000 00000008 00").Message);
        Assert.Contains("over the limit", BodyError("44535251 0006 0000 0000000000000001 00000010 0002 6430 0000000000000000 7fffffff").Message);
        Assert.Contains("over 2^63", BodyError("44535251 0005 0000 0000000000000001 0000000c 0002 6430 ffffffffffffffff").Message);
        // Gathered writes: 0 or more than 8 extents, data that is not what the lengths say, over the transfer limit, FUA.
        Assert.Contains("of 0 extents", BodyError("44535251 0015 0000 0000000000000001 00000005 0002 6430 00").Message);
        Assert.Contains("of 9 extents", BodyError("44535251 0015 0000 0000000000000001 00000005 0002 6430 09").Message);
        Assert.Contains("holds 1", BodyError("44535251 0015 0000 0000000000000001 00000012 0002 6430 01 0000000000000000 00000004 00").Message);
        Assert.Contains("more than", BodyError("44535251 0015 0000 0000000000000001 00000011 0002 6430 01 0000000000000000 00800001").Message);
        Assert.Contains("FUA", BodyError("44535251 0015 0001 0000000000000001 00000005 0002 6430 00").Message);
    }

    // ---- round trips -------------------------------------------------------------------------------

    static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(300);

    static readonly Gen<string> Names = Gen.Elements("", "d0", "d17", "A", "B", "admin", "ü-drive", new string('x', 300));
    static readonly Gen<ulong> U64s = Gen.Choose(0, int.MaxValue).Select(i => (ulong)i * 0x9E3779B97F4A7C15UL);
    static readonly Gen<long> Lbas = U64s.Select(u => (long)(u >> 1));
    static readonly Gen<byte[]> Payloads = Gen.Choose(0, 64).SelectMany(n => Gen.ArrayOf(Gen.Choose(0, 255).Select(b => (byte)b), n));

    static readonly Gen<ShelfRequest> Requests =
        from op in Gen.Elements(Enum.GetValues<ShelfOp>())
        from tag in U64s
        from name in Names
        from lba in Lbas
        from length in Gen.Choose(0, ShelfWire.MaxTransferBytes)
        from value in U64s
        from serials in Gen.Choose(0, 5).SelectMany(n => Gen.ArrayOf(U64s, n))
        from payload in Payloads
        from fua in Gen.Elements(true, false)
        from extents in Gen.Choose(1, ShelfWire.MaxGatherExtents).SelectMany(n => Gen.ArrayOf(from l in Lbas from p in Payloads select new Duet.Drives.WriteExtent(l, p), n))
        select new ShelfRequest(op, tag)
        {
            Name = name, Lba = lba, Length = length, SizeBytes = lba, Value = op == ShelfOp.SetEnabled ? value & 1 : value,
            Serials = serials, Payload = payload, Flags = fua && op == ShelfOp.Write ? ShelfRequestFlags.Fua : ShelfRequestFlags.None,
            Extents = op == ShelfOp.WriteGather ? extents : [],
        };

    static readonly Gen<ShelfStatus> Statuses =
        from key in U64s
        from beat in U64s
        from writes in Gen.Choose(0, 1000)
        from fenced in Gen.Elements(true, false)
        from departed in Gen.Elements(true, false)
        from epoch in U64s
        from claims in Gen.Choose(0, 3).SelectMany(n => Gen.ArrayOf(U64s.Select(s => new ArrayClaim(s, "B", s >> 3)), n))
        from slots in Gen.Choose(0, 3).SelectMany(n => Gen.ArrayOf(Names.Select(s => new SlotState(s, 256, Shelf.SerialOf(s), s.Length % 2 == 0)), n))
        select new ShelfStatus([new PortState("A", !fenced, fenced, key, beat, writes) { Departed = departed, MirrorStale = !departed, LogStale = fenced }, new PortState("B", true, false, 0, 0, 0)], key, epoch, claims, slots);

    static readonly Gen<ShelfResponse> Responses =
        from op in Gen.Elements(Enum.GetValues<ShelfOp>())
        from tag in U64s
        from status in Gen.Elements(Enum.GetValues<ShelfError>())
        from message in Names
        from lba in Gen.OneOf(Gen.Constant(-1L), Lbas)
        from name in Names
        from value in Gen.Choose(0, int.MaxValue)
        from names in Gen.Choose(0, 4).SelectMany(n => Gen.ArrayOf(Names, n))
        from claims in Gen.Choose(0, 3).SelectMany(n => Gen.ArrayOf(U64s.Select(s => new ArrayClaim(s, "A", s >> 1)), n))
        from shelfStatus in Statuses
        from payload in Payloads
        select new ShelfResponse(op, tag, status)
        {
            Message = message, Lba = lba, Name = name,
            Value = op == ShelfOp.Contains ? value & 1 : op == ShelfOp.Hello ? value & 0xffff : value,
            Names = names, Claims = claims, ShelfStatus = shelfStatus, Payload = payload,
        };

    [Fact]
    public void Every_request_round_trips_through_the_codec() =>
        Prop.ForAll(Requests.ToArbitrary(), request =>
        {
            var bytes = ShelfCodec.EncodeRequest(request);
            var back = DecodeRequest(Split(bytes, bytes.Length / 3, bytes.Length / 2));
            return back.Op == request.Op && back.Tag == request.Tag && ShelfCodec.EncodeRequest(back).AsSpan().SequenceEqual(bytes);
        }).Check(Quick);

    [Fact]
    public void Every_response_round_trips_through_the_codec() =>
        Prop.ForAll(Responses.ToArbitrary(), response =>
        {
            var bytes = ShelfCodec.EncodeResponse(response);
            var back = DecodeResponse(Split(bytes, 7, bytes.Length - 1));
            bool same = back.Op == response.Op && back.Tag == response.Tag && back.Status == response.Status
                && ShelfCodec.EncodeResponse(back).AsSpan().SequenceEqual(bytes);
            if (response.Status != ShelfError.None) same &= back.Message == response.Message && back.Lba == response.Lba;
            else if (response.Op is ShelfOp.Status or ShelfOp.Heartbeat)
                same &= back.ShelfStatus!.Ports.SequenceEqual(response.ShelfStatus!.Ports) && back.ShelfStatus.Slots.SequenceEqual(response.ShelfStatus.Slots)
                    && back.ShelfStatus.Claims.SequenceEqual(response.ShelfStatus.Claims) && back.ShelfStatus.EpochCounter == response.ShelfStatus.EpochCounter;
            else if (response.Op == ShelfOp.List) same &= back.Names.SequenceEqual(response.Names);
            else if (response.Op == ShelfOp.Claim) same &= back.Claims.SequenceEqual(response.Claims);
            return same;
        }).Check(Quick);

    [Fact]
    public void Arbitrary_bytes_never_throw_anything_but_a_protocol_error() =>
        Prop.ForAll(Gen.Choose(0, 80).SelectMany(n => Gen.ArrayOf(Gen.Choose(0, 255).Select(b => (byte)b), n)).ToArbitrary(), junk =>
        {
            // A valid header in front of random body bytes, for every opcode: decode or a typed error, nothing else.
            foreach (var op in Enum.GetValues<ShelfOp>())
            {
                try { ShelfCodec.ReadRequestBody(new ShelfRequestHeader(op, 0, 1, junk.Length), junk); }
                catch (ShelfProtocolException) { }
                try { ShelfCodec.ReadResponseBody(new ShelfResponseHeader(op, ShelfError.None, 1, junk.Length), junk); }
                catch (ShelfProtocolException) { }
            }
            return true;
        }).Check(Quick);

    [Fact]
    public void Long_messages_are_clipped_to_the_string_limit()
    {
        var r = new ShelfResponse(ShelfOp.Status, 1, ShelfError.Io) { Message = string.Concat(Enumerable.Repeat("é", 5000)) };
        var back = DecodeResponse(new ReadOnlySequence<byte>(ShelfCodec.EncodeResponse(r)));
        Assert.True(Encoding.UTF8.GetByteCount(back.Message) <= ShelfWire.MaxStringBytes);
        Assert.StartsWith("ééé", back.Message);
    }
}
