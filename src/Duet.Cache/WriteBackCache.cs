using System.Buffers;
using System.Diagnostics.Metrics;
using System.Numerics;
using Duet.Cache.Nvram;
using Duet.Core;
using Microsoft.Extensions.Logging;

namespace Duet.Cache;

public sealed record CacheOptions
{
    /// <summary>Start destaging when this fraction of the elements is dirty (the high watermark). Below it a
    /// burst of writes is absorbed by NVRAM and the mirror alone, with no destage competing for the CPU.</summary>
    public double DestageStartFraction { get; init; } = 0.625;
    /// <summary>Once started by the high watermark, destage goes on until the dirty fraction is below this
    /// (the low watermark), so it runs in long passes rather than a round at every write.</summary>
    public double DestageStopFraction { get; init; } = 0.5;
    /// <summary>Most elements one destage round writes.</summary>
    public int DestageRoundElements { get; init; } = 512;
    /// <summary>Most elements one destage round writes while the mirror is down (MR-4's error-recovery mode): every
    /// host write is then a write-through, which waits for the round in progress at the array write gate. After a
    /// takeover the survivor drains thousands of adopted elements this way; 512-element rounds of RAID 6
    /// read-modify-writes held the first host writes for most of a second each.</summary>
    public int ErrorRecoveryRoundElements { get; init; } = 32;
    /// <summary>Longest run (sectors) one destage write may cover.</summary>
    public int DestageMaxRunSectors { get; init; } = 4096; // 2 MiB
    /// <summary>After this long without writes, destage whatever is dirty (the periodic flush of CC-5).</summary>
    public TimeSpan IdleDestageDelay { get; init; } = TimeSpan.FromMilliseconds(200);
    public TimeProvider Time { get; init; } = TimeProvider.System;
    /// <summary>Test only, a planted bug for the simulator's checkers: forgetting an array (after a
    /// move or delete) drops its elements here but does not tell the peer to drop its copies.</summary>
    internal bool PlantedForgetKeepsPeerCopies { get; init; }
    /// <summary>Test only, a planted bug for the simulator's power checker: a destage round marks its
    /// elements clean without flushing the drives first.</summary>
    internal bool PlantedCleanBeforeFlush { get; init; }
}

/// <summary>
/// The write-back cache of one controller, in region 1 of its NVRAM (CC-1, MR-1).
///
/// An element is a 16 KiB, 16 KiB-aligned piece of one array's address space, with a valid
/// bit per 512 bytes. Elements are written once: a write to an address already cached goes to
/// a fresh element that merges the old valid sectors with the new ones, and the old element is
/// invalidated in the same ordered stream of mirror changes. So, for every element index e, the
/// peer's region 2 holds either nothing or exactly this controller's element e; no array LBA is
/// valid in two elements once the stream is applied; and replay in sequence order is correct.
///
///   write:  allocate e ─ merge old+new into NVRAM[e] ─ descriptor (seq) ─ index[key]=e
///           ─ mirror: store(e), then invalidate(old) ─ peer status ─ ack ─ free(old)
///   read:   cached sectors from NVRAM, the rest from the array
///   destage (background): dirty elements in LBA order, coalesced into runs, written to the
///           array, array flushed, elements marked clean (nothing is sent to the peer: CC-5)
///   evict:  a clean element reused for new data; an invalidation goes to the peer (CC-4)
///
/// With the peer gone (error-recovery mode) a write goes through to the array, under its key
/// lock so that no older write can land after it, before it is acknowledged.
/// A full cache makes writers wait for destage (back-pressure), never fail.
/// </summary>
public sealed partial class WriteBackCache : IAsyncDisposable
{
    public const int SectorsPerElement = 32;
    public const int ElementBytes = SectorsPerElement * Units.SectorBytes;
    const int KeyLockCount = 256;

    enum SlotState : byte { Free, Dirty, Clean, Retired }

    struct Slot
    {
        public SlotState State;
        public byte Array;
        public long Lba;       // element-aligned, sectors
        public uint Valid;
        public ulong Sequence;
        public int Pins;
        public bool FreeWhenUnpinned;
        public int LruPrev, LruNext; // clean list, -1 terminated
        public bool Destaging;
        /// <summary>Dirty data replayed from NVRAM after a restart (or merged from such), not yet on the
        /// drives: the crash may have torn the blocks it covers, so its destage is a recovery write.</summary>
        public bool Replayed;
    }

    readonly NvramRegion _nvram;
    readonly ICacheMirror _mirror;
    readonly CacheOptions _options;
    readonly ILogger _logger;
    readonly Dictionary<byte, ICacheBacking> _arrays = [];
    readonly Lock _lock = new();
    readonly Dictionary<(byte, long), int> _index = [];
    readonly Slot[] _slots;
    readonly Stack<int> _free = new();
    int _lruHead = -1, _lruTail = -1; // head = most recently cleaned
    int _dirty;
    ulong _sequence;
    readonly AsyncGate[] _keyLocks = new AsyncGate[KeyLockCount];
    // Destage rounds and write-throughs reach the array one at a time, so an older element's
    // destage can never land after a newer write-through of the same address. In write-back mode
    // writers never take it: a new write goes to a new element, not to the array.
    readonly AsyncGate _arrayWriteGate = new(1, 1);
    readonly List<TaskCompletionSource> _spaceWaiters = [];
    TaskCompletionSource _destageKick = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly CancellationTokenSource _stop = new();
    readonly List<TaskCompletionSource> _drainWaiters = [];
    Task? _destager;
    long _lastWriteTicks;

    // counters
    long _hits, _misses, _destagedElements, _destagedRuns, _evictions, _writeThroughs, _mirrored, _gapFills;

    public WriteBackCache(NvramRegion region, ICacheMirror mirror, CacheOptions options, ILogger logger)
    {
        Invariant.Assert(region.ElementBytes == ElementBytes);
        _nvram = region;
        _mirror = mirror;
        _options = options;
        _logger = logger;
        _slots = new Slot[region.ElementCount];
        for (int i = region.ElementCount - 1; i >= 0; i--)
        {
            _slots[i] = new Slot { LruPrev = -1, LruNext = -1 };
            _free.Push(i);
        }
        for (int i = 0; i < _keyLocks.Length; i++) _keyLocks[i] = new AsyncGate(1, 1);
    }

    public int ElementCount => _slots.Length;

    /// <summary>The element that caches the element-aligned <paramref name="elementLba"/> of an array, or -1 (checkers).</summary>
    public int ElementOf(byte array, long elementLba)
    {
        lock (_lock) return _index.TryGetValue((array, elementLba), out var e) ? e : -1;
    }
    public int DirtyCount { get { lock (_lock) return _dirty; } }
    public int CachedCount { get { lock (_lock) return _index.Count; } }
    public CacheCounters Counters => new(Interlocked.Read(ref _hits), Interlocked.Read(ref _misses), Interlocked.Read(ref _destagedElements),
        Interlocked.Read(ref _destagedRuns), Interlocked.Read(ref _evictions), Interlocked.Read(ref _writeThroughs), Interlocked.Read(ref _mirrored), DirtyCount);

