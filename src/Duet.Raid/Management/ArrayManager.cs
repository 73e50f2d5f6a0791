using Duet.Core;
using Duet.Drives;
using Microsoft.Extensions.Logging;

namespace Duet.Raid.Management;

public sealed record ArrayManagerOptions
{
    /// <summary>The data directory: unless <see cref="Shelf"/> is given, its drives are the files DATA/drives/NAME.img.</summary>
    public string? DataDirectory { get; init; }
    /// <summary>Where the drives are; null: a <see cref="FileShelf"/> on DATA/drives. The simulator passes a <see cref="MemoryShelf"/>.</summary>
    public IDriveShelf? Shelf { get; init; }
    public TimeProvider Time { get; init; } = TimeProvider.System;
    public ILoggerFactory LoggerFactory { get; init; } = Microsoft.Extensions.Logging.Abstractions.NullLoggerFactory.Instance;
    /// <summary>Makes array, drive and volume UUIDs; the simulator passes one drawn from its seed.</summary>
    public Func<Guid> NewUuid { get; init; } = Guid.NewGuid;
    /// <summary>In a controller pair, this controller's name ("A" or "B"): only arrays it owns are
    /// assembled; the peer's are listed read-only and their superblocks are never written.
    /// Null: a single controller that serves every array.</summary>
    public string? Controller { get; init; }
    /// <summary>In a pair with a shelf: whether an array whose superblock names this controller may be served
    /// here now (the shelf's claim must not name the peer: a move is finished only when it does). Null: yes.</summary>
    public Func<Superblock, bool>? MayServe { get; init; }
}

/// <summary>A volume of an array the peer controller serves.</summary>
public sealed record PeerVolume(string Name, string Array, string Owner, long SizeBytes);

/// <summary>
/// The arrays, volumes and drives of one controller, assembled from the drives' superblocks.
///
/// The drives are those of the shelf (<see cref="IDriveShelf"/>: by default the folder
/// DATA/drives, every NAME.img file there a drive). At start every superblock is read; drives are grouped by array UUID and each array is assembled from the
/// superblock with the highest generation. A member that is absent makes the array degraded;
/// a member that comes back after the array went on without it is *stale* and is resynced by a
/// rebuild; a drive whose superblock disagrees with its array, or names an array that cannot be
/// assembled, is *foreign* and is left untouched. Every change of array state is written to the
/// superblocks of all members and spares with the generation one higher.
///
/// Management operations are serialised by one async lock (<c>_mgmt</c>), which they may hold
/// across awaits; the data path never takes it. Nothing waits for it synchronously: the read
/// paths (<see cref="Status"/>, <see cref="ArrayTable"/>, <see cref="ServedArrays"/>, ...) read
/// an immutable <see cref="View"/> that each operation publishes under the lock before it lets
/// go, so a reader sees the state before or after an operation, never half of one, and never
/// blocks (a single-threaded simulator would deadlock on a blocking wait).
/// </summary>
public sealed partial class ArrayManager : IArrayService, ILunCatalog, IAsyncDisposable
{
    sealed class DriveEntry
    {
        public required string Name;
        public required IBlockDevice Device;
        public Superblock? Superblock;
        public string? Problem; // why the drive is foreign or unreadable
        public bool Unreadable; // its superblock could not be read (an I/O error) when we last looked
        public string? PeerArray; // a member or spare of an array the peer controller owns
        public ArrayEntry? Array;
        public bool IsSpare;
    }

    sealed class ArrayEntry
    {
        public required RaidArray Raid;
        public required Superblock Current;
        public required DriveEntry?[] Slots;      // the drive in each slot (null: none)
        public required List<DriveEntry> Spares;
        public List<VolumeEntry> Volumes => [.. Current.Volumes];
        public Task? Rebuild;
        public PassProgress? RebuildProgress;
        public int RebuildSlot = -1;
        public Task? Scrub;
        public ScrubResult? ScrubResult;
        public PassProgress? ScrubProgress;
    }

    // What the read paths see: the management state as the last operation left it. The live
    // parts (member status, rebuild and scrub progress) are read from the RaidArray and the pass
    // objects, which the data path and the passes update themselves.
    sealed record View(IReadOnlyDictionary<string, ArrayView> Arrays, IReadOnlyDictionary<string, Superblock> Peers, IReadOnlyList<DriveView> Drives,
        LunTable Luns, IReadOnlyDictionary<(Guid Array, Guid Volume), string> LunWarnings)
    {
        public static readonly View Empty = new(new Dictionary<string, ArrayView>(), new Dictionary<string, Superblock>(), [], LunTable.Empty,
            new Dictionary<(Guid, Guid), string>());
    }

