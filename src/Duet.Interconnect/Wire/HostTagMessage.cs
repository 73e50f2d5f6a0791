using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;

namespace Duet.Interconnect.Wire;

/// <summary>One entry of a controller's table of finished host commands as it crosses the link: the
/// command's key (unit, host id, host tag), the digest of its request, its host status and the entry's
/// sequence number in the sender's table (which also names its slot there).</summary>
public readonly record struct HostTagWireEntry(byte Unit, ulong HostId, ulong HostTag, uint Digest, byte Status, ulong Sequence);

/// <summary>
/// Idempotent re-issue (host-protocol.md): entries of the sender's table of finished host commands,
/// for the receiver's copy of it in NVRAM. Posted for each host write the sender finished, before it
/// answers the host (the link is FIFO, so the entry is on the link before the answer can be); and, when
/// the pair forms, the whole table in batches with <see cref="Resend"/> set. Nothing answers it.
///
/// Body: 0-1 entry count n (1-<see cref="EntriesMax"/>); 2 flags (bit 0 pairing resend, others zero);
/// 3-7 zero; then n entries of 32 bytes: 0 unit, 1 host status, 2-3 zero, 4-7 request digest,
/// 8-15 sequence, 16-23 host id, 24-31 host tag. Sequences strictly increase within a message,
/// from at least 1.
/// </summary>
public sealed record HostTagEntries(IReadOnlyList<HostTagWireEntry> Entries, bool Resend = false) : IDuetMessage<HostTagEntries>
{
    public const int FixedBodyBytes = 8;
    public const int EntryBytes = 32;
    /// <summary>Entries per message: a pairing sends a whole table of 4096 in eight.</summary>
    public const int EntriesMax = 512;
    const byte FlagResend = 0x01;

    public static ushort MessageType => MirrorWire.TypeHostTagEntries;
    public int BodyBytes => FixedBodyBytes + EntryBytes * Entries.Count;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out HostTagEntries value, out WireError error)
    {
        value = null;
        if (b.Length < FixedBodyBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        int count = BinaryPrimitives.ReadUInt16BigEndian(b);
        byte flags = b[2];
        if ((flags & ~FlagResend) != 0 || b[3..8].ContainsAnyExcept((byte)0)) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        if (count > EntriesMax) return DuetFrame.Fail(out error, WireError.TooManyEntries);
        if (count == 0 || b.Length != FixedBodyBytes + EntryBytes * count) return DuetFrame.Fail(out error, WireError.BadLength);
        var entries = new HostTagWireEntry[count];
        ulong previous = 0;
        for (int i = 0; i < count; i++)
        {
            var e = b.Slice(FixedBodyBytes + EntryBytes * i, EntryBytes);
            if (e[2] != 0 || e[3] != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
            ulong sequence = BinaryPrimitives.ReadUInt64BigEndian(e[8..]);
            if (sequence <= previous) return DuetFrame.Fail(out error, WireError.OutOfOrder);
            previous = sequence;
            entries[i] = new HostTagWireEntry(e[0], BinaryPrimitives.ReadUInt64BigEndian(e[16..]), BinaryPrimitives.ReadUInt64BigEndian(e[24..]),
                BinaryPrimitives.ReadUInt32BigEndian(e[4..]), e[1], sequence);
        }
        value = new HostTagEntries(entries, (flags & FlagResend) != 0);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Entries.Count is > 0 and <= EntriesMax);
        b[..FixedBodyBytes].Clear();
        BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)Entries.Count);
        b[2] = Resend ? FlagResend : (byte)0;
        ulong previous = 0;
        for (int i = 0; i < Entries.Count; i++)
        {
            var x = Entries[i];
            Duet.Core.Invariant.Assert(x.Sequence > previous);
            previous = x.Sequence;
            var e = b.Slice(FixedBodyBytes + EntryBytes * i, EntryBytes);
            e[0] = x.Unit;
            e[1] = x.Status;
            e[2] = 0; e[3] = 0;
            BinaryPrimitives.WriteUInt32BigEndian(e[4..], x.Digest);
            BinaryPrimitives.WriteUInt64BigEndian(e[8..], x.Sequence);
            BinaryPrimitives.WriteUInt64BigEndian(e[16..], x.HostId);
            BinaryPrimitives.WriteUInt64BigEndian(e[24..], x.HostTag);
        }
    }

    public bool Equals(HostTagEntries? other) => other is not null && Resend == other.Resend && Entries.SequenceEqual(other.Entries);
    public override int GetHashCode() => HashCode.Combine(Resend, Entries.Count);

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out HostTagEntries? value, out int consumed, out WireError error) => DuetFrame.TryDecode<HostTagEntries>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out HostTagEntries? value, out WireError error) => DuetFrame.TryDecode<HostTagEntries>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}
