using System.Collections.Concurrent;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

namespace Duet.Cli.Tests;

/// <summary>
/// AW-6, the graceful power-fail window, with both controllers in one process behind one shelf (as
/// <see cref="ControllerTakeoverInProcessTests"/>): under a write load the window ends within its bound
/// (on virtual time, even with work that can never finish), no new host command starts, the dirty cache
/// stays in NVRAM instead of being destaged, neither controller takes the other over when the pair
/// fails, and the next start replays the NVRAM, settles the logged stripes and serves every
/// acknowledged write. A controller powering down alone is taken over by its peer as soon as it is done.
/// </summary>
[Trait("Claim", "AW-6")]
public sealed class PowerFailInProcessTests(Xunit.Abstractions.ITestOutputHelper log)
{
    const long DriveBytes = 64L << 20;
    const long VolumeBytes = 16L << 20;
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000d0ea");
    static readonly NvramLayout Layout = NvramLayout.For(16L << 20);

    [Fact]
    public async Task OnVirtualTimeThePairsWindowEndsWithinItsBoundEvenWithWorkThatNeverFinishes_AndARestartServesEveryAcknowledgedWrite()
    {
        var time = new ManualTimeProvider();
        var window = TimeSpan.FromSeconds(5);
        var gate = new DriveGate();
        // arr0 (A's) sits on d0..d2, behind the gate: closed, its drives take requests and never answer.
        var shelf = await ShelfAsync((name, drive) => name is "d0" or "d1" or "d2" ? new GatedDrive(drive, gate) : drive);
        var stores = (A: NvramStore.For(Layout, "nvram-A"), B: NvramStore.For(Layout, "nvram-B"));
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, time);
        // A destages whatever is dirty at once (so a round is writing when the drives stop answering); B keeps
        // its writes dirty (no watermark reached, and virtual time does not reach the idle delay).
        var (a, portA) = await StartAsync("A", 1, shelf, stores.A, linkA, time, window, o => o with { DestageStartFraction = 0.001, DestageStopFraction = 0 });
        var (b, portB) = await StartAsync("B", 2, shelf, stores.B, linkB, time, window);
        var expected = new Dictionary<(string Volume, long Offset), byte[]>();
        PowerFailReport ra, rb;
        try
        {
            await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy, "the pair to form");
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            Assert.True(b.Volumes.TryGetVolume("vol1", out var vol1));
            for (int i = 0; i < 8; i++) await WriteAsync(vol0, i * 65536L, 65536, seed: i, expected);
            for (int i = 0; i < 8; i++) await WriteAsync(vol1, i * 65536L, 65536, seed: 100 + i, expected);
            await Until(() => a.Cache.DirtyCount == 0, "A to destage what it had");

            // The drives of arr0 stop answering: A's next destage round hangs in them, a read of data not in
            // the cache too. Writes are still acknowledged (mirrored, write-back).
            gate.Close();
            for (int i = 8; i < 16; i++) await WriteAsync(vol0, i * 65536L, 65536, seed: i, expected);
            await Until(() => gate.Held > 0, "a destage round of A to hang in arr0's drives");
            var stuckRead = vol0.ReadAsync(VolumeBytes - 65536, new byte[65536]).AsTask();
            await Until(() => a.HostCommands.InFlight == 1, "the read to be in flight");
            int dirtyB = b.Cache.DirtyCount;
            Assert.True(dirtyB > 0);

            // The power fails for the pair: A is told, B hears it from A.
            var pa = a.PowerFailAsync(PowerFailScope.Pair);
            await Until(() => b.PowerFailCompletion is not null && b.HostCommands.IsClosed, "B to begin its own window");
            var pb = b.PowerFailCompletion!;
            // No new host command starts from now on.
            var refused = await Assert.ThrowsAsync<BlockIoException>(async () => await vol1.WriteAsync(0, new byte[4096], fua: false));
            Assert.Equal(BlockErrorKind.Unavailable, refused.Kind);
            // Virtual time runs to the end of the window and stops there: both windows must end by then.
            var step = TimeSpan.FromMilliseconds(10);
            for (var advanced = TimeSpan.Zero; advanced < window && !(pa.IsCompleted && pb.IsCompleted); advanced += step)
            {
                time.Advance(step);
                await Task.Delay(2);
            }
            await Task.WhenAll(pa, pb).WaitAsync(TimeSpan.FromSeconds(30));
            ra = await pa;
            rb = await pb;
            log.WriteLine(Program.DescribePowerFail(ra));
            log.WriteLine(Program.DescribePowerFail(rb));