    sealed record ArrayView(RaidArray Raid, Superblock Current, string?[] SlotDrives, IReadOnlyList<string> Spares, Task? Rebuild,
        PassProgress? RebuildProgress, Task? Scrub, ScrubResult? ScrubResult, PassProgress? ScrubProgress);

    /// <param name="Slot">The member slot (members only), else -1.</param>
    sealed record DriveView(string Name, long BlockCount, Superblock? Superblock, string? Problem, string? PeerArray, RaidArray? Array, bool IsSpare, int Slot);

    readonly ArrayManagerOptions _options;
    readonly IDriveShelf _shelf;
    readonly AsyncGate _mgmt = new(1, 1);
    volatile View _view = View.Empty;
    readonly Dictionary<string, DriveEntry> _drives = new(StringComparer.Ordinal);
    readonly Dictionary<string, ArrayEntry> _arrays = new(StringComparer.Ordinal);
    // Arrays the peer controller owns, as their newest superblock describes them (read-only).
    readonly Dictionary<string, Superblock> _peerArrays = new(StringComparer.Ordinal);
    readonly CancellationTokenSource _stopping = new();
    readonly ILogger _logger;
    volatile IReadOnlyDictionary<string, RaidVolume> _volumes = new Dictionary<string, RaidVolume>();
    // LUN warnings seen since start (two volumes stored one LUN; none free), by volume: kept after the owner
    // stored a new LUN (which ends the conflict on the drives) so status still tells the operator.
    readonly Dictionary<(Guid Array, Guid Volume), string> _lunWarnings = [];

    ArrayManager(ArrayManagerOptions options)
    {
        _options = options;
        _shelf = options.Shelf
            ?? (options.DataDirectory is { } dir ? new FileShelf(FileShelf.DirectoryFor(dir))
                : throw new ArgumentException("ArrayManagerOptions needs a Shelf or a DataDirectory", nameof(options)));
        _logger = options.LoggerFactory.CreateLogger<ArrayManager>();
    }

    public IDriveShelf Shelf => _shelf;

    /// <summary>Opens the shelf (creating DATA/drives if needed) and assembles every array found on its drives.</summary>
    public static async Task<ArrayManager> OpenAsync(ArrayManagerOptions options, CancellationToken ct = default)
    {
        var m = new ArrayManager(options);
        await m.AssembleAsync(ct);
        return m;
    }

    // ---- the management lock and the published view --------------------------------------------

    Task LockAsync(CancellationToken ct) => _mgmt.WaitAsync(ct);

    /// <summary>Publishes what the operation did, then lets the next one in.</summary>
    void Unlock()
    {
        bool lunsStored;
        try { Publish(); }
        finally
        {
            (lunsStored, _lunsStoredPending) = (_lunsStoredPending, false);
            _mgmt.Release();
        }
        if (lunsStored) LunsStored?.Invoke();
    }

    /// <summary>Copies the management state into a new <see cref="View"/>. Caller holds the management lock
    /// (or is assembling, before anyone else can see the manager).</summary>
    void Publish()
    {
        var arrays = new Dictionary<string, ArrayView>(StringComparer.Ordinal);
        foreach (var (name, a) in _arrays) arrays[name] = ViewOf(a);
        var drives = _drives.Values.OrderBy(d => d.Name, StringComparer.Ordinal).Select(ViewOf).ToList();
        _view = new View(arrays, new Dictionary<string, Superblock>(_peerArrays, StringComparer.Ordinal), drives, ResolveLuns(),
            new Dictionary<(Guid, Guid), string>(_lunWarnings));
    }

    /// <summary>The LUNs of every volume both controllers know (<see cref="LunTable"/>), from the superblocks as this
    /// controller holds them; records warnings (and logs each once). Caller holds the management lock.</summary>
    LunTable ResolveLuns()
    {
        var table = LunTable.Resolve(_arrays.Values.Select(a => a.Current).Concat(_peerArrays.Values));
        foreach (var e in table.Entries)
        {
            var key = (e.ArrayUuid, e.VolumeUuid);
            if (e.Warning is null || _lunWarnings.TryGetValue(key, out var known) && known == e.Warning) continue;
            _lunWarnings[key] = e.Warning;
            LogLunWarning(e.Volume, e.Array, e.Warning);
        }
        return table;
    }

    /// <summary>
    /// Raised (after the operation, its view published and the management lock let go) when LUNs were stored in a
    /// superblock after assembly or a rescan: the peer's copy of that superblock is older now, and until it reads the new one its table may give a
    /// volume of ours another LUN (after the volume that kept a contested LUN is deleted there, say). A controller
    /// tells its peer to rescan.
    /// </summary>
    public event Action? LunsStored;
    bool _lunsStoredPending;

