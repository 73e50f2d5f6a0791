using Duet.Cache;
using Duet.Core;
using Duet.Raid;

namespace Duet.Host.Controller;

/// <summary>
/// A served RAID array as the cache's backing store. With a write log (<paramref name="log"/>), every
/// write to the array (a destage run, a write-through) is recorded before it touches a drive (AW-4: in
/// NVRAM, and mirrored to the peer as an AW-3 checkpoint) and the record is cleared once a flush of the
/// array's drives has followed the write, so a restart or a takeover checks exactly the stripes a stop
/// may have left with parity that disagrees with their data.
/// </summary>
public sealed class RaidBacking(RaidArray array, byte number, ulong serial, IArrayWriteLog? log = null) : ICacheBacking
{
    public RaidArray Array { get; } = array;
    public byte ArrayNumber { get; } = number;
    public ulong ArraySerial { get; } = serial;
    public long CapacitySectors => Array.CapacitySectors;
    public long StripeSectors => Array.Geometry.StripeDataBlocks * Units.SectorsPerBlock;
    public ValueTask ReadAsync(long sector, Memory<byte> destination, CancellationToken ct) => Array.ReadAsync(sector, destination, ct);

    public async ValueTask WriteAsync(long sector, ReadOnlyMemory<byte> source, bool recovery, CancellationToken ct)
    {
        if (log is null)
        {
            await WriteCoreAsync(sector, source, recovery, ct);
            return;
        }
        long firstBlock = sector / Units.SectorsPerBlock;
        long endBlock = (sector + source.Length / Units.SectorBytes + Units.SectorsPerBlock - 1) / Units.SectorsPerBlock;
        long endSector = sector + source.Length / Units.SectorBytes;
        int partialEnds = (sector % Units.SectorsPerBlock != 0 ? 1 : 0) + (endSector % Units.SectorsPerBlock != 0 ? 1 : 0);
        int slot = await log.StartedAsync(ArrayNumber, firstBlock, endBlock - firstBlock, PartialSumsFor(firstBlock, endBlock, partialEnds), ct);
        // Failed or not, the record waits for the next flush: a write that failed part-way leaves its
        // elements dirty and marked for a recovery write, which settles the rows it tore. The rows the
        // write changes in part keep their partial parity beside the record until then.
        var guard = new RecordGuard(log, slot, this);
        bool done = false;
        try
        {
            await (recovery ? Array.RecoveryWriteAsync(sector, source, guard, ct) : Array.WriteAsync(sector, source, guard, ct));
            done = true;
        }
        finally { log.Written(slot, failed: !done); }
    }

    ValueTask WriteCoreAsync(long sector, ReadOnlyMemory<byte> source, bool recovery, CancellationToken ct) =>
        recovery ? Array.RecoveryWriteAsync(sector, source, ct) : Array.WriteAsync(sector, source, ct);

    /// <summary>
    /// At most how many partial sums a write of array blocks [<paramref name="firstBlock"/>, <paramref name="endBlock"/>)
    /// stores (<see cref="RaidArray"/>'s StorePartialParity): one per row of a stripe it changes in part, one per
    /// block it changes in part (<paramref name="partialEnds"/>: its first and last, if they are not whole), and
    /// one per row and per member that cannot be read now. (Counting two end blocks for every write, whole or
    /// not, tripled what a 4 KiB write was promised and made destage rounds wait for the pool.)
    /// </summary>
    int PartialSumsFor(long firstBlock, long endBlock, int partialEnds)
    {
        var g = Array.Geometry;
        if (g.ParityMembers == 0 || g.IsMirrored) return 0;
        int unreadable = Unreadable();
        long sdb = g.StripeDataBlocks, total = partialEnds;
        for (long s = firstBlock / sdb; s <= (endBlock - 1) / sdb && total < int.MaxValue / 2; s++)
        {
            long n = Math.Min(endBlock, (s + 1) * sdb) - Math.Max(firstBlock, s * sdb);
            long rows = Math.Min(g.ChunkBlocks, n);
            if (n < sdb) total += rows;
            total += unreadable * rows;
        }
        return (int)Math.Min(total, int.MaxValue / 2);
    }

