namespace Duet.Core;

/// <summary>
/// One flush of a connection's output queued behind the work in hand (NBD replies, iSCSI responses).
/// A reply written under the connection's write lock asks for a flush (<see cref="Request"/>): the first
/// ask queues a thread-pool item on the current thread's local queue, later ones before it runs ride
/// along. So replies that complete together (a mirrored batch acknowledges a dozen writes in turn on one
/// thread) leave in one socket write, not one each. The item takes the write lock, then flushes whatever
/// is in the pipe. Closing (<see cref="CloseAsync"/>, under the lock) makes a late item do nothing.
/// </summary>
public sealed class DeferredFlush
{
    readonly SemaphoreSlim _writeLock;
    readonly Func<ValueTask> _flush;
    readonly Action<Exception> _failed;
    readonly Func<Exception, bool> _isTransportFailure;
    readonly CancellationToken _abort;
    bool _queued; // under the write lock
    bool _closed; // under the write lock

    /// <param name="writeLock">The connection's write lock (held by callers of Request and Close).</param>
    /// <param name="flush">Flushes the output (called under the write lock).</param>
    /// <param name="failed">A flush failed with a transport failure: the connection is lost.</param>
    /// <param name="isTransportFailure">Which exceptions of the flush mean the transport failed (others escape).</param>
    /// <param name="abort">The connection's abort token: an aborted connection flushes nothing.</param>
    public DeferredFlush(SemaphoreSlim writeLock, Func<ValueTask> flush, Action<Exception> failed, Func<Exception, bool> isTransportFailure, CancellationToken abort)
    {
        _writeLock = writeLock;
        _flush = flush;
        _failed = failed;
        _isTransportFailure = isTransportFailure;
        _abort = abort;
    }

    /// <summary>Caller holds the write lock and has written a reply: it leaves with the queued flush.
    /// Throws IOException once the connection closed its output.</summary>
    public void Request()
    {
        if (_closed) throw new IOException("the connection is closed");
        if (_queued) return;
        _queued = true;
        ThreadPool.UnsafeQueueUserWorkItem(static f => _ = f.RunAsync(), this, preferLocal: true);
    }

    /// <summary>
    /// The end of the output: under the write lock, marks it closed (a flush still queued does nothing), flushes
    /// what is in the pipe (unless the connection was aborted) and calls <paramref name="complete"/>. Transport
    /// failures are not thrown: there is nobody left to answer.
    /// </summary>
    public async Task CloseAsync(Func<ValueTask> complete)
    {
        await _writeLock.WaitAsync();
        try
        {
            _closed = true;
            try
            {
                if (!_abort.IsCancellationRequested) await _flush();
            }
            catch (Exception e) when (_isTransportFailure(e))
            {
            }
            try
            {
                await complete();
            }
            catch (Exception e) when (_isTransportFailure(e))
            {
            }
        }
        finally
        {
            _writeLock.Release();
        }
    }

    async Task RunAsync()
    {
        try
        {
            await _writeLock.WaitAsync(_abort);
        }
        catch (OperationCanceledException)
        {
            return; // aborted: nobody to answer
        }
        try
        {
            _queued = false;
            if (!_closed) await _flush();
        }
        catch (Exception e) when (_isTransportFailure(e))
        {
            _failed(e);
        }
        finally
        {
            _writeLock.Release();
        }
    }
}
