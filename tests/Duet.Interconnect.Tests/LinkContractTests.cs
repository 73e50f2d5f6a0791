using System.Diagnostics;
using Duet.Interconnect.Link;

namespace Duet.Interconnect.Tests;

/// <summary>
/// The link's semantics, the same for every transport: each derived class runs every test
/// here over its transport.
/// </summary>
public abstract class LinkContractTests : IAsyncLifetime
{
    protected static readonly IclWindowOptions Small = new()
    {
        QueueEntries = 8,
        ReplyQueueEntries = 8,
        MessageBufferBytes = 4096,
        DataBufferBytes = 64 * 1024,
        ReplyMessageBufferBytes = 4096,
        ReplyDataBufferBytes = 16 * 1024,
        PostTimeout = TimeSpan.FromSeconds(10),
    };

    readonly List<IclLink> _links = [];

    /// <summary>Opens both ends and returns once both are up.</summary>
    protected abstract Task<(IclLink A, IclLink B)> OpenCoreAsync(IclWindowOptions options);

    /// <summary>The PostTimeout the timeout test uses (virtual for the in-memory transport, real and short otherwise).</summary>
    protected abstract TimeSpan ShortPostTimeout { get; }

    /// <summary>Lets <paramref name="timeout"/> pass for a post that waits for space (advances virtual time where there is one).</summary>
    protected abstract Task LetTimeoutPassAsync(Task post, TimeSpan timeout);

