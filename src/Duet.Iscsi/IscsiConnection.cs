using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Duet.Core;
using Duet.Iscsi.Scsi;
using Microsoft.Extensions.Logging;

namespace Duet.Iscsi;

// One TCP connection: the login phase, then the full feature phase of its session.
//
// Concurrency model. One reader (RunAsync and the handlers it calls) owns the PipeReader and
// every task still gathering Data-Out: it decodes a PDU, checks it against the session's CmdSN
// window, copies immediate and solicited data into the task's pooled buffer, sends R2Ts, and
// once a task has all its data hands it to the device on its own task, then goes back for the
// next PDU. Tasks finish in any order and serialise their Data-In and SCSI Response PDUs through
// one SemaphoreSlim (the write lock), which also assigns StatSN, so StatSN goes out in order.
//
//   socket -> PipeReader -> reader --(ScsiCommand: CDB + all Data-Out)--> device task x N
//                 ^          | R2T, Reject, NOP-In, TMF/Text/Logout responses      | Data-In, Response
//   socket <- PipeWriter <- write lock (StatSN++) <------------------------------------+
//
// Bounded memory: the CmdSN window (IscsiServerOptions.CommandWindow) caps tasks per session,
// MaxTransferBytes caps each task's buffer, our MaxRecvDataSegmentLength caps each PDU.
//
// Closing. Logout, end of stream and server shutdown stop the reader; tasks already with the
// device finish and are answered, then the socket closes. A protocol error the connection cannot
// recover from at ErrorRecoveryLevel 0 (a header digest error, a broken Data-Out sequence) cuts
// the connection and with it the session.
internal sealed partial class IscsiConnection
{
    /// <summary>Text (login or Text Request) an initiator may send with the C bit before we give up.</summary>
    private const int MaxTextBytes = 64 * 1024;

    /// <summary>Data-In queued in the pipe beyond this is flushed before more is written.</summary>
    private const int FlushThresholdBytes = 256 * 1024;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly ConnectionReader _reader; // its own thread, receiving with recv/poll
    private readonly PipeReader _input;
    private readonly PipeWriter _output;
    private readonly IscsiServer _server;
    private readonly IscsiServerOptions _options;
    private readonly ILogger _logger;
    private readonly IscsiMetrics _metrics;
    private readonly IScsiDevice _device;
    private readonly Action<IscsiConnection> _onClosed;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly DeferredFlush _responses; // the flush of data-less responses, queued behind the work in hand
    private readonly CancellationTokenSource _abort = new();
    private readonly CancellationTokenSource _readerDone = new();
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Background work (device tasks, TMF completions, the ping loop), plus one held by the reader.</summary>
    private int _inFlightCount = 1;

    private IscsiParameters _parameters = new();
    private IscsiSession? _session;
    private bool _digests;

    /// <summary>The next StatSN (under the write lock).</summary>
    private uint _statSn;

    /// <summary>The CID the connection logged in with.</summary>
    private ushort _cid;

    public IscsiConnection(long id, Socket socket, IscsiServer server, Action<IscsiConnection> onClosed)
    {
        Id = id;
        _socket = socket;
        _server = server;
        _options = server.Options;
        _logger = server.Logger;
        _metrics = server.Metrics;
        _device = server.Device;
        _onClosed = onClosed;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new ConnectionReader(socket, _stream, $"iscsi-{id}");
        _input = PipeReader.Create(_reader.Stream, new StreamPipeReaderOptions(bufferSize: 256 * 1024, minimumReadSize: 64 * 1024, leaveOpen: true));
        _output = PipeWriter.Create(_stream, new StreamPipeWriterOptions(minimumBufferSize: 64 * 1024, leaveOpen: true));
        _responses = new DeferredFlush(_writeLock, FlushAsync, e => { IscsiLog.ConnectionFailed(_logger, Id, e); Abort(); }, IsTransportFailure, _abort.Token);
    }

