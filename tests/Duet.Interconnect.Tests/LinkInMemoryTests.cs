using Duet.Core;
using Duet.Interconnect.Link;

namespace Duet.Interconnect.Tests;

/// <summary>The contract over the in-memory transport, on virtual time.</summary>
public sealed class LinkInMemoryTests : LinkContractTests
{
    readonly ManualTimeProvider _time = new();

    protected override Task<(IclLink A, IclLink B)> OpenCoreAsync(IclWindowOptions options)
    {
        var (a, b) = InMemoryIclTransport.CreatePair(options, _time);
        return Task.FromResult<(IclLink, IclLink)>((a, b));
    }

    protected override TimeSpan ShortPostTimeout => TimeSpan.FromSeconds(2);

    protected override async Task LetTimeoutPassAsync(Task post, TimeSpan timeout)
    {
        await Task.Yield();
        Assert.False(post.IsCompleted);
        _time.Advance(timeout - TimeSpan.FromTicks(1));
        await Task.Delay(20); // (real time, test only) give a wrongly early failure the chance to show
        Assert.False(post.IsCompleted, "gave up before PostTimeout had passed");
        _time.Advance(TimeSpan.FromTicks(1));
    }

    static IclWindowOptions Options => new()
    {
        QueueEntries = 4, ReplyQueueEntries = 4, MessageBufferBytes = 256, DataBufferBytes = 1024,
        ReplyMessageBufferBytes = 256, ReplyDataBufferBytes = 256, PostTimeout = TimeSpan.FromSeconds(1),
    };

    [Fact]
    [Trait("Claim", "ICL-2")]
    public async Task Manual_delivery_happens_only_when_pumped_replies_first()
    {
        var time = new ManualTimeProvider();
        var (a, b) = InMemoryIclTransport.CreatePair(Options, time, "A", "B", manualDelivery: true);
        await using var _a = a;
        await using var _b = b;
        var rb = new Recorder();
        b.Start(rb.Handle);
        await a.PostAsync(IclSignal.Message, 1, new byte[] { 1 }, default);
        await a.PostAsync(IclSignal.MessageWithData, 1, new byte[] { 2 }, new byte[] { 9, 9 });
        await a.PostAsync(IclSignal.Reply, 1, new byte[] { 3 }, default);
        Assert.Equal(3, b.PendingTransfers);
        Assert.Equal(0, rb.Count);
        Assert.Equal(0, b.Counters.DoorbellsTaken);

        Assert.True(await b.PumpOnceAsync());
        Assert.Equal(IclSignal.Reply, rb.Items.Single().Signal); // the reply queue is looked at first
        Assert.Equal(3, b.Counters.DoorbellsTaken);
        Assert.Equal(2, await b.PumpAllAsync());
        Assert.False(await b.PumpOnceAsync());
        Assert.Equal(new byte[] { 3, 1, 2 }, rb.Items.Select(x => x.Message[0]));
        Assert.Equal(new byte[] { 9, 9 }, rb.Items[2].Data);
        Assert.Throws<InvalidOperationException>(() => InMemoryIclTransport.CreatePair(Options, time).A.PumpOnceAsync());
    }

