namespace Duet.Iscsi.Scsi;

/// <summary>SPC-4 persistent reservation types (the TYPE field).</summary>
public enum PrType : byte
{
    None = 0,
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

/// <summary>One registration: the I_T nexus and its reservation key.</summary>
public sealed record PrRegistration(string InitiatorName, ulong Isid, ushort TargetPortGroup, ushort RelativeTargetPort, ulong Key)
{
    public ItNexus Nexus => new(InitiatorName, Isid, TargetPortGroup, RelativeTargetPort);
    public static PrRegistration For(ItNexus n, ulong key) => new(n.InitiatorName, n.Isid, n.TargetPortGroup, n.RelativeTargetPort, key);
}

/// <summary>
/// A LUN's persistent reservation state as one immutable, serialisable value: what the controller
/// mirrors to its peer so that registrations and the reservation survive a failover.
/// <see cref="HolderIndex"/> indexes <see cref="Registrations"/> (-1: no reservation, or an
/// all-registrants reservation, whose holders are every registrant). <see cref="Spc2Holder"/> is the nexus that holds
/// the LUN's SPC-2 reservation (RESERVE(6)/(10)), if one does: mirrored with the rest, never persisted (APTPL is a
/// persistent reservation's; an SPC-2 reservation ends with the power).
/// </summary>
public sealed record PrSnapshot(uint Generation, bool Aptpl, IReadOnlyList<PrRegistration> Registrations, PrType Type, int HolderIndex,
    ItNexus? Spc2Holder = null)
{
    public static PrSnapshot Empty { get; } = new(0, false, [], PrType.None, -1);
}

/// <summary>
/// Where the device server keeps each LUN's persistent reservation state (key: volume name).
/// The default is in memory; the controller supplies one that mirrors to the peer. A store
/// raises <see cref="Changed"/> after every <see cref="SaveAsync"/> and when a snapshot arrives from
/// elsewhere (the peer); the device server reloads a LUN whose snapshot is not the one it saved.
/// </summary>
public interface IReservationStore
{
    PrSnapshot? Load(string volumeName);

    /// <summary>Records a LUN's new state. The synchronous part of the call records it (the device server
    /// calls it in the order the changes were made, and a store keeps that order, also on its way to the
    /// peer); the returned task completes when the state is as safe as the store makes it (mirrored to the
    /// peer, persisted for APTPL). The command that made the change completes after that.</summary>
    ValueTask SaveAsync(string volumeName, PrSnapshot snapshot);

    event Action<string, PrSnapshot>? Changed;
}

/// <summary>
/// Resets that the other controller's device server must carry out too: a LUN is one logical unit behind both
/// controllers' target ports, so a LOGICAL UNIT RESET (or a target reset) made through one port reaches the
/// I_T nexuses of the other (SAM-5: every nexus sees the reset's unit attention, SPC-2 reservations go). A
/// reservation store that mirrors to the peer implements it; <see cref="ScsiDevice"/> calls
/// <see cref="RelayResetAsync"/> after each reset it carries out (the task management function completes once
/// the peer has it, or the peer cannot be reached) and carries out those raised by <see cref="ResetElsewhere"/>.
/// Persistent reservations need nothing more: a cold reset's change to them is saved, hence mirrored, as any other.
/// </summary>
public interface IUnitResetRelay
{
    /// <summary>Tells the peer that a LUN (by volume name; null: every LUN, a target reset) was reset here.</summary>
    ValueTask RelayResetAsync(string? volumeName);

    /// <summary>Raised with the volume name (null: every volume) when the peer reports a reset made there.</summary>
    event Action<string?>? ResetElsewhere;
}

public sealed class InMemoryReservationStore : IReservationStore
{
    readonly Lock _lock = new();
    readonly Dictionary<string, PrSnapshot> _snapshots = new(StringComparer.Ordinal);

    public event Action<string, PrSnapshot>? Changed;

    public PrSnapshot? Load(string volumeName)
    {
        lock (_lock) return _snapshots.TryGetValue(volumeName, out var s) ? s : null;
    }

    public ValueTask SaveAsync(string volumeName, PrSnapshot snapshot)
    {
        lock (_lock) _snapshots[volumeName] = snapshot;
        Changed?.Invoke(volumeName, snapshot);
        return ValueTask.CompletedTask;
    }
}
