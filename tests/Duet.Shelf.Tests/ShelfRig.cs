using Duet.Core;
using Duet.Drives;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Shelf.Tests;

/// <summary>
/// A real `duet shelf` in the test process: a ShelfServer over Unix sockets in a short temporary
/// data directory, FileShelf drives d0 and d1 (1 MiB each), state in DATA/shelf.state. Every
/// drive the shelf opens goes through a <see cref="HeldDrive"/> so a test can hold one request
/// at the drive (no sleeps: the test opens the gate).
/// </summary>
sealed class ShelfRig : IAsyncDisposable
{
    public const long DriveBytes = 1 << 20;

    readonly List<IAsyncDisposable> _clients = [];

    ShelfRig(string dir) => DataDir = dir;

    public string DataDir { get; }
    public Shelf Shelf { get; private set; } = null!;
    public ShelfServer Server { get; private set; } = null!;
    public System.Collections.Concurrent.ConcurrentDictionary<string, HeldDrive> Drives { get; } = new(StringComparer.Ordinal);
    public SignallingStateStore State { get; private set; } = null!;

    public static async Task<ShelfRig> StartAsync()
    {
        // Short, because a Unix socket path must fit in 107 bytes.
        var dir = Path.Combine(Path.GetTempPath(), "duet-sh-" + Guid.NewGuid().ToString("N")[..10]);
        var drives = new FileShelf(FileShelf.DirectoryFor(dir));
        foreach (var name in new[] { "d0", "d1" }) await drives.Create(name, DriveBytes).DisposeAsync();
        var rig = new ShelfRig(dir);
        await rig.StartServerAsync();
        return rig;
    }

    /// <summary>A new Shelf and ShelfServer over the same data directory (a restart of `duet shelf`).</summary>
    public async Task StartServerAsync()
    {
        Drives.Clear();
        State = new SignallingStateStore(new FileShelfStateStore(Path.Combine(DataDir, ShelfServer.StateFileName)));
        Shelf = new Shelf(new FileShelf(FileShelf.DirectoryFor(DataDir)), State, (name, d) => Drives[name] = new HeldDrive(d));
        Server = new ShelfServer(Shelf, new ShelfServerOptions { DataDirectory = DataDir }, NullLogger.Instance);
        await Server.StartAsync();
    }

    public async Task StopServerAsync()
    {
        await Server.StopAsync();
        await Shelf.DisposeAsync();
    }

    public RemoteShelfPort Port(string name, TimeProvider? time = null, TimeSpan? timeout = null)
    {
        var options = RemoteShelfPortOptions.ForDataDirectory(DataDir, name);
        var port = new RemoteShelfPort(new RemoteShelfPortOptions
        {
            Port = options.Port, EndPoint = options.EndPoint,
            TimeProvider = time ?? TimeProvider.System, RequestTimeout = timeout ?? TimeSpan.FromSeconds(30),
        });
        _clients.Add(port);
        return port;
    }

    public ShelfAdminClient Admin()
    {
        var admin = ShelfAdminClient.ForDataDirectory(DataDir, TimeSpan.FromSeconds(30));
        _clients.Add(admin);
        return admin;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var c in _clients) await c.DisposeAsync();
        foreach (var d in Drives.Values) d.ReleaseAll();
        await StopServerAsync();
        try { Directory.Delete(DataDir, recursive: true); } catch (IOException) { }
    }
}

/// <summary>A drive whose next request(s) can be held at the drive until the test lets them go.</summary>
sealed class HeldDrive(IBlockDevice inner) : IBlockDevice
{
    readonly Lock _gate = new();
    Hold? _hold;

    public sealed class Hold
    {
        readonly TaskCompletionSource _entered = new(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Completes when a request has reached the drive and is held there.</summary>
        public Task Entered => _entered.Task;
        public void Release() => _release.TrySetResult();
        internal Task EnterAsync() { _entered.TrySetResult(); return _release.Task; }
    }

    /// <summary>Holds every request (of <paramref name="kind"/>) from now until the hold is released.</summary>
    public Hold HoldRequests(string kind = "any")
    {
        var h = new Hold();
        lock (_gate) { _hold = h; Kind = kind; }
        return h;
    }

    string Kind = "any";

    public void ReleaseAll()
    {
        lock (_gate) { _hold?.Release(); _hold = null; }
    }

    Task Wait(string kind)
    {
        lock (_gate)
        {
            if (_hold is null || (Kind != "any" && Kind != kind)) return Task.CompletedTask;
            return _hold.EnterAsync();
        }
    }

    public string Name => inner.Name;
    public long BlockCount => inner.BlockCount;

    public async ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default)
    {
        await Wait("read");
        await inner.ReadAsync(lba, destination, ct);
    }

    public async ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default)
    {
        await Wait("write");
        await inner.WriteAsync(lba, source, fua, ct);
    }

    public async ValueTask FlushAsync(CancellationToken ct = default)
    {
        await Wait("flush");
        await inner.FlushAsync(ct);
    }

    public ValueTask DisposeAsync() => inner.DisposeAsync();
}

/// <summary>The shelf's state store, telling the test when a save contains a given line (a fence is persisted
/// before the fence waits for writes in flight, so this is how a test knows the fence has reached the shelf).</summary>
sealed class SignallingStateStore(IShelfStateStore inner) : IShelfStateStore
{
    readonly Lock _gate = new();
    readonly List<(string Line, TaskCompletionSource Seen)> _waits = [];

    public string? Load() => inner.Load();

    public void Save(string text)
    {
        inner.Save(text);
        lock (_gate)
            foreach (var (line, seen) in _waits.Where(w => text.Contains(w.Line, StringComparison.Ordinal)).ToList())
            {
                seen.TrySetResult();
                _waits.RemoveAll(w => w.Seen == seen);
            }
    }

    public Task Saved(string line)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate) _waits.Add((line, tcs));
        return tcs.Task;
    }
}

static class Blocks
{
    public static byte[] Of(byte fill, int blocks = 1) => Enumerable.Repeat(fill, blocks * Units.BlockBytes).ToArray();
}