    /// <summary>
    /// Stores in the superblocks of the arrays served here the LUN each volume has (<see cref="LunTable"/>) where it
    /// differs from the one stored: volumes of a superblock written before LUNs were kept, and a volume whose LUN
    /// another volume also stored and kept. Run after assembly and every rescan, under the management lock; writes
    /// nothing when every LUN is stored (the usual case).
    /// </summary>
    async Task SettleLunsAsync(CancellationToken ct)
    {
        var luns = ResolveLuns();
        bool stored = false;
        foreach (var a in _arrays.Values)
        {
            var volumes = a.Current.Volumes;
            bool differs = false;
            var settled = new VolumeEntry[volumes.Count];
            for (int i = 0; i < volumes.Count; i++)
            {
                var e = luns.Of(a.Current.ArrayUuid, volumes[i].Uuid);
                Invariant.Assert(e is not null);
                settled[i] = volumes[i] with { Lun = e!.Lun };
                differs |= settled[i].Lun != volumes[i].Lun;
            }
            if (!differs) continue;
            LogLunsStored(a.Raid.Name, string.Join(", ", settled.Where(v => v.Lun is not null).Select(v => $"{v.Name}={v.Lun}")));
            a.Current = a.Current with { Volumes = settled };
            // Kept in Current either way: a write that fails here (the path to the shelf is down) is made by the
            // array's next superblock write.
            try
            {
                await PersistAsync(a, ct);
                stored = true;
            }
            catch (BlockIoException e) { LogBackgroundError(a.Raid.Name, $"storing LUNs failed ({e.Message}); the next superblock write stores them"); }
        }
        _lunsStoredPending |= stored;
    }

    static ArrayView ViewOf(ArrayEntry a) => new(a.Raid, a.Current, [.. a.Slots.Select(d => d?.Name)], [.. a.Spares.Select(s => s.Name)],
        a.Rebuild, a.RebuildProgress, a.Scrub, a.ScrubResult, a.ScrubProgress);

    static DriveView ViewOf(DriveEntry d) => new(d.Name, d.Device.BlockCount, d.Superblock, d.Problem, d.PeerArray, d.Array?.Raid, d.IsSpare,
        d.Array is { } a && !d.IsSpare ? Array.IndexOf(a.Slots, d) : -1);

    // ---- ILunCatalog ----------------------------------------------------------------------

    public bool TryGetVolume(string name, out IBlockVolume volume)
    {
        if (_volumes.TryGetValue(name, out var v)) { volume = v; return true; }
        volume = null!;
        return false;
    }

    public IReadOnlyList<IBlockVolume> Volumes => [.. _volumes.Values.OrderBy(v => v.Name, StringComparer.Ordinal)];

    /// <summary>The volumes served here that have a LUN, in LUN order (<see cref="ILunCatalog"/>).</summary>
    public IReadOnlyList<LunVolume> LunVolumes
    {
        get
        {
            var volumes = _volumes;
            var list = new List<LunVolume>();
            foreach (var (lun, name) in LunAssignments)
                if (volumes.TryGetValue(name, out var v)) list.Add(new LunVolume(lun, v));
            return list;
        }
    }

    /// <summary>Every volume both controllers know that has a LUN (the peer's too), in LUN order: what either
    /// controller's iSCSI target serves at each LUN. A name that two arrays hold is listed once, at its lower LUN.</summary>
    public IReadOnlyList<(int Lun, string Volume)> LunAssignments
    {
        get
        {
            var names = new HashSet<string>(StringComparer.Ordinal);
            return [.. _view.Luns.Entries.Where(e => e.Lun is not null).OrderBy(e => e.Lun).Where(e => names.Add(e.Volume)).Select(e => (e.Lun!.Value, e.Volume))];
        }
    }

    /// <summary>Rebuilds the volume map (new RaidVolume objects: call it only when volumes or arrays
    /// changed). Publishes the view first, so a volume found is always in the view too.</summary>
    void RefreshVolumes()
    {
        Publish();
        var map = new Dictionary<string, RaidVolume>(StringComparer.Ordinal);
        foreach (var a in _arrays.Values)
        {
            if (a.Raid.IsFailed) continue;
            foreach (var v in a.Current.Volumes) map[v.Name] = new RaidVolume(v.Name, a.Raid, v.OffsetBlocks, v.SizeBlocks);
        }
        _volumes = map;
    }

    // ---- assembly ------------------------------------------------------------------------------

