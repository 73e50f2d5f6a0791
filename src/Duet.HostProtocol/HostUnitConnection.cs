using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Duet.Core;
using Microsoft.Extensions.Logging;

namespace Duet.HostProtocol;

// One host connection on one unit.
//
// One reader (RunAsync) owns the PipeReader: hello first, then request frames. Each decoded
// request goes to the CommandHandshake with this connection as its completion route, and the
// reader goes straight back for the next frame; up to MaxInFlightRequests commands are in
// flight, after which the reader stops reading and TCP pushes back. Completions come back in
// any order from the handshake (this unit's execution, the partner's "completed", a takeover)
// and are written whole under a write gate.
//
//   socket -> PipeReader -> reader --(HostCommand, route=this)--> CommandHandshake
//   socket <- PipeWriter <- write gate <- TrySendAsync(completion) <-----+
//
// Bad frames: a recoverable one (bad flags, reserved bits, lengths) is answered with its tag
// and status Invalid and the connection carries on; one that loses the framing (bad magic,
// unknown opcode, an oversized write) is answered with ProtocolError and the connection closes.
internal sealed class HostUnitConnection : IHostCompletionRoute
{
    readonly Socket _socket;
    readonly NetworkStream _stream;
    readonly ConnectionReader _reader; // its own thread, receiving with recv/poll
    readonly PipeReader _input;
    readonly PipeWriter _output;
    readonly IVolumeCatalog _catalog;
    readonly CommandHandshake _handshake;
    readonly HostUnitServerOptions _options;
    readonly ILogger _logger;
    readonly Action<HostUnitConnection> _onClosed;
    readonly AsyncGate _writeGate = new(1, 1);
    readonly AsyncGate _slots;
    readonly Lock _inFlightLock = new();
    readonly HashSet<Task> _inFlight = [];
    bool _closed;

    ulong _hostId;
    string? _volume;

    public HostUnitConnection(long id, Socket socket, IVolumeCatalog catalog, CommandHandshake handshake, HostUnitServerOptions options,
        ILogger logger, Action<HostUnitConnection> onClosed)
    {
        Id = id;
        _socket = socket;
        _catalog = catalog;
        _handshake = handshake;
        _options = options;
        _logger = logger;
        _onClosed = onClosed;
        _slots = new AsyncGate(options.MaxInFlightRequests, options.MaxInFlightRequests);
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new ConnectionReader(socket, _stream, $"unit-{id}");
        _input = PipeReader.Create(_reader.Stream, new StreamPipeReaderOptions(leaveOpen: true));
        _output = PipeWriter.Create(_stream, new StreamPipeWriterOptions(leaveOpen: true));
    }

    public long Id { get; }

    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>Runs the connection; its reader on a thread of its own that sleeps in the socket's receive
    /// (<see cref="ConnectionReader"/>), as NBD's.</summary>
    public void Start() => Completion = RunAsync();

    /// <summary>Reads served on the reader's own thread, how many of them slept first, and the times the reader
    /// moved onto its thread (tests, diagnostics).</summary>
    public (long Reads, long Sleeps, long Switches) DirectReads => _reader.Counts;

    /// <summary>Stop reading; in-flight commands may still be answered until the connection closes.</summary>
    public void BeginShutdown()
    {
        _input.CancelPendingRead();
        _reader.StopReceiving(); // a reader asleep in its own receive sees the end of the stream
    }

    async Task RunAsync()
    {
        await _reader.SwitchTo();
        HostLog.Accepted(_logger, Id, _socket.RemoteEndPoint);
        try
        {
            await ReadLoopAsync();
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            HostLog.Failed(_logger, Id, e);
        }
        catch (Exception e) when (e is not InvariantViolationException)
        {
            HostLog.Failed(_logger, Id, e);
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
            await _reader.SwitchTo(); // back from a wait (a slot, the write gate) that resumed on the pool
            var result = await _input.ReadAsync();
            var buffer = result.Buffer;
            var consumed = buffer.Start;
            try
            {
                while (true)
                {
                    var step = _volume is null ? ParseBeforeHello(buffer.Slice(consumed)) : ParseRequest(buffer.Slice(consumed));
                    if (step.Consumed > 0) consumed = buffer.Slice(consumed).GetPosition(step.Consumed);
                    if (step.NeedMore) break;
                    await ApplyAsync(step);
                    if (step.Close) return;
                }
            }
            finally
            {
                _input.AdvanceTo(consumed, buffer.End);
            }
            if (result.IsCompleted || result.IsCanceled) return;
        }
    }

