using Duet.Core;
using Microsoft.Extensions.Logging;

namespace Duet.Raid.Management;

public sealed partial class ArrayManager
{
    static ManagementException Invalid(string m) => new(ManagementErrorKind.Invalid, m);
    static ManagementException NotFound(string m) => new(ManagementErrorKind.NotFound, m);
    static ManagementException Conflict(string m) => new(ManagementErrorKind.Conflict, m);

    async Task<T> Locked<T>(Func<Task<T>> body, CancellationToken ct)
    {
        await LockAsync(ct);
        try { return await body(); }
        finally { Unlock(); }
    }

    Task Locked(Func<Task> body, CancellationToken ct) => Locked<bool>(async () => { await body(); return true; }, ct);

    DriveEntry Drive(string name) =>
        _drives.TryGetValue(name, out var d) ? d : throw NotFound($"no drive named '{name}' (see: duet drive list)");

    ArrayEntry ArrayNamed(string name) =>
        _arrays.TryGetValue(name, out var a) ? a
        : _peerArrays.TryGetValue(name, out var p) ? throw Conflict($"array '{name}' is served by controller {p.Owner}; ask it (duet --controller {p.Owner} ...)")
        : throw NotFound($"no array named '{name}' (see: duet array list)");

    static string? InUse(DriveEntry d) =>
        d.PeerArray is not null ? $"drive '{d.Name}' belongs to array '{d.PeerArray}', which the peer controller serves"
        : d.Array is not null ? (d.IsSpare ? $"drive '{d.Name}' is a spare of array '{d.Array.Raid.Name}'" : $"drive '{d.Name}' is a member of array '{d.Array.Raid.Name}'")
        : d.Problem is not null ? $"drive '{d.Name}' {d.Problem}"
        : d.Superblock is not null ? $"drive '{d.Name}' holds a superblock of array '{d.Superblock.Name}' (UUID {d.Superblock.ArrayUuid})"
        : null;

    public Task<ArrayInfo> CreateArrayAsync(CreateArrayRequest r, CancellationToken ct = default) => Locked(async () =>
    {
        if (!Superblock.IsValidName(r.Name)) throw Invalid($"array name '{r.Name}' must be 1-32 letters, digits, '-', '_' or '.'");
        if (_arrays.ContainsKey(r.Name) || _peerArrays.ContainsKey(r.Name)) throw Conflict($"an array named '{r.Name}' already exists");
        string owner = r.Owner ?? Me;
        if (owner is not ("A" or "B")) throw Invalid($"owner '{r.Owner}' must be controller A or B");
        if (r.Level is not (0 or 1 or 5 or 6 or 10)) throw Invalid($"RAID level {r.Level} is not supported; use 0, 1, 5, 6 or 10");
        var level = (RaidLevel)r.Level;
        if (r.ChunkKiB < 4 || r.ChunkKiB > 1024 || (r.ChunkKiB & (r.ChunkKiB - 1)) != 0) throw Invalid($"chunk size {r.ChunkKiB} KiB must be a power of two from 4 to 1024");
        if (r.RebuildMiBps < 0) throw Invalid("rebuild rate must not be negative");
        if (r.Drives.Count != r.Drives.Distinct().Count()) throw Invalid("a drive is named twice");
        int min = ArrayGeometry.MinimumMembers(level);
        if (r.Drives.Count < min) throw Invalid($"RAID {r.Level} needs at least {min} drives; {r.Drives.Count} given");
        if (r.Drives.Count > ArrayGeometry.MaxMembers) throw Invalid($"at most {ArrayGeometry.MaxMembers} drives per array; {r.Drives.Count} given");
        if (level == RaidLevel.Raid10 && r.Drives.Count % 2 != 0) throw Invalid("RAID 10 needs an even number of drives");
        var drives = r.Drives.Select(Drive).ToList();
        foreach (var d in drives) if (InUse(d) is { } why) throw Conflict(why);
        // The shelf is shared: the peer may have put an array on a drive since we last read it
        // (and not told us yet: it may have died first). Look at the drive itself before claiming it.
        foreach (var d in drives)
        {
            Superblock? now;
            try { now = await ReadSuperblockAsync(d.Device, ct); }
            catch (SuperblockException e) { throw Conflict($"drive '{d.Name}' holds an unreadable superblock ({e.Message}); it is not free"); }
            catch (BlockIoException e) { throw Conflict($"drive '{d.Name}' cannot be read ({e.Message}); it is not free"); }
            if (now is not null)
            {
                d.Superblock = now;
                throw Conflict($"drive '{d.Name}' now belongs to array '{now.Name}' (controller {now.Owner}); it is not free");
            }
        }
        var sizes = drives.Select(d => d.Device.BlockCount).Distinct().ToList();
        if (sizes.Count > 1)
            throw Invalid($"drives differ in size ({string.Join(", ", drives.Select(d => $"{d.Name}: {Units.FormatSize(d.Device.BlockCount * Units.BlockBytes)}"))}); an array needs drives of one size");
        int chunkBlocks = r.ChunkKiB / 4;
        long memberBlocks = MemberLayout.DataBlocksFor(sizes[0]) / chunkBlocks * chunkBlocks;
        if (memberBlocks < chunkBlocks) throw Invalid("the drives are too small for one stripe");
        var geometry = new ArrayGeometry(level, drives.Count, chunkBlocks, memberBlocks);
        var uuid = _options.NewUuid();
        var slots = drives.Select(_ => new SlotEntry(_options.NewUuid(), SlotState.Active)).ToArray();
        var sb = new Superblock
        {
            ArrayUuid = uuid, DriveUuid = Guid.Empty, Generation = 0, Level = level, MemberCount = drives.Count,
            ChunkBlocks = chunkBlocks, Slot = 0, MemberBlocks = geometry.MemberBlocks, Clean = false,
            RebuildMiBps = r.RebuildMiBps, Name = r.Name, Slots = slots, Owner = owner, PreferredOwner = owner, Number = FreeArrayNumber(),
        };
        var disks = new MemberDisk?[drives.Count];
        for (int i = 0; i < drives.Count; i++)
        {
            disks[i] = new MemberDisk(drives[i].Device, i, uuid, geometry.MemberBlocks);
            await disks[i]!.ClearTagsAsync(ct);
            drives[i].Superblock = sb with { DriveUuid = slots[i].Drive, Slot = i };
        }
        var raid = new RaidArray(r.Name, uuid, geometry, disks, Enumerable.Repeat(MemberStatus.Active, drives.Count).ToArray(),
            _options.Time, _options.LoggerFactory.CreateLogger($"Duet.Raid.Array.{r.Name}"));
        var entry = new ArrayEntry { Raid = raid, Current = sb, Slots = [.. drives], Spares = [] };
        foreach (var d in drives) d.Array = entry;
        raid.PersistMemberFailure = (_, _) => OnMemberFailedAsync(entry);
        _arrays[r.Name] = entry;
        await PersistAsync(entry, ct);
        LogArrayCreated(r.Name, r.Level, drives.Count, Units.FormatSize(geometry.CapacityBlocks * Units.BlockBytes));
        var info = Info(ViewOf(entry));
        if (!OwnedHere(entry.Current))
        {
            // Created here for the peer: hand it over; the peer assembles it when told to rescan.
            // (We hold the management lock: a member dropped by the flush is persisted here, not by
            // the failure handler, which would wait for the lock.)
            await entry.Raid.FlushWithoutPersistingFailuresAsync(ct);
            if (entry.Raid.LostSlots().Count > 0) await PersistAsync(entry, ct);
            _arrays.Remove(r.Name);
            foreach (var d in drives) { d.Array = null; d.PeerArray = r.Name; }
            _peerArrays[r.Name] = entry.Current;
            info = info with { State = "peer", Owner = owner };
        }
        return info;
    }, ct);

