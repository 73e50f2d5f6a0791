using System.Buffers.Binary;
using Duet.Core;
using Duet.Drives;
using Duet.Raid.Management;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Raid.Tests;

/// <summary>
/// AW-5: a block whose checksum fails and that redundancy cannot bring back is put on the array's
/// bad-block list, filled with the known pattern, its row's parity regenerated; reads of it fail with a
/// medium error without touching a drive until a host writes it again; the list lives on the drives.
/// </summary>
[Trait("Claim", "AW-5")]
public class BadBlockTests
{
    static readonly Guid ArrayUuid = new("6f1d3a52-9a0b-4c3e-8f21-0d5e7b9c1a44");

    // ---- the on-disk list ------------------------------------------------------------------

    [Fact]
    public void TheListEncodesExactlyAsItsLayoutSays()
    {
        var list = BadBlockList.Empty.With([new BadBlockEntry(0x1234_5678, 0xF0, BadBlockSource.Scrub)])!
            .With([new BadBlockEntry(0x10_0000_0000, BadBlockEntry.AllSectors, BadBlockSource.Settle)])!;
        Assert.Equal(2, list.Generation);
        var block = new byte[Units.BlockBytes];
        list.Encode(ArrayUuid, block);

        var expected = new byte[Units.BlockBytes];
        "DUETBADB"u8.CopyTo(expected);
        expected[8] = 1;                                   // version
        ArrayUuid.ToByteArray().CopyTo(expected, 16);      // array UUID
        expected[32] = 2;                                  // generation
        expected[40] = 2;                                  // entries
        byte[] e0 = [0x78, 0x56, 0x34, 0x12, 0x00, 0x00, 0xF0, 0x02]; // block 0x12345678, sectors 4-7, scrub
        byte[] e1 = [0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0xFF, 0x01]; // block 0x1000000000, every sector, settle
        e0.CopyTo(expected, 64);
        e1.CopyTo(expected, 72);
        BinaryPrimitives.WriteUInt32LittleEndian(expected.AsSpan(12), Crc32C.Compute(expected));
        Assert.Equal(expected, block);

        var back = BadBlockList.TryDecode(block, ArrayUuid, out var error);
        Assert.Null(error);
        Assert.Equal(list.Entries, back!.Entries);
        Assert.Equal(2, back.Generation);
        Assert.Equal(504, BadBlockList.MaxEntries);
    }

    [Fact]
    public void ADamagedOrForeignListIsRefusedAndABlankBlockIsNoList()
    {
        var block = new byte[Units.BlockBytes];
        Assert.Null(BadBlockList.TryDecode(block, ArrayUuid, out var error));
        Assert.Null(error);

        BadBlockList.Empty.With([new BadBlockEntry(7, 1, BadBlockSource.Read)])!.Encode(ArrayUuid, block);
        Assert.NotNull(BadBlockList.TryDecode(block, ArrayUuid, out _));
        Assert.Null(BadBlockList.TryDecode(block, Guid.NewGuid(), out error));
        Assert.Contains("another array", error);
        block[64] ^= 1;
        Assert.Null(BadBlockList.TryDecode(block, ArrayUuid, out error));
        Assert.Equal("bad-block list checksum mismatch", error);
    }

    [Fact]
    public void ClearingTheLastBadSectorOfABlockRemovesItsEntryAndAFullListTakesNoMore()
    {
        var list = BadBlockList.Empty.With([new BadBlockEntry(3, 0b0000_0110, BadBlockSource.Read)])!;
        Assert.Equal(3 * 8 + 1, list.FirstBadSector(0, 1000));
        Assert.Equal(-1, list.FirstBadSector(3 * 8 + 3, 1000));
        Assert.True(list.With([new BadBlockEntry(3, 0, BadBlockSource.Read)])!.IsEmpty);

        var full = BadBlockList.Empty.With(Enumerable.Range(0, BadBlockList.MaxEntries).Select(i => new BadBlockEntry(i, 1, BadBlockSource.Scrub)))!;
        Assert.Equal(BadBlockList.MaxEntries, full.Count);
        Assert.Null(full.With([new BadBlockEntry(100_000, 1, BadBlockSource.Scrub)]));
        Assert.NotNull(full.With([new BadBlockEntry(5, 0xFF, BadBlockSource.Scrub)])); // a change of an entry it holds
    }