    /// <summary>A one-line picture of the cache for a report of a run that did not finish (diagnostics).</summary>
    public string DescribeState()
    {
        lock (_lock)
        {
            int clean = 0, retired = 0, pinned = 0, destaging = 0;
            foreach (ref readonly var s in _slots.AsSpan())
            {
                if (s.State == SlotState.Clean) clean++;
                else if (s.State == SlotState.Retired) retired++;
                if (s.Pins > 0) pinned++;
                if (s.Destaging) destaging++;
            }
            int keyWaits = 0;
            foreach (var g in _keyLocks) if (g.CurrentCount == 0) keyWaits++;
            return $"cache {_slots.Length} elements: free {_free.Count}, dirty {_dirty}, clean {clean}, retired {retired}, pinned {pinned}, destaging {destaging}; " +
                   $"space waiters {_spaceWaiters.Count}, drain waiters {_drainWaiters.Count}, key locks held {keyWaits}, array write gate {(_arrayWriteGate.CurrentCount == 0 ? "held" : "free")}, " +
                   $"destager {(_destager is null ? "not started" : _destager.Status.ToString())}";
        }
    }

    public void AddArray(ICacheBacking backing)
    {
        lock (_lock) _arrays[backing.ArrayNumber] = backing;
    }

    /// <summary>Rebuilds the index from region 1 after a restart: valid elements in sequence order,
    /// a later element for the same address replacing an earlier one.</summary>
    public int Replay() => Replay(keep: null, out _);

    /// <summary>
    /// <see cref="Replay()"/>, dropping (and invalidating in NVRAM) every element <paramref name="keep"/> refuses:
    /// images of an array this controller no longer serves (a move or delete that power cut short after
    /// the array left, before the cache forgot it) must never be read or destaged again.
    /// </summary>
    public int Replay(Func<ElementDescriptor, bool>? keep, out int dropped)
    {
        var order = _nvram.ReplayOrder();
        dropped = 0;
        lock (_lock)
        {
            Invariant.Assert(_index.Count == 0);
            _free.Clear();
            var used = new bool[_slots.Length];
            foreach (var (e, d) in order)
            {
                if (keep is not null && !keep(d))
                {
                    _nvram.Invalidate(e);
                    dropped++;
                    continue;
                }
                var key = (d.ArrayNumber, d.ArrayLba);
                if (_index.TryGetValue(key, out var older))
                {
                    if (_slots[older].State == SlotState.Dirty) _dirty--;
                    else LruRemove(older);
                    _slots[older].State = SlotState.Free;
                    used[older] = false;
                    _nvram.Invalidate(older);
                }
                _index[key] = e;
                used[e] = true;
                _slots[e] = new Slot { State = d.Dirty ? SlotState.Dirty : SlotState.Clean, Array = d.ArrayNumber, Lba = d.ArrayLba, Valid = d.ValidMask, Sequence = d.Sequence, LruPrev = -1, LruNext = -1, Replayed = d.Dirty };
                if (d.Dirty) _dirty++;
                else LruPushHead(e);
                _sequence = Math.Max(_sequence, d.Sequence);
            }
            for (int i = _slots.Length - 1; i >= 0; i--)
                if (!used[i]) { _slots[i] = new Slot { LruPrev = -1, LruNext = -1 }; _free.Push(i); }
            return _index.Count;
        }
    }

    /// <summary>
    /// Takeover (FO-2, AW-3): takes the failed peer's mirrored elements (its NVRAM region 2 here),
    /// given in sequence order, into this cache. Each dirty one becomes a dirty element of this
    /// cache with a new sequence number, marked replayed, so its destage is a recovery write that
    /// also settles the rows a torn destage of the peer left behind. Clean copies (CC-5) are skipped:
    /// they equal what the drives hold. The arrays must be served here already
    /// (<see cref="AddArray"/>), and the mirror must be down: the peer is gone, nothing is mirrored.
    /// </summary>
    public async Task<int> AdoptAsync(IReadOnlyList<(ElementDescriptor Descriptor, ReadOnlyMemory<byte> Data)> elements, CancellationToken ct = default)
    {
        Invariant.Assert(_mirror.Mode != MirrorMode.Healthy, "elements adopted while the mirror is healthy would never reach the peer");
        int adopted = 0;
        foreach (var (d, data) in elements)
        {
            if (!d.Dirty || d.ValidMask == 0) continue;
            var backing = Backing(d.ArrayNumber);
            Invariant.Assert(data.Length == ElementBytes && d.ArrayLba % SectorsPerElement == 0);
            int e = (await AllocateAsync(1, ct))[0];
            int gate = KeyLockIndex(d.ArrayNumber, d.ArrayLba);
            await _keyLocks[gate].WaitAsync(CancellationToken.None);
            int old = -1;
            try
            {
                data.CopyTo(_nvram.Memory(e));
                ElementDescriptor mine;
                lock (_lock)
                {
                    if (_index.TryGetValue((d.ArrayNumber, d.ArrayLba), out old)) Retire(old);
                    else old = -1;
                    mine = new ElementDescriptor(backing.ArraySerial, d.ArrayNumber, d.ArrayLba, SectorsPerElement, d.ValidMask, ++_sequence, Dirty: true);
                    _slots[e] = new Slot { State = SlotState.Dirty, Array = d.ArrayNumber, Lba = d.ArrayLba, Valid = d.ValidMask, Sequence = mine.Sequence, LruPrev = -1, LruNext = -1, Replayed = true };
                    _dirty++;
                    _index[(d.ArrayNumber, d.ArrayLba)] = e;
                }
                _nvram.WriteDescriptorOnly(e, mine);
                adopted++;
            }
            finally
            {
                _keyLocks[gate].Release();
                if (old >= 0) ReleaseOlds([old]);
            }
        }
        MaybeKickDestage();
        return adopted;
    }

    /// <summary>
    /// Resynchronises the peer's region 2 (after pairing or when the peer comes back): with no write
    /// in between, <paramref name="resume"/> makes the mirror usable again and every valid element is
    /// appended in sequence order; returns when the peer holds them all. From then on writes are
    /// mirrored again (write-back resumes).
    /// </summary>
    public async Task ResyncMirrorAsync(Action resume)
    {
        Task sent;
        int count;
        lock (_lock)
        {
            resume();
            var changes = _index.Values.OrderBy(e => _slots[e].Sequence).Select(e => new MirrorChange(e, Descriptor(e), _nvram.Memory(e), false)).ToList();
            count = changes.Count;
            sent = changes.Count == 0 ? Task.CompletedTask : _mirror.AppendGroup(changes);
        }
        await sent;
        LogResynced(count);
    }

    /// <summary>
    /// Whether dirty data a pending recovery write will put on the drives covers any of the array sectors
    /// [<paramref name="sector"/>, +<paramref name="count"/>): an element replayed after a restart, adopted
    /// at a takeover, or left by a destage that failed part-way. The array leaves a torn block under such
    /// data to that write (AW-5), which may keep what the crash left of it.
    /// </summary>
    public bool HoldsRecoveryData(byte array, long sector, int count)
    {
        Invariant.Assert(count > 0 && count <= SectorsPerElement);
        long first = sector / SectorsPerElement, last = (sector + count - 1) / SectorsPerElement;
        lock (_lock)
        {
            for (long el = first; el <= last; el++)
            {
                long lba = el * SectorsPerElement;
                if (!_index.TryGetValue((array, lba), out var e)) continue;
                ref var s = ref _slots[e];
                if (s.State != SlotState.Dirty || !s.Replayed) continue;
                long from = Math.Max(sector, lba), to = Math.Min(sector + count, lba + SectorsPerElement);
                if ((s.Valid & MaskOf((int)(from - lba), (int)(to - from))) != 0) return true;
            }
        }
        return false;
    }