    /// <summary>
    /// The MR-5 number of a new array: unused by either controller. In a pair, A hands out even
    /// numbers and B odd ones, so two arrays created at the same moment on both controllers (each
    /// before hearing of the other's) never share a number — the number is what names an array
    /// on the link and in the cache, so a shared one would mix two arrays' data.
    /// </summary>
    byte FreeArrayNumber()
    {
        var used = _arrays.Values.Select(a => a.Current.Number).Concat(_peerArrays.Values.Select(p => p.Number)).ToHashSet();
        int first = _options.Controller == "B" ? 1 : 0, step = _options.Controller is null ? 1 : 2;
        for (int n = first; n < 256; n += step) if (!used.Contains((byte)n)) return (byte)n;
        throw Conflict($"no array number is free{(step == 2 ? $" for controller {_options.Controller} (each of the pair names at most 128 arrays)" : "")}; the mirror protocol names at most 256 (MR-5)");
    }

    public Task DeleteArrayAsync(string name, CancellationToken ct = default) => Locked(async () =>
    {
        var a = ArrayNamed(name);
        if (a.Current.Volumes.Count > 0)
            throw Conflict($"array '{name}' still has volumes ({string.Join(", ", a.Current.Volumes.Select(v => v.Name))}); delete them first");
        if (a.Rebuild is { IsCompleted: false }) throw Conflict($"array '{name}' is rebuilding; wait for it to finish");
        if (a.Scrub is { IsCompleted: false }) throw Conflict($"array '{name}' is being scrubbed; wait for it to finish");
        _arrays.Remove(name);
        foreach (var d in a.Slots.Concat(a.Spares)) if (d is not null) await WipeAsync(d, ct);
        RefreshVolumes();
        LogArrayDeleted(name);
    }, ct);

