using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Text;

namespace Duet.Interconnect.Wire;

// Duet's own ICL messages (SPEC "Duet's own messages on the ICL"). All share one header:
//
//   0-1  u16 message type (>= 0x0100, so byte 0 is 0x01: never 0x00, 0x3B, 0x3C, 0xA0, 0xB0)
//   2-3  u16 zero (reserved for flags)
//   4-7  u32 length of the whole message, header included (8 .. 1 MiB)
//   8-   body, big-endian
//
// The sender's ownership epoch is not here: the link stamps every transfer with it and drops
// stale ones, for seed messages and Duet messages alike. Decoders take a ReadOnlySpan or a
// SequenceReader and answer OperationStatus: Done (reader advanced past the message),
// NeedMoreData (nothing consumed) or InvalidData (error says why).

/// <summary>A Duet message body with its type; the framing is <see cref="DuetFrame"/>.</summary>
public interface IDuetMessage<TSelf> where TSelf : IDuetMessage<TSelf>
{
    static abstract ushort MessageType { get; }
    static abstract bool TryReadBody(ReadOnlySpan<byte> body, [MaybeNullWhen(false)] out TSelf value, out WireError error);
    int BodyBytes { get; }
    void WriteBody(Span<byte> body);
}

public static class DuetFrame
{
    /// <summary>Reads the common header. NeedMoreData below 8 bytes.</summary>
    public static OperationStatus TryReadHeader(ReadOnlySpan<byte> source, out ushort type, out int length, out WireError error)
    {
        type = 0; length = 0;
        if (source.Length < MirrorWire.DuetHeaderBytes) { error = WireError.None; return OperationStatus.NeedMoreData; }
        type = BinaryPrimitives.ReadUInt16BigEndian(source);
        if (type < MirrorWire.DuetTypeFirst) { error = WireError.BadType; return OperationStatus.InvalidData; }
        if (BinaryPrimitives.ReadUInt16BigEndian(source[2..]) != 0) { error = WireError.NonZeroReserved; return OperationStatus.InvalidData; }
        uint declared = BinaryPrimitives.ReadUInt32BigEndian(source[4..]);
        if (declared < MirrorWire.DuetHeaderBytes || declared > MirrorWire.DuetMessageBytesMax) { error = WireError.BadLength; return OperationStatus.InvalidData; }
        length = (int)declared;
        error = WireError.None;
        return OperationStatus.Done;
    }

    public static OperationStatus TryDecode<T>(ReadOnlySpan<byte> source, out T? value, out int consumed, out WireError error)
        where T : IDuetMessage<T>
    {
        value = default; consumed = 0;
        var status = TryReadHeader(source, out var type, out var length, out error);
        if (status != OperationStatus.Done) return status;
        if (type != T.MessageType) { error = WireError.BadType; return OperationStatus.InvalidData; }
        if (source.Length < length) return OperationStatus.NeedMoreData;
        if (!T.TryReadBody(source[MirrorWire.DuetHeaderBytes..length], out value, out error)) return OperationStatus.InvalidData;
        consumed = length;
        return OperationStatus.Done;
    }

    public static OperationStatus TryDecode<T>(ref SequenceReader<byte> reader, out T? value, out WireError error)
        where T : IDuetMessage<T>
    {
        value = default;
        Span<byte> header = stackalloc byte[MirrorWire.DuetHeaderBytes];
        if (!reader.TryCopyTo(header)) { error = WireError.None; return OperationStatus.NeedMoreData; }
        var status = TryReadHeader(header, out _, out var length, out error);
        if (status != OperationStatus.Done) return status;
        if (reader.Remaining < length) return OperationStatus.NeedMoreData;
        // Contiguous in the current segment: parse in place; otherwise gather the pieces.
        ReadOnlySpan<byte> whole = reader.UnreadSpan.Length >= length
            ? reader.UnreadSpan[..length]
            : reader.UnreadSequence.Slice(0, length).ToArray();
        status = TryDecode(whole, out value, out _, out error);
        if (status == OperationStatus.Done) reader.Advance(length);
        return status;
    }

