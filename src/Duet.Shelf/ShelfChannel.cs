using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Duet.Core;

namespace Duet.Shelf;

// The client end of one role's connection to `duet shelf` (RemoteShelfPort, ShelfAdminClient).
//
// One socket, pipelined: any number of callers send requests at once (each frame encoded whole;
// frames queued together go out in one socket write, FrameSender), one reader task matches
// responses to requests by tag and completes them. A read's data is copied by the reader
// straight into the caller's buffer.
//
// Failure model. A connection that drops (shelf stopped or crashed, socket error, a response
// that is not the protocol) fails every request in flight with ShelfError.Unreachable; the
// next request connects again (and says Hello, so a socket serving another port is refused).
// Every request has a deadline (RequestTimeout, from the injected TimeProvider): past it, the
// caller gets Unreachable and a late response is dropped. One timer per connection sweeps the
// requests in flight every eighth of RequestTimeout (a timer per request cost more than the
// request), so a deadline is kept to within that. A connection whose socket has not taken a
// write for a whole RequestTimeout is broken (the shelf stopped reading). Who gives up on a
// request and who completes it race on one TryRemove of its tag, so a reader never writes into
// a buffer whose caller has returned.
//
// The shell: real sockets; continuations run on the thread pool (ConfigureAwait(false)), so the
// synchronous management calls of IDriveShelf can block on a round trip without deadlocking.
internal sealed class ShelfChannel : IAsyncDisposable
{
    readonly EndPoint _endPoint;
    readonly string _role;
    readonly TimeProvider _time;
    readonly SemaphoreSlim _connectLock = new(1, 1);
    Link? _link;
    long _lastTag;
    bool _disposed;

    public ShelfChannel(EndPoint endPoint, string role, TimeSpan requestTimeout, TimeProvider time)
    {
        _endPoint = endPoint;
        _role = role;
        RequestTimeout = requestTimeout;
        _time = time;
    }

    public TimeSpan RequestTimeout { get; }
    public EndPoint EndPoint => _endPoint;

    /// <summary>Connections made so far (a reconnect after a drop counts again).</summary>
    public int Connects { get; private set; }

    /// <summary>The current connection's responses read on its reader's own thread, and how many of those reads slept in poll first.</summary>
    public (long Reads, long Sleeps) ReaderThreadReads => _link?.Reader.Stream.DirectReads ?? (0, 0);

    /// <summary>The protocol version the shelf of the live connection reported in its Hello (0: no live connection).
    /// A request sent now goes on that connection, or on a new one made first.</summary>
    public int ShelfVersion => _link is { BrokenBy: null } l ? l.Version : 0;

    sealed class Pending(Link link, ulong tag, ShelfOp op, Memory<byte> readInto, long started, TimeSpan limit, bool throwOnError)
    {
        public readonly bool ThrowOnError = throwOnError;
        public readonly ShelfOp Op = op;
        public readonly Memory<byte> ReadInto = readInto;
        public readonly long Started = started;
        public readonly TimeSpan Limit = limit;
        public readonly TaskCompletionSource<ShelfResponse> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        // A caller's token that can be cancelled: registered on the request itself (no async frame per request);
        // whoever else takes the request out of Pending unregisters it (Link.TryTake).
        public CancellationTokenRegistration Cancel;

        public void Cancelled(CancellationToken token)
        {
            if (link.Pending.TryRemove(tag, out _)) Done.TrySetException(new OperationCanceledException(token));
        }
    }

    /// <summary>One connection: its socket, its pipes and the requests waiting for it.</summary>
    sealed class Link
    {
        public Link(Socket socket, TimeProvider time)
        {
            Socket = socket;
            Stream = new(socket, ownsSocket: true);
            Reader = new ConnectionReader(socket, Stream, "shelf-client");
            Sender = new FrameSender(socket, time, e => Break($"the connection to the shelf failed while sending: {e.Message}"));
        }