    /// <summary>Members that are not active (lost, or being rebuilt).</summary>
    public int Unreadable()
    {
        int n = 0;
        for (int m = 0; m < Array.Geometry.MemberCount; m++) if (Array.Status(m) != MemberStatus.Active) n++;
        return n;
    }

    sealed class RecordGuard(IArrayWriteLog log, int slot, RaidBacking backing) : IPartialParitySink
    {
        /// <summary>Posts of a stripe's sums the link has not taken in yet, by stripe.</summary>
        readonly Dictionary<long, List<Task<bool>>> _posts = [];
        /// <summary>Stripes that claimed room for their sums and have not finished writing.</summary>
        readonly HashSet<long> _claimed = [];

        // With a member that cannot be read (as the write finds the array: its reads may just have failed one), the
        // sums go to the peer too, before the stripe's drive writes: a takeover rebuilds that member's blocks of the
        // rows this write may tear from them.
        public bool Store(long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum)
        {
            bool stored = log.StorePartialParity(slot, stripe, row, unchanged, sum);
            if (stored && backing.Unreadable() > 0 && log.PostPartialSum(slot, stripe, row, unchanged, sum) is { } post &&
                !(post.IsCompletedSuccessfully && post.Result))
                lock (_posts)
                {
                    if (!_posts.TryGetValue(stripe, out var list)) _posts[stripe] = list = [];
                    list.Add(post);
                }
            return stored;
        }

        // With room in the peer's window a post is taken in at once; one that waits for room is waited for here, before
        // the stripe's drive writes (within the post limit, as a "started" is).
        public ValueTask SumsStoredAsync(long stripe, CancellationToken ct)
        {
            List<Task<bool>>? posts;
            lock (_posts)
                if (!_posts.Remove(stripe, out posts)) return ValueTask.CompletedTask;
            return log.PartialSumsPostedAsync(posts);
        }

        public void Supersede(long stripe, int row) => log.SupersedePartialParity(slot, stripe, row);

        // With a member that cannot be read, a row this write tears without its sum loses that member's block at a
        // single cut (nothing else holds it): the stripe waits for room instead (simulator seed 74 under a schedule
        // variant: a degraded RAID 5 write of four stripes whose sums outran its promise, torn by a power cut). A
        // healthy array's row needs a second failure to lose anything, so there a sum the pool refuses is counted
        // unguarded, as before, and nothing waits (nor counts).
        public bool ClaimsRoom => backing.Unreadable() > 0;

        public async ValueTask RoomAsync(long stripe, int rowLo, int rowCount, int sums, CancellationToken ct)
        {
            await log.ClaimPartialSumsAsync(slot, sums, (stripe, rowLo, rowCount), ct);
            lock (_claimed) _claimed.Add(stripe);
        }

        public void StripeWritten(long stripe)
        {
            lock (_claimed)
                if (!_claimed.Remove(stripe)) return;
            log.StripeWritten(slot, stripe);
        }
        public IReadOnlyList<PartialParity> Held(long stripe, int rowLo, int rowCount) => log.HeldPartialParity(backing.ArrayNumber, stripe, rowLo, rowCount);
    }

    /// <summary>Flushes the drives; the log records of every write that returned before the flush started are then cleared.</summary>
    public ValueTask FlushAsync(CancellationToken ct) => FlushCoreAsync(persistFailures: true, ct);

    /// <summary>
    /// A flush to make room in a full write log, from inside an array write (the cache's write gate may be
    /// held, and whoever holds the array manager's lock may be waiting for that write): it must not wait
    /// for a member failure to be persisted, which takes that lock. So a flush that drops a member clears
    /// nothing: those records stay until a flush after the failure is on the superblocks.
    /// </summary>
    public ValueTask FlushToFreeLogAsync(CancellationToken ct) => FlushCoreAsync(persistFailures: false, ct);

    async ValueTask FlushCoreAsync(bool persistFailures, CancellationToken ct)
    {
        var slots = log?.TakeWritten(ArrayNumber) ?? [];
        int lost = Array.LostSlots().Count;
        try { await (persistFailures ? Array.FlushAsync(ct) : Array.FlushWithoutPersistingFailuresAsync(ct)); }
        catch
        {
            log?.FlushFailed(slots);
            throw;
        }
        if (log is null) return;
        if (!persistFailures && Array.LostSlots().Count != lost) log.FlushFailed(slots);
        else log.Durable(slots);
    }
}