    public static int EncodedBytes<T>(T message) where T : IDuetMessage<T> => MirrorWire.DuetHeaderBytes + message.BodyBytes;

    /// <summary>The message encoded into a new array of exactly its length.</summary>
    public static byte[] ToArray<T>(T message) where T : IDuetMessage<T>
    {
        var bytes = new byte[EncodedBytes(message)];
        Encode(message, bytes);
        return bytes;
    }

    public static int Encode<T>(T message, Span<byte> destination) where T : IDuetMessage<T>
    {
        int length = EncodedBytes(message);
        Duet.Core.Invariant.Assert(length <= MirrorWire.DuetMessageBytesMax);
        var d = destination[..length];
        BinaryPrimitives.WriteUInt16BigEndian(d, T.MessageType);
        BinaryPrimitives.WriteUInt16BigEndian(d[2..], 0);
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], (uint)length);
        message.WriteBody(d[MirrorWire.DuetHeaderBytes..]);
        return length;
    }

    internal static bool Fail(out WireError error, WireError why)
    {
        error = why;
        return false;
    }
}

/// <summary>Which controller of the pair (the seed's A and B).</summary>
public enum ControllerSide : byte { A = 0, B = 1 }

/// <summary>
/// FO-1 / FO-7 availability signal. Body 28 bytes: 0 controller (0 A, 1 B), 1 flags (bit 0:
/// the sender holds its lease), 2-3 zero, 4-11 ownership epoch the sender holds (content, not
/// the link's stamp), 12-19 sender timestamp (TimeProvider ticks), 20-27 ticks at which the
/// sender's lease expires on its own clock.
/// </summary>
public readonly record struct Heartbeat(ControllerSide Controller, bool LeaseHeld, ulong Epoch, long TimestampTicks, long LeaseExpiresTicks)
    : IDuetMessage<Heartbeat>
{
    const int Body = 28;
    public static ushort MessageType => MirrorWire.TypeHeartbeat;
    public int BodyBytes => Body;

    public static bool TryReadBody(ReadOnlySpan<byte> b, out Heartbeat value, out WireError error)
    {
        value = default;
        if (b.Length != Body) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b[0] > (byte)ControllerSide.B) return DuetFrame.Fail(out error, WireError.BadEnum);
        if ((b[1] & ~1) != 0 || b[2] != 0 || b[3] != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        value = new Heartbeat((ControllerSide)b[0], (b[1] & 1) != 0, BinaryPrimitives.ReadUInt64BigEndian(b[4..]),
            BinaryPrimitives.ReadInt64BigEndian(b[12..]), BinaryPrimitives.ReadInt64BigEndian(b[20..]));
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        b[0] = (byte)Controller;
        b[1] = LeaseHeld ? (byte)1 : (byte)0;
        b[2] = 0; b[3] = 0;
        BinaryPrimitives.WriteUInt64BigEndian(b[4..], Epoch);
        BinaryPrimitives.WriteInt64BigEndian(b[12..], TimestampTicks);
        BinaryPrimitives.WriteInt64BigEndian(b[20..], LeaseExpiresTicks);
    }

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out Heartbeat value, out int consumed, out WireError error) => DuetFrame.TryDecode<Heartbeat>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out Heartbeat value, out WireError error) => DuetFrame.TryDecode<Heartbeat>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

public enum CheckpointPhase : byte { Started = 1, Done = 2 }