    public long Id { get; }

    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>Runs the connection: login on the thread pool (its reads keep their time limit), then the full
    /// feature phase's reader on a thread of its own (<see cref="ConnectionReader"/>), as NBD's.</summary>
    public void Start() => Completion = RunAsync();

    /// <summary>Reads served on the reader's own thread, how many of them slept first, and the times the reader
    /// moved onto its thread (tests, diagnostics).</summary>
    public (long Reads, long Sleeps, long Switches) DirectReads => _reader.Counts;

    /// <summary>Stop reading PDUs; commands with the device are answered, then the connection closes.</summary>
    public void BeginShutdown()
    {
        _input.CancelPendingRead();
        _reader.StopReceiving(); // a reader asleep in its own receive sees the end of the stream
    }

    /// <summary>Cut the connection now: cancels device tasks, reads and writes.</summary>
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
        await Task.Yield();
        _metrics.ConnectionOpened();
        IscsiLog.ConnectionAccepted(_logger, Id, _socket.RemoteEndPoint);
        try
        {
            if (await LoginAsync()) await FullFeatureAsync();
        }
        catch (InvariantViolationException e)
        {
            IscsiLog.InvariantViolated(_logger, Id, e);
            Abort();
        }
        catch (Exception e)
        {
            if (!_abort.IsCancellationRequested) IscsiLog.ConnectionFailed(_logger, Id, e);
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
        try
        {
            _readerDone.Cancel();
        }
        catch (AggregateException)
        {
        }
        DropGatheringTasks();
        ReleaseInFlight();
        await _drained.Task;
        // Under the write lock: a flush asked for may not have run yet (it then does nothing).
        await _responses.CloseAsync(() => _output.CompleteAsync());
        await _input.CompleteAsync();
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        await _stream.DisposeAsync();
        if (_session is { } session)
        {
            _server.CloseSession(session);
            if (session.Nexus is { } nexus)
            {
                try
                {
                    _device.NexusLost(nexus);
                }
                catch (Exception e)
                {
                    IscsiLog.ConnectionFailed(_logger, Id, e);
                }
            }
        }
        _abort.Dispose();
        _readerDone.Dispose();
        _metrics.ConnectionClosed();
        IscsiLog.ConnectionClosed(_logger, Id);
        _onClosed(this);
    }

    private void ReleaseInFlight()
    {
        int left = Interlocked.Decrement(ref _inFlightCount);
        Invariant.Assert(left >= 0);
        if (left == 0) _drained.TrySetResult();
    }

    // ------------------------------------------------------------------ reading PDUs

    /// <summary>A PDU taken off the wire; its data and AHS are in pooled buffers until Dispose.</summary>
    private struct Pdu : IDisposable
    {
        public IscsiHeader Header;
        public IscsiFrameError Error;
        private byte[]? _data;
        private int _dataLength;
        private byte[]? _ahs;
        private int _ahsLength;

        public Pdu(in IscsiFrame frame)
        {
            Header = frame.Header;
            Error = frame.Error;
            _dataLength = (int)frame.Data.Length;
            if (_dataLength > 0)
            {
                _data = ArrayPool<byte>.Shared.Rent(_dataLength);
                frame.Data.CopyTo(_data);
            }
            _ahsLength = (int)frame.Ahs.Length;
            if (_ahsLength > 0)
            {
                _ahs = ArrayPool<byte>.Shared.Rent(_ahsLength);
                frame.Ahs.CopyTo(_ahs);
            }
        }

        public readonly ReadOnlySpan<byte> Data => _data is null ? default : _data.AsSpan(0, _dataLength);
        public readonly ReadOnlyMemory<byte> DataMemory => _data is null ? default : _data.AsMemory(0, _dataLength);
        public readonly ReadOnlySpan<byte> Ahs => _ahs is null ? default : _ahs.AsSpan(0, _ahsLength);

        public void Dispose()
        {
            if (_data is not null) ArrayPool<byte>.Shared.Return(_data);
            if (_ahs is not null) ArrayPool<byte>.Shared.Return(_ahs);
            _data = _ahs = null;
        }
    }

