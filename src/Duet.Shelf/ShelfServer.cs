using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Duet.Core;
using Duet.Drives;
using Microsoft.Extensions.Logging;

namespace Duet.Shelf;

/// <summary>A TCP listener serving one controller port (`duet shelf --tcp A=HOST:PORT`).</summary>
public sealed record ShelfTcpListener(string Port, IPEndPoint EndPoint);

public sealed class ShelfServerOptions
{
    /// <summary>The data directory: the sockets are DATA/shelf-A.sock, DATA/shelf-B.sock and DATA/shelf-admin.sock.</summary>
    public required string DataDirectory { get; init; }

    /// <summary>Extra TCP listeners, each serving one port (controllers on other hosts). The admin socket is never on TCP.</summary>
    public IReadOnlyList<ShelfTcpListener> Tcp { get; init; } = [];

    /// <summary>Requests one connection may have running at once; beyond it the shelf stops reading that connection.</summary>
    public int MaxInFlightRequests { get; init; } = 128;

    /// <summary>How long <see cref="ShelfServer.StopAsync"/> waits for requests already running (a drive write) to finish.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(10);

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;
}

/// <summary>
/// `duet shelf`: serves a <see cref="Shelf"/> over the shelf protocol (docs/internals/shelf-protocol.md).
/// One Unix socket per controller port, DATA/shelf-A.sock and DATA/shelf-B.sock: a connection acts
/// for the port of the socket (or TCP listener) it came in on, and nothing it sends changes that.
/// DATA/shelf-admin.sock takes the administrator's requests (pull, insert, fence, unfence, status).
/// Each connection is pipelined (<see cref="ShelfConnection"/>); a misbehaving one is answered or
/// closed, and every other connection carries on.
///
/// The shell: real sockets and the thread pool. The shelf's semantics are all in <see cref="Shelf"/>.
/// </summary>
public sealed class ShelfServer : IAsyncDisposable
{
    public const string AdminSocketFileName = "shelf-admin.sock";
    public const string StateFileName = "shelf.state";

    readonly Shelf _shelf;
    readonly ShelfServerOptions _options;
    readonly ILogger _logger;
    readonly ConcurrentDictionary<long, ShelfConnection> _connections = new();
    readonly CancellationTokenSource _stopping = new();
    readonly Lock _gate = new();
    readonly List<(string Role, Socket Listener, string? Path)> _listeners = [];
    readonly List<Task> _acceptLoops = [];
    readonly Dictionary<string, IPEndPoint> _tcpEndPoints = new(StringComparer.Ordinal);
    Task? _stopTask;
    bool _started;
    long _lastConnectionId;

    public ShelfServer(Shelf shelf, ShelfServerOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(shelf);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        if (options.MaxInFlightRequests < 1) throw new ArgumentException("MaxInFlightRequests must be at least 1", nameof(options));
        foreach (var t in options.Tcp) ShelfPorts.Check(t.Port);
        _shelf = shelf;
        _options = options;
        _logger = logger;
    }

    /// <summary>DATA/shelf-A.sock or DATA/shelf-B.sock.</summary>
    public static string SocketPathFor(string dataDirectory, string port) =>
        Path.Combine(Path.GetFullPath(dataDirectory), $"shelf-{ShelfPorts.Check(port)}.sock");

    /// <summary>DATA/shelf-admin.sock.</summary>
    public static string AdminSocketPathFor(string dataDirectory) => Path.Combine(Path.GetFullPath(dataDirectory), AdminSocketFileName);

    /// <summary>The shelf of a data directory: drives DATA/drives/NAME.img (<see cref="FileShelf"/>: flush and FUA are
    /// fdatasync), state DATA/shelf.state. <paramref name="wrap"/> decorates every drive (tests).</summary>
    public static Shelf OpenShelf(string dataDirectory, Func<string, IBlockDevice, IBlockDevice>? wrap = null)
    {
        Directory.CreateDirectory(dataDirectory);
        return new Shelf(new FileShelf(FileShelf.DirectoryFor(dataDirectory)),
            new FileShelfStateStore(Path.Combine(dataDirectory, StateFileName)), wrap);
    }

    public Shelf Shelf => _shelf;

    /// <summary>Over the connections open now: reads served on their readers' own threads, how many of those
    /// slept in poll first, and the times readers moved onto their threads (diagnostics and tests).</summary>
    public (long Reads, long Sleeps, long Switches) ReaderThreadReads =>
        _connections.Values.Aggregate((0L, 0L, 0L), (sum, c) => (sum.Item1 + c.DirectReads.Reads, sum.Item2 + c.DirectReads.Sleeps, sum.Item3 + c.DirectReads.Switches));

    /// <summary>Requests of opcode <paramref name="op"/> taken off the wire (decoded, so well formed) since the server started,
    /// on every connection (diagnostics and tests: a gathered write is one request).</summary>
    public long RequestsServed(ShelfOp op) => (ushort)op < _served.Length ? Interlocked.Read(ref _served[(ushort)op]) : 0;

