using Duet.Core;

namespace Duet.Interconnect.Link;

/// <summary>
/// What the common link code knows about the peer's window while the link is up: its
/// layout, the producer positions this end has written (heads), the consumer positions the
/// peer has freed up to (tails), and how to publish a transfer into it. One instance per
/// "incarnation" of the link (a TCP connection, a healed in-memory cut); <see cref="Down"/>
/// is cancelled when it dies, which fails every post waiting on it.
/// </summary>
internal abstract class PeerSink(WindowLayout layout)
{
    readonly CancellationTokenSource _down = new();

    public WindowLayout Layout { get; } = layout;
    /// <summary>Per lane: entry, message and data heads (index lane * 3 + ring).</summary>
    public readonly long[] Heads = new long[WindowLayout.Lanes * 3];
    public CancellationToken Down => _down.Token;
    public bool IsDown => _down.IsCancellationRequested;

    public void Kill()
    {
        try { _down.Cancel(); } catch (ObjectDisposedException) { }
    }

    /// <summary>How far the peer has consumed: ring 0 entries, 1 message bytes, 2 data bytes.</summary>
    public abstract long Tail(int lane, int ring);

    /// <summary>
    /// Writes message, data and entry at the current heads (space has been checked), advances the
    /// heads, and rings the peer's doorbell once.
    /// </summary>
    public abstract ValueTask PublishAsync(int lane, IclEntry entry, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data, CancellationToken ct);

    /// <summary>A post found no space: ask the peer to say when it frees some (transports that tell it every time ignore this).
    /// The caller checks <see cref="HasSpace"/> again after this, so a release in between is not missed.</summary>
    public virtual void WantSpace() { }

    public bool HasSpace(int lane, int message, int data)
    {
        var l = Layout.Lane(lane);
        int i = lane * 3;
        return Heads[i] - Tail(lane, 0) < l.Entries
            && RingMath.Fits(Heads[i + 1], Tail(lane, 1), l.MessageBytes, message)
            && RingMath.Fits(Heads[i + 2], Tail(lane, 2), l.DataBytes, data);
    }
}

/// <summary>A peer window this process can write directly (in-memory and shared-memory transports).</summary>
internal sealed class DirectSink : PeerSink
{
    readonly IclWindow _peer;
    readonly Action _ring;

    public DirectSink(IclWindow peer, Action ring) : base(peer.Layout)
    {
        _peer = peer;
        _ring = ring;
        for (int lane = 0; lane < WindowLayout.Lanes; lane++)
        {
            Heads[lane * 3] = Volatile.Read(ref peer.Counter(lane, WindowLayout.EntryHead));
            Heads[lane * 3 + 1] = Volatile.Read(ref peer.Counter(lane, WindowLayout.MessageHead));
            Heads[lane * 3 + 2] = Volatile.Read(ref peer.Counter(lane, WindowLayout.DataHead));
        }
    }

    // The flag, then (a full fence) the tails again in HasSpace; the owner writes its tails, then (a full
    // fence) reads the flag: one of the two sees the other's write.
    public override void WantSpace() => Interlocked.Exchange(ref _peer.SpaceWanted, 1);

    public override long Tail(int lane, int ring) =>
        Volatile.Read(ref _peer.Counter(lane, ring switch { 0 => WindowLayout.EntryTail, 1 => WindowLayout.MessageTail, _ => WindowLayout.DataTail }));

    public override ValueTask PublishAsync(int lane, IclEntry e, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        int i = lane * 3;
        RingMath.Write(_peer.MessageRegion(lane), e.MessagePos, message.Span);
        RingMath.Write(_peer.DataRegion(lane), e.DataPos, data.Span);
        _peer.WriteEntry(lane, e.Sequence, e);
        Heads[i] = e.Sequence + 1;
        Heads[i + 1] = e.MessagePos + e.MessageLength;
        Heads[i + 2] = e.DataPos + e.DataLength;
        // Bytes first, then the entry head (release): the consumer that sees the head sees the entry and its bytes.
        Volatile.Write(ref _peer.Counter(lane, WindowLayout.MessageHead), Heads[i + 1]);
        Volatile.Write(ref _peer.Counter(lane, WindowLayout.DataHead), Heads[i + 2]);
        Volatile.Write(ref _peer.Counter(lane, WindowLayout.EntryHead), Heads[i]);
        // The doorbell: one write into the interrupt range per transfer (ICL-2).
        Interlocked.Increment(ref _peer.Doorbell);
        Interlocked.Increment(ref _peer.Wake);
        _ring();
        return ValueTask.CompletedTask;
    }
}

