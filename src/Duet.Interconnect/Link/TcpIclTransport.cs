using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Duet.Core;

namespace Duet.Interconnect.Link;

/// <summary>
/// The ICL across hosts (ICL-1): one TCP connection between the two controllers, one side
/// listening and the other connecting (and reconnecting when the connection drops). Each
/// frame is a remote write into the peer's window: the receiver puts the message and data at
/// the ring positions the frame names, publishes the entry and rings its own doorbell, so the
/// same ring and pump code runs as for shared memory. Flow control is by credits that mirror
/// the window: the receiver sends its consumer positions (tails) back as it frees space, and
/// the sender never sends what the peer's window cannot hold.
///
/// Frames (little-endian): u32 length (of what follows), u8 type, then
/// <list type="bullet">
/// <item>1 hello: u64 magic, u32 version, u8 name length, name (UTF-8), per lane {u32 entries, u32 message bytes,
/// u32 data bytes}, per lane {i64 entryHead, entryTail, messageHead, messageTail, dataHead, dataTail} of the sender's own window;</item>
/// <item>2 transfer: u8 lane, u16 reserved, the 64-byte entry, message bytes, data bytes;</item>
/// <item>3 credit: u8 lane, u16 reserved, i64 entryTail, i64 messageTail, i64 dataTail;</item>
/// <item>4 ready: nothing (sent after accepting the peer's hello; the link is up once both ends sent it).</item>
/// </list>
/// On a new connection each side takes the peer's heads and tails from its hello: what the
/// peer has actually received, so a frame lost with the old connection is simply not there
/// (its PostAsync failed with <see cref="IclLinkDownException"/>).
/// </summary>
public static class TcpIclTransport
{
    /// <summary>The side that listens on <paramref name="endpoint"/> (port 0 picks one: see <see cref="TcpIclLink.ListenEndPoint"/>).</summary>
    public static TcpIclLink Listen(string localName, string peerName, IPEndPoint endpoint, IclWindowOptions options, TimeProvider? timeProvider = null) =>
        new(localName, peerName, options, timeProvider ?? TimeProvider.System, endpoint, null);

    /// <summary>The side that connects to <paramref name="endpoint"/>, retrying every <see cref="IclWindowOptions.ReconnectInterval"/>.</summary>
    public static TcpIclLink Connect(string localName, string peerName, EndPoint endpoint, IclWindowOptions options, TimeProvider? timeProvider = null) =>
        new(localName, peerName, options, timeProvider ?? TimeProvider.System, null, endpoint);
}

/// <summary>One end of a TCP link (see <see cref="TcpIclTransport"/>).</summary>
public sealed class TcpIclLink : IclLink
{
    const byte Hello = 1, Transfer = 2, Credit = 3, Ready = 4;
    const int TransferHeader = 4 + 1 + 1 + 2 + WindowLayout.EntryBytes;
    const int CreditFrame = 4 + 1 + 1 + 2 + 24;
    const int InlineLimit = 16 * 1024;

    readonly Socket? _listener;
    readonly EndPoint? _remote;
    readonly SemaphoreSlim _connectionGate = new(1, 1);
    readonly Task _runner;
    readonly List<Task> _accepted = [];
    Connection? _current;
    Socket? _latest;
    long _connections;

    internal TcpIclLink(string localName, string peerName, IclWindowOptions options, TimeProvider time, IPEndPoint? listen, EndPoint? remote)
        : base(localName, peerName, options, time)
    {
        if (Encoding.UTF8.GetByteCount(localName) > 255) throw new ArgumentException("name too long", nameof(localName));
        Local = IclWindow.CreateInMemory(WindowLayout.From(options), localName);
        if (listen is not null)
        {
            _listener = new Socket(listen.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                _listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                _listener.Bind(listen);
                _listener.Listen(4);
            }
            catch
            {
                _listener.Dispose();
                throw;
            }
            ListenEndPoint = (IPEndPoint)_listener.LocalEndPoint!;
            _runner = AcceptLoopAsync();
        }
        else
        {
            _remote = remote ?? throw new ArgumentNullException(nameof(remote));
            _runner = ConnectLoopAsync();
        }
    }

    /// <summary>The listening side's bound endpoint; null on the connecting side.</summary>
    public IPEndPoint? ListenEndPoint { get; }
    /// <summary>Connections that completed the hello exchange so far.</summary>
    public long ConnectionsEstablished => Interlocked.Read(ref _connections);