    public Task<VolumeInfo> CreateVolumeAsync(CreateVolumeRequest r, CancellationToken ct = default) => Locked(async () =>
    {
        if (!Superblock.IsValidName(r.Name)) throw Invalid($"volume name '{r.Name}' must be 1-32 letters, digits, '-', '_' or '.'");
        if (r.Lun is { } asked && asked is < 0 or > Superblock.MaxLun) throw Invalid($"LUN {asked} is out of range: a volume's LUN is 0 to {Superblock.MaxLun}");
        if (_arrays.Values.Select(a => a.Current).Concat(_peerArrays.Values).FirstOrDefault(a => a.Volumes.Any(v => v.Name == r.Name)) is { } holder)
            throw Conflict($"a volume named '{r.Name}' already exists (on array {holder.Name})");
        var a = ArrayNamed(r.Array);
        if (a.Raid.IsFailed) throw Conflict($"array '{r.Array}' has failed; no volume can be created on it");
        if (r.SizeBytes < 0 || r.SizeBytes % Units.BlockBytes != 0) throw Invalid($"volume size {r.SizeBytes} must be a multiple of 4 KiB");
        if (a.Current.Volumes.Count >= Superblock.MaxVolumes) throw Conflict($"array '{r.Array}' already has {Superblock.MaxVolumes} volumes");
        const long Align = 256; // 1 MiB
        long free = LargestFree(a, Align).Length;
        long size = r.SizeBytes == 0 ? free * Units.BlockBytes : r.SizeBytes;
        long blocks = size / Units.BlockBytes;
        var extent = FirstFit(a, blocks, Align);
        if (blocks == 0 || extent < 0)
            throw Invalid($"array '{r.Array}' has no free extent of {Units.FormatSize(size)} (largest free: {Units.FormatSize(free * Units.BlockBytes)})");
        int lun = ChooseLun(r.Lun);
        var v = new VolumeEntry(r.Name, _options.NewUuid(), extent, blocks) { Lun = lun };
        a.Current = a.Current with { Volumes = [.. a.Current.Volumes, v] };
        await PersistAsync(a, ct);
        RefreshVolumes();
        LogVolumeCreated(r.Name, r.Array, Units.FormatSize(size), lun);
        return new VolumeInfo(v.Name, r.Array, v.SizeBlocks * Units.BlockBytes, v.OffsetBlocks * Units.BlockBytes) { Lun = lun };
    }, ct);

    /// <summary>
    /// The LUN of a new volume: <paramref name="asked"/> if no volume has it, else the lowest free one, over every volume
    /// this controller knows (<see cref="LunTable"/>: its own and, from their superblocks as last read, the peer's).
    /// The peer reads a new volume's superblock when told of it (the array-table update every change sends); a volume
    /// created through each controller before it heard of the other's can share a LUN, which the table resolves.
    /// </summary>
    int ChooseLun(int? asked)
    {
        var luns = ResolveLuns();
        if (asked is { } n)
        {
            if (luns.Holder(n) is { } holder)
                throw Conflict($"LUN {n} is already used by volume '{holder.Volume}' (array {holder.Array}); choose another, or leave --lun out for the lowest free LUN");
            return n;
        }
        return luns.LowestFree() ?? throw Conflict($"every LUN (0 to {Superblock.MaxLun}) is in use; delete a volume first");
    }

    static IEnumerable<(long Start, long Length)> FreeExtents(ArrayEntry a, long align)
    {
        long cap = a.Raid.Geometry.CapacityBlocks;
        long cursor = 0;
        foreach (var v in a.Current.Volumes.OrderBy(v => v.OffsetBlocks))
        {
            long s = (cursor + align - 1) / align * align;
            if (v.OffsetBlocks > s) yield return (s, v.OffsetBlocks - s);
            cursor = Math.Max(cursor, v.OffsetBlocks + v.SizeBlocks);
        }
        long last = (cursor + align - 1) / align * align;
        if (cap > last) yield return (last, cap - last);
    }

    static (long Start, long Length) LargestFree(ArrayEntry a, long align) =>
        FreeExtents(a, align).Aggregate((Start: 0L, Length: 0L), (best, e) => e.Length > best.Length ? e : best);

    static long FirstFit(ArrayEntry a, long blocks, long align) =>
        FreeExtents(a, align).Where(e => e.Length >= blocks).Select(e => e.Start).DefaultIfEmpty(-1).First();

    public Task DeleteVolumeAsync(string name, CancellationToken ct = default) => Locked(async () =>
    {
        var a = _arrays.Values.FirstOrDefault(x => x.Current.Volumes.Any(v => v.Name == name))
            ?? throw NotFound($"no volume named '{name}' (see: duet volume list)");
        a.Current = a.Current with { Volumes = a.Current.Volumes.Where(v => v.Name != name).ToList() };
        await PersistAsync(a, ct);
        RefreshVolumes();
        LogVolumeDeleted(name);
    }, ct);