/// <summary>
/// The transport-independent half of a link end: PostAsync with flow control and partial
/// transfers on the sending side; the pump that takes entries from this end's own window,
/// assembles partial data and calls the handler on the receiving side. Transports supply the
/// peer window (<see cref="PeerSink"/>) and the notifications.
/// </summary>
public abstract class IclLink : IIclLink
{
    static readonly AsyncLocal<IclLink?> InHandlerOf = new();

    /// <summary>The most data one PostAsync may carry (the receiver assembles it in memory).</summary>
    public const int MaxDataBytes = 1 << 30;

    readonly AsyncGate[] _laneLocks = [new(1, 1), new(1, 1)];
    readonly long[] _discardBelow = new long[WindowLayout.Lanes];
    readonly Assembly?[] _assembly = new Assembly?[WindowLayout.Lanes];
    readonly byte[]?[] _messageScratch = new byte[]?[WindowLayout.Lanes];
    readonly byte[]?[] _dataScratch = new byte[]?[WindowLayout.Lanes];
    readonly IclTransfer _transfer = new();
    readonly CancellationTokenSource _stop = new();
    readonly AsyncGate _pumpGate = new(1, 1);
    Func<IclTransfer, ValueTask>? _handler;
    Task? _pumpTask;
    long _doorbellsSeen;
    int _disposed;
    int _lastUp = -1;