    public override bool IsUp => Volatile.Read(ref _current) is { IsDown: false } && !IsDisposed;
    private protected override PeerSink? CurrentSink => IsDisposed ? null : Volatile.Read(ref _current) is { IsDown: false } c ? c : null;

    /// <summary>Fault injection: closes the current connection (the connecting side reconnects).</summary>
    public void DropConnection() => Volatile.Read(ref _current)?.Close();

    async Task AcceptLoopAsync()
    {
        await Task.Yield();
        while (!Stopping.IsCancellationRequested)
        {
            Socket s;
            try
            {
                s = await _listener!.AcceptAsync(Stopping);
            }
            catch (Exception) when (Stopping.IsCancellationRequested)
            {
                break;
            }
            catch (SocketException)
            {
                continue;
            }
            lock (_accepted)
            {
                _accepted.RemoveAll(t => t.IsCompleted);
                _accepted.Add(ServeAcceptedAsync(s));
            }
        }
    }

    /// <summary>The newest accepted connection replaces the current one (the peer reconnected).</summary>
    async Task ServeAcceptedAsync(Socket s)
    {
        Volatile.Write(ref _latest, s);
        Volatile.Read(ref _current)?.Close();
        try
        {
            await _connectionGate.WaitAsync(Stopping);
        }
        catch (OperationCanceledException)
        {
            s.Dispose();
            return;
        }
        try
        {
            if (Volatile.Read(ref _latest) != s) return;
            await RunConnectionAsync(s);
        }
        catch (Exception) { /* the connection failed; the peer reconnects */ }
        finally
        {
            s.Dispose();
            _connectionGate.Release();
        }
    }

