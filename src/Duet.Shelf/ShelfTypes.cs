using Duet.Core;
using Duet.Drives;

namespace Duet.Shelf;

/// <summary>Why the shelf refused a request. Each has its own code on the shelf wire.</summary>
public enum ShelfError : byte
{
    None = 0,
    /// <summary>The port is disabled (by itself, or by a fence).</summary>
    Disabled = 1,
    /// <summary>The port is fenced: its controller was declared dead. Only the owner or `duet shelf unfence` lifts it.</summary>
    Fenced = 2,
    /// <summary>The port holds no registration (never registered, or preempted).</summary>
    NotRegistered = 3,
    /// <summary>A reservation held by another key forbids the request.</summary>
    ReservationConflict = 4,
    /// <summary>No slot or drive of that name.</summary>
    NoSuchSlot = 5,
    /// <summary>The slot's drive was pulled.</summary>
    SlotEmpty = 6,
    /// <summary>The request names blocks outside the drive.</summary>
    OutOfRange = 7,
    /// <summary>A malformed request (bad length, alignment, name, port).</summary>
    Invalid = 8,
    /// <summary>The drive itself failed the request.</summary>
    Io = 9,
    /// <summary>A drive of that name already exists.</summary>
    Exists = 10,
    /// <summary>The shelf cannot be reached (client side only: the connection is down).</summary>
    Unreachable = 11,
    /// <summary>An unreadable block (the drive's medium error).</summary>
    Medium = 12,
}

/// <summary>
/// The shelf refused a request. It is a <see cref="BlockIoException"/>, so the RAID engine sees a
/// drive request refused by the shelf the way it sees any failing drive; controllers look at
/// <see cref="Error"/> to tell a fence (step down) from a drive fault.
/// </summary>
public sealed class ShelfException(ShelfError error, string message, long lba = -1)
    : BlockIoException(KindOf(error), message, lba)
{
    public ShelfError Error { get; } = error;

    static BlockErrorKind KindOf(ShelfError e) => e switch
    {
        ShelfError.OutOfRange => BlockErrorKind.OutOfRange,
        ShelfError.Invalid => BlockErrorKind.Invalid,
        ShelfError.Medium => BlockErrorKind.Medium,
        ShelfError.Io => BlockErrorKind.Io,
        // The path, not the drive: the member must not be failed for it (and a controller that finds its
        // path down while it assembles waits for it rather than assembling arrays without members).
        ShelfError.Unreachable => BlockErrorKind.PathDown,
        // Refused at the port (fenced, disabled, not registered) or the slot: the drive is unavailable to
        // this controller. A fenced controller steps down at its next heartbeat; what it marked failed in
        // memory never reaches the drives (the shelf refuses its superblock writes too).
        _ => BlockErrorKind.Unavailable,
    };
}

/// <summary>One controller port of the shelf. <see cref="Key"/> is its registration (0: none).</summary>
public sealed record PortState(string Port, bool Enabled, bool Fenced, ulong Key, ulong Heartbeat, long InFlightWrites)
{
    /// <summary>The port's controller acknowledged writes without mirroring them (error-recovery mode): its
    /// peer's copy of its cache (NVRAM region 2) may be older than the drives and must not be adopted.</summary>
    public bool MirrorStale { get; init; }

    /// <summary>The port's controller wrote to the drives while its peer's copy of its write log (NVRAM log 2) could
    /// lack the record of that write (the link down, or a "started" checkpoint not taken in time): a takeover cannot
    /// know every stripe such a write may have torn, so it settles the whole of every array it takes (AW-3).</summary>
    public bool LogStale { get; init; }

    /// <summary>Every connection of the port's controller closed (its process is gone, or its path to the shelf) and
    /// none has come since: a hint of the controller's death that comes long before its heartbeats stop counting
    /// (the survivor still requires the link to have gone quiet too). Not persisted: a shelf that starts knows of
    /// no connection before it, so it says false until one came and went.</summary>
    public bool Departed { get; init; }
}

/// <summary>Who owns an array (by its 64-bit serial) and at which epoch. Epochs come from one
/// shelf-wide counter, so every change of ownership of any array gets a larger number than any before.</summary>
public sealed record ArrayClaim(ulong Serial, string Owner, ulong Epoch);

/// <summary>A drive slot: its drive's name, size and serial, and whether it is pulled.</summary>
public sealed record SlotState(string Name, long BlockCount, string Serial, bool Pulled);

