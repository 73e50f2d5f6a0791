using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Duet.Nbd;

// Pure encoders and decoders for the NBD wire (NbdWire.cs). Decoders are Try* functions over
// a SequenceReader so that input may arrive in any number of segments: they return false when
// more bytes are needed and leave the reader where it was; malformed input throws
// NbdProtocolException with a typed NbdProtocolError. Encoders write into a caller's span and
// return the byte count. Nothing here allocates except the strings of option payloads, which
// only occur during the handshake.

/// <summary>What was wrong with input that could not be decoded.</summary>
public enum NbdProtocolError
{
    /// <summary>The greeting did not start with NBDMAGIC IHAVEOPT.</summary>
    BadGreetingMagic,
    /// <summary>An option did not start with IHAVEOPT.</summary>
    BadOptionMagic,
    /// <summary>An option reply did not start with the reply magic.</summary>
    BadOptionReplyMagic,
    /// <summary>A transmission request did not start with the request magic.</summary>
    BadRequestMagic,
    /// <summary>A transmission reply started with neither the simple nor the structured magic.</summary>
    BadReplyMagic,
    /// <summary>An option's data did not match its declared layout.</summary>
    MalformedOptionData,
}

public sealed class NbdProtocolException(NbdProtocolError error, string message) : Exception(message)
{
    public NbdProtocolError Error { get; } = error;
}

/// <summary>A client option header: which option and how many data bytes follow.</summary>
public readonly record struct NbdOptionHeader(NbdOption Option, uint Length);

/// <summary>A server option reply header: the option it answers, the reply type, data bytes following.</summary>
public readonly record struct NbdOptionReplyHeader(NbdOption Option, NbdOptionReply Type, uint Length);

/// <summary>A transmission request header (a WRITE's payload follows it on the wire).</summary>
public readonly record struct NbdRequest(NbdCommandFlags Flags, NbdCommand Command, ulong Cookie, ulong Offset, uint Length);

/// <summary>A transmission reply header: either a simple reply (Error valid, no Type/Length)
/// or a structured chunk header (Flags, Type and payload Length valid).</summary>
public readonly record struct NbdReplyHeader(bool IsStructured, NbdError Error, NbdReplyFlags Flags, NbdReplyType Type, ulong Cookie, uint Length);

/// <summary>The payload of NBD_OPT_INFO / NBD_OPT_GO: an export name and the info types asked for.</summary>
public readonly record struct NbdExportRequest(string Name, bool WantsName, bool WantsDescription, bool WantsBlockSize);

/// <summary>The payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.</summary>
public sealed record NbdMetaContextRequest(string ExportName, IReadOnlyList<string> Queries);

/// <summary>One NBD_REPLY_TYPE_BLOCK_STATUS descriptor.</summary>
public readonly record struct NbdBlockDescriptor(uint Length, uint Flags);

