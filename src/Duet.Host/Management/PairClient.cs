using Duet.Raid.Management;
using DriveInfo = Duet.Raid.Management.DriveInfo;

namespace Duet.Host.Management;

/// <summary>
/// What the CLI talks to: controller A's socket (DATA/duet.sock) and, when a pair runs, controller
/// B's (DATA/duet-B.sock). Status merges both controllers' views (each array as its owner reports
/// it); a request for an array or drive the first controller does not serve goes to the one that
/// does; if one controller is down, the other answers.
/// </summary>
public sealed class PairClient : IDisposable
{
    readonly ManagementClient _a;
    readonly ManagementClient? _b;

    public PairClient(string dataDirectory, TimeSpan? timeout = null)
    {
        DataDirectory = Path.GetFullPath(dataDirectory);
        _a = new ManagementClient(ManagementHost.SocketPathFor(DataDirectory), timeout);
        var b = Path.Combine(DataDirectory, "duet-B.sock");
        if (File.Exists(b)) _b = new ManagementClient(b, timeout);
    }

    public static PairClient ForDataDirectory(string dataDirectory, TimeSpan? timeout = null) => new(dataDirectory, timeout);

    public string DataDirectory { get; }

    static bool ServedByPeer(ManagementException e) => e.Kind == ManagementErrorKind.Conflict && e.Message.Contains("served by controller", StringComparison.Ordinal);

    async Task<T> Route<T>(Func<ManagementClient, Task<T>> call)
    {
        if (_b is null) return await call(_a);
        try { return await call(_a); }
        catch (ManagementException e) when (ServedByPeer(e)) { return await call(_b); }
        catch (ControllerUnavailableException) { return await call(_b); }
        catch (HttpRequestException) { return await call(_b); }
    }

    Task Route(Func<ManagementClient, Task> call) => Route(async c => { await call(c); return true; });

    public async Task<StatusInfo> StatusAsync(CancellationToken ct = default)
    {
        if (_b is null) return await _a.StatusAsync(ct);
        StatusInfo? a = null, b = null;
        Exception? down = null;
        // A controller that is down (or dying: its connection resets) is left out; the other answers.
        try { a = await _a.StatusAsync(ct); } catch (Exception e) when (e is ControllerUnavailableException or HttpRequestException) { down = e; }
        try { b = await _b.StatusAsync(ct); } catch (Exception e) when (e is ControllerUnavailableException or HttpRequestException) { down ??= e; }
        if (a is null && b is null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(down!);
        if (a is null || b is null) return a ?? b!;
        // Each array as its owner reports it; the other controller lists it as "peer".
        var arrays = a.Arrays.Concat(b.Arrays).GroupBy(x => x.Name).Select(g => g.FirstOrDefault(x => x.State != "peer") ?? g.First())
            .OrderBy(x => x.Name, StringComparer.Ordinal).ToList();
        // A LUN warning may be known to one controller only (the other read the superblocks after the conflict was settled).
        var volumes = a.Volumes.Concat(b.Volumes).GroupBy(v => v.Name).Select(g => g.FirstOrDefault(v => v.LunWarning is not null) ?? g.First())
            .OrderBy(v => v.Name, StringComparer.Ordinal).ToList();
        var drives = a.Drives.Concat(b.Drives).GroupBy(d => d.Name).Select(g => g.FirstOrDefault(d => d.Role != "peer") ?? g.First())
            .OrderBy(d => d.Name, StringComparer.Ordinal).ToList();
        return new StatusInfo(arrays, volumes, drives, a.Controller) { PeerController = b.Controller };
    }

    public async Task<IReadOnlyList<ArrayInfo>> ListArraysAsync(CancellationToken ct = default) => (await StatusAsync(ct)).Arrays;
    public async Task<IReadOnlyList<VolumeInfo>> ListVolumesAsync(CancellationToken ct = default) => (await StatusAsync(ct)).Volumes;
    public async Task<IReadOnlyList<DriveInfo>> ListDrivesAsync(CancellationToken ct = default) => (await StatusAsync(ct)).Drives;
    public Task<ArrayInfo> CreateArrayAsync(CreateArrayRequest request, CancellationToken ct = default) => Route(c => c.CreateArrayAsync(request, ct));
    public Task DeleteArrayAsync(string name, CancellationToken ct = default) => Route(c => c.DeleteArrayAsync(name, ct));
    public Task<VolumeInfo> CreateVolumeAsync(CreateVolumeRequest request, CancellationToken ct = default) => Route(c => c.CreateVolumeAsync(request, ct));
    public Task DeleteVolumeAsync(string name, CancellationToken ct = default) => Route(c => c.DeleteVolumeAsync(name, ct));
    public Task<DriveInfo> AddDriveAsync(AddDriveRequest request, CancellationToken ct = default) => Route(c => c.AddDriveAsync(request, ct));
    public Task AddSpareAsync(AddSpareRequest request, CancellationToken ct = default) => Route(c => c.AddSpareAsync(request, ct));
    public Task FailDriveAsync(string drive, CancellationToken ct = default) => Route(c => c.FailDriveAsync(drive, ct));
    public Task ReplaceDriveAsync(string drive, ReplaceDriveRequest request, CancellationToken ct = default) => Route(c => c.ReplaceDriveAsync(drive, request, ct));
    public Task StartScrubAsync(string array, ScrubRequest request, CancellationToken ct = default) => Route(c => c.StartScrubAsync(array, request, ct));

    public Task<ArrayInfo> MoveArrayAsync(string array, MoveArrayRequest request, CancellationToken ct = default) => Route(c => c.MoveArrayAsync(array, request, ct));
    public Task<ArrayInfo> PreferArrayAsync(string array, PreferArrayRequest request, CancellationToken ct = default) => Route(c => c.PreferArrayAsync(array, request, ct));
    public Task<BadBlockReport> BadBlocksAsync(string array, CancellationToken ct = default) => Route(c => c.BadBlocksAsync(array, ct));

    public void Dispose()
    {
        _a.Dispose();
        _b?.Dispose();
    }
}