    async Task AssembleAsync(CancellationToken ct)
    {
        int unopened = 0;
        foreach (var name in ListShelf())
        {
            IBlockDevice device;
            try { device = _shelf.Open(name); }
            catch (Exception e) when ((e is IOException or UnauthorizedAccessException) && !IsPathDown(e))
            {
                LogDriveUnreadable(name, e.Message);
                unopened++;
                continue;
            }
            var entry = new DriveEntry { Name = name, Device = device };
            _drives[name] = entry;
            try
            {
                entry.Superblock = await ReadSuperblockAsync(device, ct);
            }
            catch (SuperblockException e)
            {
                entry.Problem = e.Message;
                LogDriveUnreadable(name, e.Message);
            }
            catch (BlockIoException e) when (e.Kind == BlockErrorKind.PathDown)
            {
                // Not the drive: this controller cannot reach the shelf. Assembling now would find every
                // array without its members; the caller opens again when the path is back.
                throw;
            }
            catch (BlockIoException e)
            {
                entry.Problem = $"superblock unreadable: {e.Message}";
                entry.Unreadable = true;
                LogDriveUnreadable(name, entry.Problem);
            }
        }

        await AssembleGroupsAsync(_drives.Values.Where(d => d.Superblock is not null).ToList(), ct);
        await SettleLunsAsync(ct);
        CountUnreadable(unopened);
        RefreshVolumes();
    }

    int _unreadable;

    /// <summary>Drives on the shelf whose superblock the last assembly or rescan could not read or open (an I/O error,
    /// not a foreign or blank superblock): what they hold of any array is unknown here until a later look.</summary>
    public int UnreadableDrives => Volatile.Read(ref _unreadable);

    void CountUnreadable(int unopened) =>
        Volatile.Write(ref _unreadable, unopened + _drives.Values.Count(d => d.Array is null && d.Unreadable));

    string Me => _options.Controller ?? "A";

    /// <summary>The shelf's drives; none if the shelf cannot list them. A path to the shelf that is down throws
    /// (<see cref="BlockErrorKind.PathDown"/>), as a superblock read does: assembling or rescanning then would find no
    /// drive at all, and the caller must know to look again when the path is back.</summary>
    IReadOnlyList<string> ListShelf()
    {
        try { return _shelf.List(); }
        catch (IOException e) when (!IsPathDown(e))
        {
            LogDriveUnreadable("(the shelf)", e.Message);
            return [];
        }
    }

    static bool IsPathDown(Exception e) => e is BlockIoException { Kind: BlockErrorKind.PathDown };

    bool OwnedHere(Superblock sb) => _options.Controller is null || (sb.Owner == _options.Controller && _options.MayServe?.Invoke(sb) != false);

    async Task AssembleGroupsAsync(List<DriveEntry> drives, CancellationToken ct, string? takeFrom = null, bool settleWhole = false)
    {
        foreach (var group in drives.GroupBy(d => d.Superblock!.ArrayUuid))
        {
            var auth = group.MaxBy(d => d.Superblock!.Generation)!.Superblock!;
            // A takeover: the peer's arrays become ours (assembly persists the new owner).
            if (takeFrom is not null && auth.Owner == takeFrom && _options.Controller is not null)
                auth = auth with { Owner = Me, SettleOwed = auth.SettleOwed || settleWhole };
            if (!OwnedHere(auth))
            {
                _peerArrays[auth.Name] = auth;
                foreach (var d in group) { d.PeerArray = auth.Name; d.Problem = null; }
                continue;
            }
            if (_arrays.ContainsKey(auth.Name))
            {
                foreach (var d in group) d.Problem = $"belongs to another array also named {auth.Name} (UUID {auth.ArrayUuid}); refused";
                LogForeign(auth.Name, auth.ArrayUuid.ToString());
                continue;
            }
            await AssembleArrayAsync(auth, group.ToList(), ct);
        }
    }

    /// <summary>
    /// Re-reads the superblocks of every drive this controller does not serve: arrays the peer
    /// created, changed or deleted, and arrays handed over to this controller (which are then
    /// assembled and served). Called when the peer says its arrays changed.
    /// </summary>
    public Task RescanAsync(CancellationToken ct = default) => RescanAsync(null, false, ct);