    /// <summary>What one frame asks for. Parsing is synchronous (a SequenceReader cannot live
    /// across an await); <see cref="ApplyAsync"/> does the writing and the handing over.</summary>
    sealed record Step(long Consumed, bool NeedMore = false, bool Close = false)
    {
        public HostHelloReply? HelloReply { get; init; }
        public HostHello? Attach { get; init; }
        public HostCompletion? Answer { get; init; }
        public HostRequest? Request { get; init; }
        public HostVolumeList? List { get; init; }
    }

    static readonly Step NeedMoreBytes = new(0, NeedMore: true);

    Step ParseBeforeHello(ReadOnlySequence<byte> bytes)
    {
        var reader = new SequenceReader<byte>(bytes);
        int magic;
        if (reader.TryReadBigEndian(out magic) && (uint)magic == HostWire.RequestMagic)
        {
            // A request before the hello: answered NotAttached, skipped when its framing allows.
            reader.Rewind(4);
            var status = HostCodec.TryReadRequest(ref reader, _options.PayloadBytesMax, out var early, out var error);
            if (status == OperationStatus.NeedMoreData) return NeedMoreBytes;
            HostLog.ProtocolError(_logger, Id, error, "request before hello");
            var answer = HostCompletion.Error(early?.HostTag ?? 0, HostStatus.NotAttached);
            return error.LosesFraming() ? new Step(0, Close: true) { Answer = answer } : new Step(reader.Consumed) { Answer = answer };
        }
        reader = new SequenceReader<byte>(bytes);
        if (reader.TryReadBigEndian(out magic) && (uint)magic == HostWire.ListMagic)
        {
            // A list request: every volume this unit attaches, for hosts that discover them.
            reader.Rewind(4);
            var status = HostCodec.TryReadList(ref reader, out ushort version, out var error);
            if (status == OperationStatus.NeedMoreData) return NeedMoreBytes;
            if (status == OperationStatus.InvalidData)
            {
                HostLog.ProtocolError(_logger, Id, error, "list request");
                return new Step(reader.Consumed) { List = new HostVolumeList(HostStatus.Invalid, []) };
            }
            return new Step(reader.Consumed) { List = version == HostWire.Version ? ListVolumes() : new HostVolumeList(HostStatus.BadVersion, []) };
        }
        reader = new SequenceReader<byte>(bytes);
        var helloStatus = HostCodec.TryReadHello(ref reader, out var hello, out var helloError);
        if (helloStatus == OperationStatus.NeedMoreData) return NeedMoreBytes;
        if (helloStatus == OperationStatus.InvalidData)
        {
            HostLog.ProtocolError(_logger, Id, helloError, "expected a hello");
            return helloError.LosesFraming()
                ? new Step(0, Close: true) { Answer = HostCompletion.Error(0, HostStatus.ProtocolError) }
                : new Step(reader.Consumed) { HelloReply = Reply(HostStatus.Invalid, 0) };
        }
        if (hello.Version != HostWire.Version) return new Step(reader.Consumed) { HelloReply = Reply(HostStatus.BadVersion, 0) };
        if (!_catalog.TryGetVolume(hello.Volume, out var volume)) return new Step(reader.Consumed) { HelloReply = Reply(HostStatus.NoSuchVolume, 0) };
        return new Step(reader.Consumed) { HelloReply = Reply(HostStatus.Ok, (ulong)volume.SizeBytes, FlagsOf(volume)), Attach = hello with { Volume = volume.Name } };
    }

    HostHelloReply Reply(HostStatus status, ulong sizeBytes, HostVolumeFlags flags = HostVolumeFlags.None) =>
        new(status, sizeBytes, _options.Controller, _options.Unit, (uint)_options.PayloadBytesMax, flags);

    HostVolumeFlags FlagsOf(IBlockVolume volume) =>
        (_handshake.IsPrimaryFor(volume.Name) ? HostVolumeFlags.Primary : HostVolumeFlags.None)
        | (volume.ReadOnly ? HostVolumeFlags.ReadOnly : HostVolumeFlags.None);

    HostVolumeList ListVolumes() =>
        new(HostStatus.Ok, [.. _catalog.Volumes.Take(HostWire.ListEntriesMax).Select(v => new HostVolumeEntry(v.Name, (ulong)v.SizeBytes, FlagsOf(v)))]);

