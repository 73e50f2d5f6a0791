using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Duet.HostProtocol;

namespace Duet.Adapter;

/// <summary>A message on the AW-1 checkpoint channel between the primary and backup adapter.</summary>
public interface ICheckpointMessage;

/// <summary>Primary → backup, first on a connection: whose host id the pair acts for, the primary's
/// tag generation (tags are generation &lt;&lt; 48 + n) and its process id (the backup kills it
/// before taking over when its heartbeats stop, so a hung primary cannot wake and write).</summary>
public sealed record CheckpointHello(ulong HostId, ushort Generation, int ProcessId) : ICheckpointMessage;

/// <summary>Primary → backup, before any byte of the write goes to a controller: the whole host
/// command (volume, range, FUA, data) and the tag it goes under. Acknowledged by the backup.</summary>
public sealed record CheckpointBefore(ulong Tag, string Volume, long Offset, bool Fua, ReadOnlyMemory<byte> Data) : ICheckpointMessage
{
    public bool Equals(CheckpointBefore? other) =>
        other is not null && Tag == other.Tag && Volume == other.Volume && Offset == other.Offset && Fua == other.Fua && Data.Span.SequenceEqual(other.Data.Span);

    public override int GetHashCode() => HashCode.Combine(Tag, Volume, Offset, Data.Length);
}

/// <summary>Primary → backup, once the pair answered the write (before the client is answered).</summary>
public sealed record CheckpointAfter(ulong Tag, HostStatus Status) : ICheckpointMessage;

/// <summary>Primary → backup, every <see cref="CheckpointWire.HeartbeatInterval"/>.</summary>
public sealed record CheckpointHeartbeat : ICheckpointMessage
{
    public static readonly CheckpointHeartbeat Instance = new();
}

/// <summary>Backup → primary: it holds the hello (tag 0) or the "before" checkpoint of this tag.</summary>
public sealed record CheckpointAck(ulong Tag) : ICheckpointMessage;

/// <summary>
/// The checkpoint channel's frames (docs/internals/host-adapter.md, "Adapter pair (AW-1)"). All
/// integers big-endian. Header, 12 bytes: 0–3 magic "DACK", 4 kind (1 hello, 2 before, 3 after,
/// 4 heartbeat, 5 ack), 5–7 zero, 8–11 body length. Bodies: hello 16 (host id u64, generation u16,
/// zero u16, process id i32); before 24 + n + m (tag u64, offset u64, data length m u32, flags u8
/// (bit 0 FUA), volume name length n u8, zero u16, name UTF-8, data); after 12 (tag u64, status
/// u32); heartbeat 0; ack 8 (tag u64).
/// </summary>
public static class CheckpointWire
{
    public const uint Magic = 0x4441434B; // "DACK"
    public const int HeaderBytes = 12;
    public const int HelloBytes = 16;
    public const int BeforeFixedBytes = 24;
    public const int AfterBytes = 12;
    public const int AckBytes = 8;

    /// <summary>The largest body: a before of the largest host command with the longest name.</summary>
    public const int BodyBytesMax = BeforeFixedBytes + 255 + HostWire.PayloadBytesMax;

    public static readonly TimeSpan HeartbeatInterval = TimeSpan.FromMilliseconds(100);

    /// <summary>No frame from the primary for this long: the backup takes it for dead.</summary>
    public static readonly TimeSpan DeadAfter = TimeSpan.FromSeconds(2);