/// <summary>
/// AW-3 checkpoint before and after a write. Body 24 bytes: 0 phase (1 started, 2 done),
/// 1 volume number (MR-5), 2-3 zero, 4-7 block count, 8-15 host tag, 16-23 array LBA.
/// </summary>
public readonly record struct WriteCheckpoint(CheckpointPhase Phase, ulong HostTag, byte Volume, ulong Lba, uint BlockCount)
    : IDuetMessage<WriteCheckpoint>
{
    const int Body = 24;
    public static ushort MessageType => MirrorWire.TypeWriteCheckpoint;
    public int BodyBytes => Body;

    public static bool TryReadBody(ReadOnlySpan<byte> b, out WriteCheckpoint value, out WireError error)
    {
        value = default;
        if (b.Length != Body) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b[0] is not ((byte)CheckpointPhase.Started or (byte)CheckpointPhase.Done)) return DuetFrame.Fail(out error, WireError.BadEnum);
        if (b[2] != 0 || b[3] != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        value = new WriteCheckpoint((CheckpointPhase)b[0], BinaryPrimitives.ReadUInt64BigEndian(b[8..]), b[1],
            BinaryPrimitives.ReadUInt64BigEndian(b[16..]), BinaryPrimitives.ReadUInt32BigEndian(b[4..]));
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        b[0] = (byte)Phase;
        b[1] = Volume;
        b[2] = 0; b[3] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(b[4..], BlockCount);
        BinaryPrimitives.WriteUInt64BigEndian(b[8..], HostTag);
        BinaryPrimitives.WriteUInt64BigEndian(b[16..], Lba);
    }

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out WriteCheckpoint value, out int consumed, out WireError error) => DuetFrame.TryDecode<WriteCheckpoint>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out WriteCheckpoint value, out WireError error) => DuetFrame.TryDecode<WriteCheckpoint>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

/// <summary>
/// AW-3: "done" for every write-log record one flush cleared (a destage round's writes end together), instead of
/// one <see cref="WriteCheckpoint"/> each. Body: 0-3 count (at least 1), 4-7 zero, then count x u64 record id
/// (the started checkpoint's host tag).
/// </summary>
public sealed record WriteCheckpointsDone(IReadOnlyList<ulong> Ids) : IDuetMessage<WriteCheckpointsDone>
{
    public static ushort MessageType => MirrorWire.TypeWriteCheckpointsDone;
    public int BodyBytes => 8 + 8 * Ids.Count;

    /// <summary>The most ids one message can carry within the 1 MiB message limit.</summary>
    public const int IdsMax = (MirrorWire.DuetMessageBytesMax - MirrorWire.DuetHeaderBytes - 8) / 8;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out WriteCheckpointsDone value, out WireError error)
    {
        value = null;
        if (b.Length < 8) return DuetFrame.Fail(out error, WireError.BadLength);
        uint count = BinaryPrimitives.ReadUInt32BigEndian(b);
        if (count == 0 || count > IdsMax || b.Length != 8 + 8 * (long)count) return DuetFrame.Fail(out error, WireError.BadLength);
        if (BinaryPrimitives.ReadUInt32BigEndian(b[4..]) != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        var ids = new ulong[count];
        for (int i = 0; i < ids.Length; i++) ids[i] = BinaryPrimitives.ReadUInt64BigEndian(b[(8 + 8 * i)..]);
        value = new WriteCheckpointsDone(ids);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Ids.Count is > 0 and <= IdsMax);
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)Ids.Count);
        BinaryPrimitives.WriteUInt32BigEndian(b[4..], 0);
        for (int i = 0; i < Ids.Count; i++) BinaryPrimitives.WriteUInt64BigEndian(b[(8 + 8 * i)..], Ids[i]);
    }

    public bool Equals(WriteCheckpointsDone? other) => other is not null && Ids.SequenceEqual(other.Ids);
    public override int GetHashCode() => Ids.Count;

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out WriteCheckpointsDone? value, out int consumed, out WireError error) => DuetFrame.TryDecode<WriteCheckpointsDone>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out WriteCheckpointsDone? value, out WireError error) => DuetFrame.TryDecode<WriteCheckpointsDone>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

