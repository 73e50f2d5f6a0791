using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Duet.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.HostProtocol.Tests;

/// <summary>Two controllers (an in-memory ICL between their handshakes), each with two units on
/// 127.0.0.1, and hosts speaking the protocol over real TCP. The pair's clock is manual; only
/// the hosts' give-up timeout runs on real time.</summary>
sealed class TcpPair : IAsyncDisposable
{
    public readonly TestPair Pair = new();
    public readonly HostUnitServer[] A = new HostUnitServer[2], B = new HostUnitServer[2];

    public static async Task<TcpPair> StartAsync()
    {
        var p = new TcpPair();
        for (byte unit = 0; unit < 2; unit++)
        {
            p.A[unit] = new HostUnitServer(p.Pair.Catalog, p.Pair.A, Options('A', unit), NullLogger.Instance);
            p.B[unit] = new HostUnitServer(p.Pair.Catalog, p.Pair.B, Options('B', unit), NullLogger.Instance);
            await p.A[unit].StartAsync();
            await p.B[unit].StartAsync();
        }
        return p;
    }

    static HostUnitServerOptions Options(char controller, byte unit) =>
        new() { Controller = controller, Unit = unit, Endpoint = new IPEndPoint(IPAddress.Loopback, 0) };

    public Task<TestHost> HostAsync(ulong hostId, params IPEndPoint[] units) => TestHost.ConnectAsync(new TestHostOptions
    {
        HostId = hostId,
        Volume = TestPair.VolumeName,
        Units = units,
        Clock = Pair.Time,
    });

    public async ValueTask DisposeAsync()
    {
        Pair.A.Stop(); // first, so a command still hung in A does not hold its connection open
        Pair.B.Stop();
        foreach (var s in A.Concat(B)) await s.DisposeAsync();
    }
}