public static class NbdCodec
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    // ---- Handshake: greeting and client flags ----

    public static int WriteGreeting(Span<byte> destination, NbdHandshakeFlags flags)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdWire.InitMagic);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], NbdWire.OptionMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[16..], (ushort)flags);
        return NbdWire.GreetingBytes;
    }

    public static bool TryReadGreeting(ref SequenceReader<byte> reader, out NbdHandshakeFlags flags)
    {
        flags = default;
        if (reader.Remaining < NbdWire.GreetingBytes) return false;
        reader.TryReadBigEndian(out long init);
        reader.TryReadBigEndian(out long opt);
        reader.TryReadBigEndian(out short raw);
        if ((ulong)init != NbdWire.InitMagic || (ulong)opt != NbdWire.OptionMagic)
        {
            reader.Rewind(NbdWire.GreetingBytes);
            throw new NbdProtocolException(NbdProtocolError.BadGreetingMagic,
                $"greeting magic 0x{(ulong)init:x16} 0x{(ulong)opt:x16} is not NBDMAGIC IHAVEOPT (oldstyle servers are not supported)");
        }
        flags = (NbdHandshakeFlags)(ushort)raw;
        return true;
    }

    public static int WriteClientFlags(Span<byte> destination, NbdClientFlags flags)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, (uint)flags);
        return NbdWire.ClientFlagsBytes;
    }

    public static bool TryReadClientFlags(ref SequenceReader<byte> reader, out NbdClientFlags flags)
    {
        flags = default;
        if (!reader.TryReadBigEndian(out int raw)) return false;
        flags = (NbdClientFlags)(uint)raw;
        return true;
    }

    // ---- Handshake: options and option replies ----

    public static int WriteOptionHeader(Span<byte> destination, NbdOption option, uint length)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdWire.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], length);
        return NbdWire.OptionHeaderBytes;
    }

    public static bool TryReadOptionHeader(ref SequenceReader<byte> reader, out NbdOptionHeader header)
    {
        header = default;
        if (reader.Remaining < NbdWire.OptionHeaderBytes) return false;
        reader.TryReadBigEndian(out long magic);
        if ((ulong)magic != NbdWire.OptionMagic)
        {
            reader.Rewind(8);
            throw new NbdProtocolException(NbdProtocolError.BadOptionMagic,
                $"option magic 0x{(ulong)magic:x16} is not IHAVEOPT (0x{NbdWire.OptionMagic:x16})");
        }
        reader.TryReadBigEndian(out int option);
        reader.TryReadBigEndian(out int length);
        header = new NbdOptionHeader((NbdOption)(uint)option, (uint)length);
        return true;
    }

    public static int WriteOptionReplyHeader(Span<byte> destination, NbdOption option, NbdOptionReply type, uint length)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdWire.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], length);
        return NbdWire.OptionReplyHeaderBytes;
    }

    public static bool TryReadOptionReplyHeader(ref SequenceReader<byte> reader, out NbdOptionReplyHeader header)
    {
        header = default;
        if (reader.Remaining < NbdWire.OptionReplyHeaderBytes) return false;
        reader.TryReadBigEndian(out long magic);
        if ((ulong)magic != NbdWire.OptionReplyMagic)
        {
            reader.Rewind(8);
            throw new NbdProtocolException(NbdProtocolError.BadOptionReplyMagic,
                $"option reply magic 0x{(ulong)magic:x16} is not 0x{NbdWire.OptionReplyMagic:x16}");
        }
        reader.TryReadBigEndian(out int option);
        reader.TryReadBigEndian(out int type);
        reader.TryReadBigEndian(out int length);
        header = new NbdOptionReplyHeader((NbdOption)(uint)option, (NbdOptionReply)(uint)type, (uint)length);
        return true;
    }

    /// <summary>Bytes of an option reply whose data is <paramref name="dataBytes"/> long.</summary>
    public static int OptionReplyBytes(int dataBytes) => NbdWire.OptionReplyHeaderBytes + dataBytes;

    /// <summary>An option reply carrying a UTF-8 string (error messages, or nothing for ACK).</summary>
    public static int WriteOptionReplyText(Span<byte> destination, NbdOption option, NbdOptionReply type, string text)
    {
        int n = Encoding.UTF8.GetBytes(text, destination[NbdWire.OptionReplyHeaderBytes..]);
        WriteOptionReplyHeader(destination, option, type, (uint)n);
        return NbdWire.OptionReplyHeaderBytes + n;
    }

    /// <summary>NBD_REP_SERVER: u32 name length, name, then the description as free text.</summary>
    public static int WriteServerReply(Span<byte> destination, NbdOption option, string name, string description)
    {
        var data = destination[NbdWire.OptionReplyHeaderBytes..];
        int nameBytes = Encoding.UTF8.GetBytes(name, data[4..]);
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)nameBytes);
        int descriptionBytes = Encoding.UTF8.GetBytes(description, data[(4 + nameBytes)..]);
        int length = 4 + nameBytes + descriptionBytes;
        WriteOptionReplyHeader(destination, option, NbdOptionReply.Server, (uint)length);
        return NbdWire.OptionReplyHeaderBytes + length;
    }

    /// <summary>NBD_REP_INFO with NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags.</summary>
    public static int WriteInfoExport(Span<byte> destination, NbdOption option, ulong sizeBytes, NbdTransmissionFlags flags)
    {
        var data = destination[NbdWire.OptionReplyHeaderBytes..];
        BinaryPrimitives.WriteUInt16BigEndian(data, (ushort)NbdInfo.Export);
        BinaryPrimitives.WriteUInt64BigEndian(data[2..], sizeBytes);
        BinaryPrimitives.WriteUInt16BigEndian(data[10..], (ushort)flags);
        WriteOptionReplyHeader(destination, option, NbdOptionReply.Info, 12);
        return NbdWire.OptionReplyHeaderBytes + 12;
    }

    /// <summary>NBD_REP_INFO with NBD_INFO_BLOCK_SIZE: u16 type, u32 minimum, u32 preferred, u32 maximum payload.</summary>
    public static int WriteInfoBlockSize(Span<byte> destination, NbdOption option, uint minimumBytes, uint preferredBytes, uint maximumBytes)
    {
        var data = destination[NbdWire.OptionReplyHeaderBytes..];
        BinaryPrimitives.WriteUInt16BigEndian(data, (ushort)NbdInfo.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(data[2..], minimumBytes);
        BinaryPrimitives.WriteUInt32BigEndian(data[6..], preferredBytes);
        BinaryPrimitives.WriteUInt32BigEndian(data[10..], maximumBytes);
        WriteOptionReplyHeader(destination, option, NbdOptionReply.Info, 14);
        return NbdWire.OptionReplyHeaderBytes + 14;
    }

    /// <summary>NBD_REP_INFO carrying a string: NBD_INFO_NAME or NBD_INFO_DESCRIPTION.</summary>
    public static int WriteInfoText(Span<byte> destination, NbdOption option, NbdInfo info, string text)
    {
        var data = destination[NbdWire.OptionReplyHeaderBytes..];
        BinaryPrimitives.WriteUInt16BigEndian(data, (ushort)info);
        int n = Encoding.UTF8.GetBytes(text, data[2..]);
        WriteOptionReplyHeader(destination, option, NbdOptionReply.Info, (uint)(2 + n));
        return NbdWire.OptionReplyHeaderBytes + 2 + n;
    }

    /// <summary>NBD_REP_META_CONTEXT: u32 context id, context name.</summary>
    public static int WriteMetaContextReply(Span<byte> destination, NbdOption option, uint contextId, string name)
    {
        var data = destination[NbdWire.OptionReplyHeaderBytes..];
        BinaryPrimitives.WriteUInt32BigEndian(data, contextId);
        int n = Encoding.UTF8.GetBytes(name, data[4..]);
        WriteOptionReplyHeader(destination, option, NbdOptionReply.MetaContext, (uint)(4 + n));
        return NbdWire.OptionReplyHeaderBytes + 4 + n;
    }

    /// <summary>The reply to NBD_OPT_EXPORT_NAME: u64 size, u16 flags, and 124 zero bytes unless NO_ZEROES was agreed.</summary>
    public static int WriteExportNameReply(Span<byte> destination, ulong sizeBytes, NbdTransmissionFlags flags, bool noZeroes)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, sizeBytes);
        BinaryPrimitives.WriteUInt16BigEndian(destination[8..], (ushort)flags);
        if (noZeroes) return NbdWire.ExportNameReplyBytes;
        destination.Slice(NbdWire.ExportNameReplyBytes, NbdWire.ExportNameReplyPaddingBytes).Clear();
        return NbdWire.ExportNameReplyBytes + NbdWire.ExportNameReplyPaddingBytes;
    }

    /// <summary>Decodes the data of NBD_OPT_INFO / NBD_OPT_GO:
    /// u32 name length, name, u16 request count, u16 info type per request.</summary>
    public static NbdExportRequest ReadExportRequest(ReadOnlySpan<byte> data)
    {
        if (data.Length < 6) throw Malformed($"INFO/GO data is {data.Length} bytes; at least 6 are needed");
        uint nameBytes = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameBytes > NbdWire.MaxStringBytes) throw Malformed($"export name of {nameBytes} bytes exceeds {NbdWire.MaxStringBytes}");
        if (nameBytes > data.Length - 6) throw Malformed($"export name of {nameBytes} bytes overruns INFO/GO data of {data.Length} bytes");
        string name = DecodeString(data.Slice(4, (int)nameBytes), "export name");
        var rest = data[(4 + (int)nameBytes)..];
        int count = BinaryPrimitives.ReadUInt16BigEndian(rest);
        rest = rest[2..];
        if (rest.Length != count * 2) throw Malformed($"{count} info requests need {count * 2} bytes but {rest.Length} remain");
        bool wantsName = false, wantsDescription = false, wantsBlockSize = false;
        for (int i = 0; i < count; i++)
        {
            switch ((NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(rest[(i * 2)..]))
            {
                case NbdInfo.Name: wantsName = true; break;
                case NbdInfo.Description: wantsDescription = true; break;
                case NbdInfo.BlockSize: wantsBlockSize = true; break;
                default: break; // NBD_INFO_EXPORT is always sent; unknown types are ignored as the spec requires.
            }
        }
        return new NbdExportRequest(name, wantsName, wantsDescription, wantsBlockSize);
    }

    /// <summary>Encodes INFO/GO data (for clients and tests).</summary>
    public static int WriteExportRequest(Span<byte> destination, string name, ReadOnlySpan<NbdInfo> infos)
    {
        int n = Encoding.UTF8.GetBytes(name, destination[4..]);
        BinaryPrimitives.WriteUInt32BigEndian(destination, (uint)n);
        int at = 4 + n;
        BinaryPrimitives.WriteUInt16BigEndian(destination[at..], (ushort)infos.Length);
        at += 2;
        foreach (var info in infos)
        {
            BinaryPrimitives.WriteUInt16BigEndian(destination[at..], (ushort)info);
            at += 2;
        }
        return at;
    }

    /// <summary>Decodes the data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT:
    /// u32 name length, name, u32 query count, then (u32 length, query) per query.</summary>
    public static NbdMetaContextRequest ReadMetaContextRequest(ReadOnlySpan<byte> data)
    {
        if (data.Length < 8) throw Malformed($"meta context data is {data.Length} bytes; at least 8 are needed");
        uint nameBytes = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameBytes > NbdWire.MaxStringBytes) throw Malformed($"export name of {nameBytes} bytes exceeds {NbdWire.MaxStringBytes}");
        if (nameBytes > data.Length - 8) throw Malformed($"export name of {nameBytes} bytes overruns meta context data of {data.Length} bytes");
        string name = DecodeString(data.Slice(4, (int)nameBytes), "export name");
        var rest = data[(4 + (int)nameBytes)..];
        uint count = BinaryPrimitives.ReadUInt32BigEndian(rest);
        rest = rest[4..];
        // Each query needs at least its 4-byte length, which bounds the count before allocating.
        if (count > rest.Length / 4) throw Malformed($"{count} queries cannot fit in {rest.Length} bytes");
        var queries = new List<string>((int)count);
        for (uint i = 0; i < count; i++)
        {
            if (rest.Length < 4) throw Malformed($"query {i} has no length field");
            uint queryBytes = BinaryPrimitives.ReadUInt32BigEndian(rest);
            rest = rest[4..];
            if (queryBytes > NbdWire.MaxStringBytes) throw Malformed($"query {i} of {queryBytes} bytes exceeds {NbdWire.MaxStringBytes}");
            if (queryBytes > rest.Length) throw Malformed($"query {i} of {queryBytes} bytes overruns the remaining {rest.Length} bytes");
            queries.Add(DecodeString(rest[..(int)queryBytes], "query"));
            rest = rest[(int)queryBytes..];
        }
        if (!rest.IsEmpty) throw Malformed($"{rest.Length} bytes follow the last query");
        return new NbdMetaContextRequest(name, queries);
    }

    /// <summary>Encodes meta context option data (for clients and tests).</summary>
    public static int WriteMetaContextRequest(Span<byte> destination, string exportName, IReadOnlyList<string> queries)
    {
        int n = Encoding.UTF8.GetBytes(exportName, destination[4..]);
        BinaryPrimitives.WriteUInt32BigEndian(destination, (uint)n);
        int at = 4 + n;
        BinaryPrimitives.WriteUInt32BigEndian(destination[at..], (uint)queries.Count);
        at += 4;
        foreach (var query in queries)
        {
            int q = Encoding.UTF8.GetBytes(query, destination[(at + 4)..]);
            BinaryPrimitives.WriteUInt32BigEndian(destination[at..], (uint)q);
            at += 4 + q;
        }
        return at;
    }

    // ---- Transmission: requests ----

    public static int WriteRequest(Span<byte> destination, in NbdRequest request)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdWire.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)request.Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)request.Command);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], request.Cookie);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], request.Offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..], request.Length);
        return NbdWire.RequestBytes;
    }

    public static bool TryReadRequest(ref SequenceReader<byte> reader, out NbdRequest request)
    {
        request = default;
        if (reader.Remaining < NbdWire.RequestBytes) return false;
        reader.TryReadBigEndian(out int magic);
        if ((uint)magic != NbdWire.RequestMagic)
        {
            reader.Rewind(4);
            throw new NbdProtocolException(NbdProtocolError.BadRequestMagic,
                $"request magic 0x{(uint)magic:x8} is not 0x{NbdWire.RequestMagic:x8}");
        }
        reader.TryReadBigEndian(out short flags);
        reader.TryReadBigEndian(out short command);
        reader.TryReadBigEndian(out long cookie);
        reader.TryReadBigEndian(out long offset);
        reader.TryReadBigEndian(out int length);
        request = new NbdRequest((NbdCommandFlags)(ushort)flags, (NbdCommand)(ushort)command, (ulong)cookie, (ulong)offset, (uint)length);
        return true;
    }

    // ---- Transmission: replies ----

    public static int WriteSimpleReply(Span<byte> destination, NbdError error, ulong cookie)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdWire.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        return NbdWire.SimpleReplyBytes;
    }

    public static int WriteStructuredReplyHeader(Span<byte> destination, NbdReplyFlags flags, NbdReplyType type, ulong cookie, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdWire.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], length);
        return NbdWire.StructuredReplyHeaderBytes;
    }

    /// <summary>Header and offset of a single NBD_REPLY_TYPE_OFFSET_DATA chunk; the caller appends <paramref name="dataBytes"/> bytes.</summary>
    public static int WriteOffsetDataPrefix(Span<byte> destination, NbdReplyFlags flags, ulong cookie, ulong offset, uint dataBytes)
    {
        WriteStructuredReplyHeader(destination, flags, NbdReplyType.OffsetData, cookie, NbdWire.OffsetDataPrefixBytes + dataBytes);
        BinaryPrimitives.WriteUInt64BigEndian(destination[NbdWire.StructuredReplyHeaderBytes..], offset);
        return NbdWire.StructuredReplyHeaderBytes + NbdWire.OffsetDataPrefixBytes;
    }

    /// <summary>Most bytes <see cref="WriteErrorChunk"/> can produce.</summary>
    public const int MaxErrorChunkBytes = NbdWire.StructuredReplyHeaderBytes + NbdWire.ErrorChunkPrefixBytes + MaxErrorMessageBytes;

    /// <summary>Error messages are short human hints; longer ones are cut (on a UTF-8 boundary).</summary>
    public const int MaxErrorMessageBytes = 1024;

    /// <summary>An NBD_REPLY_TYPE_ERROR chunk: u32 error, u16 message length, message.</summary>
    public static int WriteErrorChunk(Span<byte> destination, NbdReplyFlags flags, ulong cookie, NbdError error, string message)
    {
        var text = destination.Slice(NbdWire.StructuredReplyHeaderBytes + NbdWire.ErrorChunkPrefixBytes, MaxErrorMessageBytes);
        int n = EncodeTruncated(message, text);
        var payload = destination[NbdWire.StructuredReplyHeaderBytes..];
        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(payload[4..], (ushort)n);
        WriteStructuredReplyHeader(destination, flags, NbdReplyType.Error, cookie, (uint)(NbdWire.ErrorChunkPrefixBytes + n));
        return NbdWire.StructuredReplyHeaderBytes + NbdWire.ErrorChunkPrefixBytes + n;
    }

    /// <summary>Bytes of an NBD_REPLY_TYPE_BLOCK_STATUS chunk with <paramref name="descriptorCount"/> descriptors.</summary>
    public static int BlockStatusChunkBytes(int descriptorCount) =>
        NbdWire.StructuredReplyHeaderBytes + NbdWire.BlockStatusPrefixBytes + descriptorCount * NbdWire.BlockDescriptorBytes;

    /// <summary>An NBD_REPLY_TYPE_BLOCK_STATUS chunk: u32 context id, then (u32 length, u32 flags) per descriptor.</summary>
    public static int WriteBlockStatusChunk(Span<byte> destination, NbdReplyFlags flags, ulong cookie, uint contextId, ReadOnlySpan<NbdBlockDescriptor> descriptors)
    {
        int length = NbdWire.BlockStatusPrefixBytes + descriptors.Length * NbdWire.BlockDescriptorBytes;
        WriteStructuredReplyHeader(destination, flags, NbdReplyType.BlockStatus, cookie, (uint)length);
        var payload = destination[NbdWire.StructuredReplyHeaderBytes..];
        BinaryPrimitives.WriteUInt32BigEndian(payload, contextId);
        int at = NbdWire.BlockStatusPrefixBytes;
        foreach (var d in descriptors)
        {
            BinaryPrimitives.WriteUInt32BigEndian(payload[at..], d.Length);
            BinaryPrimitives.WriteUInt32BigEndian(payload[(at + 4)..], d.Flags);
            at += NbdWire.BlockDescriptorBytes;
        }
        return NbdWire.StructuredReplyHeaderBytes + length;
    }

    /// <summary>Decodes a reply header of either kind, by its magic (for clients and tests).
    /// A simple reply's data (for READ) and a chunk's payload follow and are not consumed.</summary>
    public static bool TryReadReplyHeader(ref SequenceReader<byte> reader, out NbdReplyHeader header)
    {
        header = default;
        if (reader.Remaining < 4) return false;
        var magicReader = reader;
        magicReader.TryReadBigEndian(out int magicRaw);
        uint magic = (uint)magicRaw;
        if (magic == NbdWire.SimpleReplyMagic)
        {
            if (reader.Remaining < NbdWire.SimpleReplyBytes) return false;
            reader.Advance(4);
            reader.TryReadBigEndian(out int error);
            reader.TryReadBigEndian(out long cookie);
            header = new NbdReplyHeader(false, (NbdError)(uint)error, NbdReplyFlags.None, NbdReplyType.None, (ulong)cookie, 0);
            return true;
        }
        if (magic == NbdWire.StructuredReplyMagic)
        {
            if (reader.Remaining < NbdWire.StructuredReplyHeaderBytes) return false;
            reader.Advance(4);
            reader.TryReadBigEndian(out short flags);
            reader.TryReadBigEndian(out short type);
            reader.TryReadBigEndian(out long cookie);
            reader.TryReadBigEndian(out int length);
            header = new NbdReplyHeader(true, NbdError.None, (NbdReplyFlags)(ushort)flags, (NbdReplyType)(ushort)type, (ulong)cookie, (uint)length);
            return true;
        }
        throw new NbdProtocolException(NbdProtocolError.BadReplyMagic, $"reply magic 0x{magic:x8} is neither simple nor structured");
    }

    private static int EncodeTruncated(string message, Span<byte> destination)
    {
        if (Encoding.UTF8.GetByteCount(message) <= destination.Length) return Encoding.UTF8.GetBytes(message, destination);
        Encoding.UTF8.GetEncoder().Convert(message, destination, flush: true, out _, out int bytesUsed, out _);
        return bytesUsed;
    }

    private static string DecodeString(ReadOnlySpan<byte> bytes, string what)
    {
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Malformed($"{what} is not valid UTF-8");
        }
    }

    private static NbdProtocolException Malformed(string message) => new(NbdProtocolError.MalformedOptionData, message);
}