/// <summary>
/// AW-4 with AW-3: a partial sum the sender stored beside its write-log record (the "started" checkpoint
/// <see cref="RecordId"/>) before that write touched a drive, sent while the array has a member that cannot
/// be read, so that a takeover can rebuild that member's blocks of the rows the write may have torn. Body:
/// 0-7 record id, 8 array number, 9-11 zero, 12-15 row, 16-23 stripe, 24-31 unchanged data indexes (bit i:
/// data block i of the row is not written by the record's write; not zero), 32-35 CRC32C of the sum, 36-39
/// zero, 40-4135 the sum (4 KiB).
/// </summary>
public sealed record PartialSumCheckpoint(ulong RecordId, byte Array, long Stripe, int Row, ulong Unchanged, byte[] Sum)
    : IDuetMessage<PartialSumCheckpoint>
{
    const int Fixed = 40;
    public const int SumBytes = 4096;
    public static ushort MessageType => MirrorWire.TypePartialSum;
    public int BodyBytes => Fixed + SumBytes;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out PartialSumCheckpoint value, out WireError error)
    {
        value = null;
        if (b.Length != Fixed + SumBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b[9] != 0 || b[10] != 0 || b[11] != 0 || BinaryPrimitives.ReadUInt32BigEndian(b[36..]) != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        int row = BinaryPrimitives.ReadInt32BigEndian(b[12..]);
        long stripe = BinaryPrimitives.ReadInt64BigEndian(b[16..]);
        ulong unchanged = BinaryPrimitives.ReadUInt64BigEndian(b[24..]);
        if (row < 0 || stripe < 0 || unchanged == 0) return DuetFrame.Fail(out error, WireError.BadLba);
        var sum = b.Slice(Fixed, SumBytes);
        if (BinaryPrimitives.ReadUInt32BigEndian(b[32..]) != Duet.Core.Crc32C.Compute(sum)) return DuetFrame.Fail(out error, WireError.BadChecksum);
        value = new PartialSumCheckpoint(BinaryPrimitives.ReadUInt64BigEndian(b), b[8], stripe, row, unchanged, sum.ToArray());
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Sum.Length == SumBytes && Stripe >= 0 && Row >= 0 && Unchanged != 0);
        b[..Fixed].Clear();
        BinaryPrimitives.WriteUInt64BigEndian(b, RecordId);
        b[8] = Array;
        BinaryPrimitives.WriteInt32BigEndian(b[12..], Row);
        BinaryPrimitives.WriteInt64BigEndian(b[16..], Stripe);
        BinaryPrimitives.WriteUInt64BigEndian(b[24..], Unchanged);
        BinaryPrimitives.WriteUInt32BigEndian(b[32..], Duet.Core.Crc32C.Compute(Sum));
        Sum.CopyTo(b[Fixed..]);
    }

    public bool Equals(PartialSumCheckpoint? other) => other is not null && (RecordId, Array, Stripe, Row, Unchanged) == (other.RecordId, other.Array, other.Stripe, other.Row, other.Unchanged) && Sum.AsSpan().SequenceEqual(other.Sum);
    public override int GetHashCode() => HashCode.Combine(RecordId, Stripe, Row);

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out PartialSumCheckpoint? value, out int consumed, out WireError error) => DuetFrame.TryDecode<PartialSumCheckpoint>(source, out value, out consumed, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

/// <summary>
/// AW-4 with AW-3: the sums the record <see cref="RecordId"/> sent for <see cref="Stripe"/> may go: the record's
/// write finished that stripe and the array was flushed since, while the write goes on (it freed them to make
/// room in its pool). Body: 0-7 record id, 8 array number, 9-15 zero, 16-23 stripe.
/// </summary>
public sealed record PartialSumsReleased(ulong RecordId, byte Array, long Stripe) : IDuetMessage<PartialSumsReleased>
{
    const int Fixed = 24;
    public static ushort MessageType => MirrorWire.TypePartialSumsReleased;
    public int BodyBytes => Fixed;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out PartialSumsReleased value, out WireError error)
    {
        value = null;
        if (b.Length != Fixed) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b[9..16].IndexOfAnyExcept((byte)0) >= 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        long stripe = BinaryPrimitives.ReadInt64BigEndian(b[16..]);
        if (stripe < 0) return DuetFrame.Fail(out error, WireError.BadLba);
        value = new PartialSumsReleased(BinaryPrimitives.ReadUInt64BigEndian(b), b[8], stripe);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Stripe >= 0);
        b[..Fixed].Clear();
        BinaryPrimitives.WriteUInt64BigEndian(b, RecordId);
        b[8] = Array;
        BinaryPrimitives.WriteInt64BigEndian(b[16..], Stripe);
    }

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out PartialSumsReleased? value, out int consumed, out WireError error) => DuetFrame.TryDecode<PartialSumsReleased>(source, out value, out consumed, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

/// <summary>
/// The owner wrote these cache elements to the drives; the peer may drop their mirrors.
/// Body: 0-3 count, then count x u32 cache element index (NVRAM offset within region / 512).
/// </summary>
public sealed record DestagedNotice(IReadOnlyList<uint> ElementIndexes) : IDuetMessage<DestagedNotice>
{
    public static ushort MessageType => MirrorWire.TypeDestagedNotice;
    public int BodyBytes => 4 + 4 * ElementIndexes.Count;

    /// <summary>The most indexes one notice can carry within the 1 MiB message limit.</summary>
    public const int ElementIndexesMax = (MirrorWire.DuetMessageBytesMax - MirrorWire.DuetHeaderBytes - 4) / 4;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out DestagedNotice value, out WireError error)
    {
        value = null;
        if (b.Length < 4) return DuetFrame.Fail(out error, WireError.BadLength);
        uint count = BinaryPrimitives.ReadUInt32BigEndian(b);
        if (count > ElementIndexesMax || b.Length != 4 + 4 * (long)count) return DuetFrame.Fail(out error, WireError.BadLength);
        var indexes = new uint[count];
        for (int i = 0; i < indexes.Length; i++) indexes[i] = BinaryPrimitives.ReadUInt32BigEndian(b[(4 + 4 * i)..]);
        value = new DestagedNotice(indexes);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(ElementIndexes.Count <= ElementIndexesMax);
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)ElementIndexes.Count);
        for (int i = 0; i < ElementIndexes.Count; i++) BinaryPrimitives.WriteUInt32BigEndian(b[(4 + 4 * i)..], ElementIndexes[i]);
    }

    public bool Equals(DestagedNotice? other) => other is not null && ElementIndexes.SequenceEqual(other.ElementIndexes);
    public override int GetHashCode() => ElementIndexes.Count;

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out DestagedNotice? value, out int consumed, out WireError error) => DuetFrame.TryDecode<DestagedNotice>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out DestagedNotice? value, out WireError error) => DuetFrame.TryDecode<DestagedNotice>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