    [Fact]
    [Trait("Claim", "ICL-3")]
    public async Task Partial_pieces_of_a_large_transfer_are_delivered_once_as_a_whole_even_wrapping_the_ring()
    {
        var (a, b) = InMemoryIclTransport.CreatePair(Options, new ManualTimeProvider(), "A", "B", manualDelivery: true);
        await using var _a = a;
        await using var _b = b;
        var rb = new Recorder();
        b.Start(rb.Handle);
        // 300 B first so that later data wraps around the 1 KiB data ring.
        await a.PostAsync(IclSignal.MessageWithData, 1, default, LinkTestUtil.Bytes(300, 1));
        Assert.Equal(1, await b.PumpAllAsync());
        var big = LinkTestUtil.Bytes(5000, 2);
        var post = a.PostAsync(IclSignal.MessageWithData, 5, new byte[] { 42 }, big).AsTask();
        int pumped = 0;
        while (!post.IsCompleted || b.PendingTransfers > 0)
        {
            if (await b.PumpOnceAsync()) pumped++;
            else await Task.Yield();
        }
        await post;
        Assert.Equal(10, pumped);  // 5000 B in pieces of 512 B
        Assert.Equal(2, rb.Count); // but one delivery
        Assert.Equal(IclSignal.MessageWithPartialData, rb.Items[1].Signal);
        Assert.Equal(big, rb.Items[1].Data);
        Assert.Equal(new byte[] { 42 }, rb.Items[1].Message);
        Assert.Equal(10, b.Counters.Received[IclSignal.MessageWithPartialData].Transfers);
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    [Trait("Claim", "AW-3")]
    public async Task A_cut_shows_the_salvage_hook_each_unread_message_in_order_and_still_delivers_none()
    {
        var (a, b) = InMemoryIclTransport.CreatePair(Options, new ManualTimeProvider(), "A", "B", manualDelivery: true);
        await using var _a = a;
        await using var _b = b;
        var rb = new Recorder();
        b.Start(rb.Handle);
        var salvaged = new List<(IclSignal Signal, ulong Epoch, byte[] Message)>();
        b.Salvage = (signal, epoch, message) => salvaged.Add((signal, epoch, message.ToArray()));
        await a.PostAsync(IclSignal.Message, 3, new byte[] { 1, 1 }, default);
        Assert.Equal(1, await b.PumpAllAsync()); // read before the cut: not salvaged
        await a.PostAsync(IclSignal.Message, 3, new byte[] { 2 }, default);
        await a.PostAsync(IclSignal.MessageWithData, 3, new byte[] { 3 }, new byte[] { 9 }); // carries data: not for the hook
        await a.PostAsync(IclSignal.Message, 4, new byte[] { 4, 4, 4 }, default);
        await a.PostAsync(IclSignal.Reply, 4, new byte[] { 5 }, default);

        a.Cut();
        // Command queue in order, then the reply queue; only whole message-only transfers.
        Assert.Equal([(IclSignal.Message, 3UL, "02"), (IclSignal.Message, 4UL, "040404"), (IclSignal.Reply, 4UL, "05")],
            salvaged.Select(x => (x.Signal, x.Epoch, Convert.ToHexString(x.Message))).ToArray());
        // Seen, and still dropped: the handler gets none of them, before or after the link heals.
        Assert.Equal(4, await b.PumpAllAsync());
        Assert.Single(rb.Items);
        b.Heal();
        Assert.Equal(0, await b.PumpAllAsync());
        Assert.Single(rb.Items);

        // A second cut does not show them again.
        salvaged.Clear();
        a.Cut();
        Assert.Empty(salvaged);
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task A_cut_link_reports_down_fails_posts_fast_loses_what_was_in_flight_and_heals()
    {
        var (a, b) = InMemoryIclTransport.CreatePair(Options, new ManualTimeProvider(), "A", "B", manualDelivery: true);
        await using var _a = a;
        await using var _b = b;
        var changes = new List<bool>();
        a.UpChanged += changes.Add;
        var rb = new Recorder();
        b.Start(rb.Handle);
        for (int i = 0; i < 4; i++) await a.PostAsync(IclSignal.Message, 1, new byte[] { (byte)i }, default);
        var waiting = a.PostAsync(IclSignal.Message, 1, new byte[] { 4 }, default).AsTask(); // the queue is full

        a.Cut();
        Assert.False(a.IsUp);
        Assert.False(b.IsUp);
        Assert.True(a.IsCut);
        await Assert.ThrowsAsync<IclLinkDownException>(() => waiting);
        await Assert.ThrowsAsync<IclLinkDownException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default).AsTask());
        Assert.Equal(4, await b.PumpAllAsync());
        Assert.Equal(0, rb.Count);
        Assert.Equal(4, b.Counters.TransfersDropped);

        b.Heal();
        Assert.True(a.IsUp);
        Assert.True(b.IsUp);
        await a.PostAsync(IclSignal.Message, 1, new byte[] { 7 }, default);
        Assert.Equal(1, await b.PumpAllAsync());
        Assert.Equal(7, rb.Items.Single().Message[0]);
        Assert.Equal([false, true], changes);
        Assert.Equal(0, a.Counters.PostTimeouts);
    }

    [Fact]
    [Trait("Claim", "ICL-3")]
    public async Task A_partial_sequence_cut_half_way_is_never_delivered()
    {
        var (a, b) = InMemoryIclTransport.CreatePair(Options, new ManualTimeProvider(), "A", "B", manualDelivery: true);
        await using var _a = a;
        await using var _b = b;
        var rb = new Recorder();
        b.Start(rb.Handle);
        var post = a.PostAsync(IclSignal.MessageWithData, 1, new byte[] { 1 }, new byte[5000]).AsTask();
        for (int moved = 0; moved < 3;) // three pieces moved out (the sender refills as space frees), then the cut
        {
            if (await b.PumpOnceAsync()) moved++;
            else await Task.Delay(1);
        }
        a.Cut();
        await Assert.ThrowsAsync<IclLinkDownException>(() => post);
        await b.PumpAllAsync();
        a.Heal();
        await a.PostAsync(IclSignal.MessageWithData, 1, new byte[] { 2 }, new byte[] { 7 });
        Assert.Equal(1, await b.PumpAllAsync());
        var only = Assert.Single(rb.Items);
        Assert.Equal(2, only.Message[0]);
        Assert.Equal(0, b.Counters.PartialTransfersAssembled);
        Assert.True(b.Counters.TransfersDropped >= 1);
    }

