using System.Net;
using System.Net.Sockets;
using Duet.Core;
using Duet.Drives;

namespace Duet.Shelf;

public sealed class RemoteShelfPortOptions
{
    /// <summary>"A" or "B": the port this controller is. The shelf decides it by the socket; the client checks it with Hello.</summary>
    public required string Port { get; init; }

    /// <summary>Where the port is served: a <see cref="UnixDomainSocketEndPoint"/> (DATA/shelf-A.sock) or a TCP endpoint.</summary>
    public required EndPoint EndPoint { get; init; }

    /// <summary>How long any request (connecting included) may take before it fails with <see cref="ShelfError.Unreachable"/>.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long a fence may wait for the victim's accepted writes to finish.</summary>
    public TimeSpan FenceTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>Port <paramref name="port"/>'s socket of the shelf serving <paramref name="dataDirectory"/>.</summary>
    public static RemoteShelfPortOptions ForDataDirectory(string dataDirectory, string port) => new()
    {
        Port = ShelfPorts.Check(port),
        EndPoint = new UnixDomainSocketEndPoint(ShelfServer.SocketPathFor(dataDirectory, port)),
    };
}

/// <summary>
/// A controller's port on a shelf in another process (`duet shelf`), over the shelf protocol
/// (docs/internals/shelf-protocol.md). Thread-safe and pipelined: every caller's request is in
/// flight at once on one connection and matched to its response by tag. Callers cannot tell it
/// from <see cref="LocalShelfPort"/>: refusals are the same <see cref="ShelfException"/>s, and
/// Open/Create fail with the same FileNotFoundException/IOException.
///
/// Drives opened through it are <see cref="IBlockDevice"/>s whose every read, write and flush is a
/// request to the shelf (checked there against fences, registrations and pulled slots).
///
/// A lost connection fails the requests in flight with <see cref="ShelfError.Unreachable"/>; the
/// next request connects again, so a restarted shelf is picked up. Every request has a deadline
/// (<see cref="RemoteShelfPortOptions.RequestTimeout"/>).
///
/// <see cref="IDriveShelf"/>'s List, Contains, Open and Create are synchronous: here each blocks its
/// caller for one round trip. They are management-path calls (array scan, `duet drive add`), never
/// per I/O; the client's own continuations never need the caller's thread, so blocking cannot deadlock.
/// </summary>
public sealed class RemoteShelfPort : IShelfPort, IAsyncDisposable
{
    readonly ShelfChannel _channel;
    readonly RemoteShelfPortOptions _options;

    public RemoteShelfPort(RemoteShelfPortOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(options.EndPoint);
        if (options.RequestTimeout <= TimeSpan.Zero) throw new ArgumentException("RequestTimeout must be positive", nameof(options));
        _options = options;
        PortName = ShelfPorts.Check(options.Port);
        _channel = new ShelfChannel(options.EndPoint, PortName, options.RequestTimeout, options.TimeProvider);
    }

    public string PortName { get; }

    /// <summary>Connections made so far (each reconnect after a drop adds one).</summary>
    public int Connects => _channel.Connects;

    /// <summary>Responses read on the connection reader's own thread, and how many of those reads slept in poll first (tests, diagnostics).</summary>
    public (long Reads, long Sleeps) ReaderThreadReads => _channel.ReaderThreadReads;

    /// <summary>The request's response; a refusal fails the task with its <see cref="ShelfException"/>.</summary>
    Task<ShelfResponse> Call(ShelfRequest request, CancellationToken ct, Memory<byte> readInto = default, TimeSpan? timeout = null) =>
        _channel.CallAsync(request, readInto, ct, timeout, throwOnError: true);

    ShelfResponse Blocking(ShelfRequest request) => Call(request, CancellationToken.None).GetAwaiter().GetResult();

    // ---- IDriveShelf (management path; blocking) ---------------------------------------------------

    public IReadOnlyList<string> List() => Blocking(new(ShelfOp.List, 0)).Names;

    public bool Contains(string name) => Blocking(new(ShelfOp.Contains, 0) { Name = name }).Value != 0;

    public string Describe(string name) => $"shelf slot {name} (port {PortName} at {_options.EndPoint})";

    public IBlockDevice Open(string name)
    {
        try
        {
            var r = Blocking(new(ShelfOp.Open, 0) { Name = name });
            return new RemoteDrive(this, name, r.Value);
        }
        catch (ShelfException e) when (e.Error == ShelfError.NoSuchSlot)
        {
            throw new FileNotFoundException(e.Message);
        }
    }

