using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Duet.Core;

namespace Duet.Iscsi;

/// <summary>
/// A Basic Header Segment, decoded field by field but without opcode-specific interpretation:
/// bytes 0..19 are common to every PDU (opcode, I bit, flags, two opcode-specific bytes, AHS and
/// data segment lengths, the LUN or ISID/TSIH field, the initiator task tag) and bytes 20..47 are
/// seven big-endian words whose meaning depends on the opcode. Named accessors give the RFC's
/// field names; <see cref="IscsiCodec"/> reads and writes it.
/// </summary>
public struct IscsiHeader
{
    public IscsiOpcode Opcode;
    public bool Immediate;
    /// <summary>Byte 1 (F bit and opcode-specific flags).</summary>
    public byte Flags;
    public byte Byte2;
    public byte Byte3;
    /// <summary>TotalAHSLength in 4-byte words.</summary>
    public byte TotalAhsWords;
    public int DataSegmentLength;
    /// <summary>Bytes 8..15: the LUN, or ISID (6 bytes) and TSIH (2 bytes) in login PDUs.</summary>
    public ulong Lun;
    public uint InitiatorTaskTag;
    public uint Word20, Word24, Word28, Word32, Word36, Word40, Word44;

    // Opcode-specific names for the same fields.
    public readonly bool Final => (Flags & IscsiWire.FinalBit) != 0;
    public uint TargetTransferTag { readonly get => Word20; set => Word20 = value; }
    public uint ExpectedDataTransferLength { readonly get => Word20; set => Word20 = value; }
    public uint ReferencedTaskTag { readonly get => Word20; set => Word20 = value; }
    public uint CmdSN { readonly get => Word24; set => Word24 = value; }
    public uint StatSN { readonly get => Word24; set => Word24 = value; }
    public uint ExpStatSN { readonly get => Word28; set => Word28 = value; }
    public uint ExpCmdSN { readonly get => Word28; set => Word28 = value; }
    public uint MaxCmdSN { readonly get => Word32; set => Word32 = value; }
    public uint RefCmdSN { readonly get => Word32; set => Word32 = value; }
    public uint DataSN { readonly get => Word36; set => Word36 = value; }
    public uint BufferOffset { readonly get => Word40; set => Word40 = value; }
    public uint ResidualCount { readonly get => Word44; set => Word44 = value; }
    public uint DesiredDataTransferLength { readonly get => Word44; set => Word44 = value; }

    /// <summary>Login: the 48-bit ISID (bytes 8..13).</summary>
    public ulong Isid { readonly get => Lun >> 16; set => Lun = (value << 16) | (Lun & 0xffff); }
    /// <summary>Login: the TSIH (bytes 14..15).</summary>
    public ushort Tsih { readonly get => (ushort)Lun; set => Lun = (Lun & ~0xffffUL) | value; }
    /// <summary>Login / Logout: the CID (bytes 20..21).</summary>
    public ushort Cid { readonly get => (ushort)(Word20 >> 16); set => Word20 = (uint)value << 16; }
    public readonly LoginStage CurrentStage => (LoginStage)((Flags >> 2) & 3);
    public readonly LoginStage NextStage => (LoginStage)(Flags & 3);
    public readonly bool Transit => (Flags & IscsiWire.TransitBit) != 0;
    public readonly bool Continue => (Flags & IscsiWire.ContinueBit) != 0;

    /// <summary>Bytes on the wire after the BHS (AHS, header digest, padded data, data digest).</summary>
    public readonly int FollowingBytes(bool headerDigest, bool dataDigest) =>
        TotalAhsWords * 4 + (headerDigest ? IscsiWire.DigestBytes : 0)
        + IscsiWire.Padded(DataSegmentLength) + (dataDigest && DataSegmentLength > 0 ? IscsiWire.DigestBytes : 0);
}

/// <summary>How a PDU failed to frame.</summary>
public enum IscsiFrameError
{
    None,
    HeaderDigest,
    DataDigest,
    /// <summary>The data segment is longer than this side declared it can receive.</summary>
    DataSegmentTooLong,
}

