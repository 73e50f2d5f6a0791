using Duet.Drives;
using Duet.Drives.Faults;

namespace Duet.Core.Tests;

[Trait("Area", "Drives")]
public class FaultyDriveTests
{
    const int B = Units.BlockBytes;
    static readonly TimeSpan Ms = TimeSpan.FromMilliseconds(1);

    static FaultyDrive Faulty(FaultOptions options, TimeProvider? time = null, long blockCount = 64) =>
        new(new MemoryDrive("d0", blockCount), options, time ?? new ManualTimeProvider());

    static byte[] Data(int blocks, DeterministicRandom random)
    {
        var data = new byte[blocks * B];
        random.NextBytes(data);
        return data;
    }

    static byte[] Block(IBlockDevice drive, long lba)
    {
        var block = new byte[B];
        var pending = drive.ReadAsync(lba, block);
        Assert.True(pending.IsCompletedSuccessfully); // only used on MemoryDrive, which is synchronous
        return block;
    }

    static async Task<BlockIoException> Throws(Func<ValueTask> request) =>
        await Assert.ThrowsAsync<BlockIoException>(() => request().AsTask());

    // (a) Failed drive

    [Fact]
    public async Task FailedDriveRejectsEveryRequestAsUnavailableUntilHealed()
    {
        await using var drive = Faulty(new FaultOptions { Seed = 1 });
        var data = Data(1, new DeterministicRandom(1));
        await drive.WriteAsync(3, data);
        drive.Fail();
        Assert.True(drive.IsFailed);
        Assert.Equal(BlockErrorKind.Unavailable, (await Throws(() => drive.ReadAsync(3, new byte[B]))).Kind);
        Assert.Equal(BlockErrorKind.Unavailable, (await Throws(() => drive.WriteAsync(3, new byte[B]))).Kind);
        Assert.Equal(BlockErrorKind.Unavailable, (await Throws(() => drive.FlushAsync())).Kind);
        Assert.Equal(data, Block(drive.Inner, 3)); // the rejected write did not reach the drive
        Assert.Equal(3, drive.Counters.Unavailable);

        drive.Heal();
        var back = new byte[B];
        await drive.ReadAsync(3, back);
        Assert.Equal(data, back);
        await drive.FlushAsync();
    }

    [Fact]
    public async Task DriveCanStartFailed()
    {
        await using var drive = Faulty(new FaultOptions { StartFailed = true });
        Assert.Equal(BlockErrorKind.Unavailable, (await Throws(() => drive.ReadAsync(0, new byte[B]))).Kind);
    }

    [Fact]
    public async Task RequestDelayedWhenTheDriveFailsIsRejected()
    {
        var time = new ManualTimeProvider();
        await using var drive = Faulty(new FaultOptions { LatencyFixed = 10 * Ms }, time);
        var write = drive.WriteAsync(0, Data(1, new DeterministicRandom(2))).AsTask();
        drive.Fail();
        time.Advance(10 * Ms);
        var e = await Assert.ThrowsAsync<BlockIoException>(() => write);
        Assert.Equal(BlockErrorKind.Unavailable, e.Kind);
        Assert.Equal(new byte[B], Block(drive.Inner, 0));
    }

    [Fact]
    public async Task EdgeValidationComesBeforeAnyFault()
    {
        await using var drive = Faulty(new FaultOptions { StartFailed = true });
        Assert.Equal(BlockErrorKind.OutOfRange, (await Throws(() => drive.ReadAsync(64, new byte[B]))).Kind);
        Assert.Equal(BlockErrorKind.Invalid, (await Throws(() => drive.WriteAsync(0, new byte[100]))).Kind);
    }

    // (b) Medium errors

    [Fact]
    public async Task BadBlocksFailReadsAndWritesWithTheirLbaAndWriteNothing()
    {
        await using var drive = Faulty(new FaultOptions { BadBlocks = new HashSet<long> { 5, 6 } });
        var e = await Throws(() => drive.ReadAsync(4, new byte[4 * B]));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
        Assert.Equal(5, e.Lba);
        await drive.ReadAsync(0, new byte[5 * B]); // blocks 0..4 are fine
        await drive.ReadAsync(7, new byte[B]);

        var data = Data(4, new DeterministicRandom(3));
        e = await Throws(() => drive.WriteAsync(3, data));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
        Assert.Equal(5, e.Lba);
        Assert.Equal(new byte[B], Block(drive.Inner, 3));

        drive.AddBadBlock(0);
        Assert.Equal(0, (await Throws(() => drive.ReadAsync(0, new byte[B]))).Lba);
        drive.RemoveBadBlock(5);
        Assert.Equal(6, (await Throws(() => drive.ReadAsync(5, new byte[2 * B]))).Lba);
        Assert.Equal(3, drive.Counters.MediumReadErrors);
        Assert.Equal(1, drive.Counters.MediumWriteErrors);
    }

