namespace Duet.Raid.Management;

// The management surface of one Duet controller: what `duet status`, `duet array ...`,
// `duet volume ...`, `duet spare ...`, `duet drive ...` and `duet scrub ...` ask for.
// The HTTP API (Duet.Host) serialises these records as JSON (camelCase) unchanged, and
// the CLI's --json prints them as they come.

public enum ManagementErrorKind
{
    /// <summary>The request is malformed or impossible (HTTP 400).</summary>
    Invalid,
    /// <summary>A named array, volume or drive does not exist (HTTP 404).</summary>
    NotFound,
    /// <summary>The request collides with the current state: name taken, drive in use (HTTP 409).</summary>
    Conflict,
}

/// <summary>
/// A hand-over of an array failed after it began writing the new owner into the superblocks (the path to the
/// drives was lost part-way): some members may name the peer at a newer generation. The array is still this
/// controller's in memory; it must not take a write before <see cref="ArrayManager.ReassertOwnerAsync"/> has
/// written its ownership back (the controller holds the array's volumes until then).
/// </summary>
public sealed class HandOverInterruptedException(string array, string to, Exception inner)
    : Exception($"the hand-over of array '{array}' to controller {to} was cut part-way: {inner.Message}", inner);

/// <summary>A refused management request. The message is for a person: it says what is wrong
/// and, where it can, what to do. A refused request has changed nothing.</summary>
public sealed class ManagementException(ManagementErrorKind kind, string message) : Exception(message)
{
    public ManagementErrorKind Kind { get; } = kind;
}

/// <param name="Level">0, 1, 5, 6 or 10.</param>
/// <param name="ChunkKiB">Stripe unit per member; a power of two from 4 to 1024.</param>
/// <param name="RebuildMiBps">Rebuild rate limit; 0 means unlimited.</param>
/// <param name="Owner">The controller that will serve the array ("A" or "B"); null: the controller asked.</param>
public sealed record CreateArrayRequest(string Name, int Level, IReadOnlyList<string> Drives, int ChunkKiB = 64, int RebuildMiBps = 0, string? Owner = null);

/// <param name="SizeBytes">Multiple of 4 KiB; 0 takes the largest free extent of the array.</param>
/// <param name="Lun">The volume's iSCSI LUN, 0..254, kept for the volume's life; one another volume has is a Conflict.
/// Null: the lowest LUN no volume of either controller has.</param>
public sealed record CreateVolumeRequest(string Name, string Array, long SizeBytes, int? Lun = null);

public sealed record AddDriveRequest(string Name, long SizeBytes);

public sealed record AddSpareRequest(string Drive, string Array);

public sealed record ReplaceDriveRequest(string With);

public sealed record ScrubRequest(bool Repair = true);

/// <param name="To">The controller that will serve the array: "A" or "B".</param>
public sealed record MoveArrayRequest(string To);

/// <param name="Owner">The controller the array belongs on when both run: "A", "B", or "none" (null is "none" too).</param>
public sealed record PreferArrayRequest(string? Owner);

/// <param name="Role">"free", "member", "spare" or "foreign" (a superblock of an array this controller does not know).</param>
/// <param name="State">"ok", "failed", "missing", "stale" (an old member that must be resynced) or "unreadable".</param>
public sealed record DriveInfo(string Name, long SizeBytes, string Role, string? Array, int? Slot, string State);

/// <param name="State">"active", "rebuilding", "failed", "missing" or "stale".</param>
public sealed record MemberInfo(int Slot, string? Drive, string State);

public sealed record ProgressInfo(double Fraction, long DoneBytes, long TotalBytes, double RateMiBps, string? TargetDrive);

/// <param name="Findings">One line per problem found, naming the member: "stripe 12 member 3 (d3): checksum mismatch, repaired".</param>
public sealed record ScrubReport(bool Running, ProgressInfo Progress, long StripesChecked, long ChecksumErrors, long ParityMismatches, long Repaired, long Unrepairable, IReadOnlyList<string> Findings)
{
    /// <summary>AW-5: unrepairable blocks the scrub put on the array's bad-block list.</summary>
    public long Listed { get; init; }
}

