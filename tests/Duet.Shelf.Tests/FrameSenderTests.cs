using System.Net.Sockets;
using Duet.Core;

namespace Duet.Shelf.Tests;

/// <summary>The gathering sender both ends of a shelf connection write through: frames arrive whole and in
/// order, frames queued while a write is under way go out together in the next write, a failed write poisons it.</summary>
public class FrameSenderTests
{
    static (Socket Send, Socket Receive) Pair()
    {
        var a = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var b = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var path = Path.Combine(Path.GetTempPath(), $"duet-fs-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        a.Connect(new UnixDomainSocketEndPoint(path));
        b = listener.Accept();
        File.Delete(path);
        return (a, b);
    }

    /// <summary>A connected socket pair and a sender on one end that counts the failures it reports.</summary>
    sealed class Rig : IDisposable
    {
        public readonly Socket Send, Receive;
        public readonly FrameSender Sender;
        public int Failures;

        public Rig()
        {
            (Send, Receive) = Pair();
            Sender = new FrameSender(Send, TimeProvider.System, _ => Failures++);
        }

        public void Dispose()
        {
            Send.Dispose();
            Receive.Dispose();
        }
    }

    /// <summary>Frames 0..count-1, frame i being i+1 bytes of the value i, lie whole and in order from <paramref name="at"/>.</summary>
    static void AssertSmallFrames(byte[] bytes, int at, int count)
    {
        for (int i = 0; i < count; i++)
        {
            Assert.True(bytes.AsSpan(at, 1 + i).IndexOfAnyExcept((byte)i) < 0, $"frame {i} is not whole or not in its place");
            at += 1 + i;
        }
    }

    static readonly FrameSender.Encoder<(byte Fill, int Length)> Fill = static (span, f) => span[..f.Length].Fill(f.Fill);

    static async Task<byte[]> ReceiveAsync(Socket s, int bytes)
    {
        var buffer = new byte[bytes];
        for (int got = 0; got < bytes;)
        {
            int n = await s.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None);
            if (n == 0) throw new EndOfStreamException($"closed after {got} of {bytes} bytes");
            got += n;
        }
        return buffer;
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task Frames_queued_while_a_write_is_under_way_go_out_together_in_the_next_write_whole_and_in_order()
    {
        using var rig = new Rig();
        var (sender, receive) = (rig.Sender, rig.Receive);

        // 8 MiB: more than the socket buffers hold, so this write stays under way until the receiver reads.
        const int big = 8 << 20;
        var first = sender.SendAsync(big, ((byte)0xEE, big), Fill);
        Assert.False(first.IsCompleted);
        Assert.NotNull(sender.WriteStartedAt);

        // Everything sent now is queued behind it and returns at once.
        for (int i = 0; i < 100; i++)
        {
            var queued = sender.SendAsync(1 + i, ((byte)i, 1 + i), Fill);
            Assert.True(queued.IsCompletedSuccessfully);
        }
        var idle = sender.WhenIdleAsync();
        Assert.False(idle.IsCompleted);

        int small = Enumerable.Range(1, 100).Sum();
        var bytes = await ReceiveAsync(receive, big + small);
        await first;
        await idle;

        Assert.True(bytes.AsSpan(0, big).IndexOfAnyExcept((byte)0xEE) < 0);
        AssertSmallFrames(bytes, big, 100);
        Assert.Equal(101, sender.Frames);
        Assert.Equal(2, sender.Writes); // the big one, then the hundred in one write
        Assert.Null(sender.WriteStartedAt);
        Assert.Equal(0, rig.Failures);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task Frames_sent_while_held_wait_and_leave_together_in_one_write_on_resume()
    {
        using var rig = new Rig();
        var (sender, receive) = (rig.Sender, rig.Receive);

        sender.Hold();
        sender.Hold(); // holds nest: only the last Resume writes
        for (int i = 0; i < 50; i++) Assert.True(sender.SendAsync(1 + i, ((byte)i, 1 + i), Fill).IsCompletedSuccessfully);
        Assert.Equal(0, sender.Writes);
        Assert.True(sender.WhenIdleAsync().IsCompleted); // nothing is being written
        Assert.True(sender.Resume().IsCompletedSuccessfully);
        Assert.Equal(0, sender.Writes);
        await sender.Resume();
        Assert.Equal(1, sender.Writes);

        int total = Enumerable.Range(1, 50).Sum();
        AssertSmallFrames(await ReceiveAsync(receive, total), 0, 50);

        // A resume with nothing queued writes nothing; a frame after it goes out at once.
        sender.Hold();
        await sender.Resume();
        Assert.Equal(1, sender.Writes);
        await sender.SendAsync(3, ((byte)7, 3), Fill);
        Assert.Equal(2, sender.Writes);
        Assert.Equal([7, 7, 7], await ReceiveAsync(receive, 3));
        Assert.Equal(0, rig.Failures);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_lone_frame_goes_out_at_once_in_its_own_write()
    {
        var (send, receive) = Pair();
        using var _ = send;
        using var __ = receive;
        var sender = new FrameSender(send, TimeProvider.System, _ => { });
        for (int i = 0; i < 3; i++)
        {
            await sender.SendAsync(16, ((byte)(i + 1), 16), Fill);
            var got = await ReceiveAsync(receive, 16);
            Assert.True(got.AsSpan().IndexOfAnyExcept((byte)(i + 1)) < 0);
        }
        Assert.Equal(3, sender.Writes);
        Assert.True(sender.WhenIdleAsync().IsCompleted);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_failed_write_is_reported_once_and_every_later_send_throws()
    {
        var (send, receive) = Pair();
        using var _ = send;
        var failed = new List<Exception>();
        var sender = new FrameSender(send, TimeProvider.System, e => { lock (failed) failed.Add(e); });
        receive.Dispose();
        send.Shutdown(SocketShutdown.Send);

        await sender.SendAsync(64, ((byte)1, 64), Fill);
        Assert.Single(failed);
        Assert.True(sender.WhenIdleAsync().IsCompleted);
        var e = Assert.Throws<IOException>(() => sender.SendAsync(64, ((byte)2, 64), Fill));
        Assert.Contains("failed while sending", e.Message);
        Assert.Single(failed);
    }
}

/// <summary>The client's deadlines, kept by one sweep per connection, against a shelf that stops reading.</summary>
public class ShelfChannelDeadlineTests
{
    /// <summary>A fake shelf on a Unix socket: answers Hello and Open, then reads nothing more.</summary>
    static async Task ServeThenStallAsync(Socket listener, TaskCompletionSource stalled)
    {
        using var s = await listener.AcceptAsync();
        var pending = new List<byte>();
        var buffer = new byte[64 * 1024];
        int answered = 0;
        while (answered < 2)
        {
            int n = await s.ReceiveAsync(buffer, SocketFlags.None);
            if (n == 0) return;
            pending.AddRange(buffer.AsSpan(0, n).ToArray());
            while (true)
            {
                var reader = new System.Buffers.SequenceReader<byte>(new System.Buffers.ReadOnlySequence<byte>(pending.ToArray()));
                if (!ShelfCodec.TryReadRequestHeader(ref reader, out var header) || reader.Remaining < header.BodyBytes) break;
                int consumed = (int)reader.Consumed + header.BodyBytes;
                var request = ShelfCodec.ReadRequestBody(header, pending.GetRange((int)reader.Consumed, header.BodyBytes).ToArray());
                pending.RemoveRange(0, consumed);
                var ok = new ShelfResponse(request.Op, request.Tag, ShelfError.None);
                var response = request.Op == ShelfOp.Hello ? ok with { Name = request.Name, Value = ShelfWire.Version }
                    : ok with { Value = 1 << 20, Name = "serial" };
                await s.SendAsync(ShelfCodec.EncodeResponse(response), SocketFlags.None);
                answered++;
            }
        }
        stalled.SetResult();
        await Task.Delay(Timeout.Infinite).WaitAsync(TimeSpan.FromSeconds(60)).ContinueWith(_ => { });
    }

    /// <summary>Runs <paramref name="body"/> with a drive of a port (on a ticked clock, RequestTimeout 5 s) whose shelf has stopped reading.</summary>
    static async Task WithStalledShelfAsync(Func<ManualTimeProvider, Duet.Drives.IBlockDevice, Task> body)
    {
        var path = Path.Combine(Path.GetTempPath(), $"duet-stall-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        var stalled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = ServeThenStallAsync(listener, stalled);
        try
        {
            var time = new ManualTimeProvider();
            await using var port = new RemoteShelfPort(new RemoteShelfPortOptions
            {
                Port = "A", EndPoint = new UnixDomainSocketEndPoint(path), TimeProvider = time, RequestTimeout = TimeSpan.FromSeconds(5),
            });
            var drive = port.Open("d0");
            await stalled.Task;
            await body(time, drive);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public Task A_shelf_that_stops_reading_is_cut_off_after_the_request_timeout_and_the_write_fails_as_unreachable() =>
        WithStalledShelfAsync(async (time, drive) =>
        {
            // 8 MiB: the socket cannot take it all while nobody reads.
            var write = drive.WriteAsync(0, new byte[8 << 20]).AsTask();
            time.Advance(TimeSpan.FromSeconds(4));
            Assert.False(write.IsCompleted);
            time.Advance(TimeSpan.FromSeconds(1));
            var e = await Assert.ThrowsAsync<ShelfException>(() => write);
            Assert.Equal(ShelfError.Unreachable, e.Error);
            Assert.Contains("has not taken a request for 5 s", e.Message);
        });

    [Fact]
    [Trait("Claim", "FO-2")]
    public Task A_request_whose_caller_cancels_fails_at_once_as_cancelled_and_a_cancelled_token_sends_nothing() =>
        WithStalledShelfAsync(async (time, drive) =>
        {
            // The shelf never answers: the caller's cancel ends the read, on no clock.
            using var cts = new CancellationTokenSource();
            var read = drive.ReadAsync(0, new byte[4096], cts.Token).AsTask();
            Assert.False(read.IsCompleted);
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read.WaitAsync(TimeSpan.FromSeconds(20)));

            // Already cancelled: fails as cancelled.
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => drive.ReadAsync(0, new byte[4096], cts.Token).AsTask());

            // A request that is not cancelled still ends at its deadline.
            using var other = new CancellationTokenSource();
            var late = drive.ReadAsync(0, new byte[4096], other.Token).AsTask();
            time.Advance(TimeSpan.FromSeconds(6));
            var e = await Assert.ThrowsAsync<ShelfException>(() => late.WaitAsync(TimeSpan.FromSeconds(20)));
            Assert.Equal(ShelfError.Unreachable, e.Error);
            other.Cancel(); // after its end: nothing happens
        });
}
