using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Duet.Core;

/// <summary>
/// The receiving side of a connection whose reader runs on a thread of its own (thread per connection, as
/// nbdkit serves its clients). On that thread (<see cref="Own"/>) a read takes what the socket holds with
/// one recv(2), and when it holds nothing, sleeps in poll(2) on the socket: the request that arrives wakes
/// the thread that decodes it. (A socket read through .NET's async engine is woken by the engine's epoll
/// thread and handed to a thread-pool worker: two wake-ups per arrival, not one.) On any other thread (the
/// reader moved to the pool after an await that did not complete at once) it reads as the NetworkStream does.
/// A receive sleeping in poll ends when the socket's receive side is shut down (<see cref="StopReceiving"/>):
/// the read then returns 0, the end of the stream; cancellation tokens do not reach it.
/// Writes go to the NetworkStream. Linux only, like the rest of Duet.
/// </summary>
public sealed partial class ThreadReceiveStream : Stream
{
    readonly Socket _socket;
    readonly NetworkStream _inner;
    readonly SafeSocketHandle _handle;
    readonly Func<bool> _onOwnThread;
    long _direct, _sleeps;

    /// <param name="onOwnThread">True on the thread whose reads recv/poll serves (a <see cref="ConnectionReader"/>'s).</param>
    public ThreadReceiveStream(Socket socket, NetworkStream inner, Func<bool> onOwnThread)
    {
        _socket = socket;
        _inner = inner;
        _handle = socket.SafeHandle;
        _onOwnThread = onOwnThread;
    }


    /// <summary>Reads served on the owning thread so far, and how many of them had to sleep in poll first.</summary>
    public (long Reads, long Sleeps) DirectReads => (Interlocked.Read(ref _direct), Interlocked.Read(ref _sleeps));

    /// <summary>Shuts the receive side: a read sleeping in poll returns 0 (end of stream), as does every later one.</summary>
    public void StopReceiving()
    {
        try { _socket.Shutdown(SocketShutdown.Receive); }
        catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
    {
        if (!_onOwnThread()) return _inner.ReadAsync(buffer, ct);
        if (ct.IsCancellationRequested) return ValueTask.FromCanceled<int>(ct);
        try
        {
            return new(Receive(buffer.Span));
        }
        catch (IOException e)
        {
            return ValueTask.FromException<int>(e);
        }
    }

    unsafe int Receive(Span<byte> into)
    {
        Interlocked.Increment(ref _direct);
        // A reference on the handle while we use its descriptor: a socket disposed meanwhile is closed only after
        // we let go, so the number is never another socket's. (Whoever disposes shuts it down first, which wakes poll.)
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            return 0; // closed: the end of the stream
        }
        try
        {
            return Receive((int)_handle.DangerousGetHandle(), into);
        }
        finally
        {
            if (added) _handle.DangerousRelease();
        }
    }

    unsafe int Receive(int fd, Span<byte> into)
    {
        fixed (byte* p = into)
        {
            while (true)
            {
                nint n = recv(fd, p, into.Length, 0);
                if (n >= 0) return (int)n;
                int errno = Marshal.GetLastPInvokeError();
                if (errno == EINTR) continue;
                if (errno != EAGAIN) throw new IOException($"recv failed: errno {errno}", new SocketException(errno));
                Interlocked.Increment(ref _sleeps);
                var fds = new PollFd { Fd = fd, Events = POLLIN };
                if (poll(&fds, 1, -1) < 0 && Marshal.GetLastPInvokeError() is int e && e != EINTR)
                    throw new IOException($"poll failed: errno {e}", new SocketException(e));
            }
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken ct) =>
        ReadAsync(buffer.AsMemory(offset, count), ct).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => _inner.Read(buffer, offset, count);
    public override void Write(byte[] buffer, int offset, int count) => _inner.Write(buffer, offset, count);
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default) => _inner.WriteAsync(buffer, ct);
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken ct) => _inner.WriteAsync(buffer, offset, count, ct);
    public override void Flush() => _inner.Flush();
    public override Task FlushAsync(CancellationToken ct) => _inner.FlushAsync(ct);
    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    const int EINTR = 4, EAGAIN = 11;
    const short POLLIN = 1;

    [StructLayout(LayoutKind.Sequential)]
    struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint recv(int fd, byte* buffer, nint length, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int poll(PollFd* fds, nuint count, int timeout);
}