    /// <summary>Whether any sector of the element at <paramref name="elementLba"/> is cached.</summary>
    public bool IsCached(byte array, long elementLba)
    {
        lock (_lock) return _index.ContainsKey((array, elementLba));
    }

    static MirrorChange InvalidationOf(int element, ulong sequence) =>
        new(element, new ElementDescriptor(0, 0, 0, 0, 0, sequence, false), default, Invalidate: true);

    ElementDescriptor Descriptor(int e)
    {
        ref var s = ref _slots[e];
        var backing = _arrays.GetValueOrDefault(s.Array);
        return new ElementDescriptor(backing?.ArraySerial ?? 0, s.Array, s.Lba, SectorsPerElement, s.Valid, s.Sequence, s.State == SlotState.Dirty);
    }

    public void Start()
    {
        _lastWriteTicks = _options.Time.GetTimestamp();
        _destager ??= DestageLoopAsync(_stop.Token);
    }

    // ---- write ---------------------------------------------------------------------------

    static uint MaskOf(int first, int count) => count == 32 ? uint.MaxValue : ((1u << count) - 1) << first;

    AsyncGate KeyLock(byte array, long lba) => _keyLocks[KeyLockIndex(array, lba)];

    ICacheBacking Backing(byte array) =>
        _arrays.TryGetValue(array, out var b) ? b : throw new BlockIoException(BlockErrorKind.Unavailable, $"array number {array} is not served by this cache");

    /// <summary>Most elements one host write hands the mirror as a group (64 × 16 KiB = 1 MiB, MR-2's
    /// largest metadata message); longer writes become several groups.</summary>
    public const int MaxGroupElements = 64;

    public ValueTask WriteAsync(byte array, long sector, ReadOnlyMemory<byte> data, bool fua, CancellationToken ct = default) =>
        WriteAsync(array, sector, data, fua, reference: null, ct);

    /// <summary>A host write; <paramref name="reference"/>, when set, names <paramref name="data"/>'s
    /// first byte in a host command the peer holds too (multicast), so that element images made of
    /// the host's bytes alone are mirrored by name.</summary>
    public ValueTask WriteAsync(byte array, long sector, ReadOnlyMemory<byte> data, bool fua, HostDataReference? reference, CancellationToken ct = default)
    {
        ICacheBacking backing;
        long count, groupSectors;
        try
        {
            backing = Backing(array);
            Invariant.Assert(data.Length % Units.SectorBytes == 0 && data.Length > 0);
            count = data.Length / Units.SectorBytes;
            Invariant.Assert(sector >= 0 && sector + count <= backing.CapacitySectors);
            _lastWriteTicks = _options.Time.GetTimestamp();
            groupSectors = (long)Math.Max(1, Math.Min(MaxGroupElements, _slots.Length / 4)) * SectorsPerElement;
        }
        catch (Exception e) { return ValueTask.FromException(e); }
        // Groups start on element boundaries so no two groups share an element. The common write, one group and no
        // FUA, is that group's write itself (no frame of its own: a host write's path is kept short).
        long firstGroupEnd = Math.Min(sector + count, (sector / groupSectors + 1) * groupSectors);
        if (firstGroupEnd == sector + count && !fua) return WriteGroupAsync(backing, sector, data, reference, ct);
        return WriteGroupsAsync(backing, sector, count, groupSectors, data, fua, reference, ct);
    }

    async ValueTask WriteGroupsAsync(ICacheBacking backing, long sector, long count, long groupSectors, ReadOnlyMemory<byte> data, bool fua,
        HostDataReference? reference, CancellationToken ct)
    {
        long firstGroupEnd = Math.Min(sector + count, (sector / groupSectors + 1) * groupSectors);
        if (firstGroupEnd == sector + count)
        {
            await WriteGroupAsync(backing, sector, data, reference, ct);
        }
        else
        {
            var tasks = new List<Task>();
            for (long at = sector; at < sector + count;)
            {
                long end = Math.Min(sector + count, (at / groupSectors + 1) * groupSectors);
                tasks.Add(WriteGroupAsync(backing, at, data.Slice((int)((at - sector) * Units.SectorBytes), (int)((end - at) * Units.SectorBytes)),
                    reference?.At((at - sector) * Units.SectorBytes), ct).AsTask());
                at = end;
            }
            await Task.WhenAll(tasks);
        }
        if (fua && _mirror.Mode != MirrorMode.Healthy) await backing.FlushAsync(ct);
    }

    static bool IsContiguous(uint mask)
    {
        if (mask == 0) return true;
        uint m = mask >> BitOperations.TrailingZeroCount(mask);
        return (m & (m + 1)) == 0;
    }

    static uint Span(uint mask)
    {
        int first = BitOperations.TrailingZeroCount(mask);
        int last = 31 - BitOperations.LeadingZeroCount(mask);
        return MaskOf(first, last - first + 1);
    }

