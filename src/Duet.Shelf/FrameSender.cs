using System.Buffers;
using System.Net.Sockets;
using Duet.Core;

namespace Duet.Shelf;

// The sending half of one shelf connection, used by both ends (ShelfChannel for requests,
// ShelfConnection for responses).
//
// Many tasks send frames at once (a destage round writes every member of several stripes
// together). Each frame is encoded whole into the filling buffer under a short lock. The task
// that finds the socket idle becomes the sender: it swaps the filling buffer for the sending
// one and writes it with one socket call, then does the same again for whatever queued
// meanwhile, until nothing is left. The others return at once: their frame goes out with the
// sender's next write. Under load one system call (and one wake-up of the reader at the other
// end) carries many frames; a lone frame goes out at once, as before.
//
//   callers ──encode──▶ filling ──swap──▶ sending ──one write──▶ socket
//
// A sender that keeps finding more hands the loop to the thread pool after a few rounds, so a
// caller is never held sending other callers' frames for long.
//
// Hold/Resume: while held, a frame is only queued (no write starts); Resume writes what queued.
// The shelf's reader holds while it runs the requests of one socket read in line, so their
// answers leave in one write rather than one each.
//
// Failure: a write that fails poisons the sender (every later Send throws IOException) and is
// reported once through onFailed, which breaks the connection and fails whatever waits on it.
// A frame queued before the failure and not yet written is lost with the connection: its
// caller learns it the way it learns of any lost connection (the request fails as unreachable,
// or the response never arrives).
internal sealed class FrameSender
{
    const int RoundsBeforeHandOff = 8;
    const int KeepBufferBytes = 32 << 20; // a buffer grown past this (a burst of large frames) is let go after use

    public delegate void Encoder<T>(Span<byte> destination, T frame);

    readonly Socket _socket;
    readonly TimeProvider _time;
    readonly Action<Exception> _onFailed;
    readonly Lock _lock = new();
    ArrayBufferWriter<byte> _filling = new(64 * 1024);
    ArrayBufferWriter<byte> _sending = new(64 * 1024);
    bool _busy;
    int _held;
    long? _writeStarted;
    TaskCompletionSource? _idle;
    Exception? _failed;
    long _frames, _writes;

    public FrameSender(Socket socket, TimeProvider time, Action<Exception> onFailed)
    {
        _socket = socket;
        _time = time;
        _onFailed = onFailed;
    }

    /// <summary>Frames queued so far.</summary>
    public long Frames => Interlocked.Read(ref _frames);

    /// <summary>When the socket write under way started (<see cref="TimeProvider.GetTimestamp"/>), or null when none is.</summary>
    public long? WriteStartedAt
    {
        get { lock (_lock) return _writeStarted; }
    }

    /// <summary>Completes when nothing queued is left to write (at once when the sender is idle, or failed).</summary>
    public Task WhenIdleAsync()
    {
        lock (_lock)
        {
            if (!_busy) return Task.CompletedTask;
            _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idle.Task;
        }
    }

    void IdleLocked()
    {
        _busy = false;
        _writeStarted = null;
        _idle?.TrySetResult();
        _idle = null;
    }

    /// <summary>Socket writes so far (each carries one or more whole frames).</summary>
    public long Writes => Interlocked.Read(ref _writes);

    /// <summary>Queues one frame of <paramref name="bytes"/> bytes, written by <paramref name="encode"/>, and
    /// returns once it is written or handed to the task writing now. Throws IOException after a failed write; the task
    /// it returns never faults (a failure of this write goes to onFailed).</summary>
    public ValueTask SendAsync<T>(int bytes, T frame, Encoder<T> encode)
    {
        Invariant.Assert(bytes > 0);
        bool send;
        lock (_lock)
        {
            if (_failed is not null) throw new IOException($"the connection failed while sending: {_failed.Message}", _failed);
            encode(_filling.GetSpan(bytes)[..bytes], frame);
            _filling.Advance(bytes);
            _frames++;
            send = !_busy && _held == 0;
            if (send) _busy = true;
        }
        return send ? SendQueuedAsync() : ValueTask.CompletedTask;
    }

    /// <summary>Frames sent from now on are only queued, until the matching <see cref="Resume"/>.</summary>
    public void Hold()
    {
        lock (_lock) _held++;
    }

    /// <summary>Ends a <see cref="Hold"/>: when none is left, writes what queued meanwhile (as SendAsync would have).</summary>
    public ValueTask Resume()
    {
        bool send;
        lock (_lock)
        {
            Invariant.Assert(_held > 0);
            _held--;
            send = _held == 0 && !_busy && _failed is null && _filling.WrittenCount > 0;
            if (send) _busy = true;
        }
        return send ? SendQueuedAsync() : ValueTask.CompletedTask;
    }

    async ValueTask SendQueuedAsync()
    {
        for (int round = 0; ; round++)
        {
            ReadOnlyMemory<byte> bytes;
            lock (_lock)
            {
                if (_filling.WrittenCount == 0)
                {
                    IdleLocked();
                    return;
                }
                if (round == RoundsBeforeHandOff)
                {
                    // Someone else's turn: the thread pool carries on with what is queued (still _busy).
                    _ = Task.Run(async () => await SendQueuedAsync().ConfigureAwait(false));
                    return;
                }
                (_filling, _sending) = (_sending, _filling);
                bytes = _sending.WrittenMemory;
                _writes++;
                _writeStarted = _time.GetTimestamp();
            }
            try
            {
                while (bytes.Length > 0)
                {
                    int n = await _socket.SendAsync(bytes, SocketFlags.None).ConfigureAwait(false);
                    bytes = bytes[n..];
                }
            }
            catch (Exception e)
            {
                lock (_lock)
                {
                    _failed = e;
                    _filling.ResetWrittenCount();
                    IdleLocked();
                }
                _onFailed(e);
                return;
            }
            lock (_lock) _writeStarted = null;
            if (_sending.Capacity > KeepBufferBytes) _sending = new ArrayBufferWriter<byte>(64 * 1024);
            else _sending.ResetWrittenCount();
        }
    }
}
