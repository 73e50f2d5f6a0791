using Duet.Raid.Management;
using DriveInfo = Duet.Raid.Management.DriveInfo;

namespace Duet.Cli.Tests;

/// <summary>
/// An honest in-memory <see cref="IArrayService"/>: arrays, volumes and drives in dictionaries,
/// with the contract's refusals (unknown name -> NotFound, name taken or drive in use ->
/// Conflict, impossible request -> Invalid) and nothing changed by a refused call. No data
/// moves: rebuilds and scrubs start and stay where a test puts them (SetRebuild, SetScrub).
/// </summary>
sealed class InMemoryArrayService : IArrayService
{
    sealed class Drive(string name, long sizeBytes)
    {
        public string Name { get; } = name;
        public long SizeBytes { get; } = sizeBytes;
        public string Role { get; set; } = "free";
        public string? Array { get; set; }
        public string State { get; set; } = "ok";
    }

    sealed class Array(string name, string uuid, int level, int chunkKiB, long capacityBytes, long memberBytes)
    {
        public string Name { get; } = name;
        public string Uuid { get; } = uuid;
        public int Level { get; } = level;
        public int ChunkKiB { get; } = chunkKiB;
        public long CapacityBytes { get; } = capacityBytes;
        public long MemberBytes { get; } = memberBytes;
        public List<string?> Slots { get; } = [];
        public List<string> SlotStates { get; } = [];
        public List<string> Spares { get; } = [];
        public long Generation { get; set; } = 1;
        public ProgressInfo? Rebuild { get; set; }
        public ScrubReport? Scrub { get; set; }
        public List<BadBlockInfo> BadBlocks { get; } = [];
    }

    readonly Lock gate = new();
    readonly SortedDictionary<string, Drive> drives = new(StringComparer.Ordinal);
    readonly SortedDictionary<string, Array> arrays = new(StringComparer.Ordinal);
    readonly SortedDictionary<string, VolumeInfo> volumes = new(StringComparer.Ordinal);
    int uuidCounter;

    public CreateArrayRequest? LastCreateArray { get; private set; }
    public ScrubRequest? LastScrub { get; private set; }

    public InMemoryArrayService WithDrives(int count, long sizeBytes)
    {
        for (int i = 0; i < count; i++) AddDriveAsync(new AddDriveRequest($"d{i}", sizeBytes)).GetAwaiter().GetResult();
        return this;
    }

    public void SetRebuild(string array, ProgressInfo progress)
    {
        lock (gate) arrays[array].Rebuild = progress;
    }

    public void SetScrub(string array, ScrubReport report)
    {
        lock (gate) arrays[array].Scrub = report;
    }

    public void SetBadBlocks(string array, params BadBlockInfo[] blocks)
    {
        lock (gate)
        {
            arrays[array].BadBlocks.Clear();
            arrays[array].BadBlocks.AddRange(blocks);
        }
    }

