using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Duet.Drives;

namespace Duet.Shelf;

// Pure encoders and decoders for the shelf wire (ShelfWire.cs). Headers decode with Try*
// functions over a SequenceReader: false means "need more bytes", a ShelfProtocolException
// means the bytes are not the protocol. Bodies are decoded from one contiguous span (the
// connection waits for the whole body, at most ShelfWire.MaxBodyBytes) and must be consumed
// exactly: a short or a long body is a protocol error, answered with the request's tag.
//
// Every encoder runs its body writer twice: once counting (to fill in the header's body
// length), once writing. The two passes cannot disagree: they are the same code.
public static class ShelfCodec
{
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    // ---- headers -----------------------------------------------------------------------------------

    public static bool TryReadRequestHeader(ref SequenceReader<byte> reader, out ShelfRequestHeader header)
    {
        header = default;
        if (reader.Remaining < ShelfWire.RequestHeaderBytes) return false;
        reader.TryReadBigEndian(out int magic);
        reader.TryReadBigEndian(out short op);
        reader.TryReadBigEndian(out short flags);
        reader.TryReadBigEndian(out long tag);
        reader.TryReadBigEndian(out int length);
        if ((uint)magic != ShelfWire.RequestMagic)
            throw new ShelfProtocolException($"bad request magic 0x{(uint)magic:x8} (expected 0x{ShelfWire.RequestMagic:x8} \"DSRQ\")", framingLost: true);
        header = new ShelfRequestHeader((ShelfOp)(ushort)op, (ShelfRequestFlags)(ushort)flags, (ulong)tag, length);
        if ((uint)length > ShelfWire.MaxBodyBytes)
            throw new ShelfProtocolException($"request body of {(uint)length} bytes is over the limit of {ShelfWire.MaxBodyBytes}", framingLost: true);
        return true;
    }

    public static bool TryReadResponseHeader(ref SequenceReader<byte> reader, out ShelfResponseHeader header)
    {
        header = default;
        if (reader.Remaining < ShelfWire.ResponseHeaderBytes) return false;
        reader.TryReadBigEndian(out int magic);
        reader.TryReadBigEndian(out short op);
        reader.TryRead(out byte status);
        reader.TryRead(out byte reserved);
        reader.TryReadBigEndian(out long tag);
        reader.TryReadBigEndian(out int length);
        if ((uint)magic != ShelfWire.ResponseMagic)
            throw new ShelfProtocolException($"bad response magic 0x{(uint)magic:x8} (expected 0x{ShelfWire.ResponseMagic:x8} \"DSRS\")", framingLost: true);
        if (reserved != 0) throw new ShelfProtocolException($"response reserved byte is {reserved}, not 0", framingLost: true);
        if ((uint)length > ShelfWire.MaxBodyBytes)
            throw new ShelfProtocolException($"response body of {(uint)length} bytes is over the limit of {ShelfWire.MaxBodyBytes}", framingLost: true);
        header = new ShelfResponseHeader((ShelfOp)(ushort)op, (ShelfError)status, (ulong)tag, length);
        return true;
    }

    // ---- requests ----------------------------------------------------------------------------------

    /// <summary>Header and body bytes of <paramref name="request"/>.</summary>
    public static int RequestBytes(ShelfRequest request)
    {
        var w = BodyWriter.Counting();
        WriteRequestBody(ref w, request);
        return ShelfWire.RequestHeaderBytes + w.Position;
    }

    /// <summary>Writes header and body; returns the bytes written (<see cref="RequestBytes"/>).</summary>
    public static int WriteRequest(Span<byte> destination, ShelfRequest request) => WriteRequest(destination, request, request.Tag);

