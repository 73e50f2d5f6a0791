using System.Net;
using System.Net.Sockets;
using Duet.Core;

namespace Duet.Core.Tests;

/// <summary>The receive side a connection's own reader thread sleeps in (NBD's request loop).</summary>
public class ThreadReceiveStreamTests
{
    sealed class Pair : IDisposable
    {
        public readonly Socket Server, Client;
        public readonly NetworkStream Inner;
        public readonly ThreadReceiveStream Stream;
        Thread? _owner; // whose reads recv/poll serves

        Pair(Socket server, Socket client)
        {
            Server = server;
            Client = client;
            Inner = new NetworkStream(server, ownsSocket: true);
            Stream = new ThreadReceiveStream(server, Inner, () => Thread.CurrentThread == Volatile.Read(ref _owner));
        }

        public static async Task<Pair> OpenAsync()
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await client.ConnectAsync(listener.LocalEndPoint!);
            var server = await listener.AcceptAsync();
            // An async send, as every connection makes: .NET then keeps the descriptor non-blocking, so a recv
            // with nothing there says EAGAIN and the reader sleeps in poll.
            await server.SendAsync(new byte[] { 0 });
            return new Pair(server, client);
        }

        /// <summary>Starts a read of up to <paramref name="bytes"/> on a thread that owns the stream.</summary>
        public Task<(int Count, byte[] Bytes, bool OnOwner)> ReadOnOwnThreadAsync(int bytes)
        {
            var done = new TaskCompletionSource<(int, byte[], bool)>(TaskCreationOptions.RunContinuationsAsynchronously);
            var thread = new Thread(() =>
            {
                Own();
                var buffer = new byte[bytes];
                var read = Stream.ReadAsync(buffer);
                bool completedInline = read.IsCompleted; // the read ran on this thread, to its end
                try { done.TrySetResult((read.AsTask().GetAwaiter().GetResult(), buffer, completedInline)); }
                catch (Exception e) { done.TrySetException(e); }
            }) { IsBackground = true };
            thread.Start();
            return done.Task;
        }

        public void Own() => Volatile.Write(ref _owner, Thread.CurrentThread);

        /// <summary>Starts a read on a thread that owns the stream and returns it once it sleeps in poll.</summary>
        public async Task<Task<(int Count, byte[] Bytes, bool OnOwner)>> SleepingReadAsync()
        {
            long sleeps = Stream.DirectReads.Sleeps;
            var read = ReadOnOwnThreadAsync(16);
            await UntilAsleepAsync(sleeps + 1);
            return read;
        }

        public async Task UntilAsleepAsync(long sleeps)
        {
            for (int i = 0; i < 5000 && Stream.DirectReads.Sleeps < sleeps; i++) await Task.Delay(2);
            Assert.Equal(sleeps, Stream.DirectReads.Sleeps);
        }

        public void Dispose()
        {
            Stream.Dispose();
            Inner.Dispose();
            Client.Dispose();
        }
    }

    [Fact]
    public async Task A_read_on_the_owning_thread_sleeps_until_bytes_arrive_and_takes_them_itself()
    {
        using var p = await Pair.OpenAsync();
        var read = await p.SleepingReadAsync(); // nothing there yet: it sleeps in poll
        Assert.False(read.IsCompleted);
        p.Client.Send([1, 2, 3, 4, 5]);
        var (count, bytes, onOwner) = await read.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(5, count);
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5 }, bytes[..5]);
        Assert.True(onOwner);
        Assert.Equal((1L, 1L), p.Stream.DirectReads);

        // Bytes already there: taken at once, no sleep.
        p.Client.Send([6, 7]);
        for (int i = 0; i < 5000 && p.Server.Available < 2; i++) await Task.Delay(2);
        var second = await p.ReadOnOwnThreadAsync(16).WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(2, second.Count);
        Assert.Equal((2L, 1L), p.Stream.DirectReads);
    }

    [Fact]
    public async Task Shutting_the_receive_side_ends_a_read_asleep_in_poll_as_the_end_of_the_stream()
    {
        using var p = await Pair.OpenAsync();
        var read = await p.SleepingReadAsync();
        p.Stream.StopReceiving();
        var (count, _, _) = await read.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal(0, count);
        p.Stream.StopReceiving(); // again: harmless
    }

    [Fact]
    public async Task A_read_on_any_other_thread_goes_through_the_network_stream()
    {
        using var p = await Pair.OpenAsync();
        var owner = new Thread(p.Own); // another thread owns the stream (and ends); this one does not
        owner.Start();
        owner.Join();
        var buffer = new byte[8];
        var read = p.Stream.ReadAsync(buffer).AsTask();
        p.Client.Send([9, 8, 7]);
        Assert.Equal(3, await read.WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Equal(new byte[] { 9, 8, 7 }, buffer[..3]);
        Assert.Equal((0L, 0L), p.Stream.DirectReads);
    }

    [Fact]
    public async Task A_peer_that_closes_ends_the_stream_and_a_reset_is_an_io_error()
    {
        using var p = await Pair.OpenAsync();
        var read = await p.SleepingReadAsync();
        p.Client.Shutdown(SocketShutdown.Send);
        Assert.Equal(0, (await read.WaitAsync(TimeSpan.FromSeconds(20))).Count);

        using var q = await Pair.OpenAsync();
        q.Client.LingerState = new LingerOption(true, 0); // close with a reset
        q.Client.Close();
        for (int i = 0; i < 5000 && !q.Server.Poll(0, SelectMode.SelectRead); i++) await Task.Delay(2);
        await Assert.ThrowsAsync<IOException>(() => q.ReadOnOwnThreadAsync(16).WaitAsync(TimeSpan.FromSeconds(20)));
    }
}
