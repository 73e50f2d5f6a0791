using System.Net.Sockets;
using Duet.Host.Management;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Cli.Tests;

[Trait("Area", "Cli")]
public sealed class ControllerMissingTests : IDisposable
{
    readonly string dir = TempDir.Create();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    // What a killed controller leaves: a socket file nobody listens on. (.NET unlinks the path
    // a socket was bound to when it is closed, so bind elsewhere and move the file.)
    static void LeaveStaleSocket(string path)
    {
        var bound = path + ".tmp";
        using (var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            listener.Bind(new UnixDomainSocketEndPoint(bound));
            File.Move(bound, path);
        }
        Assert.True(File.Exists(path));
    }

    [Fact]
    public async Task WithoutASocketTheCliSaysNoControllerIsRunningAndExits1()
    {
        var r = await Controller.Run(dir, "status");

        Assert.Equal(1, r.Code);
        Assert.Equal($"duet: no Duet controller is running with data directory {dir} (socket {dir}/duet.sock not found); start one with ./duet up\n", r.Err);
        Assert.Equal("", r.Out);
    }

    [Fact]
    public async Task WithJsonTheMissingControllerIsAnErrorRecord()
    {
        var r = await Controller.Run(dir, "array", "list", "--json");

        Assert.Equal(1, r.Code);
        Assert.Equal("", r.Err);
        Assert.Contains("no Duet controller is running", System.Text.Json.JsonSerializer.Deserialize(r.Out, ManagementJsonContext.Default.ErrorResponse)!.Error);
    }

    [Fact]
    public async Task ASocketNobodyListensOnIsReportedAsSuch()
    {
        var path = Path.Combine(dir, ManagementHost.SocketFileName);
        LeaveStaleSocket(path);

        var r = await Controller.Run(dir, "drive", "list");

        Assert.Equal(1, r.Code);
        Assert.Equal($"duet: no Duet controller is running with data directory {dir} (nothing is listening on socket {path}); start one with ./duet up\n", r.Err);
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public async Task TheHostReplacesAStaleSocketFileAndRemovesItWhenDisposed()
    {
        var path = Path.Combine(dir, ManagementHost.SocketFileName);
        LeaveStaleSocket(path);

        var host = await ManagementHost.StartAsync(new InMemoryArrayService(), path, NullLoggerFactory.Instance, CancellationToken.None);
        var r = await Controller.Run(dir, "status", "--json");
        Assert.Equal(0, r.Code);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));

        await host.DisposeAsync();
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task TheHostRefusesASocketAnotherControllerIsServing()
    {
        var path = Path.Combine(dir, ManagementHost.SocketFileName);
        await using var first = await ManagementHost.StartAsync(new InMemoryArrayService(), path, NullLoggerFactory.Instance, CancellationToken.None);

        var e = await Assert.ThrowsAsync<IOException>(() =>
            ManagementHost.StartAsync(new InMemoryArrayService(), path, NullLoggerFactory.Instance, CancellationToken.None));

        Assert.Contains("already serving", e.Message);
        var r = await Controller.Run(dir, "status");
        Assert.Equal(0, r.Code); // the first one still answers
    }

    [Fact]
    public void DataDirectoryComesFromTheDataOptionAsAnAbsolutePath()
    {
        var parse = Program.RootCommand.Parse(["status", "--data", "some/where"]);

        Assert.Empty(parse.Errors);
        Assert.Equal(Path.GetFullPath("some/where"), Program.ResolveDataDir(parse));
    }

    [Fact]
    public async Task NoCommandIsAUsageError()
    {
        var r = await Controller.Run(dir);

        Assert.Equal(2, r.Code);
        Assert.Contains("Run 'duet --help' for usage.", r.Err);
    }

    [Fact]
    public async Task HelpExits0AndListsTheVerbs()
    {
        var r = await Controller.Run(dir, "--help");

        Assert.Equal(0, r.Code);
        foreach (var verb in new[] { "status", "array", "volume", "drive", "spare", "scrub" }) Assert.Contains(verb, r.Out);
    }

    [Fact]
    public void ClientRefusesAnEmptyName()
    {
        using var client = ManagementClient.ForDataDirectory(dir);

        var e = Assert.Throws<ManagementException>(() => client.DeleteArrayAsync("").GetAwaiter().GetResult());
        Assert.Equal(ManagementErrorKind.Invalid, e.Kind);
    }
}
