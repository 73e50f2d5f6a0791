using System.Net;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi.Tests;

/// <summary>An in-process target on 127.0.0.1 port 0.</summary>
public sealed class IscsiServerFixture : IAsyncDisposable
{
    public const string Target = IscsiServerOptions.DefaultTargetName;

    private IscsiServerFixture(IScsiDevice device, IscsiServer server, IscsiListLogger logger)
    {
        Device = device;
        Server = server;
        Logger = logger;
    }

    public IScsiDevice Device { get; }
    public IscsiTestDevice TestDevice => (IscsiTestDevice)Device;
    public IscsiServer Server { get; }
    public IscsiListLogger Logger { get; }
    public IPEndPoint EndPoint => Server.LocalEndPoint;

    public static Task<IscsiServerFixture> StartAsync(Func<IscsiServerOptions, IscsiServerOptions>? configure = null, IScsiDevice? device = null)
    {
        return StartAsync(new IscsiServerOptions { Endpoint = new IPEndPoint(IPAddress.Loopback, 0) }, configure, device);
    }

    private static async Task<IscsiServerFixture> StartAsync(IscsiServerOptions options, Func<IscsiServerOptions, IscsiServerOptions>? configure, IScsiDevice? device)
    {
        if (configure is not null) options = configure(options);
        device ??= new IscsiTestDevice();
        var logger = new IscsiListLogger();
        var server = new IscsiServer(device, options, logger);
        await server.StartAsync();
        return new IscsiServerFixture(device, server, logger);
    }

    public async Task<IscsiTestClient> LoginAsync(params (string, string)[] operational)
    {
        var client = await IscsiTestClient.ConnectAsync(EndPoint);
        Assert.Equal(LoginStatus.Success, await client.LoginAsync(Target, operational: operational));
        return client;
    }

    /// <summary>A fresh session can still log in, write and read back: the target kept serving.</summary>
    public async Task AssertStillServesAsync()
    {
        await using var client = await IscsiTestClient.ConnectAsync(EndPoint);
        client.Isid = 0x80_0000_0000_99UL;
        Assert.Equal(LoginStatus.Success, await client.LoginAsync(Target));
        await client.ClearUnitAttentionsAsync();
        var data = new byte[4096];
        for (int i = 0; i < data.Length; i++) data[i] = (byte)(i * 7 + 3);
        var w = await client.WriteAsync(IscsiTestClient.Write10(2048, 8), data, immediateBytes: 1024);
        Assert.Equal(0, w.Status);
        var r = await client.ReadAsync(IscsiTestClient.Read10(2048, 8), 4096);
        Assert.Equal(0, r.Status);
        Assert.Equal(data, r.DataIn);
        await client.LogoutAsync();
    }

    public async ValueTask DisposeAsync() => await Server.DisposeAsync();
}