    /// <summary>
    /// One host write of at most <see cref="MaxGroupElements"/> elements: each element gets a fresh
    /// image (old valid sectors + new ones; unless the mirror carries gaps, any gap between them is
    /// filled from the array so every image is one contiguous run of sectors), then the group goes to
    /// the mirror as one unit.
    /// </summary>
    async ValueTask WriteGroupAsync(ICacheBacking backing, long sector, ReadOnlyMemory<byte> data, HostDataReference? reference, CancellationToken ct)
    {
        byte array = backing.ArrayNumber;
        long count = data.Length / Units.SectorBytes;
        long firstEl = sector / SectorsPerElement, lastEl = (sector + count - 1) / SectorsPerElement;
        int n = (int)(lastEl - firstEl + 1);
        var elements = new int[n];
        var olds = new int[n];
        var replayed = new bool[n];
        var descriptors = new ElementDescriptor[n];
        // A multicast write: per element, where the host's bytes of the image lie in the command the peer holds
        // (none: the image travels whole, or with its base).
        var byName = reference is null ? null : new HostDataReference?[n];
        // Per element, the dirty sectors of the element it replaces that the new image keeps (the peer's mirror
        // of that element holds them too: a by-reference image names only the rest, and any other may send
        // only the rest, MirrorApplier.GoesWithBase).
        var keepFrom = new int[n];
        var keepMask = new uint[n];
        for (int i = 0; i < n; i++) elements[i] = -1;
        var got = await AllocateAsync(n, ct);
        got.CopyTo(elements, 0);
        var gates = GatesOf(array, firstEl, n);
        foreach (var g in gates) await _keyLocks[g].WaitAsync(CancellationToken.None);
        Task? mirrored = null;
        bool writeThrough = _mirror.Mode != MirrorMode.Healthy;
        bool gapsTravel = _mirror.CarriesGaps;
        bool committed = false; // the new elements are in the index and the old ones retired
        try
        {
            for (int i = 0; i < n; i++)
            {
                long lba = (firstEl + i) * SectorsPerElement;
                long from = Math.Max(sector, lba), to = Math.Min(sector + count, lba + SectorsPerElement);
                int firstSector = (int)(from - lba);
                uint mask = MaskOf(firstSector, (int)(to - from));
                int e = elements[i];
                int old;
                uint oldMask = 0;
                bool oldDirty = false;
                lock (_lock)
                {
                    if (_index.TryGetValue((array, lba), out old))
                    {
                        // Only dirty sectors must travel into the new image: a clean element's
                        // sectors are on the drives already, so reads find them there.
                        oldDirty = _slots[old].State == SlotState.Dirty;
                        oldMask = oldDirty ? _slots[old].Valid : 0;
                        if (oldDirty) _slots[old].Pins++;
                        // The new image holds every sector of a replayed one (and more): the sectors
                        // it does not cover are outside the replayed one too, so its destage may
                        // still meet what the crash tore, and recovers it the same way.
                        replayed[i] = oldDirty && _slots[old].Replayed;
                    }
                    else old = -1;
                }
                olds[i] = old;
                var dst = _nvram.Memory(e);
                if (oldDirty)
                {
                    try
                    {
                        var src = _nvram.Data(old);
                        foreach (var (s, k) in Runs(oldMask & ~mask)) src.Slice(s * Units.SectorBytes, k * Units.SectorBytes).CopyTo(dst.Span[(s * Units.SectorBytes)..]);
                    }
                    finally { Unpin(old); }
                }
                data.Span.Slice((int)((from - sector) * Units.SectorBytes), (int)((to - from) * Units.SectorBytes)).CopyTo(dst.Span[(firstSector * Units.SectorBytes)..]);
                uint valid = oldMask | mask;
                keepFrom[i] = oldDirty && (oldMask & ~mask) != 0 ? old : -1;
                keepMask[i] = keepFrom[i] >= 0 ? oldMask & ~mask : 0;
                // With a multicast write the peer holds the host's bytes; the old element's dirty
                // sectors it holds in its mirror of that element. Gap-filled sectors (read from the
                // array here, for a mirror that cannot carry gaps) are nowhere there: such an image
                // travels whole. A mirror that carries gaps gets the image with them (no array read on
                // the write path, and by reference: the peer leaves the gaps invalid as we do).
                if (byName is not null && (gapsTravel || IsContiguous(valid)))
                    byName[i] = reference!.Value.At((from - sector) * Units.SectorBytes);
                if (!gapsTravel && !IsContiguous(valid))
                {
                    // Fill the gaps from the array (the sectors are not cached, so the array holds
                    // their current content): every element image is one run of sectors, which is
                    // what the seed's mirror messages can carry.
                    uint gaps = Span(valid) & ~valid;
                    foreach (var (s, k) in Runs(gaps))
                        await backing.ReadAsync(lba + s, dst.Slice(s * Units.SectorBytes, k * Units.SectorBytes), ct);
                    valid = Span(valid);
                    Interlocked.Increment(ref _gapFills);
                }
                descriptors[i] = new ElementDescriptor(backing.ArraySerial, array, lba, SectorsPerElement, valid, 0, Dirty: true);
            }
            lock (_lock)
            {
                // Sequence numbers and mirror order are decided together, under the lock, so the
                // peer applies changes in sequence order: the new images first, then the
                // invalidations of the elements they replace. If the peer stops between the two it
                // holds both, and replay in sequence order still ends with the new images.
                var changes = new List<MirrorChange>(2 * n);
                for (int i = 0; i < n; i++)
                {
                    descriptors[i] = descriptors[i] with { Sequence = ++_sequence };
                    var d = descriptors[i];
                    int e = elements[i];
                    // The element this one replaces is whatever the index names now: a clean old one
                    // (not pinned) may have been evicted, and its slot reused for another address, while
                    // this write waited (a gap fill's read); retiring it then would retire someone else's.
                    olds[i] = _index.TryGetValue((array, d.ArrayLba), out var current) ? current : -1;
                    _slots[e] = new Slot { State = SlotState.Dirty, Array = array, Lba = d.ArrayLba, Valid = d.ValidMask, Sequence = d.Sequence, LruPrev = -1, LruNext = -1, Replayed = replayed[i] };
                    _dirty++;
                    _index[(array, d.ArrayLba)] = e;
                    // The peer's mirror of the replaced element must still be the one whose sectors the
                    // image keeps: it is, while the index still names it (eviction would have queued
                    // its invalidation ahead of this group).
                    // If it is not, the image travels whole (a by-reference one could not name the kept sectors).
                    bool keeps = keepFrom[i] >= 0 && olds[i] == keepFrom[i];
                    var host = keepFrom[i] >= 0 && !keeps ? null : byName?[i];
                    changes.Add(new MirrorChange(e, d, _nvram.Memory(e), false, host,
                        KeepFrom: keeps ? keepFrom[i] : -1, KeepMask: keeps ? keepMask[i] : 0, Replaces: olds[i]));
                }
                for (int i = 0; i < n; i++)
                {
                    if (olds[i] < 0) continue;
                    Retire(olds[i]);
                    changes.Add(InvalidationOf(olds[i], ++_sequence));
                }
                committed = true;
                if (!writeThrough)
                {
                    try { mirrored = _mirror.AppendGroup(changes); }
                    catch (MirrorUnavailableException) { writeThrough = true; }
                }
            }
            for (int i = 0; i < n; i++) _nvram.WriteDescriptorOnly(elements[i], descriptors[i]);
            if (writeThrough) await WriteThroughKeysHeldAsync(elements);
        }
        catch when (!committed)
        {
            // Failed before the new images were published (a gap fill's read): nobody knows the
            // fresh elements; give them back, or with a small NVRAM every writer ends up waiting.
            foreach (var e in elements) ReturnUnused(e);
            throw;
        }
        finally
        {
            for (int g = gates.Length - 1; g >= 0; g--) _keyLocks[gates[g]].Release();
            // Committed: the old elements are retired whatever happens next. A failed write-through
            // leaves the new elements dirty (destage retries them) and must not leak the old ones.
            if (committed && mirrored is null) ReleaseOlds(olds);
        }
        if (mirrored is null)
        {
            MaybeKickDestage();
            return;
        }
        try
        {
            await mirrored;
            Interlocked.Add(ref _mirrored, n);
        }
        catch (MirrorUnavailableException)
        {
            // The peer went away with this write in flight: make it durable on the drives
            // instead. The elements now current for these addresses hold our sectors (or newer).
            foreach (var g in gates) await _keyLocks[g].WaitAsync(CancellationToken.None);
            try
            {
                var current = new List<int>();
                lock (_lock)
                    for (int i = 0; i < n; i++)
                        if (_index.TryGetValue((array, (firstEl + i) * SectorsPerElement), out var c) && _slots[c].State == SlotState.Dirty) current.Add(c);
                await WriteThroughKeysHeldAsync(current);
            }
            finally
            {
                for (int g = gates.Length - 1; g >= 0; g--) _keyLocks[gates[g]].Release();
            }
        }
        finally { ReleaseOlds(olds); }
        MaybeKickDestage();
    }

    /// <summary>Frees the elements a committed write replaced (once no reader holds them).</summary>
    void ReleaseOlds(int[] olds)
    {
        foreach (var old in olds)
        {
            if (old < 0) continue;
            _nvram.Invalidate(old);
            Release(old);
        }
    }

