using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Duet.Core;
using Microsoft.Extensions.Logging;

namespace Duet.HostProtocol;

/// <summary>
/// One unit of Duet's host protocol: a TCP listener whose connections attach a host to a
/// volume of the <see cref="IVolumeCatalog"/> and hand every command to this controller's
/// <see cref="CommandHandshake"/>, which answers on the connection the command came from.
/// A controller runs two (units 0 and 1); it owns the handshake, the units only use it.
/// See docs/internals/host-protocol.md.
/// </summary>
public sealed class HostUnitServer : IAsyncDisposable
{
    readonly IVolumeCatalog _catalog;
    readonly CommandHandshake _handshake;
    readonly HostUnitServerOptions _options;
    readonly ILogger _logger;
    readonly ConcurrentDictionary<long, HostUnitConnection> _connections = new();
    readonly CancellationTokenSource _stopping = new();
    readonly Lock _gate = new();
    Socket? _listener;
    Task _acceptLoop = Task.CompletedTask;
    Task? _stopTask;
    IPEndPoint? _localEndPoint;
    long _lastConnectionId;

    public HostUnitServer(IVolumeCatalog catalog, CommandHandshake handshake, HostUnitServerOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(handshake);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        options.Validate();
        _catalog = catalog;
        _handshake = handshake;
        _options = options;
        _logger = logger;
    }

    public byte Unit => _options.Unit;

    public char Controller => _options.Controller;

    /// <summary>Connections open now.</summary>
    public int ConnectionCount => _connections.Count;

    /// <summary>Over the connections open now: reads served on their readers' own threads, how many of those
    /// slept in poll first, and the times readers moved onto their threads (diagnostics and tests).</summary>
    public (long Reads, long Sleeps, long Switches) ReaderThreadReads =>
        _connections.Values.Aggregate((0L, 0L, 0L), (sum, c) => (sum.Item1 + c.DirectReads.Reads, sum.Item2 + c.DirectReads.Sleeps, sum.Item3 + c.DirectReads.Switches));

    /// <summary>The bound address (with the real port when the options asked for port 0).</summary>
    public IPEndPoint LocalEndPoint => _localEndPoint ?? throw new InvalidOperationException("the host unit has not been started");

    /// <summary>Binds and starts accepting hosts; returns once the socket listens.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        lock (_gate)
        {
            if (_stopTask is not null) throw new ObjectDisposedException(nameof(HostUnitServer));
            if (_listener is not null) throw new InvalidOperationException("the host unit is already started");
            var endpoint = _options.ResolvedEndpoint;
            var listener = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                listener.Bind(endpoint);
                listener.Listen(128);
            }
            catch (SocketException e)
            {
                listener.Dispose();
                throw new IOException($"host unit {_options.Controller}{_options.Unit} on {endpoint}: {e.Message}", e);
            }
            catch
            {
                listener.Dispose();
                throw;
            }
            _listener = listener;
            _localEndPoint = (IPEndPoint)listener.LocalEndPoint!;
            HostLog.Listening(_logger, _options.Controller, _options.Unit, _localEndPoint);
            _acceptLoop = AcceptLoopAsync(listener);
        }
        return Task.CompletedTask;
    }

    /// <summary>Stops listening and closes every connection (each waits for its in-flight
    /// commands up to the shutdown timeout). Idempotent. The handshake is not stopped.</summary>
    public Task StopAsync()
    {
        lock (_gate) return _stopTask ??= StopCoreAsync();
    }

    public async ValueTask DisposeAsync() => await StopAsync();

    async Task AcceptLoopAsync(Socket listener)
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
                HostLog.AcceptFailed(_logger, e);
                continue;
            }
            socket.NoDelay = true;
            long id = Interlocked.Increment(ref _lastConnectionId);
            var connection = new HostUnitConnection(id, socket, _catalog, _handshake, _options, _logger, c => _connections.TryRemove(c.Id, out _));
            _connections[id] = connection;
            connection.Start();
        }
    }

    async Task StopCoreAsync()
    {
        if (_listener is null) return;
        await _stopping.CancelAsync();
        _listener.Dispose();
        await _acceptLoop;
        var connections = _connections.Values.ToArray();
        foreach (var connection in connections) connection.BeginShutdown();
        await Task.WhenAll(connections.Select(c => c.Completion));
        _stopping.Dispose();
    }
}