public class HostUnitServerTests
{
    static byte[] Pattern(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed * 31 + i))];

    [Fact, Trait("Claim", "FO-3"), Trait("Claim", "FO-4")]
    public async Task Host_multicasts_pipelined_writes_to_a_group_and_reads_them_back()
    {
        await using var tcp = await TcpPair.StartAsync();
        await using var host = await tcp.HostAsync(1, tcp.A[0].LocalEndPoint, tcp.B[0].LocalEndPoint);
        Assert.Equal(1UL << 20, host.VolumeSizeBytes);
        Assert.Equal([('A', (byte)0), ('B', (byte)0)], host.Units.Select(u => (u.Controller, u.Unit)));

        var writes = Enumerable.Range(0, 16).Select(i => host.WriteAsync(i * 8192L, Pattern(8192, (byte)i))).ToArray();
        foreach (var w in writes) Assert.Equal(HostStatus.Ok, (await w).Status);
        Assert.Equal(HostStatus.Ok, (await host.FlushAsync()).Status);
        for (int i = 0; i < 16; i++)
        {
            var read = await host.ReadAsync(i * 8192L, 8192);
            Assert.Equal(HostStatus.Ok, read.Status);
            Assert.Equal(Pattern(8192, (byte)i), read.Data.ToArray());
        }

        await tcp.Pair.UntilAsync(() => tcp.Pair.A.QueuedCount == 0 && tcp.Pair.B.QueuedCount == 0, "both queues empty");
        // The counters are bumped after the queues change, on the link's own tasks: wait for them too (CI once read
        // 32 of 33 here, the last command's count still on its way).
        await tcp.Pair.UntilAsync(() => tcp.Pair.A.Counters.CompletionsSent == 33 && tcp.Pair.B.Counters.CompletionsReceived == 33
            && tcp.Pair.B.Counters.SecondaryReadiesSent == 33, "every command's ready and completion counted");
        Assert.Equal(33, tcp.Pair.A.Counters.CompletionsSent);
        Assert.Equal(33, tcp.Pair.B.Counters.CompletionsReceived);
        Assert.Equal(33, tcp.Pair.B.Counters.SecondaryReadiesSent);
        Assert.Equal(0, tcp.Pair.FenceCalls);
        // Each unit's connection read the host's frames on its own thread, asleep in the socket between them.
        foreach (var unit in new[] { tcp.A[0], tcp.B[0] })
        {
            var (reads, _, switches) = unit.ReaderThreadReads;
            Assert.True(reads >= 2, $"unit {unit.Controller}{unit.Unit}: {reads} reads on its connection's own thread");
            Assert.True(switches >= 1);
        }
    }

    [Theory, Trait("Claim", "FO-6")]
    [InlineData('A', 1)]
    [InlineData('B', 1)]
    [InlineData('B', 0)]
    public async Task Frame_sent_to_one_unit_only_is_forwarded_to_its_partner_and_completes(char controller, int unit)
    {
        await using var tcp = await TcpPair.StartAsync();
        var server = (controller == 'A' ? tcp.A : tcp.B)[unit];
        await using var host = await tcp.HostAsync(2, server.LocalEndPoint);

        Assert.Equal(HostStatus.Ok, (await host.WriteAsync(65536, Pattern(4096, 9))).Status);
        var read = await host.ReadAsync(65536, 4096);
        Assert.Equal(HostStatus.Ok, read.Status);
        Assert.Equal(Pattern(4096, 9), read.Data.ToArray());

        var sender = controller == 'A' ? tcp.Pair.A : tcp.Pair.B;
        var partner = controller == 'A' ? tcp.Pair.B : tcp.Pair.A;
        // The sender counts a forward once its send returned, which may be after the partner ran the command and
        // the host had its answer: wait for the counts, then check there were no more.
        await tcp.Pair.UntilAsync(() => sender.Counters.ForwardedFramesSent >= 2 && partner.Counters.ForwardedFramesReceived >= 2, "both forwards counted");
        Assert.Equal(2, sender.Counters.ForwardedFramesSent);
        Assert.Equal(2, partner.Counters.ForwardedFramesReceived);
        await tcp.Pair.UntilAsync(() => tcp.Pair.A.QueuedCount == 0 && tcp.Pair.B.QueuedCount == 0, "both queues empty");
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task Primary_that_never_answers_is_fenced_after_the_limit_and_the_host_sees_no_error()
    {
        await using var tcp = await TcpPair.StartAsync();
        tcp.Pair.HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously); // A's execute hangs
        await using var host = await tcp.HostAsync(3, tcp.A[1].LocalEndPoint, tcp.B[1].LocalEndPoint);

        var write = host.WriteAsync(0, Pattern(16384, 3));
        await tcp.Pair.UntilAsync(() => tcp.Pair.A.Counters.ExecutedAsPrimary == 1 && tcp.Pair.B.QueuedCount == 1, "A hangs, B holds the command");
        Assert.False(write.IsCompleted);

        tcp.Pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit);
        var done = await write;
        Assert.Equal(HostStatus.Ok, done.Status);
        Assert.Equal(1, tcp.Pair.FenceCalls);
        Assert.Equal(1, tcp.Pair.B.Counters.TakeoversByLimit);
        Assert.Equal('B', tcp.Pair.Owner);

        // B owns the volume now and serves the group alone; A's hung copy never answers twice.
        var read = await host.ReadAsync(0, 16384);
        Assert.Equal(HostStatus.Ok, read.Status);
        Assert.Equal(Pattern(16384, 3), read.Data.ToArray());
        await tcp.Pair.UntilAsync(() => tcp.Pair.B.QueuedCount == 0, "B's queue empty");
    }

    [Fact, Trait("Claim", "FO-3")]
    public async Task Malformed_frames_get_protocol_errors_and_the_server_stays_up()
    {
        await using var tcp = await TcpPair.StartAsync();
        using var raw = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await raw.ConnectAsync(tcp.A[0].LocalEndPoint);
        using var stream = new NetworkStream(raw);

        // A request before the hello: NotAttached, and the connection stays.
        var early = HostCodec.EncodeRequest(new HostRequest(HostOpcode.Read, 0, 5, 77, 0, 0, 512, ReadOnlyMemory<byte>.Empty));
        await stream.WriteAsync(early);
        Assert.Equal(HostCompletion.Error(77, HostStatus.NotAttached), await ReadCompletionAsync(stream));

        // A hello for a volume that does not exist, then one that does.
        await stream.WriteAsync(Hello(5, "nope"));
        Assert.Equal(HostStatus.NoSuchVolume, (await ReadHelloReplyAsync(stream)).Status);
        await stream.WriteAsync(Hello(5, TestPair.VolumeName));
        Assert.Equal(HostStatus.Ok, (await ReadHelloReplyAsync(stream)).Status);

        // Unknown flag bits: Invalid for that tag; the next frame is served.
        var bad = HostCodec.EncodeRequest(new HostRequest(HostOpcode.Read, 0, 5, 78, 0, 0, 512, ReadOnlyMemory<byte>.Empty));
        bad[HostWire.RequestFlagsOffset] = 0x80;
        await stream.WriteAsync(bad);
        Assert.Equal(HostCompletion.Error(78, HostStatus.Invalid), await ReadCompletionAsync(stream));
        // Misaligned, and the "forwarded" flag that only units may set.
        await stream.WriteAsync(HostCodec.EncodeRequest(new HostRequest(HostOpcode.Read, 0, 5, 79, 0, 100, 512, ReadOnlyMemory<byte>.Empty)));
        Assert.Equal(HostCompletion.Error(79, HostStatus.Invalid), await ReadCompletionAsync(stream));
        await stream.WriteAsync(HostCodec.EncodeRequest(new HostRequest(HostOpcode.Read, HostRequestFlags.Forwarded, 5, 80, 0, 0, 512, ReadOnlyMemory<byte>.Empty)));
        Assert.Equal(HostCompletion.Error(80, HostStatus.Invalid), await ReadCompletionAsync(stream));
        // Out of range is the volume's answer, through the handshake.
        await stream.WriteAsync(HostCodec.EncodeRequest(new HostRequest(HostOpcode.Read, 0, 5, 81, 0, 1 << 20, 512, ReadOnlyMemory<byte>.Empty)));
        Assert.Equal(HostCompletion.Error(81, HostStatus.OutOfRange), await ReadCompletionAsync(stream));
        await stream.WriteAsync(HostCodec.EncodeRequest(new HostRequest(HostOpcode.Read, 0, 5, 82, 0, 0, 512, ReadOnlyMemory<byte>.Empty)));
        var ok = await ReadCompletionAsync(stream);
        Assert.Equal((82UL, HostStatus.Ok, 512), (ok.HostTag, ok.Status, ok.Data.Length));

        // Garbage loses the framing: ProtocolError, then the unit closes this connection.
        await stream.WriteAsync("GET / HTTP/1.1\r\n\r\n"u8.ToArray());
        Assert.Equal(HostCompletion.Error(0, HostStatus.ProtocolError), await ReadCompletionAsync(stream));
        Assert.Equal(0, await stream.ReadAsync(new byte[1]));

        // The unit still serves everyone else.
        await using var host = await tcp.HostAsync(6, tcp.A[0].LocalEndPoint, tcp.B[0].LocalEndPoint);
        Assert.Equal(HostStatus.Ok, (await host.WriteAsync(0, Pattern(512, 6))).Status);
        await Assert.ThrowsAsync<IOException>(() => TestHost.ConnectAsync(new TestHostOptions { HostId = 7, Volume = "nope", Units = [tcp.B[0].LocalEndPoint] }));
    }

    static byte[] Hello(ulong hostId, string volume)
    {
        var hello = new HostHello(hostId, volume);
        var b = new byte[HostCodec.HelloBytes(hello)];
        HostCodec.WriteHello(hello, b);
        return b;
    }

    static async Task<HostHelloReply> ReadHelloReplyAsync(NetworkStream stream)
    {
        var b = new byte[HostWire.HelloReplyBytes];
        await stream.ReadExactlyAsync(b).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(b));
        Assert.Equal(OperationStatus.Done, HostCodec.TryReadHelloReply(ref reader, out var reply, out _));
        return reply;
    }

    static async Task<HostCompletion> ReadCompletionAsync(NetworkStream stream)
    {
        var header = new byte[HostWire.CompletionHeaderBytes];
        await stream.ReadExactlyAsync(header).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        int length = (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(HostWire.CompletionLengthOffset));
        var frame = new byte[header.Length + length];
        header.CopyTo(frame, 0);
        await stream.ReadExactlyAsync(frame.AsMemory(header.Length)).AsTask().WaitAsync(TimeSpan.FromSeconds(20));
        var completion = HostCodec.TryDecodeCompletion(frame);
        Assert.NotNull(completion);
        return completion;
    }
}