    protected async Task<(IclLink A, IclLink B)> OpenAsync(IclWindowOptions options)
    {
        var (a, b) = await OpenCoreAsync(options);
        _links.Add(a);
        _links.Add(b);
        Assert.True(a.IsUp);
        Assert.True(b.IsUp);
        return (a, b);
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var l in _links) await l.DisposeAsync();
    }

    static byte[] Tagged(int sequence, int length, int seed)
    {
        var b = LinkTestUtil.Bytes(Math.Max(length, 4), seed * 100_003 + sequence);
        BitConverter.TryWriteBytes(b, sequence);
        return length < 4 ? b[..4] : b;
    }

    [Fact]
    [Trait("Claim", "ICL-1")]
    [Trait("Claim", "ICL-3")]
    public async Task Mixed_transfers_are_delivered_in_order_both_ways()
    {
        var (a, b) = await OpenAsync(Small);
        var ra = new Recorder();
        var rb = new Recorder();
        a.Start(ra.Handle);
        b.Start(rb.Handle);
        const int N = 40;
        var sizes = new Dictionary<(int Seed, int I), int>();
        var random = new Random(7);
        for (int seed = 1; seed <= 2; seed++)
            for (int i = 0; i < N; i++)
                sizes[(seed, i)] = (i % 4) switch
                {
                    0 => 0,
                    1 => random.Next(1, Small.DataBufferBytes + 1),
                    2 => random.Next(Small.DataBufferBytes + 1, 3 * Small.DataBufferBytes),
                    _ => random.Next(0, 3 * Small.ReplyDataBufferBytes),
                };

        async Task Send(IclLink from, int seed)
        {
            for (int i = 0; i < N; i++)
            {
                int size = sizes[(seed, i)];
                var signal = (i % 4) switch { 0 => IclSignal.Message, 3 => IclSignal.Reply, _ => IclSignal.MessageWithData };
                await from.PostAsync(signal, (ulong)(seed * 1000 + i), Tagged(i, 4 + i, seed), size == 0 ? default : Tagged(i, size, seed + 10));
            }
        }

        await Task.WhenAll(Send(a, 1), Send(b, 2)).WaitAsync(TimeSpan.FromSeconds(60));
        await ra.WaitForAsync(N);
        await rb.WaitForAsync(N);

        foreach (var (rec, seed) in new[] { (rb, 1), (ra, 2) })
        {
            var items = rec.Items;
            Assert.Equal(N, items.Count);
            // Order is kept within each queue (commands, replies); replies may overtake commands.
            var commands = items.Where(x => x.Signal != IclSignal.Reply).Select(x => BitConverter.ToInt32(x.Message)).ToList();
            var replies = items.Where(x => x.Signal == IclSignal.Reply).Select(x => BitConverter.ToInt32(x.Message)).ToList();
            Assert.Equal(Enumerable.Range(0, N).Where(i => i % 4 != 3), commands);
            Assert.Equal(Enumerable.Range(0, N).Where(i => i % 4 == 3), replies);
            foreach (var x in items)
            {
                int i = BitConverter.ToInt32(x.Message);
                int size = sizes[(seed, i)];
                Assert.Equal((ulong)(seed * 1000 + i), x.Epoch);
                Assert.Equal(Tagged(i, 4 + i, seed), x.Message);
                Assert.Equal(size == 0 ? [] : Tagged(i, size, seed + 10), x.Data);
                var expected = (i % 4) switch
                {
                    0 => IclSignal.Message,
                    3 => IclSignal.Reply,
                    _ => size > Small.DataBufferBytes ? IclSignal.MessageWithPartialData : IclSignal.MessageWithData,
                };
                Assert.Equal(expected, x.Signal);
            }
        }
    }

    [Fact]
    [Trait("Claim", "ICL-3")]
    public async Task Data_of_any_size_arrives_intact_and_partial_data_is_assembled_first()
    {
        var (a, b) = await OpenAsync(Small);
        var rb = new Recorder();
        b.Start(rb.Handle);
        var random = new Random(42);
        var sent = new List<byte[]>();
        for (int i = 0; i < 24; i++)
        {
            int size = i switch
            {
                0 => Small.DataBufferBytes,
                1 => Small.DataBufferBytes + 1,
                2 => 4 * Small.DataBufferBytes,
                _ => random.Next(1, 4 * Small.DataBufferBytes),
            };
            var data = LinkTestUtil.Bytes(size, i);
            sent.Add(data);
            await a.PostAsync(IclSignal.MessageWithData, 1, BitConverter.GetBytes(i), data).AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        }
        await rb.WaitForAsync(sent.Count);
        var got = rb.Items;
        for (int i = 0; i < sent.Count; i++)
        {
            Assert.Equal(i, BitConverter.ToInt32(got[i].Message));
            Assert.True(sent[i].AsSpan().SequenceEqual(got[i].Data), $"data of transfer {i} ({sent[i].Length} B) differs");
        }
        int partial = sent.Count(d => d.Length > Small.DataBufferBytes);
        Assert.Equal(partial, got.Count(x => x.Signal == IclSignal.MessageWithPartialData));
        Assert.Equal(partial, b.Counters.PartialTransfersAssembled);
        long pieces = sent.Where(d => d.Length > Small.DataBufferBytes).Sum(d => (d.Length + Small.DataBufferBytes / 2 - 1) / (Small.DataBufferBytes / 2));
        Assert.Equal(pieces, b.Counters.Received[IclSignal.MessageWithPartialData].Transfers);
        Assert.Equal(sent.Sum(d => (long)d.Length), b.Counters.DataBytesReceived);
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task A_blocked_receiver_stops_the_sender_once_the_window_is_full_and_unblocking_resumes_it()
    {
        var (a, b) = await OpenAsync(Small);
        var rb = new Recorder(blocked: true);
        b.Start(rb.Handle);
        int completed = 0;
        Task? stuck = null;
        for (int i = 0; i < 3 * Small.QueueEntries && stuck is null; i++)
        {
            var post = a.PostAsync(IclSignal.MessageWithData, 1, BitConverter.GetBytes(i), new byte[1000]).AsTask();
            try
            {
                await post.WaitAsync(TimeSpan.FromMilliseconds(500));
                completed++;
            }
            catch (TimeoutException)
            {
                stuck = post;
            }
        }
        Assert.NotNull(stuck);
        Assert.Equal(Small.QueueEntries, completed); // the command queue is the limit here
        Assert.Equal(0, rb.Count);

        rb.Release();
        await stuck.WaitAsync(TimeSpan.FromSeconds(20));
        await rb.WaitForAsync(completed + 1);
        Assert.Equal(Enumerable.Range(0, completed + 1), rb.Items.Select(x => BitConverter.ToInt32(x.Message)));
        Assert.Equal(0, a.Counters.PostTimeouts);
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task The_data_buffer_also_limits_the_sender()
    {
        var (a, b) = await OpenAsync(Small);
        var rb = new Recorder(blocked: true);
        b.Start(rb.Handle);
        int chunk = Small.DataBufferBytes / 4;
        for (int i = 0; i < 4; i++)
            await a.PostAsync(IclSignal.MessageWithData, 1, default, new byte[chunk]).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        var post = a.PostAsync(IclSignal.MessageWithData, 1, default, new byte[1]).AsTask();
        await Assert.ThrowsAsync<TimeoutException>(() => post.WaitAsync(TimeSpan.FromMilliseconds(300)));
        rb.Release();
        await post.WaitAsync(TimeSpan.FromSeconds(20));
        await rb.WaitForAsync(5);
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task A_peer_that_never_consumes_makes_PostAsync_fail_within_PostTimeout_and_never_hang()
    {
        var options = Small with { PostTimeout = ShortPostTimeout };
        var (a, _) = await OpenAsync(options); // B never starts: nothing is ever consumed
        for (int i = 0; i < options.QueueEntries; i++)
            await a.PostAsync(IclSignal.Message, 1, new byte[10], default).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        var watch = Stopwatch.StartNew();
        var post = a.PostAsync(IclSignal.Message, 1, new byte[10], default).AsTask();
        await LetTimeoutPassAsync(post, options.PostTimeout);
        var ex = await Assert.ThrowsAsync<IclLinkDownException>(() => post.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("no window space", ex.Message);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30));
        Assert.Equal(1, a.Counters.PostTimeouts);
        Assert.Equal(options.QueueEntries, a.Counters.DoorbellsRung);

        // A large transfer stalls the same way, part-way through its pieces.
        var big = a.PostAsync(IclSignal.Reply, 1, default, new byte[options.ReplyDataBufferBytes * 3]).AsTask();
        await LetTimeoutPassAsync(big, options.PostTimeout);
        await Assert.ThrowsAsync<IclLinkDownException>(() => big.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(2, a.Counters.PostTimeouts);
    }

    [Fact]
    [Trait("Claim", "ICL-2")]
    [Trait("Claim", "ICL-5")]
    public async Task Doorbells_transfers_and_bytes_are_counted_exactly()
    {
        var (a, b) = await OpenAsync(Small);
        var ra = new Recorder();
        var rb = new Recorder();
        a.Start(ra.Handle);
        b.Start(rb.Handle);
        int big = Small.DataBufferBytes * 5 / 2;             // 5 pieces of DataBufferBytes / 2
        int bigReply = Small.ReplyDataBufferBytes * 5 / 2;   // 5 pieces of ReplyDataBufferBytes / 2
        for (int i = 0; i < 3; i++) await a.PostAsync(IclSignal.Message, 7, new byte[10], default);
        for (int i = 0; i < 2; i++) await a.PostAsync(IclSignal.MessageWithData, 7, new byte[20], new byte[1000]);
        await a.PostAsync(IclSignal.MessageWithData, 7, new byte[30], new byte[big]);
        await rb.WaitForAsync(6);
        for (int i = 0; i < 2; i++) await b.PostAsync(IclSignal.Reply, 7, new byte[8], default);
        await b.PostAsync(IclSignal.Reply, 7, new byte[8], new byte[bigReply]);
        await ra.WaitForAsync(3);

        var ca = a.Counters;
        var cb = b.Counters;
        Assert.Equal(10, ca.DoorbellsRung);
        Assert.Equal(10, cb.DoorbellsTaken);
        Assert.Equal(7, cb.DoorbellsRung);
        Assert.Equal(7, ca.DoorbellsTaken);
        Assert.Equal(new IclTrafficCounts(3, 30, 0), ca.Sent[IclSignal.Message]);
        Assert.Equal(new IclTrafficCounts(2, 40, 2000), ca.Sent[IclSignal.MessageWithData]);
        Assert.Equal(new IclTrafficCounts(5, 30, big), ca.Sent[IclSignal.MessageWithPartialData]);
        Assert.Equal(new IclTrafficCounts(0, 0, 0), ca.Sent[IclSignal.Reply]);
        Assert.Equal(new IclTrafficCounts(7, 24, bigReply), cb.Sent[IclSignal.Reply]);
        foreach (var s in Enum.GetValues<IclSignal>())
        {
            Assert.Equal(ca.Sent[s], cb.Received[s]);
            Assert.Equal(cb.Sent[s], ca.Received[s]);
        }
        Assert.Equal(10, ca.TransfersSent);
        Assert.Equal(30 + 40 + 30, ca.MessageBytesSent);
        Assert.Equal(2000 + big, cb.DataBytesReceived);
        Assert.Equal(1, cb.PartialTransfersAssembled);
        Assert.Equal(1, ca.PartialTransfersAssembled);
        Assert.Equal(0, ca.TransfersDropped + cb.TransfersDropped + ca.ProtocolErrors + cb.ProtocolErrors);
        Assert.Equal(6, rb.Count);
        Assert.Equal(3, ra.Count);
    }

    [Fact]
    [Trait("Claim", "ICL-5")]
    public async Task Sent_bytes_are_counted_by_message_type()
    {
        var (a, b) = await OpenAsync(Small);
        var rb = new Recorder();
        a.Start(new Recorder().Handle);
        b.Start(rb.Handle);
        var heartbeat = new byte[44];
        heartbeat[0] = 0x01;
        heartbeat[1] = 0x01; // Duet type 0x0101: the classifier reads the first bytes only
        var batch = Duet.Interconnect.Wire.DuetFrame.ToArray(new Duet.Interconnect.Wire.HandshakeBatch(
            [new Duet.Interconnect.Wire.HandshakeStep(Duet.Interconnect.Wire.HandshakePhase.PrimaryAck, 0, 1, 2)]));
        await a.PostAsync(IclSignal.Message, 7, heartbeat, default);
        await a.PostAsync(IclSignal.Message, 7, heartbeat, default);
        await a.PostAsync(IclSignal.Message, 7, batch, default);
        await a.PostAsync(IclSignal.MessageWithData, 7, default, new byte[512]);
        await rb.WaitForAsync(4);
        var by = a.Counters.SentByType;
        Assert.Equal(new IclTrafficCounts(2, 88, 0), by["Heartbeat"]);
        Assert.Equal(new IclTrafficCounts(1, batch.Length, 0), by["HandshakeBatch"]);
        Assert.Equal(new IclTrafficCounts(1, 0, 512), by["Data"]);
        Assert.Equal(3, by.Count);
        Assert.Empty(b.Counters.SentByType);
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task Replies_do_not_deadlock_when_both_command_queues_are_full()
    {
        var (a, b) = await OpenAsync(Small);
        int n = Small.QueueEntries;
        var repliesAtA = new Recorder();
        var repliesAtB = new Recorder();
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Func<IclTransfer, ValueTask> Handler(IclLink self, Recorder replies) => async t =>
        {
            if (t.Signal == IclSignal.Reply)
            {
                await replies.Handle(t);
                return;
            }
            await gate.Task;
            // The reply goes out from inside the handler, while this end's command queue is still full.
            var echo = t.Message.ToArray();
            await self.PostAsync(IclSignal.Reply, t.Epoch, echo, new byte[512]);
        };
        a.Start(Handler(a, repliesAtA));
        b.Start(Handler(b, repliesAtB));

        for (int i = 0; i < n; i++)
        {
            await a.PostAsync(IclSignal.MessageWithData, 1, BitConverter.GetBytes(i), new byte[100]).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
            await b.PostAsync(IclSignal.MessageWithData, 2, BitConverter.GetBytes(i), new byte[100]).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        }
        await LinkTestUtil.Until(() => a.PendingTransfers == n && b.PendingTransfers == n);
        // Both command queues are full: one more command either way would wait.
        using (var soon = new CancellationTokenSource(TimeSpan.FromMilliseconds(200)))
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default, soon.Token).AsTask());

        gate.SetResult();
        await repliesAtA.WaitForAsync(n);
        await repliesAtB.WaitForAsync(n);
        Assert.Equal(Enumerable.Range(0, n), repliesAtA.Items.Select(x => BitConverter.ToInt32(x.Message)));
        Assert.Equal(Enumerable.Range(0, n), repliesAtB.Items.Select(x => BitConverter.ToInt32(x.Message)));
        Assert.Equal(0, a.Counters.PostTimeouts + b.Counters.PostTimeouts);
    }

    [Fact]
    public async Task Bad_arguments_are_refused_without_touching_the_window()
    {
        var (a, _) = await OpenAsync(Small);
        await Assert.ThrowsAsync<ArgumentException>(() => a.PostAsync(IclSignal.Message, 1, default, new byte[1]).AsTask());
        await Assert.ThrowsAsync<ArgumentException>(() => a.PostAsync(IclSignal.Message, 1, new byte[Small.MessageBufferBytes + 1], default).AsTask());
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => a.PostAsync((IclSignal)9, 1, default, default).AsTask());
        Assert.Equal(0, a.Counters.DoorbellsRung);
    }
}