            // A ran out of window: the read never finished, nor the destage round; it stopped anyway, with its
            // dirty elements in NVRAM and the round's records in its write log.
            Assert.Equal(("A", "pair"), (ra.Controller, ra.Scope));
            Assert.True(ra.WindowExpired);
            Assert.Equal((1, 0, 0, 1), (ra.HostCommandsInFlight, ra.HostCommandsFinished, ra.HostCommandsFailed, ra.HostCommandsUnfinished));
            Assert.False(ra.DestageStopped);
            Assert.False(ra.DrivesFlushed);
            Assert.True(ra.DirtyElementsKept > 0);
            Assert.True(ra.LogRecordsLeft > 0);
            Assert.InRange(ra.ElapsedMs, window.TotalMilliseconds * 3 / 4, window.TotalMilliseconds);
            Assert.False(stuckRead.IsCompleted);
            // B had nothing in flight: it stopped destaging at once and kept every dirty element.
            Assert.Equal(("B", "pair"), (rb.Controller, rb.Scope));
            Assert.False(rb.WindowExpired);
            Assert.Equal((0, 0), (rb.HostCommandsInFlight, rb.HostCommandsUnfinished));
            Assert.True(rb.HostCommandsRefused >= 1);
            Assert.True(rb.DestageStopped && rb.DrivesFlushed && rb.NvramSynced);
            Assert.Equal(dirtyB, rb.DirtyElementsKept);
            Assert.InRange(rb.ElapsedMs, 0, window.TotalMilliseconds);
            // The pair failed together: nobody took anybody over.
            Assert.Equal((0L, 0L), (a.Takeovers, b.Takeovers));
            Assert.False(shelf.Status().Port("A").Fenced || shelf.Status().Port("B").Fenced);
        }
        finally
        {
            // The power is gone: nothing of the old controllers reaches a drive again; what hung fails unperformed.
            portA.PathLost = () => true;
            portB.PathLost = () => true;
            gate.CutPower();
        }

        // What each window left dirty is in its NVRAM, for the next start.
        Assert.Equal(ra.DirtyElementsKept, DirtyInNvram(stores.A, "A"));
        Assert.Equal(rb.DirtyElementsKept, DirtyInNvram(stores.B, "B"));

        // The next start, on real time: each replays its NVRAM, settles its logged stripes, serves everything acknowledged.
        var (linkA2, linkB2) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var (a2, _) = await StartAsync("A", 3, shelf, stores.A, linkA2, TimeProvider.System, window);
        var (b2, _) = await StartAsync("B", 4, shelf, stores.B, linkB2, TimeProvider.System, window);
        try
        {
            Assert.Equal(ra.LogRecordsLeft, a2.RecoveredWritesSettled);
            await VerifyAsync(a2, expected);
            await VerifyAsync(b2, expected);
            await a2.Cache.DrainAsync();
            var scrub = new ScrubResult();
            await a2.Arrays.ServedArrays.Single(r => r.Name == "arr0").ScrubAsync(false, scrub, new PassProgress(), default);
            Assert.Equal((0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches));
        }
        finally
        {
            await a2.DisposeAsync();
            await b2.DisposeAsync();
        }
    }

    [Fact]
    public async Task UnderAWriteLoadThePairsWindowFinishesItsHostCommandsKeepsTheDirtyCacheInNvram_AndARestartServesEveryAcknowledgedWrite()
    {
        var shelf = await ShelfAsync();
        var stores = (A: NvramStore.For(Layout, "nvram-A"), B: NvramStore.For(Layout, "nvram-B"));
        var window = TimeSpan.FromSeconds(5);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var (a, _) = await StartAsync("A", 1, shelf, stores.A, linkA, TimeProvider.System, window);
        var (b, _) = await StartAsync("B", 2, shelf, stores.B, linkB, TimeProvider.System, window);
        var journal = new Journal();
        PowerFailReport ra, rb;
        try
        {
            await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && a.HoldsLease && b.HoldsLease, "the pair to form");
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            Assert.True(b.Volumes.TryGetVolume("vol1", out var vol1));
            Assert.True(a.Volumes.TryGetVolume("vol1", out var vol1ViaA)); // forwarded to B
            using var stop = new CancellationTokenSource();
            var load = Task.WhenAll(
                journal.RunAsync("vol0", vol0, writers: 4, seed: 1, stop.Token),
                journal.RunAsync("vol1", vol1, writers: 4, seed: 2, stop.Token),
                journal.RunAsync("vol1", vol1ViaA, writers: 2, seed: 3, stop.Token, firstBlock: 2048));
            await Until(() => journal.Acknowledged > 300, "the load to get going");

            ra = await a.PowerFailAsync(PowerFailScope.Pair);
            Assert.NotNull(b.PowerFailCompletion);
            rb = await b.PowerFailCompletion!;
            stop.Cancel();
            await load;
            log.WriteLine(Program.DescribePowerFail(ra));
            log.WriteLine(Program.DescribePowerFail(rb));
            log.WriteLine($"{journal.Acknowledged} writes acknowledged, {journal.Refused} refused");

            foreach (var r in new[] { ra, rb })
            {
                Assert.Equal("pair", r.Scope);
                Assert.False(r.WindowExpired, $"{r.Controller}'s window ran out");
                Assert.InRange(r.ElapsedMs, 0, r.WindowMs);
                // Every host command in flight at the notice finished or failed; none was left running.
                Assert.Equal(r.HostCommandsInFlight, r.HostCommandsFinished + r.HostCommandsFailed);
                Assert.Equal(0, r.HostCommandsUnfinished);
                Assert.True(r.DestageStopped && r.DrivesFlushed && r.NvramSynced && r.PeerTold);
                // Nothing left half-written on the drives: every record was cleared by the flush.
                Assert.Equal(0, r.LogRecordsLeft);
            }
            Assert.True(ra.DirtyElementsKept + rb.DirtyElementsKept > 0, "the load left dirty data in the caches");
            Assert.True(journal.Refused > 0, "writes sent after the notice were refused, not started");
            Assert.Equal((0L, 0L), (a.Takeovers, b.Takeovers));
            Assert.False(shelf.Status().Port("A").Fenced || shelf.Status().Port("B").Fenced);
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }

        // The dirty cache was not destaged on the way down (nor by the disposal after it): it is in NVRAM, for the next start.
        Assert.Equal(ra.DirtyElementsKept, DirtyInNvram(stores.A, "A"));
        Assert.Equal(rb.DirtyElementsKept, DirtyInNvram(stores.B, "B"));
        var (linkA2, linkB2) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var (a2, _) = await StartAsync("A", 3, shelf, stores.A, linkA2, TimeProvider.System, window);
        var (b2, _) = await StartAsync("B", 4, shelf, stores.B, linkB2, TimeProvider.System, window);
        try
        {
            Assert.True(a2.Volumes.TryGetVolume("vol0", out var vol0));
            Assert.True(b2.Volumes.TryGetVolume("vol1", out var vol1));
            Assert.Empty(await journal.VerifyAsync(new Dictionary<string, IBlockVolume> { ["vol0"] = vol0, ["vol1"] = vol1 }));
        }
        finally
        {
            await a2.DisposeAsync();
            await b2.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task AControllerPoweringDownAloneIsTakenOverByItsPeerAsSoonAsItsWindowEnds()
    {
        var shelf = await ShelfAsync();
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var (a, _) = await StartAsync("A", 1, shelf, NvramStore.For(Layout, "nvram-A"), linkA, TimeProvider.System, TimeSpan.FromSeconds(5));
        var (b, _) = await StartAsync("B", 2, shelf, NvramStore.For(Layout, "nvram-B"), linkB, TimeProvider.System, TimeSpan.FromSeconds(5));
        var expected = new Dictionary<(string Volume, long Offset), byte[]>();
        try
        {
            await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && a.HoldsLease, "the pair to form");
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            for (int i = 0; i < 16; i++) await WriteAsync(vol0, i * 65536L, 65536, seed: i, expected);

            var ra = await a.PowerFailAsync(PowerFailScope.Controller);
            log.WriteLine(Program.DescribePowerFail(ra));
            Assert.Equal("controller", ra.Scope);
            Assert.False(ra.WindowExpired);
            Assert.True(ra.PeerTold);
            Assert.True(ra.DirtyElementsKept > 0);
            // A alone: B goes on, takes arr0 over at A's "done" (not after a heartbeat timeout), and adopts what
            // A kept dirty from its own copy.
            await Until(() => b.LastTakeover is not null, "B to take A over");
            Assert.Contains("power-fail window", b.LastTakeover!.Reason);
            Assert.Equal(["arr0"], b.LastTakeover.Arrays);
            Assert.True(b.LastTakeover.AdoptedElements >= ra.DirtyElementsKept);
            Assert.True(shelf.Status().Port("A").Fenced);
            Assert.False(b.IsPoweringDown);
            await VerifyAsync(b, expected);
            await a.DisposeAsync();
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    // ---- the pair and its shelf -------------------------------------------------------------

    /// <summary>Six drives: arr0 (RAID 5, d0..d2, A's) with vol0, arr1 (RAID 5, d3..d5, B's) with vol1.</summary>
    static async Task<Duet.Shelf.Shelf> ShelfAsync(Func<string, IBlockDevice, IBlockDevice>? wrap = null)
    {
        var bay = new MemoryShelf();
        for (int i = 0; i < 6; i++) bay.Insert($"d{i}", DriveBytes);
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "A" }))
        {
            await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await setup.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "B"));
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", VolumeBytes));
        }
        await using (var setup = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = bay, Controller = "B" }))
            await setup.CreateVolumeAsync(new CreateVolumeRequest("vol1", "arr1", VolumeBytes));
        return new Duet.Shelf.Shelf(bay, new MemoryShelfStateStore(), wrap);
    }

    static async Task<(PairController Controller, LocalShelfPort Port)> StartAsync(string name, ulong session, Duet.Shelf.Shelf shelf, NvramStore store, IIclLink link,
        TimeProvider time, TimeSpan window, Func<Duet.Cache.CacheOptions, Duet.Cache.CacheOptions>? cache = null)
    {
        var port = (LocalShelfPort)shelf.Port(name);
        var claims = new ShelfClaims(name);
        Assert.True(await PairController.JoinShelfAsync(port, session, time, claims));
        var arrays = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = port, Controller = name, MayServe = claims.MayServe, Time = time });
        var nvram = NvramFile.OpenOrCreate(store, Layout, name, Pair);
        var c = new PairController(new ControllerCoreOptions
        {
            Name = name, Session = session, Shelf = port, Claims = claims, Time = time, PowerFailWindow = window, ConfigureCache = cache,
        }, arrays, nvram, link);
        await c.StartAsync();
        return (c, port);
    }

    /// <summary>The dirty elements a start would replay from <paramref name="store"/>'s region 1 (the last element
    /// of each address, in sequence order).</summary>
    static int DirtyInNvram(NvramStore store, string name)
    {
        using var nvram = NvramFile.OpenOrCreate(store, Layout, name, Pair);
        var last = new Dictionary<(byte, long), bool>();
        foreach (var (_, d) in nvram.Own.ReplayOrder()) last[(d.ArrayNumber, d.ArrayLba)] = d.Dirty;
        return last.Values.Count(dirty => dirty);
    }

    static async Task WriteAsync(IBlockVolume volume, long offset, int length, int seed, Dictionary<(string, long), byte[]> expected)
    {
        var data = new byte[length];
        new System.Random(seed).NextBytes(data);
        await volume.WriteAsync(offset, data, fua: false);
        expected[(volume.Name, offset)] = data;
    }

    static async Task VerifyAsync(PairController c, Dictionary<(string Volume, long Offset), byte[]> expected)
    {
        foreach (var ((name, offset), data) in expected)
        {
            if (!c.Arrays.TryGetServedVolume(name, out _)) continue;
            Assert.True(c.Volumes.TryGetVolume(name, out var volume));
            var back = new byte[data.Length];
            await volume.ReadAsync(offset, back);
            Assert.True(data.AsSpan().SequenceEqual(back), $"{name} at {offset}: not the acknowledged data");
        }
    }

    static async Task Until(Func<bool> condition, string what)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            if (DateTime.UtcNow > until) throw new TimeoutException($"waited 30 s for {what}");
            await Task.Delay(5);
        }
    }

    /// <summary>
    /// What the controllers acknowledged: writers each own a disjoint set of 4 KiB blocks, write a pattern
    /// naming (volume, block, sequence), and record it once acknowledged; a writer stops at its first error
    /// (a write after the notice is refused). Every block must then hold its last acknowledged pattern, or
    /// that of the one write to it that was in flight and never answered.
    /// </summary>
    sealed class Journal
    {
        const int BlockBytes = 4096;
        readonly ConcurrentDictionary<(string Volume, long Block), (long Acked, long InFlight)> _blocks = new();
        long _sequence, _acks, _refused;

        public long Acknowledged => Interlocked.Read(ref _acks);
        public long Refused => Interlocked.Read(ref _refused);

        static byte[] Pattern(string volume, long block, long sequence)
        {
            var data = new byte[BlockBytes];
            new System.Random(HashCode.Combine(volume.Length, block, sequence)).NextBytes(data);
            System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(data, block);
            System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(data.AsSpan(8), sequence);
            return data;
        }

        public Task RunAsync(string name, IBlockVolume volume, int writers, int seed, CancellationToken stop, long firstBlock = 0) =>
            Task.WhenAll(Enumerable.Range(0, writers).Select(w => Task.Run(async () =>
            {
                var random = new System.Random(seed * 100 + w);
                const int BlocksPerWriter = 256;
                while (!stop.IsCancellationRequested)
                {
                    long block = firstBlock + random.Next(BlocksPerWriter) * writers + w;
                    long sequence = Interlocked.Increment(ref _sequence);
                    _blocks.AddOrUpdate((name, block), (-1, sequence), (_, v) => (v.Acked, sequence));
                    try { await volume.WriteAsync(block * BlockBytes, Pattern(name, block, sequence), fua: false); }
                    catch (BlockIoException)
                    {
                        Interlocked.Increment(ref _refused);
                        return;
                    }
                    _blocks[(name, block)] = (sequence, -1);
                    Interlocked.Increment(ref _acks);
                }
            })));

        public async Task<List<string>> VerifyAsync(IReadOnlyDictionary<string, IBlockVolume> volumes)
        {
            var problems = new List<string>();
            foreach (var ((name, block), (acked, inFlight)) in _blocks)
            {
                var data = new byte[BlockBytes];
                await volumes[name].ReadAsync(block * BlockBytes, data);
                if (inFlight > acked && data.AsSpan().SequenceEqual(Pattern(name, block, inFlight))) continue;
                if (acked < 0 || data.AsSpan().SequenceEqual(Pattern(name, block, acked))) continue;
                problems.Add($"{name} block {block}: acknowledged sequence {acked} (in flight {inFlight}) not found");
            }
            return problems;
        }
    }

    /// <summary>Drives behind it stop answering while it is closed; a power cut fails what it holds, unperformed.</summary>
    sealed class DriveGate
    {
        readonly Lock _lock = new();
        readonly List<TaskCompletionSource> _held = [];
        bool _closed;

        public int Held { get { lock (_lock) return _held.Count; } }

        public void Close() { lock (_lock) _closed = true; }

        public void CutPower()
        {
            List<TaskCompletionSource> held;
            lock (_lock)
            {
                _closed = false;
                held = [.. _held];
                _held.Clear();
            }
            foreach (var h in held) h.TrySetException(new BlockIoException(BlockErrorKind.PathDown, "the power is off"));
        }

        public Task PassAsync()
        {
            lock (_lock)
            {
                if (!_closed) return Task.CompletedTask;
                var h = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _held.Add(h);
                return h.Task;
            }
        }
    }

    sealed class GatedDrive(IBlockDevice inner, DriveGate gate) : IBlockDevice
    {
        public string Name => inner.Name;
        public long BlockCount => inner.BlockCount;

        public async ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default)
        {
            await gate.PassAsync();
            await inner.ReadAsync(lba, destination, ct);
        }

        public async ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default)
        {
            await gate.PassAsync();
            await inner.WriteAsync(lba, source, fua, ct);
        }

        public async ValueTask FlushAsync(CancellationToken ct = default)
        {
            await gate.PassAsync();
            await inner.FlushAsync(ct);
        }

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
