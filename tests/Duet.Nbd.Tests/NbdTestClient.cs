using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Duet.Nbd.Tests;

/// <summary>
/// A deliberately simple NBD client over a raw socket, built on the same codec as the server.
/// It can also send garbage, which is the point: bad-input tests need a client that misbehaves.
/// </summary>
public sealed class NbdTestClient : IAsyncDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly Dictionary<ulong, uint> _readLengths = new();
    private ulong _nextCookie = 1;

    private NbdTestClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public NbdHandshakeFlags ServerFlags { get; private set; }
    public bool Structured { get; private set; }
    public ulong ExportSize { get; private set; }
    public NbdTransmissionFlags TransmissionFlags { get; private set; }
    public uint MetaContextId { get; private set; }

    /// <summary>Connects and reads the greeting; does not send client flags yet.</summary>
    public static async Task<NbdTestClient> ConnectRawAsync(IPEndPoint endPoint)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(endPoint).WaitAsync(Timeout);
        var client = new NbdTestClient(socket);
        var greeting = await client.ReadExactAsync(NbdWire.GreetingBytes);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(greeting));
        Assert.True(NbdCodec.TryReadGreeting(ref reader, out var flags));
        client.ServerFlags = flags;
        return client;
    }

    /// <summary>Connects, reads the greeting and answers with fixed newstyle (+ no zeroes).</summary>
    public static async Task<NbdTestClient> ConnectAsync(IPEndPoint endPoint, NbdClientFlags flags = NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes)
    {
        var client = await ConnectRawAsync(endPoint);
        var bytes = new byte[4];
        NbdCodec.WriteClientFlags(bytes, flags);
        await client.SendRawAsync(bytes);
        return client;
    }

    /// <summary>Connects and negotiates all the way into transmission with NBD_OPT_GO.</summary>
    public static async Task<NbdTestClient> OpenAsync(IPEndPoint endPoint, string export, bool structured = true, bool blockStatus = true)
    {
        var client = await ConnectAsync(endPoint);
        if (structured)
        {
            var (ack, _) = await client.OptionAsync(NbdOption.StructuredReply, []);
            Assert.Equal(NbdOptionReply.Ack, ack.Type);
            client.Structured = true;
            if (blockStatus)
            {
                var replies = await client.OptionListAsync(NbdOption.SetMetaContext, MetaContextData(export, NbdWire.BaseAllocationContext));
                Assert.Equal(NbdOptionReply.Ack, replies[^1].Header.Type);
                var context = Assert.Single(replies, r => r.Header.Type == NbdOptionReply.MetaContext);
                client.MetaContextId = BinaryPrimitives.ReadUInt32BigEndian(context.Data);
            }
        }
        var go = await client.OptionListAsync(NbdOption.Go, ExportData(export, NbdInfo.BlockSize));
        Assert.Equal(NbdOptionReply.Ack, go[^1].Header.Type);
        var export0 = go.Single(r => r.Header.Type == NbdOptionReply.Info && BinaryPrimitives.ReadUInt16BigEndian(r.Data) == (ushort)NbdInfo.Export);
        client.ExportSize = BinaryPrimitives.ReadUInt64BigEndian(export0.Data.AsSpan(2));
        client.TransmissionFlags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(export0.Data.AsSpan(10));
        return client;
    }

    public static byte[] ExportData(string name, params NbdInfo[] infos)
    {
        var buffer = new byte[4096 + 64];
        int n = NbdCodec.WriteExportRequest(buffer, name, infos);
        return buffer[..n];
    }

    public static byte[] MetaContextData(string export, params string[] queries)
    {
        var buffer = new byte[16 * 1024];
        int n = NbdCodec.WriteMetaContextRequest(buffer, export, queries);
        return buffer[..n];
    }

    // ---- handshake ----

    public async Task SendOptionAsync(NbdOption option, byte[] data)
    {
        var bytes = new byte[NbdWire.OptionHeaderBytes + data.Length];
        NbdCodec.WriteOptionHeader(bytes, option, (uint)data.Length);
        data.CopyTo(bytes, NbdWire.OptionHeaderBytes);
        await SendRawAsync(bytes);
    }

    public async Task<(NbdOptionReplyHeader Header, byte[] Data)> ReadOptionReplyAsync()
    {
        var headerBytes = await ReadExactAsync(NbdWire.OptionReplyHeaderBytes);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(headerBytes));
        Assert.True(NbdCodec.TryReadOptionReplyHeader(ref reader, out var header));
        var data = await ReadExactAsync((int)header.Length);
        return (header, data);
    }

    /// <summary>Sends an option expecting exactly one reply.</summary>
    public async Task<(NbdOptionReplyHeader Header, byte[] Data)> OptionAsync(NbdOption option, byte[] data)
    {
        await SendOptionAsync(option, data);
        var reply = await ReadOptionReplyAsync();
        Assert.Equal(option, reply.Header.Option);
        return reply;
    }

    /// <summary>Sends an option and reads replies up to the final one (ACK or an error).</summary>
    public async Task<List<(NbdOptionReplyHeader Header, byte[] Data)>> OptionListAsync(NbdOption option, byte[] data)
    {
        await SendOptionAsync(option, data);
        var replies = new List<(NbdOptionReplyHeader, byte[])>();
        while (true)
        {
            var reply = await ReadOptionReplyAsync();
            Assert.Equal(option, reply.Header.Option);
            replies.Add(reply);
            if (reply.Header.Type == NbdOptionReply.Ack || ((uint)reply.Header.Type & 0x8000_0000) != 0) return replies;
        }
    }

    // ---- transmission ----

    public async Task<ulong> SendRequestAsync(NbdCommand command, ulong offset, uint length, NbdCommandFlags flags = NbdCommandFlags.None,
        byte[]? payload = null)
    {
        ulong cookie = _nextCookie++;
        var bytes = new byte[NbdWire.RequestBytes + (payload?.Length ?? 0)];
        NbdCodec.WriteRequest(bytes, new NbdRequest(flags, command, cookie, offset, length));
        payload?.CopyTo(bytes, NbdWire.RequestBytes);
        if (command == NbdCommand.Read) _readLengths[cookie] = length;
        await SendRawAsync(bytes);
        return cookie;
    }

    /// <summary>One complete reply: the error (0 on success), read data, block status descriptors.</summary>
    public sealed record Reply(ulong Cookie, NbdError Error, byte[] Data, List<NbdBlockDescriptor> Extents, string Message, List<NbdReplyType> ChunkTypes);

    public async Task<Reply> ReadReplyAsync()
    {
        var magic = await ReadExactAsync(4);
        uint m = BinaryPrimitives.ReadUInt32BigEndian(magic);
        if (m == NbdWire.SimpleReplyMagic)
        {
            var rest = await ReadExactAsync(NbdWire.SimpleReplyBytes - 4);
            var header = Decode([.. magic, .. rest]);
            byte[] data = [];
            if (_readLengths.Remove(header.Cookie, out uint length) && header.Error == NbdError.None) data = await ReadExactAsync((int)length);
            return new Reply(header.Cookie, header.Error, data, [], "", []);
        }
        // Structured: collect chunks until DONE.
        var collected = new MemoryStream();
        var extents = new List<NbdBlockDescriptor>();
        var types = new List<NbdReplyType>();
        NbdError error = NbdError.None;
        string message = "";
        ulong cookie = 0;
        byte[] first = magic;
        while (true)
        {
            var rest = await ReadExactAsync(NbdWire.StructuredReplyHeaderBytes - 4);
            var header = Decode([.. first, .. rest]);
            Assert.True(header.IsStructured);
            cookie = header.Cookie;
            types.Add(header.Type);
            var payload = await ReadExactAsync((int)header.Length);
            switch (header.Type)
            {
                case NbdReplyType.OffsetData:
                    collected.Write(payload, NbdWire.OffsetDataPrefixBytes, payload.Length - NbdWire.OffsetDataPrefixBytes);
                    break;
                case NbdReplyType.BlockStatus:
                    Assert.Equal(MetaContextId, BinaryPrimitives.ReadUInt32BigEndian(payload));
                    for (int at = 4; at < payload.Length; at += 8)
                        extents.Add(new NbdBlockDescriptor(BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(at)), BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(at + 4))));
                    break;
                case NbdReplyType.Error:
                    error = (NbdError)BinaryPrimitives.ReadUInt32BigEndian(payload);
                    int len = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(4));
                    message = Encoding.UTF8.GetString(payload, 6, len);
                    break;
                case NbdReplyType.None:
                    Assert.Empty(payload);
                    break;
                default:
                    Assert.Fail($"unexpected chunk type {header.Type}");
                    break;
            }
            if (header.Flags.HasFlag(NbdReplyFlags.Done)) break;
            first = await ReadExactAsync(4);
        }
        _readLengths.Remove(cookie);
        return new Reply(cookie, error, collected.ToArray(), extents, message, types);
    }

    public async Task<Reply> RequestAsync(NbdCommand command, ulong offset, uint length, NbdCommandFlags flags = NbdCommandFlags.None, byte[]? payload = null)
    {
        ulong cookie = await SendRequestAsync(command, offset, length, flags, payload);
        var reply = await ReadReplyAsync();
        Assert.Equal(cookie, reply.Cookie);
        return reply;
    }

    public Task<Reply> WriteAsync(ulong offset, byte[] data, NbdCommandFlags flags = NbdCommandFlags.None) =>
        RequestAsync(NbdCommand.Write, offset, (uint)data.Length, flags, data);

    public Task<Reply> ReadAsync(ulong offset, uint length) => RequestAsync(NbdCommand.Read, offset, length);

    public Task DisconnectAsync() => SendRequestAsync(NbdCommand.Disconnect, 0, 0);

    // ---- bytes ----

    public async Task SendRawAsync(byte[] bytes) => await _stream.WriteAsync(bytes).AsTask().WaitAsync(Timeout);

    public async Task<byte[]> ReadExactAsync(int count)
    {
        var buffer = new byte[count];
        await _stream.ReadExactlyAsync(buffer).AsTask().WaitAsync(Timeout);
        return buffer;
    }

    /// <summary>True when the server has closed the connection (reads end of stream or a reset).</summary>
    public async Task<bool> IsClosedByServerAsync()
    {
        var buffer = new byte[1];
        try
        {
            return await _stream.ReadAsync(buffer).AsTask().WaitAsync(Timeout) == 0;
        }
        catch (IOException)
        {
            return true;
        }
    }

    public async ValueTask DisposeAsync() => await _stream.DisposeAsync();

    private static NbdReplyHeader Decode(byte[] bytes)
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(bytes));
        Assert.True(NbdCodec.TryReadReplyHeader(ref reader, out var header));
        return header;
    }
}
