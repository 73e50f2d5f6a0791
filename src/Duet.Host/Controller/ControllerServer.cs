using System.Net;
using Duet.Cache;
using Duet.Cache.Mirror;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Host.Management;
using Duet.HostProtocol;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Iscsi;
using Duet.Nbd;
using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

public sealed record ControllerOptions
{
    /// <summary>"A" or "B".</summary>
    public required string Name { get; init; }
    public required string DataDirectory { get; init; }
    public IPEndPoint NbdEndpoint { get; init; } = new(IPAddress.Loopback, 10809);
    /// <summary>The iSCSI portal of this controller (null: 127.0.0.1:3260 for A, 3261 for B).</summary>
    public IPEndPoint? IscsiEndpoint { get; init; }
    /// <summary>Every portal of the pair's iSCSI target, for SendTargets (null: this controller's own,
    /// then the peer's on the next port for A / the previous one for B, as `duet up` lays them out).</summary>
    public IReadOnlyList<IscsiPortal>? IscsiPortals { get; init; }
    /// <summary>How the ICL is carried: shared-memory windows under /dev/shm (default) or TCP.</summary>
    public IclTransportKind IclTransport { get; init; } = IclTransportKind.SharedMemory;
    /// <summary>The directory of the shared-memory window files (null: <see cref="SharedMemoryIclTransport.DefaultDirectory"/>).</summary>
    public string? IclDirectory { get; init; }
    /// <summary>The ICL's TCP endpoint (with <see cref="IclTransportKind.Tcp"/>): controller A listens on it, B connects to it.</summary>
    public IPEndPoint IclEndpoint { get; init; } = new(IPAddress.Loopback, 10815);
    public long NvramBytes { get; init; } = NvramLayout.DefaultTotalBytes;
    public MirrorMethod Mirror { get; init; } = MirrorMethod.Batched;
    /// <summary>AW-4's write log; off only to measure its cost (see <see cref="ControllerCoreOptions.WriteLog"/>).</summary>
    public bool WriteLog { get; init; } = true;
    public TimeSpan ForwardTimeout { get; init; } = TimeSpan.FromSeconds(5);
    public TimeProvider Time { get; init; } = TimeProvider.System;
    /// <summary>The session id sent in PairHello; null: a random one (this is the shell: it may draw one).</summary>
    public ulong? Session { get; init; }
    /// <summary>Reach the drives through `duet shelf` (DATA/shelf-NAME.sock) instead of opening the drive files:
    /// fencing, heartbeats through the shelf, takeover of a dead peer (issue 5).</summary>
    public bool UseShelf { get; init; }
    public FailoverOptions Failover { get; init; } = new();
    /// <summary>The ports (127.0.0.1) of this controller's two units of Duet's host protocol, unit 0 then unit 1;
    /// unit N of A and unit N of B form multicast group N. Null: A 10811 and 10812, B 10813 and 10814.</summary>
    public IReadOnlyList<int>? HostUnitPorts { get; init; }
    /// <summary>AW-6: the graceful power-fail window (see <see cref="Controller.PowerFailAsync"/>).</summary>
    public TimeSpan PowerFailWindow { get; init; } = ControllerCoreOptions.DefaultPowerFailWindow;

    public string PeerName => Name == "A" ? "B" : "A";
    public static string SocketFor(string dataDirectory, string name) =>
        Path.Combine(dataDirectory, name == "A" ? ManagementHost.SocketFileName : $"duet-{name}.sock");
    public static string NvramPathFor(string dataDirectory, string name) => Path.Combine(dataDirectory, $"nvram-{name}.bin");
    /// <summary>The controller's APTPL persistent-reservation state (ReservationFile), next to its NVRAM file.</summary>
    public static string ReservationPathFor(string dataDirectory, string name) => Path.Combine(dataDirectory, $"pr-{name}.bin");
}