    public Task<DriveInfo> AddDriveAsync(AddDriveRequest r, CancellationToken ct = default) => Locked(() =>
    {
        if (!Superblock.IsValidName(r.Name)) throw Invalid($"drive name '{r.Name}' must be 1-32 letters, digits, '-', '_' or '.'");
        if (_drives.ContainsKey(r.Name)) throw Conflict($"a drive named '{r.Name}' already exists");
        long min = (long)(MemberLayout.MetadataBlocks + MemberLayout.GroupBlocks) * Units.BlockBytes;
        if (r.SizeBytes < min || r.SizeBytes % Units.BlockBytes != 0)
            throw Invalid($"drive size must be a multiple of 4 KiB and at least {Units.FormatSize(min)}");
        if (_shelf.Contains(r.Name)) throw Conflict($"{_shelf.Describe(r.Name)} already exists");
        var device = _shelf.Create(r.Name, r.SizeBytes);
        var d = new DriveEntry { Name = r.Name, Device = device };
        _drives[r.Name] = d;
        return Task.FromResult(DriveInfoOf(ViewOf(d)));
    }, ct);

    public Task AddSpareAsync(AddSpareRequest r, CancellationToken ct = default) => Locked(async () =>
    {
        var a = ArrayNamed(r.Array);
        var d = Drive(r.Drive);
        if (InUse(d) is { } why) throw Conflict(why);
        if (MemberLayout.DataBlocksFor(d.Device.BlockCount) < a.Raid.Geometry.MemberBlocks)
            throw Invalid($"drive '{d.Name}' ({Units.FormatSize(d.Device.BlockCount * Units.BlockBytes)}) is smaller than the members of array '{r.Array}'");
        if (a.Spares.Count >= Superblock.MaxSpares) throw Conflict($"array '{r.Array}' already has {Superblock.MaxSpares} spares");
        d.Superblock = a.Current with { DriveUuid = _options.NewUuid(), Slot = -1 };
        d.Array = a;
        d.IsSpare = true;
        a.Spares.Add(d);
        await PersistAsync(a, ct);
        await MaybeRebuildOntoSpareAsync(a, ct);
    }, ct);

    (ArrayEntry Array, int Slot) MemberOf(DriveEntry d)
    {
        if (d.PeerArray is not null)
            throw Conflict($"drive '{d.Name}' belongs to array '{d.PeerArray}', which is served by controller {(_peerArrays.TryGetValue(d.PeerArray, out var p) ? p.Owner : "?")}");
        if (d.Array is null) throw Invalid($"drive '{d.Name}' is not a member of any array");
        if (d.IsSpare) throw Invalid($"drive '{d.Name}' is a spare of array '{d.Array.Raid.Name}', not an active member");
        int slot = Array.IndexOf(d.Array.Slots, d);
        Invariant.Assert(slot >= 0);
        return (d.Array, slot);
    }

    public async Task FailDriveAsync(string drive, CancellationToken ct = default)
    {
        var (a, slot) = await Locked(() =>
        {
            var (a, slot) = MemberOf(Drive(drive));
            if (a.Raid.Status(slot) == MemberStatus.Missing) throw Conflict($"drive '{drive}' has already failed");
            // The operator's fail leaves the array degraded, never failed (as replace does): losing
            // one more member than the level survives would take its volumes offline.
            var lost = a.Raid.LostSlots().Append(slot).Distinct().ToList();
            if (!a.Raid.Geometry.IsSurvivable(lost))
                throw Conflict($"failing '{drive}' would leave array '{a.Raid.Name}' without enough members; replace or rebuild a lost member first");
            return Task.FromResult((a, slot));
        }, ct);
        // Outside the lock: persisting the failure takes it. Returns once the failure is on the
        // surviving members' superblocks (and a spare, if any, is rebuilding).
        await a.Raid.FailMember(slot, "failed by the operator");
    }

    public Task ReplaceDriveAsync(string drive, ReplaceDriveRequest r, CancellationToken ct = default) => Locked(async () =>
    {
        var old = Drive(drive);
        var (a, slot) = MemberOf(old);
        var with = Drive(r.With);
        if (InUse(with) is { } why) throw Conflict(why);
        if (MemberLayout.DataBlocksFor(with.Device.BlockCount) < a.Raid.Geometry.MemberBlocks)
            throw Invalid($"drive '{with.Name}' is smaller than the members of array '{a.Raid.Name}'");
        if (a.Rebuild is { IsCompleted: false }) throw Conflict($"array '{a.Raid.Name}' is already rebuilding; wait for it to finish");
        if (a.Raid.Status(slot) != MemberStatus.Missing)
        {
            var lost = a.Raid.LostSlots().Append(slot).Distinct().ToList();
            if (!a.Raid.Geometry.IsSurvivable(lost))
                throw Conflict($"taking '{drive}' out of array '{a.Raid.Name}' would leave it without enough members; add a spare or let the rebuild finish first");
            _ = a.Raid.FailMember(slot, $"replaced by {with.Name}"); // persisted by StartRebuildAsync below
        }
        await StartRebuildAsync(a, slot, with, ct);
    }, ct);