public enum ForwardedOp : byte { Read = 1, Write = 2, Flush = 3, Trim = 4, WriteZeroes = 5 }

/// <summary>
/// A host request that reached the non-owner, forwarded to the owner. The write data travels
/// as the transfer's data, not in these bytes. Body: 0-7 request id, 8 op, 9 flags (bit 0
/// FUA), 10-11 volume name length n (1-255), 12-19 byte offset, 20-23 byte length, 24..24+n
/// volume name, UTF-8.
/// </summary>
public sealed record ForwardedRequest(ulong RequestId, ForwardedOp Op, string VolumeName, ulong Offset, uint Length, bool Fua)
    : IDuetMessage<ForwardedRequest>
{
    const int Fixed = 24;
    public const int VolumeNameBytesMax = 255;
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static ushort MessageType => MirrorWire.TypeForwardedRequest;
    public int BodyBytes => Fixed + Encoding.UTF8.GetByteCount(VolumeName);

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out ForwardedRequest value, out WireError error)
    {
        value = null;
        if (b.Length < Fixed) return DuetFrame.Fail(out error, WireError.BadLength);
        byte op = b[8];
        if (op is < (byte)ForwardedOp.Read or > (byte)ForwardedOp.WriteZeroes) return DuetFrame.Fail(out error, WireError.BadEnum);
        if ((b[9] & ~1) != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        int nameBytes = BinaryPrimitives.ReadUInt16BigEndian(b[10..]);
        if (b.Length != Fixed + nameBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        if (nameBytes is 0 or > VolumeNameBytesMax) return DuetFrame.Fail(out error, WireError.BadText);
        string name;
        try { name = StrictUtf8.GetString(b.Slice(Fixed, nameBytes)); }
        catch (DecoderFallbackException) { return DuetFrame.Fail(out error, WireError.BadText); }
        value = new ForwardedRequest(BinaryPrimitives.ReadUInt64BigEndian(b), (ForwardedOp)op, name,
            BinaryPrimitives.ReadUInt64BigEndian(b[12..]), BinaryPrimitives.ReadUInt32BigEndian(b[20..]), (b[9] & 1) != 0);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(VolumeName);
        Duet.Core.Invariant.Assert(nameBytes is > 0 and <= VolumeNameBytesMax);
        BinaryPrimitives.WriteUInt64BigEndian(b, RequestId);
        b[8] = (byte)Op;
        b[9] = Fua ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt16BigEndian(b[10..], (ushort)nameBytes);
        BinaryPrimitives.WriteUInt64BigEndian(b[12..], Offset);
        BinaryPrimitives.WriteUInt32BigEndian(b[20..], Length);
        Encoding.UTF8.GetBytes(VolumeName, b.Slice(Fixed, nameBytes));
    }

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out ForwardedRequest? value, out int consumed, out WireError error) => DuetFrame.TryDecode<ForwardedRequest>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out ForwardedRequest? value, out WireError error) => DuetFrame.TryDecode<ForwardedRequest>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