/// <summary>AW-4 (and AW-3 towards the peer): where a controller's array writes are recorded.</summary>
public interface IArrayWriteLog
{
    /// <summary>Records array blocks [first, +count) as being written (in NVRAM, whole when this returns; and
    /// towards the peer), promises the write <paramref name="partialSums"/> entries of the partial-parity pool, and
    /// returns the record's slot. Waits while the log is full or the pool cannot promise that many.</summary>
    ValueTask<int> StartedAsync(byte array, long firstBlock, long blockCount, int partialSums, CancellationToken ct);
    /// <summary>Keeps the partial parity of a row the record's write changes in part (in NVRAM, whole when this
    /// returns true; false if there is no room); freed with the record.</summary>
    bool StorePartialParity(int slot, long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum);
    /// <summary>Posts a sum the record stored to the peer (its array has a member that cannot be read), if checkpoints
    /// flow now; a post the link drops is counted.</summary>
    Task<bool>? PostPartialSum(int slot, long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum) => null;
    /// <summary>Waits, within the post limit, for posts of a stripe's sums that were not taken in at once; counts those
    /// that did not make it.</summary>
    ValueTask PartialSumsPostedAsync(IReadOnlyList<Task<bool>> posts) => ValueTask.CompletedTask;
    /// <summary>Waits until <paramref name="sums"/> pool entries are set aside for a stripe of the record's write
    /// (<see cref="Duet.Cache.WriteLog.TryClaimPartialSums"/>), flushing arrays to free entries meanwhile.</summary>
    ValueTask ClaimPartialSumsAsync(int slot, int sums, (long Stripe, int RowLo, int RowCount)? rows, CancellationToken ct) => ValueTask.CompletedTask;
    /// <summary>A stripe that claimed room for its sums finished writing (<see cref="Duet.Cache.WriteLog.StripeWritten"/>).</summary>
    void StripeWritten(int slot, long stripe) { }
    /// <summary>The record's write is about to change a row: other records' sums for it are stale.</summary>
    void SupersedePartialParity(int slot, long stripe, int row);
    /// <summary>The write returned; its record waits for the next flush of the array (<paramref name="failed"/>: and,
    /// holding its partial sums, for later writes of its blocks: <see cref="Duet.Cache.WriteLog.Written"/>).</summary>
    void Written(int slot, bool failed = false);
    /// <summary>The sums failed writes of <paramref name="array"/> hold for those rows (<see cref="IPartialParitySink.Held"/>).</summary>
    IReadOnlyList<PartialParity> HeldPartialParity(byte array, long stripe, int rowLo, int rowCount) => [];
    /// <summary>Before a flush: the records of the array's returned writes.</summary>
    int[] TakeWritten(byte array);
    void FlushFailed(int[] slots);
    /// <summary>After the flush: the records are cleared, here and at the peer.</summary>
    void Durable(int[] slots);
}

/// <summary>
/// A volume of an array this controller serves, through its write-back cache: writes are
/// acknowledged once mirrored (or, in error-recovery mode, once on the drives); reads see the
/// cache first. Edge validation is the underlying <see cref="RaidVolume"/>'s.
/// </summary>
public sealed class CachedVolume(RaidVolume volume, WriteBackCache cache, byte arrayNumber, Controller? controller = null) : IBlockVolume, IHostDataWriter
{
    public RaidVolume Volume { get; } = volume;
    public string Name => Volume.Name;
    public long SizeBytes => Volume.SizeBytes;
    public bool ReadOnly => false;
    public byte ArrayNumber => arrayNumber;

    // An array move: new requests wait at the hold, in-flight ones are counted out, and once the
    // array is handed over every request goes to the new owner.
    readonly Lock _moveLock = new();
    TaskCompletionSource? _hold;
    TaskCompletionSource? _idle;
    int _inFlight;
    volatile IBlockVolume? _movedTo;

    /// <summary>Stops admitting requests; completes when none is in flight.</summary>
    public Task HoldAsync()
    {
        lock (_moveLock)
        {
            _hold ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            if (_inFlight == 0) return Task.CompletedTask;
            // A second holder waits for the same moment as the first (replacing the task would strand the first).
            _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idle.Task;
        }
    }

