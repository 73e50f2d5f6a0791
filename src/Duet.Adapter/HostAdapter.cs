using System.Net;
using Duet.Core;
using Duet.HostProtocol;
using Duet.Nbd;
using Microsoft.Extensions.Logging;

namespace Duet.Adapter;

/// <summary>How <c>duet adapter</c> serves local clients and reaches the pair.</summary>
public sealed class HostAdapterOptions
{
    public const int DefaultPort = 10900;

    /// <summary>Where local NBD clients connect.</summary>
    public IPEndPoint Endpoint { get; init; } = new(IPAddress.Loopback, DefaultPort);

    /// <summary>Unit N of A and unit N of B (one multicast group); default group 0.</summary>
    public IReadOnlyList<EndPoint> Units { get; init; } =
        [new IPEndPoint(IPAddress.Loopback, HostWire.PortA0), new IPEndPoint(IPAddress.Loopback, HostWire.PortB0)];

    public HostPathMode Mode { get; init; } = HostPathMode.Multicast;

    /// <summary>The block buffer (AW-2): write data accepted from clients and not yet completed by the pair.</summary>
    public long BufferBytes { get; init; } = 64L << 20;

    /// <summary>This host's id in the host protocol; 0 picks a random one.</summary>
    public ulong HostId { get; init; }

    public TimeProvider Clock { get; init; } = TimeProvider.System;

    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromSeconds(5);

    public TimeSpan GiveUpAfter { get; init; } = TimeSpan.FromSeconds(30);

    public TimeSpan RetryInterval { get; init; } = TimeSpan.FromMilliseconds(100);

    internal void Validate()
    {
        ArgumentNullException.ThrowIfNull(Endpoint);
        if (Units is null || Units.Count is < 1 or > 2) throw new ArgumentException("the adapter reaches one unit or the two units of a group");
        if (BufferBytes < HostWire.PayloadBytesMax)
            throw new ArgumentOutOfRangeException(nameof(BufferBytes), BufferBytes, $"the block buffer must hold at least one whole request ({HostWire.PayloadBytesMax} bytes)");
    }
}

/// <summary>
/// <c>duet adapter</c>: serves the pair's volumes to local clients over NBD (export name = volume
/// name) and sends every request to the pair over Duet's host protocol — to both controllers at
/// once (multicast, FO-3) or one at a time (path failover). Writes are buffered whole first (AW-2).
/// See docs/internals/host-adapter.md.
/// </summary>
public sealed class HostAdapter : IAsyncDisposable
{
    readonly HostAdapterOptions _options;
    readonly ILoggerFactory _logging;
    readonly AdapterCatalog _catalog;
    readonly NbdServer _nbd;
    readonly ByteBudget _buffer;
    readonly HostTagSource _tags = new();

    public HostAdapter(HostAdapterOptions options, ILoggerFactory logging)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logging);
        options.Validate();
        _options = options;
        _logging = logging;
        HostId = options.HostId != 0 ? options.HostId : (ulong)Random.Shared.NextInt64(1, long.MaxValue);
        _buffer = new ByteBudget(options.BufferBytes);
        _catalog = new AdapterCatalog(options.Units, OpenSessionAsync, logging.CreateLogger("Duet.Adapter"));
        _nbd = new NbdServer(_catalog, new NbdServerOptions { Endpoint = options.Endpoint, WriteBuffer = _buffer, MaxPayloadBytes = 32 << 20 },
            logging.CreateLogger("Duet.Adapter.Nbd"));
    }

    public ulong HostId { get; }

    public IPEndPoint LocalEndPoint => _nbd.LocalEndPoint;

    public ByteBudget Buffer => _buffer;

    public IReadOnlyList<AdapterVolume> Volumes => _catalog.Known;

    /// <summary>Learns the pair's volumes (at least one unit must answer) and starts serving.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        await _catalog.RefreshAsync(cancellationToken);
        await _nbd.StartAsync(cancellationToken);
    }

    Task<HostSession> OpenSessionAsync(string volume, CancellationToken cancellationToken) =>
        HostSession.OpenAsync(new HostSessionOptions
        {
            HostId = HostId,
            Volume = volume,
            Units = _options.Units,
            Mode = _options.Mode,
            Tags = _tags,
            Clock = _options.Clock,
            AttemptTimeout = _options.AttemptTimeout,
            GiveUpAfter = _options.GiveUpAfter,
            RetryInterval = _options.RetryInterval,
            Logger = _logging.CreateLogger("Duet.Adapter.Session"),
        }, cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _nbd.DisposeAsync();
        await _catalog.DisposeAsync();
    }
}

/// <summary>The pair's volumes as the adapter knows them: listed by a unit when a client connects.
/// A volume that disappears from the list stays served to clients already attached (their
/// requests fail once the pair stops taking them); one recreated with another size is replaced.</summary>
sealed class AdapterCatalog(IReadOnlyList<EndPoint> units, Func<string, CancellationToken, Task<HostSession>> open, ILogger logger)
    : IRefreshingVolumeCatalog, IAsyncDisposable
{
    readonly Lock _lock = new();
    readonly Dictionary<string, AdapterVolume> _volumes = new(StringComparer.Ordinal);
    readonly List<AdapterVolume> _retired = [];
    IReadOnlyList<AdapterVolume> _listed = [];

    public IReadOnlyList<AdapterVolume> Known { get { lock (_lock) return _listed; } }

    public IReadOnlyList<IBlockVolume> Volumes => Known;

    public bool TryGetVolume(string name, out IBlockVolume volume)
    {
        lock (_lock)
        {
            if (_volumes.TryGetValue(name, out var v) && _listed.Contains(v))
            {
                volume = v;
                return true;
            }
        }
        volume = null!;
        return false;
    }

    public async ValueTask RefreshAsync(CancellationToken cancellationToken = default)
    {
        var list = await HostSession.ListAsync(units, TimeSpan.FromSeconds(2), cancellationToken);
        lock (_lock)
        {
            var listed = new List<AdapterVolume>();
            foreach (var entry in list.Volumes)
            {
                if (!_volumes.TryGetValue(entry.Name, out var v) || v.SizeBytes != (long)entry.SizeBytes)
                {
                    if (v is not null) _retired.Add(v);
                    v = new AdapterVolume(entry, open);
                    _volumes[entry.Name] = v;
                    AdapterLog.VolumeFound(logger, entry.Name, entry.SizeBytes);
                }
                listed.Add(v);
            }
            _listed = listed;
        }
    }

    public async ValueTask DisposeAsync()
    {
        AdapterVolume[] all;
        lock (_lock) all = [.. _volumes.Values, .. _retired];
        foreach (var v in all) await v.DisposeAsync();
    }
}

static partial class AdapterLog
{
    [LoggerMessage(1, LogLevel.Information, "volume '{Volume}' ({Bytes} bytes) found on the pair")]
    public static partial void VolumeFound(ILogger logger, string volume, ulong bytes);
}
