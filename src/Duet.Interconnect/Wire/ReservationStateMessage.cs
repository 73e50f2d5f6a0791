using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Text;

namespace Duet.Interconnect.Wire;

/// <summary>One persistent-reservation registration as it crosses the link: the I_T nexus (initiator
/// name, ISID, target port group, relative target port) and its reservation key.</summary>
public sealed record ReservationRegistration(string InitiatorName, ulong Isid, ushort TargetPortGroup, ushort RelativeTargetPort, ulong Key);

/// <summary>
/// A LUN's whole SCSI persistent-reservation state (SPC-4 5.12), mirrored to the peer so that the
/// registrations and the reservation survive a failover. Sent after every PERSISTENT RESERVE OUT
/// that changed something, before the command completes, and for every volume a controller serves
/// when the pair forms (<see cref="Sync"/>). The receiver replaces its copy for the volume.
///
/// Body: 0 flags (bit 0 APTPL, bit 1 pairing sync, others zero); 1 reservation type (0 none, 1 WE,
/// 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR); 2 volume name length n (1-255); 3 zero;
/// 4-7 PRgeneration; 8-9 registration count r (0-2048); 10-11 holder index (0xFFFF: none; required
/// for a reservation that is not all-registrants, and only then); 12-15 zero; 16.. volume name UTF-8;
/// then r registrations of 24 bytes + name: 0-7 key (nonzero), 8-15 ISID (48 bits: bytes 8-9 zero),
/// 16-17 target port group, 18-19 relative target port, 20 initiator name length m (1-223), 21-23 zero,
/// 24.. initiator name UTF-8. No two registrations name the same nexus. With flag bit 2, the I_T nexus that holds
/// the LUN's SPC-2 reservation (RESERVE(6)/(10): one logical unit behind both controllers' ports) follows, laid out
/// as a registration whose key is zero.
/// </summary>
public sealed record ReservationStateMessage(string Volume, uint Generation, bool Aptpl, byte Type, int HolderIndex,
    IReadOnlyList<ReservationRegistration> Registrations, bool Sync = false, ReservationRegistration? Spc2Holder = null) : IDuetMessage<ReservationStateMessage>
{
    public const int FixedBodyBytes = 16;
    public const int RegistrationFixedBytes = 24;
    public const int VolumeNameBytesMax = 255;
    /// <summary>iSCSI names are at most 223 bytes (RFC 7143 6.1).</summary>
    public const int InitiatorNameBytesMax = 223;
    public const int RegistrationsMax = 2048;
    public const ushort NoHolder = 0xFFFF;

    const byte FlagAptpl = 0x01, FlagSync = 0x02, FlagSpc2 = 0x04;

    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static ushort MessageType => MirrorWire.TypeReservationState;

    public int BodyBytes
    {
        get
        {
            int n = FixedBodyBytes + Encoding.UTF8.GetByteCount(Volume);
            foreach (var r in Registrations) n += RegistrationFixedBytes + Encoding.UTF8.GetByteCount(r.InitiatorName);
            if (Spc2Holder is { } h) n += RegistrationFixedBytes + Encoding.UTF8.GetByteCount(h.InitiatorName);
            return n;
        }
    }

    public static bool IsValidType(byte type) => type is 0 or 1 or 3 or 5 or 6 or 7 or 8;
    static bool IsAllRegistrants(byte type) => type is 7 or 8;

    public static bool TryReadBody(ReadOnlySpan<byte> b, [MaybeNullWhen(false)] out ReservationStateMessage value, out WireError error)
    {
        value = null;
        if (b.Length < FixedBodyBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        byte flags = b[0], type = b[1];
        if ((flags & ~(FlagAptpl | FlagSync | FlagSpc2)) != 0 || b[3] != 0 || b[12..16].ContainsAnyExcept((byte)0)) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        if (!IsValidType(type)) return DuetFrame.Fail(out error, WireError.BadEnum);
        int nameBytes = b[2];
        if (nameBytes == 0) return DuetFrame.Fail(out error, WireError.BadText);
        int count = BinaryPrimitives.ReadUInt16BigEndian(b[8..]);
        if (count > RegistrationsMax) return DuetFrame.Fail(out error, WireError.TooManyEntries);
        int holder = BinaryPrimitives.ReadUInt16BigEndian(b[10..]);
        bool needsHolder = type != 0 && !IsAllRegistrants(type);
        if (needsHolder ? holder >= count : holder != NoHolder) return DuetFrame.Fail(out error, WireError.BadEnum);
        if (b.Length < FixedBodyBytes + nameBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        if (!TryText(b.Slice(FixedBodyBytes, nameBytes), out var volume)) return DuetFrame.Fail(out error, WireError.BadText);
        int at = FixedBodyBytes + nameBytes;
        var registrations = new ReservationRegistration[count];
        for (int i = 0; i < count; i++)
        {
            if (!TryReadNexus(b, ref at, spc2: false, out var reg, out error)) return false;
            for (int j = 0; j < i; j++)
                if (SameNexus(registrations[j], reg)) return DuetFrame.Fail(out error, WireError.DuplicateEntry);
            registrations[i] = reg;
        }
        ReservationRegistration? spc2 = null;
        if ((flags & FlagSpc2) != 0)
        {
            if (!TryReadNexus(b, ref at, spc2: true, out var h, out error)) return false;
            spc2 = h;
        }
        if (at != b.Length) return DuetFrame.Fail(out error, WireError.BadLength);
        value = new ReservationStateMessage(volume, BinaryPrimitives.ReadUInt32BigEndian(b[4..]), (flags & FlagAptpl) != 0, type,
            needsHolder ? holder : -1, registrations, (flags & FlagSync) != 0, spc2);
        error = WireError.None;
        return true;
    }

    /// <summary>One registration (a nonzero key) or the SPC-2 holder (key zero) at <paramref name="at"/>.</summary>
    static bool TryReadNexus(ReadOnlySpan<byte> b, ref int at, bool spc2, [MaybeNullWhen(false)] out ReservationRegistration value, out WireError error)
    {
        value = null;
        if (b.Length - at < RegistrationFixedBytes) return DuetFrame.Fail(out error, WireError.BadLength);
        var r = b[at..];
        ulong key = BinaryPrimitives.ReadUInt64BigEndian(r);
        ulong isid = BinaryPrimitives.ReadUInt64BigEndian(r[8..]);
        int m = r[20];
        if (spc2 ? key != 0 : key == 0) return DuetFrame.Fail(out error, WireError.BadEnum);
        if (isid >> 48 != 0 || r[21] != 0 || r[22] != 0 || r[23] != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        if (m is 0 or > InitiatorNameBytesMax) return DuetFrame.Fail(out error, WireError.BadText);
        if (r.Length < RegistrationFixedBytes + m) return DuetFrame.Fail(out error, WireError.BadLength);
        if (!TryText(r.Slice(RegistrationFixedBytes, m), out var initiator)) return DuetFrame.Fail(out error, WireError.BadText);
        value = new ReservationRegistration(initiator, isid, BinaryPrimitives.ReadUInt16BigEndian(r[16..]), BinaryPrimitives.ReadUInt16BigEndian(r[18..]), key);
        at += RegistrationFixedBytes + m;
        error = WireError.None;
        return true;
    }

    static bool SameNexus(ReservationRegistration a, ReservationRegistration b) =>
        a.Isid == b.Isid && a.TargetPortGroup == b.TargetPortGroup && a.RelativeTargetPort == b.RelativeTargetPort
        && string.Equals(a.InitiatorName, b.InitiatorName, StringComparison.Ordinal);

    static bool TryText(ReadOnlySpan<byte> bytes, out string text)
    {
        try { text = StrictUtf8.GetString(bytes); return true; }
        catch (DecoderFallbackException) { text = ""; return false; }
    }

    public void WriteBody(Span<byte> b)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(Volume);
        Duet.Core.Invariant.Assert(nameBytes is > 0 and <= VolumeNameBytesMax);
        Duet.Core.Invariant.Assert(IsValidType(Type));
        Duet.Core.Invariant.Assert(Registrations.Count <= RegistrationsMax);
        bool needsHolder = Type != 0 && !IsAllRegistrants(Type);
        Duet.Core.Invariant.Assert(needsHolder ? HolderIndex >= 0 && HolderIndex < Registrations.Count : HolderIndex < 0);
        b[..FixedBodyBytes].Clear();
        b[0] = (byte)((Aptpl ? FlagAptpl : 0) | (Sync ? FlagSync : 0) | (Spc2Holder is not null ? FlagSpc2 : 0));
        b[1] = Type;
        b[2] = (byte)nameBytes;
        BinaryPrimitives.WriteUInt32BigEndian(b[4..], Generation);
        BinaryPrimitives.WriteUInt16BigEndian(b[8..], (ushort)Registrations.Count);
        BinaryPrimitives.WriteUInt16BigEndian(b[10..], needsHolder ? (ushort)HolderIndex : NoHolder);
        Encoding.UTF8.GetBytes(Volume, b.Slice(FixedBodyBytes, nameBytes));
        int at = FixedBodyBytes + nameBytes;
        foreach (var r in Registrations)
        {
            Duet.Core.Invariant.Assert(r.Key != 0);
            at += WriteNexus(b[at..], r);
        }
        if (Spc2Holder is { } holderNexus)
        {
            Duet.Core.Invariant.Assert(holderNexus.Key == 0);
            at += WriteNexus(b[at..], holderNexus);
        }
        Duet.Core.Invariant.Assert(at == b.Length);
    }

    static int WriteNexus(Span<byte> d, ReservationRegistration r)
    {
        int m = Encoding.UTF8.GetByteCount(r.InitiatorName);
        Duet.Core.Invariant.Assert(m is > 0 and <= InitiatorNameBytesMax);
        Duet.Core.Invariant.Assert(r.Isid >> 48 == 0);
        d[..RegistrationFixedBytes].Clear();
        BinaryPrimitives.WriteUInt64BigEndian(d, r.Key);
        BinaryPrimitives.WriteUInt64BigEndian(d[8..], r.Isid);
        BinaryPrimitives.WriteUInt16BigEndian(d[16..], r.TargetPortGroup);
        BinaryPrimitives.WriteUInt16BigEndian(d[18..], r.RelativeTargetPort);
        d[20] = (byte)m;
        Encoding.UTF8.GetBytes(r.InitiatorName, d.Slice(RegistrationFixedBytes, m));
        return RegistrationFixedBytes + m;
    }

    public bool Equals(ReservationStateMessage? other) =>
        other is not null && Volume == other.Volume && Generation == other.Generation && Aptpl == other.Aptpl && Type == other.Type
        && HolderIndex == other.HolderIndex && Sync == other.Sync && Registrations.SequenceEqual(other.Registrations) && Spc2Holder == other.Spc2Holder;

    public override int GetHashCode() => HashCode.Combine(Volume, Generation, Type, Registrations.Count);

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out ReservationStateMessage? value, out int consumed, out WireError error) => DuetFrame.TryDecode<ReservationStateMessage>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out ReservationStateMessage? value, out WireError error) => DuetFrame.TryDecode<ReservationStateMessage>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}
