using System.Net.Sockets;

namespace Duet.Core;

/// <summary>
/// The reading side of a connection whose reader runs on a thread of its own: the <see cref="ReaderThread"/>
/// (made when the reader first moves onto it) and the <see cref="ThreadReceiveStream"/> its reads go through,
/// which sleeps in the socket on that thread. The reader awaits <see cref="SwitchTo"/> before each read (at once
/// when it is on its thread), so a wait that resumed on the pool is followed by a move back. NBD, iSCSI (from
/// the full feature phase), the shelf's connections and the host-protocol units read this way.
/// </summary>
public sealed class ConnectionReader
{
    readonly string _threadName;
    ReaderThread? _thread;

    public ConnectionReader(Socket socket, NetworkStream inner, string threadName)
    {
        _threadName = threadName;
        Stream = new ThreadReceiveStream(socket, inner, () => Volatile.Read(ref _thread)?.IsCurrent == true);
    }

    /// <summary>What the connection's PipeReader reads from.</summary>
    public ThreadReceiveStream Stream { get; }

    /// <summary>Carries the reader on on its own thread (made the first time); at once when it is there.
    /// Only the connection's one reader calls this.</summary>
    public ReaderThread.SwitchAwaitable SwitchTo()
    {
        var thread = Volatile.Read(ref _thread);
        if (thread is null) Volatile.Write(ref _thread, thread = new ReaderThread(_threadName));
        return thread.SwitchTo();
    }

    /// <summary>Reads served on the reader's thread, how many of them slept in poll first, and the times the
    /// reader moved onto its thread (tests, diagnostics).</summary>
    public (long Reads, long Sleeps, long Switches) Counts =>
        (Stream.DirectReads.Reads, Stream.DirectReads.Sleeps, Volatile.Read(ref _thread)?.Switches ?? 0);

    /// <summary>Shuts the socket's receive side: a read asleep in poll sees the end of the stream.</summary>
    public void StopReceiving() => Stream.StopReceiving();

    /// <summary>The reader is done: its thread ends once what is queued on it has run.</summary>
    public void Stop() => Volatile.Read(ref _thread)?.Stop();
}