    public IBlockDevice Create(string name, long sizeBytes)
    {
        try
        {
            var r = Blocking(new(ShelfOp.Create, 0) { Name = name, SizeBytes = sizeBytes });
            return new RemoteDrive(this, name, r.Value);
        }
        catch (ShelfException e) when (e.Error == ShelfError.Exists)
        {
            throw new IOException(e.Message, e);
        }
    }

    /// <summary>A drive's identity as the shelf reports it: block count and serial (<see cref="Shelf.SerialOf"/>).</summary>
    public async Task<(long BlockCount, string Serial)> IdentifyAsync(string name, CancellationToken ct = default)
    {
        var r = await Call(new(ShelfOp.Open, 0) { Name = name }, ct).ConfigureAwait(false);
        return (r.Value, r.Name);
    }

    // ---- control -----------------------------------------------------------------------------------

    public Task RegisterAsync(ulong key, CancellationToken ct = default) => Call(new(ShelfOp.Register, 0) { Value = key }, ct);
    public Task ReserveAsync(CancellationToken ct = default) => Call(new(ShelfOp.Reserve, 0), ct);
    public Task PreemptAsync(ulong victimKey, CancellationToken ct = default) => Call(new(ShelfOp.Preempt, 0) { Value = victimKey }, ct);
    public Task SetEnabledAsync(bool enabled, CancellationToken ct = default) => Call(new(ShelfOp.SetEnabled, 0) { Value = enabled ? 1UL : 0 }, ct);
    public Task SetMirrorStaleAsync(bool stale, CancellationToken ct = default) => Call(new(ShelfOp.SetMirrorStale, 0) { Value = stale ? 1UL : 0 }, ct);
    public Task SetLogStaleAsync(bool stale, CancellationToken ct = default) => Call(new(ShelfOp.SetLogStale, 0) { Value = stale ? 1UL : 0 }, ct);
    public Task FenceAsync(string victim, CancellationToken ct = default) => Call(new(ShelfOp.Fence, 0) { Name = victim }, ct, timeout: _options.FenceTimeout);
    public Task UnfenceAsync(string victim, CancellationToken ct = default) => Call(new(ShelfOp.Unfence, 0) { Name = victim }, ct);

    public async Task<IReadOnlyList<ArrayClaim>> ClaimAsync(IReadOnlyList<ulong> serials, CancellationToken ct = default) =>
        (await Call(new(ShelfOp.Claim, 0) { Serials = serials }, ct).ConfigureAwait(false)).Claims;

    public async Task<IReadOnlyList<ArrayClaim>> ClaimForAsync(string owner, IReadOnlyList<ulong> serials, CancellationToken ct = default) =>
        (await Call(new(ShelfOp.ClaimFor, 0) { Name = ShelfPorts.Check(owner), Serials = serials }, ct).ConfigureAwait(false)).Claims;

    public Task ReleaseAsync(IReadOnlyList<ulong> serials, CancellationToken ct = default) => Call(new(ShelfOp.Release, 0) { Serials = serials }, ct);

    public async Task<ShelfStatus> HeartbeatAsync(ulong beat, CancellationToken ct = default) =>
        (await Call(new(ShelfOp.Heartbeat, 0) { Value = beat }, ct).ConfigureAwait(false)).ShelfStatus!;

    public async Task<ShelfStatus> StatusAsync(CancellationToken ct = default) =>
        (await Call(new(ShelfOp.Status, 0), ct).ConfigureAwait(false)).ShelfStatus!;

    public ValueTask DisposeAsync() => _channel.DisposeAsync();

    /// <summary>A drive on the remote shelf: every request goes over the wire (transfers over
    /// <see cref="ShelfWire.MaxTransferBytes"/> are cut into several requests, in order).</summary>
    sealed class RemoteDrive(RemoteShelfPort port, string name, long blocks) : IBlockDevice
    {
        public string Name => name;
        public long BlockCount => blocks;

        // One request (the usual case) is returned as its task; a larger transfer goes as several, in order.

        public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default)
        {
            try { BlockDeviceChecks.CheckRange(this, lba, destination.Length); }
            catch (Exception e) { return ValueTask.FromException(e); }
            if (destination.Length <= ShelfWire.MaxTransferBytes)
                return new ValueTask(port.Call(new(ShelfOp.Read, 0) { Name = name, Lba = lba, Length = destination.Length }, ct, destination));
            return ReadInPiecesAsync(lba, destination, ct);
        }

