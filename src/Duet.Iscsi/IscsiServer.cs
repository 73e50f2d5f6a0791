using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Duet.Core;
using Duet.Iscsi.Scsi;
using Microsoft.Extensions.Logging;

namespace Duet.Iscsi;

/// <summary>
/// An iSCSI target (RFC 7143, ErrorRecoveryLevel 0, one connection per session) with one target
/// name whose logical units are an <see cref="IScsiDevice"/>'s. Each connection runs
/// independently: a misbehaving initiator gets a Reject, a login failure or a closed connection,
/// and every other session carries on. See docs/internals/iscsi.md.
/// </summary>
public sealed class IscsiServer : IAsyncDisposable
{
    private readonly IscsiServerOptions _options;
    private readonly ILogger _logger;
    private readonly IscsiMetrics _metrics = new();
    private readonly ConcurrentDictionary<long, IscsiConnection> _connections = new();
    private readonly Dictionary<ushort, IscsiSession> _sessions = [];
    private readonly Lock _sessionGate = new();
    private readonly CancellationTokenSource _stopping = new();
    private readonly Lock _gate = new();
    private Socket? _listener;
    private Task _acceptLoop = Task.CompletedTask;
    private Task? _stopTask;
    private IPEndPoint? _localEndPoint;
    private long _lastConnectionId;
    private ushort _lastTsih;

    public IscsiServer(IScsiDevice device, IscsiServerOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        options.Validate();
        Device = device;
        _options = options;
        _logger = logger;
        if (device is ScsiDevice scsi) scsi.PreemptedAndAborted += OnPreemptedAndAborted;
        else if (device is IscsiCatalogDevice catalog) catalog.PreemptedAndAborted += OnPreemptedAndAborted;
    }

    /// <summary>PREEMPT AND ABORT: the tasks of the preempted nexuses on that LUN are aborted here,
    /// since the transport holds the task sets.</summary>
    private void OnPreemptedAndAborted(ulong lun, IReadOnlyList<ItNexus> nexuses)
    {
        List<IscsiSession> hit = [];
        lock (_sessionGate)
        {
            foreach (var session in _sessions.Values)
            {
                if (session.Nexus is { } nexus && Contains(nexuses, nexus)) hit.Add(session);
            }
        }
        foreach (var session in hit) session.Connection.AbortTasksPreempted(lun);

        static bool Contains(IReadOnlyList<ItNexus> list, ItNexus nexus)
        {
            for (int i = 0; i < list.Count; i++) if (list[i].Equals(nexus)) return true;
            return false;
        }
    }

    /// <summary>The bound address (with the real port when the endpoint used port 0).</summary>
    /// <summary>Over the connections open now: PDU reads served on their readers' own threads, how many of those
    /// slept in poll first, and the times readers moved onto their threads (diagnostics and tests; see
    /// <see cref="ThreadReceiveStream"/>, <see cref="ReaderThread"/>).</summary>
    public (long Reads, long Sleeps, long Switches) ReaderThreadReads =>
        _connections.Values.Aggregate((0L, 0L, 0L), (sum, c) => (sum.Item1 + c.DirectReads.Reads, sum.Item2 + c.DirectReads.Sleeps, sum.Item3 + c.DirectReads.Switches));

    public IPEndPoint LocalEndPoint => _localEndPoint ?? throw new InvalidOperationException("the iSCSI server has not been started");

    public string TargetName => _options.TargetName;

    /// <summary>Sessions logged in now (normal and discovery).</summary>
    public int SessionCount
    {
        get
        {
            lock (_sessionGate) return _sessions.Count;
        }
    }

    internal IScsiDevice Device { get; }
    internal IscsiServerOptions Options => _options;
    internal ILogger Logger => _logger;
    internal IscsiMetrics Metrics => _metrics;

    /// <summary>The portals SendTargets reports.</summary>
    internal IReadOnlyList<IscsiPortal> Portals =>
        _options.Portals.Count > 0 ? _options.Portals : [new IscsiPortal(LocalEndPoint.Address.ToString(), LocalEndPoint.Port, _options.PortalGroupTag)];

