using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Text;
using Duet.Core;
using Microsoft.Extensions.Logging;

namespace Duet.Nbd;

// One client connection: the fixed-newstyle handshake, then the transmission loop.
//
// Concurrency model. One reader (this class's RunAsync) owns the PipeReader: it decodes a
// request, validates it, copies a WRITE payload into a pooled buffer, and hands the request to
// its own task, then goes back for the next request without waiting. Up to
// MaxInFlightRequests run at once; when all slots are taken the reader stops reading and TCP
// pushes back on the client. Request tasks finish in any order (NBD allows it: replies carry
// the client's cookie) and serialise their replies through one SemaphoreSlim so that a reply's
// header and payload are contiguous on the wire.
//
//   socket -> PipeReader -> reader loop --(request, pooled payload)--> request task x N
//                                                                         | volume I/O
//   socket <- PipeWriter <------------- write lock <----------------------+ reply
//
// Closing. NBD_CMD_DISC, end of stream and server shutdown stop the reader, then in-flight
// requests finish and are answered before the socket closes. A protocol violation the
// connection cannot recover from (bad magic, a truncated payload) cuts in-flight replies.
internal sealed class NbdConnection
{
    /// <summary>Option data beyond this is skipped and answered NBD_REP_ERR_TOO_BIG: the largest
    /// legitimate option is a meta-context request with a few 4 KiB strings.</summary>
    private const int MaxOptionDataBytes = 64 * 1024;

    /// <summary>The id handed out for base:allocation by NBD_OPT_SET_META_CONTEXT (0 is left unused).</summary>
    private const uint AllocationContextId = 1;

    /// <summary>Cap on descriptors in one block status chunk (the spec asks for at most 2^20).</summary>
    private const int MaxBlockDescriptors = 1 << 16;

    /// <summary>READ replies up to this size are copied into the pipe with their header (one
    /// send); larger ones flush the header and write the pooled buffer straight to the socket.</summary>
    private const int InlineReadReplyBytes = 64 * 1024;

    private const NbdHandshakeFlags ServerHandshakeFlags = NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes;

    private delegate bool Decoder<T>(ref SequenceReader<byte> reader, out T value);

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly ConnectionReader _reader; // its own thread, receiving with recv/poll
    private readonly PipeReader _input;
    private readonly PipeWriter _output;
    private readonly IVolumeCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger _logger;
    private readonly NbdMetrics _metrics;
    private readonly Action<NbdConnection> _onClosed;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly DeferredFlush _replies; // the flush of data-less replies, queued behind the work in hand
    private readonly SemaphoreSlim _slots;
    private readonly CancellationTokenSource _abort = new();
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Request tasks still running, plus one held by the reader until it stops.</summary>
    private int _inFlightCount = 1;

    // Negotiated during the handshake, before any request task exists; read-only afterwards.
    private bool _fixedNewstyle;
    private bool _noZeroes;
    private bool _structured;
    private string? _metaContextExportName;
    private IBlockVolume? _volume;
    private bool _blockStatus;

    /// <summary>Block-buffer bytes the reader holds for the WRITE it is reading (reader only).</summary>
    private long _bufferHeld;

    /// <summary>Bytes of a rejected WRITE's payload still to be skipped (reader only).</summary>
    private long _discardBytes;

    public NbdConnection(long id, Socket socket, IVolumeCatalog catalog, NbdServerOptions options, ILogger logger,
        NbdMetrics metrics, Action<NbdConnection> onClosed)
    {
        Id = id;
        _socket = socket;
        _catalog = catalog;
        _options = options;
        _logger = logger;
        _metrics = metrics;
        _onClosed = onClosed;
        _slots = new SemaphoreSlim(options.MaxInFlightRequests, options.MaxInFlightRequests);
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new ConnectionReader(socket, _stream, $"nbd-{id}");
        _input = PipeReader.Create(_reader.Stream, new StreamPipeReaderOptions(bufferSize: 256 * 1024, minimumReadSize: 64 * 1024, leaveOpen: true));
        _output = PipeWriter.Create(_stream, new StreamPipeWriterOptions(minimumBufferSize: 64 * 1024, leaveOpen: true));
        _replies = new DeferredFlush(_writeLock, FlushAsync, e => { NbdLog.ConnectionFailed(_logger, Id, e); Abort(); }, IsTransportFailure, _abort.Token);
    }

    public long Id { get; }

    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>
    /// Runs the connection. Its reader (negotiation, then the request loop) runs on a thread of its own
    /// (<see cref="ConnectionReader"/>) that sleeps in the socket's receive, so a request wakes the thread that
    /// decodes it and starts its task, with no thread-pool hand-off in between (<see cref="ThreadReceiveStream"/>).
    /// Request tasks run on from there to their first wait; replies are written by whichever thread completes
    /// them. A reader that had to wait for something else (every request slot taken) comes back to its thread
    /// before its next read.
    /// </summary>
    public void Start() => Completion = RunAsync();