    public Task StartScrubAsync(string array, ScrubRequest r, CancellationToken ct = default) => Locked(() =>
    {
        var a = ArrayNamed(array);
        if (a.Scrub is { IsCompleted: false }) throw Conflict($"array '{array}' is already being scrubbed");
        if (a.Raid.IsFailed) throw Conflict($"array '{array}' has failed");
        var result = new ScrubResult();
        var progress = new PassProgress { TotalStripes = a.Raid.Geometry.Stripes, StartedTicks = _options.Time.GetTimestamp() };
        a.ScrubResult = result;
        a.ScrubProgress = progress;
        LogScrubStarted(array, r.Repair);
        a.Scrub = RunScrubAsync(a.Raid.ScrubAsync(r.Repair, result, progress, _stopping.Token));
        return Task.CompletedTask;

        async Task RunScrubAsync(Task scrub)
        {
            try
            {
                await scrub;
                LogScrubDone(array, result.StripesChecked, result.ChecksumErrors, result.ParityMismatches, result.Repaired, result.Unrepairable, result.Listed);
            }
            catch (OperationCanceledException) { LogScrubDone(array, result.StripesChecked, result.ChecksumErrors, result.ParityMismatches, result.Repaired, result.Unrepairable, result.Listed); }
            catch (Exception e) { LogBackgroundError(array, $"scrub failed: {e.Message}"); }
        }
    }, ct);

    /// <summary>A single controller has no peer to hand an array to; the pair's controller service moves arrays.</summary>
    public Task<ArrayInfo> MoveArrayAsync(string array, MoveArrayRequest request, CancellationToken ct = default) => Locked<ArrayInfo>(() =>
    {
        ArrayNamed(array);
        throw Invalid("moving an array needs the controller pair (./duet up); this controller serves every array alone");
    }, ct);

    /// <summary>
    /// The last step of a move: the owner (whose cache holds nothing of the array any more) writes the
    /// new owner into the superblocks and stops serving the array; from then on it lists it read-only.
    /// </summary>
    public Task<ArrayInfo> HandOverAsync(string name, string to, CancellationToken ct = default) => Locked(async () =>
    {
        var a = ArrayNamed(name);
        if (to is not ("A" or "B")) throw Invalid($"'{to}' is not a controller: use A or B");
        if (to == a.Current.Owner) throw Invalid($"array '{name}' is already served by controller {to}");
        if (a.Rebuild is { IsCompleted: false }) throw Conflict($"array '{name}' is rebuilding; move it when the rebuild is done");
        if (a.Scrub is { IsCompleted: false }) throw Conflict($"array '{name}' is being scrubbed; move it when the scrub is done");
        // We hold the management lock, which persisting a member failure takes: a member the flush
        // drops is recorded by the persist below (it writes the members' current states), not
        // awaited here (that wait never ended: a move stuck for good behind a failing drive).
        await a.Raid.FlushWithoutPersistingFailuresAsync(ct);
        // A move says where the array belongs now: a preference it had goes with it, so an automatic failback
        // never undoes an operator's move (and a failback, moving it to its preference, changes nothing).
        var before = a.Current;
        a.Current = a.Current with { Owner = to, Clean = true, PreferredOwner = a.Current.PreferredOwner is null ? null : to };
        try
        {
            await PersistAsync(a, ct);
        }
        catch (Exception e) when (e is BlockIoException or OperationCanceledException)
        {
            // Cut part-way (the path to the drives lost): some members may name the new owner now, at a newer
            // generation than the rest, and an assembly takes the newest. The array stays ours, and its superblocks
            // must say so again, at a newer generation still, before it takes another write
            // (ReassertOwnerAsync): a write acknowledged here meanwhile would be lost to a restart that found
            // the array the peer's.
            a.Current = a.Current with { Owner = before.Owner, Clean = before.Clean, PreferredOwner = before.PreferredOwner };
            throw new HandOverInterruptedException(name, to, e);
        }
        _arrays.Remove(name);
        foreach (var d in a.Slots.Concat(a.Spares)) if (d is not null) { d.Array = null; d.IsSpare = false; d.PeerArray = name; }
        _peerArrays[name] = a.Current;
        RefreshVolumes();
        LogHandedOver(name, to);
        return PeerInfo(a.Current, [.. _drives.Values.Select(ViewOf)]);
    }, ct);

    /// <summary>
    /// Writes this controller, the array's owner, into its superblocks again at a new generation: after a
    /// hand-over cut part-way (<see cref="HandOverInterruptedException"/>), so that no member's newer copy
    /// names the peer. Throws the path's <see cref="BlockIoException"/> (PathDown) while the drives cannot be
    /// reached; a member whose drive refuses is failed, as any persist does.
    /// </summary>
    public Task ReassertOwnerAsync(string name, CancellationToken ct = default) => Locked(async () =>
    {
        var a = ArrayNamed(name);
        await PersistAsync(a, ct);
        LogOwnerReasserted(name, a.Current.Owner, a.Current.Generation);
        return true;
    }, ct);

    /// <summary>
    /// Sets the controller the array belongs on when both run (failback): "A", "B", or null for none. Only
    /// the owner writes an array's superblocks, so only the owner sets it (the peer's array is a Conflict
    /// naming the owner, which the pair client follows).
    /// </summary>
    public Task<ArrayInfo> PreferArrayAsync(string name, PreferArrayRequest request, CancellationToken ct = default) => Locked(async () =>
    {
        var a = ArrayNamed(name);
        string? owner = request.Owner is null or "none" ? null : request.Owner;
        if (owner is not (null or "A" or "B")) throw Invalid($"'{request.Owner}' is not a controller: use A, B or none");
        if (owner != a.Current.PreferredOwner)
        {
            a.Current = a.Current with { PreferredOwner = owner };
            await PersistAsync(a, ct);
            LogPreferred(name, owner ?? "none");
        }
        return Info(ViewOf(a));
    }, ct);