    enum Kind : byte { Hello = 1, Before = 2, After = 3, Heartbeat = 4, Ack = 5 }

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static byte[] Encode(ICheckpointMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        var (kind, body) = message switch
        {
            CheckpointHello => (Kind.Hello, HelloBytes),
            CheckpointBefore before => (Kind.Before, BeforeFixedBytes + Encoding.UTF8.GetByteCount(before.Volume) + before.Data.Length),
            CheckpointAfter => (Kind.After, AfterBytes),
            CheckpointHeartbeat => (Kind.Heartbeat, 0),
            CheckpointAck => (Kind.Ack, AckBytes),
            _ => throw new ArgumentException($"not a checkpoint message: {message.GetType().Name}", nameof(message)),
        };
        var frame = new byte[HeaderBytes + body];
        var s = frame.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(s, Magic);
        s[4] = (byte)kind;
        BinaryPrimitives.WriteUInt32BigEndian(s[8..], (uint)body);
        var b = s[HeaderBytes..];
        switch (message)
        {
            case CheckpointHello h:
                BinaryPrimitives.WriteUInt64BigEndian(b, h.HostId);
                BinaryPrimitives.WriteUInt16BigEndian(b[8..], h.Generation);
                BinaryPrimitives.WriteInt32BigEndian(b[12..], h.ProcessId);
                break;
            case CheckpointBefore w:
                int name = Encoding.UTF8.GetByteCount(w.Volume);
                if (name is < 1 or > 255) throw new ArgumentException($"volume name of {name} bytes", nameof(message));
                if (w.Data.Length is < 1 or > HostWire.PayloadBytesMax || w.Offset < 0) throw new ArgumentException($"write {w.Offset}+{w.Data.Length}", nameof(message));
                BinaryPrimitives.WriteUInt64BigEndian(b, w.Tag);
                BinaryPrimitives.WriteUInt64BigEndian(b[8..], (ulong)w.Offset);
                BinaryPrimitives.WriteUInt32BigEndian(b[16..], (uint)w.Data.Length);
                b[20] = w.Fua ? (byte)1 : (byte)0;
                b[21] = (byte)name;
                Encoding.UTF8.GetBytes(w.Volume, b[BeforeFixedBytes..]);
                w.Data.Span.CopyTo(b[(BeforeFixedBytes + name)..]);
                break;
            case CheckpointAfter a:
                BinaryPrimitives.WriteUInt64BigEndian(b, a.Tag);
                BinaryPrimitives.WriteUInt32BigEndian(b[8..], (uint)a.Status);
                break;
            case CheckpointAck k:
                BinaryPrimitives.WriteUInt64BigEndian(b, k.Tag);
                break;
        }
        return frame;
    }

    /// <summary>Reads one frame: Done (consumed), NeedMoreData (nothing consumed), or InvalidData
    /// with <paramref name="error"/> (the channel is then broken: the peer is not a checkpoint peer).</summary>
    public static OperationStatus TryRead(ref SequenceReader<byte> reader, out ICheckpointMessage? message, out string? error)
    {
        message = null;
        error = null;
        if (reader.Remaining < HeaderBytes) return OperationStatus.NeedMoreData;
        Span<byte> header = stackalloc byte[HeaderBytes];
        reader.TryCopyTo(header);
        if (BinaryPrimitives.ReadUInt32BigEndian(header) != Magic) return Fail(out error, "bad magic");
        byte kind = header[4];
        if (header[5] != 0 || header[6] != 0 || header[7] != 0) return Fail(out error, "reserved header bytes set");
        uint body = BinaryPrimitives.ReadUInt32BigEndian(header[8..]);
        bool sized = (Kind)kind switch
        {
            Kind.Hello => body == HelloBytes,
            Kind.Before => body is > BeforeFixedBytes + 1 and <= BodyBytesMax,
            Kind.After => body == AfterBytes,
            Kind.Heartbeat => body == 0,
            Kind.Ack => body == AckBytes,
            _ => false,
        };
        if (kind is < (byte)Kind.Hello or > (byte)Kind.Ack) return Fail(out error, $"unknown kind {kind}");
        if (!sized) return Fail(out error, $"kind {kind} with a body of {body} bytes");
        if (reader.Remaining < HeaderBytes + body) return OperationStatus.NeedMoreData;
        var bytes = new byte[body];
        reader.Advance(HeaderBytes);
        reader.TryCopyTo(bytes);
        var b = bytes.AsSpan();
        switch ((Kind)kind)
        {
            case Kind.Hello:
                if (b[10] != 0 || b[11] != 0) return Fail(out error, "hello: reserved bytes set");
                message = new CheckpointHello(BinaryPrimitives.ReadUInt64BigEndian(b), BinaryPrimitives.ReadUInt16BigEndian(b[8..]), BinaryPrimitives.ReadInt32BigEndian(b[12..]));
                break;
            case Kind.Before:
                ulong offset = BinaryPrimitives.ReadUInt64BigEndian(b[8..]);
                uint length = BinaryPrimitives.ReadUInt32BigEndian(b[16..]);
                int name = b[21];
                if (b[20] > 1 || b[22] != 0 || b[23] != 0) return Fail(out error, "before: unknown flags or reserved bytes set");
                if (name == 0 || length == 0 || length > HostWire.PayloadBytesMax || body != BeforeFixedBytes + name + length || offset > long.MaxValue)
                    return Fail(out error, $"before: name {name}, write {offset}+{length} in a body of {body} bytes");
                string volume;
                try { volume = StrictUtf8.GetString(b.Slice(BeforeFixedBytes, name)); }
                catch (DecoderFallbackException) { return Fail(out error, "before: volume name is not UTF-8"); }
                message = new CheckpointBefore(BinaryPrimitives.ReadUInt64BigEndian(b), volume, (long)offset, b[20] == 1,
                    bytes.AsMemory(BeforeFixedBytes + name, (int)length));
                break;
            case Kind.After:
                message = new CheckpointAfter(BinaryPrimitives.ReadUInt64BigEndian(b), (HostStatus)BinaryPrimitives.ReadUInt32BigEndian(b[8..]));
                break;
            case Kind.Heartbeat:
                message = CheckpointHeartbeat.Instance;
                break;
            case Kind.Ack:
                message = new CheckpointAck(BinaryPrimitives.ReadUInt64BigEndian(b));
                break;
        }
        reader.Advance(body);
        return OperationStatus.Done;
    }

