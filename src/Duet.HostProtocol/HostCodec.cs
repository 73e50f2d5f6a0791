using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Duet.Core;

namespace Duet.HostProtocol;

/// <summary>A host opens a connection: who it is and which volume it attaches.</summary>
public readonly record struct HostHello(ulong HostId, string Volume, ushort Version = HostWire.Version);

/// <summary>The unit's answer to a hello: the volume's size and the unit's identity, or why not.</summary>
public readonly record struct HostHelloReply(HostStatus Status, ulong VolumeSizeBytes, char Controller, byte Unit, uint PayloadBytesMax,
    HostVolumeFlags Flags = HostVolumeFlags.None);

/// <summary>One volume in a unit's answer to a list request.</summary>
public readonly record struct HostVolumeEntry(string Name, ulong SizeBytes, HostVolumeFlags Flags);

/// <summary>A unit's answer to a list request: every volume it attaches.</summary>
public sealed record HostVolumeList(HostStatus Status, IReadOnlyList<HostVolumeEntry> Volumes);

/// <summary>One host command as it travels: a request frame's fields and a write's payload.</summary>
public sealed record HostRequest(HostOpcode Opcode, HostRequestFlags Flags, ulong HostId, ulong HostTag, ulong HostTimestampMicros,
    ulong Offset, uint Length, ReadOnlyMemory<byte> Payload)
{
    public bool Equals(HostRequest? other) =>
        other is not null && Opcode == other.Opcode && Flags == other.Flags && HostId == other.HostId && HostTag == other.HostTag
        && HostTimestampMicros == other.HostTimestampMicros && Offset == other.Offset && Length == other.Length
        && Payload.Span.SequenceEqual(other.Payload.Span);

    public override int GetHashCode() => HashCode.Combine(Opcode, HostId, HostTag, Offset, Length);
}

/// <summary>The answer to one host command: its tag, a status, and a successful read's data.</summary>
public sealed record HostCompletion(ulong HostTag, HostStatus Status, ReadOnlyMemory<byte> Data)
{
    public static HostCompletion Ok(ulong tag) => new(tag, HostStatus.Ok, ReadOnlyMemory<byte>.Empty);
    public static HostCompletion Error(ulong tag, HostStatus status) => new(tag, status, ReadOnlyMemory<byte>.Empty);

    public bool Equals(HostCompletion? other) =>
        other is not null && HostTag == other.HostTag && Status == other.Status && Data.Span.SequenceEqual(other.Data.Span);

    public override int GetHashCode() => HashCode.Combine(HostTag, Status, Data.Length);
}

/// <summary>
/// The host protocol's pure codec. Readers take a <see cref="SequenceReader{T}"/> and answer
/// Done (reader advanced past the frame), NeedMoreData (nothing consumed) or InvalidData with
/// a <see cref="HostWireError"/>. On InvalidData the reader was advanced past the whole bad
/// frame when the framing survives (<see cref="HostWireErrors.LosesFraming"/> false), and not
/// at all when it does not; a bad request still reports the header it read, so the unit can
/// answer its tag.
/// </summary>
public static class HostCodec
{
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    // ---- hello ----------------------------------------------------------------------------

    public static int HelloBytes(HostHello hello) => HostWire.HelloFixedBytes + Encoding.UTF8.GetByteCount(hello.Volume);