/// <summary>One framed PDU: the header, the AHS and the (unpadded) data segment, as slices of the
/// input buffer (valid until the reader advances).</summary>
public readonly record struct IscsiFrame(IscsiHeader Header, ReadOnlySequence<byte> Ahs, ReadOnlySequence<byte> Data, IscsiFrameError Error);

/// <summary>
/// Pure iSCSI PDU encoding and decoding: no I/O, no state. Readers take a
/// <see cref="SequenceReader{T}"/> and consume nothing unless a whole PDU is there.
/// </summary>
public static class IscsiCodec
{
    /// <summary>Decodes the 48-byte BHS.</summary>
    public static IscsiHeader ReadHeader(ReadOnlySpan<byte> bhs)
    {
        if (bhs.Length < IscsiWire.BhsBytes) throw new ArgumentException("a BHS is 48 bytes", nameof(bhs));
        return new IscsiHeader
        {
            Opcode = (IscsiOpcode)(bhs[0] & 0x3f),
            Immediate = (bhs[0] & IscsiWire.ImmediateBit) != 0,
            Flags = bhs[1],
            Byte2 = bhs[2],
            Byte3 = bhs[3],
            TotalAhsWords = bhs[4],
            DataSegmentLength = (bhs[5] << 16) | (bhs[6] << 8) | bhs[7],
            Lun = BinaryPrimitives.ReadUInt64BigEndian(bhs[8..]),
            InitiatorTaskTag = BinaryPrimitives.ReadUInt32BigEndian(bhs[16..]),
            Word20 = BinaryPrimitives.ReadUInt32BigEndian(bhs[20..]),
            Word24 = BinaryPrimitives.ReadUInt32BigEndian(bhs[24..]),
            Word28 = BinaryPrimitives.ReadUInt32BigEndian(bhs[28..]),
            Word32 = BinaryPrimitives.ReadUInt32BigEndian(bhs[32..]),
            Word36 = BinaryPrimitives.ReadUInt32BigEndian(bhs[36..]),
            Word40 = BinaryPrimitives.ReadUInt32BigEndian(bhs[40..]),
            Word44 = BinaryPrimitives.ReadUInt32BigEndian(bhs[44..]),
        };
    }