    /// <summary>Binds and starts accepting initiators; returns once the socket is listening.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        lock (_gate)
        {
            if (_stopTask is not null) throw new ObjectDisposedException(nameof(IscsiServer));
            if (_listener is not null) throw new InvalidOperationException("the iSCSI server is already started");
            var listener = new Socket(_options.Endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                listener.Bind(_options.Endpoint);
                listener.Listen(128);
            }
            catch (SocketException e)
            {
                listener.Dispose();
                throw new IOException($"iSCSI on {_options.Endpoint}: {e.Message}", e);
            }
            catch
            {
                listener.Dispose();
                throw;
            }
            _listener = listener;
            _localEndPoint = (IPEndPoint)listener.LocalEndPoint!;
            IscsiLog.Listening(_logger, _options.TargetName, _localEndPoint, _options.PortalGroupTag);
            _acceptLoop = AcceptLoopAsync(listener);
        }
        return Task.CompletedTask;
    }

    /// <summary>Stops listening, lets in-flight commands finish (up to
    /// <see cref="IscsiServerOptions.ShutdownTimeout"/>), then closes every connection. Idempotent.</summary>
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
                IscsiLog.AcceptFailed(_logger, e);
                continue;
            }
            socket.NoDelay = true;
            long id = Interlocked.Increment(ref _lastConnectionId);
            var connection = new IscsiConnection(id, socket, this, c => _connections.TryRemove(c.Id, out _));
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

        var connections = new List<IscsiConnection>(_connections.Values);
        var completions = new List<Task>(connections.Count);
        foreach (var connection in connections)
        {
            connection.BeginShutdown();
            completions.Add(connection.Completion);
        }
        var all = Task.WhenAll(completions);
        try
        {
            await all.WaitAsync(_options.ShutdownTimeout, _options.TimeProvider);
        }
        catch (TimeoutException)
        {
            int open = 0;
            foreach (var c in completions) if (!c.IsCompleted) open++;
            IscsiLog.ShutdownTimedOut(_logger, _options.ShutdownTimeout, open);
            foreach (var connection in connections) connection.Abort();
            await all;
        }
        Invariant.Assert(_connections.IsEmpty);
        _metrics.Dispose();
        _stopping.Dispose();
        IscsiLog.Stopped(_logger, _localEndPoint!);
    }

    // ------------------------------------------------------------------ sessions

    /// <summary>The session of this initiator port (name + ISID), if any: the one a new login with
    /// TSIH 0 reinstates.</summary>
    internal IscsiSession? FindSession(string initiatorName, ulong isid)
    {
        lock (_sessionGate)
        {
            foreach (var session in _sessions.Values)
            {
                if (session.Isid == isid && string.Equals(session.InitiatorName, initiatorName, StringComparison.Ordinal)) return session;
            }
            return null;
        }
    }

    internal IscsiSession? FindSession(ushort tsih)
    {
        lock (_sessionGate) return _sessions.GetValueOrDefault(tsih);
    }

    /// <summary>Allocates a TSIH and registers the session it makes; null when
    /// <see cref="IscsiServerOptions.MaxSessions"/> are open.</summary>
    internal IscsiSession? OpenSession(Func<ushort, IscsiSession> create)
    {
        lock (_sessionGate)
        {
            if (_sessions.Count >= _options.MaxSessions) return null;
            ushort tsih;
            do
            {
                tsih = ++_lastTsih;
            }
            while (tsih == 0 || _sessions.ContainsKey(tsih));
            var session = create(tsih);
            _sessions.Add(tsih, session);
            _metrics.SessionOpened();
            return session;
        }
    }

    internal void CloseSession(IscsiSession session)
    {
        lock (_sessionGate)
        {
            if (!_sessions.Remove(session.Tsih, out var found)) return;
            Invariant.Assert(ReferenceEquals(found, session));
            _metrics.SessionClosed();
        }
    }
}