    public static int WriteHello(HostHello hello, Span<byte> destination)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(hello.Volume);
        Invariant.Assert(nameBytes is > 0 and <= HostWire.VolumeNameBytesMax);
        var d = destination[..(HostWire.HelloFixedBytes + nameBytes)];
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.HelloMagicOffset..], HostWire.HelloMagic);
        BinaryPrimitives.WriteUInt16BigEndian(d[HostWire.HelloVersionOffset..], hello.Version);
        BinaryPrimitives.WriteUInt16BigEndian(d[HostWire.HelloNameLengthOffset..], (ushort)nameBytes);
        BinaryPrimitives.WriteUInt64BigEndian(d[HostWire.HelloHostIdOffset..], hello.HostId);
        Encoding.UTF8.GetBytes(hello.Volume, d[HostWire.HelloNameOffset..]);
        return d.Length;
    }

    /// <summary>A hello with another version decodes (Done) so the unit can answer BadVersion.</summary>
    public static OperationStatus TryReadHello(ref SequenceReader<byte> reader, out HostHello hello, out HostWireError error)
    {
        hello = default;
        Span<byte> h = stackalloc byte[HostWire.HelloFixedBytes];
        if (!reader.TryCopyTo(h)) return NeedMore(out error);
        if (BinaryPrimitives.ReadUInt32BigEndian(h) != HostWire.HelloMagic) return Invalid(out error, HostWireError.BadMagic);
        int nameBytes = BinaryPrimitives.ReadUInt16BigEndian(h[HostWire.HelloNameLengthOffset..]);
        if (reader.Remaining < HostWire.HelloFixedBytes + nameBytes) return NeedMore(out error);
        var frame = reader.UnreadSequence.Slice(0, HostWire.HelloFixedBytes + nameBytes);
        reader.Advance(frame.Length);
        ushort version = BinaryPrimitives.ReadUInt16BigEndian(h[HostWire.HelloVersionOffset..]);
        ulong hostId = BinaryPrimitives.ReadUInt64BigEndian(h[HostWire.HelloHostIdOffset..]);
        if (nameBytes is 0 or > HostWire.VolumeNameBytesMax) return Invalid(out error, HostWireError.BadText);
        string name;
        try { name = StrictUtf8.GetString(frame.Slice(HostWire.HelloNameOffset)); }
        catch (DecoderFallbackException) { return Invalid(out error, HostWireError.BadText); }
        hello = new HostHello(hostId, name, version);
        error = HostWireError.None;
        return OperationStatus.Done;
    }

    public static int WriteHelloReply(HostHelloReply reply, Span<byte> destination)
    {
        Invariant.Assert(reply.Controller is 'A' or 'B');
        var d = destination[..HostWire.HelloReplyBytes];
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.HelloReplyMagicOffset..], HostWire.HelloReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.HelloReplyStatusOffset..], (uint)reply.Status);
        BinaryPrimitives.WriteUInt64BigEndian(d[HostWire.HelloReplySizeOffset..], reply.VolumeSizeBytes);
        d[HostWire.HelloReplyControllerOffset] = (byte)reply.Controller;
        d[HostWire.HelloReplyUnitOffset] = reply.Unit;
        Invariant.Assert((reply.Flags & ~HostVolumeFlags.Known) == 0);
        d[HostWire.HelloReplyFlagsOffset] = (byte)reply.Flags;
        d[HostWire.HelloReplyZeroOffset] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.HelloReplyPayloadMaxOffset..], reply.PayloadBytesMax);
        return d.Length;
    }

    public static OperationStatus TryReadHelloReply(ref SequenceReader<byte> reader, out HostHelloReply reply, out HostWireError error)
    {
        reply = default;
        Span<byte> d = stackalloc byte[HostWire.HelloReplyBytes];
        if (!reader.TryCopyTo(d)) return NeedMore(out error);
        if (BinaryPrimitives.ReadUInt32BigEndian(d) != HostWire.HelloReplyMagic) return Invalid(out error, HostWireError.BadMagic);
        reader.Advance(HostWire.HelloReplyBytes);
        uint status = BinaryPrimitives.ReadUInt32BigEndian(d[HostWire.HelloReplyStatusOffset..]);
        byte controller = d[HostWire.HelloReplyControllerOffset];
        if (!Enum.IsDefined((HostStatus)status) || controller is not ((byte)'A' or (byte)'B')) return Invalid(out error, HostWireError.BadEnum);
        if (d[HostWire.HelloReplyZeroOffset] != 0) return Invalid(out error, HostWireError.NonZeroReserved);
        var flags = (HostVolumeFlags)d[HostWire.HelloReplyFlagsOffset];
        if ((flags & ~HostVolumeFlags.Known) != 0) return Invalid(out error, HostWireError.BadFlags);
        reply = new HostHelloReply((HostStatus)status, BinaryPrimitives.ReadUInt64BigEndian(d[HostWire.HelloReplySizeOffset..]),
            (char)controller, d[HostWire.HelloReplyUnitOffset], BinaryPrimitives.ReadUInt32BigEndian(d[HostWire.HelloReplyPayloadMaxOffset..]), flags);
        error = HostWireError.None;
        return OperationStatus.Done;
    }

    // ---- volume list ----------------------------------------------------------------------

    public static int WriteList(Span<byte> destination)
    {
        var d = destination[..HostWire.ListBytes];
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.ListMagicOffset..], HostWire.ListMagic);
        BinaryPrimitives.WriteUInt16BigEndian(d[HostWire.ListVersionOffset..], HostWire.Version);
        BinaryPrimitives.WriteUInt16BigEndian(d[HostWire.ListZeroOffset..], 0);
        return d.Length;
    }

    /// <summary>A list request; another version decodes (Done) with its number so the unit can answer BadVersion.</summary>
    public static OperationStatus TryReadList(ref SequenceReader<byte> reader, out ushort version, out HostWireError error)
    {
        version = 0;
        Span<byte> d = stackalloc byte[HostWire.ListBytes];
        if (!reader.TryCopyTo(d)) return NeedMore(out error);
        if (BinaryPrimitives.ReadUInt32BigEndian(d) != HostWire.ListMagic) return Invalid(out error, HostWireError.BadMagic);
        reader.Advance(HostWire.ListBytes);
        if (BinaryPrimitives.ReadUInt16BigEndian(d[HostWire.ListZeroOffset..]) != 0) return Invalid(out error, HostWireError.NonZeroReserved);
        version = BinaryPrimitives.ReadUInt16BigEndian(d[HostWire.ListVersionOffset..]);
        error = HostWireError.None;
        return OperationStatus.Done;
    }

    public static byte[] EncodeListReply(HostVolumeList list)
    {
        Invariant.Assert(list.Volumes.Count <= HostWire.ListEntriesMax);
        int body = 0;
        foreach (var v in list.Volumes)
        {
            int n = Encoding.UTF8.GetByteCount(v.Name);
            Invariant.Assert(n is > 0 and <= HostWire.VolumeNameBytesMax);
            body += HostWire.ListEntryFixedBytes + n;
        }
        var frame = new byte[HostWire.ListReplyHeaderBytes + body];
        var d = frame.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.ListReplyMagicOffset..], HostWire.ListReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.ListReplyStatusOffset..], (uint)list.Status);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.ListReplyCountOffset..], (uint)list.Volumes.Count);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.ListReplyBodyOffset..], (uint)body);
        int at = HostWire.ListReplyHeaderBytes;
        foreach (var v in list.Volumes)
        {
            Invariant.Assert((v.Flags & ~HostVolumeFlags.Known) == 0);
            BinaryPrimitives.WriteUInt64BigEndian(d[at..], v.SizeBytes);
            d[at + 8] = (byte)v.Flags;
            int n = Encoding.UTF8.GetBytes(v.Name, d[(at + HostWire.ListEntryFixedBytes)..]);
            d[at + 9] = (byte)n;
            at += HostWire.ListEntryFixedBytes + n;
        }
        Invariant.Assert(at == frame.Length);
        return frame;
    }

    public static OperationStatus TryReadListReply(ref SequenceReader<byte> reader, out HostVolumeList? list, out HostWireError error)
    {
        list = null;
        Span<byte> h = stackalloc byte[HostWire.ListReplyHeaderBytes];
        if (!reader.TryCopyTo(h)) return NeedMore(out error);
        if (BinaryPrimitives.ReadUInt32BigEndian(h) != HostWire.ListReplyMagic) return Invalid(out error, HostWireError.BadMagic);
        uint status = BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.ListReplyStatusOffset..]);
        uint count = BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.ListReplyCountOffset..]);
        uint body = BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.ListReplyBodyOffset..]);
        if (count > HostWire.ListEntriesMax || body > HostWire.ListEntriesMax * (HostWire.ListEntryFixedBytes + HostWire.VolumeNameBytesMax))
            return Invalid(out error, HostWireError.TooLong);
        if (reader.Remaining < HostWire.ListReplyHeaderBytes + body) return NeedMore(out error);
        var bytes = reader.UnreadSequence.Slice(HostWire.ListReplyHeaderBytes, body).ToArray();
        reader.Advance(HostWire.ListReplyHeaderBytes + body);
        if (!Enum.IsDefined((HostStatus)status)) return Invalid(out error, HostWireError.BadEnum);
        var volumes = new List<HostVolumeEntry>((int)count);
        int at = 0;
        for (uint i = 0; i < count; i++)
        {
            if (bytes.Length - at < HostWire.ListEntryFixedBytes) return Invalid(out error, HostWireError.BadLength);
            ulong size = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(at));
            var flags = (HostVolumeFlags)bytes[at + 8];
            int n = bytes[at + 9];
            if ((flags & ~HostVolumeFlags.Known) != 0) return Invalid(out error, HostWireError.BadFlags);
            if (n == 0 || bytes.Length - at - HostWire.ListEntryFixedBytes < n) return Invalid(out error, HostWireError.BadLength);
            string name;
            try { name = StrictUtf8.GetString(bytes, at + HostWire.ListEntryFixedBytes, n); }
            catch (DecoderFallbackException) { return Invalid(out error, HostWireError.BadText); }
            volumes.Add(new HostVolumeEntry(name, size, flags));
            at += HostWire.ListEntryFixedBytes + n;
        }
        if (at != bytes.Length) return Invalid(out error, HostWireError.BadLength);
        list = new HostVolumeList((HostStatus)status, volumes);
        error = HostWireError.None;
        return OperationStatus.Done;
    }

    // ---- request --------------------------------------------------------------------------

    public static int RequestBytes(HostRequest request) => HostWire.RequestHeaderBytes + request.Payload.Length;

    public static int WriteRequest(HostRequest request, Span<byte> destination)
    {
        Invariant.Assert(request.Opcode == HostOpcode.Write ? request.Payload.Length == request.Length : request.Payload.IsEmpty);
        var d = destination[..RequestBytes(request)];
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.RequestMagicOffset..], HostWire.RequestMagic);
        d[HostWire.RequestOpcodeOffset] = (byte)request.Opcode;
        d[HostWire.RequestFlagsOffset] = (byte)request.Flags;
        BinaryPrimitives.WriteUInt16BigEndian(d[HostWire.RequestZero1Offset..], 0);
        BinaryPrimitives.WriteUInt64BigEndian(d[HostWire.RequestHostIdOffset..], request.HostId);
        BinaryPrimitives.WriteUInt64BigEndian(d[HostWire.RequestTagOffset..], request.HostTag);
        BinaryPrimitives.WriteUInt64BigEndian(d[HostWire.RequestTimestampOffset..], request.HostTimestampMicros);
        BinaryPrimitives.WriteUInt64BigEndian(d[HostWire.RequestOffsetOffset..], request.Offset);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.RequestLengthOffset..], request.Length);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.RequestZero2Offset..], 0);
        request.Payload.Span.CopyTo(d[HostWire.RequestHeaderBytes..]);
        return d.Length;
    }

    public static byte[] EncodeRequest(HostRequest request)
    {
        var b = new byte[RequestBytes(request)];
        WriteRequest(request, b);
        return b;
    }

    /// <summary>
    /// Reads one request frame. A write's payload is copied out. <paramref name="request"/> is
    /// set whenever the header was readable (also on InvalidData), with an empty payload when invalid.
    /// </summary>
    public static OperationStatus TryReadRequest(ref SequenceReader<byte> reader, int payloadBytesMax, out HostRequest? request, out HostWireError error)
    {
        request = null;
        Span<byte> h = stackalloc byte[HostWire.RequestHeaderBytes];
        if (reader.Remaining >= 4)
        {
            // The magic decides before a whole header is in: a stream of garbage is refused at once.
            Span<byte> magic = stackalloc byte[4];
            reader.TryCopyTo(magic);
            if (BinaryPrimitives.ReadUInt32BigEndian(magic) != HostWire.RequestMagic) return Invalid(out error, HostWireError.BadMagic);
        }
        if (!reader.TryCopyTo(h)) return NeedMore(out error);
        byte opcode = h[HostWire.RequestOpcodeOffset];
        var flags = (HostRequestFlags)h[HostWire.RequestFlagsOffset];
        ulong offset = BinaryPrimitives.ReadUInt64BigEndian(h[HostWire.RequestOffsetOffset..]);
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.RequestLengthOffset..]);
        var header = new HostRequest((HostOpcode)opcode, flags, BinaryPrimitives.ReadUInt64BigEndian(h[HostWire.RequestHostIdOffset..]),
            BinaryPrimitives.ReadUInt64BigEndian(h[HostWire.RequestTagOffset..]), BinaryPrimitives.ReadUInt64BigEndian(h[HostWire.RequestTimestampOffset..]),
            offset, length, ReadOnlyMemory<byte>.Empty);
        if (opcode is < (byte)HostOpcode.Read or > (byte)HostOpcode.Flush) { request = header; return Invalid(out error, HostWireError.BadOpcode); }
        bool hasPayload = opcode == (byte)HostOpcode.Write;
        if (hasPayload && length > payloadBytesMax) { request = header; return Invalid(out error, HostWireError.TooLong); }
        long frameBytes = HostWire.RequestHeaderBytes + (hasPayload ? length : 0);
        if (reader.Remaining < frameBytes) return NeedMore(out error);

        request = header;
        if ((flags & ~HostRequestFlags.Known) != 0) return Skip(ref reader, frameBytes, out error, HostWireError.BadFlags);
        if (BinaryPrimitives.ReadUInt16BigEndian(h[HostWire.RequestZero1Offset..]) != 0 || BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.RequestZero2Offset..]) != 0)
            return Skip(ref reader, frameBytes, out error, HostWireError.NonZeroReserved);
        bool lengthOk = opcode == (byte)HostOpcode.Flush
            ? offset == 0 && length == 0
            : length > 0 && length <= payloadBytesMax && length % HostWire.SectorBytes == 0 && offset % HostWire.SectorBytes == 0;
        if (!lengthOk) return Skip(ref reader, frameBytes, out error, HostWireError.BadLength);

        reader.Advance(HostWire.RequestHeaderBytes);
        if (hasPayload)
        {
            var payload = new byte[length];
            reader.TryCopyTo(payload);
            reader.Advance(length);
            request = header with { Payload = payload };
        }
        error = HostWireError.None;
        return OperationStatus.Done;
    }

    /// <summary>Decodes exactly one whole request frame (a forwarded frame off the ICL).</summary>
    public static HostWireError TryDecodeRequest(ReadOnlyMemory<byte> frame, out HostRequest? request)
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(frame));
        var status = TryReadRequest(ref reader, HostWire.PayloadBytesMax, out request, out var error);
        if (status == OperationStatus.Done && !reader.End) { request = null; return HostWireError.BadLength; }
        if (status == OperationStatus.NeedMoreData) { request = null; return HostWireError.BadLength; }
        if (status != OperationStatus.Done) request = null;
        return error;
    }

    // ---- completion -----------------------------------------------------------------------

    public static int CompletionBytes(HostCompletion completion) => HostWire.CompletionHeaderBytes + completion.Data.Length;

    public static int WriteCompletionHeader(HostCompletion completion, Span<byte> destination)
    {
        Invariant.Assert(completion.Status == HostStatus.Ok || completion.Data.IsEmpty);
        var d = destination[..HostWire.CompletionHeaderBytes];
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.CompletionMagicOffset..], HostWire.CompletionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.CompletionStatusOffset..], (uint)completion.Status);
        BinaryPrimitives.WriteUInt64BigEndian(d[HostWire.CompletionTagOffset..], completion.HostTag);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.CompletionLengthOffset..], (uint)completion.Data.Length);
        BinaryPrimitives.WriteUInt32BigEndian(d[HostWire.CompletionZeroOffset..], 0);
        return d.Length;
    }

    public static int WriteCompletion(HostCompletion completion, Span<byte> destination)
    {
        int n = WriteCompletionHeader(completion, destination);
        completion.Data.Span.CopyTo(destination[n..]);
        return n + completion.Data.Length;
    }

    public static byte[] EncodeCompletion(HostCompletion completion)
    {
        var b = new byte[CompletionBytes(completion)];
        WriteCompletion(completion, b);
        return b;
    }

    public static OperationStatus TryReadCompletion(ref SequenceReader<byte> reader, int payloadBytesMax, out HostCompletion? completion, out HostWireError error)
    {
        completion = null;
        Span<byte> h = stackalloc byte[HostWire.CompletionHeaderBytes];
        if (!reader.TryCopyTo(h)) return NeedMore(out error);
        if (BinaryPrimitives.ReadUInt32BigEndian(h) != HostWire.CompletionMagic) return Invalid(out error, HostWireError.BadMagic);
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.CompletionLengthOffset..]);
        if (length > payloadBytesMax) return Invalid(out error, HostWireError.TooLong);
        long frameBytes = HostWire.CompletionHeaderBytes + length;
        if (reader.Remaining < frameBytes) return NeedMore(out error);
        uint status = BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.CompletionStatusOffset..]);
        ulong tag = BinaryPrimitives.ReadUInt64BigEndian(h[HostWire.CompletionTagOffset..]);
        completion = HostCompletion.Error(tag, (HostStatus)status);
        if (!Enum.IsDefined((HostStatus)status)) return Skip(ref reader, frameBytes, out error, HostWireError.BadEnum);
        if (BinaryPrimitives.ReadUInt32BigEndian(h[HostWire.CompletionZeroOffset..]) != 0) return Skip(ref reader, frameBytes, out error, HostWireError.NonZeroReserved);
        if (length != 0 && status != (uint)HostStatus.Ok) return Skip(ref reader, frameBytes, out error, HostWireError.BadLength);
        reader.Advance(HostWire.CompletionHeaderBytes);
        var data = new byte[length];
        reader.TryCopyTo(data);
        reader.Advance(length);
        completion = new HostCompletion(tag, (HostStatus)status, data);
        error = HostWireError.None;
        return OperationStatus.Done;
    }

    /// <summary>Decodes exactly one whole completion frame (carried in a handshake "completed").</summary>
    public static HostCompletion? TryDecodeCompletion(ReadOnlyMemory<byte> frame)
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(frame));
        var status = TryReadCompletion(ref reader, HostWire.PayloadBytesMax, out var completion, out _);
        return status == OperationStatus.Done && reader.End ? completion : null;
    }

    // ---- helpers --------------------------------------------------------------------------

    static OperationStatus NeedMore(out HostWireError error)
    {
        error = HostWireError.None;
        return OperationStatus.NeedMoreData;
    }

    static OperationStatus Invalid(out HostWireError error, HostWireError why)
    {
        error = why;
        return OperationStatus.InvalidData;
    }

    static OperationStatus Skip(ref SequenceReader<byte> reader, long frameBytes, out HostWireError error, HostWireError why)
    {
        Invariant.Assert(!why.LosesFraming());
        reader.Advance(frameBytes);
        return Invalid(out error, why);
    }
}
