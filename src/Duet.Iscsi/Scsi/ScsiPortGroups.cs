namespace Duet.Iscsi.Scsi;

/// <summary>SPC-4 asymmetric access states (the values REPORT TARGET PORT GROUPS carries).</summary>
public enum AluaState : byte
{
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    Transitioning = 0xF,
}

/// <summary>One target port group as a LUN sees it: its id, its access state, its relative target ports.</summary>
public sealed record TargetPortGroup(ushort Id, AluaState State, IReadOnlyList<ushort> RelativePorts);

/// <summary>
/// The ALUA view the device server reports: per LUN (by volume name), every target port group
/// with its state. The controller owns the real view (which controller owns which volume);
/// <see cref="Changed"/> tells the device server to raise ASYMMETRIC ACCESS STATE CHANGED.
/// </summary>
public interface IScsiPortGroups
{
    IReadOnlyList<TargetPortGroup> GroupsFor(string volumeName);

    /// <summary>Raised with the volume name whose states changed (null: every volume).</summary>
    event Action<string?>? Changed;
}

/// <summary>The access states of one volume's two target port groups (group 1 = controller A, group 2 = B).</summary>
public readonly record struct VolumeAccess(string Volume, AluaState GroupA, AluaState GroupB)
{
    /// <summary>The plain two-controller view: the owner's group active/optimized, the other active/non-optimized.</summary>
    public static VolumeAccess OwnedBy(string volume, ushort ownerGroup) => ownerGroup == FixedScsiPortGroups.GroupB
        ? new(volume, AluaState.ActiveNonOptimized, AluaState.ActiveOptimized)
        : new(volume, AluaState.ActiveOptimized, AluaState.ActiveNonOptimized);
}

/// <summary>
/// The two-controller view: group 1 = controller A (relative target port 1), group 2 = controller B
/// (relative target port 2). By default the owner's group is active/optimized and the other
/// active/non-optimized; <see cref="SetOwner"/> moves a volume, <see cref="SetStates"/> sets both groups'
/// states (the controller's live view: unavailable or transitioning while the link is down or a takeover
/// runs); either raises <see cref="Changed"/> for the volume when something changed.
/// </summary>
public sealed class FixedScsiPortGroups : IScsiPortGroups
{
    public const ushort GroupA = 1, GroupB = 2;
    public const ushort PortA = 1, PortB = 2;

    static readonly ushort[] PortsA = [PortA];
    static readonly ushort[] PortsB = [PortB];

    readonly Lock _lock = new();
    readonly Dictionary<string, (AluaState A, AluaState B)> _states = new(StringComparer.Ordinal);
    readonly ushort _defaultOwner;

    /// <param name="defaultOwnerGroup">The group (1 = A, 2 = B) that owns a volume not named in <see cref="SetOwner"/>.</param>
    public FixedScsiPortGroups(ushort defaultOwnerGroup = GroupA)
    {
        if (defaultOwnerGroup is not (GroupA or GroupB)) throw new ArgumentOutOfRangeException(nameof(defaultOwnerGroup));
        _defaultOwner = defaultOwnerGroup;
    }

    public event Action<string?>? Changed;

    public void SetOwner(string volumeName, ushort ownerGroup)
    {
        if (ownerGroup is not (GroupA or GroupB)) throw new ArgumentOutOfRangeException(nameof(ownerGroup));
        SetStates(VolumeAccess.OwnedBy(volumeName, ownerGroup));
    }

    public void SetStates(VolumeAccess access)
    {
        ArgumentNullException.ThrowIfNull(access.Volume);
        lock (_lock)
        {
            var now = (access.GroupA, access.GroupB);
            if (StatesLocked(access.Volume) == now)
            {
                _states[access.Volume] = now;
                return;
            }
            _states[access.Volume] = now;
        }
        Changed?.Invoke(access.Volume);
    }

    (AluaState A, AluaState B) StatesLocked(string volumeName)
    {
        if (_states.TryGetValue(volumeName, out var s)) return s;
        var d = VolumeAccess.OwnedBy(volumeName, _defaultOwner);
        return (d.GroupA, d.GroupB);
    }

    public IReadOnlyList<TargetPortGroup> GroupsFor(string volumeName)
    {
        (AluaState A, AluaState B) s;
        lock (_lock) s = StatesLocked(volumeName);
        return [new TargetPortGroup(GroupA, s.A, PortsA), new TargetPortGroup(GroupB, s.B, PortsB)];
    }
}
