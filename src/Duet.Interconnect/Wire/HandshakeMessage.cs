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

/// <summary>One step of a <see cref="HandshakeBatch"/>: a handshake message without a volume name, a host
/// timestamp or data.</summary>
public readonly record struct HandshakeStep(HandshakePhase Phase, byte Unit, ulong HostId, ulong HostTag, byte Status = 0)
{
    /// <summary>Whether <paramref name="m"/> travels as a step: ready, ready, ack, or completed without a completion frame.</summary>
    public static bool Fits(HandshakeMessage m) =>
        (m.Phase is HandshakePhase.PrimaryReady or HandshakePhase.SecondaryReady or HandshakePhase.PrimaryAck or HandshakePhase.Completed) && m.Data.IsEmpty;

    public static HandshakeStep Of(HandshakeMessage m)
    {
        Duet.Core.Invariant.Assert(Fits(m));
        return new HandshakeStep(m.Phase, m.Unit, m.HostId, m.HostTag, m.Status);
    }

    /// <summary>The step as a handshake message: no volume name (the receiver holds the command, or remembers
    /// it without one), no timestamp, no data.</summary>
    public HandshakeMessage ToMessage() => new(Phase, Unit, HostId, HostTag, 0, "", default) { Status = Status };
}

/// <summary>
/// FO-4's steps for many commands in one message: the handshake's messages without a volume name, a
/// timestamp or data (ready, ready, ack, and completed when the sender answered the host itself) are what
/// every multicast command sends, so a controller gathers those posted while its last batch was on the link
/// (as the coherency log's filling list does) and sends 20 bytes a step instead of 44 a message. Forwarded
/// frames and completions that carry the host's answer stay <see cref="HandshakeMessage"/>s.
/// Body: 0-3 count (at least 1), 4-7 zero, then count x 20-byte steps: 0 phase (1-4), 1 unit, 2 host status
/// (Completed only, else zero), 3 zero, 4-11 host id, 12-19 host tag. Steps apply in order.
/// </summary>
public sealed record HandshakeBatch(IReadOnlyList<HandshakeStep> Steps) : IDuetMessage<HandshakeBatch>
{
    public const int StepBytes = 20;
    public static ushort MessageType => MirrorWire.TypeHandshakeBatch;
    public int BodyBytes => 8 + StepBytes * Steps.Count;

    /// <summary>The most steps one message carries within the 1 MiB message limit.</summary>
    public const int StepsMax = (MirrorWire.DuetMessageBytesMax - MirrorWire.DuetHeaderBytes - 8) / StepBytes;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out HandshakeBatch value, out WireError error)
    {
        value = null;
        if (b.Length < 8) return DuetFrame.Fail(out error, WireError.BadLength);
        uint count = BinaryPrimitives.ReadUInt32BigEndian(b);
        if (count == 0 || count > StepsMax || b.Length != 8 + StepBytes * (long)count) return DuetFrame.Fail(out error, WireError.BadLength);
        if (BinaryPrimitives.ReadUInt32BigEndian(b[4..]) != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        var steps = new HandshakeStep[count];
        for (int i = 0; i < steps.Length; i++)
        {
            var s = b.Slice(8 + StepBytes * i, StepBytes);
            if (s[0] is < (byte)HandshakePhase.PrimaryReady or > (byte)HandshakePhase.Completed) return DuetFrame.Fail(out error, WireError.BadEnum);
            if (s[3] != 0 || (s[2] != 0 && s[0] != (byte)HandshakePhase.Completed)) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
            steps[i] = new HandshakeStep((HandshakePhase)s[0], s[1], BinaryPrimitives.ReadUInt64BigEndian(s[4..]), BinaryPrimitives.ReadUInt64BigEndian(s[12..]), s[2]);
        }
        value = new HandshakeBatch(steps);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Steps.Count is > 0 and <= StepsMax);
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)Steps.Count);
        BinaryPrimitives.WriteUInt32BigEndian(b[4..], 0);
        for (int i = 0; i < Steps.Count; i++)
        {
            var step = Steps[i];
            Duet.Core.Invariant.Assert(step.Phase is >= HandshakePhase.PrimaryReady and <= HandshakePhase.Completed);
            Duet.Core.Invariant.Assert(step.Status == 0 || step.Phase == HandshakePhase.Completed);
            var s = b.Slice(8 + StepBytes * i, StepBytes);
            s[0] = (byte)step.Phase;
            s[1] = step.Unit;
            s[2] = step.Status;
            s[3] = 0;
            BinaryPrimitives.WriteUInt64BigEndian(s[4..], step.HostId);
            BinaryPrimitives.WriteUInt64BigEndian(s[12..], step.HostTag);
        }
    }

    public bool Equals(HandshakeBatch? other) => other is not null && Steps.SequenceEqual(other.Steps);
    public override int GetHashCode() => Steps.Count;

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out HandshakeBatch? value, out int consumed, out WireError error) => DuetFrame.TryDecode<HandshakeBatch>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out HandshakeBatch? value, out WireError error) => DuetFrame.TryDecode<HandshakeBatch>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}