    /// <summary>Writes elements' valid sectors to their arrays, flushes once per array, marks them clean.
    /// Caller holds their key locks, so no older data can land after them. Write-throughs that wait for the array
    /// write gate together go together (group commit): whoever gets the gate writes every waiting one's elements
    /// at once and flushes each array once. In error-recovery mode every host write comes here; one at a time, each
    /// with its own flush, behind destage rounds, they queued for tens of milliseconds each (after a takeover, the
    /// held host commands of the adapter bench completed one every 15 ms).</summary>
    async ValueTask WriteThroughKeysHeldAsync(IReadOnlyList<int> elements)
    {
        var slots = new List<Slot>();
        lock (_lock) foreach (var e in elements) { slots.Add(_slots[e]); _slots[e].Pins++; }
        var job = new WriteThroughJob(elements, slots);
        lock (_writeThroughLock) _writeThroughsWaiting.Add(job);
        try
        {
            await _arrayWriteGate.WaitAsync(CancellationToken.None);
            List<WriteThroughJob> group;
            lock (_writeThroughLock)
            {
                group = [.. _writeThroughsWaiting];
                _writeThroughsWaiting.Clear();
            }
            try
            {
                if (group.Count > 0) await WriteThroughGroupAsync(group);
            }
            finally
            {
                _arrayWriteGate.Release();
            }
            await job.Done.Task;
        }
        finally
        {
            foreach (var e in elements) Unpin(e);
        }
        for (int i = 0; i < elements.Count; i++) MarkClean(elements[i], slots[i].Sequence);
        Interlocked.Add(ref _writeThroughs, elements.Count);
    }

    sealed class WriteThroughJob(IReadOnlyList<int> elements, List<Slot> slots)
    {
        public readonly IReadOnlyList<int> Elements = elements;
        public readonly List<Slot> Slots = slots;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    readonly Lock _writeThroughLock = new();
    readonly List<WriteThroughJob> _writeThroughsWaiting = [];
    long _writeThroughGroups;

    /// <summary>Gate turns that wrote write-throughs (each one flush per array): against <see cref="CacheCounters.WriteThroughs"/>, how well they group.</summary>
    public long WriteThroughGroups => Interlocked.Read(ref _writeThroughGroups);

    /// <summary>Under the array write gate: every element of <paramref name="group"/> written (the callers hold the key
    /// locks of theirs, so no two write one address), then one flush per array; each job completes with the outcome.
    /// Never cancelled: one caller giving up must not fail the others' writes.</summary>
    async Task WriteThroughGroupAsync(List<WriteThroughJob> group)
    {
        Interlocked.Increment(ref _writeThroughGroups);
        try
        {
            // One write after another, as each write-through wrote its own: what the group saves is the gate turn
            // and the flush per write-through. (Written all at once, the simulator found parity left stale: seeds
            // 213, 401 and 456 of the classic campaign.)
            var arrays = new HashSet<byte>();
            foreach (var j in group)
                for (int i = 0; i < j.Elements.Count; i++)
                {
                    var s = j.Slots[i];
                    var backing = Backing(s.Array);
                    arrays.Add(s.Array);
                    foreach (var (first, k) in Runs(s.Valid))
                        await backing.WriteAsync(s.Lba + first, _nvram.Memory(j.Elements[i]).Slice(first * Units.SectorBytes, k * Units.SectorBytes), s.Replayed, CancellationToken.None);
                }
            foreach (var a in arrays) await Backing(a).FlushAsync(CancellationToken.None);
        }
        catch (Exception x)
        {
            // As in a failed destage round: what these write-throughs tore is settled by a recovery write.
            lock (_lock)
                foreach (var j in group)
                    for (int i = 0; i < j.Elements.Count; i++)
                        if (_slots[j.Elements[i]].State == SlotState.Dirty && _slots[j.Elements[i]].Sequence == j.Slots[i].Sequence) _slots[j.Elements[i]].Replayed = true;
            foreach (var j in group) j.Done.TrySetException(x);
            return;
        }
        foreach (var j in group) j.Done.TrySetResult();
    }

    void ReturnUnused(int e)
    {
        lock (_lock)
        {
            FreeLocked(e);
            WakeSpaceWaitersLocked();
        }
    }

    /// <summary>Puts an element on the free list. No address may still name it.</summary>
    void FreeLocked(int e)
    {
        ref var s = ref _slots[e];
        Invariant.Assert(!(s.State is SlotState.Dirty or SlotState.Clean) || !_index.TryGetValue((s.Array, s.Lba), out var named) || named != e,
            $"element {e} freed while the index still names it for array {s.Array} LBA {s.Lba} ({s.State})");
        s = new Slot { LruPrev = -1, LruNext = -1 };
        _free.Push(e);
    }

    /// <summary>The key locks of n elements from firstEl on: distinct, in ascending order (the order every
    /// writer takes them in, so two writers never wait for each other in a cycle).</summary>
    int[] GatesOf(byte array, long firstEl, int n)
    {
        if (n == 1) return [KeyLockIndex(array, firstEl * SectorsPerElement)];
        var gates = new int[n];
        for (int i = 0; i < n; i++) gates[i] = KeyLockIndex(array, (firstEl + i) * SectorsPerElement);
        Array.Sort(gates);
        int k = 0;
        for (int i = 0; i < n; i++)
            if (k == 0 || gates[i] != gates[k - 1]) gates[k++] = gates[i];
        return k == n ? gates : gates[..k];
    }

    // A fixed hash (Fibonacci hashing of array and element number), not HashCode.Combine: that one is
    // seeded per process, so which addresses shared a key lock changed from run to run, and a
    // simulated seed did not replay the same interleaving twice.
    static int KeyLockIndex(byte array, long lba) =>
        (int)(((ulong)array << 56 ^ (ulong)(lba / SectorsPerElement)) * 0x9E3779B97F4A7C15UL >> 56) % KeyLockCount;

    void MarkClean(int e, ulong sequence)
    {
        lock (_lock)
        {
            ref var s = ref _slots[e];
            if (s.State != SlotState.Dirty || s.Sequence != sequence) return;
            s.State = SlotState.Clean;
            s.Replayed = false; // on the drives now, whole
            _dirty--;
            LruPushHead(e);
            _nvram.WriteDescriptorOnly(e, Descriptor(e));
            WakeSpaceWaitersLocked();
        }
    }

    /// <summary>Contiguous runs of set bits: (first sector, count).</summary>
    internal static IEnumerable<(int First, int Count)> Runs(uint mask)
    {
        int i = 0;
        while (mask != 0)
        {
            int skip = BitOperations.TrailingZeroCount(mask);
            mask >>= skip;
            i += skip;
            int n = BitOperations.TrailingZeroCount(~mask);
            yield return (i, n);
            mask = n == 32 ? 0 : mask >> n;
            i += n;
        }
    }

    // ---- read ----------------------------------------------------------------------------

