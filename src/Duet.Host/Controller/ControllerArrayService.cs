using Duet.Raid.Management;
using DriveInfo = Duet.Raid.Management.DriveInfo;

namespace Duet.Host.Controller;

/// <summary>The management surface of a controller in a pair: the array manager's, plus the controller's
/// own state in status, and the peer told after every change of arrays or volumes (MR-5).</summary>
public sealed class ControllerArrayService(Controller controller) : IArrayService
{
    ArrayManager A => controller.Arrays;

    public StatusInfo Status()
    {
        var status = A.Status();
        return status with
        {
            Arrays = [.. status.Arrays.Select(a => controller.FailbackNote(a.Name) is { } note ? a with { Failback = note } : a)],
            Controller = controller.Info(),
        };
    }

    async Task<T> Changed<T>(Task<T> op)
    {
        var r = await op;
        await controller.NotifyPeerArraysChangedAsync();
        return r;
    }

    async Task Changed(Task op)
    {
        await op;
        await controller.NotifyPeerArraysChangedAsync();
    }

    public Task<ArrayInfo> CreateArrayAsync(CreateArrayRequest request, CancellationToken ct = default) => Changed(CreateAndClaimAsync(request, ct));

    async Task<ArrayInfo> CreateAndClaimAsync(CreateArrayRequest request, CancellationToken ct)
    {
        var info = await A.CreateArrayAsync(request, ct);
        await controller.ClaimAsync(ArrayManager.SerialOf(Guid.Parse(info.Uuid)), info.Owner);
        return info;
    }
    public Task DeleteArrayAsync(string name, CancellationToken ct = default) => Changed(controller.DeleteArrayAsync(name, ct));
    public Task<VolumeInfo> CreateVolumeAsync(CreateVolumeRequest request, CancellationToken ct = default) => Changed(A.CreateVolumeAsync(request, ct));
    public Task DeleteVolumeAsync(string name, CancellationToken ct = default) => Changed(A.DeleteVolumeAsync(name, ct));
    public Task<DriveInfo> AddDriveAsync(AddDriveRequest request, CancellationToken ct = default) => Changed(A.AddDriveAsync(request, ct));
    public Task AddSpareAsync(AddSpareRequest request, CancellationToken ct = default) => Changed(A.AddSpareAsync(request, ct));
    public Task FailDriveAsync(string drive, CancellationToken ct = default) => A.FailDriveAsync(drive, ct);
    public Task ReplaceDriveAsync(string drive, ReplaceDriveRequest request, CancellationToken ct = default) => A.ReplaceDriveAsync(drive, request, ct);
    public Task StartScrubAsync(string array, ScrubRequest request, CancellationToken ct = default) => A.StartScrubAsync(array, request, ct);
    public Task<ArrayInfo> MoveArrayAsync(string array, MoveArrayRequest request, CancellationToken ct = default) => controller.MoveArrayAsync(array, request.To, ct);
    public Task<ArrayInfo> PreferArrayAsync(string array, PreferArrayRequest request, CancellationToken ct = default) => Changed(A.PreferArrayAsync(array, request, ct));
    public Task<BadBlockReport> BadBlocksAsync(string array, CancellationToken ct = default) => A.BadBlocksAsync(array, ct);
}