    /// <summary>
    /// Failover (FO-2): assembles every array controller <paramref name="from"/> owns as this
    /// controller's, writing this controller into their superblocks (the caller has fenced the peer
    /// at the shelf first: nothing of the peer's can reach the drives any more). Returns the names of
    /// the arrays taken.
    /// </summary>
    /// <paramref name="settleWhole"/>: the peer wrote while its write log's copy here was incomplete; each array taken
    /// is marked owed a whole settle (<see cref="Superblock.SettleOwed"/>) in the superblocks that name this controller.
    public async Task<IReadOnlyList<string>> TakeOverAsync(string from, bool settleWhole = false, CancellationToken ct = default)
    {
        if (from == Me) throw new ArgumentException($"controller {Me} cannot take over from itself", nameof(from));
        var before = _view.Arrays.Keys.ToHashSet(StringComparer.Ordinal);
        await RescanAsync(from, settleWhole, ct);
        var taken = _view.Arrays.Keys.Where(n => !before.Contains(n)).Order(StringComparer.Ordinal).ToList();
        foreach (var name in taken) LogTakenOver(name, from);
        return taken;
    }

    async Task RescanAsync(string? takeFrom, bool settleWhole, CancellationToken ct)
    {
        await LockAsync(ct);
        try
        {
            // Drives the peer added since we last looked.
            int unopened = 0;
            foreach (var name in ListShelf())
            {
                if (_drives.ContainsKey(name)) continue;
                try { _drives[name] = new DriveEntry { Name = name, Device = _shelf.Open(name) }; }
                catch (Exception e) when ((e is IOException or UnauthorizedAccessException) && !IsPathDown(e)) { LogDriveUnreadable(name, e.Message); unopened++; }
            }
            // Read every loose drive's superblock before changing anything: with the path to the shelf
            // down, the rescan stops here (PathDown) and the view stays as it was, rather than losing
            // sight of the peer's arrays until the next rescan.
            var read = new List<(DriveEntry Drive, Superblock? Superblock, string? Problem, bool Unreadable)>();
            foreach (var d in _drives.Values)
            {
                if (d.Array is not null) continue;
                try { read.Add((d, await ReadSuperblockAsync(d.Device, ct), null, false)); }
                catch (BlockIoException e) when (e.Kind == BlockErrorKind.PathDown) { throw; }
                catch (Exception e) when (e is SuperblockException or BlockIoException) { read.Add((d, null, e.Message, e is BlockIoException)); }
            }
            _peerArrays.Clear();
            var loose = new List<DriveEntry>();
            foreach (var (d, sb, problem, unreadable) in read)
            {
                d.PeerArray = null;
                d.Problem = problem;
                d.Unreadable = unreadable;
                if (problem is not null) continue;
                d.Superblock = sb;
                if (sb is not null) loose.Add(d);
            }
            await AssembleGroupsAsync(loose, ct, takeFrom, settleWhole);
            await SettleLunsAsync(ct);
            CountUnreadable(unopened);
            RefreshVolumes();
        }
        finally { Unlock(); }
    }

    /// <summary>
    /// Lets go of every array this controller assembled, without writing anything: a controller that
    /// finds itself fenced at the shelf (its peer took its arrays over, perhaps while it was assembling
    /// them) holds nothing; the next rescan reads the drives afresh.
    /// </summary>
    public async Task ForgetServedAsync(CancellationToken ct = default)
    {
        await LockAsync(ct);
        try
        {
            foreach (var a in _arrays.Values)
                foreach (var d in a.Slots.Concat(a.Spares))
                    if (d is not null) { d.Array = null; d.IsSpare = false; }
            _arrays.Clear();
            RefreshVolumes();
        }
        finally { Unlock(); }
    }

    /// <summary>Volumes of arrays the peer controller serves (this controller forwards their I/O).</summary>
    public IReadOnlyList<PeerVolume> PeerVolumes =>
        [.. _view.Peers.Values.SelectMany(a => a.Volumes.Select(v => new PeerVolume(v.Name, a.Name, a.Owner, v.SizeBlocks * Units.BlockBytes)))
            .OrderBy(v => v.Name, StringComparer.Ordinal)];

    /// <summary>The MR-5 number of a served array (its superblock holds it).</summary>
    public byte NumberOf(RaidArray array) => _view.Arrays[array.Name].Current.Number;

    /// <summary>Every array both controllers know: MR-5 number → (serial, name, owner). Both sides read it
    /// from the same superblocks, so it is the same table on both.</summary>
    public IReadOnlyDictionary<byte, (ulong Serial, string Name, string Owner)> ArrayTable
    {
        get
        {
            var view = _view;
            var t = new Dictionary<byte, (ulong, string, string)>();
            foreach (var a in view.Arrays.Values) t[a.Current.Number] = (SerialOf(a.Current.ArrayUuid), a.Raid.Name, a.Current.Owner);
            foreach (var p in view.Peers.Values) t[p.Number] = (SerialOf(p.ArrayUuid), p.Name, p.Owner);
            return t;
        }
    }