    public async ValueTask ReadAsync(byte array, long sector, Memory<byte> destination, CancellationToken ct = default)
    {
        var backing = Backing(array);
        long count = destination.Length / Units.SectorBytes;
        Invariant.Assert(sector >= 0 && sector + count <= backing.CapacitySectors);
        long first = sector / SectorsPerElement, last = (sector + count - 1) / SectorsPerElement;
        List<(int E, uint Valid, long Lba)>? pinned = null;
        bool fullyCached = true;
        lock (_lock)
        {
            for (long el = first; el <= last; el++)
            {
                long lba = el * SectorsPerElement;
                long from = Math.Max(sector, lba), to = Math.Min(sector + count, lba + SectorsPerElement);
                uint need = MaskOf((int)(from - lba), (int)(to - from));
                if (_index.TryGetValue((array, lba), out var e))
                {
                    _slots[e].Pins++;
                    (pinned ??= []).Add((e, _slots[e].Valid, lba));
                    if ((_slots[e].Valid & need) != need) fullyCached = false;
                }
                else fullyCached = false;
            }
        }
        try
        {
            if (!fullyCached)
            {
                try { await backing.ReadAsync(sector, destination, ct); }
                catch (BlockIoException e) when (e.Kind == BlockErrorKind.Medium && pinned is not null)
                {
                    // A sector the array cannot give (a listed bad block, AW-5) may be one this cache holds
                    // newer data for: read from the array only what the cache does not hold, and fail only
                    // if that needs the bad sector.
                    foreach (var (from, n) in Uncached(sector, count, pinned))
                        await backing.ReadAsync(from, destination.Slice((int)((from - sector) * Units.SectorBytes), (int)(n * Units.SectorBytes)), ct);
                }
            }
            if (pinned is null) { Interlocked.Increment(ref _misses); return; }
            Interlocked.Increment(ref fullyCached ? ref _hits : ref _misses);
            foreach (var (e, valid, lba) in pinned)
            {
                long from = Math.Max(sector, lba), to = Math.Min(sector + count, lba + SectorsPerElement);
                uint need = MaskOf((int)(from - lba), (int)(to - from)) & valid;
                var src = _nvram.Data(e);
                foreach (var (s, n) in Runs(need))
                    src.Slice(s * Units.SectorBytes, n * Units.SectorBytes).CopyTo(destination.Span[(int)((lba + s - sector) * Units.SectorBytes)..]);
            }
        }
        finally
        {
            if (pinned is not null) foreach (var p in pinned) Unpin(p.E);
        }
    }

    /// <summary>The runs of sectors of [sector, +count) that no pinned element holds: (first sector, count).</summary>
    static List<(long From, long Count)> Uncached(long sector, long count, List<(int E, uint Valid, long Lba)> pinned)
    {
        var runs = new List<(long, long)>();
        long runStart = -1;
        for (long x = sector; x < sector + count; x++)
        {
            long lba = x / SectorsPerElement * SectorsPerElement;
            bool held = false;
            foreach (var p in pinned)
                if (p.Lba == lba && (p.Valid >> (int)(x - lba) & 1) != 0) { held = true; break; }
            if (!held && runStart < 0) runStart = x;
            if (held && runStart >= 0) { runs.Add((runStart, x - runStart)); runStart = -1; }
        }
        if (runStart >= 0) runs.Add((runStart, sector + count - runStart));
        return runs;
    }

    /// <summary>
    /// FLUSH: with a healthy mirror every acknowledged write is already in two NVRAMs, so there is
    /// nothing to do (the cache is non-volatile). In error-recovery mode writes went through to the
    /// array; flush its drives.
    /// </summary>
    public async ValueTask FlushAsync(byte array, CancellationToken ct = default)
    {
        if (_mirror.Mode == MirrorMode.Healthy) return;
        await Backing(array).FlushAsync(ct);
    }

    // ---- allocation, retirement, LRU -----------------------------------------------------

    /// <summary>
    /// Takes <paramref name="n"/> elements at once: free ones first, then clean ones evicted
    /// (least recently cleaned first). A writer never holds some elements while it waits for more:
    /// with a small NVRAM, writers each holding part of what they need while waiting for the rest
    /// would wait for each other for good (the simulator found it, seed 386). It waits until all
    /// n can be had (destage makes them), which always comes: n is at most a quarter of the cache.
    /// </summary>
    async ValueTask<int[]> AllocateAsync(int n, CancellationToken ct)
    {
        Invariant.Assert(n >= 1 && n <= _slots.Length);
        while (true)
        {
            TaskCompletionSource waiter;
            lock (_lock)
            {
                if (TryTakeLocked(n) is { } got) return got;
                waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _spaceWaiters.Add(waiter);
            }
            Kick();
            await Waits.OrCancel(waiter.Task, ct);
        }
    }

    int[]? TryTakeLocked(int n)
    {
        int available = _free.Count;
        for (int v = _lruTail; v >= 0 && available < n; v = _slots[v].LruPrev)
            if (_slots[v].Pins == 0) available++;
        if (available < n) return null;
        var got = new int[n];
        for (int i = 0; i < n; i++)
        {
            if (_free.TryPop(out int e)) { got[i] = e; continue; }
            int victim = _lruTail;
            while (victim >= 0 && _slots[victim].Pins > 0) victim = _slots[victim].LruPrev;
            Invariant.Assert(victim >= 0, "counted evictable elements vanished");
            // Evict a clean element: its content is on the drives. The peer may hold a clean
            // copy (CC-5 sent nothing when it was destaged); tell it to drop it (CC-4).
            LruRemove(victim);
            Invariant.Assert(_index.TryGetValue((_slots[victim].Array, _slots[victim].Lba), out var named) && named == victim,
                $"evicting element {victim} (array {_slots[victim].Array} LBA {_slots[victim].Lba}, {_slots[victim].State}) which the index does not name");
            _index.Remove((_slots[victim].Array, _slots[victim].Lba));
            _slots[victim] = new Slot { LruPrev = -1, LruNext = -1 };
            _nvram.Invalidate(victim);
            Interlocked.Increment(ref _evictions);
            if (_mirror.Mode == MirrorMode.Healthy)
            {
                try { _ = _mirror.AppendGroup([InvalidationOf(victim, ++_sequence)]); }
                catch (MirrorUnavailableException) { }
            }
            got[i] = victim;
        }
        return got;
    }

    void Retire(int e)
    {
        // Caller holds _lock. The element no longer names its address; free it once the change that
        // replaced it is mirrored and no reader holds it.
        ref var s = ref _slots[e];
        if (s.State == SlotState.Dirty) _dirty--;
        else if (s.State == SlotState.Clean) LruRemove(e);
        s.State = SlotState.Retired;
        WakeSpaceWaitersLocked();
    }

    void Release(int e)
    {
        lock (_lock)
        {
            ref var s = ref _slots[e];
            Invariant.Assert(s.State == SlotState.Retired);
            if (s.Pins > 0) { s.FreeWhenUnpinned = true; return; }
            FreeLocked(e);
            WakeSpaceWaitersLocked();
        }
    }

    void Unpin(int e)
    {
        lock (_lock)
        {
            ref var s = ref _slots[e];
            Invariant.Assert(s.Pins > 0, $"unpin of element {e}, which is {s.State} (array {s.Array} LBA {s.Lba}) with no pin");
            s.Pins--;
            if (s.Pins > 0) return;
            if (s.FreeWhenUnpinned)
            {
                FreeLocked(e);
                WakeSpaceWaitersLocked();
            }
            // A clean element a reader or a destage round held could not be evicted; now it can. A
            // writer that found every clean element pinned waits for exactly this (nothing else may
            // come: with no dirty element left, destage frees nothing more).
            else if (s.State == SlotState.Clean) WakeSpaceWaitersLocked();
        }
    }

    void WakeSpaceWaitersLocked()
    {
        if (_spaceWaiters.Count == 0 || (_free.Count == 0 && _lruTail < 0)) return;
        foreach (var w in _spaceWaiters) w.TrySetResult();
        _spaceWaiters.Clear();
    }

    void LruPushHead(int e)
    {
        _slots[e].LruPrev = -1;
        _slots[e].LruNext = _lruHead;
        if (_lruHead >= 0) _slots[_lruHead].LruPrev = e;
        _lruHead = e;
        if (_lruTail < 0) _lruTail = e;
    }

