using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net.Sockets;
using Duet.Core;
using Duet.Drives;
using Microsoft.Extensions.Logging;

namespace Duet.Shelf;

// One client connection to `duet shelf`, acting for the role of the socket it came in on
// (port A, port B, or the administrator).
//
// Concurrency. One reader (RunAsync) owns the PipeReader: it waits for a whole request (header
// and body), copies the body into a pooled buffer, and hands the request to the thread pool,
// then reads the next one without waiting. Up to MaxInFlightRequests run at once; with every
// slot taken the reader stops reading and the socket pushes back. Requests finish in any
// order (a slow write to one drive does not hold a heartbeat); each response is encoded whole,
// tagged with its request's tag, and responses finished together go out in one socket write
// (FrameSender).
//
//   socket -> PipeReader -> reader --(request, pooled body)--> thread pool x N -> Shelf / drive
//   socket <- FrameSender <---------------------------------------- response --+
//
// Errors. A request the shelf refuses gets its ShelfError and message. A body that is not its
// opcode's (or an unknown opcode) gets Invalid with the tag, and the connection carries on: the
// header's length still frames the stream. Bad magic or an impossible length loses the framing:
// the connection answers Invalid with tag 0 and closes. Nothing here ends the process.
//
// Closing. End of stream, lost framing or the server's Abort end the reader; requests already
// handed out finish (a write the shelf accepted completes, so a fence waiting on it returns)
// and their responses are sent if the socket still takes them; then the socket closes.
internal sealed class ShelfConnection
{
    readonly Socket _socket;
    readonly NetworkStream _stream;
    readonly ConnectionReader _reader; // its own thread, receiving with recv/poll
    readonly PipeReader _input;
    readonly FrameSender _output;
    readonly Shelf _shelf;
    readonly IShelfPort? _port; // null on the admin socket
    readonly ILogger _logger;
    readonly Action<ShelfConnection> _onClosed;
    readonly SemaphoreSlim _slots;
    readonly CancellationTokenSource _abort = new();
    readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly ConcurrentDictionary<string, IBlockDevice> _drives = new(StringComparer.Ordinal);
    int _inFlight = 1; // requests running, plus one held by the reader until it stops

    readonly long[] _served; // the server's requests by opcode

    public ShelfConnection(long id, string role, Socket socket, Shelf shelf, int maxInFlight, long[] served, ILogger logger, Action<ShelfConnection> onClosed)
    {
        _served = served;
        Id = id;
        Role = role;
        _socket = socket;
        _shelf = shelf;
        _port = role == ShelfWire.AdminRole ? null : shelf.Port(role);
        _logger = logger;
        _onClosed = onClosed;
        _slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new ConnectionReader(socket, _stream, $"shelf-{id}");
        _input = PipeReader.Create(_reader.Stream, new StreamPipeReaderOptions(bufferSize: 256 * 1024, minimumReadSize: 64 * 1024, leaveOpen: true));
        _output = new FrameSender(socket, TimeProvider.System, _ => Abort()); // the time is unused here: nothing sweeps a shelf connection
    }

    public long Id { get; }
    public string Role { get; }
    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>Runs the connection. The reader runs on a thread of its own (<see cref="ConnectionReader"/>) that sleeps
    /// in the socket's receive (<see cref="ThreadReceiveStream"/>): a request that arrives wakes the thread that
    /// runs it in line, with no socket-engine thread and pool hand-off in between.</summary>
    public void Start() => Completion = RunAsync();

    /// <summary>Reads served on the reader's own thread, how many of them slept first, and the times the reader
    /// moved onto its thread (tests, diagnostics).</summary>
    public (long Reads, long Sleeps, long Switches) DirectReads => _reader.Counts;