/// <summary>
/// The owner's answer to a <see cref="ForwardedRequest"/>; read data follows as the transfer's
/// data. Body 24 bytes: 0-7 request id, 8-11 status (0 ok, else a positive errno), 12-15 data length,
/// 16-23 the volume LBA (512-byte sector) the error names, all ones when it names none. That is the
/// first unreadable sector of a medium error (AW-5), which the asker's SCSI sense carries in
/// INFORMATION as the owner's does. A 16-byte body (a peer from before the field) reads as naming none.
/// </summary>
public readonly record struct ForwardedResponse(ulong RequestId, int Errno, uint DataLength, long ErrorLba = -1) : IDuetMessage<ForwardedResponse>
{
    const int Body = 24, BodyWithoutLba = 16;
    public static ushort MessageType => MirrorWire.TypeForwardedResponse;
    public int BodyBytes => Body;

    public static bool TryReadBody(ReadOnlySpan<byte> b, out ForwardedResponse value, out WireError error)
    {
        value = default;
        if (b.Length is not (Body or BodyWithoutLba)) return DuetFrame.Fail(out error, WireError.BadLength);
        int errno = BinaryPrimitives.ReadInt32BigEndian(b[8..]);
        if (errno < 0) return DuetFrame.Fail(out error, WireError.BadEnum);
        long lba = -1;
        if (b.Length == Body)
        {
            ulong raw = BinaryPrimitives.ReadUInt64BigEndian(b[16..]);
            if (raw != ulong.MaxValue && raw > long.MaxValue) return DuetFrame.Fail(out error, WireError.BadLba);
            lba = raw == ulong.MaxValue ? -1 : (long)raw;
        }
        value = new ForwardedResponse(BinaryPrimitives.ReadUInt64BigEndian(b), errno, BinaryPrimitives.ReadUInt32BigEndian(b[12..]), lba);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Errno >= 0 && ErrorLba >= -1);
        BinaryPrimitives.WriteUInt64BigEndian(b, RequestId);
        BinaryPrimitives.WriteInt32BigEndian(b[8..], Errno);
        BinaryPrimitives.WriteUInt32BigEndian(b[12..], DataLength);
        BinaryPrimitives.WriteUInt64BigEndian(b[16..], ErrorLba < 0 ? ulong.MaxValue : (ulong)ErrorLba);
    }

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out ForwardedResponse value, out int consumed, out WireError error) => DuetFrame.TryDecode<ForwardedResponse>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out ForwardedResponse value, out WireError error) => DuetFrame.TryDecode<ForwardedResponse>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