/// <summary>One block on an array's bad-block list (AW-5).</summary>
/// <param name="ArrayBlock">The array's 4 KiB block.</param>
/// <param name="ArrayLba">Its first still-bad 512-byte sector, as an array LBA.</param>
/// <param name="BadSectors">Which of the block's eight 512-byte sectors are still bad (0-7); a host write of a sector clears it.</param>
/// <param name="Volume">The volume the block belongs to; null if it lies outside every volume.</param>
/// <param name="VolumeLba">The first still-bad sector as the volume's LBA (512-byte units): what a host's medium error names.</param>
/// <param name="FoundBy">What found it: "settle", "scrub", "read", "recovery write" or "rebuild".</param>
public sealed record BadBlockInfo(long ArrayBlock, long ArrayLba, IReadOnlyList<int> BadSectors, string? Volume, long? VolumeLba, string FoundBy);

/// <param name="Capacity">The most blocks the list holds (a full list leaves new unrecoverable blocks unlisted, logged).</param>
/// <param name="Generation">The list's generation on the drives (+1 on every change).</param>
public sealed record BadBlockReport(string Array, int Capacity, long Generation, IReadOnlyList<BadBlockInfo> Blocks);

/// <param name="State">"optimal", "degraded", "rebuilding" or "failed" (more members lost than the level survives);
/// "peer" for an array the other controller serves (this controller forwards its I/O).</param>
/// <param name="Owner">The controller that serves the array: "A" or "B".</param>
public sealed record ArrayInfo(
    string Name, string Uuid, int Level, int ChunkKiB, long CapacityBytes, long FreeBytes, string State, long Generation,
    IReadOnlyList<MemberInfo> Members, IReadOnlyList<string> Spares, ProgressInfo? Rebuild, ScrubReport? Scrub, string Owner = "A")
{
    /// <summary>AW-5: blocks on the array's bad-block list (reads of them fail until a host writes them again); 0 for a peer's array.</summary>
    public int BadBlocks { get; init; }
    /// <summary>The controller the array belongs on when both run: "A", "B" or "none" (stored in its superblock;
    /// a failback moves it there, see <see cref="FailbackInfo"/>).</summary>
    public string PreferredOwner { get; init; } = "none";
    /// <summary>Set by the controller serving the array when it is not on its preferred owner: what the failback waits
    /// for, or what to run (with failback "manual"). Null when the array is where it belongs, or has no preference.</summary>
    public string? Failback { get; init; }
}

public sealed record VolumeInfo(string Name, string Array, long SizeBytes, long OffsetBytes)
{
    /// <summary>The iSCSI LUN both controllers' targets serve the volume at (stored in its array's superblock);
    /// null when it has none (every LUN taken: not served over iSCSI).</summary>
    public int? Lun { get; init; }
    /// <summary>Set when something about the LUN needs an operator's eye: two volumes stored the same LUN (created at
    /// the same moment through both controllers) and this one was given another, or none was free.</summary>
    public string? LunWarning { get; init; }
}

/// <summary>The controller answering, its peer and its cache mirror (MR-1, MR-6, ICL-5).</summary>
/// <param name="Mirror">"healthy" (write-back, mirrored) or "error-recovery" (peer gone: write-through).</param>
public sealed record ControllerInfo(
    string Name, string Peer, bool LinkUp, string Mirror, string? MirrorDownReason, string MirrorMethod,
    int CacheElements, int DirtyElements, long CacheHits, long CacheMisses, long DestagedElements, long WriteThroughs,
    long MirroredWrites, long Batches, long SmallWrites, long LargeWrites,
    long Doorbells, long LinkMessageBytes, long LinkDataBytes, long ForwardedRequests, long ForwardedServed, long RefusedTransfers)
{
    /// <summary>Heartbeats, lease and takeovers (issue 5); null when the controller runs without a shelf.</summary>
    public FailoverInfo? Failover { get; init; }
    /// <summary>AW-6: the controller is in (or past) its power-fail window: it starts no host command and will stop.</summary>
    public bool PoweringDown { get; init; }
    /// <summary>Failback of arrays this controller serves whose preferred owner is its peer; null without a shelf.</summary>
    public FailbackInfo? Failback { get; init; }
    /// <summary>Bytes (message + data) this controller posted on the link, by message type ("Data": data-only transfers).</summary>
    public IReadOnlyDictionary<string, long>? LinkBytesByType { get; init; }
    /// <summary>Assertions on the controller's own state that failed in its process since it started, caught or not
    /// (each is logged as critical, event 7080), and the latest one's message.</summary>
    public long InvariantViolations { get; init; }
    public string? LastInvariantViolation { get; init; }
}