    async Task ConnectLoopAsync()
    {
        await Task.Yield();
        while (!Stopping.IsCancellationRequested)
        {
            var s = new Socket(_remote!.AddressFamily == AddressFamily.Unspecified ? AddressFamily.InterNetwork : _remote.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                using (var timeout = new CancellationTokenSource(Options.HandshakeTimeout, Time))
                using (var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, Stopping))
                    await s.ConnectAsync(_remote, linked.Token);
                await RunConnectionAsync(s);
            }
            catch (Exception) { /* refused, reset, bad hello: try again */ }
            finally
            {
                s.Dispose();
            }
            try
            {
                await Time.DelayAsync(Options.ReconnectInterval, Stopping);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    async Task RunConnectionAsync(Socket s)
    {
        s.NoDelay = true;
        using var stream = new NetworkStream(s, ownsSocket: false);
        Connection conn;
        using (var timeout = new CancellationTokenSource(Options.HandshakeTimeout, Time))
        using (var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, Stopping))
        {
            await stream.WriteAsync(BuildHello(), linked.Token);
            conn = await ReadHelloAsync(stream, s, linked.Token);
            // Both ends accept the other's hello before either reports up (a refused peer just sees the close).
            await stream.WriteAsync(new byte[] { 1, 0, 0, 0, Ready }, linked.Token);
            var ready = new byte[5];
            await stream.ReadExactlyAsync(ready, linked.Token);
            if (BinaryPrimitives.ReadInt32LittleEndian(ready) != 1 || ready[4] != Ready) throw new InvalidDataException("expected ready");
        }
        if (IsDisposed) return;
        Volatile.Write(ref _current, conn);
        Interlocked.Increment(ref _connections);
        if (_listener is not null && Volatile.Read(ref _latest) != s) conn.Close();
        ReportUp(true);
        var credits = conn.CreditLoopAsync();
        try
        {
            await ReadLoopAsync(conn, stream);
        }
        catch (Exception) { /* dropped, reset, or a protocol error */ }
        finally
        {
            conn.Close();
            Interlocked.CompareExchange(ref _current, null, conn);
            if (Volatile.Read(ref _current) is null) ReportUp(false);
            try { await credits; } catch (Exception) { }
        }
    }

    byte[] BuildHello()
    {
        var name = Encoding.UTF8.GetBytes(LocalName);
        int body = 1 + 8 + 4 + 1 + name.Length + WindowLayout.Lanes * 12 + WindowLayout.Lanes * 48;
        var b = new byte[4 + body];
        var w = b.AsSpan();
        BinaryPrimitives.WriteInt32LittleEndian(w, body);
        w[4] = Hello;
        BinaryPrimitives.WriteUInt64LittleEndian(w[5..], WindowLayout.Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(w[13..], WindowLayout.Version);
        w[17] = (byte)name.Length;
        name.CopyTo(w[18..]);
        int at = 18 + name.Length;
        for (int lane = 0; lane < WindowLayout.Lanes; lane++, at += 12)
        {
            var l = Local.Layout.Lane(lane);
            BinaryPrimitives.WriteInt32LittleEndian(w[at..], l.Entries);
            BinaryPrimitives.WriteInt32LittleEndian(w[(at + 4)..], l.MessageBytes);
            BinaryPrimitives.WriteInt32LittleEndian(w[(at + 8)..], l.DataBytes);
        }
        int[] counters = [WindowLayout.EntryHead, WindowLayout.EntryTail, WindowLayout.MessageHead, WindowLayout.MessageTail, WindowLayout.DataHead, WindowLayout.DataTail];
        for (int lane = 0; lane < WindowLayout.Lanes; lane++)
            foreach (int c in counters)
            {
                BinaryPrimitives.WriteInt64LittleEndian(w[at..], Volatile.Read(ref Local.Counter(lane, c)));
                at += 8;
            }
        return b;
    }

    async Task<Connection> ReadHelloAsync(NetworkStream stream, Socket s, CancellationToken ct)
    {
        var head = new byte[5];
        await stream.ReadExactlyAsync(head, ct);
        int body = BinaryPrimitives.ReadInt32LittleEndian(head);
        if (head[4] != Hello || body < 14 || body > 1024) throw new InvalidDataException("expected a hello");
        var b = new byte[body - 1];
        await stream.ReadExactlyAsync(b, ct);
        var r = b.AsSpan();
        if (BinaryPrimitives.ReadUInt64LittleEndian(r) != WindowLayout.Magic || BinaryPrimitives.ReadUInt32LittleEndian(r[8..]) != WindowLayout.Version)
            throw new InvalidDataException("not an ICL peer");
        int n = r[12];
        if (r.Length != 13 + n + WindowLayout.Lanes * 60) throw new InvalidDataException("bad hello length");
        var name = Encoding.UTF8.GetString(r.Slice(13, n));
        if (name != PeerName) throw new InvalidDataException($"expected peer {PeerName}, got {name}");
        int at = 13 + n;
        Span<int> sizes = stackalloc int[6];
        for (int i = 0; i < 6; i++, at += 4) sizes[i] = BinaryPrimitives.ReadInt32LittleEndian(r[at..]);
        if (sizes[0] < 1 || sizes[3] < 1 || sizes[1] < 1 || sizes[4] < 1 || sizes[2] < 0 || sizes[5] < 0) throw new InvalidDataException("bad window sizes");
        var layout = WindowLayout.Build(sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]);
        var conn = new Connection(this, layout, stream, s);
        for (int lane = 0; lane < WindowLayout.Lanes; lane++)
        {
            long eh = BinaryPrimitives.ReadInt64LittleEndian(r[at..]), et = BinaryPrimitives.ReadInt64LittleEndian(r[(at + 8)..]);
            long mh = BinaryPrimitives.ReadInt64LittleEndian(r[(at + 16)..]), mt = BinaryPrimitives.ReadInt64LittleEndian(r[(at + 24)..]);
            long dh = BinaryPrimitives.ReadInt64LittleEndian(r[(at + 32)..]), dt = BinaryPrimitives.ReadInt64LittleEndian(r[(at + 40)..]);
            at += 48;
            conn.Heads[lane * 3] = eh; conn.Heads[lane * 3 + 1] = mh; conn.Heads[lane * 3 + 2] = dh;
            conn.SetTails(lane, et, mt, dt);
        }
        return conn;
    }

    /// <summary>Frames from the peer: transfers are written into this end's window exactly as a direct write would.</summary>
    async Task ReadLoopAsync(Connection conn, NetworkStream stream)
    {
        var head = new byte[TransferHeader];
        var ct = conn.Down;
        while (!ct.IsCancellationRequested)
        {
            await stream.ReadExactlyAsync(head.AsMemory(0, 8), ct);
            int body = BinaryPrimitives.ReadInt32LittleEndian(head);
            byte type = head[4];
            int lane = head[5];
            if (lane >= WindowLayout.Lanes) throw new InvalidDataException("bad lane");
            if (type == Credit)
            {
                if (body != CreditFrame - 4) throw new InvalidDataException("bad credit frame");
                await stream.ReadExactlyAsync(head.AsMemory(8, 24), ct);
                conn.SetTails(lane, BinaryPrimitives.ReadInt64LittleEndian(head.AsSpan(8)),
                    BinaryPrimitives.ReadInt64LittleEndian(head.AsSpan(16)), BinaryPrimitives.ReadInt64LittleEndian(head.AsSpan(24)));
                Space.Set();
                continue;
            }
            if (type != Transfer) throw new InvalidDataException($"unknown frame type {type}");
            await stream.ReadExactlyAsync(head.AsMemory(8, WindowLayout.EntryBytes), ct);
            var e = MemoryMarshal.Read<IclEntry>(head.AsSpan(8));
            var l = Local.Layout.Lane(lane);
            long eh = Local.Counter(lane, WindowLayout.EntryHead), mh = Local.Counter(lane, WindowLayout.MessageHead), dh = Local.Counter(lane, WindowLayout.DataHead);
            // The sender must write exactly at our heads and within the credit it was given.
            if (body != TransferHeader - 4 + (long)e.MessageLength + e.DataLength || e.MessageLength < 0 || e.DataLength < 0
                || e.Sequence != eh || e.MessagePos != mh || e.DataPos != dh
                || eh - Volatile.Read(ref Local.Counter(lane, WindowLayout.EntryTail)) >= l.Entries
                || !RingMath.Fits(mh, Volatile.Read(ref Local.Counter(lane, WindowLayout.MessageTail)), l.MessageBytes, e.MessageLength)
                || !RingMath.Fits(dh, Volatile.Read(ref Local.Counter(lane, WindowLayout.DataTail)), l.DataBytes, e.DataLength))
            {
                CounterSet.ProtocolError();
                throw new InvalidDataException("transfer outside the credit given");
            }
            var (m1, m2) = RingMath.Segments(Local.Memory.Slice(l.MessageOffset, l.MessageBytes), mh, e.MessageLength);
            await stream.ReadExactlyAsync(m1, ct);
            await stream.ReadExactlyAsync(m2, ct);
            var (d1, d2) = RingMath.Segments(Local.Memory.Slice(l.DataOffset, l.DataBytes), dh, e.DataLength);
            await stream.ReadExactlyAsync(d1, ct);
            await stream.ReadExactlyAsync(d2, ct);
            Local.WriteEntry(lane, eh, e);
            Volatile.Write(ref Local.Counter(lane, WindowLayout.MessageHead), mh + e.MessageLength);
            Volatile.Write(ref Local.Counter(lane, WindowLayout.DataHead), dh + e.DataLength);
            Volatile.Write(ref Local.Counter(lane, WindowLayout.EntryHead), eh + 1);
            Interlocked.Increment(ref Local.Doorbell); // the frame is the doorbell (ICL-2)
            Interrupt.Set();
        }
    }

    private protected override void NotifySpaceFreed(int lane)
    {
        if (Volatile.Read(ref _current) is { } conn && conn.CreditDue(lane)) CounterSet.SpaceNotification();
    }

    private protected override async ValueTask StopTransportAsync()
    {
        _listener?.Dispose();
        Volatile.Read(ref _current)?.Close();
        try { await _runner; } catch (Exception) { }
        Task[] accepted;
        lock (_accepted) accepted = [.. _accepted];
        try { await Task.WhenAll(accepted); } catch (Exception) { }
        Volatile.Read(ref _current)?.Close();
    }

    private protected override void ReleaseWindows() => Local.Dispose();

    /// <summary>One connection: the sender's view of the peer window (credits) and the writer.</summary>
    sealed class Connection(TcpIclLink owner, WindowLayout layout, NetworkStream stream, Socket socket) : PeerSink(layout)
    {
        readonly long[] _tails = new long[WindowLayout.Lanes * 3];
        readonly SemaphoreSlim _write = new(1, 1);
        readonly AsyncSignal _creditSignal = new();
        int _dirtyLanes;

        public override long Tail(int lane, int ring) => Volatile.Read(ref _tails[lane * 3 + ring]);

        public void SetTails(int lane, long entries, long message, long data)
        {
            Max(ref _tails[lane * 3], entries);
            Max(ref _tails[lane * 3 + 1], message);
            Max(ref _tails[lane * 3 + 2], data);
        }

        static void Max(ref long slot, long value)
        {
            long seen = Volatile.Read(ref slot);
            while (value > seen)
            {
                long was = Interlocked.CompareExchange(ref slot, value, seen);
                if (was == seen) return;
                seen = was;
            }
        }

        public void Close()
        {
            Kill();
            _creditSignal.Set();
            try { socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
            socket.Close();
        }

        public bool CreditDue(int lane)
        {
            if (IsDown) return false;
            int bit = 1 << lane;
            if ((Interlocked.Or(ref _dirtyLanes, bit) & bit) != 0) return false; // coalesced into the pending credit
            _creditSignal.Set();
            return true;
        }

        /// <summary>Sends the owner's consumer positions when it frees space (coalesced).</summary>
        public async Task CreditLoopAsync()
        {
            var frame = new byte[CreditFrame];
            while (!IsDown)
            {
                var signal = _creditSignal.WaitTask;
                int lanes = Interlocked.Exchange(ref _dirtyLanes, 0);
                for (int lane = 0; lane < WindowLayout.Lanes; lane++)
                {
                    if ((lanes & (1 << lane)) == 0) continue;
                    var w = owner.Local;
                    BinaryPrimitives.WriteInt32LittleEndian(frame, CreditFrame - 4);
                    frame[4] = Credit;
                    frame[5] = (byte)lane;
                    BinaryPrimitives.WriteInt64LittleEndian(frame.AsSpan(8), Volatile.Read(ref w.Counter(lane, WindowLayout.EntryTail)));
                    BinaryPrimitives.WriteInt64LittleEndian(frame.AsSpan(16), Volatile.Read(ref w.Counter(lane, WindowLayout.MessageTail)));
                    BinaryPrimitives.WriteInt64LittleEndian(frame.AsSpan(24), Volatile.Read(ref w.Counter(lane, WindowLayout.DataTail)));
                    try
                    {
                        await WriteAsync(frame, default, default, CancellationToken.None);
                    }
                    catch (IclLinkDownException) when (!IsDown)
                    {
                        // The write lock stayed busy (a long data frame): the credit is still owed.
                        Interlocked.Or(ref _dirtyLanes, 1 << lane);
                    }
                }
                if (lanes != 0) continue;
                try { await signal.WaitAsync(Down); }
                catch (OperationCanceledException) { return; }
            }
        }

        public override async ValueTask PublishAsync(int lane, IclEntry e, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            int total = TransferHeader + message.Length + data.Length;
            bool inline = total <= InlineLimit;
            var frame = new byte[inline ? total : TransferHeader];
            BinaryPrimitives.WriteInt32LittleEndian(frame, total - 4);
            frame[4] = Transfer;
            frame[5] = (byte)lane;
            MemoryMarshal.Write(frame.AsSpan(8), in e);
            if (inline)
            {
                message.Span.CopyTo(frame.AsSpan(TransferHeader));
                data.Span.CopyTo(frame.AsSpan(TransferHeader + message.Length));
                await WriteAsync(frame, default, default, ct);
            }
            else
            {
                await WriteAsync(frame, message, data, ct);
            }
            int i = lane * 3;
            Heads[i] = e.Sequence + 1;
            Heads[i + 1] = e.MessagePos + e.MessageLength;
            Heads[i + 2] = e.DataPos + e.DataLength;
        }

        /// <summary>One frame, whole, under the write lock; a write that fails or takes longer than PostTimeout kills the connection.</summary>
        async ValueTask WriteAsync(ReadOnlyMemory<byte> a, ReadOnlyMemory<byte> b, ReadOnlyMemory<byte> c, CancellationToken ct)
        {
            using var timeout = new CancellationTokenSource(owner.Options.PostTimeout, owner.Time);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, Down, ct);
            try
            {
                await _write.WaitAsync(linked.Token);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new IclLinkDownException($"ICL {owner.LocalName}->{owner.PeerName}: connection busy or down");
            }
            try
            {
                await stream.WriteAsync(a, linked.Token);
                if (!b.IsEmpty) await stream.WriteAsync(b, linked.Token);
                if (!c.IsEmpty) await stream.WriteAsync(c, linked.Token);
            }
            catch (Exception ex)
            {
                Close(); // a frame may be half written: the stream is unusable
                throw new IclLinkDownException($"ICL {owner.LocalName}->{owner.PeerName}: connection lost: {ex.Message}", ex);
            }
            finally
            {
                _write.Release();
            }
        }
    }
}