/// <summary>
/// MR-5: a full snapshot of the sender's array table. Body: 0-7 version, 8-9 entry count
/// (0-256), 10-15 zero, then per entry 12 bytes: 0-7 array serial, 8 array number, 9 volume
/// number, 10-11 zero. Volumes and arrays are unique.
/// </summary>
public sealed record ArrayTableUpdate(ulong Version, IReadOnlyList<ArrayTableEntry> Entries) : IDuetMessage<ArrayTableUpdate>
{
    const int Fixed = 16;
    const int EntryBytes = 12;
    public static ushort MessageType => MirrorWire.TypeArrayTableUpdate;
    public int BodyBytes => Fixed + EntryBytes * Entries.Count;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out ArrayTableUpdate value, out WireError error)
    {
        value = null;
        if (b.Length < Fixed) return DuetFrame.Fail(out error, WireError.BadLength);
        int count = BinaryPrimitives.ReadUInt16BigEndian(b[8..]);
        if (count > MirrorWire.ArrayTableEntriesMax) return DuetFrame.Fail(out error, WireError.TooManyEntries);
        if (b.Length != Fixed + EntryBytes * count) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b.Slice(10, 6).ContainsAnyExcept((byte)0)) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        var entries = new ArrayTableEntry[count];
        Span<bool> volumes = stackalloc bool[MirrorWire.ArrayTableEntriesMax];
        var keys = new HashSet<ArrayKey>();
        for (int i = 0; i < count; i++)
        {
            var e = b.Slice(Fixed + EntryBytes * i, EntryBytes);
            if (e[10] != 0 || e[11] != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
            var entry = new ArrayTableEntry(e[9], BinaryPrimitives.ReadUInt64BigEndian(e), e[8]);
            if (volumes[entry.Volume] || !keys.Add(entry.Key)) return DuetFrame.Fail(out error, WireError.DuplicateEntry);
            volumes[entry.Volume] = true;
            entries[i] = entry;
        }
        value = new ArrayTableUpdate(BinaryPrimitives.ReadUInt64BigEndian(b), entries);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Entries.Count <= MirrorWire.ArrayTableEntriesMax);
        b[..Fixed].Clear();
        BinaryPrimitives.WriteUInt64BigEndian(b, Version);
        BinaryPrimitives.WriteUInt16BigEndian(b[8..], (ushort)Entries.Count);
        for (int i = 0; i < Entries.Count; i++)
        {
            var e = b.Slice(Fixed + EntryBytes * i, EntryBytes);
            BinaryPrimitives.WriteUInt64BigEndian(e, Entries[i].ArraySerial);
            e[8] = Entries[i].ArrayNumber;
            e[9] = Entries[i].Volume;
            e[10] = 0; e[11] = 0;
        }
    }

    public bool Equals(ArrayTableUpdate? other) => other is not null && Version == other.Version && Entries.SequenceEqual(other.Entries);
    public override int GetHashCode() => HashCode.Combine(Version, Entries.Count);

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out ArrayTableUpdate? value, out int consumed, out WireError error) => DuetFrame.TryDecode<ArrayTableUpdate>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out ArrayTableUpdate? value, out WireError error) => DuetFrame.TryDecode<ArrayTableUpdate>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

public enum ScsiStateKind : byte { Reservations = 1, Alua = 2, UnitReset = 3 }