    [Fact]
    public async Task BadBlocksCanFailReadsOnly()
    {
        await using var drive = Faulty(new FaultOptions { BadBlocks = new HashSet<long> { 2 }, BadBlocksFailWrites = false });
        var data = Data(1, new DeterministicRandom(4));
        await drive.WriteAsync(2, data);
        Assert.Equal(data, Block(drive.Inner, 2));
        Assert.Equal(BlockErrorKind.Medium, (await Throws(() => drive.ReadAsync(2, new byte[B]))).Kind);
    }

    [Fact]
    public async Task RandomMediumErrorsHitTheConfiguredFractionAtAnLbaInTheRequest()
    {
        await using var drive = Faulty(new FaultOptions { Seed = 11, ReadMediumErrorProbability = 0.3 });
        int failures = 0;
        for (int i = 0; i < 1000; i++)
        {
            long lba = i % 60;
            try
            {
                await drive.ReadAsync(lba, new byte[4 * B]);
            }
            catch (BlockIoException e)
            {
                Assert.Equal(BlockErrorKind.Medium, e.Kind);
                Assert.InRange(e.Lba, lba, lba + 3);
                failures++;
            }
        }
        Assert.InRange(failures, 240, 360);
        Assert.Equal(failures, drive.Counters.MediumReadErrors);
        Assert.Equal(1000, drive.Counters.Requests);
        for (int i = 0; i < 100; i++) await drive.WriteAsync(0, new byte[B]); // writes are unaffected
    }

    [Fact]
    public async Task RandomWriteMediumErrorLeavesTheBlocksUnchanged()
    {
        await using var drive = Faulty(new FaultOptions { WriteMediumErrorProbability = 1 });
        var e = await Throws(() => drive.WriteAsync(10, Data(2, new DeterministicRandom(5))));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
        Assert.InRange(e.Lba, 10, 11);
        Assert.Equal(new byte[B], Block(drive.Inner, 10));
        Assert.Equal(new byte[B], Block(drive.Inner, 11));
        await drive.ReadAsync(10, new byte[B]);
    }

    // (c) Latency

    [Fact]
    public async Task LatencyCompletesRequestsOnlyWhenVirtualTimeAdvances()
    {
        var time = new ManualTimeProvider();
        await using var drive = Faulty(new FaultOptions { LatencyFixed = 10 * Ms }, time);
        var data = Data(1, new DeterministicRandom(6));
        var write = drive.WriteAsync(1, data).AsTask();
        var flush = drive.FlushAsync().AsTask();
        Assert.Equal(2, time.ArmedTimerCount);
        time.Advance(9 * Ms);
        Assert.False(write.IsCompleted);
        Assert.False(flush.IsCompleted);
        Assert.Equal(new byte[B], Block(drive.Inner, 1)); // not yet written
        time.Advance(1 * Ms);
        await write;
        await flush;
        Assert.Equal(data, Block(drive.Inner, 1));

        var back = new byte[B];
        var read = drive.ReadAsync(1, back).AsTask();
        Assert.False(read.IsCompleted);
        time.Advance(10 * Ms);
        await read;
        Assert.Equal(data, back);
        Assert.Equal(3, drive.Counters.Delayed);
    }

    [Fact]
    public async Task JitterAddsARandomLatencyWithinItsBound()
    {
        var time = new ManualTimeProvider();
        await using var drive = Faulty(new FaultOptions { Seed = 3, LatencyFixed = 5 * Ms, LatencyJitterMax = 10 * Ms }, time);
        var latencies = new HashSet<TimeSpan>();
        for (int i = 0; i < 50; i++)
        {
            var read = drive.ReadAsync(0, new byte[B]).AsTask();
            var due = time.NextDueUtc;
            Assert.NotNull(due);
            var latency = due.Value - time.GetUtcNow();
            Assert.InRange(latency, 5 * Ms, 15 * Ms);
            latencies.Add(latency);
            time.AdvanceTo(due.Value - TimeSpan.FromTicks(1));
            Assert.False(read.IsCompleted);
            time.AdvanceTo(due.Value);
            await read;
        }
        Assert.True(latencies.Count > 40, $"only {latencies.Count} distinct latencies");
    }