    private protected IclLink(string localName, string peerName, IclWindowOptions options, TimeProvider time)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(localName);
        ArgumentException.ThrowIfNullOrWhiteSpace(peerName);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(time);
        options.Validate();
        LocalName = localName;
        PeerName = peerName;
        Options = options;
        Time = time;
        CounterSet = new IclCounterSet(localName, peerName);
    }

    public string LocalName { get; }
    public string PeerName { get; }
    public IclWindowOptions Options { get; }
    public abstract bool IsUp { get; }
    public event Action<bool>? UpChanged;
    public IclCounters Counters => CounterSet.Snapshot();

    private protected TimeProvider Time { get; }
    private protected IclCounterSet CounterSet { get; }
    /// <summary>Set when the peer rang this end's doorbell (or the link state changed): the pump looks.</summary>
    private protected AsyncSignal Interrupt { get; } = new();
    /// <summary>Set when the peer freed space in its window (or the link state changed): waiting posts look.</summary>
    private protected AsyncSignal Space { get; } = new();
    private protected bool IsDisposed => Volatile.Read(ref _disposed) != 0;
    private protected CancellationToken Stopping => _stop.Token;

    /// <summary>This end's own window (the one the peer writes into). Set by the transport's constructor.</summary>
    private protected IclWindow Local { get; set; } = null!;
    /// <summary>The peer's window while the link is up; null while down.</summary>
    private protected abstract PeerSink? CurrentSink { get; }
    /// <summary>Deliver only when <see cref="PumpOnceCoreAsync"/> is called (in-memory manual mode).</summary>
    private protected virtual bool ManualDelivery => false;
    /// <summary>Tells the peer that this end freed space in its window (lane's tails moved).</summary>
    private protected abstract void NotifySpaceFreed(int lane);
    /// <summary>Stops the transport's threads and connections; called once by DisposeAsync before the pump stops.</summary>
    private protected abstract ValueTask StopTransportAsync();
    /// <summary>Frees the windows; called once after the pump has stopped.</summary>
    private protected abstract void ReleaseWindows();

    private protected void ReportUp(bool up)
    {
        int v = up ? 1 : 0;
        if (Interlocked.Exchange(ref _lastUp, v) == v) return;
        Space.Set();
        Interrupt.Set();
        try { UpChanged?.Invoke(up); }
        catch (Exception) { /* a subscriber's bug must not break the link */ }
    }

    /// <summary>
    /// Called when the link is cut, before the transfers still in this end's window are dropped: once for each whole
    /// message-only transfer among them, in order (signal, epoch, message). None of them reaches the handler; this is
    /// for what must not be lost with a dead peer. A "started" checkpoint (AW-3) names a stripe the peer's drive writes
    /// may have torn: posted, it sat in this window while the peer wrote and died, and a takeover that never heard of
    /// it left the stripe's parity wrong (simulator seed 428). Runs on the thread that noticed the cut; must not block.
    /// </summary>
    public Action<IclSignal, ulong, ReadOnlySpan<byte>>? Salvage { get; set; }

    /// <inheritdoc cref="IIclLink.PeerProcessGone"/>
    public virtual bool PeerProcessGone => false;

    /// <summary>Transfers already in this end's window at the moment of a cut are dropped, not delivered later
    /// (after <see cref="Salvage"/> has seen the message-only ones).</summary>
    private protected void DiscardPending()
    {
        var salvage = Salvage;
        for (int lane = 0; lane < WindowLayout.Lanes; lane++)
        {
            long head = Volatile.Read(ref Local.Counter(lane, WindowLayout.EntryHead));
            if (salvage is not null) SalvageLane(lane, head, salvage);
            Volatile.Write(ref _discardBelow[lane], head);
        }
        Interrupt.Set();
    }

    void SalvageLane(int lane, long head, Action<IclSignal, ulong, ReadOnlySpan<byte>> salvage)
    {
        var l = Local.Layout.Lane(lane);
        long from = Math.Max(Volatile.Read(ref Local.Counter(lane, WindowLayout.EntryTail)), Volatile.Read(ref _discardBelow[lane]));
        if (head - from > l.Entries || head < from) return; // a ring the peer broke: nothing in it is trusted
        byte[]? scratch = null;
        for (long i = from; i < head; i++)
        {
            var e = Local.ReadEntry(lane, i);
            if ((e.Flags & IclEntryFlags.Partial) != 0 || e.DataLength != 0 || e.MessageLength == 0 || !Valid(lane, l, e)) continue;
            var message = Local.ReadRing(l.MessageOffset, l.MessageBytes, e.MessagePos, e.MessageLength, ref scratch);
            try { salvage((IclSignal)e.Signal, e.Epoch, message.Span); }
            catch (Exception) { CounterSet.HandlerError(); }
        }
    }

    /// <summary>Transfers in this end's window not yet taken by the handler.</summary>
    public int PendingTransfers
    {
        get
        {
            long n = 0;
            for (int lane = 0; lane < WindowLayout.Lanes; lane++)
                n += Volatile.Read(ref Local.Counter(lane, WindowLayout.EntryHead)) - Volatile.Read(ref Local.Counter(lane, WindowLayout.EntryTail));
            return (int)n;
        }
    }

    public async ValueTask PostAsync(IclSignal signal, ulong epoch, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        if (!Enum.IsDefined(signal)) throw new ArgumentOutOfRangeException(nameof(signal), signal, "not an ICL signal");
        if (signal == IclSignal.Message && !data.IsEmpty) throw new ArgumentException("a message-only transfer carries no data", nameof(data));
        ct.ThrowIfCancellationRequested();
        var sink = CurrentSink;
        if (sink is null || IsDisposed) throw new IclLinkDownException($"ICL {LocalName}->{PeerName}: link is down");
        int lane = signal == IclSignal.Reply ? WindowLayout.ReplyLane : WindowLayout.CommandLane;
        var l = sink.Layout.Lane(lane);
        if (message.Length > l.MessageBytes)
            throw new ArgumentException($"message of {message.Length} B is larger than the peer's message buffer ({l.MessageBytes} B)", nameof(message));
        if (data.Length > MaxDataBytes)
            throw new ArgumentException($"data of {data.Length} B is larger than the {MaxDataBytes} B one transfer may carry", nameof(data));
        if (!data.IsEmpty && l.DataBytes == 0)
            throw new ArgumentException("the peer's window has no data buffer for this queue", nameof(data));

        using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, sink.Down);
        var gate = _laneLocks[lane];
        try
        {
            await gate.WaitAsync(linked.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new IclLinkDownException($"ICL {LocalName}->{PeerName}: link went down");
        }
        try
        {
            bool partial = signal == IclSignal.MessageWithPartialData || data.Length > l.DataBytes;
            if (!partial)
            {
                await PostOneAsync(sink, lane, signal, IclEntryFlags.None, epoch, message, data, data.Length, linked.Token, ct);
                return;
            }
            // ICL-3: pieces of half the data buffer (so the sender fills one half while the receiver
            // moves the other out); the message rides with the last piece.
            var pieceSignal = signal == IclSignal.Reply ? IclSignal.Reply : IclSignal.MessageWithPartialData;
            int piece = Math.Max(1, l.DataBytes / 2);
            int offset = 0;
            do
            {
                int n = Math.Min(piece, data.Length - offset);
                bool last = offset + n == data.Length;
                var flags = IclEntryFlags.Partial | (offset == 0 ? IclEntryFlags.First : 0) | (last ? IclEntryFlags.Last : 0);
                await PostOneAsync(sink, lane, pieceSignal, flags, epoch, last ? message : ReadOnlyMemory<byte>.Empty,
                    data.Slice(offset, n), data.Length, linked.Token, ct);
                offset += n;
            } while (offset < data.Length);
        }
        finally
        {
            gate.Release();
        }
    }

    async ValueTask PostOneAsync(PeerSink sink, int lane, IclSignal signal, IclEntryFlags flags, ulong epoch,
        ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data, int total, CancellationToken linked, CancellationToken ct)
    {
        await WaitForSpaceAsync(sink, lane, message.Length, data.Length, linked, ct);
        int i = lane * 3;
        var entry = new IclEntry
        {
            Signal = (byte)signal,
            Flags = flags,
            Epoch = epoch,
            MessagePos = sink.Heads[i + 1],
            MessageLength = message.Length,
            DataPos = sink.Heads[i + 2],
            DataLength = data.Length,
            TotalDataLength = total,
            Sequence = sink.Heads[i],
        };
        try
        {
            await sink.PublishAsync(lane, entry, message, data, linked);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception ex) when (ex is not IclLinkDownException)
        {
            throw new IclLinkDownException($"ICL {LocalName}->{PeerName}: transfer failed: {ex.Message}", ex);
        }
        CounterSet.Sent(signal, message.Span, data.Length);
        CounterSet.Rung();
    }

    async ValueTask WaitForSpaceAsync(PeerSink sink, int lane, int message, int data, CancellationToken linked, CancellationToken ct)
    {
        long start = Time.GetTimestamp();
        while (true)
        {
            var freed = Space.WaitTask;
            if (sink.IsDown || IsDisposed) throw new IclLinkDownException($"ICL {LocalName}->{PeerName}: link went down");
            if (sink.HasSpace(lane, message, data)) return;
            sink.WantSpace();
            if (sink.HasSpace(lane, message, data)) return;
            var left = Options.PostTimeout - Time.GetElapsedTime(start);
            if (left <= TimeSpan.Zero) break;
            try
            {
                await Waits.WithTimeout(freed, left, Time, linked);
            }
            catch (TimeoutException)
            {
                break;
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new IclLinkDownException($"ICL {LocalName}->{PeerName}: link went down");
            }
        }
        CounterSet.PostTimeout();
        throw new IclLinkDownException($"ICL {LocalName}->{PeerName}: the peer freed no window space within {Options.PostTimeout.TotalMilliseconds} ms");
    }

    public void Start(Func<IclTransfer, ValueTask> handler)
    {
        ArgumentNullException.ThrowIfNull(handler);
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (Interlocked.CompareExchange(ref _handler, handler, null) is not null)
            throw new InvalidOperationException("the link was already started");
        if (!ManualDelivery) _pumpTask = PumpLoopAsync();
        Interrupt.Set();
    }

    async Task PumpLoopAsync()
    {
        await Task.Yield();
        var stop = _stop.Token;
        while (true)
        {
            var rung = Interrupt.WaitTask;
            // Looked at after taking the wake-up: DisposeAsync cancels _stop, then rings. Looked at before
            // taking it, a dispose in between would ring a wake-up this loop never waits for, and the
            // next one never comes (the fresh-clone CI once hung in a link's dispose that way).
            if (stop.IsCancellationRequested) return;
            while (await PumpOnceCoreAsync()) { }
            await rung;
        }
    }

    /// <summary>
    /// For a transport whose own thread sees the doorbell (shared memory): takes what is queued on
    /// that thread, entry by entry, while each completes at once, so a transfer whose handler does not
    /// wait costs no thread-pool hand-off. The first entry whose handler does wait finishes on its own
    /// and then hands the rest to the pump. Entries stay in order: every take is under the pump gate.
    /// A handler that blocks this thread delays the transport's notifications until it returns; the
    /// handlers here answer from memory and post (a post that must wait for space waits asynchronously).
    /// </summary>
    private protected void PumpInline()
    {
        if (ManualDelivery || Volatile.Read(ref _handler) is null)
        {
            Interrupt.Set();
            return;
        }
        while (!IsDisposed)
        {
            var step = PumpOnceCoreAsync();
            if (!step.IsCompletedSuccessfully)
            {
                _ = ThenPumpAsync(step);
                return;
            }
            if (!step.Result) return;
        }
    }

    async Task ThenPumpAsync(ValueTask<bool> step)
    {
        try { await step; }
        finally { Interrupt.Set(); }
    }

    /// <summary>
    /// Takes at most one entry from this end's window (the reply queue first, then the command
    /// queue) and processes it; false when there was nothing to take (or no handler yet).
    /// </summary>
    private protected async ValueTask<bool> PumpOnceCoreAsync()
    {
        var handler = Volatile.Read(ref _handler);
        if (handler is null || IsDisposed) return false;
        await _pumpGate.WaitAsync();
        try
        {
            // ICL-2: the doorbells rung since we last looked are taken now.
            long rung = Volatile.Read(ref Local.Doorbell);
            if (rung != _doorbellsSeen)
            {
                CounterSet.Taken(rung - _doorbellsSeen);
                _doorbellsSeen = rung;
            }
            for (int lane = WindowLayout.ReplyLane; lane >= WindowLayout.CommandLane; lane--)
            {
                long head = Volatile.Read(ref Local.Counter(lane, WindowLayout.EntryHead));
                long tail = Local.Counter(lane, WindowLayout.EntryTail);
                if (head == tail) continue;
                if (head - tail > Local.Layout.Lane(lane).Entries || head < tail)
                {
                    // A peer that broke the ring: drop everything it claims to have queued.
                    CounterSet.ProtocolError();
                    Volatile.Write(ref Local.Counter(lane, WindowLayout.EntryTail), head);
                    NotifySpaceFreed(lane);
                    return true;
                }
                await ProcessAsync(lane, tail, handler);
                return true;
            }
            return false;
        }
        finally
        {
            _pumpGate.Release();
        }
    }

    async ValueTask ProcessAsync(int lane, long index, Func<IclTransfer, ValueTask> handler)
    {
        var e = Local.ReadEntry(lane, index);
        var l = Local.Layout.Lane(lane);
        var signal = (IclSignal)e.Signal;
        if (!Valid(lane, l, e))
        {
            CounterSet.ProtocolError();
            CounterSet.Dropped();
            _assembly[lane] = null;
            Release(lane, index, e, bytes: false);
            return;
        }
        CounterSet.Received(signal, e.MessageLength, e.DataLength);
        if (index < Volatile.Read(ref _discardBelow[lane]))
        {
            CounterSet.Dropped();
            _assembly[lane] = null;
            Release(lane, index, e, bytes: true);
            return;
        }

        ReadOnlyMemory<byte> data;
        if ((e.Flags & IclEntryFlags.Partial) != 0)
        {
            var asm = _assembly[lane];
            if ((e.Flags & IclEntryFlags.First) != 0)
            {
                if (asm is not null) CounterSet.Dropped(); // the previous sequence never finished (link went down mid-way)
                asm = _assembly[lane] = new Assembly((int)e.TotalDataLength, asm?.Buffer);
            }
            if (asm is null || asm.Length + e.DataLength > asm.Total)
            {
                CounterSet.ProtocolError();
                CounterSet.Dropped();
                _assembly[lane] = null;
                Release(lane, index, e, bytes: true);
                return;
            }
            // ICL-4: move the piece out of the data buffer into our own memory; its space frees at once.
            RingMath.Read(Local.DataRegion(lane), e.DataPos, asm.Buffer.AsSpan(asm.Length, e.DataLength));
            asm.Length += e.DataLength;
            if ((e.Flags & IclEntryFlags.Last) == 0)
            {
                Release(lane, index, e, bytes: true);
                return;
            }
            _assembly[lane] = null;
            if (asm.Length != asm.Total)
            {
                CounterSet.ProtocolError();
                CounterSet.Dropped();
                Release(lane, index, e, bytes: true);
                return;
            }
            CounterSet.PartialAssembled();
            data = asm.Buffer.AsMemory(0, asm.Total);
        }
        else
        {
            if (_assembly[lane] is not null)
            {
                // A partial sequence that never finished (its sender gave up when the link went down).
                CounterSet.Dropped();
                _assembly[lane] = null;
            }
            data = Local.ReadRing(l.DataOffset, l.DataBytes, e.DataPos, e.DataLength, ref _dataScratch[lane]);
        }
        var message = Local.ReadRing(l.MessageOffset, l.MessageBytes, e.MessagePos, e.MessageLength, ref _messageScratch[lane]);
        _transfer.Set(signal, e.Epoch, message, data);
        InHandlerOf.Value = this;
        try
        {
            await handler(_transfer);
        }
        catch (Exception)
        {
            CounterSet.HandlerError();
        }
        finally
        {
            InHandlerOf.Value = null;
            _transfer.Clear();
            Release(lane, index, e, bytes: true);
        }
    }

    bool Valid(int lane, LaneLayout l, in IclEntry e)
    {
        var signal = (IclSignal)e.Signal;
        if (!Enum.IsDefined(signal) || (signal == IclSignal.Reply) != (lane == WindowLayout.ReplyLane)) return false;
        if (e.MessageLength < 0 || e.MessageLength > l.MessageBytes || e.DataLength < 0 || e.DataLength > l.DataBytes) return false;
        if (e.MessagePos < Local.Counter(lane, WindowLayout.MessageTail) || e.MessagePos + e.MessageLength > Volatile.Read(ref Local.Counter(lane, WindowLayout.MessageHead))) return false;
        if (e.DataPos < Local.Counter(lane, WindowLayout.DataTail) || e.DataPos + e.DataLength > Volatile.Read(ref Local.Counter(lane, WindowLayout.DataHead))) return false;
        if ((e.Flags & IclEntryFlags.Partial) != 0 && (e.TotalDataLength < e.DataLength || e.TotalDataLength > MaxDataBytes)) return false;
        return true;
    }

    /// <summary>Frees the entry and (in order) its message and data bytes, then tells the peer (ICL-4).</summary>
    void Release(int lane, long index, in IclEntry e, bool bytes)
    {
        if (bytes && e.MessageLength > 0) Volatile.Write(ref Local.Counter(lane, WindowLayout.MessageTail), e.MessagePos + e.MessageLength);
        if (bytes && e.DataLength > 0) Volatile.Write(ref Local.Counter(lane, WindowLayout.DataTail), e.DataPos + e.DataLength);
        Volatile.Write(ref Local.Counter(lane, WindowLayout.EntryTail), index + 1);
        NotifySpaceFreed(lane);
    }

    async Task ReleaseAfterAsync(Task pump)
    {
        try { await pump; } catch (Exception) { }
        await _pumpGate.WaitAsync(); // a handler running in line on the transport's thread (PumpInline)
        ReleaseWindows();
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _stop.Cancel();
        await StopTransportAsync();
        ReportUp(false);
        Space.Set();
        Interrupt.Set();
        var pump = _pumpTask;
        if (pump is not null && InHandlerOf.Value == this)
        {
            // Disposed from inside our own handler: the pump finishes after it returns.
            _ = ReleaseAfterAsync(pump);
            return;
        }
        if (pump is not null)
        {
            try { await pump; } catch (Exception) { }
        }
        await _pumpGate.WaitAsync(); // a manual PumpOnce in flight
        ReleaseWindows();
        GC.SuppressFinalize(this);
    }

    sealed class Assembly(int total, byte[]? reuse)
    {
        public readonly int Total = total;
        public readonly byte[] Buffer = reuse is not null && reuse.Length >= total && reuse.Length <= 4 * Math.Max(total, 1 << 20) ? reuse : new byte[total];
        public int Length;
    }

    public override string ToString() => $"ICL {LocalName}->{PeerName} ({(IsUp ? "up" : "down")})";
}
