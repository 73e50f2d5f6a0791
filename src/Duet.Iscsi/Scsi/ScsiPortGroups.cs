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

/// <summary>
/// The fixed two-controller view: group 1 = controller A (relative target port 1), group 2 =
/// controller B (relative target port 2); the owner's group is active/optimized, the other
/// active/non-optimized. <see cref="SetOwner"/> moves a volume and raises <see cref="Changed"/>.
/// </summary>
public sealed class FixedScsiPortGroups : IScsiPortGroups
{
    public const ushort GroupA = 1, GroupB = 2;
    public const ushort PortA = 1, PortB = 2;

    static readonly ushort[] PortsA = [PortA];
    static readonly ushort[] PortsB = [PortB];

    readonly Lock _lock = new();
    readonly Dictionary<string, ushort> _owner = new(StringComparer.Ordinal);
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
        lock (_lock)
        {
            if (_owner.TryGetValue(volumeName, out var old) ? old == ownerGroup : ownerGroup == _defaultOwner)
            {
                _owner[volumeName] = ownerGroup;
                return;
            }
            _owner[volumeName] = ownerGroup;
        }
        Changed?.Invoke(volumeName);
    }

    public IReadOnlyList<TargetPortGroup> GroupsFor(string volumeName)
    {
        ushort owner;
        lock (_lock) owner = _owner.TryGetValue(volumeName, out var o) ? o : _defaultOwner;
        return
        [
            new TargetPortGroup(GroupA, owner == GroupA ? AluaState.ActiveOptimized : AluaState.ActiveNonOptimized, PortsA),
            new TargetPortGroup(GroupB, owner == GroupB ? AluaState.ActiveOptimized : AluaState.ActiveNonOptimized, PortsB),
        ];
    }
}