    /// <summary>The 64-bit array serial number of MR-2 (the first 8 bytes of the array UUID).</summary>
    public static ulong SerialOf(Guid uuid)
    {
        Span<byte> b = stackalloc byte[16];
        uuid.TryWriteBytes(b);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(b);
    }

    /// <summary>Arrays this controller serves.</summary>
    public IReadOnlyList<RaidArray> ServedArrays => [.. _view.Arrays.Values.Select(a => a.Raid).OrderBy(r => r.Name, StringComparer.Ordinal)];

    /// <summary>The array a volume lives on and the volume's extent, for volumes this controller serves.</summary>
    public bool TryGetServedVolume(string name, out RaidVolume volume)
    {
        if (_volumes.TryGetValue(name, out var v)) { volume = v; return true; }
        volume = null!;
        return false;
    }

    async Task AssembleArrayAsync(Superblock auth, List<DriveEntry> group, CancellationToken ct)
    {
        ArrayGeometry geometry;
        try { geometry = new ArrayGeometry(auth.Level, auth.MemberCount, auth.ChunkBlocks, auth.MemberBlocks); }
        catch (ArgumentException e)
        {
            foreach (var d in group) d.Problem = $"array {auth.Name}: superblock geometry is invalid: {e.Message}";
            return;
        }
        var byUuid = new Dictionary<Guid, DriveEntry>();
        foreach (var d in group)
        {
            var sb = d.Superblock!;
            if (sb.Level != auth.Level || sb.MemberCount != auth.MemberCount || sb.ChunkBlocks != auth.ChunkBlocks || sb.MemberBlocks != auth.MemberBlocks)
            {
                d.Problem = $"claims array {auth.Name} but its superblock says RAID {(int)sb.Level}, {sb.MemberCount} drives, chunk {sb.ChunkBlocks * 4} KiB where the array is RAID {(int)auth.Level}, {auth.MemberCount} drives, chunk {auth.ChunkBlocks * 4} KiB; refused";
                LogMismatch(d.Name, d.Problem);
                continue;
            }
            if (MemberLayout.DataBlocksFor(d.Device.BlockCount) < auth.MemberBlocks)
            {
                d.Problem = $"is smaller than array {auth.Name} needs; refused";
                continue;
            }
            byUuid[sb.DriveUuid] = d;
        }
        var slots = new DriveEntry?[geometry.MemberCount];
        var disks = new MemberDisk?[geometry.MemberCount];
        var status = new MemberStatus[geometry.MemberCount];
        var resync = new List<(int Slot, DriveEntry Drive)>();
        var newSlots = auth.Slots.ToArray();
        for (int i = 0; i < geometry.MemberCount; i++)
        {
            var e = auth.Slots[i];
            byUuid.TryGetValue(e.Drive, out var d);
            status[i] = MemberStatus.Missing;
            if (d is null)
            {
                if (e.State is SlotState.Active or SlotState.Rebuilding)
                {
                    LogMemberMissing(auth.Name, i);
                    newSlots[i] = e with { State = SlotState.Failed };
                }
                continue;
            }
            d.Array = null; // set below when the array exists
            slots[i] = d;
            if (e.State == SlotState.Active)
            {
                if (d.Superblock!.Generation < auth.Generation) LogOlderSuperblock(d.Name, auth.Name);
                disks[i] = new MemberDisk(d.Device, i, auth.ArrayUuid, geometry.MemberBlocks);
                status[i] = MemberStatus.Active;
            }
            else
            {
                // Failed or interrupted rebuild: the drive's content is stale; resync it.
                resync.Add((i, d));
                newSlots[i] = e with { State = SlotState.Failed };
            }
        }
        var raid = new RaidArray(auth.Name, auth.ArrayUuid, geometry, disks, status, _options.Time, _options.LoggerFactory.CreateLogger($"Duet.Raid.Array.{auth.Name}"));
        await raid.LoadBadBlocksAsync(ct); // AW-5: the list is on the members, so it survives restarts and takeovers
        var spares = auth.Spares.Select(u => byUuid.GetValueOrDefault(u)).Where(d => d is not null).Select(d => d!).ToList();
        var entry = new ArrayEntry { Raid = raid, Current = auth with { Slots = newSlots, Clean = false }, Slots = slots, Spares = spares };
        foreach (var d in slots) if (d is not null) d.Array = entry;
        foreach (var d in spares) { d.Array = entry; d.IsSpare = true; }
        foreach (var d in group)
            if (d.Array is null && d.Problem is null)
                d.Problem = $"was a member of array {auth.Name} but the array no longer lists it (superblock generation {d.Superblock!.Generation} < {auth.Generation})";
        _arrays[auth.Name] = entry;
        raid.PersistMemberFailure = (_, _) => OnMemberFailedAsync(entry);
        if (!auth.Clean) LogUnclean(auth.Name);
        if (raid.IsFailed) LogArrayFailed(auth.Name);
        await PersistAsync(entry, ct);
        foreach (var (slot, d) in resync)
        {
            if (raid.IsFailed) break;
            LogResync(auth.Name, slot, d.Name);
            await StartRebuildAsync(entry, slot, d, ct);
        }
        await MaybeRebuildOntoSpareAsync(entry, ct);
    }