    /// <summary>AW-5: the array's bad-block list as the drives hold it, each block with its volume. Never waits.</summary>
    public Task<BadBlockReport> BadBlocksAsync(string array, CancellationToken ct = default)
    {
        var view = _view;
        if (!view.Arrays.TryGetValue(array, out var a))
        {
            if (view.Peers.TryGetValue(array, out var p)) throw Conflict($"array '{array}' is served by controller {p.Owner}; ask it (duet --controller {p.Owner} ...)");
            throw NotFound($"no array named '{array}' (see: duet array list)");
        }
        var list = a.Raid.BadBlocks;
        var blocks = list.Entries.Select(e =>
        {
            var v = a.Current.Volumes.FirstOrDefault(v => e.ArrayBlock >= v.OffsetBlocks && e.ArrayBlock < v.OffsetBlocks + v.SizeBlocks);
            long lba = e.FirstBadSector;
            var sectors = Enumerable.Range(0, Units.SectorsPerBlock).Where(e.IsBad).ToList();
            return new BadBlockInfo(e.ArrayBlock, lba, sectors, v?.Name, v is null ? null : lba - v.OffsetBlocks * Units.SectorsPerBlock, RaidArray.DescribeSource(e.Source));
        }).ToList();
        return Task.FromResult(new BadBlockReport(array, BadBlockList.MaxEntries, list.Generation, blocks));
    }

    /// <summary>Failback: the arrays served here whose preferred owner is <paramref name="controller"/>, each with what keeps it
    /// from moving now (a rebuild or a scrub), or null. Never waits; cheap enough for every heartbeat.</summary>
    public IReadOnlyList<(string Array, string? Busy)> PreferringServed(string controller)
    {
        List<(string, string?)>? list = null;
        foreach (var a in _view.Arrays.Values)
        {
            if (a.Current.PreferredOwner != controller) continue;
            string? busy = a.Rebuild is { IsCompleted: false } ? $"array {a.Raid.Name} is rebuilding (it moves when the rebuild is done)"
                : a.Scrub is { IsCompleted: false } ? $"array {a.Raid.Name} is being scrubbed (it moves when the scrub is done)"
                : null;
            (list ??= []).Add((a.Raid.Name, busy));
        }
        return list is null ? [] : [.. list.OrderBy(x => x.Item1, StringComparer.Ordinal)];
    }

    /// <summary>Whether this controller serves the array now.</summary>
    public bool Serves(string array) => _view.Arrays.ContainsKey(array);

    /// <summary>Whether the served array <paramref name="array"/> is owed a whole settle (<see cref="Superblock.SettleOwed"/>).</summary>
    public bool SettleOwed(string array) => _view.Arrays.TryGetValue(array, out var a) && a.Current.SettleOwed;

    /// <summary>Records in the superblocks of the served array <paramref name="name"/> that it is owed a whole settle
    /// (<paramref name="owed"/>), or that it is settled. Nothing is written if they say so already; an array no longer
    /// served here is left alone.</summary>
    public Task SetSettleOwedAsync(string name, bool owed, CancellationToken ct = default) => Locked(async () =>
    {
        if (!_arrays.TryGetValue(name, out var a) || a.Current.SettleOwed == owed) return;
        var before = a.Current;
        a.Current = a.Current with { SettleOwed = owed };
        try { await PersistAsync(a, ct); }
        catch (Exception e) when (e is BlockIoException or OperationCanceledException)
        {
            // Cut part-way, the members may disagree (an assembly takes the newest): a failed mark fails the caller's
            // step, which tries again; a failed clear leaves the array owed, settled again by the next to serve it.
            a.Current = a.Current with { SettleOwed = before.SettleOwed };
            throw;
        }
    }, ct);

    /// <summary>Waits for any rebuild and scrub now running (tests, shutdown).</summary>
    public async Task WaitForBackgroundAsync()
    {
        while (true)
        {
            var pending = _view.Arrays.Values.SelectMany(a => new[] { a.Rebuild, a.Scrub }).Where(t => t is { IsCompleted: false }).Select(t => t!).ToArray();
            if (pending.Length == 0) return;
            try { await Task.WhenAll(pending); } catch { }
        }
    }

    // ---- status ---------------------------------------------------------------------------