    void LruRemove(int e)
    {
        ref var s = ref _slots[e];
        if (s.LruPrev >= 0) _slots[s.LruPrev].LruNext = s.LruNext; else _lruHead = s.LruNext;
        if (s.LruNext >= 0) _slots[s.LruNext].LruPrev = s.LruPrev; else _lruTail = s.LruPrev;
        s.LruPrev = s.LruNext = -1;
    }

    // ---- destage ---------------------------------------------------------------------------

    void Kick() => Volatile.Read(ref _destageKick).TrySetResult();

    void MaybeKickDestage()
    {
        if (DirtyCount >= _slots.Length * _options.DestageStartFraction) Kick();
    }

    // AW-6, the power-fail window: first destage only makes room for writers waiting for it (no idle,
    // watermark or drain rounds: the dirty elements stay in NVRAM), then no round starts at all.
    volatile bool _destageForRoomOnly, _destageStopped;

    /// <summary>
    /// The power-fail window begins (AW-6): from now on a destage round starts only while a writer waits
    /// for room (a host write in flight must be able to finish); what is dirty otherwise stays dirty in
    /// NVRAM, for replay at the next start — destaging it all could take any time. Drains wait.
    /// </summary>
    public void DestageForRoomOnly() => _destageForRoomOnly = true;

    /// <summary>Ends <see cref="DestageForRoomOnly"/> before the window stops destage altogether: idle, watermark and
    /// drain rounds run again (tests keep elements dirty with the one and destage them with the other).</summary>
    public void DestageAsUsual()
    {
        if (_destageStopped) throw new InvalidOperationException("the power-fail window stopped destage");
        _destageForRoomOnly = false;
        Kick();
    }

    /// <summary>
    /// The power-fail window's stop (AW-6): no destage round starts from now on; a round already writing
    /// finishes, with its flush. Completes once no round is running. Writers that need room, and drains,
    /// wait from now on; the controller stops after this.
    /// </summary>
    public Task StopDestageAsync()
    {
        _destageForRoomOnly = true;
        _destageStopped = true;
        Kick();
        return _destager is { } loop ? Quietly(loop) : Task.CompletedTask;

        static async Task Quietly(Task loop)
        {
            try { await loop; }
            catch (OperationCanceledException) { }
        }
    }

    public bool DestageStopped => _destageStopped;

    bool WritersWaitForRoom()
    {
        lock (_lock) return _spaceWaiters.Count > 0;
    }