    sealed class SuperblockException(string message) : Exception(message);

    static async Task<Superblock?> ReadSuperblockAsync(IBlockDevice device, CancellationToken ct)
    {
        if (device.BlockCount <= MemberLayout.MetadataBlocks) return null;
        var buf = new byte[2 * Units.BlockBytes];
        await device.ReadAsync(MemberLayout.SuperblockLba, buf, ct);
        var a = Superblock.TryDecode(buf.AsSpan(0, Units.BlockBytes), out var errA);
        var b = Superblock.TryDecode(buf.AsSpan(Units.BlockBytes), out var errB);
        if (a is null && b is null)
        {
            if (errA is null && errB is null) return null; // blank
            throw new SuperblockException(errA ?? errB!);
        }
        if (a is null) return b;
        if (b is null) return a;
        return a.Generation >= b.Generation ? a : b;
    }

    /// <summary>Writes the array's state, generation + 1, to every member and spare that can take it.</summary>
    async Task PersistAsync(ArrayEntry a, CancellationToken ct)
    {
        var raid = a.Raid;
        var slots = new SlotEntry[raid.Geometry.MemberCount];
        for (int i = 0; i < slots.Length; i++)
        {
            var prior = a.Current.Slots[i];
            var st = raid.Status(i) switch
            {
                MemberStatus.Active => SlotState.Active,
                MemberStatus.Rebuilding => SlotState.Rebuilding,
                _ => a.Slots[i] is null && prior.Drive == Guid.Empty ? SlotState.Empty : SlotState.Failed,
            };
            slots[i] = new SlotEntry(a.Slots[i]?.Superblock?.DriveUuid ?? prior.Drive, st);
        }
        var next = a.Current with
        {
            Generation = a.Current.Generation + 1,
            Slots = slots,
            Spares = a.Spares.Select(s => s.Superblock!.DriveUuid).ToList(),
        };
        a.Current = next;
        var buf = new byte[Units.BlockBytes];
        var targets = new List<(DriveEntry Drive, int Slot)>();
        for (int i = 0; i < slots.Length; i++)
            if (a.Slots[i] is { } d && raid.Status(i) != MemberStatus.Missing) targets.Add((d, i));
        foreach (var s in a.Spares) targets.Add((s, -1));
        BlockIoException? pathDown = null;
        foreach (var (d, slot) in targets)
        {
            var sb = next with { DriveUuid = d.Superblock!.DriveUuid, Slot = slot };
            sb.Encode(buf);
            try
            {
                await d.Device.WriteAsync(MemberLayout.SuperblockLba, buf, false, ct);
                await d.Device.WriteAsync(MemberLayout.SuperblockCopyLba, buf, true, ct);
                d.Superblock = sb;
            }
            catch (BlockIoException e)
            {
                LogSuperblockWriteFailed(d.Name, e.Message);
                // The path to the drives, not the drive: the member stays (the operation fails below).
                if (e.Kind == BlockErrorKind.PathDown) { pathDown ??= e; continue; }
                // Not awaited: we hold the management lock; the failure is persisted right after.
                if (slot >= 0) _ = raid.FailMember(slot, $"superblock write failed: {e.Message}");
            }
        }
        if (pathDown is not null) throw pathDown;
    }

    /// <summary>
    /// Persists a member failure raised by the data path (or an operator) and looks for a spare.
    /// The data path awaits the returned task before acknowledging anything that ran without the
    /// member, so the caller must not hold the management lock while awaiting it.
    /// </summary>
    async Task OnMemberFailedAsync(ArrayEntry a)
    {
        await LockAsync(CancellationToken.None);
        try
        {
            // Handed over or deleted meanwhile (that operation persisted the member states, or the
            // array is gone): its superblocks are no longer this controller's to write.
            if (!_arrays.TryGetValue(a.Raid.Name, out var current) || current != a) return;
            await PersistAsync(a, CancellationToken.None);
            if (a.Raid.IsFailed) { LogArrayFailed(a.Raid.Name); RefreshVolumes(); }
            else if (!_stopping.IsCancellationRequested) await MaybeRebuildOntoSpareAsync(a, _stopping.Token);
        }
        catch (OperationCanceledException) { }
        catch (Exception e) { LogBackgroundError(a.Raid.Name, e.Message); }
        finally { Unlock(); }
    }