    /// <summary>Cuts the connection: the reader stops, the client sees the socket close at once.
    /// Requests already handed out still run to their end (their responses are dropped).</summary>
    public void Abort()
    {
        try { _abort.Cancel(); } catch (ObjectDisposedException) { }
        try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    async Task RunAsync()
    {
        await _reader.SwitchTo();
        ShelfLog.ConnectionAccepted(_logger, Id, Role);
        try
        {
            await ReadLoopAsync();
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The peer went away or the server cut us: nothing to answer.
        }
        catch (Exception e)
        {
            ShelfLog.ConnectionFailed(_logger, Id, Role, e);
        }
        finally
        {
            await CloseAsync();
            _reader.Stop();
        }
    }

    async Task ReadLoopAsync()
    {
        while (true)
        {
            await _reader.SwitchTo(); // back from a wait (a request slot) that resumed on the pool
            var result = await _input.ReadAsync(_abort.Token);
            var buffer = result.Buffer;
            var consumed = buffer.Start;
            // The answers of the requests run here in line leave together, in one write, after the last.
            _output.Hold();
            try
            {
                while (TryTakeRequest(ref buffer, out var header, out var body, out var bodyBytes))
                {
                    consumed = buffer.Start;
                    await DispatchAsync(header, body, bodyBytes);
                }
            }
            catch (ShelfProtocolException e)
            {
                // Framing lost: answer once with tag 0 and close.
                Invariant.Assert(e.FramingLost);
                ShelfLog.FramingLost(_logger, Id, Role, e.Message);
                await RespondAsync(new ShelfResponse(0, 0, ShelfError.Invalid) { Message = $"protocol error: {e.Message}; closing the connection" });
                return;
            }
            finally
            {
                _input.AdvanceTo(consumed, buffer.End);
                await _output.Resume();
            }
            if (result.IsCompleted || result.IsCanceled) return;
        }
    }

    /// <summary>Takes one whole request off <paramref name="buffer"/> (body copied to a pooled array), or false for "need more".</summary>
    static bool TryTakeRequest(ref ReadOnlySequence<byte> buffer, out ShelfRequestHeader header, out byte[] body, out int bodyBytes)
    {
        body = [];
        bodyBytes = 0;
        var reader = new SequenceReader<byte>(buffer);
        if (!ShelfCodec.TryReadRequestHeader(ref reader, out header)) return false;
        if (reader.Remaining < header.BodyBytes) return false;
        bodyBytes = header.BodyBytes;
        body = ArrayPool<byte>.Shared.Rent(Math.Max(1, bodyBytes));
        reader.UnreadSequence.Slice(0, bodyBytes).CopyTo(body);
        buffer = buffer.Slice(reader.Position).Slice(bodyBytes);
        return true;
    }

    async Task DispatchAsync(ShelfRequestHeader header, byte[] body, int bodyBytes)
    {
        ShelfRequest request;
        try
        {
            request = ShelfCodec.ReadRequestBody(header, body.AsMemory(0, bodyBytes));
        }
        catch (ShelfProtocolException e)
        {
            ArrayPool<byte>.Shared.Return(body);
            ShelfLog.ProtocolError(_logger, Id, Role, e.Message);
            await RespondAsync(new ShelfResponse(header.Op, header.Tag, ShelfError.Invalid) { Message = $"protocol error: {e.Message}" });
            return;
        }
        if ((ushort)request.Op < _served.Length) Interlocked.Increment(ref _served[(ushort)request.Op]);
        if (!_slots.Wait(0))
        {
            // Every slot is taken: what is held goes out now, not after a wait for a slow request.
            await _output.Resume();
            try { await _slots.WaitAsync(_abort.Token); }
            finally { _output.Hold(); }
        }
        Interlocked.Increment(ref _inFlight);
        // A small read or plain write runs here on the reader, up to its first wait: at a drive file that
        // is the whole request (FileDrive does small I/O inline), and a thread-pool hop costs more than
        // it. Anything that may block (FUA, Flush, fences, management) goes to the thread pool, so a slow
        // drive holds no other request of this connection (a heartbeat least of all).
        if (RunsInline(request)) _ = HandleAsync(request, body);
        else _ = Task.Run(() => HandleAsync(request, body));
    }

    const int InlineBytes = 64 * 1024;

    static bool RunsInline(ShelfRequest r) =>
        r.Op == ShelfOp.Read && r.Length <= InlineBytes ||
        r.Op == ShelfOp.Write && r.Payload.Length <= InlineBytes && (r.Flags & ShelfRequestFlags.Fua) == 0 ||
        r.Op == ShelfOp.WriteGather && GatheredBytes(r) <= InlineBytes;

    static long GatheredBytes(ShelfRequest r)
    {
        long n = 0;
        foreach (var e in r.Extents) n += e.Data.Length;
        return n;
    }

    async Task HandleAsync(ShelfRequest request, byte[] body)
    {
        byte[]? readBuffer = null;
        ShelfResponse response;
        try
        {
            if (request.Op == ShelfOp.Read)
            {
                readBuffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, request.Length));
                var data = readBuffer.AsMemory(0, request.Length);
                await DriveFor(request.Name).ReadAsync(request.Lba, data);
                response = new ShelfResponse(ShelfOp.Read, request.Tag, ShelfError.None) { Payload = data };
            }
            else
            {
                response = await ExecuteAsync(request);
            }
        }
        catch (Exception e)
        {
            response = ErrorResponse(request, e);
        }
        try
        {
            ArrayPool<byte>.Shared.Return(body); // a write's payload is no longer needed
            await RespondAsync(response);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            // The connection is gone: the request ran, its answer has nowhere to go.
        }
        finally
        {
            if (readBuffer is not null) ArrayPool<byte>.Shared.Return(readBuffer);
            _slots.Release();
            ReleaseInFlight();
        }
    }

    ShelfResponse ErrorResponse(ShelfRequest request, Exception e)
    {
        var (error, lba) = e switch
        {
            ShelfException s => (s.Error, s.Lba),
            FileNotFoundException => (ShelfError.NoSuchSlot, -1L),
            IOException { InnerException: ShelfException s } => (s.Error, s.Lba),
            BlockIoException b => (b.Kind switch
            {
                BlockErrorKind.Medium => ShelfError.Medium,
                BlockErrorKind.OutOfRange => ShelfError.OutOfRange,
                BlockErrorKind.Invalid => ShelfError.Invalid,
                _ => ShelfError.Io,
            }, b.Lba),
            ArgumentException => (ShelfError.Invalid, -1L),
            IOException or UnauthorizedAccessException => (ShelfError.Io, -1L),
            _ => (ShelfError.Io, -1L),
        };
        if (e is not (IOException or ArgumentException or UnauthorizedAccessException)) ShelfLog.RequestFailed(_logger, Id, Role, request.Op, e);
        return new ShelfResponse(request.Op, request.Tag, error) { Message = e.Message, Lba = lba };
    }

    IShelfPort Port => _port ?? throw new ShelfException(ShelfError.Invalid, "the admin socket serves only Hello, Status, Pull, Insert, AdminFence and AdminUnfence");

    async Task<ShelfResponse> ExecuteAsync(ShelfRequest r)
    {
        var ok = new ShelfResponse(r.Op, r.Tag, ShelfError.None);
        if (r.Op >= ShelfOp.Pull && _port is not null)
            throw new ShelfException(ShelfError.Invalid, $"{r.Op} is an administrator's request: send it on the shelf's admin socket, not port {Role}'s");
        switch (r.Op)
        {
            case ShelfOp.Hello:
                if (r.Name != Role) throw new ShelfException(ShelfError.Invalid, $"this socket serves {Describe(Role)}, not {Describe(r.Name)}");
                return ok with { Name = Role, Value = ShelfWire.Version };
            case ShelfOp.Status:
                return ok with { ShelfStatus = _shelf.Status() };
            case ShelfOp.List:
                return ok with { Names = Port.List() };
            case ShelfOp.Contains:
                return ok with { Value = Port.Contains(r.Name) ? 1 : 0 };
            case ShelfOp.Open:
            {
                var d = Port.Open(r.Name);
                _drives[r.Name] = d;
                return ok with { Value = d.BlockCount, Name = Shelf.SerialOf(r.Name) };
            }
            case ShelfOp.Create:
            {
                var d = Port.Create(r.Name, r.SizeBytes);
                _drives[r.Name] = d;
                return ok with { Value = d.BlockCount, Name = Shelf.SerialOf(r.Name) };
            }
            case ShelfOp.Write:
                await DriveFor(r.Name).WriteAsync(r.Lba, r.Payload, fua: (r.Flags & ShelfRequestFlags.Fua) != 0);
                return ok;
            case ShelfOp.WriteGather:
                // Each extent is admitted and written as a Write of its own would be (the port's drive runs them).
                await DriveFor(r.Name).WriteGatherAsync(r.Extents as WriteExtent[] ?? [.. r.Extents]);
                return ok;
            case ShelfOp.Flush:
                await DriveFor(r.Name).FlushAsync();
                return ok;
            case ShelfOp.Register:
                await Port.RegisterAsync(r.Value);
                return ok;
            case ShelfOp.Reserve:
                await Port.ReserveAsync();
                return ok;
            case ShelfOp.Preempt:
                await Port.PreemptAsync(r.Value);
                return ok;
            case ShelfOp.SetEnabled:
                await Port.SetEnabledAsync(r.Value != 0);
                return ok;
            case ShelfOp.SetMirrorStale:
                await Port.SetMirrorStaleAsync(r.Value != 0);
                return ok;
            case ShelfOp.SetLogStale:
                await Port.SetLogStaleAsync(r.Value != 0);
                return ok;
            case ShelfOp.Fence:
                await Port.FenceAsync(r.Name);
                return ok;
            case ShelfOp.Unfence:
                await Port.UnfenceAsync(r.Name);
                return ok;
            case ShelfOp.Claim:
                return ok with { Claims = await Port.ClaimAsync(r.Serials) };
            case ShelfOp.ClaimFor:
                return ok with { Claims = await Port.ClaimForAsync(r.Name, r.Serials) };
            case ShelfOp.Release:
                await Port.ReleaseAsync(r.Serials);
                return ok;
            case ShelfOp.Heartbeat:
                return ok with { ShelfStatus = await Port.HeartbeatAsync(r.Value) };
            case ShelfOp.Pull:
                _shelf.Pull(r.Name);
                ShelfLog.Admin(_logger, "pulled", r.Name);
                return ok;
            case ShelfOp.Insert:
                _shelf.Insert(r.Name);
                ShelfLog.Admin(_logger, "inserted", r.Name);
                return ok;
            case ShelfOp.AdminFence:
                await _shelf.AdminFenceAsync(r.Name);
                ShelfLog.Admin(_logger, "fenced port", r.Name);
                return ok;
            case ShelfOp.AdminUnfence:
                _shelf.AdminUnfence(r.Name);
                ShelfLog.Admin(_logger, "unfenced port", r.Name);
                return ok;
            default:
                throw new ShelfException(ShelfError.Invalid, $"opcode {(ushort)r.Op} is not served here");
        }
    }

    static string Describe(string role) => role == ShelfWire.AdminRole ? "the administrator" : $"port '{role}'";

    /// <summary>The drive as this connection's port sees it (every request admitted by the shelf), opened on first use.</summary>
    IBlockDevice DriveFor(string name)
    {
        if (_drives.TryGetValue(name, out var d)) return d;
        d = Port.Open(name);
        return _drives.GetOrAdd(name, d);
    }

    /// <summary>Queues the response; it is written at once, or with the write under way. The payload is copied here.</summary>
    ValueTask RespondAsync(ShelfResponse response) =>
        _output.SendAsync(ShelfCodec.ResponseBytes(response), response, static (span, r) => ShelfCodec.WriteResponse(span, r));

    void ReleaseInFlight()
    {
        int left = Interlocked.Decrement(ref _inFlight);
        Invariant.Assert(left >= 0);
        if (left == 0) _drained.TrySetResult();
    }

    async Task CloseAsync()
    {
        ReleaseInFlight();
        await _drained.Task;
        await _output.WhenIdleAsync(); // every answer queued is written (or the socket failed)
        await _input.CompleteAsync();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        await _stream.DisposeAsync();
        _abort.Dispose();
        ShelfLog.ConnectionClosed(_logger, Id, Role);
        _onClosed(this);
    }
}