    static OperationStatus Fail(out string error, string why)
    {
        error = why;
        return OperationStatus.InvalidData;
    }
}

/// <summary>What the backup does when it takes over: act for <see cref="HostId"/> under tag
/// generation <see cref="Generation"/>, after re-sending <see cref="Unfinished"/> (in checkpoint
/// order) under their own tags.</summary>
public sealed record TakeoverPlan(ulong HostId, ushort Generation, IReadOnlyList<CheckpointBefore> Unfinished);

/// <summary>
/// The AW-1 checkpoint log, pure (no sockets, no clock): the writes that had a "before" checkpoint
/// and no "after" yet, in checkpoint order. The backup applies every frame the primary sends to it
/// and, on takeover, asks it for the <see cref="TakeoverPlan"/>; the primary keeps one too, to bring
/// a new backup up to date.
/// </summary>
public sealed class CheckpointTable
{
    readonly Dictionary<ulong, (long Sequence, CheckpointBefore Write)> _unfinished = [];
    long _sequence;

    public CheckpointHello? Hello { get; private set; }

    public int Count => _unfinished.Count;

    /// <summary>"after" checkpoints of a tag the table did not hold (counted, otherwise ignored).</summary>
    public long UnknownAfters { get; private set; }

    public bool Holds(ulong tag) => _unfinished.ContainsKey(tag);

    /// <summary>Applies one frame from the primary; returns the ack to send back, if any. Throws
    /// <see cref="InvalidDataException"/> on a frame that breaks the channel's rules.</summary>
    public CheckpointAck? Apply(ICheckpointMessage message)
    {
        switch (message)
        {
            case CheckpointHello h:
                if (Hello is not null) throw new InvalidDataException("a second hello on the checkpoint channel");
                if (h.HostId == 0 || h.Generation == ushort.MaxValue) throw new InvalidDataException($"hello: host id {h.HostId:x}, generation {h.Generation}");
                Hello = h;
                return new CheckpointAck(0);
            case CheckpointBefore b:
                if (Hello is null) throw new InvalidDataException("a checkpoint before the hello");
                Before(b);
                return new CheckpointAck(b.Tag);
            case CheckpointAfter a:
                if (Hello is null) throw new InvalidDataException("a checkpoint before the hello");
                After(a.Tag);
                return null;
            case CheckpointHeartbeat:
                return null;
            default:
                throw new InvalidDataException($"{message.GetType().Name} does not go from the primary to the backup");
        }
    }

    public void Before(CheckpointBefore write)
    {
        ArgumentNullException.ThrowIfNull(write);
        if (write.Tag == 0) throw new InvalidDataException("a checkpoint with tag 0");
        if (!_unfinished.TryAdd(write.Tag, (_sequence++, write))) throw new InvalidDataException($"tag {write.Tag} checkpointed twice");
    }

    public bool After(ulong tag)
    {
        if (_unfinished.Remove(tag)) return true;
        UnknownAfters++;
        return false;
    }

    /// <summary>The writes with no "after", oldest checkpoint first.</summary>
    public IReadOnlyList<CheckpointBefore> Unfinished() => [.. _unfinished.Values.OrderBy(v => v.Sequence).Select(v => v.Write)];

    /// <summary>The backup's takeover: the same host id, the next generation, every unfinished write.</summary>
    public TakeoverPlan Takeover()
    {
        var hello = Hello ?? throw new InvalidOperationException("no hello: there is nothing to take over");
        return new TakeoverPlan(hello.HostId, (ushort)(hello.Generation + 1), Unfinished());
    }
}