    async Task DestageLoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested && !_destageStopped)
        {
            bool kicked;
            var kick = Volatile.Read(ref _destageKick);
            try
            {
                await Waits.WhenAny(kick.Task, _options.Time.DelayAsync(_options.IdleDestageDelay, ct));
                ct.ThrowIfCancellationRequested();
            }
            catch (OperationCanceledException) { break; }
            if (_destageStopped) break;
            kicked = kick.Task.IsCompleted;
            if (kicked) Interlocked.CompareExchange(ref _destageKick, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously), kick);
            bool idle = _options.Time.GetElapsedTime(_lastWriteTicks) >= _options.IdleDestageDelay;
            bool pressure = DirtyCount >= _slots.Length * _options.DestageStartFraction;
            bool drain;
            lock (_lock) drain = _drainWaiters.Count > 0 || _spaceWaiters.Count > 0 || _sequenceWaiters.Count > 0;
            if (!(kicked || idle || pressure || drain)) continue;
            if (_destageForRoomOnly && !WritersWaitForRoom()) continue;
            try
            {
                double low = Math.Min(_options.DestageStopFraction, _options.DestageStartFraction);
                while (true)
                {
                    int n = await DestageRoundAsync(ct);
                    lock (_lock)
                    {
                        ReleaseSequenceWaitersLocked();
                        drain = _drainWaiters.Count > 0 || _spaceWaiters.Count > 0 || _sequenceWaiters.Count > 0;
                    }
                    // Hysteresis: a pass started by pressure goes down to the low watermark.
                    pressure = pressure ? DirtyCount >= _slots.Length * low : DirtyCount >= _slots.Length * _options.DestageStartFraction;
                    if (n == 0 || !(drain || pressure) || _destageStopped || _destageForRoomOnly && !WritersWaitForRoom()) break;
                }
            }
            catch (OperationCanceledException) { break; }
            catch (Exception e) { LogDestageFailed(e.Message); }
            lock (_lock)
            {
                if (_drainWaiters.Count > 0 && _dirty == ParkedCountLocked()) // counting walks the index: only when someone waits
                {
                    foreach (var w in _drainWaiters) w.TrySetResult();
                    _drainWaiters.Clear();
                }
                ReleaseSequenceWaitersLocked();
            }
        }
    }

    readonly List<(ulong Through, TaskCompletionSource Done)> _sequenceWaiters = [];

    /// <summary>
    /// Completes once every element that is dirty now has been destaged or replaced by a newer write
    /// (unlike <see cref="DrainAsync"/>, writes arriving meanwhile do not hold it up). The controller
    /// waits for this before it acknowledges a write it did not mirror: from then on the peer's copy
    /// of this cache is only older than the drives.
    /// </summary>
    public Task DestageCurrentAsync(CancellationToken ct = default)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            if (OldestDirtyLocked() is null) return Task.CompletedTask;
            _sequenceWaiters.Add((_sequence, tcs));
        }
        Kick();
        return Waits.OrCancel(tcs.Task, ct);
    }

    ulong? OldestDirtyLocked()
    {
        ulong? oldest = null;
        foreach (var e in _index.Values)
            if (_slots[e].State == SlotState.Dirty && !ParkedLocked(e) && (oldest is null || _slots[e].Sequence < oldest)) oldest = _slots[e].Sequence;
        return oldest;
    }

    /// <summary>
    /// A dirty element of an array this cache has no backing for: replayed from NVRAM for an array not
    /// (yet) assembled here — its drives unreachable at start, or its ownership still being settled after
    /// a move the power cut short. It is the only copy of its data, so it stays, but nothing can destage
    /// it: destage rounds pass it by and drains do not wait for it, until <see cref="AddArray"/> brings its array.
    /// </summary>
    bool ParkedLocked(int e) => !_arrays.ContainsKey(_slots[e].Array);

    /// <summary>Dirty elements no destage can reach now (see <see cref="ParkedLocked"/>).</summary>
    int ParkedCountLocked()
    {
        if (_dirty == 0) return 0;
        int n = 0;
        foreach (var e in _index.Values)
            if (_slots[e].State == SlotState.Dirty && ParkedLocked(e)) n++;
        return n;
    }

    void ReleaseSequenceWaitersLocked()
    {
        if (_sequenceWaiters.Count == 0) return;
        var oldest = OldestDirtyLocked();
        for (int i = _sequenceWaiters.Count - 1; i >= 0; i--)
            if (oldest is null || oldest > _sequenceWaiters[i].Through)
            {
                _sequenceWaiters[i].Done.TrySetResult();
                _sequenceWaiters.RemoveAt(i);
            }
    }

    /// <summary>One destage pass over up to DestageRoundElements dirty elements; returns how many were cleaned.</summary>
    async Task<int> DestageRoundAsync(CancellationToken ct)
    {
        List<(int E, byte Array, long Lba, uint Valid, ulong Seq, bool Replayed)> batch;
        lock (_lock)
        {
            batch = [];
            foreach (var (key, e) in _index)
            {
                ref var s = ref _slots[e];
                if (s.State != SlotState.Dirty || s.Destaging || !_arrays.ContainsKey(s.Array)) continue;
                batch.Add((e, s.Array, s.Lba, s.Valid, s.Sequence, s.Replayed));
            }
            batch.Sort((a, b) => a.Array != b.Array ? a.Array.CompareTo(b.Array) : a.Lba.CompareTo(b.Lba));
            int most = _mirror.Mode == MirrorMode.Healthy ? _options.DestageRoundElements : Math.Min(_options.DestageRoundElements, _options.ErrorRecoveryRoundElements);
            if (batch.Count > most) batch.RemoveRange(most, batch.Count - most);
            foreach (var b in batch) { _slots[b.E].Destaging = true; _slots[b.E].Pins++; }
        }
        if (batch.Count == 0) return 0;
        await _arrayWriteGate.WaitAsync(CancellationToken.None);
        bool done = false;
        try
        {
            // Runs: consecutive fully valid elements of one array, up to DestageMaxRunSectors; a partial
            // element is written sector-run by sector-run.
            var writes = new List<Task>();
            var flushArrays = new HashSet<byte>();
            int i = 0;
            while (i < batch.Count)
            {
                var head = batch[i];
                int j = i + 1;
                if (head.Valid == uint.MaxValue)
                    while (j < batch.Count && batch[j].Array == head.Array && batch[j].Valid == uint.MaxValue && batch[j].Replayed == head.Replayed &&
                           batch[j].Lba == batch[j - 1].Lba + SectorsPerElement && (j - i + 1) * SectorsPerElement <= _options.DestageMaxRunSectors)
                        j++;
                writes.Add(WriteRunAsync(batch.GetRange(i, j - i), ct));
                flushArrays.Add(head.Array);
                i = j;
            }
            await Task.WhenAll(writes);
            if (!_options.PlantedCleanBeforeFlush)
                foreach (var a in flushArrays) await Backing(a).FlushAsync(ct);
            done = true;
            foreach (var b in batch) MarkClean(b.E, b.Seq);
            Interlocked.Add(ref _destagedElements, batch.Count);
            Interlocked.Add(ref _destagedRuns, writes.Count);
            return batch.Count;
        }
        finally
        {
            _arrayWriteGate.Release();
            lock (_lock)
                foreach (var b in batch)
                {
                    _slots[b.E].Destaging = false;
                    // A destage that failed part-way may have torn its rows (some members written, not
                    // others: the controller lost its path to the drives): the retry must be a
                    // recovery write, which settles torn rows, not a read-modify-write over them.
                    if (!done && _slots[b.E].State == SlotState.Dirty && _slots[b.E].Sequence == b.Seq) _slots[b.E].Replayed = true;
                }
            foreach (var b in batch) Unpin(b.E);
        }
    }

    /// <summary>Writes one run to its array (the round holds the array write gate, which orders it against
    /// write-throughs). A run whose elements were all still current goes as one write; otherwise each
    /// element still current is written alone (a replaced one is destaged later as its newer element).
    /// A run of replayed elements (runs never mix them with others) goes as a recovery write.</summary>
    async Task WriteRunAsync(List<(int E, byte Array, long Lba, uint Valid, ulong Seq, bool Replayed)> run, CancellationToken ct)
    {
        bool Current((int E, byte Array, long Lba, uint Valid, ulong Seq, bool Replayed) r)
        {
            lock (_lock) return _slots[r.E].State == SlotState.Dirty && _slots[r.E].Sequence == r.Seq;
        }
        // An array forgotten (moved or deleted) since the round was gathered: nothing of it is current.
        ICacheBacking backing;
        lock (_lock)
        {
            if (!_arrays.TryGetValue(run[0].Array, out var b)) { Invariant.Assert(!run.Any(Current), "a current element of a forgotten array"); return; }
            backing = b;
        }
        if (run.Count == 1 || !run.All(Current))
        {
            foreach (var r in run)
            {
                if (!Current(r)) continue;
                foreach (var (first, n) in Runs(r.Valid))
                    await backing.WriteAsync(r.Lba + first, _nvram.Memory(r.E).Slice(first * Units.SectorBytes, n * Units.SectorBytes), r.Replayed, ct);
            }
            return;
        }
        var buffer = ArrayPool<byte>.Shared.Rent(run.Count * ElementBytes);
        try
        {
            for (int k = 0; k < run.Count; k++) _nvram.Data(run[k].E).CopyTo(buffer.AsSpan(k * ElementBytes, ElementBytes));
            await backing.WriteAsync(run[0].Lba, buffer.AsMemory(0, run.Count * ElementBytes), run[0].Replayed, ct);
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>Destages every dirty element and waits until none is left (entering error-recovery mode, moving an array, stopping);
    /// parked elements (of arrays not assembled here, <see cref="ParkedLocked"/>) are not waited for.</summary>
    public Task DrainAsync(CancellationToken ct = default)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            if (_dirty == ParkedCountLocked()) return Task.CompletedTask;
            _drainWaiters.Add(tcs);
        }
        Kick();
        return Waits.OrCancel(tcs.Task, ct);
    }

    /// <summary>
    /// Drops every element of one array (after it was drained, when it moves to the peer) and tells the
    /// peer to drop its copies: the new owner must never replay this controller's old images of it.
    /// </summary>
    public async Task ForgetAsync(byte array)
    {
        Task sent = Task.CompletedTask;
        lock (_lock)
        {
            var changes = new List<MirrorChange>();
            foreach (var (key, e) in _index.Where(kv => kv.Key.Item1 == array).ToList())
            {
                Invariant.Assert(_slots[e].State == SlotState.Clean, $"forgetting array {array}: element {e} (LBA {key.Item2}) is {_slots[e].State}, destaging {_slots[e].Destaging}, pins {_slots[e].Pins}, dirty count {_dirty}");
                LruRemove(e);
                _index.Remove(key);
                _nvram.Invalidate(e);
                if (_slots[e].Pins > 0)
                {
                    // A reader or a destage round still holds it: it is freed when they let go (freeing
                    // it now would hand it to a writer while they still use it).
                    _slots[e].State = SlotState.Retired;
                    _slots[e].FreeWhenUnpinned = true;
                }
                else
                {
                    _slots[e] = new Slot { LruPrev = -1, LruNext = -1 };
                    _free.Push(e);
                }
                changes.Add(InvalidationOf(e, ++_sequence));
            }
            _arrays.Remove(array);
            if (_options.PlantedForgetKeepsPeerCopies) changes.Clear();
            if (changes.Count > 0 && _mirror.Mode == MirrorMode.Healthy)
            {
                try { sent = _mirror.AppendGroup(changes); }
                catch (MirrorUnavailableException) { }
            }
            WakeSpaceWaitersLocked();
        }
        try { await sent; }
        catch (MirrorUnavailableException) { } // the peer is gone: it resynchronises from scratch when it returns
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_destager is not null) { try { await _destager; } catch { } }
    }

    [LoggerMessage(EventId = 4002, Level = LogLevel.Information, Message = "peer mirror resynchronised: {Count} elements")]
    partial void LogResynced(int count);

    [LoggerMessage(EventId = 4001, Level = LogLevel.Error, Message = "destage failed: {Error}")]
    partial void LogDestageFailed(string error);
}

public readonly record struct CacheCounters(long Hits, long Misses, long DestagedElements, long DestageRuns, long Evictions, long WriteThroughs, long Mirrored, int Dirty);
