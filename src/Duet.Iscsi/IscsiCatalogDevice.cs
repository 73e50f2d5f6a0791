using Duet.Core;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi;

/// <summary>
/// Serves a changing <see cref="IVolumeCatalog"/> (a controller's: volumes are created, deleted,
/// taken over) through a <see cref="ScsiDevice"/>, which maps LUN i to the catalog's i-th volume
/// as it was when the device was built. A timer looks at the catalog every
/// <see cref="RefreshInterval"/>; when its volumes differ (names, sizes or the volume objects
/// themselves, as after a takeover turns a forwarded volume into a served one) a new device is
/// built over the same reservation store and port-group view, so reservations survive. The same
/// tick moves each volume's ALUA owner (active/optimized group) to where the controller says it is
/// served. Commands never wait for any of this: they take the current device.
/// </summary>
public sealed class IscsiCatalogDevice : IScsiDevice, IDisposable
{
    public static readonly TimeSpan RefreshInterval = TimeSpan.FromSeconds(1);

    private readonly IVolumeCatalog _catalog;
    private readonly Func<IVolumeCatalog, IScsiDevice> _create;
    private readonly FixedScsiPortGroups? _portGroups;
    private readonly Func<IReadOnlyList<(string Volume, ushort OwnerGroup)>>? _owners;
    private readonly Lock _gate = new();
    private readonly ITimer _timer;
    private IScsiDevice _device;
    private IBlockVolume[] _snapshot;

    public IscsiCatalogDevice(IVolumeCatalog catalog, Func<IVolumeCatalog, IScsiDevice> create, TimeProvider? time = null,
        FixedScsiPortGroups? portGroups = null, Func<IReadOnlyList<(string Volume, ushort OwnerGroup)>>? owners = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(create);
        _catalog = catalog;
        _create = create;
        _portGroups = portGroups;
        _owners = owners;
        _snapshot = [.. catalog.Volumes];
        SyncOwners();
        _device = Build(new Snapshot(_snapshot));
        _timer = (time ?? TimeProvider.System).CreateTimer(_ => Refresh(), null, RefreshInterval, RefreshInterval);
    }

    /// <summary>The default device of a Duet target: the SCSI device server over the volumes, with the
    /// fixed two-controller port-group view (owners from <paramref name="owners"/> when given) and
    /// one reservation store shared by every rebuild (<paramref name="reservations"/>: the controller's,
    /// mirrored to its peer; else one in memory).</summary>
    public static IscsiCatalogDevice Create(IVolumeCatalog catalog, string targetName, TimeProvider? time = null,
        Func<IReadOnlyList<(string Volume, ushort OwnerGroup)>>? owners = null, IReservationStore? reservations = null)
    {
        reservations ??= new InMemoryReservationStore();
        var portGroups = new FixedScsiPortGroups();
        var options = new ScsiDeviceOptions { TargetName = targetName };
        return new IscsiCatalogDevice(catalog, c => new ScsiDevice(c, reservations, portGroups, options), time, portGroups, owners);
    }

    /// <summary><see cref="ScsiDevice.PreemptedAndAborted"/> of whichever device is current.</summary>
    public event Action<ulong, IReadOnlyList<ItNexus>>? PreemptedAndAborted;

    public IReadOnlyList<ulong> Luns => Current.Luns;

    public ValueTask<ScsiResult> ExecuteAsync(ScsiCommand command, CancellationToken cancellationToken) =>
        Current.ExecuteAsync(command, cancellationToken);

    public ValueTask<byte> TaskManagementAsync(ItNexus nexus, TaskManagementFunction function, ulong lun, CancellationToken cancellationToken) =>
        Current.TaskManagementAsync(nexus, function, lun, cancellationToken);

    public void NexusLost(ItNexus nexus) => Current.NexusLost(nexus);

    public void Dispose() => _timer.Dispose();

    private IScsiDevice Current => Volatile.Read(ref _device);

    /// <summary>One tick: a new device if the catalog changed, owners moved. Never throws (a timer callback).</summary>
    internal void Refresh()
    {
        try
        {
            lock (_gate)
            {
                var volumes = _catalog.Volumes;
                bool same = volumes.Count == _snapshot.Length;
                for (int i = 0; same && i < volumes.Count; i++) same = ReferenceEquals(volumes[i], _snapshot[i]);
                SyncOwners();
                if (same) return;
                _snapshot = [.. volumes];
                Volatile.Write(ref _device, Build(new Snapshot(_snapshot)));
            }
        }
        catch (Exception e) when (e is not InvariantViolationException)
        {
            // The catalog is being rebuilt (arrays assembling, stopping): the next tick looks again.
        }
    }

    private void SyncOwners()
    {
        if (_portGroups is null || _owners is null) return;
        foreach (var (volume, group) in _owners())
        {
            if (group is FixedScsiPortGroups.GroupA or FixedScsiPortGroups.GroupB) _portGroups.SetOwner(volume, group);
        }
    }

    private IScsiDevice Build(IVolumeCatalog snapshot)
    {
        var device = _create(snapshot);
        if (device is ScsiDevice scsi) scsi.PreemptedAndAborted += (lun, nexuses) => PreemptedAndAborted?.Invoke(lun, nexuses);
        return device;
    }

    /// <summary>The catalog as it was at one moment.</summary>
    private sealed class Snapshot(IBlockVolume[] volumes) : IVolumeCatalog
    {
        public IReadOnlyList<IBlockVolume> Volumes => volumes;

        public bool TryGetVolume(string name, out IBlockVolume volume)
        {
            foreach (var v in volumes)
            {
                if (v.Name == name)
                {
                    volume = v;
                    return true;
                }
            }
            volume = null!;
            return false;
        }
    }
}
