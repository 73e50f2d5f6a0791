namespace Duet.Interconnect.Link;

/// <summary>
/// Two link ends over two in-process windows (pinned byte arrays) with the same ring code as
/// shared memory. No threads of its own: a post writes the peer's window and sets its
/// interrupt; delivery runs on an async pump (thread-pool continuations), or, with
/// <c>manualDelivery</c>, only when <see cref="InMemoryIclLink.PumpOnceAsync"/> is called, so
/// a simulator decides the order, delay and loss of deliveries. All waiting uses the given
/// <see cref="TimeProvider"/>.
/// </summary>
public static class InMemoryIclTransport
{
    public static (InMemoryIclLink A, InMemoryIclLink B) CreatePair(IclWindowOptions options, TimeProvider timeProvider) =>
        CreatePair(options, timeProvider, "A", "B", manualDelivery: false);

    public static (InMemoryIclLink A, InMemoryIclLink B) CreatePair(IclWindowOptions options, TimeProvider timeProvider,
        string nameA, string nameB, bool manualDelivery)
    {
        var pair = new Pair();
        var a = new InMemoryIclLink(pair, nameA, nameB, options, timeProvider, manualDelivery);
        var b = new InMemoryIclLink(pair, nameB, nameA, options, timeProvider, manualDelivery);
        pair.A = a;
        pair.B = b;
        pair.Heal();
        return (a, b);
    }

    internal sealed class Pair
    {
        readonly Lock _lock = new();
        public InMemoryIclLink A = null!, B = null!;
        bool _cut = true, _dead;

        public bool IsCut { get { lock (_lock) return _cut; } }

        public void Cut()
        {
            lock (_lock)
            {
                if (_cut) return;
                _cut = true;
            }
            A.Disconnect();
            B.Disconnect();
        }

        public void Heal()
        {
            lock (_lock)
            {
                if (!_cut || _dead) return;
                _cut = false;
            }
            A.Connect(B);
            B.Connect(A);
        }

        public void Kill()
        {
            lock (_lock) _dead = true;
            Cut();
        }
    }
}

/// <summary>One end of an in-memory link (see <see cref="InMemoryIclTransport"/>).</summary>
public sealed class InMemoryIclLink : IclLink
{
    readonly InMemoryIclTransport.Pair _pair;
    readonly bool _manual;
    DirectSink? _sink;
    InMemoryIclLink? _peer;

    internal InMemoryIclLink(InMemoryIclTransport.Pair pair, string localName, string peerName, IclWindowOptions options, TimeProvider time, bool manual)
        : base(localName, peerName, options, time)
    {
        _pair = pair;
        _manual = manual;
        Local = IclWindow.CreateInMemory(WindowLayout.From(options), localName);
    }

    public override bool IsUp => Volatile.Read(ref _sink) is not null;
    /// <summary>True when transfers are delivered only by <see cref="PumpOnceAsync"/>.</summary>
    public bool IsManualDelivery => _manual;
    public bool IsCut => _pair.IsCut;
    private protected override bool ManualDelivery => _manual;
    private protected override PeerSink? CurrentSink => Volatile.Read(ref _sink);

    /// <summary>Cuts the link both ways: both ends report down, posts fail fast, and transfers not yet delivered are lost.</summary>
    public void Cut() => _pair.Cut();

    /// <summary>Reconnects a cut link (both ends report up).</summary>
    public void Heal() => _pair.Heal();

    /// <summary>
    /// Manual mode: takes one transfer from this end's window (replies first) and runs the handler
    /// to completion; false when nothing was pending. While cut, it drops the transfer instead.
    /// </summary>
    public ValueTask<bool> PumpOnceAsync()
    {
        if (!_manual) throw new InvalidOperationException("PumpOnceAsync needs a pair created with manualDelivery: true");
        return PumpOnceCoreAsync();
    }

    /// <summary>Manual mode: pumps until nothing is pending; returns the number of transfers taken.</summary>
    public async ValueTask<int> PumpAllAsync()
    {
        int n = 0;
        while (await PumpOnceAsync()) n++;
        return n;
    }

    internal void Connect(InMemoryIclLink peer)
    {
        _peer = peer;
        var window = peer.Local;
        Volatile.Write(ref _sink, new DirectSink(window, peer.Interrupt.Set));
        ReportUp(true);
    }

    internal void Disconnect()
    {
        var old = Interlocked.Exchange(ref _sink, null);
        old?.Kill();
        DiscardPending();
        ReportUp(false);
    }

    private protected override void NotifySpaceFreed(int lane)
    {
        var peer = _peer;
        if (peer is null) return;
        Interlocked.Increment(ref peer.Local.SpaceFreed);
        CounterSet.SpaceNotification();
        peer.Space.Set();
    }

    private protected override ValueTask StopTransportAsync()
    {
        _pair.Kill();
        return ValueTask.CompletedTask;
    }

    private protected override void ReleaseWindows() => Local.Dispose();
}
