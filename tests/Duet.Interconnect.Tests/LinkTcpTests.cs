using System.Net;
using Duet.Interconnect.Link;
using Xunit.Abstractions;

namespace Duet.Interconnect.Tests;

/// <summary>The contract over TCP on loopback, plus reconnects.</summary>
public sealed class LinkTcpTests(ITestOutputHelper output) : LinkContractTests
{
    static IclWindowOptions Fast(IclWindowOptions o) => o with { ReconnectInterval = TimeSpan.FromMilliseconds(20) };

    protected override async Task<(IclLink A, IclLink B)> OpenCoreAsync(IclWindowOptions options)
    {
        var a = TcpIclTransport.Listen("A", "B", new IPEndPoint(IPAddress.Loopback, 0), Fast(options));
        var b = TcpIclTransport.Connect("B", "A", a.ListenEndPoint!, Fast(options));
        await LinkTestUtil.Until(() => a.IsUp && b.IsUp);
        return (a, b);
    }

    protected override TimeSpan ShortPostTimeout => TimeSpan.FromMilliseconds(300);

    protected override Task LetTimeoutPassAsync(Task post, TimeSpan timeout) => Task.CompletedTask;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    [Trait("Claim", "ICL-1")]
    public async Task The_link_reconnects_after_the_connection_is_dropped(bool dropAtConnector)
    {
        var (a, b) = await OpenAsync(Small);
        var ta = (TcpIclLink)a;
        var tb = (TcpIclLink)b;
        var ra = new Recorder();
        var rb = new Recorder();
        a.Start(ra.Handle);
        b.Start(rb.Handle);
        var downs = 0;
        a.UpChanged += up => { if (!up) Interlocked.Increment(ref downs); };
        for (int i = 0; i < 5; i++) await a.PostAsync(IclSignal.MessageWithData, 1, BitConverter.GetBytes(i), new byte[100 * i]);
        await rb.WaitForAsync(5);

        (dropAtConnector ? tb : ta).DropConnection();
        await LinkTestUtil.Until(() => ta.ConnectionsEstablished >= 2 && tb.ConnectionsEstablished >= 2 && a.IsUp && b.IsUp);
        Assert.True(downs >= 1);

        for (int i = 5; i < 10; i++) await a.PostAsync(IclSignal.MessageWithData, 1, BitConverter.GetBytes(i), LinkTestUtil.Bytes(30_000 * i, i));
        await b.PostAsync(IclSignal.Reply, 2, new byte[] { 1 }, default);
        await rb.WaitForAsync(10);
        await ra.WaitForAsync(1);
        Assert.Equal(Enumerable.Range(0, 10), rb.Items.Select(x => BitConverter.ToInt32(x.Message)));
        Assert.Equal(LinkTestUtil.Bytes(30_000 * 9, 9), rb.Items[9].Data);
        Assert.Equal(0, a.Counters.ProtocolErrors + b.Counters.ProtocolErrors);
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task Posts_fail_fast_while_the_peer_is_not_connected_and_work_once_it_is()
    {
        var a = TcpIclTransport.Listen("A", "B", new IPEndPoint(IPAddress.Loopback, 0), Fast(Small));
        await using var _a = a;
        Assert.False(a.IsUp);
        await Assert.ThrowsAsync<IclLinkDownException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default).AsTask());
        var rb = new Recorder();
        var b = TcpIclTransport.Connect("B", "A", a.ListenEndPoint!, Fast(Small));
        await using var _b = b;
        b.Start(rb.Handle);
        await LinkTestUtil.Until(() => a.IsUp && b.IsUp);
        await a.PostAsync(IclSignal.Message, 1, new byte[] { 5 }, default);
        await rb.WaitForAsync(1);
        await b.DisposeAsync();
        await LinkTestUtil.Until(() => !a.IsUp);
        await Assert.ThrowsAsync<IclLinkDownException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default).AsTask());
    }

    [Fact]
    public async Task A_connection_from_the_wrong_peer_is_refused()
    {
        var a = TcpIclTransport.Listen("A", "B", new IPEndPoint(IPAddress.Loopback, 0), Fast(Small));
        await using var _a = a;
        var c = TcpIclTransport.Connect("C", "A", a.ListenEndPoint!, Fast(Small));
        await using var _c = c;
        await Task.Delay(300);
        Assert.False(a.IsUp);
        Assert.False(c.IsUp);
    }

    [Fact]
    [Trait("Claim", "ICL-2")]
    public async Task Round_trip_latency_of_a_small_transfer_and_its_reply()
    {
        var (a, b) = await OpenAsync(IclWindowOptions.Default);
        var figure = await LinkLatency.MeasureAsync(a, b, 5000);
        output.WriteLine($"tcp: {figure}");
        Console.WriteLine($"LATENCY tcp: {figure}");
    }
}