/// <summary>Everything the shelf knows, at one instant.</summary>
public sealed record ShelfStatus(IReadOnlyList<PortState> Ports, ulong ReservationHolder, ulong EpochCounter,
    IReadOnlyList<ArrayClaim> Claims, IReadOnlyList<SlotState> Slots)
{
    /// <summary>How many times the shelf has started (persisted): its heartbeat slots start from zero each
    /// time, so a change of it means the slots seen before say nothing about the ones seen now.</summary>
    public ulong Boot { get; init; }

    public PortState Port(string name) => Ports.First(p => p.Port == name);
    public ArrayClaim? Claim(ulong serial) => Claims.FirstOrDefault(c => c.Serial == serial);
}

/// <summary>
/// What a controller sees of the shelf through its own port: the drives (<see cref="IDriveShelf"/>:
/// every drive opened through the port is checked at the shelf on every request), and the control
/// requests of SCSI-3 persistent reservations, fencing, array ownership epochs and the heartbeat
/// slot. Two implementations: <see cref="LocalShelfPort"/> (in the shelf's process, and the
/// simulator's) and the client of `duet shelf` over its socket.
///
/// Every request may fail with a <see cref="ShelfException"/>; a fenced port gets
/// <see cref="ShelfError.Fenced"/> on everything but <see cref="StatusAsync"/>.
/// </summary>
public interface IShelfPort : IDriveShelf
{
    /// <summary>"A" or "B".</summary>
    string PortName { get; }

    /// <summary>Registers <paramref name="key"/> for this port (SCSI-3 REGISTER; a new key replaces the old one).
    /// Refused for a fenced port.</summary>
    Task RegisterAsync(ulong key, CancellationToken ct = default);

    /// <summary>Takes the reservation (write exclusive, registrants only) with this port's key. Conflict if another key holds it.</summary>
    Task ReserveAsync(CancellationToken ct = default);

    /// <summary>Removes the registration of <paramref name="victimKey"/> (and moves the reservation here if it held it).</summary>
    Task PreemptAsync(ulong victimKey, CancellationToken ct = default);

    /// <summary>Enables or disables this port. A fenced port cannot enable itself.</summary>
    Task SetEnabledAsync(bool enabled, CancellationToken ct = default);

    /// <summary>Records whether the peer's copy of this controller's cache is stale (set before the first write
    /// acknowledged without the mirror; cleared once the mirror is resynchronised). Persisted.</summary>
    Task SetMirrorStaleAsync(bool stale, CancellationToken ct = default);

    /// <summary>Records whether the peer's copy of this controller's write log may lack a record (set before a drive
    /// write whose "started" checkpoint did not reach the peer; cleared once a pairing sent the peer every open
    /// record). Persisted.</summary>
    Task SetLogStaleAsync(bool stale, CancellationToken ct = default);

    /// <summary>Fences the other port (FO-2): disabled, preempted, marked fenced (persisted). Completes once every
    /// write the shelf had already accepted from that port has finished.</summary>
    Task FenceAsync(string victim, CancellationToken ct = default);

    /// <summary>Lifts the fence of the other port (it may then register again). Only an unfenced, registered port may.</summary>
    Task UnfenceAsync(string victim, CancellationToken ct = default);

    /// <summary>Names this port's controller owner of each array, each at a new epoch (persisted). Returns the claims.</summary>
    Task<IReadOnlyList<ArrayClaim>> ClaimAsync(IReadOnlyList<ulong> serials, CancellationToken ct = default);

    /// <summary>Names <paramref name="owner"/> (this port or the other) owner of each array at a new epoch: the last
    /// step of handing arrays over; the new owner serves them only once the shelf says so.</summary>
    Task<IReadOnlyList<ArrayClaim>> ClaimForAsync(string owner, IReadOnlyList<ulong> serials, CancellationToken ct = default);

    /// <summary>Forgets this port's claims on arrays that no longer exist (deleted).</summary>
    Task ReleaseAsync(IReadOnlyList<ulong> serials, CancellationToken ct = default);

    /// <summary>Writes <paramref name="beat"/> into this port's heartbeat slot and returns the shelf's state (both slots).</summary>
    Task<ShelfStatus> HeartbeatAsync(ulong beat, CancellationToken ct = default);

    /// <summary>The shelf's state; allowed for every port, fenced or not.</summary>
    Task<ShelfStatus> StatusAsync(CancellationToken ct = default);
}

/// <summary>The shelf's two controller ports.</summary>
public static class ShelfPorts
{
    public static readonly IReadOnlyList<string> All = ["A", "B"];

    public static string Check(string port) => port is "A" or "B" ? port
        : throw new ShelfException(ShelfError.Invalid, $"'{port}' is not a shelf port: use A or B");

    public static string Other(string port) => Check(port) == "A" ? "B" : "A";
}
