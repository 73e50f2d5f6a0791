using System.Net.Sockets;
using Duet.Host.Management;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Cli.Tests;

sealed record CliResult(int Code, string Out, string Err);

static class TempDir
{
    // Short, because a Unix socket path must fit in 107 bytes.
    public static string Create()
    {
        var dir = Path.Combine(Path.GetTempPath(), "duet-cli-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(dir);
        return dir;
    }
}

/// <summary>A real ManagementHost on a temporary data directory over an in-memory service,
/// and the real CLI run in-process against it.</summary>
sealed class Controller : IAsyncDisposable
{
    Controller(InMemoryArrayService service, string dataDir, ManagementHost host)
    {
        Service = service;
        DataDir = dataDir;
        Host = host;
    }

    public InMemoryArrayService Service { get; }
    public string DataDir { get; }
    public ManagementHost Host { get; }
    public string SocketPath => Host.SocketPath;

    public static async Task<Controller> StartAsync(InMemoryArrayService service)
    {
        var dir = TempDir.Create();
        var host = await ManagementHost.StartAsync(service, ManagementHost.SocketPathFor(dir), NullLoggerFactory.Instance, CancellationToken.None);
        return new Controller(service, dir, host);
    }

    /// <summary>Runs `duet ARGS --data DIR` in-process with captured stdout and stderr.</summary>
    public Task<CliResult> Duet(params string[] args) => Run(DataDir, args);

    public static async Task<CliResult> Run(string dataDir, params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        var code = await Program.RunAsync([.. args, "--data", dataDir], output, error);
        return new CliResult(code, output.ToString(), error.ToString());
    }

    /// <summary>A plain HttpClient on the management socket, for requests the typed client cannot make.</summary>
    public HttpClient RawHttp()
    {
        var path = SocketPath;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                return new NetworkStream(socket, ownsSocket: true);
            },
        };
        return new HttpClient(handler) { BaseAddress = new Uri("http://duet/") };
    }

    public async ValueTask DisposeAsync()
    {
        await Host.DisposeAsync();
        Directory.Delete(DataDir, recursive: true);
    }
}