    /// <summary>Releases held requests: to <paramref name="movedTo"/> if the move happened, else back here.</summary>
    public void Release(IBlockVolume? movedTo)
    {
        TaskCompletionSource? hold;
        lock (_moveLock)
        {
            if (movedTo is not null) _movedTo = movedTo;
            hold = _hold;
            _hold = null;
        }
        hold?.TrySetResult();
    }

    /// <summary>
    /// Admits a request: AW-6's gate (none is started once the controller is powering down), then FO-7's
    /// serve gate, then the move hold. Returns the volume a move sent the array's requests to, or null
    /// (served here: <see cref="Exit"/> with <c>here: true</c> when it is answered).
    /// </summary>
    async ValueTask<IBlockVolume?> EnterAsync()
    {
        controller?.HostCommands.Enter();
        try
        {
            // FO-7: no lease, no answer (and a takeover of this array finishes before it serves).
            if (controller is not null) await controller.ServeGateAsync(arrayNumber, default);
            while (true)
            {
                if (_movedTo is { } moved) return moved;
                Task? wait = null;
                lock (_moveLock)
                {
                    if (_hold is null && _movedTo is null) { _inFlight++; return null; }
                    wait = _hold?.Task;
                }
                if (wait is not null) await wait;
            }
        }
        catch
        {
            controller?.HostCommands.Exit(ok: false);
            throw;
        }
    }

    /// <summary>A request admitted by <see cref="EnterAsync"/> was answered (<paramref name="here"/>: it was
    /// served here, not by the volume a move sent it to).</summary>
    void Exit(bool here, bool ok)
    {
        if (here)
        {
            lock (_moveLock)
            {
                _inFlight--;
                if (_inFlight == 0 && _idle is { } idle)
                {
                    _idle = null;
                    idle.TrySetResult();
                }
            }
        }
        controller?.HostCommands.Exit(ok);
    }

    /// <summary>Before a write is acknowledged: the mirror's state is what the shelf says (a write the peer
    /// never saw is acknowledged only once the shelf records the peer's copy stale), and the acknowledgement
    /// is an answer too: only with a lease.</summary>
    async ValueTask AcknowledgeAsync(CancellationToken ct)
    {
        if (controller is null) return;
        await controller.AckGateAsync(ct);
        await controller.ServeGateAsync(arrayNumber, ct);
        controller.OnServed(arrayNumber);
    }

    long ArraySector(long offset) => Volume.OffsetBlocks * Units.SectorsPerBlock + offset / Units.SectorBytes;

    void Check(long offset, long length) => VolumeChecks.CheckRequest(Name, SizeBytes, offset, length);