/// <summary>
/// Failback (issue 5): how this controller gives the arrays it serves for its peer (their preferred owner is
/// the peer, typically after a takeover) back once the pair is healthy again.
/// </summary>
/// <param name="Mode">"auto" (moved back once the pair has been healthy for the settle time) or "manual" (only by `duet array move`).</param>
/// <param name="SettleMs">How long the pair must have been healthy, without a break, before an automatic failback.</param>
/// <param name="Pending">Arrays served here whose preferred owner is the peer.</param>
/// <param name="State">"none" (nothing pending), "waiting" (see <paramref name="Waiting"/>), "settling" (moves in
/// <paramref name="DueInMs"/>), "moving", or "manual" (pending, but failback is manual).</param>
/// <param name="Waiting">Why a pending failback cannot start yet (the peer is standby, the mirror is resynchronising...).</param>
/// <param name="FailBacks">Arrays moved back automatically by this controller since it started.</param>
/// <param name="LastError">Why the last automatic move was refused or failed (it is tried again after another settle time).</param>
public sealed record FailbackInfo(string Mode, double SettleMs, IReadOnlyList<string> Pending, string State, string? Waiting, double? DueInMs,
    long FailBacks, string? LastError);

/// <param name="Scope">"pair" (default: the power fails for both controllers; each runs its window and
/// neither takes the other over) or "controller" (this controller alone: its peer takes its arrays over).</param>
public sealed record PowerFailRequest(string Scope = "pair");

/// <summary>
/// What one controller did in its power-fail window (AW-6). Host commands: in flight when the window
/// began, and of those how many finished, failed, and were still running at its end; "refused" came
/// after it began and were not started. What the window leaves to the next start: dirty cache elements
/// (in NVRAM, replayed) and write-log records (their stripes settled).
/// </summary>
/// <param name="WindowExpired">Some work did not finish within the window and was left as it was (recovery handles it).</param>
/// <param name="DestageStopped">No destage round was running at the end (the last one finished).</param>
/// <param name="DrivesFlushed">The drives of the arrays served here were flushed (the records of finished writes cleared).</param>
/// <param name="NvramSynced">The NVRAM file was synced (msync) at the end.</param>
/// <param name="PeerTold">The peer heard of the window.</param>
/// <param name="PeerDone">The peer said its own window ended (with scope "pair").</param>
public sealed record PowerFailReport(
    string Controller, string Scope, double WindowMs, double ElapsedMs, bool WindowExpired,
    int HostCommandsInFlight, int HostCommandsFinished, int HostCommandsFailed, int HostCommandsUnfinished, long HostCommandsRefused,
    bool DestageStopped, bool DrivesFlushed, bool NvramSynced, int DirtyElementsKept, int LogRecordsLeft, bool PeerTold, bool PeerDone);

/// <summary>
/// FO-1/FO-7 state of one controller. <see cref="State"/>: "active" (serving with a lease), "no lease"
/// (serving nothing until it hears its peer or the shelf), "standby" (fenced at the shelf, waiting for
/// the owner to lift the fence), "stepped down" (found itself fenced; the process restarts).
/// </summary>
public sealed record FailoverInfo(string State, bool LeaseHeld, bool PeerFenced, ulong Epoch, long Heartbeats, long Takeovers,
    double PeerSilentMs, TakeoverInfo? LastTakeover)
{
    /// <summary>AW-3: the shelf records the peer's copy of this controller's write log incomplete (a takeover by the
    /// peer would settle whole arrays).</summary>
    public bool LogStale { get; init; }
}