    /// <summary>As <see cref="WriteRequest(Span{byte}, ShelfRequest)"/>, with <paramref name="tag"/> in place of the request's own.</summary>
    public static int WriteRequest(Span<byte> destination, ShelfRequest request, ulong tag)
    {
        var body = new BodyWriter(destination[ShelfWire.RequestHeaderBytes..]);
        WriteRequestBody(ref body, request);
        BinaryPrimitives.WriteUInt32BigEndian(destination, ShelfWire.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)request.Op);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)request.Flags);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], tag);
        BinaryPrimitives.WriteInt32BigEndian(destination[16..], body.Position);
        return ShelfWire.RequestHeaderBytes + body.Position;
    }

    public static byte[] EncodeRequest(ShelfRequest request)
    {
        var bytes = new byte[RequestBytes(request)];
        WriteRequest(bytes, request);
        return bytes;
    }

    static void WriteRequestBody(ref BodyWriter w, ShelfRequest r)
    {
        switch (r.Op)
        {
            case ShelfOp.List or ShelfOp.Reserve or ShelfOp.Status:
                break;
            case ShelfOp.Hello or ShelfOp.Contains or ShelfOp.Open or ShelfOp.Flush or ShelfOp.Fence or ShelfOp.Unfence
                or ShelfOp.Pull or ShelfOp.Insert or ShelfOp.AdminFence or ShelfOp.AdminUnfence:
                w.String(r.Name);
                break;
            case ShelfOp.Create:
                w.String(r.Name);
                w.U64((ulong)r.SizeBytes);
                break;
            case ShelfOp.Read:
                w.String(r.Name);
                w.U64((ulong)r.Lba);
                w.U32((uint)r.Length);
                break;
            case ShelfOp.Write:
                w.String(r.Name);
                w.U64((ulong)r.Lba);
                w.U32((uint)r.Payload.Length);
                w.Bytes(r.Payload.Span);
                break;
            case ShelfOp.WriteGather:
                w.String(r.Name);
                w.U8((byte)r.Extents.Count);
                foreach (var e in r.Extents)
                {
                    w.U64((ulong)e.Lba);
                    w.U32((uint)e.Data.Length);
                }
                foreach (var e in r.Extents) w.Bytes(e.Data.Span);
                break;
            case ShelfOp.Register or ShelfOp.Preempt or ShelfOp.Heartbeat:
                w.U64(r.Value);
                break;
            case ShelfOp.SetEnabled or ShelfOp.SetMirrorStale or ShelfOp.SetLogStale:
                w.U8((byte)(r.Value == 0 ? 0 : 1));
                break;
            case ShelfOp.Claim or ShelfOp.Release or ShelfOp.ClaimFor:
                if (r.Op == ShelfOp.ClaimFor) w.String(r.Name);
                w.U32((uint)r.Serials.Count);
                foreach (var s in r.Serials) w.U64(s);
                break;
            default:
                throw new ArgumentException($"no encoding for opcode {(ushort)r.Op}", nameof(r));
        }
    }

    /// <summary>Decodes a request body. A <see cref="ShelfProtocolException"/> (not framing-lost: the header's length
    /// was honoured) for an unknown opcode or a body that is not the opcode's. The write payload is a slice of <paramref name="body"/>.</summary>
    public static ShelfRequest ReadRequestBody(ShelfRequestHeader header, ReadOnlyMemory<byte> body)
    {
        var r = new BodyReader(body.Span);
        if ((header.Flags & ~ShelfRequestFlags.Fua) != 0) throw new ShelfProtocolException($"unknown request flags 0x{(ushort)header.Flags:x4}");
        if (header.Flags != 0 && header.Op != ShelfOp.Write) throw new ShelfProtocolException($"flag FUA on {header.Op}, which is not a write");
        var request = new ShelfRequest(header.Op, header.Tag) { Flags = header.Flags };
        switch (header.Op)
        {
            case ShelfOp.List or ShelfOp.Reserve or ShelfOp.Status:
                break;
            case ShelfOp.Hello or ShelfOp.Contains or ShelfOp.Open or ShelfOp.Flush or ShelfOp.Fence or ShelfOp.Unfence
                or ShelfOp.Pull or ShelfOp.Insert or ShelfOp.AdminFence or ShelfOp.AdminUnfence:
                request = request with { Name = r.String() };
                break;
            case ShelfOp.Create:
                request = request with { Name = r.String(), SizeBytes = r.I64("size") };
                break;
            case ShelfOp.Read:
            {
                var name = r.String();
                var lba = r.I64("LBA");
                var length = r.U32();
                if (length > ShelfWire.MaxTransferBytes) throw new ShelfProtocolException($"read of {length} bytes is over the limit of {ShelfWire.MaxTransferBytes}");
                request = request with { Name = name, Lba = lba, Length = (int)length };
                break;
            }
            case ShelfOp.Write:
            {
                var name = r.String();
                var lba = r.I64("LBA");
                var length = r.U32();
                if (length > ShelfWire.MaxTransferBytes) throw new ShelfProtocolException($"write of {length} bytes is over the limit of {ShelfWire.MaxTransferBytes}");
                if (length != r.Remaining) throw new ShelfProtocolException($"write says {length} bytes of data but the body holds {r.Remaining}");
                int at = body.Length - r.Remaining;
                r.Skip((int)length);
                request = request with { Name = name, Lba = lba, Payload = body.Slice(at, (int)length) };
                break;
            }
            case ShelfOp.WriteGather:
            {
                var name = r.String();
                int count = r.U8();
                if (count is 0 or > ShelfWire.MaxGatherExtents) throw new ShelfProtocolException($"a gathered write of {count} extents (1 to {ShelfWire.MaxGatherExtents})");
                var lbas = new long[count];
                var lengths = new int[count];
                long total = 0;
                for (int i = 0; i < count; i++)
                {
                    lbas[i] = r.I64("LBA");
                    uint length = r.U32();
                    total += length;
                    if (total > ShelfWire.MaxTransferBytes) throw new ShelfProtocolException($"a gathered write of more than {ShelfWire.MaxTransferBytes} bytes");
                    lengths[i] = (int)length;
                }
                if (total != r.Remaining) throw new ShelfProtocolException($"gathered write says {total} bytes of data but the body holds {r.Remaining}");
                int at = body.Length - r.Remaining;
                var extents = new WriteExtent[count];
                for (int i = 0; i < count; i++)
                {
                    extents[i] = new WriteExtent(lbas[i], body.Slice(at, lengths[i]));
                    at += lengths[i];
                }
                r.Skip((int)total);
                request = request with { Name = name, Extents = extents };
                break;
            }
            case ShelfOp.Register or ShelfOp.Preempt or ShelfOp.Heartbeat:
                request = request with { Value = r.U64() };
                break;
            case ShelfOp.SetEnabled or ShelfOp.SetMirrorStale or ShelfOp.SetLogStale:
            {
                var b = r.U8();
                if (b > 1) throw new ShelfProtocolException($"{request.Op switch { ShelfOp.SetEnabled => "set-enabled", ShelfOp.SetMirrorStale => "set-mirror-stale", _ => "set-log-stale" }} takes 0 or 1, not {b}");
                request = request with { Value = b };
                break;
            }
            case ShelfOp.Claim or ShelfOp.Release or ShelfOp.ClaimFor:
            {
                if (request.Op == ShelfOp.ClaimFor) request = request with { Name = r.String() };
                var count = r.U32();
                if (count > ShelfWire.MaxSerials) throw new ShelfProtocolException($"{count} serials is over the limit of {ShelfWire.MaxSerials}");
                var serials = new ulong[count];
                for (int i = 0; i < serials.Length; i++) serials[i] = r.U64();
                request = request with { Serials = serials };
                break;
            }
            default:
                throw new ShelfProtocolException($"unknown opcode {(ushort)header.Op}");
        }
        r.End(header.Op);
        return request;
    }

    // ---- responses ---------------------------------------------------------------------------------

    public static int ResponseBytes(ShelfResponse response)
    {
        var w = BodyWriter.Counting();
        WriteResponseBody(ref w, response);
        return ShelfWire.ResponseHeaderBytes + w.Position;
    }

    public static int WriteResponse(Span<byte> destination, ShelfResponse response)
    {
        var body = new BodyWriter(destination[ShelfWire.ResponseHeaderBytes..]);
        WriteResponseBody(ref body, response);
        WriteResponseHeader(destination, new ShelfResponseHeader(response.Op, response.Status, response.Tag, body.Position));
        return ShelfWire.ResponseHeaderBytes + body.Position;
    }

    /// <summary>Just the header: the server writes a read's data after it straight from its buffer.</summary>
    public static void WriteResponseHeader(Span<byte> destination, ShelfResponseHeader header)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, ShelfWire.ResponseMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)header.Op);
        destination[6] = (byte)header.Status;
        destination[7] = 0;
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], header.Tag);
        BinaryPrimitives.WriteInt32BigEndian(destination[16..], header.BodyBytes);
    }

    public static byte[] EncodeResponse(ShelfResponse response)
    {
        var bytes = new byte[ResponseBytes(response)];
        WriteResponse(bytes, response);
        return bytes;
    }

    static void WriteResponseBody(ref BodyWriter w, ShelfResponse r)
    {
        if (r.Status != ShelfError.None)
        {
            w.U64(r.Lba < 0 ? ShelfWire.NoLba : (ulong)r.Lba);
            w.String(Clip(r.Message));
            return;
        }
        switch (r.Op)
        {
            case ShelfOp.Hello:
                w.String(r.Name);
                w.U16((ushort)r.Value);
                break;
            case ShelfOp.List:
                w.U32((uint)r.Names.Count);
                foreach (var n in r.Names) w.String(n);
                break;
            case ShelfOp.Contains:
                w.U8((byte)(r.Value == 0 ? 0 : 1));
                break;
            case ShelfOp.Open or ShelfOp.Create:
                w.U64((ulong)r.Value);
                w.String(r.Name);
                break;
            case ShelfOp.Read:
                w.Bytes(r.Payload.Span);
                break;
            case ShelfOp.Claim or ShelfOp.ClaimFor:
                w.U32((uint)r.Claims.Count);
                foreach (var c in r.Claims) WriteClaim(ref w, c);
                break;
            case ShelfOp.Heartbeat or ShelfOp.Status:
                WriteStatus(ref w, r.ShelfStatus ?? throw new ArgumentException($"a {r.Op} response needs the status", nameof(r)));
                break;
            default:
                break; // no result
        }
    }

    /// <summary>Messages are cut to fit the protocol's string limit (on a character boundary).</summary>
    static string Clip(string message)
    {
        if (StrictUtf8.GetByteCount(message) <= ShelfWire.MaxStringBytes) return message;
        int chars = Math.Min(message.Length, ShelfWire.MaxStringBytes / 4);
        if (chars > 0 && char.IsHighSurrogate(message[chars - 1])) chars--;
        return message[..chars];
    }

    static void WriteClaim(ref BodyWriter w, ArrayClaim c)
    {
        w.U64(c.Serial);
        w.String(c.Owner);
        w.U64(c.Epoch);
    }

    static ArrayClaim ReadClaim(ref BodyReader r) => new(r.U64(), r.String(), r.U64());

    // Status: u8 port count, each: string name, u8 bits (1 enabled, 2 fenced, 4 mirror stale, 8 departed, 16 log stale), u64 key, u64 heartbeat,
    // u64 writes in flight; u64 reservation holder; u64 epoch counter; u32 claim count, claims;
    // u32 slot count, each: string name, u64 block count, string serial, u8 pulled.
    static void WriteStatus(ref BodyWriter w, ShelfStatus s)
    {
        w.U8((byte)s.Ports.Count);
        foreach (var p in s.Ports)
        {
            w.String(p.Port);
            w.U8((byte)((p.Enabled ? 1 : 0) | (p.Fenced ? 2 : 0) | (p.MirrorStale ? 4 : 0) | (p.Departed ? 8 : 0) | (p.LogStale ? 16 : 0)));
            w.U64(p.Key);
            w.U64(p.Heartbeat);
            w.U64((ulong)p.InFlightWrites);
        }
        w.U64(s.ReservationHolder);
        w.U64(s.EpochCounter);
        w.U32((uint)s.Claims.Count);
        foreach (var c in s.Claims) WriteClaim(ref w, c);
        w.U32((uint)s.Slots.Count);
        foreach (var slot in s.Slots)
        {
            w.String(slot.Name);
            w.U64((ulong)slot.BlockCount);
            w.String(slot.Serial);
            w.U8((byte)(slot.Pulled ? 1 : 0));
        }
        w.U64(s.Boot);
    }

    static ShelfStatus ReadStatus(ref BodyReader r)
    {
        int portCount = r.U8();
        var ports = new List<PortState>(portCount);
        for (int i = 0; i < portCount; i++)
        {
            var name = r.String();
            var bits = r.U8();
            if (bits > 31) throw new ShelfProtocolException($"port state bits 0x{bits:x2} are not known");
            ports.Add(new PortState(name, (bits & 1) != 0, (bits & 2) != 0, r.U64(), r.U64(), r.I64("writes in flight")) { MirrorStale = (bits & 4) != 0, Departed = (bits & 8) != 0, LogStale = (bits & 16) != 0 });
        }
        var holder = r.U64();
        var epoch = r.U64();
        var claims = new List<ArrayClaim>();
        for (uint i = 0, n = r.Count("claims"); i < n; i++) claims.Add(ReadClaim(ref r));
        var slots = new List<SlotState>();
        for (uint i = 0, n = r.Count("slots"); i < n; i++)
        {
            var name = r.String();
            var blocks = r.I64("block count");
            var serial = r.String();
            var pulled = r.U8();
            if (pulled > 1) throw new ShelfProtocolException($"slot pulled byte is {pulled}, not 0 or 1");
            slots.Add(new SlotState(name, blocks, serial, pulled == 1));
        }
        return new ShelfStatus(ports, holder, epoch, claims, slots) { Boot = r.U64() };
    }

    /// <summary>Decodes a response body (the client's side). A read's data is a slice of <paramref name="body"/>.</summary>
    public static ShelfResponse ReadResponseBody(ShelfResponseHeader header, ReadOnlyMemory<byte> body)
    {
        var r = new BodyReader(body.Span);
        var response = new ShelfResponse(header.Op, header.Tag, header.Status);
        if (header.Status != ShelfError.None)
        {
            if (!Enum.IsDefined(header.Status)) throw new ShelfProtocolException($"unknown status {(byte)header.Status}");
            var lba = r.U64();
            response = response with { Lba = lba == ShelfWire.NoLba ? -1 : (long)lba, Message = r.String() };
            r.End(header.Op);
            return response;
        }
        switch (header.Op)
        {
            case ShelfOp.Hello:
                response = response with { Name = r.String(), Value = r.U16() };
                break;
            case ShelfOp.List:
            {
                var names = new List<string>();
                for (uint i = 0, n = r.Count("names"); i < n; i++) names.Add(r.String());
                response = response with { Names = names };
                break;
            }
            case ShelfOp.Contains:
            {
                var b = r.U8();
                if (b > 1) throw new ShelfProtocolException($"contains answers 0 or 1, not {b}");
                response = response with { Value = b };
                break;
            }
            case ShelfOp.Open or ShelfOp.Create:
                response = response with { Value = r.I64("block count"), Name = r.String() };
                break;
            case ShelfOp.Read:
                response = response with { Payload = body };
                r.Skip(r.Remaining);
                break;
            case ShelfOp.Claim or ShelfOp.ClaimFor:
            {
                var claims = new List<ArrayClaim>();
                for (uint i = 0, n = r.Count("claims"); i < n; i++) claims.Add(ReadClaim(ref r));
                response = response with { Claims = claims };
                break;
            }
            case ShelfOp.Heartbeat or ShelfOp.Status:
                response = response with { ShelfStatus = ReadStatus(ref r) };
                break;
            case ShelfOp.Write or ShelfOp.WriteGather or ShelfOp.Flush or ShelfOp.Register or ShelfOp.Reserve or ShelfOp.Preempt or ShelfOp.SetEnabled or ShelfOp.SetMirrorStale
                or ShelfOp.SetLogStale or ShelfOp.Fence or ShelfOp.Unfence or ShelfOp.Release or ShelfOp.Pull or ShelfOp.Insert or ShelfOp.AdminFence or ShelfOp.AdminUnfence:
                break;
            default:
                throw new ShelfProtocolException($"response to unknown opcode {(ushort)header.Op}");
        }
        r.End(header.Op);
        return response;
    }

    // ---- primitives --------------------------------------------------------------------------------

    /// <summary>Writes big-endian fields at <see cref="Position"/>; with an empty span it only counts.</summary>
    ref struct BodyWriter(Span<byte> destination, bool counting = false)
    {
        readonly Span<byte> _dest = destination;
        readonly bool _counting = counting;
        public int Position;

        public static BodyWriter Counting() => new(Span<byte>.Empty, counting: true);

        Span<byte> Take(int n)
        {
            int at = Position;
            Position += n;
            return _counting ? default : _dest.Slice(at, n);
        }

        public void U8(byte v) { var s = Take(1); if (!_counting) s[0] = v; }
        public void U16(ushort v) { var s = Take(2); if (!_counting) BinaryPrimitives.WriteUInt16BigEndian(s, v); }
        public void U32(uint v) { var s = Take(4); if (!_counting) BinaryPrimitives.WriteUInt32BigEndian(s, v); }
        public void U64(ulong v) { var s = Take(8); if (!_counting) BinaryPrimitives.WriteUInt64BigEndian(s, v); }
        public void Bytes(ReadOnlySpan<byte> v) { var s = Take(v.Length); if (!_counting) v.CopyTo(s); }

        public void String(string v)
        {
            int n = StrictUtf8.GetByteCount(v);
            if (n > ShelfWire.MaxStringBytes) throw new ArgumentException($"a string of {n} UTF-8 bytes is over the limit of {ShelfWire.MaxStringBytes}");
            U16((ushort)n);
            var s = Take(n);
            if (!_counting) StrictUtf8.GetBytes(v, s);
        }
    }

    /// <summary>Reads big-endian fields; running short is a protocol error.</summary>
    ref struct BodyReader(ReadOnlySpan<byte> body)
    {
        readonly ReadOnlySpan<byte> _body = body;
        int _at;

        public readonly int Remaining => _body.Length - _at;

        ReadOnlySpan<byte> Take(int n)
        {
            if (n > Remaining) throw new ShelfProtocolException($"body ends {n - Remaining} byte(s) short");
            var s = _body.Slice(_at, n);
            _at += n;
            return s;
        }

        public void Skip(int n) => Take(n);
        public byte U8() => Take(1)[0];
        public ushort U16() => BinaryPrimitives.ReadUInt16BigEndian(Take(2));
        public uint U32() => BinaryPrimitives.ReadUInt32BigEndian(Take(4));
        public ulong U64() => BinaryPrimitives.ReadUInt64BigEndian(Take(8));

        public long I64(string what)
        {
            var v = U64();
            if (v > long.MaxValue) throw new ShelfProtocolException($"{what} 0x{v:x} is over 2^63-1");
            return (long)v;
        }

        /// <summary>A count of items, each of at least one byte: more than the body holds is malformed.</summary>
        public uint Count(string what)
        {
            var n = U32();
            if (n > Remaining) throw new ShelfProtocolException($"{n} {what} cannot fit in the {Remaining} bytes left");
            return n;
        }

        public string String()
        {
            int n = U16();
            if (n > ShelfWire.MaxStringBytes) throw new ShelfProtocolException($"a string of {n} bytes is over the limit of {ShelfWire.MaxStringBytes}");
            var bytes = Take(n);
            try { return StrictUtf8.GetString(bytes); }
            catch (DecoderFallbackException) { throw new ShelfProtocolException("a string is not valid UTF-8"); }
        }

        public readonly void End(ShelfOp op)
        {
            if (Remaining != 0) throw new ShelfProtocolException($"{Remaining} byte(s) left over after a {op} body");
        }
    }
}
