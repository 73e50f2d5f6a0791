using System.Net;
using System.Net.Sockets;
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

    /// <summary>AW-1: this adapter is one of a pair (null: a single adapter).</summary>
    public AdapterPairOptions? Pair { get; init; }

    internal void Validate()
    {
        if (Pair is not null) ArgumentException.ThrowIfNullOrEmpty(Pair.CheckpointSocket);
        ArgumentNullException.ThrowIfNull(Endpoint);
        if (Units is null || Units.Count is < 1 or > 2) throw new ArgumentException("the adapter reaches one unit or the two units of a group");
        if (BufferBytes < HostWire.PayloadBytesMax)
            throw new ArgumentOutOfRangeException(nameof(BufferBytes), BufferBytes, $"the block buffer must hold at least one whole request ({HostWire.PayloadBytesMax} bytes)");
    }
}

public enum AdapterRole
{
    /// <summary>Serves the clients and checkpoints every write to the backup.</summary>
    Primary,

    /// <summary>Holds the primary's checkpoints; when the primary dies, takes over its NBD endpoint,
    /// completes its unfinished writes under their own tags, and becomes the primary.</summary>
    Backup,
}

/// <summary>One adapter of an AW-1 pair.</summary>
public sealed class AdapterPairOptions
{
    public required AdapterRole Role { get; init; }

    /// <summary>The Unix domain socket of the checkpoint channel: the primary listens, the backup connects.</summary>
    public required string CheckpointSocket { get; init; }

    /// <summary>How long a backup waits for the primary's checkpoint socket to answer.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public static string DefaultSocket(int port) => Path.Combine(Path.GetTempPath(), $"duet-adapter-{port}.ckpt");
}

/// <summary>What a volume's writes need from the AW-1 pair: whether to serve yet, the tags, and
/// the checkpoint channel (null while no channel is up: a backup that has not taken over).</summary>
sealed class AdapterPairState(HostTagSource tags)
{
    readonly TaskCompletionSource _serving = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Serving => _serving.Task;

    public volatile HostTagSource Tags = tags;

    public volatile CheckpointPrimary? Checkpoints;

    public void StartServing() => _serving.TrySetResult();
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
    readonly ILogger _logger;
    readonly AdapterPairState? _pair;
    readonly CancellationTokenSource _stopping = new();
    HostTagSource _tags = new();
    CheckpointBackup? _backup;
    Task _backupRun = Task.CompletedTask;
    readonly TaskCompletionSource _tookOver = new(TaskCreationOptions.RunContinuationsAsynchronously);
    long _reissued;