        public readonly Socket Socket;
        public readonly NetworkStream Stream;
        /// <summary>The reader's own thread takes responses with recv and sleeps in poll between them.</summary>
        public readonly ConnectionReader Reader;
        public readonly FrameSender Sender;
        public PipeReader Input = null!;
        public ITimer? Sweep;
        /// <summary>The version the shelf's Hello reported.</summary>
        public int Version;
        public readonly ConcurrentDictionary<ulong, Pending> Pending = new();

        /// <summary>Takes a request out of Pending to complete it (it is not cancellable any more); false if someone else did.</summary>
        public bool TryTake(ulong tag, [System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out Pending pending)
        {
            if (!Pending.TryRemove(tag, out pending)) return false;
            pending.Cancel.Unregister();
            return true;
        }
        volatile string? _brokenBy;
        public string? BrokenBy => _brokenBy;

        /// <summary>Marks the link dead and fails every request waiting on it. Idempotent.</summary>
        public void Break(string why)
        {
            lock (Pending)
            {
                if (_brokenBy is not null) return;
                _brokenBy = why;
            }
            Sweep?.Dispose();
            try { Socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            Socket.Dispose();
            foreach (var tag in Pending.Keys)
                if (TryTake(tag, out var p)) p.Done.TrySetException(new ShelfException(ShelfError.Unreachable, why));
        }
    }

    /// <summary>Sends <paramref name="request"/> (its tag is replaced) and returns the response, whatever its status
    /// (with <paramref name="throwOnError"/>: a refusal fails the task with its <see cref="ShelfException"/>).
    /// A read's data lands in <paramref name="readInto"/>. Fails with ShelfException(Unreachable) when the shelf cannot be
    /// reached or does not answer in time; OperationCanceledException when <paramref name="ct"/> is cancelled.
    /// Never throws on its own: the task carries every failure. No async frame of its own on the way (one request per
    /// drive I/O: the path is kept short).</summary>
    public Task<ShelfResponse> CallAsync(ShelfRequest request, Memory<byte> readInto = default, CancellationToken ct = default, TimeSpan? timeout = null,
        bool throwOnError = false)
    {
        var limit = timeout ?? RequestTimeout;
        var link = _link;
        if (link is null || link.BrokenBy is not null) return ConnectThenSendAsync(request, readInto, ct, limit, throwOnError);
        return Send(link, request, readInto, ct, limit, throwOnError);
    }

    async Task<ShelfResponse> ConnectThenSendAsync(ShelfRequest request, Memory<byte> readInto, CancellationToken ct, TimeSpan limit, bool throwOnError)
    {
        var link = await ConnectedAsync(ct).ConfigureAwait(false);
        return await Send(link, request, readInto, ct, limit, throwOnError).ConfigureAwait(false);
    }

    Task<ShelfResponse> Send(Link link, ShelfRequest request, Memory<byte> readInto, CancellationToken ct, TimeSpan limit, bool throwOnError)
    {
        if (ct.IsCancellationRequested) return Task.FromCanceled<ShelfResponse>(ct);
        ulong tag = (ulong)Interlocked.Increment(ref _lastTag);
        var pending = new Pending(link, tag, request.Op, readInto, _time.GetTimestamp(), limit, throwOnError);
        if (ct.CanBeCanceled) pending.Cancel = ct.UnsafeRegister(static (s, token) => ((Pending)s!).Cancelled(token), pending);
        link.Pending[tag] = pending;
        if (ct.IsCancellationRequested && link.TryTake(tag, out _)) // cancelled before it was in Pending
            return Task.FromCanceled<ShelfResponse>(ct);
        if (link.BrokenBy is { } why && link.TryTake(tag, out _))
            return Task.FromException<ShelfResponse>(new ShelfException(ShelfError.Unreachable, why));

        try
        {
            // Not awaited (it never faults): a write that fails breaks the link, which fails this request;
            // one that stalls is caught by the sweep. Either way the answer comes through pending.Done.
            _ = link.Sender.SendAsync(ShelfCodec.RequestBytes(request), (request, tag), static (span, f) => ShelfCodec.WriteRequest(span, f.request, f.tag));
        }
        catch (IOException e)
        {
            link.TryTake(tag, out _);
            return Task.FromException<ShelfResponse>(new ShelfException(ShelfError.Unreachable, link.BrokenBy ?? e.Message));
        }
        return pending.Done.Task;
    }

    /// <summary>The sweep: fails every request past its deadline, and breaks a link whose socket stopped taking writes.</summary>
    void Sweep(Link link)
    {
        if (link.BrokenBy is not null) return;
        long now = _time.GetTimestamp();
        if (link.Sender.WriteStartedAt is { } since && _time.GetElapsedTime(since, now) >= RequestTimeout)
        {
            link.Break($"the shelf at {_endPoint} has not taken a request for {RequestTimeout.TotalSeconds:0.###} s");
            return;
        }
        foreach (var (tag, p) in link.Pending)
            if (_time.GetElapsedTime(p.Started, now) >= p.Limit && link.TryTake(tag, out _))
                p.Done.TrySetException(TimedOut(p.Limit));
    }

    Exception Abandoned(CancellationToken callerToken, TimeSpan timeout) =>
        callerToken.IsCancellationRequested ? new OperationCanceledException(callerToken) : TimedOut(timeout);

    ShelfException TimedOut(TimeSpan timeout) =>
        new(ShelfError.Unreachable, $"the shelf at {_endPoint} did not answer within {timeout.TotalSeconds:0.###} s");

    async Task<Link> ConnectedAsync(CancellationToken callerToken)
    {
        using var deadline = new CancellationTokenSource(RequestTimeout, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(callerToken, deadline.Token);
        var token = linked.Token;
        try
        {
            await _connectLock.WaitAsync(token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            throw Abandoned(callerToken, RequestTimeout);
        }
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var link = _link;
            if (link is not null && link.BrokenBy is null) return link;
            var socket = new Socket(_endPoint.AddressFamily, SocketType.Stream,
                _endPoint.AddressFamily == AddressFamily.Unix ? ProtocolType.Unspecified : ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync(_endPoint, token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException)
            {
                socket.Dispose();
                if (e is OperationCanceledException) throw Abandoned(callerToken, RequestTimeout);
                throw new ShelfException(ShelfError.Unreachable, $"the shelf at {_endPoint} cannot be reached: {e.Message}");
            }
            if (socket.ProtocolType == ProtocolType.Tcp) socket.NoDelay = true;
            link = new Link(socket, _time);
            link.Input = PipeReader.Create(link.Reader.Stream, new StreamPipeReaderOptions(bufferSize: 256 * 1024, minimumReadSize: 64 * 1024, leaveOpen: true));
            var period = TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond, RequestTimeout.Ticks / 8));
            link.Sweep = _time.CreateTimer(static s => { var (channel, l) = ((ShelfChannel, Link))s!; channel.Sweep(l); }, (this, link), period, period);
            _ = ReadLoopAsync(link);
            Connects++;

            ShelfResponse hello;
            try
            {
                hello = await Send(link, new ShelfRequest(ShelfOp.Hello, 0) { Name = _role }, default, token, RequestTimeout, throwOnError: false).ConfigureAwait(false);
            }
            catch
            {
                link.Break($"the shelf at {_endPoint} did not answer Hello");
                throw;
            }
            if (hello.Status != ShelfError.None)
            {
                link.Break($"the shelf at {_endPoint} refused this connection: {hello.Message}");
                throw new ShelfException(hello.Status, hello.Message);
            }
            link.Version = (int)hello.Value;
            _link = link;
            return link;
        }
        catch (OperationCanceledException) when (!callerToken.IsCancellationRequested)
        {
            throw Abandoned(callerToken, RequestTimeout);
        }
        finally
        {
            _connectLock.Release();
        }
    }

    /// <summary>
    /// Takes responses off the connection, on a thread of its own (<see cref="ConnectionReader"/>) that sleeps in the
    /// socket's receive: a response wakes the thread that completes its request (whose continuation runs on the
    /// pool), not the socket engine's epoll thread and then a pool worker. Nothing here waits on anything but the
    /// socket, so the management path's blocking calls (which wait for a response) are never on this thread.
    /// Break shuts the socket down, which ends a read asleep in poll.
    /// </summary>
    async Task ReadLoopAsync(Link link)
    {
        string why = $"the shelf at {_endPoint} closed the connection";
        var reader = link.Reader;
        try
        {
            while (true)
            {
                await reader.SwitchTo(); // at once when it is there
                var result = await link.Input.ReadAsync().ConfigureAwait(false);
                var buffer = result.Buffer;
                try
                {
                    while (TryTakeResponse(link, ref buffer)) { }
                }
                finally
                {
                    link.Input.AdvanceTo(buffer.Start, buffer.End);
                }
                if (result.IsCompleted || result.IsCanceled) break;
            }
        }
        catch (ShelfProtocolException e)
        {
            why = $"the shelf at {_endPoint} sent bytes that are not the shelf protocol: {e.Message}";
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
        {
            why = $"the connection to the shelf at {_endPoint} was lost: {e.Message}";
        }
        link.Break(why);
        try { await link.Input.CompleteAsync().ConfigureAwait(false); } catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { }
        reader.Stop();
    }

    static bool TryTakeResponse(Link link, ref ReadOnlySequence<byte> buffer)
    {
        var reader = new SequenceReader<byte>(buffer);
        if (!ShelfCodec.TryReadResponseHeader(ref reader, out var header)) return false;
        if (reader.Remaining < header.BodyBytes) return false;
        var body = reader.UnreadSequence.Slice(0, header.BodyBytes);
        buffer = buffer.Slice(reader.Position).Slice(header.BodyBytes);

        if (!link.TryTake(header.Tag, out var p))
        {
            // Tag 0 is the shelf's "framing lost" answer before it closes; any other unknown tag belongs to
            // a request its caller gave up on (timeout, cancel): drop it.
            if (header.Tag == 0 && header.Status != ShelfError.None)
                throw new ShelfProtocolException("the shelf could not frame our requests and is closing: " +
                    ShelfCodec.ReadResponseBody(header, body.ToArray()).Message);
            return true;
        }
        try
        {
            if (header.Op != p.Op) throw new ShelfProtocolException($"response {header.Tag} is a {header.Op}, its request a {p.Op}");
            if (header.Op == ShelfOp.Read && header.Status == ShelfError.None)
            {
                if (body.Length != p.ReadInto.Length)
                    throw new ShelfProtocolException($"read response {header.Tag} holds {body.Length} bytes, {p.ReadInto.Length} were asked for");
                body.CopyTo(p.ReadInto.Span);
                p.Done.TrySetResult(new ShelfResponse(ShelfOp.Read, header.Tag, ShelfError.None));
            }
            else if (header.Status == ShelfError.None && header.BodyBytes == 0 && header.Op is ShelfOp.Write or ShelfOp.WriteGather or ShelfOp.Flush)
            {
                p.Done.TrySetResult(new ShelfResponse(header.Op, header.Tag, ShelfError.None)); // the common answer, without a body to copy
            }
            else
            {
                var response = ShelfCodec.ReadResponseBody(header, body.ToArray());
                if (p.ThrowOnError && response.Status != ShelfError.None) p.Done.TrySetException(response.Refusal());
                else p.Done.TrySetResult(response);
            }
        }
        catch (ShelfProtocolException e)
        {
            p.Done.TrySetException(new ShelfException(ShelfError.Unreachable, $"the shelf sent a malformed response: {e.Message}"));
            throw;
        }
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        await _connectLock.WaitAsync().ConfigureAwait(false);
        try
        {
            _disposed = true;
            _link?.Break("the shelf client was disposed");
        }
        finally
        {
            _connectLock.Release();
        }
    }
}

/// <summary>Turns a response into its result or its <see cref="ShelfException"/>.</summary>
internal static class ShelfResponses
{
    public static ShelfResponse Ok(this ShelfResponse response) =>
        response.Status == ShelfError.None ? response : throw response.Refusal();

    /// <summary>The exception a refused request fails with.</summary>
    public static ShelfException Refusal(this ShelfResponse response) => new(response.Status, response.Message, response.Lba);
}
