using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Duet.Adapter;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.HostProtocol.Tests;

/// <summary>
/// The host side: <see cref="HostSession"/> against an in-process pair's units over TCP, and
/// <see cref="HostAdapter"/> in front of them with a raw NBD client that can misbehave (die in the
/// middle of a write, send requests out of range). Real clients (nbdcopy, fio) and real processes
/// are in Duet.Interop.Tests' AdapterProcessTests.
/// </summary>
public class HostAdapterTests
{
    static byte[] Pattern(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed * 31 + i))];

    static IPEndPoint[] Group0(TcpPair tcp) => [tcp.A[0].LocalEndPoint, tcp.B[0].LocalEndPoint];

    static Task<HostSession> OpenAsync(TcpPair tcp, HostPathMode mode) => HostSession.OpenAsync(new HostSessionOptions
    {
        HostId = 0x5e55, Volume = TestPair.VolumeName, Units = Group0(tcp), Mode = mode,
    });

    [Fact, Trait("Claim", "FO-3")]
    public async Task A_unit_lists_its_volumes_and_says_which_controller_is_primary()
    {
        await using var tcp = await TcpPair.StartAsync();
        var list = await HostSession.ListAsync([tcp.B[1].LocalEndPoint], TimeSpan.FromSeconds(10));
        Assert.Equal([new HostVolumeEntry(TestPair.VolumeName, 1 << 20, HostVolumeFlags.None)], list.Volumes);
        list = await HostSession.ListAsync([new IPEndPoint(IPAddress.Loopback, 1), tcp.A[0].LocalEndPoint], TimeSpan.FromSeconds(10));
        Assert.Equal([new HostVolumeEntry(TestPair.VolumeName, 1 << 20, HostVolumeFlags.Primary)], list.Volumes);
    }

    [Fact, Trait("Claim", "FO-3")]
    public async Task Multicast_session_sends_each_command_to_both_units_under_one_tag()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var session = await OpenAsync(tcp, HostPathMode.Multicast);
        Assert.Equal(1 << 20, session.SizeBytes);
        Assert.Contains("A0 up (primary)", session.Describe());

        var data = Pattern(8192, 3);
        Assert.Equal(HostStatus.Ok, (await session.ExecuteAsync(HostOpcode.Write, 16384, data.Length, data, fua: false)).Status);
        var read = await session.ExecuteAsync(HostOpcode.Read, 16384, data.Length, ReadOnlyMemory<byte>.Empty, fua: false);
        Assert.Equal(data, read.Data.ToArray());

        // Both controllers held both commands; the secondary answered "ready" for each and was told "completed".
        await tcp.Pair.UntilAsync(() => tcp.Pair.B.Counters.CompletionsReceived == 2, "B told of both completions");
        Assert.Equal(2, tcp.Pair.B.Counters.SecondaryReadiesSent);
        Assert.Equal(0, tcp.Pair.A.Counters.ForwardedFramesSent + tcp.Pair.B.Counters.ForwardedFramesSent); // multicast: nothing to forward
        Assert.Equal(0, session.Resends);
    }

    [Fact, Trait("Claim", "FO-6")]
    public async Task Path_failover_session_uses_the_primary_first_and_moves_to_the_other_unit_when_it_is_lost()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var session = await OpenAsync(tcp, HostPathMode.PathFailover);
        var data = Pattern(4096, 5);
        Assert.Equal(HostStatus.Ok, (await session.ExecuteAsync(HostOpcode.Write, 0, data.Length, data, fua: false)).Status);
        Assert.Equal(1, tcp.Pair.A.Counters.ForwardedFramesSent); // it went to A's unit only, which forwarded it to B

        // A's unit goes away (its handshake still runs: the link between the controllers is up).
        await tcp.A[0].DisposeAsync();
        // (A frame sent before the session notices may still be read and answered by the closing unit.)
        await tcp.Pair.UntilAsync(() => session.Describe().Contains("down", StringComparison.Ordinal), "the session to notice the lost unit");
        var moved = Pattern(4096, 6);
        Assert.Equal(HostStatus.Ok, (await session.ExecuteAsync(HostOpcode.Write, 4096, moved.Length, moved, fua: false)).Status);
        // Now B's unit took it and forwarded it to the primary (B counts the forward once its send returns,
        // which in this in-memory pair can be after the whole command ran and was answered).
        await tcp.Pair.UntilAsync(() => tcp.Pair.B.Counters.ForwardedFramesSent == 1, "B to count its forward");
        var back = new byte[4096];
        await tcp.Pair.Volume.ReadAsync(4096, back);
        Assert.Equal(moved, back);
        Assert.Contains("down", session.Describe());
    }

    [Fact, Trait("Claim", "AW-1")]
    public async Task A_session_given_a_tag_sends_every_attempt_under_it_and_the_pair_runs_the_command_once()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var session = await HostSession.OpenAsync(new HostSessionOptions
        {
            HostId = 0x5e56, Volume = TestPair.VolumeName, Units = Group0(tcp),
            AttemptTimeout = TimeSpan.FromMilliseconds(300), RetryInterval = TimeSpan.FromMilliseconds(50),
        });
        tcp.Pair.HoldA = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var data = Pattern(4096, 4);
        var write = session.ExecuteAsync(HostOpcode.Write, 0, data.Length, data, fua: false, tag: 77);
        await tcp.Pair.UntilAsync(() => session.Resends >= 2 && tcp.Pair.A.Counters.Duplicates >= 2, "two re-sends under tag 77, merged at A");
        Assert.False(write.IsCompleted);
        tcp.Pair.HoldA.SetResult();
        Assert.Equal(HostCompletion.Ok(77), await write);
        Assert.Equal(1, tcp.Pair.A.Counters.ExecutedAsPrimary);
        Assert.Equal(0, tcp.Pair.A.Counters.TagsReused);
    }

    [Fact, Trait("Claim", "FO-3")]
    public async Task A_session_reads_the_units_completions_on_reader_threads_of_its_own()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var session = await OpenAsync(tcp, HostPathMode.Multicast);
        var data = Pattern(4096, 9);
        for (int i = 0; i < 20; i++)
            Assert.Equal(HostStatus.Ok, (await session.ExecuteAsync(HostOpcode.Write, i * 4096L, data.Length, data, fua: false)).Status);
        // Every completion came through a reader thread's own receive (both units answer a multicast command).
        Assert.True(session.ReaderThreadReads.Reads >= 20, $"{session.ReaderThreadReads.Reads} reads on the reader threads");
    }

    static async Task<HostAdapter> AdapterAsync(TcpPair tcp, long bufferBytes = 64L << 20)
    {
        var adapter = new HostAdapter(new HostAdapterOptions
        {
            Endpoint = new IPEndPoint(IPAddress.Loopback, 0), Units = Group0(tcp), BufferBytes = bufferBytes,
        }, NullLoggerFactory.Instance);
        await adapter.StartAsync();
        return adapter;
    }

    [Fact, Trait("Claim", "AW-2")]
    public async Task A_client_that_dies_in_the_middle_of_a_write_sends_nothing_of_it_to_the_pair()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var adapter = await AdapterAsync(tcp);
        var data = Pattern(65536, 7);
        using (var client = await RawNbd.ConnectAsync(adapter.LocalEndPoint, TestPair.VolumeName))
        {
            Assert.Equal(0u, await client.WriteAsync(1, 0, data));
            Assert.Equal(0u, await client.ReadAsync(2, 0, data.Length, out var back));
            Assert.Equal(data, back);
        }
        long executed = tcp.Pair.A.Counters.ExecutedAsPrimary;

        using (var client = await RawNbd.ConnectAsync(adapter.LocalEndPoint, TestPair.VolumeName))
        {
            await client.SendWriteHeaderAndPartOfThePayloadAsync(3, 131072, Pattern(65536, 8), sent: 40000);
        }
        // A whole write, sent after the broken one on another connection, completes: the adapter took
        // the broken one's bytes back and nothing of it reached the pair.
        using (var client = await RawNbd.ConnectAsync(adapter.LocalEndPoint, TestPair.VolumeName))
        {
            Assert.Equal(0u, await client.WriteAsync(4, 262144, data));
        }
        Assert.Equal(executed + 1, tcp.Pair.A.Counters.ExecutedAsPrimary);
        var region = new byte[65536];
        await tcp.Pair.Volume.ReadAsync(131072, region);
        Assert.Equal(new byte[65536], region);
        await tcp.Pair.UntilAsync(() => adapter.Buffer.InUse == 0, "the broken connection's block-buffer bytes returned");
    }

    [Fact, Trait("Claim", "AW-2")]
    public async Task A_full_block_buffer_holds_further_writes_back_until_the_pair_completes_one()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var adapter = await AdapterAsync(tcp, bufferBytes: HostWire.PayloadBytesMax);
        using var client = await RawNbd.ConnectAsync(adapter.LocalEndPoint, TestPair.VolumeName);
        tcp.Pair.HoldA = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var first = Pattern(HostWire.PayloadBytesMax, 1);
        var second = Pattern(HostWire.PayloadBytesMax, 2);
        await client.SendWriteAsync(10, 0, first);
        await client.SendWriteAsync(11, HostWire.PayloadBytesMax, second);
        await tcp.Pair.UntilAsync(() => adapter.Buffer.Waiting == 1, "the second write waiting for the block buffer");
        Assert.Equal(HostWire.PayloadBytesMax, adapter.Buffer.InUse);

        tcp.Pair.HoldA.SetResult();
        var replies = new[] { await client.ReadReplyAsync(), await client.ReadReplyAsync() };
        Assert.Equal([(10UL, 0u), (11UL, 0u)], replies.OrderBy(r => r.Cookie));
        var back = new byte[HostWire.PayloadBytesMax];
        await tcp.Pair.Volume.ReadAsync(HostWire.PayloadBytesMax, back);
        Assert.Equal(second, back);
    }

    [Fact]
    public async Task Requests_beyond_the_volume_get_the_nbd_error_and_the_connection_carries_on()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var adapter = await AdapterAsync(tcp);
        using var client = await RawNbd.ConnectAsync(adapter.LocalEndPoint, TestPair.VolumeName);
        Assert.Equal(22u, await client.ReadAsync(1, (1 << 20) - 4096, 8192, out _));   // EINVAL
        Assert.Equal(28u, await client.WriteAsync(2, 1 << 20, Pattern(4096, 1)));     // ENOSPC
        Assert.Equal(22u, await client.ReadAsync(3, 100, 512, out _));                // misaligned: EINVAL
        Assert.Equal(0u, await client.ReadAsync(4, 0, 4096, out _));
    }

    /// <summary>Just enough NBD to misbehave: fixed newstyle, NBD_OPT_EXPORT_NAME, simple replies.</summary>
    internal sealed class RawNbd : IDisposable
    {
        readonly Socket _socket;
        readonly NetworkStream _stream;

        RawNbd(Socket socket)
        {
            _socket = socket;
            _stream = new NetworkStream(socket, ownsSocket: true);
        }

        public static async Task<RawNbd> ConnectAsync(IPEndPoint endpoint, string export)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await socket.ConnectAsync(endpoint);
            var c = new RawNbd(socket);
            var greeting = new byte[18];
            await c._stream.ReadExactlyAsync(greeting);
            Assert.Equal(0x4e42444d41474943UL, BinaryPrimitives.ReadUInt64BigEndian(greeting)); // NBDMAGIC
            await c._stream.WriteAsync(new byte[] { 0, 0, 0, 3 }); // fixed newstyle, no zeroes
            var name = Encoding.UTF8.GetBytes(export);
            var option = new byte[16 + name.Length];
            BinaryPrimitives.WriteUInt64BigEndian(option, 0x49484156454F5054UL); // IHAVEOPT
            BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), 1);          // NBD_OPT_EXPORT_NAME
            BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)name.Length);
            name.CopyTo(option, 16);
            await c._stream.WriteAsync(option);
            var info = new byte[10];
            await c._stream.ReadExactlyAsync(info);
            return c;
        }

        static byte[] Header(ushort type, ulong cookie, long offset, int length)
        {
            var h = new byte[28];
            BinaryPrimitives.WriteUInt32BigEndian(h, 0x25609513);
            BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(6), type);
            BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(8), cookie);
            BinaryPrimitives.WriteUInt64BigEndian(h.AsSpan(16), (ulong)offset);
            BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(24), (uint)length);
            return h;
        }

        public async Task SendWriteAsync(ulong cookie, long offset, byte[] data)
        {
            await _stream.WriteAsync(Header(1, cookie, offset, data.Length));
            await _stream.WriteAsync(data);
        }

        public async Task SendWriteHeaderAndPartOfThePayloadAsync(ulong cookie, long offset, byte[] data, int sent)
        {
            await _stream.WriteAsync(Header(1, cookie, offset, data.Length));
            await _stream.WriteAsync(data.AsMemory(0, sent));
            await _stream.FlushAsync();
            _socket.Close(); // dies mid-request
        }

        public async Task<(ulong Cookie, uint Error)> ReadReplyAsync()
        {
            var r = new byte[16];
            await _stream.ReadExactlyAsync(r);
            Assert.Equal(0x67446698u, BinaryPrimitives.ReadUInt32BigEndian(r));
            return (BinaryPrimitives.ReadUInt64BigEndian(r.AsSpan(8)), BinaryPrimitives.ReadUInt32BigEndian(r.AsSpan(4)));
        }

        public async Task<uint> WriteAsync(ulong cookie, long offset, byte[] data)
        {
            await SendWriteAsync(cookie, offset, data);
            var (back, error) = await ReadReplyAsync();
            Assert.Equal(cookie, back);
            return error;
        }

        public Task<uint> ReadAsync(ulong cookie, long offset, int length, out byte[] data)
        {
            var buffer = new byte[length];
            data = buffer;
            return ReadIntoAsync(cookie, offset, buffer);
        }

        async Task<uint> ReadIntoAsync(ulong cookie, long offset, byte[] buffer)
        {
            await _stream.WriteAsync(Header(0, cookie, offset, buffer.Length));
            var (back, error) = await ReadReplyAsync();
            Assert.Equal(cookie, back);
            if (error == 0) await _stream.ReadExactlyAsync(buffer);
            return error;
        }

        public void Dispose() => _stream.Dispose();
    }
}