    /// <summary>Never waits: the state as the last management operation left it, with live member
    /// status and progress.</summary>
    public StatusInfo Status()
    {
        var view = _view;
        return new StatusInfo(
            view.Arrays.Values.Select(Info).Concat(view.Peers.Values.Select(p => PeerInfo(p, view.Drives))).OrderBy(a => a.Name, StringComparer.Ordinal).ToList(),
            view.Arrays.Values.Select(a => a.Current).Concat(view.Peers.Values).SelectMany(a => a.Volumes.Select(v => VolumeInfoOf(view, a, v)))
                .OrderBy(v => v.Name, StringComparer.Ordinal).ToList(),
            view.Drives.Select(DriveInfoOf).ToList());
    }

    static VolumeInfo VolumeInfoOf(View view, Superblock array, VolumeEntry v) =>
        new(v.Name, array.Name, v.SizeBlocks * Units.BlockBytes, v.OffsetBlocks * Units.BlockBytes)
        {
            Lun = view.Luns.Of(array.ArrayUuid, v.Uuid)?.Lun,
            LunWarning = view.LunWarnings.GetValueOrDefault((array.ArrayUuid, v.Uuid)),
        };

    ProgressInfo Progress(PassProgress p, long stripeBytes)
    {
        double fraction = p.TotalStripes == 0 ? 1 : (double)p.DoneStripes / p.TotalStripes;
        double seconds = _options.Time.GetElapsedTime(p.StartedTicks).TotalSeconds;
        long done = p.DoneStripes * stripeBytes;
        return new ProgressInfo(fraction, done, p.TotalStripes * stripeBytes, seconds > 0 ? done / seconds / (1 << 20) : 0, p.TargetDrive);
    }

    ArrayInfo Info(ArrayView a)
    {
        var g = a.Raid.Geometry;
        var members = new List<MemberInfo>();
        for (int i = 0; i < g.MemberCount; i++)
        {
            var st = a.Raid.Status(i) switch
            {
                MemberStatus.Active => "active",
                MemberStatus.Rebuilding => "rebuilding",
                _ => a.SlotDrives[i] is null ? "missing" : "failed",
            };
            members.Add(new MemberInfo(i, a.SlotDrives[i], st));
        }
        bool rebuilding = a.Rebuild is { IsCompleted: false };
        string state = a.Raid.IsFailed ? "failed" : rebuilding ? "rebuilding" : a.Raid.LostSlots().Count > 0 ? "degraded" : "optimal";
        string owner = a.Current.Owner;
        long chunkBytes = (long)g.ChunkBlocks * Units.BlockBytes;
        ScrubReport? scrub = null;
        if (a.ScrubResult is { } sr && a.ScrubProgress is { } sp)
            scrub = new ScrubReport(a.Scrub is { IsCompleted: false }, Progress(sp, chunkBytes * g.DataMembers), sr.StripesChecked, sr.ChecksumErrors,
                sr.ParityMismatches, sr.Repaired, sr.Unrepairable, sr.Findings) { Listed = Interlocked.Read(ref sr.Listed) };
        long used = a.Current.Volumes.Sum(v => v.SizeBlocks);
        return new ArrayInfo(a.Raid.Name, a.Raid.Uuid.ToString(), (int)g.Level, g.ChunkBlocks * 4, g.CapacityBlocks * Units.BlockBytes,
            (g.CapacityBlocks - used) * Units.BlockBytes, state, a.Current.Generation, members, a.Spares,
            rebuilding && a.RebuildProgress is { } rp ? Progress(rp, chunkBytes) : null, scrub, owner)
        { BadBlocks = a.Raid.BadBlocks.Count, PreferredOwner = a.Current.PreferredOwner ?? "none" };
    }

    static ArrayInfo PeerInfo(Superblock sb, IReadOnlyList<DriveView> drives)
    {
        var g = new ArrayGeometry(sb.Level, sb.MemberCount, sb.ChunkBlocks, sb.MemberBlocks);
        var members = sb.Slots.Select((e, i) => new MemberInfo(i, drives.FirstOrDefault(d => d.Superblock?.DriveUuid == e.Drive)?.Name,
            e.State switch { SlotState.Active => "active", SlotState.Rebuilding => "rebuilding", SlotState.Failed => "failed", _ => "missing" })).ToList();
        long used = sb.Volumes.Sum(v => v.SizeBlocks);
        return new ArrayInfo(sb.Name, sb.ArrayUuid.ToString(), (int)sb.Level, sb.ChunkBlocks * 4, g.CapacityBlocks * Units.BlockBytes,
            (g.CapacityBlocks - used) * Units.BlockBytes, "peer", sb.Generation, members,
            drives.Where(d => d.Superblock is { Slot: -1 } s && s.ArrayUuid == sb.ArrayUuid).Select(d => d.Name).ToList(), null, null, sb.Owner)
        { PreferredOwner = sb.PreferredOwner ?? "none" };
    }

