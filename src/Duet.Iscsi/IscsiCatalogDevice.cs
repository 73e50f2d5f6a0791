using Duet.Core;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi;

/// <summary>
/// Serves a changing <see cref="IVolumeCatalog"/> (a controller's: volumes are created, deleted,
/// taken over) through a <see cref="ScsiDevice"/>, which maps each LUN to its volume as the catalog
/// had them when the device was built: an <see cref="ILunCatalog"/>'s stored LUNs (a controller's, so
/// a new volume takes a free LUN and no other volume's LUN changes), else LUN i = the i-th volume.
/// A timer looks at the catalog every <see cref="RefreshInterval"/> (and the controller calls
/// <see cref="Refresh"/> when its link or a takeover changes something); when its LUNs or volumes
/// differ (the volume objects themselves, as after a takeover turns a forwarded volume into a served one) a new device is
/// built over the same reservation store and port-group view, so reservations survive, and takes
/// over the old one's unit attentions and SPC-2 reservations per volume (the old one is disposed:
/// it stops following the store and the view). The same tick sets each volume's ALUA states to what
/// the controller says (<see cref="VolumeAccess"/>). Commands never wait for any of this: they take
/// the current device.
/// </summary>
public sealed class IscsiCatalogDevice : IScsiDevice, IDisposable
{
    public static readonly TimeSpan RefreshInterval = TimeSpan.FromSeconds(1);

    private readonly IVolumeCatalog _catalog;
    private readonly Func<IVolumeCatalog, IScsiDevice> _create;
    private readonly FixedScsiPortGroups? _portGroups;
    private readonly Func<IReadOnlyList<VolumeAccess>>? _access;
    private readonly Lock _gate = new();
    private readonly ITimer _timer;
    private readonly TimeProvider _time;
    private IScsiDevice _device;
    private LunVolume[] _snapshot;

    public IscsiCatalogDevice(IVolumeCatalog catalog, Func<IVolumeCatalog, IScsiDevice> create, TimeProvider? time = null,
        FixedScsiPortGroups? portGroups = null, Func<IReadOnlyList<VolumeAccess>>? access = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(create);
        _catalog = catalog;
        _create = create;
        _portGroups = portGroups;
        _access = access;
        _snapshot = Read(catalog);
        SyncOwners();
        _device = Build(new Snapshot(_snapshot));
        _time = time ?? TimeProvider.System;
        _timer = _time.CreateTimer(_ => Refresh(), null, RefreshInterval, RefreshInterval);
    }

    /// <summary>The default device of a Duet target: the SCSI device server over the volumes, with the
    /// two-controller port-group view (states from <paramref name="access"/> when given) and one
    /// reservation store shared by every rebuild (<paramref name="reservations"/>: the controller's,
    /// mirrored to its peer; else one in memory).</summary>
    public static IscsiCatalogDevice Create(IVolumeCatalog catalog, string targetName, TimeProvider? time = null,
        Func<IReadOnlyList<VolumeAccess>>? access = null, IReservationStore? reservations = null, TimeSpan failoverHold = default)
    {
        reservations ??= new InMemoryReservationStore();
        var portGroups = new FixedScsiPortGroups();
        var options = new ScsiDeviceOptions { TargetName = targetName };
        return new IscsiCatalogDevice(catalog, c => new ScsiDevice(c, reservations, portGroups, options), time, portGroups, access) { FailoverHold = failoverHold };
    }

    /// <summary><see cref="ScsiDevice.PreemptedAndAborted"/> of whichever device is current.</summary>
    public event Action<ulong, IReadOnlyList<ItNexus>>? PreemptedAndAborted;

    public IReadOnlyList<ulong> Luns => Current.Luns;

    /// <summary>How long a command whose LUN is not accessible through this port for now (NOT READY,
    /// 04/0A transitioning or 04/0C unavailable: the link to the owner is down, or a takeover runs)
    /// is held and tried again before that answer goes to the initiator. A takeover (about a second
    /// to detect, then fence and adopt) ends within it, and an initiator without multipath (qemu's
    /// iSCSI driver gives up on NOT READY at once) then sees a slow command, not an error. Zero (the
    /// default here): answered at once; a controller's target holds for <see cref="ControllerFailoverHold"/>.</summary>
    public TimeSpan FailoverHold { get; init; }

    /// <summary>The hold a controller's target uses: the heartbeat timeout and a takeover fit in it.</summary>
    public static readonly TimeSpan ControllerFailoverHold = TimeSpan.FromSeconds(8);

