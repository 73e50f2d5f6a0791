using Duet.Core;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi;

/// <summary>
/// Serves a changing <see cref="IVolumeCatalog"/> (a controller's: volumes are created, deleted,
/// taken over) through a <see cref="ScsiDevice"/>, which maps LUN i to the catalog's i-th volume
/// as it was when the device was built. The catalog is looked at again at most every
/// <see cref="RefreshInterval"/>; when its volumes differ (names, sizes or the volume objects
/// themselves, as after a takeover turns a forwarded volume into a served one) a new device is
/// built over the same reservation store and port-group view, so reservations survive.
/// </summary>
public sealed class IscsiCatalogDevice : IScsiDevice
{
    public static readonly TimeSpan RefreshInterval = TimeSpan.FromSeconds(1);

    private readonly IVolumeCatalog _catalog;
    private readonly Func<IVolumeCatalog, IScsiDevice> _create;
    private readonly TimeProvider _time;
    private readonly Lock _gate = new();
    private IScsiDevice _device;
    private IBlockVolume[] _snapshot;
    private long _checkedAt;

    public IscsiCatalogDevice(IVolumeCatalog catalog, Func<IVolumeCatalog, IScsiDevice> create, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(create);
        _catalog = catalog;
        _create = create;
        _time = time ?? TimeProvider.System;
        _snapshot = [.. catalog.Volumes];
        _device = Build(new Snapshot(_snapshot));
        _checkedAt = _time.GetTimestamp();
    }

    /// <summary>The default device of a Duet target: the SCSI device server over the volumes, with the
    /// fixed two-controller port-group view and one reservation store shared by every rebuild.</summary>
    public static IscsiCatalogDevice Create(IVolumeCatalog catalog, string targetName, TimeProvider? time = null)
    {
        var reservations = new InMemoryReservationStore();
        var portGroups = new FixedScsiPortGroups();
        var options = new ScsiDeviceOptions { TargetName = targetName };
        return new IscsiCatalogDevice(catalog, c => new ScsiDevice(c, reservations, portGroups, options), time);
    }

    /// <summary><see cref="ScsiDevice.PreemptedAndAborted"/> of whichever device is current.</summary>
    public event Action<ulong, IReadOnlyList<ItNexus>>? PreemptedAndAborted;

    public IReadOnlyList<ulong> Luns => Current.Luns;

    public ValueTask<ScsiResult> ExecuteAsync(ScsiCommand command, CancellationToken cancellationToken) =>
        Current.ExecuteAsync(command, cancellationToken);

    public ValueTask<byte> TaskManagementAsync(ItNexus nexus, TaskManagementFunction function, ulong lun, CancellationToken cancellationToken) =>
        Current.TaskManagementAsync(nexus, function, lun, cancellationToken);

    public void NexusLost(ItNexus nexus) => Current.NexusLost(nexus);

    private IScsiDevice Current
    {
        get
        {
            if (_time.GetElapsedTime(Volatile.Read(ref _checkedAt)) < RefreshInterval) return Volatile.Read(ref _device);
            lock (_gate)
            {
                if (_time.GetElapsedTime(_checkedAt) < RefreshInterval) return _device;
                var volumes = _catalog.Volumes;
                bool same = volumes.Count == _snapshot.Length;
                for (int i = 0; same && i < volumes.Count; i++) same = ReferenceEquals(volumes[i], _snapshot[i]);
                if (!same)
                {
                    _snapshot = [.. volumes];
                    Volatile.Write(ref _device, Build(new Snapshot(_snapshot)));
                }
                Volatile.Write(ref _checkedAt, _time.GetTimestamp());
                return _device;
            }
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