    [Fact]
    public async Task CancellingADelayedRequestCancelsItWithoutTouchingTheDrive()
    {
        var time = new ManualTimeProvider();
        await using var drive = Faulty(new FaultOptions { LatencyFixed = TimeSpan.FromSeconds(1) }, time);
        using var cts = new CancellationTokenSource();
        var write = drive.WriteAsync(0, Data(1, new DeterministicRandom(7)), cancellationToken: cts.Token).AsTask();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => write);
        Assert.Equal(0, time.ArmedTimerCount);
        Assert.Equal(new byte[B], Block(drive.Inner, 0));
    }

    // (d) Torn writes

    [Fact]
    public async Task TornWriteLandsAProperSubsetOfItsBlocksAndFailsWithIo()
    {
        var old = Data(8, new DeterministicRandom(100));
        var fresh = Data(8, new DeterministicRandom(101));
        int partial = 0;
        for (ulong seed = 0; seed < 20; seed++)
        {
            await using var drive = Faulty(new FaultOptions { Seed = seed, TornWriteProbability = 1 });
            await drive.Inner.WriteAsync(0, old);
            var e = await Throws(() => drive.WriteAsync(0, fresh));
            Assert.Equal(BlockErrorKind.Io, e.Kind);
            Assert.Equal(0, e.Lba);
            int landed = CountLanded(drive.Inner, old, fresh);
            Assert.InRange(landed, 0, 7);
            if (landed > 0) partial++;
            Assert.Equal(1, drive.Counters.TornWrites);
            Assert.Equal(0, drive.Counters.SilentTornWrites);
        }
        Assert.True(partial >= 10, $"only {partial} of 20 torn writes landed any block");
    }

    [Fact]
    public async Task SilentTornWriteReportsSuccess()
    {
        var old = Data(8, new DeterministicRandom(102));
        var fresh = Data(8, new DeterministicRandom(103));
        await using var drive = Faulty(new FaultOptions { Seed = 4, TornWriteProbability = 1, TornWriteSilent = true });
        await drive.Inner.WriteAsync(0, old);
        await drive.WriteAsync(0, fresh);
        Assert.InRange(CountLanded(drive.Inner, old, fresh), 0, 7);
        Assert.Equal(1, drive.Counters.SilentTornWrites);
    }

    [Fact]
    public async Task SingleBlockWritesAreNeverTornAndUntornWritesLandWhole()
    {
        await using var drive = Faulty(new FaultOptions { Seed = 5, TornWriteProbability = 0.5, TornWriteSilent = true });
        var random = new DeterministicRandom(8);
        for (int i = 0; i < 100; i++)
        {
            var data = Data(1, random);
            await drive.WriteAsync(i % 64, data);
            Assert.Equal(data, Block(drive.Inner, i % 64));
        }
        Assert.Equal(0, drive.Counters.TornWrites);
        int whole = 0;
        for (int i = 0; i < 100; i++)
        {
            var old = Data(4, random);
            var fresh = Data(4, random);
            await drive.Inner.WriteAsync(0, old);
            long tornBefore = drive.Counters.TornWrites;
            await drive.WriteAsync(0, fresh);
            int landed = CountLanded(drive.Inner, old, fresh);
            if (drive.Counters.TornWrites == tornBefore) { Assert.Equal(4, landed); whole++; }
            else Assert.InRange(landed, 0, 3);
        }
        Assert.InRange(whole, 30, 70);
    }

    static int CountLanded(IBlockDevice inner, byte[] old, byte[] fresh)
    {
        int landed = 0;
        for (int i = 0; i < old.Length / B; i++)
        {
            var block = Block(inner, i);
            bool isNew = block.AsSpan().SequenceEqual(fresh.AsSpan(i * B, B));
            bool isOld = block.AsSpan().SequenceEqual(old.AsSpan(i * B, B));
            Assert.True(isNew || isOld, $"block {i} is neither its old nor its new content");
            if (isNew) landed++;
        }
        return landed;
    }

    // (e) Power cut

    [Fact]
    public async Task PowerCutKeepsFlushedAndFuaWrites()
    {
        await using var drive = Faulty(new FaultOptions { Seed = 6, PowerCutKeepProbability = 0 });
        var random = new DeterministicRandom(9);
        var flushed = Data(2, random);
        var fua = Data(1, random);
        var lost = Data(1, random);
        await drive.WriteAsync(0, flushed);
        await drive.FlushAsync();
        await drive.WriteAsync(2, fua, fua: true);
        await drive.WriteAsync(3, lost);
        Assert.Equal(1, drive.UnflushedBlockCount);
        Assert.Equal(1, await drive.PowerCutAsync());
        Assert.Equal(flushed[..B], Block(drive.Inner, 0));
        Assert.Equal(flushed[B..], Block(drive.Inner, 1));
        Assert.Equal(fua, Block(drive.Inner, 2));
        Assert.Equal(new byte[B], Block(drive.Inner, 3)); // the unflushed write is gone
        Assert.Equal(0, drive.UnflushedBlockCount);

        // The drive keeps working, and what survived a cut is flushed.
        await drive.WriteAsync(3, lost);
        Assert.Equal(lost, Block(drive.Inner, 3));
        Assert.Equal(1, await drive.PowerCutAsync());
        Assert.Equal(new byte[B], Block(drive.Inner, 3));
        Assert.Equal(2, drive.Counters.PowerCuts);
        Assert.Equal(2, drive.Counters.BlocksRolledBack);
    }

    [Fact]
    public async Task DiscardingPowerCutDropsRequestsStillInFlight()
    {
        var time = new ManualTimeProvider();
        await using var drive = Faulty(new FaultOptions { Seed = 7, LatencyFixed = 10 * Ms, PowerCutKeepProbability = 1 }, time);
        var data = Data(1, new DeterministicRandom(8));
        var delayedWrite = drive.WriteAsync(4, data).AsTask();
        var delayedFlush = drive.FlushAsync().AsTask();
        Assert.Equal(0, await drive.PowerCutAsync(discardInFlight: true));
        time.Advance(10 * Ms);
        var e = await Assert.ThrowsAsync<BlockIoException>(() => delayedWrite);
        Assert.Equal(BlockErrorKind.Unavailable, e.Kind);
        Assert.Equal(BlockErrorKind.Unavailable, (await Assert.ThrowsAsync<BlockIoException>(() => delayedFlush)).Kind);
        Assert.Equal(new byte[B], Block(drive.Inner, 4)); // issued before the cut: never lands

        // Requests issued after the cut work as before.
        var after = drive.WriteAsync(4, data).AsTask();
        time.Advance(10 * Ms);
        await after;
        Assert.Equal(data, Block(drive.Inner, 4));
    }

    [Fact]
    public async Task PowerCutCanLeaveABlockAtAnyOfItsUnflushedVersions()
    {
        var random = new DeterministicRandom(10);
        var flushed = Data(1, random);
        var versions = Enumerable.Range(0, 4).Select(_ => Data(1, random)).ToArray();
        var outcomes = new HashSet<int>(); // -1: flushed content; i: versions[i]
        for (ulong seed = 0; seed < 200; seed++)
        {
            await using var drive = Faulty(new FaultOptions { Seed = seed });
            await drive.WriteAsync(7, flushed);
            await drive.FlushAsync();
            foreach (var v in versions) await drive.WriteAsync(7, v);
            await drive.PowerCutAsync();
            var block = Block(drive.Inner, 7);
            int outcome = block.AsSpan().SequenceEqual(flushed) ? -1 : Array.FindIndex(versions, v => v.AsSpan().SequenceEqual(block));
            Assert.True(outcome >= -1 && (outcome >= 0 || block.AsSpan().SequenceEqual(flushed)), $"seed {seed}: unexpected content");
            outcomes.Add(outcome);
        }
        Assert.Equal([-1, 0, 1, 2, 3], outcomes.Order());
    }

    [Fact]
    public async Task FuaWriteIsTheOldestVersionAPowerCutCanLeave()
    {
        var random = new DeterministicRandom(11);
        var v1 = Data(1, random);
        var v2 = Data(1, random);
        var v3 = Data(1, random);
        var outcomes = new HashSet<string>();
        for (ulong seed = 0; seed < 50; seed++)
        {
            await using var drive = Faulty(new FaultOptions { Seed = seed });
            await drive.WriteAsync(0, v1);
            await drive.WriteAsync(0, v2, fua: true);
            await drive.WriteAsync(0, v3);
            await drive.PowerCutAsync();
            var block = Block(drive.Inner, 0);
            if (block.AsSpan().SequenceEqual(v2)) outcomes.Add("v2");
            else if (block.AsSpan().SequenceEqual(v3)) outcomes.Add("v3");
            else Assert.Fail($"seed {seed}: a power cut lost a FUA write");
        }
        Assert.Equal(["v2", "v3"], outcomes.Order());
    }

    /// <summary>
    /// The power-cut property: after random writes (some FUA, some torn), flushes and cuts, every
    /// block equals either its content as of the last flush or one of the versions written since.
    /// A reference model tracks both; each seed is replayable.
    /// </summary>
    [Fact]
    public async Task AfterAPowerCutEveryBlockHoldsItsFlushedContentOrAVersionWrittenSince()
    {
        const int blockCount = 16;
        long keptNewest = 0, revertedToFlushed = 0, keptOlder = 0;
        for (ulong seed = 0; seed < 150; seed++)
        {
            var inner = new MemoryDrive("d", blockCount);
            await using var drive = new FaultyDrive(inner, new FaultOptions { Seed = seed, TornWriteProbability = 0.2, TornWriteSilent = true }, new ManualTimeProvider());
            var workload = new DeterministicRandom(seed ^ 0x5EED);
            var flushed = Enumerable.Range(0, blockCount).Select(_ => new byte[B]).ToArray();
            var since = Enumerable.Range(0, blockCount).Select(_ => new List<byte[]>()).ToArray();

            for (int round = 0; round < 3; round++)
            {
                for (int op = 0; op < 30; op++)
                {
                    if (workload.Chance(0.1))
                    {
                        await drive.FlushAsync();
                        for (int b = 0; b < blockCount; b++)
                        {
                            flushed[b] = Block(inner, b);
                            since[b].Clear();
                        }
                        continue;
                    }
                    int blocks = 1 + workload.Next(3);
                    long lba = workload.Next(blockCount - blocks + 1);
                    bool fua = workload.Chance(0.1);
                    var data = Data(blocks, workload);
                    await drive.WriteAsync(lba, data, fua);
                    for (int i = 0; i < blocks; i++)
                    {
                        int b = (int)lba + i;
                        var version = data[(i * B)..((i + 1) * B)];
                        if (!Block(inner, b).AsSpan().SequenceEqual(version)) continue; // torn away: never landed
                        if (fua) { flushed[b] = version; since[b].Clear(); }
                        else since[b].Add(version);
                    }
                }

                int expectedRolledBack = 0;
                int rolledBack = await drive.PowerCutAsync();
                for (int b = 0; b < blockCount; b++)
                {
                    var block = Block(inner, b);
                    bool isFlushed = block.AsSpan().SequenceEqual(flushed[b]);
                    int version = since[b].FindLastIndex(v => v.AsSpan().SequenceEqual(block));
                    Assert.True(isFlushed || version >= 0, $"seed {seed} round {round} block {b}: neither flushed content nor a version written since");
                    if (since[b].Count > 0)
                    {
                        if (version == since[b].Count - 1) keptNewest++;
                        else if (version >= 0) { keptOlder++; expectedRolledBack++; }
                        else { revertedToFlushed++; expectedRolledBack++; }
                    }
                    flushed[b] = block; // a power cut leaves the drive flushed
                    since[b].Clear();
                }
                Assert.Equal(expectedRolledBack, rolledBack);
            }
        }
        // The model must have seen every kind of outcome, or the property was tested vacuously.
        Assert.True(keptNewest > 100, $"kept newest {keptNewest}");
        Assert.True(revertedToFlushed > 100, $"reverted to flushed {revertedToFlushed}");
        Assert.True(keptOlder > 100, $"kept an older version {keptOlder}");
    }

    [Fact]
    public async Task PowerCutNeedsTracking()
    {
        await using var drive = Faulty(new FaultOptions { TrackUnflushedWrites = false });
        await drive.WriteAsync(0, new byte[B]);
        await Assert.ThrowsAsync<InvalidOperationException>(() => drive.PowerCutAsync().AsTask());
    }

    // Determinism

    [Fact]
    public async Task SameSeedAndRequestsGiveIdenticalOutcomesAndDifferentSeedsDiffer()
    {
        var a = await RunWorkload(faultSeed: 42, workloadSeed: 7);
        var b = await RunWorkload(faultSeed: 42, workloadSeed: 7);
        var c = await RunWorkload(faultSeed: 43, workloadSeed: 7);
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        // The workload exercised every fault kind (or equality would prove little).
        string all = string.Join('\n', a);
        foreach (var kind in new[] { "Medium@", "Io@", "Unavailable@", "cut", "delay" })
            Assert.Contains(kind, all);
    }

    static async Task<List<string>> RunWorkload(ulong faultSeed, ulong workloadSeed)
    {
        const int blockCount = 32;
        var time = new ManualTimeProvider();
        var inner = new MemoryDrive("d", blockCount);
        await using var drive = new FaultyDrive(inner, new FaultOptions
        {
            Seed = faultSeed,
            BadBlocks = new HashSet<long> { 30 },
            ReadMediumErrorProbability = 0.05,
            WriteMediumErrorProbability = 0.05,
            LatencyFixed = 1 * Ms,
            LatencyJitterMax = 5 * Ms,
            TornWriteProbability = 0.2,
        }, time);
        var workload = new DeterministicRandom(workloadSeed);
        var log = new List<string>();
        for (int i = 0; i < 400; i++)
        {
            int op = workload.Next(20);
            int blocks = 1 + workload.Next(4);
            long lba = workload.Next(blockCount - blocks + 1);
            var buffer = new byte[blocks * B];
            Task request;
            string what;
            if (op < 9) { workload.NextBytes(buffer); what = $"write {lba}+{blocks}"; request = drive.WriteAsync(lba, buffer).AsTask(); }
            else if (op < 16) { what = $"read {lba}+{blocks}"; request = drive.ReadAsync(lba, buffer).AsTask(); }
            else if (op < 18) { what = "flush"; request = drive.FlushAsync().AsTask(); }
            else if (op < 19) { what = "cut"; request = drive.PowerCutAsync().AsTask(); }
            else { what = drive.IsFailed ? "heal" : "fail"; if (drive.IsFailed) drive.Heal(); else drive.Fail(); request = Task.CompletedTask; }

            if (time.NextDueUtc is { } due)
            {
                what += $" delay {(due - time.GetUtcNow()).Ticks}";
                time.AdvanceTo(due);
            }
            try
            {
                await request;
                log.Add($"{what}: ok {(what.StartsWith("read", StringComparison.Ordinal) ? Crc32C.Compute(buffer) : 0):x8}");
            }
            catch (BlockIoException e)
            {
                log.Add($"{what}: {e.Kind}@{e.Lba}");
            }
        }
        drive.Heal();
        var contents = new byte[blockCount * B];
        await inner.ReadAsync(0, contents);
        log.Add($"contents {Crc32C.Compute(contents):x8}");
        log.Add($"counters {drive.Counters}");
        return log;
    }

    // Composition and configuration

    [Fact]
    public async Task DecoratorsStack()
    {
        var time = new ManualTimeProvider();
        var bottom = new FaultyDrive(new MemoryDrive("d", 8), new FaultOptions { BadBlocks = new HashSet<long> { 1 } }, time);
        await using var top = new FaultyDrive(bottom, new FaultOptions { LatencyFixed = 2 * Ms }, time);
        Assert.Equal("d", top.Name);
        Assert.Equal(8, top.BlockCount);
        var read = top.ReadAsync(0, new byte[2 * B]).AsTask();
        Assert.False(read.IsCompleted);
        time.Advance(2 * Ms);
        var e = await Assert.ThrowsAsync<BlockIoException>(() => read);
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
        Assert.Equal(1, e.Lba);
        Assert.Equal(1, bottom.Counters.MediumReadErrors);
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        var inner = new MemoryDrive("d", 8);
        var time = new ManualTimeProvider();
        Assert.Throws<ArgumentException>(() => new FaultyDrive(inner, new FaultOptions { TornWriteProbability = 1.5 }, time));
        Assert.Throws<ArgumentException>(() => new FaultyDrive(inner, new FaultOptions { ReadMediumErrorProbability = double.NaN }, time));
        Assert.Throws<ArgumentException>(() => new FaultyDrive(inner, new FaultOptions { LatencyFixed = -Ms }, time));
    }
}
