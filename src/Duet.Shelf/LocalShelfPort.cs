using Duet.Core;
using Duet.Drives;

namespace Duet.Shelf;

/// <summary>
/// A controller's port on a <see cref="Shelf"/> in the same process (the shelf process itself, and
/// the simulator's controllers). Every request runs synchronously against the shelf; drive data
/// requests are admitted by the shelf first (<see cref="Shelf.Admit"/>), so a fence or a pull
/// takes effect on the next request, and a fence waits for writes already admitted.
/// </summary>
public sealed class LocalShelfPort : IShelfPort
{
    readonly Shelf _shelf;

    internal LocalShelfPort(Shelf shelf, string port)
    {
        _shelf = shelf;
        PortName = port;
    }

    public string PortName { get; }

    /// <summary>Test and simulator hook: when set and true, every request fails as if the shelf could not be
    /// reached (the controller's path to the shelf is lost); the shelf itself is unaffected.</summary>
    public Func<bool>? PathLost { get; set; }

    void Reach()
    {
        if (PathLost?.Invoke() == true) throw new ShelfException(ShelfError.Unreachable, $"port {PortName}: the shelf cannot be reached");
    }

    public IReadOnlyList<string> List() { Reach(); return _shelf.List(); }
    public bool Contains(string name) { Reach(); return _shelf.Contains(name); }
    public string Describe(string name) => $"shelf slot {name} (port {PortName})";

    public IBlockDevice Open(string name)
    {
        Reach();
        if (!_shelf.Contains(name)) throw new FileNotFoundException($"no drive '{name}' on the shelf");
        return new PortDrive(this, name, _shelf.BlockCountOf(name));
    }

    public IBlockDevice Create(string name, long sizeBytes)
    {
        Reach();
        try { _shelf.Create(PortName, name, sizeBytes); }
        catch (ShelfException e) when (e.Error == ShelfError.Exists) { throw new IOException(e.Message, e); }
        return new PortDrive(this, name, _shelf.BlockCountOf(name));
    }

    public Task RegisterAsync(ulong key, CancellationToken ct = default) => Run(() => _shelf.Register(PortName, key));
    public Task ReserveAsync(CancellationToken ct = default) => Run(() => _shelf.Reserve(PortName));
    public Task PreemptAsync(ulong victimKey, CancellationToken ct = default) => Run(() => _shelf.Preempt(PortName, victimKey));
    public Task SetEnabledAsync(bool enabled, CancellationToken ct = default) => Run(() => _shelf.SetEnabled(PortName, enabled));
    public Task SetMirrorStaleAsync(bool stale, CancellationToken ct = default) => Run(() => _shelf.SetMirrorStale(PortName, stale));
    public Task SetLogStaleAsync(bool stale, CancellationToken ct = default) => Run(() => _shelf.SetLogStale(PortName, stale));
    public Task UnfenceAsync(string victim, CancellationToken ct = default) => Run(() => _shelf.Unfence(PortName, victim));

    public Task FenceAsync(string victim, CancellationToken ct = default)
    {
        try { Reach(); return _shelf.FenceAsync(PortName, victim); }
        catch (ShelfException e) { return Task.FromException(e); }
    }

    public Task<IReadOnlyList<ArrayClaim>> ClaimAsync(IReadOnlyList<ulong> serials, CancellationToken ct = default) =>
        Run(() => _shelf.Claim(PortName, serials, PortName));

    public Task<IReadOnlyList<ArrayClaim>> ClaimForAsync(string owner, IReadOnlyList<ulong> serials, CancellationToken ct = default) =>
        Run(() => _shelf.Claim(PortName, serials, ShelfPorts.Check(owner)));

    public Task ReleaseAsync(IReadOnlyList<ulong> serials, CancellationToken ct = default) => Run(() => _shelf.Release(PortName, serials));

    public Task<ShelfStatus> HeartbeatAsync(ulong beat, CancellationToken ct = default) => Run(() => _shelf.Heartbeat(PortName, beat));

    public Task<ShelfStatus> StatusAsync(CancellationToken ct = default) => Run(_shelf.Status);

    /// <summary>Runs an admitted request on the shelf's own context, if it has one; the caller resumes on its own.</summary>
    Task OnShelfAsync(Func<Task> work)
    {
        if (_shelf.Context is not { } context) return work();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        context.Post(async _ =>
        {
            try { await work(); done.TrySetResult(); }
            catch (Exception e) { done.TrySetException(e); }
        }, null);
        return done.Task;
    }

    Task Run(Action action)
    {
        try { Reach(); action(); return Task.CompletedTask; }
        catch (ShelfException e) { return Task.FromException(e); }
    }

    Task<T> Run<T>(Func<T> f)
    {
        try { Reach(); return Task.FromResult(f()); }
        catch (ShelfException e) { return Task.FromException<T>(e); }
    }

    /// <summary>A drive as seen through the port: every request is admitted by the shelf first. The shelf's
    /// bookkeeping after a write (<see cref="Shelf.EndWrite"/>) runs where the drive completes it, not on
    /// the requester's context: the shelf is another process, and a write it accepted finishes there even
    /// if the controller that sent it has died or hangs meanwhile (a fence waits for exactly that). With
    /// <see cref="Shelf.Context"/> set (the simulator's world), admitted writes run there.</summary>
    sealed class PortDrive(LocalShelfPort port, string name, long blocks) : IBlockDevice
    {
        public string Name => name;
        public long BlockCount => blocks;

        public async ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default)
        {
            BlockDeviceChecks.CheckRange(this, lba, destination.Length);
            port.Reach();
            var d = port._shelf.Admit(port.PortName, name, write: false);
            await d.ReadAsync(lba, destination, ct);
        }

        public async ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default)
        {
            BlockDeviceChecks.CheckRange(this, lba, source.Length);
            port.Reach();
            var d = port._shelf.Admit(port.PortName, name, write: true);
            await port.OnShelfAsync(async () =>
            {
                try { await d.WriteAsync(lba, source, fua, ct); }
                finally { port._shelf.EndWrite(port.PortName); }
            });
        }

        public async ValueTask FlushAsync(CancellationToken ct = default)
        {
            port.Reach();
            var d = port._shelf.Admit(port.PortName, name, write: true);
            await port.OnShelfAsync(async () =>
            {
                try { await d.FlushAsync(ct); }
                finally { port._shelf.EndWrite(port.PortName); }
            });
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask; // the shelf owns the drive
    }
}
