using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Duet.Interop.Tests.Support;

/// <summary>
/// A small NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME, simple replies) that pipelines requests
/// on one connection. A request whose connection dies before its reply fails with an IOException.
/// </summary>
public sealed class PipelinedNbd : IAsyncDisposable
{
    readonly Socket _socket;
    readonly NetworkStream _stream;
    readonly SemaphoreSlim _send = new(1, 1);
    readonly ConcurrentDictionary<ulong, (TaskCompletionSource<byte[]> Reply, int ReadLength)> _pending = new();
    readonly Task _reader;
    long _cookie;
    volatile bool _broken;

    PipelinedNbd(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = Task.CompletedTask;
    }

    PipelinedNbd(PipelinedNbd handshaken)
    {
        _socket = handshaken._socket;
        _stream = handshaken._stream;
        _reader = ReadRepliesAsync();
    }

    public long SizeBytes { get; private set; }

    public static async Task<PipelinedNbd> ConnectAsync(int port, string export, CancellationToken cancellationToken = default)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), cancellationToken);
            var raw = new PipelinedNbd(socket);
            var greeting = new byte[18];
            await raw._stream.ReadExactlyAsync(greeting, cancellationToken);
            if (BinaryPrimitives.ReadUInt64BigEndian(greeting) != 0x4e42444d41474943UL) throw new IOException("not an NBD server");
            await raw._stream.WriteAsync(new byte[] { 0, 0, 0, 3 }, cancellationToken); // fixed newstyle, no zeroes
            var name = Encoding.UTF8.GetBytes(export);
            var option = new byte[16 + name.Length];
            BinaryPrimitives.WriteUInt64BigEndian(option, 0x49484156454F5054UL); // IHAVEOPT
            BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), 1);          // NBD_OPT_EXPORT_NAME
            BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)name.Length);
            name.CopyTo(option, 16);
            await raw._stream.WriteAsync(option, cancellationToken);
            var info = new byte[10];
            await raw._stream.ReadExactlyAsync(info, cancellationToken);
            return new PipelinedNbd(raw) { SizeBytes = (long)BinaryPrimitives.ReadUInt64BigEndian(info) };
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public Task WriteAsync(long offset, byte[] data) => RequestAsync(1, offset, data.Length, data);

    public Task<byte[]> ReadAsync(long offset, int length) => RequestAsync(0, offset, length, null);

    async Task<byte[]> RequestAsync(ushort type, long offset, int length, byte[]? data)
    {
        if (_broken) throw new IOException("the connection is gone");
        ulong cookie = (ulong)Interlocked.Increment(ref _cookie);
        var reply = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[cookie] = (reply, type == 0 ? length : 0);
        var header = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(header, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), (uint)length);
        await _send.WaitAsync();
        try
        {
            await _stream.WriteAsync(header);
            if (data is not null) await _stream.WriteAsync(data);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            Break();
        }
        finally
        {
            _send.Release();
        }
        if (_broken) Break();
        return await reply.Task;
    }

    async Task ReadRepliesAsync()
    {
        var r = new byte[16];
        try
        {
            while (true)
            {
                await _stream.ReadExactlyAsync(r);
                if (BinaryPrimitives.ReadUInt32BigEndian(r) != 0x67446698) throw new IOException("bad reply magic");
                uint error = BinaryPrimitives.ReadUInt32BigEndian(r.AsSpan(4));
                ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(r.AsSpan(8));
                if (!_pending.TryRemove(cookie, out var p)) throw new IOException($"a reply to unknown cookie {cookie}");
                var data = new byte[error == 0 ? p.ReadLength : 0];
                if (data.Length > 0) await _stream.ReadExactlyAsync(data);
                if (error == 0) p.Reply.TrySetResult(data);
                else p.Reply.TrySetException(new IOException($"NBD error {error}"));
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or EndOfStreamException)
        {
            Break();
        }
    }

    void Break()
    {
        _broken = true;
        foreach (var cookie in _pending.Keys)
            if (_pending.TryRemove(cookie, out var p)) p.Reply.TrySetException(new IOException("the connection died before the reply"));
    }

    public async ValueTask DisposeAsync()
    {
        _socket.Dispose();
        await _reader;
        Break();
    }
}

/// <summary>
/// Journals what an NBD server acknowledged: writers each own a disjoint set of 4 KiB blocks (no two
/// writes in flight overlap), write a pattern naming (block, sequence) and record the sequence once
/// the reply comes. <see cref="VerifyAsync"/> then checks that every block holds its last
/// acknowledged pattern — or the one write to it that was in flight and never answered.
/// </summary>
public sealed class WriteJournal(long baseOffset, int blocks)
{
    public const int BlockBytes = 4096;
    readonly long[] _acked = Enumerable.Repeat(-1L, blocks).ToArray();
    readonly long[] _inFlight = Enumerable.Repeat(-1L, blocks).ToArray();
    long _sequence, _acks, _failures;

    public long Acknowledged => Interlocked.Read(ref _acks);

    public long Failed => Interlocked.Read(ref _failures);

    public static byte[] Pattern(int block, long sequence)
    {
        var data = new byte[BlockBytes];
        var random = new Random(HashCode.Combine(block, sequence));
        random.NextBytes(data);
        BinaryPrimitives.WriteInt32BigEndian(data, block);
        BinaryPrimitives.WriteInt64BigEndian(data.AsSpan(4), sequence);
        return data;
    }

    /// <summary>Runs <paramref name="writers"/> writers on <paramref name="nbd"/> until <paramref name="stop"/> or the connection dies.</summary>
    public Task RunAsync(PipelinedNbd nbd, int writers, int seed, CancellationToken stop) =>
        Task.WhenAll(Enumerable.Range(0, writers).Select(w => Task.Run(async () =>
        {
            var random = new Random(seed * 100 + w);
            while (!stop.IsCancellationRequested)
            {
                int block = random.Next(blocks / writers) * writers + w;
                long sequence = Interlocked.Increment(ref _sequence);
                Volatile.Write(ref _inFlight[block], sequence);
                try
                {
                    await nbd.WriteAsync(baseOffset + (long)block * BlockBytes, Pattern(block, sequence));
                }
                catch (IOException)
                {
                    Interlocked.Increment(ref _failures);
                    return; // the connection died: this write stays in flight, unanswered
                }
                Volatile.Write(ref _acked[block], sequence);
                Volatile.Write(ref _inFlight[block], -1);
                Interlocked.Increment(ref _acks);
            }
        })));

    /// <summary>Reads every block with an acknowledged write back; returns the problems found (none: empty).</summary>
    public async Task<List<string>> VerifyAsync(PipelinedNbd nbd)
    {
        var problems = new List<string>();
        for (int block = 0; block < blocks; block++)
        {
            long acked = _acked[block], inFlight = _inFlight[block];
            if (acked < 0 && inFlight < 0) continue;
            var data = await nbd.ReadAsync(baseOffset + (long)block * BlockBytes, BlockBytes);
            _inFlight[block] = -1;
            if (inFlight > acked && data.AsSpan().SequenceEqual(Pattern(block, inFlight)))
            {
                _acked[block] = inFlight; // it landed (once): from now on it is what the block must hold
                continue;
            }
            if (acked < 0 || data.AsSpan().SequenceEqual(Pattern(block, acked))) continue;
            problems.Add($"block {block}: acknowledged sequence {acked}{(inFlight > 0 ? $" (in flight {inFlight})" : "")}, found block {BinaryPrimitives.ReadInt32BigEndian(data)} sequence {BinaryPrimitives.ReadInt64BigEndian(data.AsSpan(4))}");
        }
        return problems;
    }
}
