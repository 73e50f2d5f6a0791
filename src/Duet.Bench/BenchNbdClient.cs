using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Duet.Nbd;

namespace Duet.Bench;

/// <summary>
/// The smallest NBD client the failover bench needs, on the server's own codec: fixed newstyle,
/// NBD_OPT_GO, then one request at a time with simple replies (no structured replies are asked
/// for). A request either completes (an error reply is <see cref="NbdRequestException"/>) or the
/// connection fails with <see cref="IOException"/> / <see cref="SocketException"/>; the caller
/// bounds the time with its cancellation token.
/// </summary>
sealed class BenchNbdClient : IAsyncDisposable
{
    readonly Socket _socket;
    readonly NetworkStream _stream;
    readonly byte[] _header = new byte[NbdWire.RequestBytes];
    readonly byte[] _reply = new byte[NbdWire.SimpleReplyBytes];
    ulong _nextCookie = 1;

    BenchNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    public ulong ExportBytes { get; private set; }

    public static async Task<BenchNbdClient> OpenAsync(IPEndPoint endPoint, string export, CancellationToken ct)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try { await socket.ConnectAsync(endPoint, ct).ConfigureAwait(false); }
        catch
        {
            socket.Dispose();
            throw;
        }
        var client = new BenchNbdClient(socket);
        try
        {
            var greeting = new byte[NbdWire.GreetingBytes];
            await client._stream.ReadExactlyAsync(greeting, ct).ConfigureAwait(false);
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(greeting));
            if (!NbdCodec.TryReadGreeting(ref reader, out _)) throw new IOException("NBD greeting too short");
            var flags = new byte[NbdWire.ClientFlagsBytes];
            NbdCodec.WriteClientFlags(flags, NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes);
            await client._stream.WriteAsync(flags, ct).ConfigureAwait(false);

            var data = new byte[4 + NbdWire.MaxStringBytes + 2];
            int dataBytes = NbdCodec.WriteExportRequest(data, export, []);
            var option = new byte[NbdWire.OptionHeaderBytes + dataBytes];
            NbdCodec.WriteOptionHeader(option, NbdOption.Go, (uint)dataBytes);
            data.AsSpan(0, dataBytes).CopyTo(option.AsSpan(NbdWire.OptionHeaderBytes));
            await client._stream.WriteAsync(option, ct).ConfigureAwait(false);
            var replyHeader = new byte[NbdWire.OptionReplyHeaderBytes];
            while (true)
            {
                await client._stream.ReadExactlyAsync(replyHeader, ct).ConfigureAwait(false);
                var r = new SequenceReader<byte>(new ReadOnlySequence<byte>(replyHeader));
                if (!NbdCodec.TryReadOptionReplyHeader(ref r, out var header)) throw new IOException("NBD option reply too short");
                var payload = new byte[header.Length];
                await client._stream.ReadExactlyAsync(payload, ct).ConfigureAwait(false);
                if (header.Type == NbdOptionReply.Info && payload.Length >= 10 && BinaryPrimitives.ReadUInt16BigEndian(payload) == (ushort)NbdInfo.Export)
                    client.ExportBytes = BinaryPrimitives.ReadUInt64BigEndian(payload.AsSpan(2));
                if (header.Type == NbdOptionReply.Ack) break;
                if (((uint)header.Type & 0x8000_0000) != 0)
                    throw new NbdRequestException($"NBD_OPT_GO for {export} refused: {header.Type} {System.Text.Encoding.UTF8.GetString(payload)}");
            }
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    public Task WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct) =>
        RequestAsync(NbdCommand.Write, offset, data, Memory<byte>.Empty, ct);

    public Task ReadAsync(ulong offset, Memory<byte> into, CancellationToken ct) =>
        RequestAsync(NbdCommand.Read, offset, ReadOnlyMemory<byte>.Empty, into, ct);

    async Task RequestAsync(NbdCommand command, ulong offset, ReadOnlyMemory<byte> payload, Memory<byte> into, CancellationToken ct)
    {
        ulong cookie = _nextCookie++;
        uint length = (uint)(command == NbdCommand.Read ? into.Length : payload.Length);
        NbdCodec.WriteRequest(_header, new NbdRequest(NbdCommandFlags.None, command, cookie, offset, length));
        await _stream.WriteAsync(_header, ct).ConfigureAwait(false);
        if (!payload.IsEmpty) await _stream.WriteAsync(payload, ct).ConfigureAwait(false);
        await _stream.ReadExactlyAsync(_reply, ct).ConfigureAwait(false);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(_reply));
        if (!NbdCodec.TryReadReplyHeader(ref reader, out var reply) || reply.IsStructured) throw new IOException("not a simple NBD reply");
        if (reply.Cookie != cookie) throw new IOException($"NBD reply for cookie {reply.Cookie}, expected {cookie}");
        if (reply.Error != NbdError.None) throw new NbdRequestException($"NBD {command} at {offset} failed: {reply.Error}");
        if (command == NbdCommand.Read) await _stream.ReadExactlyAsync(into, ct).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync() => await _stream.DisposeAsync().ConfigureAwait(false);
}

/// <summary>The server answered a request or an option with an error.</summary>
sealed class NbdRequestException(string message) : Exception(message);