    // ---- torn block, inconsistent parity: listed, filled, parity regenerated -------------------

    /// <summary>RAID 5 with data; array block 0 torn by a power cut (new content, old tag) while its row's P
    /// was being written too: nothing can reconstruct it.</summary>
    static async Task<ArrayHarness> TornRowAsync(RaidLevel level = RaidLevel.Raid5, int members = 4, int seed = 51)
    {
        var h = new ArrayHarness(level, members, chunkBlocks: 4, seed: seed);
        await h.FillAsync(seed);
        var g = h.Geometry;
        var torn = h.Model.AsSpan(0, Units.BlockBytes).ToArray();
        torn.AsSpan(0, 3 * Units.SectorBytes).Fill(0x5A); // the first three sectors of a write landed
        await h.TearAsync(g.DataMember(0, 0), 0, torn);
        await h.CorruptAsync(g.PMember(0), 0);
        if (g.ParityMembers == 2) await h.CorruptAsync(g.QMember(0), 0);
        return h;
    }

    static Task FillAsync(ArrayHarness h, int seed) => h.FillAsync(seed);

    static async Task<byte[]> DataBlockOnDriveAsync(ArrayHarness h, int member, long memberBlock)
    {
        var b = new byte[Units.BlockBytes];
        await h.Drives[member].ReadAsync(MemberLayout.DataLba(memberBlock), b);
        return b;
    }