/// <summary>
/// SCSI state shared by both controllers' device servers, as a blob whose format belongs to the
/// iSCSI front end. Body: 0 kind (1 persistent reservations, 2 ALUA, 3 a logical unit reset), 1-3 zero,
/// 4.. blob. Kind 3 is sent: its blob is the reset volume's name in UTF-8 (at most 255 bytes; empty: every
/// volume, a target reset), and the receiver's nexuses of it see the reset (docs/internals/scsi.md).
/// </summary>
public sealed record ScsiStateUpdate(ScsiStateKind Kind, ReadOnlyMemory<byte> Blob) : IDuetMessage<ScsiStateUpdate>
{
    const int Fixed = 4;
    public static ushort MessageType => MirrorWire.TypeScsiStateUpdate;
    public int BodyBytes => Fixed + Blob.Length;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out ScsiStateUpdate value, out WireError error)
    {
        value = null;
        if (b.Length < Fixed) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b[0] is not ((byte)ScsiStateKind.Reservations or (byte)ScsiStateKind.Alua or (byte)ScsiStateKind.UnitReset)) return DuetFrame.Fail(out error, WireError.BadEnum);
        if (b[1] != 0 || b[2] != 0 || b[3] != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        value = new ScsiStateUpdate((ScsiStateKind)b[0], b[Fixed..].ToArray());
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        b[0] = (byte)Kind;
        b[1] = 0; b[2] = 0; b[3] = 0;
        Blob.Span.CopyTo(b[Fixed..]);
    }

    public bool Equals(ScsiStateUpdate? other) => other is not null && Kind == other.Kind && Blob.Span.SequenceEqual(other.Blob.Span);
    public override int GetHashCode() => HashCode.Combine(Kind, Blob.Length);

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out ScsiStateUpdate? value, out int consumed, out WireError error) => DuetFrame.TryDecode<ScsiStateUpdate>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out ScsiStateUpdate? value, out WireError error) => DuetFrame.TryDecode<ScsiStateUpdate>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}

/// <summary>
/// Pairing (CC-1): sent by each controller as soon as the link is up, before any mirror transfer.
/// Body: 0 controller name ('A' or 'B'), 1-3 zero, 4-7 NVRAM format version (0 from a build that
/// predates the field), 8-15 session id (random per controller start), 16-23 NVRAM total bytes,
/// 24-27 NVRAM elements per region, 28-31 NVRAM element bytes. The receiver checks that both NVRAMs
/// have the same format and layout; if not, the pair refuses to form.
/// </summary>
public readonly record struct PairHello(char Controller, ulong SessionId, long NvramBytes, int ElementsPerRegion, int ElementBytes, uint NvramFormat = 0) : IDuetMessage<PairHello>
{
    const int Body = 32;
    public static ushort MessageType => MirrorWire.TypePairHello;
    public int BodyBytes => Body;

    public static bool TryReadBody(ReadOnlySpan<byte> b, out PairHello value, out WireError error)
    {
        value = default;
        if (b.Length != Body) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b[0] is not ((byte)'A' or (byte)'B')) return DuetFrame.Fail(out error, WireError.BadEnum);
        if (b[1..4].ContainsAnyExcept((byte)0)) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        long nvram = BinaryPrimitives.ReadInt64BigEndian(b[16..]);
        int elements = BinaryPrimitives.ReadInt32BigEndian(b[24..]);
        int elementBytes = BinaryPrimitives.ReadInt32BigEndian(b[28..]);
        if (nvram <= 0 || elements <= 0 || elementBytes <= 0) return DuetFrame.Fail(out error, WireError.BadLength);
        value = new PairHello((char)b[0], BinaryPrimitives.ReadUInt64BigEndian(b[8..]), nvram, elements, elementBytes, BinaryPrimitives.ReadUInt32BigEndian(b[4..]));
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        b[..Body].Clear();
        b[0] = (byte)Controller;
        BinaryPrimitives.WriteUInt32BigEndian(b[4..], NvramFormat);
        BinaryPrimitives.WriteUInt64BigEndian(b[8..], SessionId);
        BinaryPrimitives.WriteInt64BigEndian(b[16..], NvramBytes);
        BinaryPrimitives.WriteInt32BigEndian(b[24..], ElementsPerRegion);
        BinaryPrimitives.WriteInt32BigEndian(b[28..], ElementBytes);
    }

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out PairHello value, out int consumed, out WireError error) => DuetFrame.TryDecode<PairHello>(source, out value, out consumed, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}