    readonly long[] _served = new long[64];

    /// <summary>Connections open on the controller ports (not the admin socket): a controller still using its drives.</summary>
    public int ControllerConnections => _connections.Values.Count(c => c.Role != ShelfWire.AdminRole);

    /// <summary>The bound TCP endpoints by port (with the real port number when 0 was asked for).</summary>
    public IReadOnlyDictionary<string, IPEndPoint> TcpEndPoints { get { lock (_gate) return new Dictionary<string, IPEndPoint>(_tcpEndPoints); } }

    /// <summary>Binds every socket and starts accepting; returns once all are listening. IOException if another
    /// shelf is serving the data directory.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        lock (_gate)
        {
            if (_stopTask is not null) throw new ObjectDisposedException(nameof(ShelfServer));
            if (_started) throw new InvalidOperationException("the shelf server is already started");
            _started = true;
            Directory.CreateDirectory(_options.DataDirectory);
            try
            {
                var admin = AdminSocketPathFor(_options.DataDirectory);
                if (SomeoneListens(admin)) throw new IOException($"a shelf is already serving {_options.DataDirectory} ({admin} answers)");
                foreach (var port in ShelfPorts.All) BindUnix(port, SocketPathFor(_options.DataDirectory, port));
                BindUnix(ShelfWire.AdminRole, admin);
                foreach (var t in _options.Tcp)
                {
                    var listener = new Socket(t.EndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                    Add(t.Port, listener, null, () => listener.Bind(t.EndPoint));
                    _tcpEndPoints[t.Port] = (IPEndPoint)listener.LocalEndPoint!;
                }
            }
            catch
            {
                foreach (var (_, l, path) in _listeners) Close(l, path);
                _listeners.Clear();
                throw;
            }
            foreach (var (role, listener, _) in _listeners)
            {
                ShelfLog.Listening(_logger, role, listener.LocalEndPoint!);
                _acceptLoops.Add(AcceptLoopAsync(role, listener));
            }
        }
        return Task.CompletedTask;
    }

    void BindUnix(string role, string path)
    {
        File.Delete(path); // a stale socket file of a shelf that did not stop cleanly (SomeoneListens said nobody answers)
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        Add(role, listener, path, () => listener.Bind(new UnixDomainSocketEndPoint(path)));
    }

    void Add(string role, Socket listener, string? path, Action bind)
    {
        try
        {
            bind();
            listener.Listen(128);
        }
        catch
        {
            listener.Dispose();
            throw;
        }
        _listeners.Add((role, listener, path));
    }

    static bool SomeoneListens(string path)
    {
        if (!File.Exists(path)) return false;
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    static void Close(Socket listener, string? path)
    {
        listener.Dispose();
        if (path is not null) File.Delete(path);
    }

    async Task AcceptLoopAsync(string role, Socket listener)
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
                ShelfLog.AcceptFailed(_logger, role, e);
                continue;
            }
            if (socket.ProtocolType == ProtocolType.Tcp) socket.NoDelay = true;
            long id = Interlocked.Increment(ref _lastConnectionId);
            // A controller port's connections tell the shelf whether its controller is still there (PortState.Departed).
            bool controller = role != ShelfWire.AdminRole;
            if (controller) _shelf.Attach(role);
            var connection = new ShelfConnection(id, role, socket, _shelf, _options.MaxInFlightRequests, _served, _logger,
                c =>
                {
                    if (_connections.TryRemove(c.Id, out _) && controller) _shelf.Detach(role);
                });
            _connections[id] = connection;
            connection.Start();
        }
    }

    /// <summary>Stops listening (the socket files go), cuts every connection (clients see it at once and fail their
    /// requests in flight), then waits up to <see cref="ShelfServerOptions.ShutdownTimeout"/> for requests already
    /// running at the drives to finish. Idempotent. The <see cref="Shelf"/> stays open: its owner disposes it.</summary>
    public Task StopAsync()
    {
        lock (_gate) return _stopTask ??= StopCoreAsync();
    }

    public async ValueTask DisposeAsync() => await StopAsync();

    async Task StopCoreAsync()
    {
        await _stopping.CancelAsync();
        foreach (var (_, listener, path) in _listeners) Close(listener, path);
        await Task.WhenAll(_acceptLoops);

        // No connection is added after the accept loops end.
        var connections = _connections.Values.ToArray();
        foreach (var c in connections) c.Abort();
        var all = Task.WhenAll(connections.Select(c => c.Completion));
        try
        {
            await all.WaitAsync(_options.ShutdownTimeout, _options.TimeProvider);
            Invariant.Assert(_connections.IsEmpty);
        }
        catch (TimeoutException)
        {
            ShelfLog.ShutdownTimedOut(_logger, connections.Count(c => !c.Completion.IsCompleted), _options.ShutdownTimeout);
        }
        _stopping.Dispose();
        ShelfLog.Stopped(_logger);
    }
}