    /// <summary>Encodes the 48-byte BHS.</summary>
    public static void WriteHeader(Span<byte> bhs, in IscsiHeader header)
    {
        if (bhs.Length < IscsiWire.BhsBytes) throw new ArgumentException("a BHS is 48 bytes", nameof(bhs));
        if ((uint)header.DataSegmentLength > IscsiWire.MaxDataSegmentLength)
            throw new ArgumentOutOfRangeException(nameof(header), header.DataSegmentLength, "DataSegmentLength is 24 bits");
        bhs[0] = (byte)(((byte)header.Opcode & 0x3f) | (header.Immediate ? IscsiWire.ImmediateBit : 0));
        bhs[1] = header.Flags;
        bhs[2] = header.Byte2;
        bhs[3] = header.Byte3;
        bhs[4] = header.TotalAhsWords;
        bhs[5] = (byte)(header.DataSegmentLength >> 16);
        bhs[6] = (byte)(header.DataSegmentLength >> 8);
        bhs[7] = (byte)header.DataSegmentLength;
        BinaryPrimitives.WriteUInt64BigEndian(bhs[8..], header.Lun);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[16..], header.InitiatorTaskTag);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[20..], header.Word20);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[24..], header.Word24);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[28..], header.Word28);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[32..], header.Word32);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[36..], header.Word36);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[40..], header.Word40);
        BinaryPrimitives.WriteUInt32BigEndian(bhs[44..], header.Word44);
    }

    /// <summary>CRC32C as iSCSI uses it; the digest goes on the wire little-endian (RFC 7143 §13.1,
    /// the CRC's bit order), which is how every implementation puts it.</summary>
    public static uint Digest(ReadOnlySpan<byte> data) => Crc32C.Compute(data);

    public static uint Digest(in ReadOnlySequence<byte> data)
    {
        uint state = Crc32C.Start;
        foreach (var segment in data) state = Crc32C.Append(state, segment.Span);
        return Crc32C.Finish(state);
    }

    /// <summary>Bytes a PDU with <paramref name="dataLength"/> bytes of data takes on the wire.</summary>
    public static int PduBytes(int dataLength, bool headerDigest, bool dataDigest) =>
        IscsiWire.BhsBytes + (headerDigest ? IscsiWire.DigestBytes : 0)
        + IscsiWire.Padded(dataLength) + (dataDigest && dataLength > 0 ? IscsiWire.DigestBytes : 0);

    /// <summary>Writes a whole PDU (BHS, header digest, data, padding, data digest) into
    /// <paramref name="destination"/>, which must hold <see cref="PduBytes"/>; returns the bytes written.
    /// The header's DataSegmentLength is set from <paramref name="data"/>.</summary>
    public static int WritePdu(Span<byte> destination, IscsiHeader header, ReadOnlySpan<byte> data, bool headerDigest, bool dataDigest)
    {
        header.DataSegmentLength = data.Length;
        header.TotalAhsWords = 0;
        WriteHeader(destination, header);
        int n = IscsiWire.BhsBytes;
        if (headerDigest)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(destination[n..], Digest(destination[..IscsiWire.BhsBytes]));
            n += IscsiWire.DigestBytes;
        }
        if (data.Length > 0)
        {
            data.CopyTo(destination[n..]);
            n += data.Length;
            int pad = IscsiWire.Padded(data.Length) - data.Length;
            destination.Slice(n, pad).Clear();
            n += pad;
            if (dataDigest)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(destination[n..], Digest(data));
                n += IscsiWire.DigestBytes;
            }
        }
        return n;
    }

    /// <summary>
    /// Frames the next PDU. False (nothing consumed) until the whole PDU is buffered. A header
    /// digest error is reported before the data is waited for (the lengths cannot be trusted);
    /// a data segment longer than <paramref name="maxDataSegment"/> is reported after the header,
    /// with nothing of the data consumed. Otherwise the PDU, padding and digests are consumed.
    /// </summary>
    public static bool TryReadPdu(ref SequenceReader<byte> reader, bool headerDigest, bool dataDigest, int maxDataSegment, out IscsiFrame frame)
    {
        frame = default;
        int headerBytes = IscsiWire.BhsBytes + (headerDigest ? IscsiWire.DigestBytes : 0);
        if (reader.Remaining < headerBytes) return false;
        Span<byte> bhs = stackalloc byte[IscsiWire.BhsBytes + IscsiWire.DigestBytes];
        reader.TryCopyTo(bhs[..headerBytes]);
        var header = ReadHeader(bhs);
        int ahsBytes = header.TotalAhsWords * 4;
        if (headerDigest)
        {
            // The header digest covers the BHS and the AHS; the AHS sits between them.
            if (reader.Remaining < headerBytes + ahsBytes) return false;
            uint state = Crc32C.Append(Crc32C.Start, bhs[..IscsiWire.BhsBytes]);
            if (ahsBytes > 0)
            {
                foreach (var segment in reader.UnreadSequence.Slice(IscsiWire.BhsBytes, ahsBytes)) state = Crc32C.Append(state, segment.Span);
            }
            Span<byte> digest = stackalloc byte[IscsiWire.DigestBytes];
            reader.UnreadSequence.Slice(IscsiWire.BhsBytes + ahsBytes, IscsiWire.DigestBytes).CopyTo(digest);
            if (Crc32C.Finish(state) != BinaryPrimitives.ReadUInt32LittleEndian(digest))
            {
                frame = new IscsiFrame(header, default, default, IscsiFrameError.HeaderDigest);
                return true;
            }
        }
        if (header.DataSegmentLength > maxDataSegment)
        {
            frame = new IscsiFrame(header, default, default, IscsiFrameError.DataSegmentTooLong);
            return true;
        }
        long total = IscsiWire.BhsBytes + ahsBytes + (headerDigest ? IscsiWire.DigestBytes : 0)
                     + IscsiWire.Padded(header.DataSegmentLength) + (dataDigest && header.DataSegmentLength > 0 ? IscsiWire.DigestBytes : 0);
        if (reader.Remaining < total) return false;
        var pdu = reader.UnreadSequence.Slice(0, total);
        var ahs = pdu.Slice(IscsiWire.BhsBytes, ahsBytes);
        long dataStart = IscsiWire.BhsBytes + ahsBytes + (headerDigest ? IscsiWire.DigestBytes : 0);
        var data = pdu.Slice(dataStart, header.DataSegmentLength);
        var error = IscsiFrameError.None;
        if (dataDigest && header.DataSegmentLength > 0)
        {
            Span<byte> digest = stackalloc byte[IscsiWire.DigestBytes];
            pdu.Slice(dataStart + IscsiWire.Padded(header.DataSegmentLength), IscsiWire.DigestBytes).CopyTo(digest);
            if (Digest(data) != BinaryPrimitives.ReadUInt32LittleEndian(digest)) error = IscsiFrameError.DataDigest;
        }
        reader.Advance(total);
        frame = new IscsiFrame(header, ahs, data, error);
        return true;
    }

    // ------------------------------------------------------------------ text keys

    /// <summary>Longest key name (RFC 7143 §6.1).</summary>
    public const int MaxKeyBytes = 63;

    /// <summary>
    /// Parses "key=value\0" pairs. False if the text is malformed (a pair without '=', an empty
    /// or over-long key, bytes after the last NUL that do not end in one, invalid UTF-8).
    /// </summary>
    public static bool TryParseText(ReadOnlySpan<byte> text, List<KeyValuePair<string, string>> pairs)
    {
        while (!text.IsEmpty)
        {
            int end = text.IndexOf((byte)0);
            var pair = end < 0 ? text : text[..end];
            text = end < 0 ? default : text[(end + 1)..];
            if (pair.IsEmpty) continue; // tolerate padding NULs
            int eq = pair.IndexOf((byte)'=');
            if (eq <= 0 || eq > MaxKeyBytes) return false;
            string key, value;
            try
            {
                key = StrictUtf8.GetString(pair[..eq]);
                value = StrictUtf8.GetString(pair[(eq + 1)..]);
            }
            catch (DecoderFallbackException)
            {
                return false;
            }
            pairs.Add(new KeyValuePair<string, string>(key, value));
        }
        return true;
    }

    /// <summary>Appends "key=value\0".</summary>
    public static void AppendText(ArrayBufferWriter<byte> output, string key, string value)
    {
        int bytes = Encoding.UTF8.GetByteCount(key) + 1 + Encoding.UTF8.GetByteCount(value) + 1;
        var span = output.GetSpan(bytes);
        int n = Encoding.UTF8.GetBytes(key, span);
        span[n++] = (byte)'=';
        n += Encoding.UTF8.GetBytes(value, span[n..]);
        span[n++] = 0;
        output.Advance(n);
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    // ------------------------------------------------------------------ LUN

    /// <summary>Decodes the 8-byte LUN field (SAM-5): peripheral (00b) and flat (01b) addressing
    /// of the first level give the LUN; anything else is returned as the raw 64-bit value.</summary>
    public static ulong DecodeLun(ulong field)
    {
        int method = (int)(field >> 62);
        ulong first = field >> 48;
        if ((field & 0x0000ffffffffffffUL) != 0) return field;
        return method switch
        {
            0 => first & 0xff,
            1 => first & 0x3fff,
            _ => field,
        };
    }

    /// <summary>Encodes a LUN below 256 with peripheral addressing and others with flat addressing.</summary>
    public static ulong EncodeLun(ulong lun) =>
        lun < 256 ? lun << 48 : lun < 0x4000 ? (0x4000UL | lun) << 48 : lun;
}
