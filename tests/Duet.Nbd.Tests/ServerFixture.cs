using System.Net;
using Duet.Core;

namespace Duet.Nbd.Tests;

/// <summary>An in-process server on 127.0.0.1 port 0 over memory volumes.</summary>
public sealed class ServerFixture : IAsyncDisposable
{
    public const string VolumeName = "vol";
    public const string ReadOnlyName = "ro";

    private ServerFixture(MemoryVolume volume, MemoryVolume readOnly, NbdServer server, ListLogger logger)
    {
        Volume = volume;
        ReadOnlyVolume = readOnly;
        Server = server;
        Logger = logger;
    }

    public MemoryVolume Volume { get; }
    public MemoryVolume ReadOnlyVolume { get; }
    public NbdServer Server { get; }
    public ListLogger Logger { get; }
    public IPEndPoint EndPoint => Server.LocalEndPoint;
    public string Uri => $"nbd://127.0.0.1:{EndPoint.Port}/{VolumeName}";

    public static async Task<ServerFixture> StartAsync(long sizeBytes = 16 << 20, int maxPayloadBytes = 32 << 20, int maxInFlight = 64)
    {
        var volume = new MemoryVolume(VolumeName, sizeBytes);
        var readOnly = new MemoryVolume(ReadOnlyName, 1 << 20, readOnly: true);
        var logger = new ListLogger();
        var server = new NbdServer(new MemoryCatalog(volume, readOnly),
            new NbdServerOptions { Endpoint = new IPEndPoint(IPAddress.Loopback, 0), MaxPayloadBytes = maxPayloadBytes, MaxInFlightRequests = maxInFlight }, logger);
        await server.StartAsync();
        return new ServerFixture(volume, readOnly, server, logger);
    }

    /// <summary>A fresh client can still negotiate, write and read back: the server kept serving.</summary>
    public async Task AssertStillServesAsync()
    {
        await using var client = await NbdTestClient.OpenAsync(EndPoint, VolumeName);
        var data = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7 + 3)).ToArray();
        Assert.Equal(NbdError.None, (await client.WriteAsync(1 << 20, data)).Error);
        var read = await client.ReadAsync(1 << 20, 4096);
        Assert.Equal(NbdError.None, read.Error);
        Assert.Equal(data, read.Data);
    }

    public async ValueTask DisposeAsync() => await Server.DisposeAsync();
}