/// <summary>
/// One takeover's phases, in milliseconds from the moment the peer was last heard (on either path):
/// detected (the decision), fenced (the shelf confirmed the fence), adopted (the peer's mirrored
/// elements are in this cache and its arrays are served here), first I/O (the first host request on
/// a taken array completed).
/// </summary>
public sealed record TakeoverInfo(string Reason, IReadOnlyList<string> Arrays, int AdoptedElements, double DetectedMs, double FencedMs,
    double AdoptedMs, double? FirstIoMs)
{
    /// <summary>AW-3: writes the peer had started and not finished whose stripes are settled: behind the
    /// takeover, each stripe before the first request that reaches it.</summary>
    public int SettledWrites { get; init; }

    /// <summary>AW-3: arrays settled whole behind the takeover, because the peer had written while its log's copy
    /// here could lack a record (the shelf said so: <c>PortState.LogStale</c>).</summary>
    public IReadOnlyList<string> SettledWhole { get; init; } = [];

    /// <summary>FO-7: the peer's process was proven gone, with no later one there (the shared-memory ICL sees both on
    /// one host), so the takeover served without waiting out the lease the peer might still have held.</summary>
    public bool PeerProcessGone { get; init; }

    /// <summary>FO-2: the peer's mirrored writes of arrays no drive on the shelf holds any more (the peer deleted them and
    /// the link lost their invalidations), not adopted, and not waited for.</summary>
    public int OrphanCopies { get; init; }
}

public sealed record StatusInfo(IReadOnlyList<ArrayInfo> Arrays, IReadOnlyList<VolumeInfo> Volumes, IReadOnlyList<DriveInfo> Drives, ControllerInfo? Controller = null)
{
    /// <summary>The other controller of the pair, when the status merges both (the CLI's view).</summary>
    public ControllerInfo? PeerController { get; init; }
}

/// <summary>
/// Array management for one controller. Every mutating call either completes or throws
/// <see cref="ManagementException"/> having changed nothing.
/// </summary>
public interface IArrayService
{
    StatusInfo Status();

    Task<ArrayInfo> CreateArrayAsync(CreateArrayRequest request, CancellationToken cancellationToken = default);

    /// <summary>Refused while the array has volumes.</summary>
    Task DeleteArrayAsync(string name, CancellationToken cancellationToken = default);

    Task<VolumeInfo> CreateVolumeAsync(CreateVolumeRequest request, CancellationToken cancellationToken = default);

    Task DeleteVolumeAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>Creates a new empty drive (a sparse file in the data directory's drive shelf).</summary>
    Task<DriveInfo> AddDriveAsync(AddDriveRequest request, CancellationToken cancellationToken = default);

    /// <summary>Makes a free drive a hot spare of an array; a degraded array starts rebuilding onto it at once.</summary>
    Task AddSpareAsync(AddSpareRequest request, CancellationToken cancellationToken = default);

    /// <summary>Marks a member failed; the array runs degraded and rebuilds onto a spare if it has one.</summary>
    Task FailDriveAsync(string drive, CancellationToken cancellationToken = default);

    /// <summary>Rebuilds a member's contents onto a free drive, which then takes its slot.</summary>
    Task ReplaceDriveAsync(string drive, ReplaceDriveRequest request, CancellationToken cancellationToken = default);

    Task StartScrubAsync(string array, ScrubRequest request, CancellationToken cancellationToken = default);

    /// <summary>Hands an array to the other controller of the pair, with no data loss (MR-1).</summary>
    Task<ArrayInfo> MoveArrayAsync(string array, MoveArrayRequest request, CancellationToken cancellationToken = default);

    /// <summary>Sets the controller the array belongs on when both run (failback); asked of the array's owner.</summary>
    Task<ArrayInfo> PreferArrayAsync(string array, PreferArrayRequest request, CancellationToken cancellationToken = default);

    /// <summary>AW-5: the array's bad-block list, each block with its volume and the volume's LBA.</summary>
    Task<BadBlockReport> BadBlocksAsync(string array, CancellationToken cancellationToken = default);
}