    public HostAdapter(HostAdapterOptions options, ILoggerFactory logging)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logging);
        options.Validate();
        _options = options;
        _logging = logging;
        HostId = options.HostId != 0 ? options.HostId : (ulong)Random.Shared.NextInt64(1, long.MaxValue);
        _buffer = new ByteBudget(options.BufferBytes);
        if (options.Pair is not null)
        {
            _tags = HostTagSource.ForGeneration(0);
            _pair = new AdapterPairState(_tags);
        }
        _logger = logging.CreateLogger("Duet.Adapter");
        _catalog = new AdapterCatalog(options.Units, OpenSessionAsync, _logger, _pair);
        _nbd = new NbdServer(_catalog, new NbdServerOptions { Endpoint = options.Endpoint, WriteBuffer = _buffer, MaxPayloadBytes = 32 << 20 },
            logging.CreateLogger("Duet.Adapter.Nbd"));
    }

    /// <summary>The host id the adapter acts for (a backup learns its primary's from the checkpoint channel).</summary>
    public ulong HostId { get; private set; }

    /// <summary>AW-1: the tag generation (top 16 bits of every tag this adapter draws).</summary>
    public ushort Generation { get; private set; }

    public AdapterRole? Role => _options.Pair is null ? null : _tookOver.Task.IsCompleted ? AdapterRole.Primary : _options.Pair.Role;

    /// <summary>AW-1, a backup: completes once it took over (serves the endpoint, its checkpoints
    /// re-sent); faults when it could not.</summary>
    public Task TookOver => _tookOver.Task;

    /// <summary>AW-1: the checkpoint channel while this adapter is the primary.</summary>
    public CheckpointPrimary? Checkpoints => _pair?.Checkpoints;

    /// <summary>AW-1, the backup: unfinished writes it holds now.</summary>
    public int BackupHolds => _backup?.Unfinished ?? 0;

    /// <summary>AW-1: writes re-sent under their own tags on taking over.</summary>
    public long Reissued => Interlocked.Read(ref _reissued);

    public IPEndPoint LocalEndPoint => _nbd.LocalEndPoint;

    public ByteBudget Buffer => _buffer;

    public IReadOnlyList<AdapterVolume> Volumes => _catalog.Known;

    /// <summary>Learns the pair's volumes (at least one unit must answer) and starts serving. An
    /// AW-1 primary opens its checkpoint socket first; a backup instead connects to its primary's and
    /// returns, holding the checkpoints until it takes over (<see cref="TookOver"/>).</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (_options.Pair is { Role: AdapterRole.Backup } pair)
        {
            _backup = await CheckpointBackup.ConnectAsync(pair.CheckpointSocket, pair.ConnectTimeout, _logger, cancellationToken, _options.Clock);
            HostId = _backup.Hello.HostId;
            Generation = _backup.Hello.Generation;
            _backupRun = TakeOverWhenThePrimaryDiesAsync(_backup);
            return;
        }
        await _catalog.RefreshAsync(cancellationToken);
        if (_pair is not null) StartCheckpoints();
        await _nbd.StartAsync(cancellationToken);
        _pair?.StartServing();
    }

    void StartCheckpoints()
    {
        var channel = new CheckpointPrimary(_options.Pair!.CheckpointSocket, new CheckpointHello(HostId, Generation, Environment.ProcessId), _logger, _options.Clock);
        channel.Start();
        _pair!.Checkpoints = channel;
    }

    /// <summary>
    /// The backup's takeover (AW-1): once the primary is gone, bind its NBD endpoint (as soon as it
    /// is free; clients' requests wait), re-send every unfinished write under its own tag, in
    /// checkpoint order, each to its answer; then open the checkpoint socket for a new backup and serve.
    /// </summary>
    async Task TakeOverWhenThePrimaryDiesAsync(CheckpointBackup backup)
    {
        try
        {
            var plan = await backup.WatchAsync(_stopping.Token);
            await backup.DisposeAsync();
            var clock = _options.Clock;
            long started = clock.GetTimestamp();
            HostId = plan.HostId;
            Generation = plan.Generation;
            _tags = HostTagSource.ForGeneration(plan.Generation);
            _pair!.Tags = _tags;
            bool portWarned = false;
            while (true)
            {
                try
                {
                    await _nbd.StartAsync(_stopping.Token);
                    break;
                }
                catch (IOException e) when (!_stopping.IsCancellationRequested)
                {
                    // The dead primary's listener is not closed yet (or something else holds the port).
                    if (clock.GetElapsedTime(started) > TimeSpan.FromSeconds(1) && !portWarned)
                    {
                        portWarned = true;
                        AdapterLog.PortBusy(_logger, e.Message);
                    }
                    await Task.Delay(TimeSpan.FromMilliseconds(20), clock, _stopping.Token);
                }
            }
            var bound = clock.GetElapsedTime(started);
            await _catalog.RefreshAsync(_stopping.Token);
            foreach (var write in plan.Unfinished)
            {
                if (!_catalog.TryGetVolume(write.Volume, out var v))
                {
                    AdapterLog.ReissueSkipped(_logger, write.Volume, write.Tag, "the pair no longer lists the volume");
                    continue;
                }
                var status = await ((AdapterVolume)v).ReissueAsync(write, _stopping.Token);
                Interlocked.Increment(ref _reissued);
                AdapterLog.Reissued(_logger, write.Volume, write.Tag, write.Offset, write.Data.Length, status);
            }
            StartCheckpoints();
            _pair.StartServing();
            AdapterLog.TookOver(_logger, LocalEndPoint, bound.TotalMilliseconds, plan.Unfinished.Count, Generation);
            _tookOver.TrySetResult();
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
            _tookOver.TrySetCanceled();
        }
        catch (Exception e) when (e is IOException or SocketException or InvalidOperationException)
        {
            AdapterLog.TakeoverFailed(_logger, e.Message);
            _tookOver.TrySetException(e);
        }
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

    /// <summary>Stops. An AW-1 primary closes its checkpoint channel first — its backup then takes
    /// over, as after a crash; stop the backup first to stop a pair.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stopping.IsCancellationRequested) return;
        _stopping.Cancel();
        if (_pair?.Checkpoints is { } channel) await channel.DisposeAsync();
        if (_backup is not null) await _backup.DisposeAsync();
        try { await _backupRun; } catch (Exception e) when (e is OperationCanceledException) { }
        await _nbd.DisposeAsync();
        await _catalog.DisposeAsync();
    }
}

/// <summary>The pair's volumes as the adapter knows them: listed by a unit when a client connects.
/// A volume that disappears from the list stays served to clients already attached (their
/// requests fail once the pair stops taking them); one recreated with another size is replaced.</summary>
sealed class AdapterCatalog(IReadOnlyList<EndPoint> units, Func<string, CancellationToken, Task<HostSession>> open, ILogger logger, AdapterPairState? pair)
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
                    v = new AdapterVolume(entry, open, pair);
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

    [LoggerMessage(2, LogLevel.Information, "volume '{Volume}': re-sent unfinished write {Offset}+{Length} under its tag {Tag}: {Status}")]
    public static partial void Reissued(ILogger logger, string volume, ulong tag, long offset, int length, HostStatus status);

    [LoggerMessage(3, LogLevel.Error, "volume '{Volume}': unfinished write under tag {Tag} not re-sent: {Reason}")]
    public static partial void ReissueSkipped(ILogger logger, string volume, ulong tag, string reason);

    [LoggerMessage(4, LogLevel.Warning, "took over NBD on {Endpoint} ({BoundMs} ms after the primary was gone); {Unfinished} unfinished writes re-sent; tag generation {Generation}")]
    public static partial void TookOver(ILogger logger, IPEndPoint endpoint, double boundMs, int unfinished, ushort generation);

    [LoggerMessage(6, LogLevel.Warning, "taking over: the NBD port is still busy after a second ({Reason}); still trying")]
    public static partial void PortBusy(ILogger logger, string reason);

    [LoggerMessage(5, LogLevel.Critical, "could not take over from the primary adapter: {Reason}")]
    public static partial void TakeoverFailed(ILogger logger, string reason);
}
