using System.Buffers.Binary;
using System.Text;
using Duet.Core;

namespace Duet.HostProtocol;

/// <summary>A finished host command as a durable table keeps it: its key, the digest of its request
/// (<see cref="HostCommandDigest"/>) and the host status it ended with.</summary>
public readonly record struct FinishedCommandRecord(HostCommandKey Key, uint Digest, HostStatus Status);

/// <summary>
/// Idempotent re-issue (host-protocol.md, "Finished commands survive a restart"): a table of finished
/// host commands that outlives the handshake's memory — a restart, a power cut, a takeover. The
/// handshake records every write it ran before it answers the host, and consults the table for a
/// command that is neither queued nor remembered in memory: a copy with the same digest is answered
/// with the recorded status and not run again; another command under the tag is answered Invalid.
/// The controller's table is in NVRAM and mirrored to the peer (<c>Duet.Cache.HostTagTable</c>).
/// </summary>
public interface IFinishedCommandTable
{
    /// <summary>Records a command that ran here. Durable when the returned task completes (the
    /// handshake answers the host only then); it may also tell the partner, briefly. Does not throw.</summary>
    ValueTask RecordAsync(FinishedCommandRecord record);

    /// <summary>The newest record of <paramref name="key"/>, of this controller's commands or the partner's.
    /// May be called under the handshake's lock: must not block or call back into the handshake.</summary>
    bool TryRecall(HostCommandKey key, out FinishedCommandRecord record);
}

/// <summary>
/// What tells a copy of a command (the other unit's, a forwarded one, a host's re-issue) from another
/// command under the same tag: CRC32C over the volume name (UTF-8), the opcode, the byte offset, the
/// length and the payload. The flags are left out: a copy differs from the original in them
/// (multicast, forwarded). Stronger than the in-memory comparison (volume, opcode, offset, length),
/// which has the payload at hand only while the command is queued.
/// </summary>
public static class HostCommandDigest
{
    public static uint Of(HostCommand command)
    {
        ArgumentNullException.ThrowIfNull(command);
        var r = command.Request;
        int nameBytes = Encoding.UTF8.GetByteCount(command.Volume);
        Span<byte> name = nameBytes <= 256 ? stackalloc byte[256] : new byte[nameBytes];
        nameBytes = Encoding.UTF8.GetBytes(command.Volume, name);
        Span<byte> fixedPart = stackalloc byte[1 + 8 + 4];
        fixedPart[0] = (byte)r.Opcode;
        BinaryPrimitives.WriteUInt64BigEndian(fixedPart[1..], r.Offset);
        BinaryPrimitives.WriteUInt32BigEndian(fixedPart[9..], r.Length);
        uint state = Crc32C.Append(Crc32C.Start, name[..nameBytes]);
        state = Crc32C.Append(state, fixedPart);
        state = Crc32C.Append(state, r.Payload.Span);
        return Crc32C.Finish(state);
    }

    /// <summary>Whether a finished command of this opcode and status goes into the table: a write that
    /// may have changed the volume. Reads change nothing; a flush is harmless to run again; a command
    /// answered Unavailable did not run (a host's next copy runs afresh, as in memory).</summary>
    public static bool IsRecorded(HostOpcode opcode, HostStatus status) => opcode == HostOpcode.Write && status != HostStatus.Unavailable;
}