    [Theory]
    [InlineData(RaidLevel.Raid5, 4)]
    [InlineData(RaidLevel.Raid6, 5)]
    public async Task ScrubListsATornBlockThatRedundancyCannotRecoverFillsItAndRegeneratesParity(RaidLevel level, int members)
    {
        var h = await TornRowAsync(level, members);
        var g = h.Geometry;

        var settled = await ScrubRepairAsync(h.Array);

        Assert.Equal(1, settled.Listed);
        var entry = Assert.Single(h.Array.BadBlocks.Entries);
        Assert.Equal(new BadBlockEntry(0, BadBlockEntry.AllSectors, BadBlockSource.Scrub), entry);
        Assert.Equal(1, h.Array.BadBlocksListed);
        // Filled with the known pattern under a good tag: checks pass, and the row's parity covers the fill.
        Assert.All(await DataBlockOnDriveAsync(h, g.DataMember(0, 0), 0), b => Assert.Equal(BadBlockList.FillByte, b));
        var scrub = new ScrubResult();
        await h.Array.ScrubAsync(false, scrub, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches, scrub.Unrepairable));
        // The rest of the row is protected again: with the member of chunk 1 gone, its block comes back from the regenerated parity.
        await h.Array.FailMember(g.DataMember(0, 1), "test");
        var chunk1 = new byte[Units.BlockBytes];
        await h.Array.ReadAsync(g.ChunkBlocks * Units.SectorsPerBlock, chunk1);
        Assert.True(chunk1.AsSpan().SequenceEqual(h.Model.AsSpan(g.ChunkBlocks * Units.BlockBytes, Units.BlockBytes)));
        // The listed block fails every read, whole or in part, with the first listed sector it covers.
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(0, new byte[Units.BlockBytes]));
        Assert.Equal((BlockErrorKind.Medium, 0L), (e.Kind, e.Lba));
        e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(5, new byte[Units.SectorBytes]));
        Assert.Equal((BlockErrorKind.Medium, 5L), (e.Kind, e.Lba));
        Assert.Contains("bad-block list", e.Message);
        // A read across it fails too; one beside it does not.
        await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(0, new byte[16 * Units.BlockBytes]));
        var beside = new byte[Units.BlockBytes];
        await h.Array.ReadAsync(Units.SectorsPerBlock, beside);
        Assert.True(beside.AsSpan().SequenceEqual(h.Model.AsSpan(Units.BlockBytes, Units.BlockBytes)));
    }

    static async Task<ScrubResult> ScrubRepairAsync(RaidArray array)
    {
        var result = new ScrubResult();
        await array.ScrubAsync(true, result, new PassProgress { TotalStripes = array.Geometry.Stripes }, default);
        return result;
    }

    /// <summary>
    /// Settling a stripe the write log named (an interrupted write) is not a scrub: a block read whole that fails
    /// its tag holds a version that write left (old sectors where it changed none), so it is kept as read and
    /// its row's parity recomputed; what is listed is only what could not be read at all and that nothing
    /// rebuilds — here the block of a member missing from a row whose parity the cut tore too.
    /// </summary>
    [Theory]
    [InlineData(RaidLevel.Raid5, 4)]
    [InlineData(RaidLevel.Raid6, 5)]
    public async Task SettleKeepsATornBlockAsReadAndListsOnlyWhatItCannotRead(RaidLevel level, int members)
    {
        var h = await TornRowAsync(level, members);
        var g = h.Geometry;
        var asLeft = await DataBlockOnDriveAsync(h, g.DataMember(0, 0), 0);
        asLeft.CopyTo(h.Model, 0);
        int gone = g.DataMember(0, 1);
        await h.Array.FailMember(gone, "test");
        if (g.ParityMembers == 2) await h.Array.FailMember(g.DataMember(0, 2), "test"); // RAID 6 would rebuild one from Q otherwise

        var settled = await h.Array.SettleStripesAsync(0, 1);

        Assert.Contains(settled.Findings, f => f.Contains("kept as read"));
        var back = new byte[Units.BlockBytes];
        await h.Array.ReadAsync(0, back);
        Assert.True(back.AsSpan().SequenceEqual(asLeft), "block 0 reads as the cut left it");
        // Chunk 1's block of row 0 exists only in the torn parity: listed (and RAID 6's chunk 2 too).
        Assert.Contains(h.Array.BadBlocks.Entries, e => e.ArrayBlock == g.ChunkBlocks && e.Source == BadBlockSource.Settle);
        Assert.DoesNotContain(h.Array.BadBlocks.Entries, e => e.ArrayBlock == 0);
        await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(g.ChunkBlocks * Units.SectorsPerBlock, new byte[Units.BlockBytes]));
    }

    [Fact]
    public async Task WithoutTheListTheSameTornRowOnlyFailsItsReads()
    {
        // The planted contrast: a scrub that only reports lists nothing and the torn block stays as it was.
        var h = await TornRowAsync();
        var scrub = new ScrubResult();
        await h.Array.ScrubAsync(false, scrub, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(2, scrub.Unrepairable); // the torn block and its row's parity
        Assert.Equal(0, scrub.Listed);
        Assert.True(h.Array.BadBlocks.IsEmpty);
    }

    [Fact]
    public async Task AHostWriteOfTheWholeBlockClearsTheEntryAndAPartialWriteClearsOnlyItsSectors()
    {
        var h = await TornRowAsync();
        await ScrubRepairAsync(h.Array);
        var first = new byte[4 * Units.SectorBytes];
        new System.Random(3).NextBytes(first);

        await h.Array.WriteAsync(0, first);
        first.CopyTo(h.Model, 0);

        Assert.Equal(0b1111_0000, Assert.Single(h.Array.BadBlocks.Entries).BadSectors);
        var back = new byte[first.Length];
        await h.Array.ReadAsync(0, back);
        Assert.Equal(first, back);
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(2, new byte[4 * Units.SectorBytes]));
        Assert.Equal(4L, e.Lba);

        var rest = new byte[4 * Units.SectorBytes];
        new System.Random(4).NextBytes(rest);
        await h.Array.WriteAsync(4, rest);
        rest.CopyTo(h.Model, 4 * Units.SectorBytes);

        Assert.True(h.Array.BadBlocks.IsEmpty);
        Assert.Equal(1, h.Array.BadBlocksCleared);
        await h.Array.FlushAsync();
        await h.VerifyAllAsync();
        var scrub = new ScrubResult();
        await h.Array.ScrubAsync(false, scrub, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal((0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches));
    }

    [Fact]
    public async Task AReadOfAListedBlockTouchesNoDrive()
    {
        const long memberDataBlocks = 64;
        long driveBlocks = MemberLayout.MetadataBlocks + MemberLayout.GroupBlocks;
        var drives = Enumerable.Range(0, 3).Select(i => new CountingDrive(new MemoryDrive($"d{i}", driveBlocks))).ToArray();
        var g = new ArrayGeometry(RaidLevel.Raid5, 3, 4, memberDataBlocks);
        var array = new RaidArray("t", ArrayUuid, g, drives.Select((d, i) => (MemberDisk?)new MemberDisk(d, i, ArrayUuid, g.MemberBlocks)).ToArray(),
            [MemberStatus.Active, MemberStatus.Active, MemberStatus.Active], TimeProvider.System, NullLogger.Instance);
        var data = new byte[16 * Units.BlockBytes];
        new System.Random(5).NextBytes(data);
        await array.WriteAsync(0, data);
        // Block 1 torn with both its row's other blocks: nothing to rebuild it from.
        int m = g.DataMember(0, 0);
        await drives[m].Inner.WriteAsync(MemberLayout.DataLba(1), new byte[Units.BlockBytes]);
        await drives[g.PMember(0)].Inner.WriteAsync(MemberLayout.DataLba(1), new byte[Units.BlockBytes].Select(_ => (byte)7).ToArray());
        await array.ScrubAsync(true, new ScrubResult(), new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal(1, Assert.Single(array.BadBlocks.Entries).ArrayBlock);

        long reads = drives.Sum(d => d.Reads);
        for (int i = 0; i < 3; i++)
            await Assert.ThrowsAsync<BlockIoException>(async () => await array.ReadAsync(Units.SectorsPerBlock + i, new byte[Units.SectorBytes]));
        Assert.Equal(reads, drives.Sum(d => d.Reads));
    }

    [Fact]
    public async Task AReadThatMeetsAnUnrecoverableBlockListsItAndFailsAndTheRestOfTheRowIsProtectedAgain()
    {
        var h = await TornRowAsync(seed: 52);
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(0, new byte[Units.BlockBytes]));
        Assert.Equal((BlockErrorKind.Medium, 0L), (e.Kind, e.Lba));
        Assert.Equal(BadBlockSource.Read, Assert.Single(h.Array.BadBlocks.Entries).Source);
        var scrub = new ScrubResult();
        await h.Array.ScrubAsync(false, scrub, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal((0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches));
    }

    [Fact]
    public async Task ScrubListsWhatItCannotRepairAndSaysSo()
    {
        // RAID 6: three blocks of one row damaged (two data, P): beyond two-parity repair.
        var h = new ArrayHarness(RaidLevel.Raid6, 5, chunkBlocks: 4, seed: 53);
        await FillAsync(h, 53);
        var g = h.Geometry;
        await h.CorruptAsync(g.DataMember(1, 0), 4 + 2);
        await h.CorruptAsync(g.DataMember(1, 2), 4 + 2);
        await h.CorruptAsync(g.PMember(1), 4 + 2);

        var result = new ScrubResult();
        await h.Array.ScrubAsync(true, result, new PassProgress { TotalStripes = g.Stripes }, default);

        Assert.Equal(2, result.Listed);
        long b0 = 1 * g.StripeDataBlocks + 2, b2 = 1 * g.StripeDataBlocks + 2 * g.ChunkBlocks + 2;
        Assert.Equal([b0, b2], h.Array.BadBlocks.Entries.Select(e => e.ArrayBlock));
        Assert.Contains(result.Findings, f => f.Contains($"listed as bad block {b0}"));
        Assert.Contains(result.Findings, f => f.Contains("parity regenerated"));
        var again = new ScrubResult();
        await h.Array.ScrubAsync(false, again, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L, 0L), (again.ChecksumErrors, again.ParityMismatches, again.Unrepairable));
    }

    [Fact]
    public async Task AMirrorBlockNoCopyHoldsIsListedAndFilledOnEveryCopy()
    {
        var h = new ArrayHarness(RaidLevel.Raid1, 2, chunkBlocks: 4, seed: 54);
        await FillAsync(h, 54);
        await h.CorruptAsync(0, 9);
        await h.CorruptAsync(1, 9);
        var result = new ScrubResult();
        await h.Array.ScrubAsync(true, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);
        Assert.Equal(1, result.Listed);
        Assert.Equal(9, Assert.Single(h.Array.BadBlocks.Entries).ArrayBlock);
        Assert.All(await DataBlockOnDriveAsync(h, 0, 9), b => Assert.Equal(BadBlockList.FillByte, b));
        Assert.All(await DataBlockOnDriveAsync(h, 1, 9), b => Assert.Equal(BadBlockList.FillByte, b));
        await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(9 * Units.SectorsPerBlock, new byte[Units.BlockBytes]));
    }

    [Fact]
    public async Task ABlockAPendingRecoveryWriteWillRewriteIsLeftToIt()
    {
        var h = await TornRowAsync(seed: 55);
        h.Array.HeldForRecovery = b => b == 0;
        var settled = await ScrubRepairAsync(h.Array);
        Assert.Equal((0L, 2L), (settled.Listed, settled.Deferred)); // the torn block and its row's parity, both left to the write
        Assert.True(h.Array.BadBlocks.IsEmpty);
        await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(0, new byte[Units.BlockBytes]));
        Assert.True(h.Array.BadBlocks.IsEmpty);
    }

    [Fact]
    public async Task RebuildListsARowItCannotReconstructInsteadOfWritingWhateverItHeld()
    {
        var h = await TornRowAsync(seed: 56);
        var g = h.Geometry;
        int gone = g.DataMember(0, 1);
        await h.Array.FailMember(gone, "test");
        var target = h.NewDisk(gone, "new");
        await h.Array.RebuildAsync(gone, target, 0, new PassProgress { TotalStripes = g.Stripes }, default);

        // Chunk 1 row 0 (on the rebuilt member) and block 0 were both lost: listed; the new member holds the fill.
        Assert.Equal([0L, g.ChunkBlocks], h.Array.BadBlocks.Entries.Select(e => e.ArrayBlock));
        var onNew = new byte[Units.BlockBytes];
        await target.Drive.ReadAsync(MemberLayout.DataLba(0), onNew);
        Assert.All(onNew, b => Assert.Equal(BadBlockList.FillByte, b));
        await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(g.ChunkBlocks * Units.SectorsPerBlock, new byte[Units.BlockBytes]));
        var scrub = new ScrubResult();
        await h.Array.ScrubAsync(false, scrub, new PassProgress { TotalStripes = g.Stripes }, default);
        Assert.Equal((0L, 0L), (scrub.ChecksumErrors, scrub.ParityMismatches));
        // The list is on the new member too.
        var copy = new byte[Units.BlockBytes];
        await target.Drive.ReadAsync(MemberLayout.BadBlockListLba, copy);
        Assert.Equal(2, BadBlockList.TryDecode(copy, h.Uuid, out _)!.Count);
    }

    [Fact]
    public async Task AFullListTakesNoMoreAndTheBlocksItCannotTakeStayUnreadable()
    {
        const long memberDataBlocks = 1024;
        var h = new ArrayHarness(RaidLevel.Raid0, 1, chunkBlocks: 4, memberDataBlocks: memberDataBlocks, seed: 57);
        await FillAsync(h, 57);
        int extra = 6;
        for (int b = 0; b < BadBlockList.MaxEntries + extra; b++) await h.CorruptAsync(0, b);

        var result = new ScrubResult();
        await h.Array.ScrubAsync(true, result, new PassProgress { TotalStripes = h.Geometry.Stripes }, default);

        Assert.Equal(BadBlockList.MaxEntries, h.Array.BadBlocks.Count);
        Assert.Equal(BadBlockList.MaxEntries, result.Listed);
        Assert.Equal(BadBlockList.MaxEntries + extra, result.Unrepairable);
        Assert.Equal(extra, h.Array.BadBlocksRefused);
        // Not listed, not filled: still unreadable through its checksum, never the pattern.
        long last = BadBlockList.MaxEntries + extra - 1;
        var e = await Assert.ThrowsAsync<BlockIoException>(async () => await h.Array.ReadAsync(last * Units.SectorsPerBlock, new byte[Units.BlockBytes]));
        Assert.Equal(BlockErrorKind.Medium, e.Kind);
        Assert.DoesNotContain("bad-block list", e.Message);
    }

    // ---- persistence: re-assembly and takeover ---------------------------------------------------

    [Fact]
    public async Task TheListSurvivesReassemblyAndATakeoverAndALostCopy()
    {
        var shelf = new MemoryShelf();
        for (int i = 0; i < 3; i++) shelf.Insert($"d{i}", 64L << 20);
        RaidArray raid;
        var data = new byte[64 << 10];
        new System.Random(58).NextBytes(data);
        await using (var a = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "A" }))
        {
            await a.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
            await a.CreateVolumeAsync(new CreateVolumeRequest("pad", "arr0", 1L << 20));
            await a.CreateVolumeAsync(new CreateVolumeRequest("vol0", "arr0", 8L << 20));
            Assert.True(a.TryGetServedVolume("vol0", out var vol0));
            await vol0.WriteAsync(0, data, fua: true);
            raid = vol0.Array;
            // Tear the volume's block 3 and its row's parity behind the array's back, then scrub with repair.
            long arrayBlock = vol0.OffsetBlocks + 3;
            var (stripe, dataIndex, row, memberBlock) = raid.Geometry.Map(arrayBlock);
            var torn = new byte[Units.BlockBytes];
            await raid.Member(raid.Geometry.DataMember(stripe, dataIndex))!.Drive.WriteAsync(MemberLayout.DataLba(memberBlock), torn);
            var parity = torn.Select(_ => (byte)0x33).ToArray();
            await raid.Member(raid.Geometry.PMember(stripe))!.Drive.WriteAsync(MemberLayout.DataLba(memberBlock), parity);
            await raid.ScrubAsync(true, new ScrubResult(), new PassProgress { TotalStripes = raid.Geometry.Stripes }, default);
            Assert.Equal(arrayBlock, Assert.Single(raid.BadBlocks.Entries).ArrayBlock);
            // Through the volume, the medium error names the volume's sector.
            var e = await Assert.ThrowsAsync<BlockIoException>(async () => await vol0.ReadAsync(3 * Units.BlockBytes, new byte[Units.BlockBytes]));
            Assert.Equal((BlockErrorKind.Medium, 3L * Units.SectorsPerBlock), (e.Kind, e.Lba));
        }
        long listed = raid.BadBlocks.Entries[0].ArrayBlock;

        // Re-assembly on the same drives.
        await using (var again = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "A" }))
        {
            var r = again.ServedArrays.Single();
            Assert.Equal([listed], r.BadBlocks.Entries.Select(x => x.ArrayBlock));
            Assert.True(again.TryGetVolume("vol0", out var vol0));
            await Assert.ThrowsAsync<BlockIoException>(async () => await vol0.ReadAsync(3 * Units.BlockBytes, new byte[Units.BlockBytes]));
        }

        // Copy A lost on every member, and member 0's copy B too: the list is still found.
        for (int i = 0; i < 3; i++)
        {
            var drive = shelf.Open($"d{i}");
            await drive.WriteAsync(MemberLayout.BadBlockListLba, new byte[Units.BlockBytes]);
            if (i == 0) await drive.WriteAsync(MemberLayout.BadBlockListCopyLba, new byte[Units.BlockBytes]);
        }

        // The other controller takes the array over: it reads the list from the drives.
        var fresh = new byte[Units.BlockBytes];
        new System.Random(59).NextBytes(fresh);
        var b = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "B" });
        try
        {
            Assert.Empty(b.ServedArrays);
            await b.TakeOverAsync("A");
            var taken = b.ServedArrays.Single();
            Assert.Equal([listed], taken.BadBlocks.Entries.Select(x => x.ArrayBlock));
            Assert.True(b.TryGetVolume("vol0", out var v));
            await Assert.ThrowsAsync<BlockIoException>(async () => await v.ReadAsync(3 * Units.BlockBytes, new byte[Units.BlockBytes]));
            // A host rewrites it: cleared on the drives, for good.
            await v.WriteAsync(3 * Units.BlockBytes, fresh, fua: true);
            Assert.True(taken.BadBlocks.IsEmpty);
        }
        finally { await b.DisposeAsync(); }
        await using var last = await ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = "B" });
        Assert.True(last.ServedArrays.Single().BadBlocks.IsEmpty);
        Assert.True(last.TryGetVolume("vol0", out var v2));
        var back = new byte[Units.BlockBytes];
        await v2.ReadAsync(3 * Units.BlockBytes, back);
        Assert.Equal(fresh, back);
    }

    /// <summary>Counts the reads that reach a drive.</summary>
    sealed class CountingDrive(IBlockDevice inner) : IBlockDevice
    {
        long _reads;
        public IBlockDevice Inner { get; } = inner;
        public long Reads => Interlocked.Read(ref _reads);
        public string Name => Inner.Name;
        public long BlockCount => Inner.BlockCount;
        public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default)
        {
            Interlocked.Increment(ref _reads);
            return Inner.ReadAsync(lba, destination, ct);
        }
        public ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default) => Inner.WriteAsync(lba, source, fua, ct);
        public ValueTask FlushAsync(CancellationToken ct = default) => Inner.FlushAsync(ct);
        public ValueTask DisposeAsync() => Inner.DisposeAsync();
    }
}
