using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Duet.Core;
using Microsoft.Extensions.Logging;

namespace Duet.Nbd;

/// <summary>
/// An NBD server (fixed newstyle, structured replies, base:allocation) exporting the volumes of
/// an <see cref="IVolumeCatalog"/>; the export name is the volume name. Each client connection
/// runs independently: a misbehaving client gets the protocol's error, a log line and, where
/// the protocol requires it, a closed connection, and every other client carries on.
/// See docs/internals/nbd.md.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly IVolumeCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger _logger;
    private readonly NbdMetrics _metrics = new();
    private readonly ConcurrentDictionary<long, NbdConnection> _connections = new();
    private readonly CancellationTokenSource _stopping = new();
    private readonly Lock _gate = new();
    private Socket? _listener;
    private Task _acceptLoop = Task.CompletedTask;
    private Task? _stopTask;
    private IPEndPoint? _localEndPoint;
    private long _lastConnectionId;

    public NbdServer(IVolumeCatalog catalog, NbdServerOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        options.Validate();
        _catalog = catalog;
        _options = options;
        _logger = logger;
    }

    /// <summary>The bound address (with the real port when <see cref="NbdServerOptions.Endpoint"/> used port 0).</summary>
    /// <summary>Over the connections open now: reads served on their readers' own threads, how many of those
    /// slept in poll first, and the times readers moved onto their threads (diagnostics and tests; see
    /// <see cref="Duet.Core.ThreadReceiveStream"/>, <see cref="Duet.Core.ReaderThread"/>).</summary>
    public (long Reads, long Sleeps, long Switches) ReaderThreadReads =>
        _connections.Values.Aggregate((0L, 0L, 0L), (sum, c) => (sum.Item1 + c.DirectReads.Reads, sum.Item2 + c.DirectReads.Sleeps, sum.Item3 + c.DirectReads.Switches));

    public IPEndPoint LocalEndPoint => _localEndPoint ?? throw new InvalidOperationException("the NBD server has not been started");

    /// <summary>Binds and starts accepting clients; returns once the socket is listening.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        lock (_gate)
        {
            if (_stopTask is not null) throw new ObjectDisposedException(nameof(NbdServer));
            if (_listener is not null) throw new InvalidOperationException("the NBD server is already started");
            var listener = new Socket(_options.Endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                listener.Bind(_options.Endpoint);
                listener.Listen(128);
            }
            catch (SocketException e)
            {
                listener.Dispose();
                throw new IOException($"NBD on {_options.Endpoint}: {e.Message}", e);
            }
            catch
            {
                listener.Dispose();
                throw;
            }
            _listener = listener;
            _localEndPoint = (IPEndPoint)listener.LocalEndPoint!;
            NbdLog.Listening(_logger, _localEndPoint);
            _acceptLoop = AcceptLoopAsync(listener);
        }
        return Task.CompletedTask;
    }

    /// <summary>Stops listening, lets in-flight requests finish (up to
    /// <see cref="NbdServerOptions.ShutdownTimeout"/>), then closes every connection. Idempotent.</summary>
    public Task StopAsync()
    {
        lock (_gate)
        {
            return _stopTask ??= StopCoreAsync();
        }
    }

    public async ValueTask DisposeAsync() => await StopAsync();

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (true)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync(_stopping.Token);
            }
            catch (Exception) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException e)
            {
                // A client that gave up before accept (ECONNABORTED) and the like: keep listening.
                NbdLog.AcceptFailed(_logger, e);
                continue;
            }
            socket.NoDelay = true;
            long id = Interlocked.Increment(ref _lastConnectionId);
            var connection = new NbdConnection(id, socket, _catalog, _options, _logger, _metrics,
                c => _connections.TryRemove(c.Id, out _));
            _connections[id] = connection;
            connection.Start();
        }
    }

    private async Task StopCoreAsync()
    {
        if (_listener is null)
        {
            _metrics.Dispose();
            return;
        }
        await _stopping.CancelAsync();
        _listener.Dispose();
        await _acceptLoop;

        // No connection is added after the accept loop ends.
        var connections = _connections.Values.ToArray();
        foreach (var connection in connections) connection.BeginShutdown();
        var all = Task.WhenAll(connections.Select(c => c.Completion));
        try
        {
            await all.WaitAsync(_options.ShutdownTimeout, _options.TimeProvider);
        }
        catch (TimeoutException)
        {
            NbdLog.ShutdownTimedOut(_logger, _options.ShutdownTimeout, connections.Count(c => !c.Completion.IsCompleted));
            foreach (var connection in connections) connection.Abort();
            await all;
        }
        Invariant.Assert(_connections.IsEmpty);
        _metrics.Dispose();
        _stopping.Dispose();
        NbdLog.Stopped(_logger, _localEndPoint!);
    }
}
