using System.Net;
using Duet.Core;
using Duet.Drives;
using Duet.Host.Management;
using Duet.Nbd;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Server;

public sealed record DuetServerOptions
{
    public required string DataDirectory { get; init; }
    public IPEndPoint NbdEndpoint { get; init; } = new(IPAddress.Loopback, NbdServerOptions.DefaultPort);
    /// <summary>On a data directory with no drives, create ARCHITECTURE.md's default layout.</summary>
    public bool CreateDefaultLayout { get; init; } = true;
    public int DefaultDriveCount { get; init; } = 8;
    public long DefaultDriveBytes { get; init; } = Units.GiB(1);
    public TimeProvider Time { get; init; } = TimeProvider.System;
}

/// <summary>
/// The composition root of one controller process: the only place where real files, sockets
/// and clocks are chosen. It assembles the arrays of a data directory, serves their volumes
/// over NBD and the management API on DATA/duet.sock.
/// </summary>
public sealed partial class DuetServer : IAsyncDisposable
{
    readonly ILogger _logger;

    DuetServer(ArrayManager arrays, ManagementHost management, NbdServer nbd, string dataDirectory, bool createdDefault, ILogger logger)
    {
        Arrays = arrays;
        Management = management;
        Nbd = nbd;
        DataDirectory = dataDirectory;
        CreatedDefaultLayout = createdDefault;
        _logger = logger;
    }

    public ArrayManager Arrays { get; }
    public ManagementHost Management { get; }
    public NbdServer Nbd { get; }
    public string DataDirectory { get; }
    public bool CreatedDefaultLayout { get; }
    public IPEndPoint NbdEndpoint => Nbd.LocalEndPoint;

    public static async Task<DuetServer> StartAsync(DuetServerOptions options, ILoggerFactory loggerFactory, CancellationToken ct = default)
    {
        var dir = Path.GetFullPath(options.DataDirectory);
        Directory.CreateDirectory(dir);
        var logger = loggerFactory.CreateLogger<DuetServer>();
        var shelf = new FileShelf(FileShelf.DirectoryFor(dir));
        bool fresh = shelf.List().Count == 0;
        var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { DataDirectory = dir, Shelf = shelf, Time = options.Time, LoggerFactory = loggerFactory }, ct);
        ManagementHost? management = null;
        NbdServer? nbd = null;
        try
        {
            bool created = false;
            if (fresh && options.CreateDefaultLayout)
            {
                await CreateDefaultLayoutAsync(arrays, options.DefaultDriveCount, options.DefaultDriveBytes, ct);
                created = true;
            }
            management = await ManagementHost.StartAsync(arrays, ManagementHost.SocketPathFor(dir), loggerFactory, ct);
            nbd = new NbdServer(arrays, new NbdServerOptions { Endpoint = options.NbdEndpoint, TimeProvider = options.Time }, loggerFactory.CreateLogger<NbdServer>());
            await nbd.StartAsync(ct);
            var server = new DuetServer(arrays, management, nbd, dir, created, logger);
            LogStarted(logger, dir, nbd.LocalEndPoint.ToString());
            return server;
        }
        catch
        {
            if (nbd is not null) await nbd.DisposeAsync();
            if (management is not null) await management.DisposeAsync();
            await arrays.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// ARCHITECTURE.md's default layout: the drives (eight sparse 1 GiB by default) as two RAID 6
    /// arrays of half each; vol0 fills arr0 (owned by controller A), vol1 fills arr1 (owned by B).
    /// A single controller serves both whatever their owner; a pair splits them.
    /// </summary>
    public static async Task CreateDefaultLayoutAsync(ArrayManager arrays, int driveCount, long driveBytes, CancellationToken ct = default)
    {
        int half = driveCount / 2;
        for (int i = 0; i < driveCount; i++)
            await arrays.AddDriveAsync(new AddDriveRequest($"d{i}", driveBytes), ct);
        for (int a = 0; a < 2; a++)
        {
            var drives = Enumerable.Range(a * half, half).Select(i => $"d{i}").ToList();
            await arrays.CreateArrayAsync(new CreateArrayRequest($"arr{a}", 6, drives, Owner: a == 0 ? "A" : "B"), ct);
            await arrays.CreateVolumeAsync(new CreateVolumeRequest($"vol{a}", $"arr{a}", 0), ct);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Nbd.DisposeAsync();
        await Management.DisposeAsync();
        await Arrays.DisposeAsync();
        LogStopped(_logger, DataDirectory);
    }

    [LoggerMessage(EventId = 3001, Level = LogLevel.Information, Message = "serving {DataDirectory}; NBD on {Endpoint}")]
    static partial void LogStarted(ILogger logger, string dataDirectory, string endpoint);

    [LoggerMessage(EventId = 3002, Level = LogLevel.Information, Message = "stopped cleanly; data kept in {DataDirectory}")]
    static partial void LogStopped(ILogger logger, string dataDirectory);
}