    public async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        Check(offset, destination.Length);
        if (destination.IsEmpty) return;
        var moved = await EnterAsync();
        bool ok = false;
        try
        {
            if (moved is not null) await moved.ReadAsync(offset, destination, ct);
            else
            {
                try { await cache.ReadAsync(arrayNumber, ArraySector(offset), destination, ct); }
                catch (BlockIoException e) when (e.Lba >= 0) { throw VolumeChecks.InVolume(e, ArraySector(0), SizeBytes / Units.SectorBytes); }
                // Still holding the lease after the read: the data was not stale when it was read (a
                // controller paused mid-read and taken over meanwhile waits here, then fails).
                if (controller is not null) { await controller.ServeGateAsync(arrayNumber, ct); controller.OnServed(arrayNumber); }
            }
            ok = true;
        }
        finally { Exit(moved is null, ok); }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken ct = default) =>
        WriteAsync(offset, source, fua, reference: null, ct);

    /// <summary>A multicast host write: the peer holds <paramref name="source"/> in its copy of the
    /// command, so the mirror names those bytes instead of sending them.</summary>
    public ValueTask WriteHeldByPeerAsync(long offset, ReadOnlyMemory<byte> source, bool fua, HostDataReference reference, CancellationToken ct = default) =>
        WriteAsync(offset, source, fua, reference, ct);

    async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, HostDataReference? reference, CancellationToken ct)
    {
        Check(offset, source.Length);
        if (source.IsEmpty) return;
        var moved = await EnterAsync();
        bool ok = false;
        try
        {
            // Moved: the new owner's peer is this controller, which may not hold the command: send the bytes.
            if (moved is not null) await moved.WriteAsync(offset, source, fua, ct);
            else
            {
                // A write can meet a listed sector too (a gap the cache fills from the array, AW-5): the host is told the volume's sector.
                try { await cache.WriteAsync(arrayNumber, ArraySector(offset), source, fua, reference, ct); }
                catch (BlockIoException e) when (e.Lba >= 0) { throw VolumeChecks.InVolume(e, ArraySector(0), SizeBytes / Units.SectorBytes); }
                await AcknowledgeAsync(ct);
            }
            ok = true;
        }
        finally { Exit(moved is null, ok); }
    }

    /// <summary>FLUSH: with a healthy mirror every acknowledged write is already in two NVRAMs.</summary>
    public async ValueTask FlushAsync(CancellationToken ct = default)
    {
        var moved = await EnterAsync();
        bool ok = false;
        try
        {
            if (moved is not null) await moved.FlushAsync(ct);
            else await cache.FlushAsync(arrayNumber, ct);
            ok = true;
        }
        finally { Exit(moved is null, ok); }
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken ct = default)
    {
        Check(offset, length);
        var moved = await EnterAsync();
        bool ok = false;
        try
        {
            if (moved is not null) await moved.WriteZeroesAsync(offset, length, fua, ct);
            else
            {
                const int Step = 1 << 20;
                var zeros = new byte[(int)Math.Min(length, Step)];
                for (long done = 0; done < length;)
                {
                    int n = (int)Math.Min(Step, length - done);
                    await cache.WriteAsync(arrayNumber, ArraySector(offset + done), zeros.AsMemory(0, n), fua, ct);
                    done += n;
                }
                await AcknowledgeAsync(ct);
            }
            ok = true;
        }
        finally { Exit(moved is null, ok); }
    }

    /// <summary>TRIM through the cache is a zero write: the cache must not keep older data for the range.</summary>
    public ValueTask TrimAsync(long offset, long length, CancellationToken ct = default) => WriteZeroesAsync(offset, length, false, ct);

    public async ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken ct = default)
    {
        var moved = await EnterAsync();
        bool ok = false;
        try
        {
            if (moved is not null)
            {
                var forwarded = await moved.GetAllocationAsync(offset, length, ct);
                ok = true;
                return forwarded;
            }
            var extents = await Volume.GetAllocationAsync(offset, length, ct);
            // Data still in the cache is allocated whatever the drives say.
            var result = new List<AllocationExtent>();
            long at = offset;
            foreach (var e in extents)
            {
                for (long b = at; b < at + e.Length;)
                {
                    long blockEnd = Math.Min(at + e.Length, (b / Units.BlockBytes + 1) * Units.BlockBytes);
                    long elementLba = ArraySector(b / Units.SectorBytes * Units.SectorBytes) / WriteBackCache.SectorsPerElement * WriteBackCache.SectorsPerElement;
                    var flags = e.Flags != AllocationFlags.None && cache.IsCached(arrayNumber, elementLba) ? AllocationFlags.None : e.Flags;
                    if (result.Count > 0 && result[^1].Flags == flags) result[^1] = result[^1] with { Length = result[^1].Length + (blockEnd - b) };
                    else result.Add(new AllocationExtent(blockEnd - b, flags));
                    b = blockEnd;
                }
                at += e.Length;
            }
            ok = true;
            return result;
        }
        finally { Exit(moved is null, ok); }
    }
}

/// <summary>A volume whose array was deleted while requests to it were held: they fail with an I/O error.</summary>
public sealed class GoneVolume(string name, long sizeBytes) : IBlockVolume
{
    public string Name { get; } = name;
    public long SizeBytes { get; } = sizeBytes;
    public bool ReadOnly => false;
    BlockIoException Gone() => new(BlockErrorKind.Io, $"volume '{Name}' was deleted with its array");
    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default) => ValueTask.FromException(Gone());
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken ct = default) => ValueTask.FromException(Gone());
    public ValueTask FlushAsync(CancellationToken ct = default) => ValueTask.FromException(Gone());
    public ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken ct = default) => ValueTask.FromException(Gone());
    public ValueTask TrimAsync(long offset, long length, CancellationToken ct = default) => ValueTask.FromException(Gone());
    public ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken ct = default) =>
        ValueTask.FromException<IReadOnlyList<AllocationExtent>>(Gone());
}