    static readonly TimeSpan HoldPoll = TimeSpan.FromMilliseconds(100);

    public async ValueTask<ScsiResult> ExecuteAsync(ScsiCommand command, CancellationToken cancellationToken)
    {
        var result = await Current.ExecuteAsync(command, cancellationToken);
        if (FailoverHold <= TimeSpan.Zero || !NotAccessibleForNow(result)) return result;
        long start = _time.GetTimestamp();
        while (NotAccessibleForNow(result) && _time.GetElapsedTime(start) < FailoverHold)
        {
            await Task.Delay(HoldPoll, _time, cancellationToken);
            Refresh(); // a takeover turns the peer's volume into one served here: pick it up now
            result = await Current.ExecuteAsync(command, cancellationToken);
        }
        return result;
    }

    /// <summary>CHECK CONDITION, NOT READY, LOGICAL UNIT NOT ACCESSIBLE: transitioning (04/0A) or
    /// target port unavailable (04/0C), in fixed-format sense.</summary>
    static bool NotAccessibleForNow(in ScsiResult r)
    {
        var s = r.Sense.Span;
        return r.Status == ScsiStatus.CheckCondition && s.Length >= 14 && (s[0] & 0x7F) == 0x70
            && (s[2] & 0x0F) == 0x02 && s[12] == 0x04 && s[13] is 0x0A or 0x0C;
    }

    public ValueTask<byte> TaskManagementAsync(ItNexus nexus, TaskManagementFunction function, ulong lun, CancellationToken cancellationToken) =>
        Current.TaskManagementAsync(nexus, function, lun, cancellationToken);

    public void NexusLost(ItNexus nexus) => Current.NexusLost(nexus);

    public void Dispose()
    {
        _timer.Dispose();
        lock (_gate)
        {
            _disposed = true;
            (Current as IDisposable)?.Dispose();
        }
    }

    private bool _disposed;

    private IScsiDevice Current => Volatile.Read(ref _device);

    /// <summary>One tick: ALUA states set, a new device if the catalog changed. Never throws (a timer callback,
    /// and the controller's link and takeover events).</summary>
    public void Refresh()
    {
        try
        {
            lock (_gate)
            {
                if (_disposed) return; // a late tick or controller event
                var volumes = Read(_catalog);
                bool same = volumes.Length == _snapshot.Length;
                for (int i = 0; same && i < volumes.Length; i++)
                    same = volumes[i].Lun == _snapshot[i].Lun && ReferenceEquals(volumes[i].Volume, _snapshot[i].Volume);
                SyncOwners();
                if (same) return;
                _snapshot = volumes;
                var old = Current;
                var next = Build(new Snapshot(_snapshot));
                if (next is ScsiDevice n && old is ScsiDevice o) n.CarryOver(o);
                Volatile.Write(ref _device, next);
                // Commands already running on the old device finish there; it no longer follows the store or the view.
                (old as IDisposable)?.Dispose();
            }
        }
        catch (Exception e) when (e is not InvariantViolationException)
        {
            // The catalog is being rebuilt (arrays assembling, stopping): the next tick looks again.
        }
    }

    private void SyncOwners()
    {
        if (_portGroups is null || _access is null) return;
        foreach (var access in _access()) _portGroups.SetStates(access);
    }

    private IScsiDevice Build(IVolumeCatalog snapshot)
    {
        var device = _create(snapshot);
        if (device is ScsiDevice scsi) scsi.PreemptedAndAborted += (lun, nexuses) => PreemptedAndAborted?.Invoke(lun, nexuses);
        return device;
    }

    private static LunVolume[] Read(IVolumeCatalog catalog) => [.. ScsiDevice.LunsOf(catalog)];

    /// <summary>The catalog as it was at one moment, with its LUNs.</summary>
    private sealed class Snapshot(LunVolume[] volumes) : ILunCatalog
    {
        public IReadOnlyList<LunVolume> LunVolumes => volumes;

        public IReadOnlyList<IBlockVolume> Volumes => [.. volumes.Select(v => v.Volume)];

        public bool TryGetVolume(string name, out IBlockVolume volume)
        {
            foreach (var v in volumes)
            {
                if (v.Volume.Name == name)
                {
                    volume = v.Volume;
                    return true;
                }
            }
            volume = null!;
            return false;
        }
    }
}