    public Task<BadBlockReport> BadBlocksAsync(string array, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            var a = FindArray(array);
            return Task.FromResult(new BadBlockReport(a.Name, 504, a.BadBlocks.Count, [.. a.BadBlocks]));
        }
    }

    public StatusInfo Status()
    {
        lock (gate)
        {
            var arrayInfos = arrays.Values.Select(Info).ToList();
            var volumeInfos = volumes.Values.ToList();
            var driveInfos = drives.Values.Select(d => new DriveInfo(d.Name, d.SizeBytes, d.Role, d.Array, SlotOf(d), d.State)).ToList();
            return new StatusInfo(arrayInfos, volumeInfos, driveInfos);
        }
    }

    public Task<ArrayInfo> CreateArrayAsync(CreateArrayRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            RequireName(request.Name, "array");
            if (arrays.ContainsKey(request.Name)) throw Conflict($"an array named {request.Name} already exists");
            int min = request.Level switch
            {
                0 => 2,
                1 => 2,
                5 => 3,
                6 => 4,
                10 => 4,
                _ => throw Invalid($"RAID level {request.Level} is not supported; use 0, 1, 5, 6 or 10"),
            };
            if (request.Drives.Count < min) throw Invalid($"RAID {request.Level} needs at least {min} drives; got {request.Drives.Count}");
            if (request.Level == 10 && request.Drives.Count % 2 != 0) throw Invalid("RAID 10 needs an even number of drives");
            if (request.ChunkKiB < 4 || request.ChunkKiB > 1024 || (request.ChunkKiB & (request.ChunkKiB - 1)) != 0)
                throw Invalid($"chunk {request.ChunkKiB} KiB is not a power of two from 4 to 1024 KiB");
            if (request.RebuildMiBps < 0) throw Invalid("the rebuild rate must not be negative");
            if (request.Drives.Distinct(StringComparer.Ordinal).Count() != request.Drives.Count) throw Invalid("a drive is listed twice");
            foreach (var name in request.Drives)
            {
                var d = FindDrive(name);
                if (d.Role != "free") throw Conflict($"drive {name} is in use ({d.Role} of {d.Array})");
            }
            long member = request.Drives.Min(n => drives[n].SizeBytes);
            int n = request.Drives.Count;
            long capacity = request.Level switch
            {
                0 => member * n,
                1 => member,
                5 => member * (n - 1),
                6 => member * (n - 2),
                _ => member * (n / 2),
            };
            var array = new Array(request.Name, $"00000000-0000-0000-0000-{++uuidCounter:D12}", request.Level, request.ChunkKiB, capacity, member);
            for (int slot = 0; slot < n; slot++)
            {
                var d = drives[request.Drives[slot]];
                d.Role = "member";
                d.Array = array.Name;
                array.Slots.Add(d.Name);
                array.SlotStates.Add("active");
            }
            arrays.Add(array.Name, array);
            LastCreateArray = request;
            return Task.FromResult(Info(array));
        }
    }

    public Task DeleteArrayAsync(string name, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            var array = FindArray(name);
            var inUse = volumes.Values.Where(v => v.Array == name).Select(v => v.Name).ToList();
            if (inUse.Count > 0) throw Conflict($"array {name} still has volumes ({string.Join(", ", inUse)}); delete them first");
            foreach (var d in drives.Values.Where(d => d.Array == name))
            {
                d.Role = "free";
                d.Array = null;
            }
            arrays.Remove(array.Name);
            return Task.CompletedTask;
        }
    }

    public Task<VolumeInfo> CreateVolumeAsync(CreateVolumeRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            RequireName(request.Name, "volume");
            if (request.Lun is { } asked && asked is < 0 or > 254) throw Invalid($"LUN {asked} is out of range: a volume's LUN is 0 to 254");
            if (volumes.ContainsKey(request.Name)) throw Conflict($"a volume named {request.Name} already exists");
            var array = FindArray(request.Array);
            if (request.SizeBytes < 0 || request.SizeBytes % 4096 != 0) throw Invalid($"volume size {request.SizeBytes} is not a multiple of 4 KiB");
            var gaps = Gaps(array).ToList();
            (long Offset, long Length) chosen;
            if (request.SizeBytes == 0)
            {
                chosen = gaps.OrderByDescending(g => g.Length).FirstOrDefault();
                if (chosen.Length == 0) throw Conflict($"array {array.Name} has no free space");
            }
            else
            {
                chosen = gaps.FirstOrDefault(g => g.Length >= request.SizeBytes);
                if (chosen.Length == 0) throw Invalid($"array {array.Name} has no free extent of {request.SizeBytes} bytes");
                chosen.Length = request.SizeBytes;
            }
            var used = volumes.Values.Select(v => v.Lun).OfType<int>().ToHashSet();
            int lun = request.Lun ?? Enumerable.Range(0, 255).First(n => !used.Contains(n));
            if (used.Contains(lun)) throw Conflict($"LUN {lun} is already used by volume '{volumes.Values.First(v => v.Lun == lun).Name}'");
            var volume = new VolumeInfo(request.Name, array.Name, chosen.Length, chosen.Offset) { Lun = lun };
            volumes.Add(volume.Name, volume);
            return Task.FromResult(volume);
        }
    }

    public Task DeleteVolumeAsync(string name, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            if (!volumes.Remove(name)) throw NotFound($"no volume named {name}");
            return Task.CompletedTask;
        }
    }

    public Task<DriveInfo> AddDriveAsync(AddDriveRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            RequireName(request.Name, "drive");
            if (drives.ContainsKey(request.Name)) throw Conflict($"a drive named {request.Name} already exists");
            if (request.SizeBytes <= 0 || request.SizeBytes % 4096 != 0) throw Invalid($"drive size {request.SizeBytes} is not a positive multiple of 4 KiB");
            var d = new Drive(request.Name, request.SizeBytes);
            drives.Add(d.Name, d);
            return Task.FromResult(new DriveInfo(d.Name, d.SizeBytes, d.Role, null, null, d.State));
        }
    }

    public Task AddSpareAsync(AddSpareRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            var d = FindDrive(request.Drive);
            var array = FindArray(request.Array);
            if (d.Role != "free") throw Conflict($"drive {d.Name} is in use ({d.Role} of {d.Array})");
            if (d.SizeBytes < array.MemberBytes) throw Invalid($"drive {d.Name} is smaller than the members of {array.Name}");
            d.Role = "spare";
            d.Array = array.Name;
            array.Spares.Add(d.Name);
            array.Generation++;
            StartRebuildIfDegraded(array);
            return Task.CompletedTask;
        }
    }

    public Task FailDriveAsync(string drive, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            var d = FindDrive(drive);
            if (d.Role != "member") throw Invalid($"drive {drive} is not an array member (it is {d.Role})");
            if (d.State == "failed") throw Conflict($"drive {drive} has already failed");
            var array = arrays[d.Array!];
            int slot = array.Slots.IndexOf(d.Name);
            d.State = "failed";
            array.SlotStates[slot] = "failed";
            array.Generation++;
            StartRebuildIfDegraded(array);
            return Task.CompletedTask;
        }
    }

    public Task ReplaceDriveAsync(string drive, ReplaceDriveRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            var old = FindDrive(drive);
            var replacement = FindDrive(request.With);
            if (old.Role != "member") throw Invalid($"drive {drive} is not an array member (it is {old.Role})");
            if (replacement.Role != "free") throw Conflict($"drive {replacement.Name} is in use ({replacement.Role} of {replacement.Array})");
            var array = arrays[old.Array!];
            if (replacement.SizeBytes < array.MemberBytes) throw Invalid($"drive {replacement.Name} is smaller than the members of {array.Name}");
            int slot = array.Slots.IndexOf(old.Name);
            old.Role = "free";
            old.Array = null;
            Rebuild(array, slot, replacement);
            return Task.CompletedTask;
        }
    }

    public Task StartScrubAsync(string array, ScrubRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            var a = FindArray(array);
            if (a.Scrub is { Running: true }) throw Conflict($"array {array} is already being scrubbed");
            a.Scrub = new ScrubReport(true, new ProgressInfo(0, 0, a.CapacityBytes, 0, null), 0, 0, 0, 0, 0, []);
            LastScrub = request;
            return Task.CompletedTask;
        }
    }

    public Task<ArrayInfo> MoveArrayAsync(string array, MoveArrayRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            FindArray(array);
            throw new ManagementException(ManagementErrorKind.Invalid, "moving an array needs the controller pair");
        }
    }

    public Task<ArrayInfo> PreferArrayAsync(string array, PreferArrayRequest request, CancellationToken cancellationToken = default)
    {
        lock (gate)
        {
            FindArray(array);
            throw new ManagementException(ManagementErrorKind.Invalid, "a preferred owner needs the controller pair");
        }
    }

    void StartRebuildIfDegraded(Array array)
    {
        int slot = array.SlotStates.IndexOf("failed");
        if (slot < 0 || array.Spares.Count == 0) return;
        var spare = drives[array.Spares[0]];
        array.Spares.RemoveAt(0);
        var failed = drives[array.Slots[slot]!];
        failed.Role = "free";
        failed.Array = null;
        Rebuild(array, slot, spare);
    }

    void Rebuild(Array array, int slot, Drive target)
    {
        target.Role = "member";
        target.Array = array.Name;
        array.Slots[slot] = target.Name;
        array.SlotStates[slot] = "rebuilding";
        array.Rebuild = new ProgressInfo(0, 0, array.MemberBytes, 0, target.Name);
        array.Generation++;
    }

    ArrayInfo Info(Array a)
    {
        var members = a.Slots.Select((d, slot) => new MemberInfo(slot, d, a.SlotStates[slot])).ToList();
        int failed = a.SlotStates.Count(s => s == "failed");
        int tolerance = a.Level switch { 0 => 0, 1 => a.Slots.Count - 1, 5 => 1, 6 => 2, _ => 1 };
        var state = failed > tolerance ? "failed"
            : failed > 0 ? "degraded"
            : a.SlotStates.Contains("rebuilding") ? "rebuilding"
            : "optimal";
        long used = volumes.Values.Where(v => v.Array == a.Name).Sum(v => v.SizeBytes);
        return new ArrayInfo(a.Name, a.Uuid, a.Level, a.ChunkKiB, a.CapacityBytes, a.CapacityBytes - used, state, a.Generation,
            members, a.Spares.ToList(), a.Rebuild, a.Scrub) { BadBlocks = a.BadBlocks.Count, PreferredOwner = "A" };
    }

    IEnumerable<(long Offset, long Length)> Gaps(Array array)
    {
        long cursor = 0;
        foreach (var v in volumes.Values.Where(v => v.Array == array.Name).OrderBy(v => v.OffsetBytes))
        {
            if (v.OffsetBytes > cursor) yield return (cursor, v.OffsetBytes - cursor);
            cursor = v.OffsetBytes + v.SizeBytes;
        }
        if (array.CapacityBytes > cursor) yield return (cursor, array.CapacityBytes - cursor);
    }

    int? SlotOf(Drive d)
    {
        if (d.Role != "member") return null;
        int slot = arrays[d.Array!].Slots.IndexOf(d.Name);
        return slot < 0 ? null : slot;
    }

    Drive FindDrive(string name) => drives.TryGetValue(name, out var d) ? d : throw NotFound($"no drive named {name}");

    Array FindArray(string name) => arrays.TryGetValue(name, out var a) ? a : throw NotFound($"no array named {name}");

    static void RequireName(string name, string what)
    {
        if (string.IsNullOrWhiteSpace(name)) throw Invalid($"a {what} needs a name");
    }

    static ManagementException Invalid(string message) => new(ManagementErrorKind.Invalid, message);
    static ManagementException NotFound(string message) => new(ManagementErrorKind.NotFound, message);
    static ManagementException Conflict(string message) => new(ManagementErrorKind.Conflict, message);
}
