using Duet.Core;
using Duet.Interconnect.Link;

namespace Duet.Simulation;

/// <summary>How the simulated ICL misbehaves (drawn per seed; see the fault model in Faults.cs).</summary>
public sealed record LinkFaults
{
    /// <summary>Extra latency per transfer, uniform in [0, MaxDelay]; per queue the order is kept (a ring never reorders).</summary>
    public TimeSpan MaxDelay { get; init; }
    /// <summary>Chance that a transfer is lost on the wire (the sender believes it was posted).</summary>
    public double DropProbability { get; init; }
}

/// <summary>
/// The simulated inter-controller link. Each connection is a fresh pair of real in-memory
/// ring links (<see cref="InMemoryIclTransport"/>, the same ring code as shared memory); a
/// controller holds a <see cref="SimLinkEnd"/> for its whole life, which the wire rebinds to
/// each new connection. The wire adds what a real link does when it is bad: latency per
/// transfer (per queue in order, so commands and replies reorder against each other and
/// against the other direction), transfers lost without the link noticing, and cuts
/// (a partition, or a crashed controller) after which a new connection is made on heal.
/// </summary>
public sealed class SimWire
{
    readonly SimNode _world;
    readonly SimTrace _trace;
    readonly IclWindowOptions _options;
    readonly SimLinkEnd?[] _ends = new SimLinkEnd?[2];
    (InMemoryIclLink A, InMemoryIclLink B)? _connection;
    int _connections;

    public SimWire(SimNode world, SimTrace trace, IclWindowOptions options)
    {
        _world = world;
        _trace = trace;
        _options = options;
    }

    public LinkFaults Faults { get; set; } = new();
    public bool Partitioned { get; private set; }
    public long Dropped { get; private set; }
    internal DeterministicRandom Random => _world.Scheduler.Random;

    /// <summary>A new end for controller <paramref name="name"/> ("A" or "B") on <paramref name="node"/>, replacing any earlier one.</summary>
    public SimLinkEnd Attach(SimNode node, string name)
    {
        int i = name == "A" ? 0 : 1;
        var end = new SimLinkEnd(this, node, name, name == "A" ? "B" : "A");
        _ends[i] = end;
        return end;
    }

    /// <summary>Cuts the current connection (both ends see the link go down); pending transfers are lost.</summary>
    public void Cut(string why)
    {
        if (_connection is not { } c) return;
        _connection = null;
        _trace.Add($"link cut ({why})");
        c.A.Cut();
        foreach (var e in _ends) e?.Unbind();
    }

    public void Partition(bool on)
    {
        Partitioned = on;
        if (on) Cut("partition");
        else Connect();
    }

    /// <summary>Makes a new connection if both ends are attached and alive and no partition is on.</summary>
    public void Connect()
    {
        if (_connection is not null || Partitioned) return;
        if (_ends[0] is not { IsAlive: true } a || _ends[1] is not { IsAlive: true } b) return;
        var pair = InMemoryIclTransport.CreatePair(_options, _world.Time, "A", "B", manualDelivery: false);
        _connection = pair;
        _connections++;
        _trace.Add($"link connected (#{_connections})");
        a.Bind(pair.A);
        b.Bind(pair.B);
    }

    internal bool Drop() => Faults.DropProbability > 0 && Random.Chance(Faults.DropProbability) && ++Dropped > 0;

    internal TimeSpan Delay() =>
        Faults.MaxDelay <= TimeSpan.Zero ? TimeSpan.Zero : TimeSpan.FromTicks(Random.NextInt64(Faults.MaxDelay.Ticks + 1));

    internal void Note(string line) => _trace.Add(line);
}

/// <summary>One controller's end of the simulated link (an <see cref="IIclLink"/> that outlives connections).</summary>
public sealed class SimLinkEnd : IIclLink
{
    readonly SimWire _wire;
    readonly SimNode _node;
    readonly Task?[] _laneTail = new Task?[2];
    readonly int _incarnation;
    InMemoryIclLink? _inner, _started;
    Func<IclTransfer, ValueTask>? _handler;
    InMemoryIclLink? _lastInner;