/// <summary>How the two controllers' inter-controller link is carried.</summary>
public enum IclTransportKind
{
    /// <summary>Windows mapped from /dev/shm by both controllers (one host), named from the pair id.</summary>
    SharedMemory,
    /// <summary>A TCP connection on <see cref="ControllerOptions.IclEndpoint"/>.</summary>
    Tcp,
}

/// <summary>
/// `duet controller`: one <see cref="Controller"/> of the pair, with the real parts around it.
/// This is the composition root: it opens the drive files (DATA/drives), the NVRAM file, the ICL
/// (shared-memory windows or TCP), and serves the controller's management API on its Unix
/// socket and its volumes over NBD.
/// </summary>
public sealed partial class ControllerServer : IAsyncDisposable
{
    readonly ControllerOptions _options;
    readonly ILogger _logger;
    ControllerMetrics? _metrics;

    /// <summary>The controller itself (no sockets or files).</summary>
    public Controller Controller { get; }
    public NbdServer Nbd { get; private set; } = null!;
    public IscsiServer Iscsi { get; private set; } = null!;
    IscsiCatalogDevice? _iscsiDevice;
    public ManagementHost Management { get; private set; } = null!;
    /// <summary>Units 0 and 1 of Duet's host protocol (FO-6).</summary>
    public IReadOnlyList<HostUnitServer> HostUnits { get; private set; } = [];
    public string Name => _options.Name;
    public ArrayManager Arrays => Controller.Arrays;

    ControllerServer(ControllerOptions options, Controller controller, ILoggerFactory loggers)
    {
        _options = options;
        _logger = loggers.CreateLogger($"Duet.Controller.{options.Name}");
        Controller = controller;
        Duet.Core.Invariant.Violated += controller.OnInvariantViolated;
    }

