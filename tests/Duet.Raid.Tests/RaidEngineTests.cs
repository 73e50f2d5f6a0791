using Duet.Core;

namespace Duet.Raid.Tests;

public class RaidEngineTests
{
    public static TheoryData<RaidLevel, int> Levels => new()
    {
        { RaidLevel.Raid0, 3 }, { RaidLevel.Raid1, 2 }, { RaidLevel.Raid1, 3 }, { RaidLevel.Raid5, 3 },
        { RaidLevel.Raid5, 5 }, { RaidLevel.Raid6, 4 }, { RaidLevel.Raid6, 6 }, { RaidLevel.Raid10, 4 },
    };

    [Theory, MemberData(nameof(Levels))]
    [Trait("Claim", "AW-7")]
    public async Task RandomWritesReadBackExactly(RaidLevel level, int members)
    {
        var h = new ArrayHarness(level, members, seed: members * 100 + (int)level);
        await h.RandomWritesAsync(300);
        await h.VerifyAllAsync();
        await h.VerifyRandomReadsAsync(100);
    }

    [Theory, MemberData(nameof(Levels))]
    public async Task ParityIsConsistentAfterAnySequenceOfWrites(RaidLevel level, int members)
    {
        var h = new ArrayHarness(level, members, seed: 7 + members);
        await h.RandomWritesAsync(300, maxSectors: 200);
        var result = new ScrubResult();
        await h.Array.ScrubAsync(repair: false, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(0, result.ChecksumErrors);
        Assert.Equal(0, result.ParityMismatches);
        Assert.Equal(h.Geometry.Stripes, result.StripesChecked);
    }

    [Fact]
    public void EveryLogicalBlockMapsToExactlyOnePlace()
    {
        foreach (var (level, n) in new[] { (RaidLevel.Raid0, 3), (RaidLevel.Raid5, 4), (RaidLevel.Raid6, 5), (RaidLevel.Raid10, 6), (RaidLevel.Raid1, 2) })
        {
            var g = new ArrayGeometry(level, n, 4, 64);
            var seen = new HashSet<(int, long)>();
            for (long b = 0; b < g.CapacityBlocks; b++)
            {
                var (stripe, i, row, memberBlock) = g.Map(b);
                int m = g.DataMember(stripe, i);
                Assert.True(seen.Add((m, memberBlock)), $"{level}: block {b} collides");
                Assert.Equal((MemberRole.Data, i), g.RoleOf(stripe, m));
                Assert.Equal(stripe * g.ChunkBlocks + row, memberBlock);
            }
            if (g.ParityMembers > 0)
                for (long s = 0; s < g.Stripes; s++)
                {
                    Assert.Equal(MemberRole.P, g.RoleOf(s, g.PMember(s)).Role);
                    Assert.DoesNotContain(g.PMember(s), Enumerable.Range(0, g.DataMembers).Select(i => g.DataMember(s, i)));
                }
        }
    }

    [Fact]
    public void Raid5IsLeftSymmetricAsLinuxMd()
    {
        var g = new ArrayGeometry(RaidLevel.Raid5, 4, 16, 1024);
        // stripe 0: D0 D1 D2 P ; stripe 1: D1 D2 P D0 (data index i on (P+1+i) mod n)
        Assert.Equal(3, g.PMember(0));
        Assert.Equal(new[] { 0, 1, 2 }, Enumerable.Range(0, 3).Select(i => g.DataMember(0, i)));
        Assert.Equal(2, g.PMember(1));
        Assert.Equal(new[] { 3, 0, 1 }, Enumerable.Range(0, 3).Select(i => g.DataMember(1, i)));
    }

    public static TheoryData<RaidLevel, int, int[]> Losses()
    {
        var d = new TheoryData<RaidLevel, int, int[]>();
        for (int a = 0; a < 4; a++) d.Add(RaidLevel.Raid5, 4, [a]);
        for (int a = 0; a < 5; a++)
            for (int b = a + 1; b < 5; b++) d.Add(RaidLevel.Raid6, 5, [a, b]);
        d.Add(RaidLevel.Raid10, 4, [0, 3]);
        d.Add(RaidLevel.Raid1, 3, [0, 2]);
        return d;
    }

    [Theory, MemberData(nameof(Losses))]
    [Trait("Claim", "AW-7")]
    public async Task LostMembersAreReconstructedExactly(RaidLevel level, int members, int[] lost)
    {
        var h = new ArrayHarness(level, members, seed: 31 + lost.Sum());
        await h.RandomWritesAsync(200);
        foreach (int m in lost) await h.Array.FailMember(m, "test");
        await h.VerifyAllAsync();
        // Degraded writes keep working and read back.
        await h.RandomWritesAsync(100);
        await h.VerifyAllAsync();
    }

    [Theory]
    [InlineData(RaidLevel.Raid5, 4)]
    [InlineData(RaidLevel.Raid6, 5)]
    [InlineData(RaidLevel.Raid10, 4)]
    [InlineData(RaidLevel.Raid1, 2)]
    public async Task RebuildRestoresRedundancy(RaidLevel level, int members)
    {
        var h = new ArrayHarness(level, members, seed: 5);
        await h.RandomWritesAsync(200);
        await h.Array.FailMember(1, "test");
        await h.RandomWritesAsync(50);
        var disk = h.NewDisk(1, "spare");
        var progress = new PassProgress { TotalStripes = h.Geometry.Stripes };
        var rebuild = h.Array.RebuildAsync(1, disk, 0, progress, default);
        await h.RandomWritesAsync(50); // concurrent with the rebuild
        await rebuild;
        Assert.Equal(MemberStatus.Active, h.Array.Status(1));
        Assert.Equal(h.Geometry.Stripes, progress.DoneStripes);
        await h.VerifyAllAsync();
        // Redundancy is back: lose a different member and everything still reads.
        await h.Array.FailMember(0, "test");
        await h.VerifyAllAsync();
        var result = new ScrubResult();
        await h.Array.ScrubAsync(false, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(0, result.ChecksumErrors);
    }

    [Theory]
    [InlineData(RaidLevel.Raid5, 4)]
    [InlineData(RaidLevel.Raid6, 5)]
    [InlineData(RaidLevel.Raid1, 2)]
    public async Task ScrubFindsAndRepairsCorruptionAndNamesTheMember(RaidLevel level, int members)
    {
        var h = new ArrayHarness(level, members, seed: 9);
        await h.RandomWritesAsync(300, maxSectors: 128);
        await h.VerifyAllAsync(); // makes every block written at least... ensure blocks are tagged
        int victim = members - 1;
        await h.CorruptAsync(victim, 5);
        var result = new ScrubResult();
        await h.Array.ScrubAsync(true, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(1, result.ChecksumErrors);
        Assert.Equal(1, result.Repaired);
        Assert.Contains(result.Findings, f => f.Contains($"member {victim} (d{victim})") && f.Contains("checksum mismatch, repaired"));
        var again = new ScrubResult();
        await h.Array.ScrubAsync(false, again, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(0, again.ChecksumErrors);
        await h.VerifyAllAsync();
    }

    [Fact]
    public async Task CorruptBlockIsRepairedOnReadFromParity()
    {
        var h = new ArrayHarness(RaidLevel.Raid6, 5, seed: 11);
        var data = new byte[h.Model.Length];
        new System.Random(3).NextBytes(data);
        await h.Array.WriteAsync(0, data);
        data.CopyTo(h.Model, 0);
        await h.CorruptAsync(0, 0);
        await h.CorruptAsync(1, 0);
        await h.VerifyAllAsync();
        var result = new ScrubResult();
        await h.Array.ScrubAsync(false, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(0, result.ChecksumErrors); // the read repaired both
    }

    [Fact]
    public async Task WithoutRedundancyAReadOfABadBlockFailsInsteadOfReturningWrongData()
    {
        var h = new ArrayHarness(RaidLevel.Raid0, 2, seed: 12);
        await h.RandomWritesAsync(200);
        await h.VerifyAllAsync();
        await h.CorruptAsync(1, 0);
        var buf = new byte[h.Model.Length];
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(0, buf));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task A_write_that_rebuilt_a_bad_block_beside_it_rewrites_that_block_so_parity_and_drive_agree()
    {
        // RAID 5 on 3: a one-block write to data index 1 reads the row's other data block (reconstruct-write).
        var h = new ArrayHarness(RaidLevel.Raid5, 3, seed: 21);
        await h.RandomWritesAsync(100);
        var g = h.Geometry;
        int d0 = g.DataMember(0, 0), d1 = g.DataMember(0, 1);
        await h.CorruptAsync(d0, 1);
        var block = new byte[Units.BlockBytes];
        new System.Random(5).NextBytes(block);
        long sector = (long)(g.ChunkBlocks + 1) * Units.SectorsPerBlock;
        await h.Array.WriteAsync(sector, block);
        block.CopyTo(h.Model, (int)(sector * Units.SectorBytes));
        var result = new ScrubResult();
        await h.Array.ScrubAsync(false, result, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal(0, result.ChecksumErrors);
        // The damage it would have left: with the other data member gone, that row has two unknowns.
        await h.Array.FailMember(d1, "test");
        await h.VerifyAllAsync();
    }

    [Fact]
    public async Task StaleParityIsFoundByScrubWithEveryChecksumGood()
    {
        var h = new ArrayHarness(RaidLevel.Raid5, 4, seed: 13);
        await h.RandomWritesAsync(100);
        // Rewrite P of stripe 0 row 0 with garbage and a matching tag: a write hole.
        int p = h.Geometry.PMember(0);
        var garbage = new byte[Units.BlockBytes];
        new System.Random(1).NextBytes(garbage);
        await h.Array.Member(p)!.WriteAsync(0, garbage);
        var result = new ScrubResult();
        await h.Array.ScrubAsync(true, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(0, result.ChecksumErrors);
        Assert.Equal(1, result.ParityMismatches);
        Assert.Contains(result.Findings, f => f.Contains($"member {p}") && f.Contains("parity rewritten"));
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task SettlingTheStripesOfAnUnfinishedWriteRewritesTheirStaleParityAndNothingElse()
    {
        var h = new ArrayHarness(RaidLevel.Raid5, 4, seed: 13);
        await h.RandomWritesAsync(100);
        // A write that died half-way: P of stripe 0 row 0 left disagreeing with its data (a whole block, good tag).
        int p = h.Geometry.PMember(0);
        var garbage = new byte[Units.BlockBytes];
        new System.Random(1).NextBytes(garbage);
        await h.Array.Member(p)!.WriteAsync(0, garbage);
        // The checkpoint named the stripe's first data block: only stripe 0 is settled.
        var settled = await h.Array.SettleStripesAsync(0, 1);
        Assert.Equal(1, settled.StripesChecked);
        Assert.Equal(1, settled.ParityMismatches);
        Assert.Equal(1, settled.Repaired);
        var after = new ScrubResult();
        await h.Array.ScrubAsync(false, after, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal((0L, 0L), (after.ChecksumErrors, after.ParityMismatches));
        await h.VerifyAllAsync();
    }

    [Theory]
    [Trait("Claim", "AW-4")]
    [InlineData(RaidLevel.Raid5, 4)]
    [InlineData(RaidLevel.Raid6, 5)]
    public async Task SettlingKeepsBlocksWhoseDataAndTagLandedApartAndRecomputesTheirParity(RaidLevel level, int members)
    {
        var h = new ArrayHarness(level, members, seed: 17);
        await h.RandomWritesAsync(100);
        var g = h.Geometry;
        // A full-row write cut by a power loss: the new data of three data blocks of row 0 landed, their
        // tags did not, and the parity is the old one: more bad blocks than redundancy can repair.
        var random = new System.Random(18);
        for (int i = 0; i < 3; i++)
        {
            var fresh = new byte[Units.BlockBytes];
            random.NextBytes(fresh);
            await h.TearAsync(g.DataMember(0, i), 0, fresh);
            fresh.CopyTo(h.Model, (long)i * g.ChunkBlocks * Units.BlockBytes); // array block i * chunk: data index i, row 0
        }
        var scrub = new ScrubResult();
        await h.Array.ScrubAsync(false, scrub, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal(3, scrub.ChecksumErrors);
        Assert.True(scrub.Unrepairable > 0, "a scrub cannot repair the row");

        var settled = await h.Array.SettleStripesAsync(0, 1);
        Assert.Equal(0, settled.Unrepairable);
        Assert.Equal(3, settled.Findings.Count(f => f.Contains("kept as read")));
        Assert.Contains(settled.Findings, f => f.Contains("parity recomputed"));
        var after = new ScrubResult();
        await h.Array.ScrubAsync(false, after, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L, 0L), (after.ChecksumErrors, after.ParityMismatches, after.Unrepairable));
        await h.VerifyAllAsync(); // the blocks hold what landed; everything else is untouched
    }

    [Fact]
    [Trait("Claim", "AW-4")]
    public async Task SettlingAMirrorWhoseCopiesBothTornKeepsTheFirstCopyOnEvery()
    {
        var h = new ArrayHarness(RaidLevel.Raid1, 2, seed: 19);
        await h.RandomWritesAsync(50);
        var random = new System.Random(20);
        var a = new byte[Units.BlockBytes];
        var b = new byte[Units.BlockBytes];
        random.NextBytes(a);
        random.NextBytes(b);
        await h.TearAsync(0, 0, a);
        await h.TearAsync(1, 0, b);
        var settled = await h.Array.SettleStripesAsync(0, 1);
        Assert.Equal(0, settled.Unrepairable);
        Assert.Contains(settled.Findings, f => f.Contains("kept as read on every copy"));
        var block = new byte[Units.BlockBytes];
        await h.Array.ReadAsync(0, block);
        Assert.True(block.AsSpan().SequenceEqual(a) || block.AsSpan().SequenceEqual(b), "block 0 holds one of the versions that landed");
        var after = new ScrubResult();
        await h.Array.ScrubAsync(false, after, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal((0L, 0L, 0L), (after.ChecksumErrors, after.ParityMismatches, after.Unrepairable));
    }

    [Fact]
    public async Task NeverWrittenBlocksReadAsZeros()
    {
        var h = new ArrayHarness(RaidLevel.Raid6, 4, seed: 14);
        await h.VerifyAllAsync();
        var one = new byte[Units.SectorBytes];
        one[0] = 1;
        await h.Array.WriteAsync(17, one);
        one.CopyTo(h.Model, 17 * Units.SectorBytes);
        await h.VerifyAllAsync();
    }

    [Fact]
    public async Task OutOfRangeRequestsAreRefused()
    {
        var h = new ArrayHarness(RaidLevel.Raid5, 3);
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(h.Array.CapacitySectors, new byte[512]));
        Assert.Equal(BlockErrorKind.OutOfRange, e.Kind);
        e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.WriteAsync(0, new byte[100]));
        Assert.Equal(BlockErrorKind.Invalid, e.Kind);
    }
}

public class MemberFailureOrderingTests
{
    [Fact]
    public async Task AWriteThatRanWithoutAFailedMemberCompletesOnlyAfterTheFailureIsPersisted()
    {
        var uuid = Guid.NewGuid();
        var geometry = new ArrayGeometry(RaidLevel.Raid5, 3, 4, 64);
        long blocks = MemberLayout.MetadataBlocks + MemberLayout.GroupBlocks;
        var drives = Enumerable.Range(0, 3).Select(i => new Duet.Drives.Faults.FaultyDrive(new Duet.Drives.MemoryDrive($"d{i}", blocks),
            new Duet.Drives.Faults.FaultOptions { Seed = (ulong)i + 1 }, TimeProvider.System)).ToArray();
        var array = new RaidArray("t", uuid, geometry, drives.Select((d, i) => (MemberDisk?)new MemberDisk(d, i, uuid, geometry.MemberBlocks)).ToArray(),
            [MemberStatus.Active, MemberStatus.Active, MemberStatus.Active], TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var persisted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int calls = 0;
        array.PersistMemberFailure = (slot, _) => { Interlocked.Increment(ref calls); Assert.Equal(1, slot); return persisted.Task; };
        drives[1].Fail();
        var data = new byte[16 * 4096];
        new System.Random(1).NextBytes(data);
        var write = array.WriteAsync(0, data).AsTask();
        // The write has done its I/O on the survivors but must wait for the failure record.
        for (int i = 0; i < 200 && Volatile.Read(ref calls) == 0; i++) await Task.Yield();
        await Task.WhenAny(write, Task.Delay(200));
        Assert.False(write.IsCompleted, "a write without member 1 completed before member 1's failure was persisted");
        Assert.Equal(1, calls);
        persisted.SetResult();
        await write;
        Assert.Equal(MemberStatus.Missing, array.Status(1));
        var back = new byte[data.Length];
        await array.ReadAsync(0, back);
        Assert.Equal(data, back);
    }

    // Found by the simulator: a controller crash tore a stripe (data and parity of the same rows
    // bad); the cache, destaging the same blocks again after replay, failed "beyond repair"
    // although its write replaced every damaged data block.
    [Fact]
    public async Task AWriteThatReplacesEveryDamagedDataBlockRepairsARowBeyondRepair()
    {
        var h = new ArrayHarness(RaidLevel.Raid5, 5, chunkBlocks: 4, seed: 21); // 4 data members: one chunk is written read-modify-write
        var data = new byte[h.Model.Length];
        new System.Random(5).NextBytes(data);
        await h.Array.WriteAsync(0, data);
        data.CopyTo(h.Model, 0);
        int d0 = h.Geometry.DataMember(0, 0), p = h.Geometry.PMember(0);
        for (int r = 0; r < 4; r++)
        {
            await h.CorruptAsync(d0, r);
            await h.CorruptAsync(p, r);
        }
        // A partial write into a damaged block needs the block's old content: it cannot be made.
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.WriteAsync(1, new byte[Units.SectorBytes]));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
        // A write of the whole damaged chunk can, and leaves the stripe whole.
        var chunk = new byte[4 * Units.BlockBytes];
        new System.Random(6).NextBytes(chunk);
        await h.Array.WriteAsync(0, chunk);
        chunk.CopyTo(h.Model, 0);
        await h.VerifyAllAsync();
        var result = new ScrubResult();
        await h.Array.ScrubAsync(false, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal((0L, 0L), (result.ChecksumErrors, result.ParityMismatches));
    }

    public static TheoryData<RaidLevel, int, bool> TornLevels => new()
    {
        { RaidLevel.Raid5, 5, false }, { RaidLevel.Raid5, 5, true }, { RaidLevel.Raid6, 6, false }, { RaidLevel.Raid6, 6, true },
        { RaidLevel.Raid1, 2, false }, { RaidLevel.Raid1, 3, false }, { RaidLevel.Raid10, 4, false },
    };

    /// <summary>
    /// A crash tore a destage of sectors 1-2 of array block 0: the block holds its new content (the old
    /// one with those sectors merged in) under its old tag, and the row's parity is torn too (every copy,
    /// with mirrors), so nothing can reconstruct it. With <paramref name="alsoTornOutside"/> another
    /// block of the row (chunk 1) was torn the same way by another element's destage.
    /// </summary>
    [Theory, MemberData(nameof(TornLevels))]
    public async Task ARecoveryWriteRewritesABlockACrashToreAndANormalWriteStillFails(RaidLevel level, int members, bool alsoTornOutside)
    {
        var h = new ArrayHarness(level, members, chunkBlocks: 4, seed: 31);
        var g = h.Geometry;
        var data = new byte[h.Model.Length];
        new System.Random(7).NextBytes(data);
        await h.Array.WriteAsync(0, data);
        data.CopyTo(h.Model, 0);

        var rng = new System.Random(8);
        byte[] TornContent(long arrayBlock, int firstSector, int sectors)
        {
            var block = h.Model.AsSpan((int)(arrayBlock * Units.BlockBytes), Units.BlockBytes).ToArray();
            rng.NextBytes(block.AsSpan(firstSector * Units.SectorBytes, sectors * Units.SectorBytes));
            return block;
        }
        var torn0 = TornContent(0, 1, 2);
        if (g.IsMirrored)
        {
            foreach (int m in g.Copies(0)) await h.TearAsync(m, 0, torn0);
        }
        else
        {
            await h.TearAsync(g.DataMember(0, 0), 0, torn0);
            if (alsoTornOutside)
            {
                long block1 = g.ChunkBlocks; // chunk 1, row 0
                var torn1 = TornContent(block1, 3, 2);
                await h.TearAsync(g.DataMember(0, 1), 0, torn1);
                torn1.CopyTo(h.Model, (int)(block1 * Units.BlockBytes)); // kept as read: its own element would rewrite it next
            }
            await h.CorruptAsync(g.PMember(0), 0);
            if (g.ParityMembers == 2) await h.CorruptAsync(g.QMember(0), 0);
        }

        var element = torn0.AsSpan(Units.SectorBytes, 2 * Units.SectorBytes).ToArray();
        // The controller's cache holds the replayed elements over the torn blocks: the array leaves them to
        // the recovery write (a read does not put them on the bad-block list, AW-5).
        h.Array.HeldForRecovery = b => b == 0 || (alsoTornOutside && b == g.ChunkBlocks);
        // An ordinary write must not stamp a fresh checksum over a block it cannot check.
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.WriteAsync(1, element));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
        await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(0, new byte[Units.BlockBytes]));

        // The cache destaging the element it replayed after the crash may.
        await h.Array.RecoveryWriteAsync(1, element);
        torn0.CopyTo(h.Model, 0); // the sectors outside the write keep their content
        Assert.True(h.Array.BadBlocks.IsEmpty);
        await h.VerifyAllAsync();
        var result = new ScrubResult();
        await h.Array.ScrubAsync(false, result, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L), (result.ChecksumErrors, result.ParityMismatches));
    }

    /// <summary>
    /// Block 0 torn with the row's parity, and the member of chunk 1 gone: the row's chunk 1 block has
    /// neither redundancy nor content as read, and the new parity needs it. Before AW-5 the recovery
    /// write failed (and the cache retried it for ever); now the row's lost blocks go on the bad-block
    /// list, filled, and the write goes on over the fill: its own sector reads back, the rest fail.
    /// </summary>
    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task ARecoveryWriteListsTheBlocksOfARowItCannotKeepAndWritesOverTheFill()
    {
        var h = new ArrayHarness(RaidLevel.Raid5, 5, chunkBlocks: 4, seed: 33);
        var g = h.Geometry;
        var data = new byte[h.Model.Length];
        new System.Random(9).NextBytes(data);
        await h.Array.WriteAsync(0, data);
        var torn = data.AsSpan(0, Units.BlockBytes).ToArray();
        torn[Units.SectorBytes] ^= 0xFF;
        await h.TearAsync(g.DataMember(0, 0), 0, torn);
        await h.CorruptAsync(g.PMember(0), 0);
        await h.Array.FailMember(g.DataMember(0, 1), "test");
        var element = new byte[Units.SectorBytes];
        new System.Random(10).NextBytes(element);

        await h.Array.RecoveryWriteAsync(1, element);

        long chunk1 = g.ChunkBlocks; // array block of chunk 1, row 0
        Assert.Equal([(0L, (byte)0b1111_1101), (chunk1, BadBlockEntry.AllSectors)], h.Array.BadBlocks.Entries.Select(e => (e.ArrayBlock, e.BadSectors)));
        Assert.All(h.Array.BadBlocks.Entries, e => Assert.Equal(BadBlockSource.RecoveryWrite, e.Source));
        var back = new byte[Units.SectorBytes];
        await h.Array.ReadAsync(1, back);
        Assert.Equal(element, back);
        var e0 = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(0, new byte[Units.SectorBytes]));
        Assert.Equal((BlockErrorKind.Medium, 0L), (e0.Kind, e0.Lba));
        var e1 = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(chunk1 * Units.SectorsPerBlock + 3, new byte[Units.SectorBytes]));
        Assert.Equal((BlockErrorKind.Medium, chunk1 * Units.SectorsPerBlock + 3), (e1.Kind, e1.Lba));
        var result = new ScrubResult();
        await h.Array.ScrubAsync(false, result, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L), (result.ChecksumErrors, result.ParityMismatches));
    }

    /// <summary>A RAID 6 of <paramref name="members"/> drives (chunks of 4 blocks) written whole with random data (seeded
    /// <paramref name="seed"/> + 1), which the model holds too.</summary>
    static async Task<ArrayHarness> FilledRaid6Async(int members, int seed)
    {
        var h = new ArrayHarness(RaidLevel.Raid6, members, chunkBlocks: 4, seed: seed);
        var data = new byte[h.Model.Length];
        new System.Random(seed + 1).NextBytes(data);
        await h.Array.WriteAsync(0, data);
        data.CopyTo(h.Model, 0);
        return h;
    }

    /// <summary>The harness's array opened afresh over its drives (a restart) with member <paramref name="missing"/> missing.</summary>
    static RaidArray ReopenedWithoutMember(ArrayHarness h, int missing)
    {
        var g = h.Geometry;
        var disks = h.Drives.Select((d, i) => i == missing ? null : (MemberDisk?)new MemberDisk(d, i, h.Uuid, g.MemberBlocks)).ToArray();
        var status = Enumerable.Range(0, g.MemberCount).Select(i => i == missing ? MemberStatus.Missing : MemberStatus.Active).ToArray();
        return new RaidArray("t", h.Uuid, g, disks, status, TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
    }

    /// <summary>The whole of drive <paramref name="m"/> (data and tag blocks), to put back what a crash did not land.</summary>
    static async Task<byte[]> DriveImageAsync(ArrayHarness h, int m)
    {
        var image = new byte[h.Drives[m].BlockCount * Units.BlockBytes];
        await h.Drives[m].ReadAsync(0, image);
        return image;
    }

    /// <summary>
    /// The state a crash left in degraded RAID 6 (simulator seed 55): a destage of sectors 1-2 of array
    /// block 0 landed the data block's new tag but not its new data, and only one of P and Q (the other
    /// holds the old parity); the member of chunk 1 is missing, so its row 0 block exists only in that
    /// torn P/Q. The array is then opened afresh over the drives (a restart). With
    /// <paramref name="rotted"/> the data block also differs from its old content, so neither parity
    /// yields a version that matches its tag.
    /// </summary>
    static async Task<(RaidArray Array, ArrayHarness H, byte[] Element, byte[] NewBlock0)> DegradedRaid6TornAsync(bool newQ, bool rotted)
    {
        var h = await FilledRaid6Async(6, 41);
        var g = h.Geometry;

        int d0 = g.DataMember(0, 0), stale = newQ ? g.PMember(0) : g.QMember(0);
        var staleImage = await DriveImageAsync(h, stale);
        var oldBlock0 = h.Model.AsSpan(0, Units.BlockBytes).ToArray();

        var element = new byte[2 * Units.SectorBytes];
        new System.Random(43).NextBytes(element);
        var newBlock0 = oldBlock0.ToArray();
        element.CopyTo(newBlock0, Units.SectorBytes);
        await h.Array.WriteAsync(1, element);
        // Undo what the crash did not land: block 0's data (its tag stays new) and the whole stale parity member.
        var asLeft = oldBlock0.ToArray();
        if (rotted) asLeft[3000] ^= 0x42;
        await h.TearAsync(d0, 0, asLeft);
        await h.Drives[stale].WriteAsync(0, staleImage);

        int missing = g.DataMember(0, 1);
        var array = ReopenedWithoutMember(h, missing);
        return (array, h, element, newBlock0);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task ARecoveryWriteSettlesADegradedRaid6RowByTheParityTheTornBlockAgreesWith(bool newQ)
    {
        var (array, h, element, newBlock0) = await DegradedRaid6TornAsync(newQ, rotted: false);
        var g = h.Geometry;
        // An ordinary write still refuses.
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await array.WriteAsync(1, element));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);

        await array.RecoveryWriteAsync(1, element);
        newBlock0.CopyTo(h.Model, 0);
        var all = new byte[h.Model.Length];
        await array.ReadAsync(0, all);
        Assert.True(all.AsSpan().SequenceEqual(h.Model), $"content differs at byte {all.AsSpan().CommonPrefixLength(h.Model)}");
        // The missing member's block (chunk 1, row 0) reads as it was before the crash.
        var chunk1 = new byte[Units.BlockBytes];
        await array.ReadAsync(g.ChunkBlocks * Units.SectorsPerBlock, chunk1);
        Assert.True(chunk1.AsSpan().SequenceEqual(h.Model.AsSpan(g.ChunkBlocks * Units.BlockBytes, Units.BlockBytes)));
        var result = new ScrubResult();
        await array.ScrubAsync(false, result, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L), (result.ChecksumErrors, result.ParityMismatches));
    }

    /// <summary>Neither parity vouches for the torn block: nothing of the row can be kept but what the write
    /// brings. Both lost blocks are listed (AW-5); the write's sectors read back, the rest fail.</summary>
    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task ARecoveryWriteListsADegradedRaid6RowWhenNeitherParityVouchesForTheTornBlock()
    {
        var (array, h, element, _) = await DegradedRaid6TornAsync(newQ: true, rotted: true);
        var g = h.Geometry;
        await array.RecoveryWriteAsync(1, element);
        Assert.Equal([(0L, (byte)0b1111_1001), ((long)g.ChunkBlocks, BadBlockEntry.AllSectors)], array.BadBlocks.Entries.Select(e => (e.ArrayBlock, e.BadSectors)));
        var back = new byte[2 * Units.SectorBytes];
        await array.ReadAsync(1, back);
        Assert.Equal(element, back);
        await Assert.ThrowsAsync<BlockIoException>(async () => await array.ReadAsync(0, new byte[Units.BlockBytes]));
        // Every other block of the stripe still reads as it was.
        var rest = new byte[Units.BlockBytes];
        await array.ReadAsync(1 * Units.SectorsPerBlock, rest);
        Assert.True(rest.AsSpan().SequenceEqual(h.Model.AsSpan(Units.BlockBytes, Units.BlockBytes)));
        var result = new ScrubResult();
        await array.ScrubAsync(false, result, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L), (result.ChecksumErrors, result.ParityMismatches));
    }

    /// <summary>
    /// The state of simulator seed 10943 (`--faults all --exact`): a crash cut a write of data block 0 of a RAID 6 on
    /// four drives (two data members) with some of its blocks landed and others not; a drive then failed: the member
    /// of chunk 1, whose block of row 0 now exists only in the parity. The takeover's recovery write of the same block
    /// (the write adopted from the peer's mirror) must not take the parity as whole: a read-modify-write (P ^= old ^
    /// new) turned chunk 1's block into the old data block's content xor the new one's.
    /// With the data block not landed (<paramref name="dataLanded"/> false: old content, old tag), each parity covers
    /// either version of it (as the drives hold it, or as the write brings it), and the missing block is the one value
    /// both parities give: it is kept. With the data block landed and a parity not, the old version is on no drive:
    /// P and Q agree under no version, and nothing tells which one to believe. The missing block is then listed lost
    /// (AW-5: a read fails with a medium error) instead of taking the value P alone gives.
    /// </summary>
    [Theory]
    [InlineData(false, true, false)]
    [InlineData(false, false, true)]
    [InlineData(false, true, true)]
    [InlineData(false, false, false)]
    [InlineData(true, true, true)]
    [InlineData(true, true, false)]
    [InlineData(true, false, true)]
    [InlineData(true, false, false)]
    [Trait("Claim", "AW-5")]
    public async Task ARecoveryWriteOfADegradedRaid6RowATornWriteLeftKeepsTheMissingBlockOrListsIt(bool dataLanded, bool newP, bool newQ)
    {
        var h = await FilledRaid6Async(4, 51);
        var g = h.Geometry;

        int d0 = g.DataMember(0, 0), p = g.PMember(0), q = g.QMember(0);
        var (d0Image, pImage, qImage) = (await DriveImageAsync(h, d0), await DriveImageAsync(h, p), await DriveImageAsync(h, q));
        var newBlock0 = new byte[Units.BlockBytes];
        new System.Random(53).NextBytes(newBlock0);
        await h.Array.WriteAsync(0, newBlock0);
        // What the crash did not land: the data block (content and tag) and the parity the case leaves old.
        if (!dataLanded) await h.Drives[d0].WriteAsync(0, d0Image);
        if (!newP) await h.Drives[p].WriteAsync(0, pImage);
        if (!newQ) await h.Drives[q].WriteAsync(0, qImage);

        int missing = g.DataMember(0, 1);
        var array = ReopenedWithoutMember(h, missing);

        await array.RecoveryWriteAsync(0, newBlock0);
        newBlock0.CopyTo(h.Model, 0);
        long chunk1 = g.ChunkBlocks; // array block of chunk 1, row 0: on the missing member
        bool ambiguous = dataLanded && !(newP && newQ);
        if (ambiguous)
        {
            Assert.Equal([(chunk1, BadBlockEntry.AllSectors)], array.BadBlocks.Entries.Select(e => (e.ArrayBlock, e.BadSectors)));
            var e = await Assert.ThrowsAsync<BlockIoException>(async () => await array.ReadAsync(chunk1 * Units.SectorsPerBlock, new byte[Units.BlockBytes]));
            Assert.Equal(BlockErrorKind.Medium, e.Kind);
        }
        else Assert.Empty(array.BadBlocks.Entries);
        // Every block but a listed one reads as the model has it (chunk 1's block of row 0 as it was before the crash).
        for (long b = 0; b < h.Model.Length / Units.BlockBytes; b++)
        {
            if (ambiguous && b == chunk1) continue;
            var back = new byte[Units.BlockBytes];
            await array.ReadAsync(b * Units.SectorsPerBlock, back);
            Assert.True(back.AsSpan().SequenceEqual(h.Model.AsSpan((int)b * Units.BlockBytes, Units.BlockBytes)), $"block {b} differs");
        }
        var result = new ScrubResult();
        await array.ScrubAsync(false, result, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L), (result.ChecksumErrors, result.ParityMismatches));
    }
}