    static DriveInfo DriveInfoOf(DriveView d)
    {
        long size = d.BlockCount * Units.BlockBytes;
        if (d.PeerArray is { } peerArray) return new DriveInfo(d.Name, size, "peer", peerArray, d.Superblock?.Slot is >= 0 ? d.Superblock.Slot : null, "ok");
        if (d.Array is { } raid)
        {
            if (d.IsSpare) return new DriveInfo(d.Name, size, "spare", raid.Name, null, "ok");
            var st = raid.Status(d.Slot) switch { MemberStatus.Active => "ok", MemberStatus.Rebuilding => "rebuilding", _ => "failed" };
            return new DriveInfo(d.Name, size, "member", raid.Name, d.Slot, st);
        }
        if (d.Problem is not null) return new DriveInfo(d.Name, size, "foreign", d.Superblock?.Name, null, d.Problem);
        return new DriveInfo(d.Name, size, "free", null, null, "ok");
    }

    [LoggerMessage(EventId = 2017, Level = LogLevel.Information, Message = "array {Array} handed over to controller {To}")]
    partial void LogHandedOver(string array, string to);
    [LoggerMessage(EventId = 2042, Level = LogLevel.Warning, Message = "array {Array}: superblocks name controller {Owner} again (generation {Generation}), after a hand-over cut part-way")]
    partial void LogOwnerReasserted(string array, string owner, long generation);
    [LoggerMessage(EventId = 2041, Level = LogLevel.Information, Message = "array {Array}: preferred owner now {Owner}")]
    partial void LogPreferred(string array, string owner);

    [LoggerMessage(EventId = 2001, Level = LogLevel.Warning, Message = "drive {Drive}: {Problem}")]
    partial void LogDriveUnreadable(string drive, string problem);
    [LoggerMessage(EventId = 2002, Level = LogLevel.Error, Message = "two arrays are named {Name}; the one with UUID {Uuid} is refused")]
    partial void LogForeign(string name, string uuid);
    [LoggerMessage(EventId = 2003, Level = LogLevel.Error, Message = "drive {Drive} {Problem}")]
    partial void LogMismatch(string drive, string problem);
    [LoggerMessage(EventId = 2004, Level = LogLevel.Warning, Message = "array {Array}: member {Slot} is missing; running degraded")]
    partial void LogMemberMissing(string array, int slot);
    [LoggerMessage(EventId = 2005, Level = LogLevel.Information, Message = "drive {Drive}: superblock older than array {Array}'s (an interrupted update); taken as current")]
    partial void LogOlderSuperblock(string drive, string array);
    [LoggerMessage(EventId = 2006, Level = LogLevel.Warning, Message = "array {Array} was not shut down cleanly")]
    partial void LogUnclean(string array);
    [LoggerMessage(EventId = 2007, Level = LogLevel.Error, Message = "array {Array} has failed: too many members are lost")]
    partial void LogArrayFailed(string array);
    [LoggerMessage(EventId = 2008, Level = LogLevel.Warning, Message = "array {Array}: member {Slot} ({Drive}) is stale; resyncing")]
    partial void LogResync(string array, int slot, string drive);
    [LoggerMessage(EventId = 2009, Level = LogLevel.Error, Message = "drive {Drive}: superblock write failed: {Error}")]
    partial void LogSuperblockWriteFailed(string drive, string error);
    [LoggerMessage(EventId = 2010, Level = LogLevel.Error, Message = "array {Array}: {Error}")]
    partial void LogBackgroundError(string array, string error);
    [LoggerMessage(EventId = 2011, Level = LogLevel.Information, Message = "array {Array} created: RAID {Level} on {Drives} drives, {Capacity}")]
    partial void LogArrayCreated(string array, int level, int drives, string capacity);
    [LoggerMessage(EventId = 2012, Level = LogLevel.Information, Message = "array {Array} deleted")]
    partial void LogArrayDeleted(string array);
    [LoggerMessage(EventId = 2013, Level = LogLevel.Information, Message = "volume {Volume} created on {Array}: {Size}, LUN {Lun}")]
    partial void LogVolumeCreated(string volume, string array, string size, int lun);
    [LoggerMessage(EventId = 2018, Level = LogLevel.Warning, Message = "volume {Volume} (array {Array}): {Warning}")]
    partial void LogLunWarning(string volume, string array, string warning);
    [LoggerMessage(EventId = 2019, Level = LogLevel.Information, Message = "array {Array}: LUNs stored in the superblock: {Luns}")]
    partial void LogLunsStored(string array, string luns);
    [LoggerMessage(EventId = 2014, Level = LogLevel.Information, Message = "volume {Volume} deleted")]
    partial void LogVolumeDeleted(string volume);
    [LoggerMessage(EventId = 2015, Level = LogLevel.Information, Message = "array {Array}: scrub started (repair: {Repair})")]
    partial void LogScrubStarted(string array, bool repair);
    [LoggerMessage(EventId = 2016, Level = LogLevel.Information, Message = "array {Array}: scrub done: {Stripes} stripes, {Checksum} checksum errors, {Parity} parity mismatches, {Repaired} repaired, {Unrepairable} unrepairable ({Listed} put on the bad-block list)")]
    partial void LogScrubDone(string array, long stripes, long checksum, long parity, long repaired, long unrepairable, long listed);
    [LoggerMessage(EventId = 2040, Level = LogLevel.Warning, Message = "array {Array}: taken over from controller {From}")]
    partial void LogTakenOver(string array, string from);
}