    /// <summary>The next PDU, or false at end of stream / shutdown. A frame error comes back as a
    /// PDU with <see cref="Pdu.Error"/> set (and, for header errors, no data).</summary>
    private async ValueTask<(bool Ok, Pdu Pdu)> ReadPduAsync(int maxDataSegment, CancellationToken cancellationToken)
    {
        while (true)
        {
            var result = await _input.ReadAsync(cancellationToken);
            var buffer = result.Buffer;
            var consumed = buffer.Start;
            var examined = buffer.End;
            try
            {
                if (result.IsCanceled) return (false, default);
                var reader = new SequenceReader<byte>(buffer);
                if (!IscsiCodec.TryReadPdu(ref reader, _digests && _parameters.HeaderDigest, _digests && _parameters.DataDigest, maxDataSegment, out var frame))
                {
                    if (result.IsCompleted)
                    {
                        if (!buffer.IsEmpty) IscsiLog.PeerClosed(_logger, Id, "a PDU");
                        return (false, default);
                    }
                    continue;
                }
                consumed = examined = reader.Position;
                return (true, new Pdu(frame));
            }
            finally
            {
                _input.AdvanceTo(consumed, examined);
            }
        }
    }

    // ------------------------------------------------------------------ writing PDUs (under the write lock)

    /// <summary>Writes one PDU into the pipe (not flushed). Caller holds the write lock.</summary>
    private void WritePdu(in IscsiHeader header, ReadOnlySpan<byte> data)
    {
        bool hd = _digests && _parameters.HeaderDigest, dd = _digests && _parameters.DataDigest;
        int size = IscsiCodec.PduBytes(data.Length, hd, dd);
        int n = IscsiCodec.WritePdu(_output.GetSpan(size), header, data, hd, dd);
        _output.Advance(n);
    }

    /// <summary>Fills StatSN (advancing it when <paramref name="advance"/>), ExpCmdSN and MaxCmdSN.
    /// Caller holds the write lock.</summary>
    private void Stamp(ref IscsiHeader header, bool advance)
    {
        header.StatSN = advance ? _statSn++ : _statSn;
        if (_session is { } session)
        {
            var (exp, max) = session.Window;
            header.ExpCmdSN = exp;
            header.MaxCmdSN = max;
        }
    }

    /// <summary>Sends one PDU with StatSN / ExpCmdSN / MaxCmdSN stamped, and flushes.</summary>
    private async ValueTask SendAsync(IscsiHeader header, ReadOnlyMemory<byte> data, bool advanceStatSn)
    {
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            Stamp(ref header, advanceStatSn);
            WritePdu(header, data.Span);
            await FlushAsync();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    private async ValueTask FlushAsync()
    {
        var result = await _output.FlushAsync(AbortToken);
        if (result.IsCanceled || result.IsCompleted) throw new IOException("the connection is closed");
    }

    /// <summary>Answers a PDU with Reject (RFC 7143 §11.17): the rejected BHS is the data.</summary>
    private async ValueTask RejectAsync(IscsiHeader rejected, RejectReason reason, string detail)
    {
        IscsiLog.PduRejected(_logger, Id, rejected.Opcode, reason, detail);
        _metrics.Rejected(reason);
        byte[] bhs = ArrayPool<byte>.Shared.Rent(IscsiWire.BhsBytes);
        try
        {
            IscsiCodec.WriteHeader(bhs, rejected);
            var header = new IscsiHeader
            {
                Opcode = IscsiOpcode.Reject,
                Flags = IscsiWire.FinalBit,
                Byte2 = (byte)reason,
                InitiatorTaskTag = IscsiWire.ReservedTag,
            };
            await SendAsync(header, bhs.AsMemory(0, IscsiWire.BhsBytes), advanceStatSn: true);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(bhs);
        }
    }

    private static bool IsTransportFailure(Exception e) =>
        e is IOException or SocketException or ObjectDisposedException or OperationCanceledException;
}