    [Fact]
    [Trait("Claim", "ICL-2")]
    public async Task Disposing_an_end_while_doorbells_keep_its_pump_busy_always_ends()
    {
        // The pump must see a dispose that lands between two of its wake-ups (the fresh-clone CI
        // once hung here: the pump took a new wake-up after the dispose had rung the last one).
        var options = new IclWindowOptions { PostTimeout = TimeSpan.FromSeconds(1) };
        for (int round = 0; round < 500; round++)
        {
            var (a, b) = InMemoryIclTransport.CreatePair(options, TimeProvider.System);
            await using var _a = a;
            long taken = 0;
            b.Start(_ => { Interlocked.Increment(ref taken); return ValueTask.CompletedTask; });
            using var stop = new CancellationTokenSource();
            var poster = Task.Run(async () =>
            {
                try
                {
                    while (!stop.IsCancellationRequested) await a.PostAsync(IclSignal.Message, 1, new byte[] { 1 }, default);
                }
                catch (IclLinkDownException) { }
            });
            while (Volatile.Read(ref taken) < 1 + round % 7) await Task.Yield();
            var dispose = b.DisposeAsync().AsTask();
            Assert.True(await Task.WhenAny(dispose, Task.Delay(TimeSpan.FromSeconds(30))) == dispose, $"round {round}: the dispose never ended");
            stop.Cancel();
            await poster;
        }
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task A_handler_that_throws_does_not_stop_the_link()
    {
        var (a, b) = InMemoryIclTransport.CreatePair(Options, new ManualTimeProvider());
        await using var _a = a;
        await using var _b = b;
        var rb = new Recorder();
        int calls = 0;
        b.Start(t => ++calls == 1 ? throw new InvalidOperationException("boom") : rb.Handle(t));
        await a.PostAsync(IclSignal.Message, 1, new byte[] { 1 }, default);
        await a.PostAsync(IclSignal.Message, 1, new byte[] { 2 }, default);
        await rb.WaitForAsync(1);
        Assert.Equal(2, rb.Items.Single().Message[0]);
        Assert.Equal(1, b.Counters.HandlerErrors);
    }

    [Fact]
    [Trait("Claim", "ICL-5")]
    public async Task The_meter_exports_the_counts_tagged_by_link_and_signal()
    {
        var seen = new List<(string Name, long Value, Dictionary<string, object?> Tags)>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == "Duet.Interconnect") l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<long>((i, v, tags, _) =>
        {
            var d = new Dictionary<string, object?>();
            foreach (var t in tags) d[t.Key] = t.Value;
            lock (seen) seen.Add((i.Name, v, d));
        });
        listener.Start();
        var (a, b) = InMemoryIclTransport.CreatePair(Options, new ManualTimeProvider(), "metA", "metB", manualDelivery: true);
        await using var _a = a;
        await using var _b = b;
        b.Start(_ => ValueTask.CompletedTask);
        await a.PostAsync(IclSignal.MessageWithData, 1, new byte[3], new byte[5]);
        await b.PumpAllAsync();
        List<(string Name, long Value, Dictionary<string, object?> Tags)> mine;
        lock (seen) mine = seen.Where(x => (string?)x.Tags["link"] is "metA" or "metB").ToList();
        Assert.Contains(mine, x => x.Name == "duet.icl.doorbells" && (string?)x.Tags["link"] == "metA" && (string?)x.Tags["direction"] == "rung" && x.Value == 1);
        Assert.Contains(mine, x => x.Name == "duet.icl.doorbells" && (string?)x.Tags["link"] == "metB" && (string?)x.Tags["direction"] == "taken" && x.Value == 1);
        Assert.Contains(mine, x => x.Name == "duet.icl.transfers" && (string?)x.Tags["signal"] == "MessageWithData" && (string?)x.Tags["direction"] == "sent");
        Assert.Contains(mine, x => x.Name == "duet.icl.data_bytes" && (string?)x.Tags["link"] == "metB" && (string?)x.Tags["direction"] == "received" && x.Value == 5);
        Assert.Contains(mine, x => x.Name == "duet.icl.message_bytes" && (string?)x.Tags["link"] == "metA" && x.Value == 3);
    }
}