    /// <summary>Reads served on the reader's own thread, how many of them slept first, and the times the reader
    /// moved onto its thread (tests, diagnostics).</summary>
    public (long Reads, long Sleeps, long Switches) DirectReads => _reader.Counts;

    /// <summary>Stop reading requests; in-flight ones are answered, then the connection closes.</summary>
    public void BeginShutdown()
    {
        _input.CancelPendingRead();
        _reader.StopReceiving(); // a reader asleep in its own receive sees the end of the stream
    }

    /// <summary>Cut the connection now: cancels volume I/O, reads and reply writes.</summary>
    public void Abort()
    {
        try
        {
            _abort.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
        _reader.StopReceiving();
    }

    private CancellationToken AbortToken => _abort.Token;

    private async Task RunAsync()
    {
        await _reader.SwitchTo();
        _metrics.ConnectionOpened();
        NbdLog.ConnectionAccepted(_logger, Id, _socket.RemoteEndPoint);
        try
        {
            if (await NegotiateAsync()) await TransmitAsync();
        }
        catch (NbdProtocolException e)
        {
            NbdLog.ProtocolViolation(_logger, Id, e.Error, e.Message);
            Abort();
        }
        catch (InvariantViolationException e)
        {
            NbdLog.InvariantViolated(_logger, Id, e);
            Abort();
        }
        catch (Exception e)
        {
            NbdLog.ConnectionFailed(_logger, Id, e);
            Abort();
        }
        finally
        {
            await CloseAsync();
            _reader.Stop();
        }
    }

    private async Task CloseAsync()
    {
        ReleaseInFlight();
        await _drained.Task;
        // Under the write lock: a flush asked for may not have run yet (it then does nothing).
        await _replies.CloseAsync(() => _output.CompleteAsync());
        await _input.CompleteAsync();
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        await _stream.DisposeAsync();
        _abort.Dispose();
        _metrics.ConnectionClosed();
        NbdLog.ConnectionClosed(_logger, Id);
        _onClosed(this);
    }

    private void ReleaseInFlight()
    {
        int left = Interlocked.Decrement(ref _inFlightCount);
        Invariant.Assert(left >= 0);
        if (left == 0) _drained.TrySetResult();
    }

    // ------------------------------------------------------------------ handshake

    private enum OptionOutcome { Continue, Transmit, Close }

    /// <summary>Runs option haggling. True: an export was chosen and transmission starts.</summary>
    private async Task<bool> NegotiateAsync()
    {
        if (_catalog is IRefreshingVolumeCatalog refreshing)
        {
            try
            {
                await refreshing.RefreshAsync(AbortToken);
            }
            catch (Exception e) when (e is IOException or TimeoutException)
            {
                NbdLog.CatalogRefreshFailed(_logger, Id, e.Message); // serve what is known
            }
        }
        int n = NbdCodec.WriteGreeting(_output.GetSpan(NbdWire.GreetingBytes), ServerHandshakeFlags);
        _output.Advance(n);
        await FlushAsync();

        var (gotFlags, clientFlags) = await ReadAsync<NbdClientFlags>(NbdCodec.TryReadClientFlags);
        if (!gotFlags)
        {
            NbdLog.PeerClosed(_logger, Id, "handshake");
            return false;
        }
        if ((clientFlags & ~NbdClientFlags.Known) != 0)
        {
            NbdLog.UnknownClientFlags(_logger, Id, (uint)clientFlags);
            return false;
        }
        _fixedNewstyle = clientFlags.HasFlag(NbdClientFlags.FixedNewstyle);
        _noZeroes = clientFlags.HasFlag(NbdClientFlags.NoZeroes);

        while (true)
        {
            var (gotHeader, header) = await ReadAsync<NbdOptionHeader>(NbdCodec.TryReadOptionHeader);
            if (!gotHeader)
            {
                NbdLog.PeerClosed(_logger, Id, "option haggling");
                return false;
            }
            if (!_fixedNewstyle && header.Option != NbdOption.ExportName)
            {
                // A plain-newstyle server must hang up on any other option.
                NbdLog.NotFixedNewstyle(_logger, Id, header.Option);
                return false;
            }
            if (header.Length > MaxOptionDataBytes)
            {
                if (!await SkipAsync(header.Length)) return false;
                if (header.Option == NbdOption.ExportName)
                {
                    NbdLog.UnknownExport(_logger, Id, header.Option, $"<{header.Length} bytes>");
                    return false;
                }
                await ReplyErrorAsync(header.Option, NbdOptionReply.ErrTooBig, $"option data of {header.Length} bytes exceeds {MaxOptionDataBytes}");
                continue;
            }
            var data = await ReadBlockAsync((int)header.Length);
            if (data is null)
            {
                NbdLog.PeerClosed(_logger, Id, "option haggling");
                return false;
            }
            switch (await HandleOptionAsync(header.Option, data))
            {
                case OptionOutcome.Continue: continue;
                case OptionOutcome.Transmit: return true;
                default: return false;
            }
        }
    }

    private async ValueTask<OptionOutcome> HandleOptionAsync(NbdOption option, byte[] data)
    {
        switch (option)
        {
            case NbdOption.ExportName:
                return await HandleExportNameAsync(data);

            case NbdOption.Abort:
                NbdLog.NegotiationAborted(_logger, Id);
                try
                {
                    await ReplyAsync(option, NbdOptionReply.Ack);
                }
                catch (Exception e) when (IsTransportFailure(e))
                {
                    // The client may hang up without waiting for the ACK; both are allowed.
                }
                return OptionOutcome.Close;

            case NbdOption.List:
                if (data.Length != 0)
                {
                    await ReplyErrorAsync(option, NbdOptionReply.ErrInvalid, "NBD_OPT_LIST takes no data");
                    return OptionOutcome.Continue;
                }
                foreach (var volume in _catalog.Volumes)
                {
                    string description = Describe(volume);
                    int size = NbdCodec.OptionReplyBytes(4 + Encoding.UTF8.GetByteCount(volume.Name) + Encoding.UTF8.GetByteCount(description));
                    _output.Advance(NbdCodec.WriteServerReply(_output.GetSpan(size), option, volume.Name, description));
                }
                await ReplyAsync(option, NbdOptionReply.Ack);
                return OptionOutcome.Continue;

            case NbdOption.Info:
            case NbdOption.Go:
                return await HandleInfoOrGoAsync(option, data);

            case NbdOption.StructuredReply:
                if (data.Length != 0)
                {
                    await ReplyErrorAsync(option, NbdOptionReply.ErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data");
                }
                else if (_structured)
                {
                    await ReplyErrorAsync(option, NbdOptionReply.ErrInvalid, "structured replies are already negotiated");
                }
                else
                {
                    _structured = true;
                    await ReplyAsync(option, NbdOptionReply.Ack);
                }
                return OptionOutcome.Continue;

            case NbdOption.ListMetaContext:
            case NbdOption.SetMetaContext:
                return await HandleMetaContextAsync(option, data);

            default:
                // STARTTLS, EXTENDED_HEADERS and anything newer: clients probe these and fall back.
                NbdLog.OptionUnsupported(_logger, Id, option);
                await ReplyErrorAsync(option, NbdOptionReply.ErrUnsupported, $"option {(uint)option} is not supported");
                return OptionOutcome.Continue;
        }
    }

    private async ValueTask<OptionOutcome> HandleExportNameAsync(byte[] data)
    {
        // EXPORT_NAME has no error reply: an unknown export can only be answered by hanging up.
        if (!TryDecodeName(data, out string name) || !_catalog.TryGetVolume(name, out var volume))
        {
            NbdLog.UnknownExport(_logger, Id, NbdOption.ExportName, name);
            return OptionOutcome.Close;
        }
        var flags = TransmissionFlags(volume);
        int size = NbdWire.ExportNameReplyBytes + NbdWire.ExportNameReplyPaddingBytes;
        _output.Advance(NbdCodec.WriteExportNameReply(_output.GetSpan(size), (ulong)volume.SizeBytes, flags, _noZeroes));
        await FlushAsync();
        SelectExport(volume);
        return OptionOutcome.Transmit;
    }

    private async ValueTask<OptionOutcome> HandleInfoOrGoAsync(NbdOption option, byte[] data)
    {
        NbdExportRequest request;
        try
        {
            request = NbdCodec.ReadExportRequest(data);
        }
        catch (NbdProtocolException e)
        {
            NbdLog.OptionRejected(_logger, Id, option, NbdOptionReply.ErrInvalid, e.Message);
            await ReplyErrorAsync(option, NbdOptionReply.ErrInvalid, e.Message);
            return OptionOutcome.Continue;
        }
        if (!_catalog.TryGetVolume(request.Name, out var volume))
        {
            NbdLog.UnknownExport(_logger, Id, option, request.Name);
            await ReplyErrorAsync(option, NbdOptionReply.ErrUnknown, $"no export named '{request.Name}'");
            return OptionOutcome.Continue;
        }

        // NBD_INFO_EXPORT is mandatory; block sizes are always sent because Duet enforces
        // non-default ones (512-byte alignment, a maximum payload). Clients ignore what they
        // did not ask for.
        _output.Advance(NbdCodec.WriteInfoExport(_output.GetSpan(NbdCodec.OptionReplyBytes(12)), option,
            (ulong)volume.SizeBytes, TransmissionFlags(volume)));
        _output.Advance(NbdCodec.WriteInfoBlockSize(_output.GetSpan(NbdCodec.OptionReplyBytes(14)), option,
            Units.SectorBytes, Units.BlockBytes, (uint)_options.MaxPayloadBytes));
        if (request.WantsName)
        {
            int size = NbdCodec.OptionReplyBytes(2 + Encoding.UTF8.GetByteCount(volume.Name));
            _output.Advance(NbdCodec.WriteInfoText(_output.GetSpan(size), option, NbdInfo.Name, volume.Name));
        }
        if (request.WantsDescription)
        {
            string description = Describe(volume);
            int size = NbdCodec.OptionReplyBytes(2 + Encoding.UTF8.GetByteCount(description));
            _output.Advance(NbdCodec.WriteInfoText(_output.GetSpan(size), option, NbdInfo.Description, description));
        }
        await ReplyAsync(option, NbdOptionReply.Ack);
        if (option == NbdOption.Info) return OptionOutcome.Continue;
        SelectExport(volume);
        return OptionOutcome.Transmit;
    }

    private async ValueTask<OptionOutcome> HandleMetaContextAsync(NbdOption option, byte[] data)
    {
        bool isSet = option == NbdOption.SetMetaContext;
        // SET replaces the previous selection even when it fails.
        if (isSet) _metaContextExportName = null;
        if (!_structured)
        {
            NbdLog.OptionRejected(_logger, Id, option, NbdOptionReply.ErrInvalid, "structured replies not negotiated");
            await ReplyErrorAsync(option, NbdOptionReply.ErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY first");
            return OptionOutcome.Continue;
        }
        NbdMetaContextRequest request;
        try
        {
            request = NbdCodec.ReadMetaContextRequest(data);
        }
        catch (NbdProtocolException e)
        {
            NbdLog.OptionRejected(_logger, Id, option, NbdOptionReply.ErrInvalid, e.Message);
            await ReplyErrorAsync(option, NbdOptionReply.ErrInvalid, e.Message);
            return OptionOutcome.Continue;
        }
        if (!_catalog.TryGetVolume(request.ExportName, out _))
        {
            NbdLog.UnknownExport(_logger, Id, option, request.ExportName);
            await ReplyErrorAsync(option, NbdOptionReply.ErrUnknown, $"no export named '{request.ExportName}'");
            return OptionOutcome.Continue;
        }

        bool matched = false;
        if (isSet)
        {
            // Only the exact name selects; "base:" and unknown namespaces are ignored.
            foreach (var query in request.Queries) matched |= query == NbdWire.BaseAllocationContext;
        }
        else
        {
            matched = request.Queries.Count == 0;
            foreach (var query in request.Queries)
                matched |= query == NbdWire.BaseAllocationContext || query == NbdWire.BaseNamespaceQuery;
        }
        if (matched)
        {
            // LIST replies carry id 0 (reserved); SET hands out the id BLOCK_STATUS chunks will use.
            uint id = isSet ? AllocationContextId : 0;
            int size = NbdCodec.OptionReplyBytes(4 + NbdWire.BaseAllocationContext.Length);
            _output.Advance(NbdCodec.WriteMetaContextReply(_output.GetSpan(size), option, id, NbdWire.BaseAllocationContext));
            if (isSet) _metaContextExportName = request.ExportName;
        }
        await ReplyAsync(option, NbdOptionReply.Ack);
        return OptionOutcome.Continue;
    }

    private void SelectExport(IBlockVolume volume)
    {
        _volume = volume;
        _blockStatus = _structured && string.Equals(_metaContextExportName, volume.Name, StringComparison.Ordinal);
        NbdLog.ExportSelected(_logger, Id, volume.Name, _structured, _blockStatus);
    }

    private NbdTransmissionFlags TransmissionFlags(IBlockVolume volume)
    {
        // CAN_MULTI_CONN is honest: a volume flush makes every completed write durable,
        // whichever connection it came from.
        var flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua
                    | NbdTransmissionFlags.CanMultiConn;
        flags |= volume.ReadOnly
            ? NbdTransmissionFlags.ReadOnly
            : NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes;
        // Every READ is answered in one chunk, so DF costs nothing, but it needs structured replies.
        if (_structured) flags |= NbdTransmissionFlags.SendDf;
        return flags;
    }

    private static string Describe(IBlockVolume volume) =>
        $"Duet volume {volume.Name}, {Units.FormatSize(volume.SizeBytes)}{(volume.ReadOnly ? ", read-only" : "")}";

    private static bool TryDecodeName(byte[] data, out string name)
    {
        try
        {
            name = new UTF8Encoding(false, true).GetString(data);
            return data.Length <= NbdWire.MaxStringBytes;
        }
        catch (DecoderFallbackException)
        {
            name = "<invalid UTF-8>";
            return false;
        }
    }

    private ValueTask ReplyAsync(NbdOption option, NbdOptionReply type)
    {
        _output.Advance(NbdCodec.WriteOptionReplyHeader(_output.GetSpan(NbdWire.OptionReplyHeaderBytes), option, type, 0));
        return FlushAsync();
    }

    private ValueTask ReplyErrorAsync(NbdOption option, NbdOptionReply type, string message)
    {
        int size = NbdCodec.OptionReplyBytes(Encoding.UTF8.GetByteCount(message));
        _output.Advance(NbdCodec.WriteOptionReplyText(_output.GetSpan(size), option, type, message));
        return FlushAsync();
    }

    /// <summary>Decodes one item from the pipe. False: the peer closed, or the server is stopping.</summary>
    private async ValueTask<(bool Ok, T Value)> ReadAsync<T>(Decoder<T> decode)
    {
        long bufferWanted = 0;
        while (true)
        {
            if (bufferWanted > 0)
            {
                await _options.WriteBuffer!.AcquireAsync(bufferWanted, AbortToken);
                _bufferHeld = bufferWanted;
                bufferWanted = 0;
            }
            var result = await _input.ReadAsync(AbortToken);
            var buffer = result.Buffer;
            var consumed = buffer.Start;
            var examined = buffer.End;
            try
            {
                if (result.IsCanceled) return (false, default!);
                var reader = new SequenceReader<byte>(buffer);
                if (decode(ref reader, out var value))
                {
                    consumed = examined = reader.Position;
                    return (true, value);
                }
                if (result.IsCompleted) return (false, default!);
            }
            finally
            {
                _input.AdvanceTo(consumed, examined);
            }
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes of option data (handshake only, so it may allocate).</summary>
    private async ValueTask<byte[]?> ReadBlockAsync(int count)
    {
        if (count == 0) return [];
        long bufferWanted = 0;
        while (true)
        {
            if (bufferWanted > 0)
            {
                await _options.WriteBuffer!.AcquireAsync(bufferWanted, AbortToken);
                _bufferHeld = bufferWanted;
                bufferWanted = 0;
            }
            var result = await _input.ReadAsync(AbortToken);
            var buffer = result.Buffer;
            var consumed = buffer.Start;
            var examined = buffer.End;
            try
            {
                if (result.IsCanceled) return null;
                if (buffer.Length >= count)
                {
                    var block = new byte[count];
                    buffer.Slice(0, count).CopyTo(block);
                    consumed = examined = buffer.GetPosition(count);
                    return block;
                }
                if (result.IsCompleted) return null;
            }
            finally
            {
                _input.AdvanceTo(consumed, examined);
            }
        }
    }

    /// <summary>Skips <paramref name="count"/> bytes without buffering them. False at end of stream.</summary>
    private async ValueTask<bool> SkipAsync(long count)
    {
        while (count > 0)
        {
            var result = await _input.ReadAsync(AbortToken);
            var buffer = result.Buffer;
            var consumed = buffer.Start;
            try
            {
                if (result.IsCanceled) return false;
                long n = Math.Min(count, buffer.Length);
                consumed = buffer.GetPosition(n);
                count -= n;
                if (count > 0 && result.IsCompleted) return false;
            }
            finally
            {
                _input.AdvanceTo(consumed);
            }
        }
        return true;
    }

    // ------------------------------------------------------------------ transmission

    private enum ReadStep { Request, Stop }

    private async Task TransmitAsync()
    {
        Invariant.Assert(_volume is not null);
        try
        {
            await TransmitLoopAsync();
        }
        finally
        {
            // A write whose payload never arrived gives its block-buffer bytes back.
            if (_bufferHeld > 0) _options.WriteBuffer!.Release(_bufferHeld);
            _bufferHeld = 0;
        }
    }

    private async Task TransmitLoopAsync()
    {
        while (true)
        {
            await _slots.WaitAsync(AbortToken);
            bool slotHandedOver = false;
            try
            {
                var (step, request, payload, error, reason) = await ReadRequestAsync();
                if (step == ReadStep.Stop) return;
                _metrics.Request(request.Command);
                if (request.Command == NbdCommand.Disconnect && error == NbdError.None)
                {
                    NbdLog.DisconnectRequested(_logger, Id);
                    return;
                }
                if (error != NbdError.None)
                {
                    Invariant.Assert(payload is null);
                    NbdLog.RequestRejected(_logger, Id, request.Command, request.Offset, request.Length, request.Flags, error, reason!);
                    _metrics.Error(request.Command, error);
                    await SendErrorAsync(request, error, reason!);
                    continue;
                }
                Interlocked.Increment(ref _inFlightCount);
                slotHandedOver = true;
                long buffered = _bufferHeld;
                _bufferHeld = 0;
                _ = ExecuteAsync(request, payload, buffered);
            }
            finally
            {
                if (!slotHandedOver) _slots.Release();
            }
        }
    }

    /// <summary>Takes the next request from the pipe, with its WRITE payload in a pooled buffer.
    /// Invalid requests come back with an error and no payload (a rejected WRITE's payload is
    /// skipped on later reads).</summary>
    private async ValueTask<(ReadStep Step, NbdRequest Request, byte[]? Payload, NbdError Error, string? Reason)> ReadRequestAsync()
    {
        long bufferWanted = 0;
        while (true)
        {
            if (bufferWanted > 0)
            {
                await _options.WriteBuffer!.AcquireAsync(bufferWanted, AbortToken);
                _bufferHeld = bufferWanted;
                bufferWanted = 0;
            }
            await _reader.SwitchTo(); // back from a wait that resumed on the pool
            var result = await _input.ReadAsync(AbortToken);
            var buffer = result.Buffer;
            var consumed = buffer.Start;
            var examined = buffer.End;
            try
            {
                if (result.IsCanceled) return (ReadStep.Stop, default, null, NbdError.None, null);
                if (_discardBytes > 0)
                {
                    long skip = Math.Min(_discardBytes, buffer.Length);
                    consumed = examined = buffer.GetPosition(skip);
                    _discardBytes -= skip;
                    if (_discardBytes > 0 && result.IsCompleted) return Ended("a rejected write payload");
                    continue;
                }
                var reader = new SequenceReader<byte>(buffer);
                if (!NbdCodec.TryReadRequest(ref reader, out var request))
                {
                    if (result.IsCompleted)
                    {
                        if (!buffer.IsEmpty) NbdLog.PeerClosed(_logger, Id, "a request header");
                        return (ReadStep.Stop, default, null, NbdError.None, null);
                    }
                    continue;
                }
                var (error, reason) = Validate(request);
                byte[]? payload = null;
                if (request.Command == NbdCommand.Write)
                {
                    if (error != NbdError.None)
                    {
                        // The payload must still leave the wire so the next header lines up.
                        _discardBytes = request.Length;
                    }
                    else
                    {
                        int length = (int)request.Length;
                        if (_options.WriteBuffer is not null && _bufferHeld == 0)
                        {
                            // Block buffer (AW-2): wait for room before taking the payload off the
                            // wire; the header is decoded again afterwards.
                            bufferWanted = length;
                            examined = consumed; // read the same bytes again at once
                            continue;
                        }
                        if (reader.Remaining < length)
                        {
                            if (result.IsCompleted) return Ended("a write payload");
                            continue; // wait for the whole payload; the header is decoded again then
                        }
                        payload = ArrayPool<byte>.Shared.Rent(length);
                        reader.UnreadSequence.Slice(0, length).CopyTo(payload);
                        reader.Advance(length);
                    }
                }
                consumed = examined = reader.Position;
                return (ReadStep.Request, request, payload, error, reason);
            }
            finally
            {
                _input.AdvanceTo(consumed, examined);
            }
        }

        (ReadStep, NbdRequest, byte[]?, NbdError, string?) Ended(string what)
        {
            NbdLog.PeerClosed(_logger, Id, what);
            return (ReadStep.Stop, default, null, NbdError.None, null);
        }
    }

    /// <summary>Edge validation: every way a client request can be wrong, with the protocol's error.</summary>
    private (NbdError Error, string? Reason) Validate(in NbdRequest request)
    {
        var volume = _volume!;
        var command = request.Command;
        bool writes = command is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes;
        var allowed = NbdCommandFlags.Fua;
        switch (command)
        {
            case NbdCommand.Read:
                if (_structured) allowed |= NbdCommandFlags.DontFragment;
                break;
            case NbdCommand.WriteZeroes:
                allowed |= NbdCommandFlags.NoHole;
                break;
            case NbdCommand.BlockStatus:
                allowed |= NbdCommandFlags.ReqOne;
                break;
            case NbdCommand.Write:
            case NbdCommand.Disconnect:
            case NbdCommand.Flush:
            case NbdCommand.Trim:
                break;
            default:
                return (NbdError.Inval, $"unknown or unsupported command {(ushort)command}");
        }
        if ((request.Flags & ~allowed) != 0)
            return (NbdError.Inval, $"flags 0x{(ushort)request.Flags:x4} are not valid for {NbdMetrics.CommandName(command)}");
        if (command == NbdCommand.Disconnect) return (NbdError.None, null);
        if (writes && volume.ReadOnly) return (NbdError.Perm, $"export '{volume.Name}' is read-only");
        if (command == NbdCommand.Flush)
        {
            return request.Offset == 0 && request.Length == 0
                ? (NbdError.None, null)
                : (NbdError.Inval, "flush must have offset and length 0");
        }
        if (command == NbdCommand.BlockStatus && !_blockStatus)
            return (NbdError.Inval, "no metadata context was selected for this export");
        if (command is NbdCommand.Read or NbdCommand.Write && request.Length > (uint)_options.MaxPayloadBytes)
            return (NbdError.Inval, $"length {request.Length} exceeds the maximum payload of {_options.MaxPayloadBytes} bytes");
        if (request.Length == 0) return (NbdError.Inval, "length is zero");
        if (request.Offset % Units.SectorBytes != 0 || request.Length % Units.SectorBytes != 0)
            return (NbdError.Inval, $"offset and length must be multiples of {Units.SectorBytes}");
        ulong size = (ulong)volume.SizeBytes;
        if (request.Offset > size || request.Length > size - request.Offset)
        {
            var error = command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpc : NbdError.Inval;
            return (error, $"range [{request.Offset}, {request.Offset + request.Length}) is beyond the export size {size}");
        }
        return (NbdError.None, null);
    }

    private async Task ExecuteAsync(NbdRequest request, byte[]? payload, long buffered)
    {
        var volume = _volume!;
        byte[]? data = payload;
        try
        {
            long offset = (long)request.Offset;
            int length = (int)Math.Min(request.Length, int.MaxValue);
            bool fua = request.Flags.HasFlag(NbdCommandFlags.Fua);
            NbdError error = NbdError.None;
            string? reason = null;
            IReadOnlyList<AllocationExtent>? extents = null;
            try
            {
                switch (request.Command)
                {
                    case NbdCommand.Read:
                        data = ArrayPool<byte>.Shared.Rent(length);
                        await volume.ReadAsync(offset, data.AsMemory(0, length), AbortToken);
                        break;
                    case NbdCommand.Write:
                        await volume.WriteAsync(offset, data.AsMemory(0, length), fua, AbortToken);
                        _metrics.BytesWritten(length);
                        break;
                    case NbdCommand.Flush:
                        await volume.FlushAsync(AbortToken);
                        break;
                    case NbdCommand.Trim:
                        await volume.TrimAsync(offset, request.Length, AbortToken);
                        if (fua) await volume.FlushAsync(AbortToken);
                        break;
                    case NbdCommand.WriteZeroes:
                        await volume.WriteZeroesAsync(offset, request.Length, fua, AbortToken);
                        break;
                    case NbdCommand.BlockStatus:
                        extents = await volume.GetAllocationAsync(offset, request.Length, AbortToken);
                        break;
                    default:
                        Invariant.Fail($"unvalidated command {request.Command}");
                        break;
                }
            }
            catch (BlockIoException e)
            {
                error = NbdErrors.FromBlockError(e.Kind, request.Command);
                reason = e.Message;
                NbdLog.VolumeFailed(_logger, Id, request.Command, request.Offset, request.Length, volume.Name, e.Kind, error, e.Message);
            }
            catch (Exception e) when (e is not InvariantViolationException && !_abort.IsCancellationRequested)
            {
                error = NbdError.Io;
                reason = "internal error";
                NbdLog.RequestCrashed(_logger, Id, request.Command, request.Offset, request.Length, e);
            }

            if (error != NbdError.None)
            {
                _metrics.Error(request.Command, error);
                await SendErrorAsync(request, error, reason!);
            }
            else if (request.Command == NbdCommand.Read)
            {
                await SendReadAsync(request, data!);
                _metrics.BytesRead(length);
            }
            else if (request.Command == NbdCommand.BlockStatus)
            {
                await SendBlockStatusAsync(request, extents!);
            }
            else
            {
                await SendDoneAsync(request);
            }
        }
        catch (InvariantViolationException e)
        {
            NbdLog.InvariantViolated(_logger, Id, e);
            Abort();
        }
        catch (Exception e)
        {
            // The transport failed or the connection was cut; there is no one to answer.
            NbdLog.ConnectionFailed(_logger, Id, e);
            Abort();
        }
        finally
        {
            if (data is not null) ArrayPool<byte>.Shared.Return(data);
            if (buffered > 0) _options.WriteBuffer!.Release(buffered);
            _slots.Release();
            ReleaseInFlight();
        }
    }

    // ------------------------------------------------------------------ replies (under the write lock)

    private async ValueTask SendReadAsync(NbdRequest request, byte[] data)
    {
        int length = (int)request.Length;
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            var header = _output.GetSpan(NbdWire.StructuredReplyHeaderBytes + NbdWire.OffsetDataPrefixBytes);
            _output.Advance(_structured
                ? NbdCodec.WriteOffsetDataPrefix(header, NbdReplyFlags.Done, request.Cookie, request.Offset, (uint)length)
                : NbdCodec.WriteSimpleReply(header, NbdError.None, request.Cookie));
            if (length <= InlineReadReplyBytes)
            {
                _output.Write(data.AsSpan(0, length));
                await FlushAsync();
            }
            else
            {
                // The pipe is empty after the flush, so the data can go straight to the socket.
                await FlushAsync();
                await _stream.WriteAsync(data.AsMemory(0, length), AbortToken);
            }
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>
    /// A data-less success: the reply goes into the pipe and one flush is queued behind the work in hand,
    /// so the replies of requests that complete together (a mirrored batch acknowledges a dozen writes in
    /// turn on one thread) leave in one socket write rather than one each.
    /// </summary>
    private async ValueTask SendDoneAsync(NbdRequest request)
    {
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            var span = _output.GetSpan(NbdWire.StructuredReplyHeaderBytes);
            _output.Advance(_structured
                ? NbdCodec.WriteStructuredReplyHeader(span, NbdReplyFlags.Done, NbdReplyType.None, request.Cookie, 0)
                : NbdCodec.WriteSimpleReply(span, NbdError.None, request.Cookie));
            _replies.Request();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    private async ValueTask SendErrorAsync(NbdRequest request, NbdError error, string message)
    {
        Invariant.Assert(error != NbdError.None);
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            var span = _output.GetSpan(NbdCodec.MaxErrorChunkBytes);
            _output.Advance(_structured
                ? NbdCodec.WriteErrorChunk(span, NbdReplyFlags.Done, request.Cookie, error, message)
                : NbdCodec.WriteSimpleReply(span, error, request.Cookie));
            await FlushAsync();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    private async ValueTask SendBlockStatusAsync(NbdRequest request, IReadOnlyList<AllocationExtent> extents)
    {
        Invariant.Assert(_structured);
        Invariant.Assert(extents.Count > 0);
        int max = request.Flags.HasFlag(NbdCommandFlags.ReqOne) ? 1 : MaxBlockDescriptors;
        var descriptors = ArrayPool<NbdBlockDescriptor>.Shared.Rent(Math.Min(max, extents.Count));
        try
        {
            // Clip to the request (REQ_ONE requires it; elsewhere it keeps lengths within u32)
            // and merge neighbours with equal status, as the spec prefers.
            long remaining = request.Length;
            int count = 0;
            for (int i = 0; i < extents.Count && remaining > 0; i++)
            {
                var extent = extents[i];
                Invariant.Assert(extent.Length > 0);
                uint length = (uint)Math.Min(extent.Length, remaining);
                uint state = (extent.Flags.HasFlag(AllocationFlags.Hole) ? (uint)NbdAllocationState.Hole : 0)
                             | (extent.Flags.HasFlag(AllocationFlags.Zero) ? (uint)NbdAllocationState.Zero : 0);
                if (count > 0 && descriptors[count - 1].Flags == state)
                {
                    descriptors[count - 1] = descriptors[count - 1] with { Length = descriptors[count - 1].Length + length };
                }
                else
                {
                    if (count == max) break;
                    descriptors[count++] = new NbdBlockDescriptor(length, state);
                }
                remaining -= length;
            }
            Invariant.Assert(count >= 1);

            await _writeLock.WaitAsync(AbortToken);
            try
            {
                var span = _output.GetSpan(NbdCodec.BlockStatusChunkBytes(count));
                _output.Advance(NbdCodec.WriteBlockStatusChunk(span, NbdReplyFlags.Done, request.Cookie, AllocationContextId,
                    descriptors.AsSpan(0, count)));
                await FlushAsync();
            }
            finally
            {
                _writeLock.Release();
            }
        }
        finally
        {
            ArrayPool<NbdBlockDescriptor>.Shared.Return(descriptors);
        }
    }

    private async ValueTask FlushAsync()
    {
        var result = await _output.FlushAsync(AbortToken);
        if (result.IsCanceled || result.IsCompleted) throw new IOException("the connection is closed");
    }

    private static bool IsTransportFailure(Exception e) =>
        e is IOException or SocketException or ObjectDisposedException or OperationCanceledException;
}