        async ValueTask ReadInPiecesAsync(long lba, Memory<byte> destination, CancellationToken ct)
        {
            for (int done = 0; done < destination.Length;)
            {
                int n = Math.Min(destination.Length - done, ShelfWire.MaxTransferBytes);
                await port.Call(new(ShelfOp.Read, 0) { Name = name, Lba = lba + done / Units.BlockBytes, Length = n }, ct, destination.Slice(done, n)).ConfigureAwait(false);
                done += n;
            }
        }

        public ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default)
        {
            try { BlockDeviceChecks.CheckRange(this, lba, source.Length); }
            catch (Exception e) { return ValueTask.FromException(e); }
            if (source.Length <= ShelfWire.MaxTransferBytes)
                return new ValueTask(port.Call(new(ShelfOp.Write, 0)
                {
                    Name = name, Lba = lba, Payload = source, Flags = fua ? ShelfRequestFlags.Fua : ShelfRequestFlags.None,
                }, ct));
            return WriteInPiecesAsync(lba, source, fua, ct);
        }

        async ValueTask WriteInPiecesAsync(long lba, ReadOnlyMemory<byte> source, bool fua, CancellationToken ct)
        {
            for (int done = 0; done < source.Length;)
            {
                int n = Math.Min(source.Length - done, ShelfWire.MaxTransferBytes);
                await port.Call(new(ShelfOp.Write, 0)
                {
                    Name = name, Lba = lba + done / Units.BlockBytes, Payload = source.Slice(done, n),
                    Flags = fua ? ShelfRequestFlags.Fua : ShelfRequestFlags.None,
                }, ct).ConfigureAwait(false);
                done += n;
            }
        }

        public ValueTask FlushAsync(CancellationToken ct = default) => new(port.Call(new(ShelfOp.Flush, 0) { Name = name }, ct));

        /// <summary>One WriteGather request when the extents fit one (and the shelf knows the opcode); else a write each.</summary>
        public ValueTask WriteGatherAsync(ReadOnlyMemory<WriteExtent> extents, CancellationToken ct = default)
        {
            long total = 0;
            try
            {
                foreach (var e in extents.Span)
                {
                    BlockDeviceChecks.CheckRange(this, e.Lba, e.Data.Length);
                    total += e.Data.Length;
                }
            }
            catch (Exception e) { return ValueTask.FromException(e); }
            if (extents.Length is 0 or > ShelfWire.MaxGatherExtents || total > ShelfWire.MaxTransferBytes || port._channel.ShelfVersion < 2)
                return BlockDeviceChecks.WriteEachAsync(this, extents, ct);
            return new ValueTask(port.Call(new(ShelfOp.WriteGather, 0) { Name = name, Extents = extents.ToArray() }, ct));
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask; // the shelf owns the drive
    }
}

/// <summary>The administrator's client of `duet shelf` (DATA/shelf-admin.sock): what `duet shelf pull/insert/fence/unfence/status` send.</summary>
public sealed class ShelfAdminClient : IAsyncDisposable
{
    readonly ShelfChannel _channel;

    public ShelfAdminClient(EndPoint endPoint, TimeSpan? requestTimeout = null, TimeProvider? time = null) =>
        _channel = new ShelfChannel(endPoint, ShelfWire.AdminRole, requestTimeout ?? TimeSpan.FromSeconds(5), time ?? TimeProvider.System);

    public static ShelfAdminClient ForDataDirectory(string dataDirectory, TimeSpan? requestTimeout = null) =>
        new(new UnixDomainSocketEndPoint(ShelfServer.AdminSocketPathFor(dataDirectory)), requestTimeout);

    async Task<ShelfResponse> Call(ShelfRequest request, CancellationToken ct, TimeSpan? timeout = null) =>
        (await _channel.CallAsync(request, default, ct, timeout).ConfigureAwait(false)).Ok();

    public async Task<ShelfStatus> StatusAsync(CancellationToken ct = default) => (await Call(new(ShelfOp.Status, 0), ct).ConfigureAwait(false)).ShelfStatus!;
    public Task PullAsync(string slot, CancellationToken ct = default) => Call(new(ShelfOp.Pull, 0) { Name = slot }, ct);
    public Task InsertAsync(string slot, CancellationToken ct = default) => Call(new(ShelfOp.Insert, 0) { Name = slot }, ct);
    /// <summary>Fences a port; returns once the writes the shelf had accepted from it have finished.</summary>
    public Task FenceAsync(string port, CancellationToken ct = default) => Call(new(ShelfOp.AdminFence, 0) { Name = port }, ct, TimeSpan.FromSeconds(30));
    public Task UnfenceAsync(string port, CancellationToken ct = default) => Call(new(ShelfOp.AdminUnfence, 0) { Name = port }, ct);

    public ValueTask DisposeAsync() => _channel.DisposeAsync();
}
