using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Text;

namespace Duet.Interconnect.Wire;

/// <summary>The steps of the FO-4 command handshake, plus FO-6 forwarding (host-protocol.md).</summary>
public enum HandshakePhase : byte
{
    /// <summary>The primary holds the command and is ready to process it.</summary>
    PrimaryReady = 1,
    /// <summary>The secondary holds the command in its own queue too.</summary>
    SecondaryReady = 2,
    /// <summary>The primary acknowledges and processes the command.</summary>
    PrimaryAck = 3,
    /// <summary>The command is done: the partner drops it from its queue. Byte 3 carries the
    /// command's host status (<see cref="HandshakeMessage.Status"/>), so the partner can answer a
    /// late copy of the command with it. Data: the host completion frame when the sender could
    /// not answer the host itself, else empty.</summary>
    Completed = 4,
    /// <summary>A host frame that reached only the sender's unit (FO-6). Data: the whole host
    /// request frame, with its "forwarded" flag set.</summary>
    ForwardedFrame = 5,
}

/// <summary>
/// FO-3..FO-6 command handshake between the controllers for one host command, named by
/// (unit, host id, host tag). Body: 0 phase (1-5), 1 unit (the multicast group), 2 volume name
/// length n (0-255; 1-255 for ForwardedFrame), 3 the host status for Completed (else zero), 4-7 data length m, 8-15 host id,
/// 16-23 host tag, 24-31 host timestamp (µs since the Unix epoch, the host's clock),
/// 32..32+n volume name UTF-8, then m bytes of data (a host frame, see <see cref="HandshakePhase"/>).
/// </summary>
public sealed record HandshakeMessage(HandshakePhase Phase, byte Unit, ulong HostId, ulong HostTag, ulong HostTimestampMicros,
    string Volume, ReadOnlyMemory<byte> Data) : IDuetMessage<HandshakeMessage>
{
    public const int FixedBodyBytes = 32;

    /// <summary>Completed only: the command's host status (the host protocol's status value,
    /// 0 Ok .. 10 NotAttached), so that the partner remembers it with the finished command even when
    /// the sender answered the host itself and <see cref="Data"/> is empty. Zero for other phases.</summary>
    public byte Status { get; init; }
    public const int VolumeNameBytesMax = 255;

    /// <summary>The most data one message carries within the 1 MiB Duet message limit.</summary>
    public const int DataBytesMax = MirrorWire.DuetMessageBytesMax - MirrorWire.DuetHeaderBytes - FixedBodyBytes - VolumeNameBytesMax;

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static ushort MessageType => MirrorWire.TypeHostHandshake;
    public int BodyBytes => FixedBodyBytes + Encoding.UTF8.GetByteCount(Volume) + Data.Length;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out HandshakeMessage value, out WireError error)
    {
        value = null;
        if (b.Length < FixedBodyBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        byte phase = b[0];
        if (phase is < (byte)HandshakePhase.PrimaryReady or > (byte)HandshakePhase.ForwardedFrame) return DuetFrame.Fail(out error, WireError.BadEnum);
        if (b[3] != 0 && phase != (byte)HandshakePhase.Completed) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        int nameBytes = b[2];
        uint dataBytes = BinaryPrimitives.ReadUInt32BigEndian(b[4..]);
        if (dataBytes > DataBytesMax || b.Length != FixedBodyBytes + nameBytes + (long)dataBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        if (nameBytes == 0 && phase == (byte)HandshakePhase.ForwardedFrame) return DuetFrame.Fail(out error, WireError.BadText);
        if (dataBytes == 0 && phase == (byte)HandshakePhase.ForwardedFrame) return DuetFrame.Fail(out error, WireError.BadLength);
        if (dataBytes != 0 && phase is not ((byte)HandshakePhase.ForwardedFrame or (byte)HandshakePhase.Completed)) return DuetFrame.Fail(out error, WireError.BadLength);
        string name;
        try { name = StrictUtf8.GetString(b.Slice(FixedBodyBytes, nameBytes)); }
        catch (DecoderFallbackException) { return DuetFrame.Fail(out error, WireError.BadText); }
        value = new HandshakeMessage((HandshakePhase)phase, b[1], BinaryPrimitives.ReadUInt64BigEndian(b[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(b[16..]), BinaryPrimitives.ReadUInt64BigEndian(b[24..]),
            name, b.Slice(FixedBodyBytes + nameBytes, (int)dataBytes).ToArray()) { Status = b[3] };
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(Volume);
        Duet.Core.Invariant.Assert(nameBytes <= VolumeNameBytesMax);
        Duet.Core.Invariant.Assert(Data.Length <= DataBytesMax);
        Duet.Core.Invariant.Assert(Phase != HandshakePhase.ForwardedFrame || nameBytes > 0);
        Duet.Core.Invariant.Assert(Status == 0 || Phase == HandshakePhase.Completed);
        b[0] = (byte)Phase;
        b[1] = Unit;
        b[2] = (byte)nameBytes;
        b[3] = Status;
        BinaryPrimitives.WriteUInt32BigEndian(b[4..], (uint)Data.Length);
        BinaryPrimitives.WriteUInt64BigEndian(b[8..], HostId);
        BinaryPrimitives.WriteUInt64BigEndian(b[16..], HostTag);
        BinaryPrimitives.WriteUInt64BigEndian(b[24..], HostTimestampMicros);
        Encoding.UTF8.GetBytes(Volume, b.Slice(FixedBodyBytes, nameBytes));
        Data.Span.CopyTo(b[(FixedBodyBytes + nameBytes)..]);
    }

    public bool Equals(HandshakeMessage? other) =>
        other is not null && Phase == other.Phase && Unit == other.Unit && HostId == other.HostId && HostTag == other.HostTag
        && HostTimestampMicros == other.HostTimestampMicros && Status == other.Status && Volume == other.Volume && Data.Span.SequenceEqual(other.Data.Span);

    public override int GetHashCode() => HashCode.Combine(Phase, Unit, HostId, HostTag);

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out HandshakeMessage? value, out int consumed, out WireError error) => DuetFrame.TryDecode<HandshakeMessage>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out HandshakeMessage? value, out WireError error) => DuetFrame.TryDecode<HandshakeMessage>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}