    internal SimLinkEnd(SimWire wire, SimNode node, string local, string peer)
    {
        _wire = wire;
        _node = node;
        _incarnation = node.Incarnation;
        LocalName = local;
        PeerName = peer;
    }

    public string LocalName { get; }
    public string PeerName { get; }
    /// <summary>The link state as this controller has been told it (changes arrive as posted events, as from a transport's thread).</summary>
    public bool IsUp => _reportedUp && _inner is not null && _inner.IsUp;
    bool _reportedUp;
    internal bool IsAlive => _node.IsAlive && _node.Incarnation == _incarnation;
    public event Action<bool>? UpChanged;
    public IclCounters Counters => (_inner ?? _lastInner)?.Counters ?? NeverConnected;

    static readonly IclCounters NeverConnected = new() { Sent = new Dictionary<IclSignal, IclTrafficCounts>(), Received = new Dictionary<IclSignal, IclTrafficCounts>() };

    // Connection changes reach the controller in order, on its own node, as a transport's thread would report them.
    readonly Queue<(InMemoryIclLink? Inner, bool Up)> _events = new();

    internal void Bind(InMemoryIclLink inner)
    {
        _inner = inner;
        inner.Salvage = OnInnerSalvage;
        Enqueue(inner, true);
    }

    public Action<IclSignal, ulong, ReadOnlySpan<byte>>? Salvage { get; set; }

    // At a cut, on whichever node cut the wire: the controller sees what its window still held on its own node, ahead of
    // the link-down event (queued after this), and not at all if it is dead.
    void OnInnerSalvage(IclSignal signal, ulong epoch, ReadOnlySpan<byte> message)
    {
        if (Salvage is not { } salvage || !IsAlive) return;
        var copy = message.ToArray();
        _node.Post(() => salvage(signal, epoch, copy));
    }

    internal void Unbind()
    {
        if (_inner is null) return;
        _lastInner = _inner;
        _inner = null;
        Enqueue(null, false);
    }

    void Enqueue(InMemoryIclLink? inner, bool up)
    {
        _events.Enqueue((inner, up));
        if (_events.Count == 1 && IsAlive) _node.Post(DrainEvents);
    }

    void DrainEvents()
    {
        while (_events.TryDequeue(out var ev))
        {
            if (ev.Up && ev.Inner != _inner) continue; // a connection already gone again
            if (ev.Up) StartInner();
            Report(ev.Up && ev.Inner!.IsUp);
        }
    }

    void Report(bool up)
    {
        if (_reportedUp == up) return;
        _reportedUp = up;
        UpChanged?.Invoke(up);
    }

    public async ValueTask PostAsync(IclSignal signal, ulong epoch, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        var inner = _inner ?? throw new IclLinkDownException($"ICL {LocalName}->{PeerName}: not connected");
        int lane = signal == IclSignal.Reply ? 1 : 0;
        var delay = _wire.Delay();
        // Per queue in order: wait for the transfer before this one on the same queue.
        var previous = _laneTail[lane];
        var mine = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _laneTail[lane] = mine.Task;
        try
        {
            if (previous is not null) await previous;
            if (delay > TimeSpan.Zero) await _node.Time.DelayAsync(delay, ct);
            if (_wire.Drop())
            {
                _wire.Note($"link drop {LocalName}->{PeerName} {signal} {message.Length}+{data.Length} B");
                return;
            }
            await inner.PostAsync(signal, epoch, message, data, ct);
        }
        finally { mine.SetResult(); }
    }

    public void Start(Func<IclTransfer, ValueTask> handler)
    {
        _handler = handler;
        StartInner();
    }

    void StartInner()
    {
        if (_handler is null || _inner is null || _started == _inner) return;
        _started = _inner;
        _inner.Start(_handler);
    }

    public ValueTask DisposeAsync()
    {
        _wire.Cut($"{LocalName} closed its end");
        return ValueTask.CompletedTask;
    }
}