    async Task MaybeRebuildOntoSpareAsync(ArrayEntry a, CancellationToken ct)
    {
        if (a.Rebuild is { IsCompleted: false } || a.Raid.IsFailed) return;
        int slot = Enumerable.Range(0, a.Raid.Geometry.MemberCount).FirstOrDefault(i => a.Raid.Status(i) == MemberStatus.Missing, -1);
        if (slot < 0 || a.Spares.Count == 0) return;
        var spare = a.Spares[0];
        a.Spares.RemoveAt(0);
        spare.IsSpare = false;
        await StartRebuildAsync(a, slot, spare, ct);
    }

    /// <summary>Rebuilds a missing slot onto a drive, in the background. Caller holds the management lock.</summary>
    async Task StartRebuildAsync(ArrayEntry a, int slot, DriveEntry drive, CancellationToken ct)
    {
        Invariant.Assert(a.Rebuild is null || a.Rebuild.IsCompleted);
        var old = a.Slots[slot];
        if (old is not null && old != drive) { old.Array = null; }
        var uuid = _options.NewUuid();
        var sb = a.Current with { DriveUuid = uuid, Slot = slot };
        drive.Superblock = sb;
        drive.Array = a;
        drive.Problem = null;
        a.Slots[slot] = drive;
        var disk = new MemberDisk(drive.Device, slot, a.Raid.Uuid, a.Raid.Geometry.MemberBlocks);
        disk.DropTagCache();
        var progress = new PassProgress { TotalStripes = a.Raid.Geometry.Stripes, StartedTicks = _options.Time.GetTimestamp(), TargetDrive = drive.Name };
        a.RebuildProgress = progress;
        a.RebuildSlot = slot;
        long rate = (long)a.Current.RebuildMiBps << 20;
        var task = a.Raid.RebuildAsync(slot, disk, rate, progress, _stopping.Token);
        await PersistAsync(a, ct);
        a.Rebuild = FinishRebuildAsync(task);

        // Runs on whatever context started the rebuild (the simulator's, or none): no ContinueWith
        // onto the thread pool, so a simulated run stays on its one scheduler.
        async Task FinishRebuildAsync(Task rebuild)
        {
            string? failure = null;
            try { await rebuild; }
            catch (OperationCanceledException) { }
            catch (Exception e) { failure = e.Message; }
            await LockAsync(CancellationToken.None);
            try
            {
                if (failure is not null) LogBackgroundError(a.Raid.Name, $"rebuild onto {drive.Name} failed: {failure}");
                if (!_stopping.IsCancellationRequested) await PersistAsync(a, CancellationToken.None);
                if (old is not null && old != drive && old.Array is null) await WipeAsync(old, CancellationToken.None);
            }
            finally { Unlock(); }
        }
    }

    static async Task WipeAsync(DriveEntry d, CancellationToken ct)
    {
        var zero = new byte[2 * Units.BlockBytes];
        try { await d.Device.WriteAsync(MemberLayout.SuperblockLba, zero, true, ct); }
        catch (BlockIoException) { }
        d.Superblock = null;
        d.Array = null;
        d.IsSpare = false;
        d.Problem = null;
    }

    public async ValueTask DisposeAsync()
    {
        _stopping.Cancel();
        var pending = _arrays.Values.SelectMany(a => new[] { a.Rebuild, a.Scrub }).Where(t => t is not null).Select(t => t!).ToArray();
        try { await Task.WhenAll(pending); } catch { /* cancelled passes */ }
        foreach (var a in _arrays.Values)
        {
            try { await a.Raid.FlushAsync(); }
            catch (BlockIoException e) { LogBackgroundError(a.Raid.Name, $"flush at shutdown failed: {e.Message}"); }
        }
        await LockAsync(CancellationToken.None);
        try
        {
            foreach (var a in _arrays.Values)
            {
                try
                {
                    a.Current = a.Current with { Clean = true };
                    await PersistAsync(a, CancellationToken.None);
                }
                catch (BlockIoException e) { LogBackgroundError(a.Raid.Name, $"clean shutdown failed: {e.Message}"); }
            }
            foreach (var d in _drives.Values) await d.Device.DisposeAsync();
        }
        finally { Unlock(); }
    }
}