    Step ParseRequest(ReadOnlySequence<byte> bytes)
    {
        var reader = new SequenceReader<byte>(bytes);
        var status = HostCodec.TryReadRequest(ref reader, _options.PayloadBytesMax, out var request, out var error);
        if (status == OperationStatus.NeedMoreData) return NeedMoreBytes;
        if (status == OperationStatus.InvalidData)
        {
            HostLog.ProtocolError(_logger, Id, error, request is null ? "no request header" : $"tag {request.HostTag}");
            bool close = error.LosesFraming();
            var answer = HostCompletion.Error(request?.HostTag ?? 0, close ? HostStatus.ProtocolError : HostStatus.Invalid);
            return close ? new Step(0, Close: true) { Answer = answer } : new Step(reader.Consumed) { Answer = answer };
        }
        Invariant.Assert(request is not null);
        if (request.HostId != _hostId || (request.Flags & HostRequestFlags.Forwarded) != 0)
        {
            // Only units forward frames, and a connection speaks for the host of its hello.
            HostLog.ProtocolError(_logger, Id, HostWireError.BadFlags, $"tag {request.HostTag}: host id or forwarded flag");
            return new Step(reader.Consumed) { Answer = HostCompletion.Error(request.HostTag, HostStatus.Invalid) };
        }
        return new Step(reader.Consumed) { Request = request };
    }

    async ValueTask ApplyAsync(Step step)
    {
        if (step.HelloReply is { } reply) await SendHelloReplyAsync(reply);
        if (step.List is { } list) await SendFrameAsync(HostCodec.EncodeListReply(list));
        if (step.Attach is { } hello)
        {
            _hostId = hello.HostId;
            _volume = hello.Volume;
            HostLog.Attached(_logger, Id, hello.HostId, hello.Volume);
        }
        if (step.Answer is { } answer) await TrySendAsync(answer);
        if (step.Request is { } request)
        {
            await _slots.WaitAsync();
            Track(_handshake.SubmitAsync(new HostCommand(_options.Unit, _volume!, request), this));
        }
    }

    void Track(Task task)
    {
        lock (_inFlightLock) _inFlight.Add(task);
        _ = ReleaseWhenDoneAsync(task);
    }

    async Task ReleaseWhenDoneAsync(Task task)
    {
        try { await task; }
        catch (Exception e) when (e is not InvariantViolationException) { HostLog.Failed(_logger, Id, e); }
        lock (_inFlightLock) _inFlight.Remove(task);
        _slots.Release();
    }

    async ValueTask SendHelloReplyAsync(HostHelloReply reply)
    {
        await _writeGate.WaitAsync();
        try
        {
            int n = HostCodec.WriteHelloReply(reply, _output.GetSpan(HostWire.HelloReplyBytes));
            _output.Advance(n);
            await _output.FlushAsync();
        }
        finally
        {
            _writeGate.Release();
        }
    }

    async ValueTask SendFrameAsync(byte[] frame)
    {
        await _writeGate.WaitAsync();
        try
        {
            await _output.WriteAsync(frame);
        }
        finally
        {
            _writeGate.Release();
        }
    }

    public async ValueTask<bool> TrySendAsync(HostCompletion completion)
    {
        await _writeGate.WaitAsync();
        try
        {
            if (_closed) return false;
            int n = HostCodec.WriteCompletionHeader(completion, _output.GetSpan(HostWire.CompletionHeaderBytes));
            _output.Advance(n);
            if (!completion.Data.IsEmpty) _output.Write(completion.Data.Span);
            var flush = await _output.FlushAsync();
            return !flush.IsCompleted;
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidOperationException or OperationCanceledException)
        {
            return false;
        }
        finally
        {
            _writeGate.Release();
        }
    }

    async Task CloseAsync()
    {
        Task[] inFlight;
        lock (_inFlightLock) inFlight = [.. _inFlight];
        if (inFlight.Length > 0)
        {
            try
            {
                await Task.WhenAll(inFlight).WaitAsync(_options.ShutdownTimeout, _options.TimeProvider);
            }
            catch (TimeoutException)
            {
                HostLog.ClosedWithInFlight(_logger, Id, inFlight.Count(t => !t.IsCompleted));
            }
        }
        await _writeGate.WaitAsync();
        try
        {
            _closed = true;
            try { await _output.CompleteAsync(); }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { }
        }
        finally
        {
            _writeGate.Release();
        }
        await _input.CompleteAsync();
        try { _socket.Shutdown(SocketShutdown.Both); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
        await _stream.DisposeAsync();
        HostLog.Closed(_logger, Id);
        _onClosed(this);
    }
}