    public static async Task<ControllerServer> StartAsync(ControllerOptions options, ILoggerFactory loggers, CancellationToken ct = default)
    {
        if (options.Name is not ("A" or "B")) throw new ArgumentException($"controller name '{options.Name}' must be A or B");
        var dir = Path.GetFullPath(options.DataDirectory);
        Directory.CreateDirectory(dir);
        var pairId = PairId(dir);
        ulong session = options.Session ?? ((ulong)Random.Shared.NextInt64() | 1);
        RemoteShelfPort? shelf = null;
        ShelfClaims? claims = null;
        if (options.UseShelf)
        {
            shelf = new RemoteShelfPort(RemoteShelfPortOptions.ForDataDirectory(dir, options.Name));
            claims = new ShelfClaims(options.Name);
            var joined = await Controller.JoinShelfAsync(shelf, session, options.Time, claims, ct);
            if (!joined) loggers.CreateLogger($"Duet.Controller.{options.Name}").LogWarning("port {Port} is fenced at the shelf: starting as standby", options.Name);
        }
        var arrays = await Controller.OpenArraysAsync(new ArrayManagerOptions
        {
            DataDirectory = shelf is null ? dir : null, Shelf = shelf, Time = options.Time, LoggerFactory = loggers, Controller = options.Name,
            MayServe = claims is null ? null : claims.MayServe,
        }, options.Time, ct);
        NvramFile? nvram = null;
        IIclLink? link = null;
        Controller? controller = null;
        ControllerServer? server = null;
        try
        {
            nvram = NvramFile.OpenOrCreate(ControllerOptions.NvramPathFor(dir, options.Name), NvramLayout.For(options.NvramBytes), options.Name, pairId);
            // The message buffer holds a whole host frame of the handshake (a forwarded 512 KiB write, a
            // completion with 512 KiB of read data: HandshakeMessage carries it in the message).
            var icl = IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20, MessageBufferBytes = 2 << 20 };
            link = options.IclTransport switch
            {
                IclTransportKind.SharedMemory => SharedMemoryIclTransport.Open(pairId.ToString("N"), options.Name, options.PeerName, icl, options.Time, options.IclDirectory),
                _ when options.Name == "A" => TcpIclTransport.Listen(options.Name, options.PeerName, options.IclEndpoint, icl, options.Time),
                _ => TcpIclTransport.Connect(options.Name, options.PeerName, options.IclEndpoint, icl, options.Time),
            };
            controller = new Controller(new ControllerCoreOptions
            {
                Name = options.Name, Session = session, Mirror = options.Mirror, WriteLog = options.WriteLog,
                ForwardTimeout = options.ForwardTimeout, Time = options.Time, Loggers = loggers, Shelf = shelf, Claims = claims, Failover = options.Failover,
                ReservationPersistence = new FileReservationPersistence(ControllerOptions.ReservationPathFor(dir, options.Name)),
                PowerFailWindow = options.PowerFailWindow,
            }, arrays, nvram, link);
            server = new ControllerServer(options with { DataDirectory = dir }, controller, loggers);
            await controller.StartAsync();
            server._metrics = new ControllerMetrics(controller);
            // A window begun by the peer (a power failure of the pair) stops the front ends too.
            var self = server;
            controller.PowerFailBegan += _ => self.StopFrontEnds();
            server.Management = await ManagementHost.StartAsync(controller.ArrayService, ControllerOptions.SocketFor(dir, options.Name), loggers, ct,
                (request, _) => self.PowerFailAsync(ParseScope(request.Scope)));
            server.Nbd = new NbdServer(controller.Volumes, new NbdServerOptions
            {
                Endpoint = options.NbdEndpoint, TimeProvider = options.Time, ShutdownTimeout = HostPhase(options.PowerFailWindow),
            }, loggers.CreateLogger<NbdServer>());
            await server.Nbd.StartAsync(ct);
            server._iscsiDevice = IscsiCatalogDevice.Create(controller.Volumes, IscsiServerOptions.DefaultTargetName, options.Time,
                () => VolumeAccessStates(controller), controller.Reservations, IscsiCatalogDevice.ControllerFailoverHold);
            var device = server._iscsiDevice;
            // Off the thread that noticed (the link's, the takeover's): the refresh reads the catalog and the arrays.
            controller.AccessChanged += () => _ = Task.Run(device.Refresh);
            server.Iscsi = new IscsiServer(server._iscsiDevice, IscsiOptionsFor(options), loggers.CreateLogger<IscsiServer>());
            await server.Iscsi.StartAsync(ct);
            server.HostUnits = await StartHostUnitsAsync(options, controller, loggers, ct);
            server.LogStarted(options.Name, server.Nbd.LocalEndPoint.ToString(), server.Iscsi.LocalEndPoint.ToString(), string.Join(", ", server.HostUnits.Select(u => u.LocalEndPoint)), nvram.Layout.Describe());
            return server;
        }
        catch
        {
            if (server is not null)
            {
                foreach (var unit in server.HostUnits) await unit.DisposeAsync();
                if (server.Nbd is not null) await server.Nbd.DisposeAsync();
                if (server.Iscsi is not null) await server.Iscsi.DisposeAsync();
                server._iscsiDevice?.Dispose();
                if (server.Management is not null) await server.Management.DisposeAsync();
                server._metrics?.Dispose();
            }
            if (controller is not null) await controller.DisposeAsync();
            else
            {
                if (link is not null) await link.DisposeAsync();
                nvram?.Dispose();
                await arrays.DisposeAsync();
            }
            if (shelf is not null) await shelf.DisposeAsync();
            throw;
        }
    }

    /// <summary>The pair's identity, shared by both controllers through the data directory. Published
    /// atomically (a temporary file renamed into place without overwriting), so a controller that
    /// starts at the same moment reads either nothing or the whole id, and both end with the same one.</summary>
    public static Guid PairId(string dir)
    {
        var path = Path.Combine(dir, "pair.id");
        if (!File.Exists(path))
        {
            var tmp = Path.Combine(dir, $"pair.id.{Environment.ProcessId}.{Guid.NewGuid():N}");
            File.WriteAllText(tmp, Guid.NewGuid().ToString());
            try { File.Move(tmp, path, overwrite: false); }
            catch (IOException) when (File.Exists(path)) { }
            finally { File.Delete(tmp); }
        }
        var text = File.ReadAllText(path).Trim();
        return Guid.TryParse(text, out var id) ? id
            : throw new IOException($"{path} does not hold a pair id ('{text}'); delete it to let the pair make a new one");
    }

    /// <summary>The iSCSI target of controller A is portal group 1 / relative target port 1, B's group 2 /
    /// port 2 (the device server's fixed two-controller ALUA view).</summary>
    static IscsiServerOptions IscsiOptionsFor(ControllerOptions options)
    {
        bool a = options.Name == "A";
        ushort group = a ? FixedGroupA : FixedGroupB;
        var endpoint = options.IscsiEndpoint ?? new IPEndPoint(IPAddress.Loopback, IscsiServerOptions.DefaultPort + (a ? 0 : 1));
        var portals = options.IscsiPortals;
        if (portals is null)
        {
            int peerPort = endpoint.Port + (a ? 1 : -1);
            var own = new IscsiPortal(endpoint.Address.ToString(), endpoint.Port, group);
            var peer = new IscsiPortal(endpoint.Address.ToString(), peerPort, a ? FixedGroupB : FixedGroupA);
            portals = peerPort is > 0 and <= 65535 ? (a ? [own, peer] : [peer, own]) : [own];
        }
        return new IscsiServerOptions
        {
            Endpoint = endpoint, PortalGroupTag = group, RelativeTargetPort = group, Portals = portals,
            TargetAlias = $"duet-{options.Name}", TimeProvider = options.Time, ShutdownTimeout = HostPhase(options.PowerFailWindow),
        };
    }

    /// <summary>Each volume's ALUA states as the controller sees them (its own port group and the peer's),
    /// as groups A (1) and B (2).</summary>
    public static IReadOnlyList<Duet.Iscsi.Scsi.VolumeAccess> VolumeAccessStates(Controller controller)
    {
        bool a = controller.Name == "A";
        return [.. controller.AccessStates().Select(s => new Duet.Iscsi.Scsi.VolumeAccess(s.Volume, a ? s.Own : s.Peer, a ? s.Peer : s.Own))];
    }

    const ushort FixedGroupA = Duet.Iscsi.Scsi.FixedScsiPortGroups.GroupA;
    const ushort FixedGroupB = Duet.Iscsi.Scsi.FixedScsiPortGroups.GroupB;

    /// <summary>Both units of the host protocol, on the controller's handshake; all or none.</summary>
    static async Task<IReadOnlyList<HostUnitServer>> StartHostUnitsAsync(ControllerOptions options, Controller controller, ILoggerFactory loggers, CancellationToken ct)
    {
        var ports = options.HostUnitPorts ?? [.. Enumerable.Range(0, HostWire.UnitsPerController).Select(u => HostWire.DefaultPort(options.Name[0], u))];
        if (ports.Count != HostWire.UnitsPerController) throw new ArgumentException($"a controller has {HostWire.UnitsPerController} host units; {ports.Count} ports given");
        var units = new List<HostUnitServer>();
        try
        {
            for (int u = 0; u < ports.Count; u++)
            {
                var unit = new HostUnitServer(controller.Volumes, controller.Handshake, new HostUnitServerOptions
                {
                    Unit = (byte)u, Controller = options.Name[0], Endpoint = new IPEndPoint(IPAddress.Loopback, ports[u]), TimeProvider = options.Time,
                    ShutdownTimeout = HostPhase(options.PowerFailWindow),
                }, loggers.CreateLogger<HostUnitServer>());
                units.Add(unit);
                await unit.StartAsync(ct);
            }
            return units;
        }
        catch
        {
            foreach (var unit in units) await unit.DisposeAsync();
            throw;
        }
    }

    public ControllerInfo Info() => Controller.Info();

    /// <summary>The front ends' share of a power-fail window: their requests in flight are answered within
    /// the controller's host phase (three quarters of the window), then their connections close.</summary>
    static TimeSpan HostPhase(TimeSpan window) => window * 3 / 4;

    static Duet.Interconnect.Wire.PowerFailScope ParseScope(string scope) => scope switch
    {
        "pair" => Duet.Interconnect.Wire.PowerFailScope.Pair,
        "controller" => Duet.Interconnect.Wire.PowerFailScope.Controller,
        _ => throw new ManagementException(ManagementErrorKind.Invalid, $"power-fail scope '{scope}' is not 'pair' or 'controller'"),
    };

    Task? _frontEndsStopped;
    readonly Lock _frontEndsLock = new();

    /// <summary>The front ends stop listening and reading requests; those in flight are answered (within the
    /// host phase of the window), then the connections close. Idempotent.</summary>
    void StopFrontEnds()
    {
        lock (_frontEndsLock)
        {
            _frontEndsStopped ??= Waits.WhenAll([.. HostUnits.Select(u => u.StopAsync()), Nbd.StopAsync(), Iscsi.StopAsync()]);
        }
    }

    /// <summary>
    /// AW-6: a power-fail notice for this controller (SIGTERM: <see cref="Duet.Interconnect.Wire.PowerFailScope.Controller"/>;
    /// `duet power-fail`, `./duet up` stopping: <see cref="Duet.Interconnect.Wire.PowerFailScope.Pair"/>). The controller
    /// runs its window (<see cref="Controller.PowerFailAsync"/>): its gate closes first, so what it counts in flight is
    /// what was admitted before the notice; as the window begins the front ends stop listening and reading. The report
    /// comes when the window ended. Then dispose the server: nothing is destaged.
    /// </summary>
    public Task<PowerFailReport> PowerFailAsync(Duet.Interconnect.Wire.PowerFailScope scope)
    {
        var report = Controller.PowerFailAsync(scope);
        StopFrontEnds(); // done already by PowerFailBegan, unless the window had begun before (idempotent)
        return report;
    }

    /// <summary>Completes with the window's report once a window ran, whoever began it (this process, or the
    /// peer for a power failure of the pair); never otherwise.</summary>
    public async Task<PowerFailReport> PowerFailedAsync()
    {
        var began = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Controller.PowerFailBegan += _ => began.TrySetResult();
        if (Controller.PowerFailCompletion is null) await began.Task;
        return await Controller.PowerFailCompletion!;
    }

    /// <summary>Stops serving (host units, NBD, management), then stops the controller: in order (its cache
    /// destaged), or after a power-fail window without destaging.</summary>
    public async ValueTask DisposeAsync()
    {
        Duet.Core.Invariant.Violated -= Controller.OnInvariantViolated;
        if (Volatile.Read(ref _frontEndsStopped) is { } stopping) await stopping;
        foreach (var unit in HostUnits) await unit.DisposeAsync();
        await Nbd.DisposeAsync();
        await Iscsi.DisposeAsync();
        _iscsiDevice?.Dispose();
        // After a power-fail window the answer to `duet power-fail` may still be on its way; anything else is cut.
        await Management.StopAsync(Controller.IsPoweringDown ? TimeSpan.FromSeconds(2) : Timeout.InfiniteTimeSpan);
        _metrics?.Dispose();
        await Controller.DisposeAsync();
    }

    [LoggerMessage(EventId = 7001, Level = LogLevel.Information, Message = "controller {Name} serving; NBD on {Endpoint}; iSCSI on {Iscsi}; host units {Units}; NVRAM {Layout}")]
    partial void LogStarted(string name, string endpoint, string iscsi, string units, string layout);
}
