using Duet.Core;
using Duet.Drives;
using Duet.Raid.Management;

namespace Duet.Raid.Tests;

/// <summary>
/// Persistent LUNs (issue 7): each volume's iSCSI LUN is stored in its array's superblock when the volume is
/// created, so creating or deleting other volumes never renumbers it, and both controllers of a pair, reading
/// the same superblocks, give it the same LUN.
/// </summary>
[Trait("Claim", "ISCSI")]
public sealed class LunTests
{
    const long DriveBytes = 64L << 20;

    // ---- the superblock's LUN bytes

    static Superblock SuperblockWith(params VolumeEntry[] volumes) => new()
    {
        ArrayUuid = new Guid("11111111-2222-3333-4444-555555555555"), DriveUuid = new Guid("66666666-7777-8888-9999-aaaaaaaaaaaa"),
        Generation = 9, Level = RaidLevel.Raid5, MemberCount = 3, ChunkBlocks = 16, Slot = 1, MemberBlocks = 4096, Name = "arr0",
        Slots = [new SlotEntry(Guid.NewGuid(), SlotState.Active), new SlotEntry(Guid.NewGuid(), SlotState.Active), new SlotEntry(Guid.NewGuid(), SlotState.Active)],
        Owner = "B", Number = 3, Volumes = volumes,
    };

    [Fact]
    public void EachVolumesLunRoundTripsThroughTheSuperblockAsLunPlusOneAtByte3328PlusItsSlot()
    {
        var sb = SuperblockWith(
            new VolumeEntry("db", Guid.NewGuid(), 0, 256) { Lun = 0 },
            new VolumeEntry("web", Guid.NewGuid(), 256, 256) { Lun = Superblock.MaxLun },
            new VolumeEntry("old", Guid.NewGuid(), 512, 256),
            new VolumeEntry("log", Guid.NewGuid(), 768, 256) { Lun = 17 });
        var block = new byte[Units.BlockBytes];
        sb.Encode(block);

        Assert.Equal([1, 255, 0, 18], block[3328..3332]);
        Assert.All(block[3332..4096], b => Assert.Equal(0, b)); // empty slots and the rest stay zero
        Assert.Equal(1, BitConverter.ToInt32(block, 8));       // format version unchanged

        var back = Superblock.TryDecode(block, out var error);
        Assert.Null(error);
        Assert.Equal([0, Superblock.MaxLun, null, 17], back!.Volumes.Select(v => v.Lun));
        Assert.Equal(sb.Volumes, back.Volumes);
    }

    [Fact]
    public void ASuperblockWrittenBeforeLunsWereStoredReadsAsVolumesWithoutALun()
    {
        var sb = SuperblockWith(new VolumeEntry("db", Guid.NewGuid(), 0, 256) { Lun = 4 }, new VolumeEntry("web", Guid.NewGuid(), 256, 256) { Lun = 9 });
        var block = new byte[Units.BlockBytes];
        sb.Encode(block);
        // What a version-1 writer that knew nothing of LUNs left: those bytes reserved and zero, under its CRC.
        block.AsSpan(3328, 32).Clear();
        block.AsSpan(12, 4).Clear();
        BitConverter.TryWriteBytes(block.AsSpan(12), Crc32C.Compute(block));

        var legacy = Superblock.TryDecode(block, out var error);
        Assert.Null(error);
        Assert.Equal(["db", "web"], legacy!.Volumes.Select(v => v.Name));
        Assert.All(legacy.Volumes, v => Assert.Null(v.Lun));
        Assert.Equal(sb.Volumes.Select(v => v with { Lun = null }), legacy.Volumes);
        Assert.Equal((sb.Name, sb.Owner, sb.Number, sb.Generation, sb.ArrayUuid), (legacy.Name, legacy.Owner, legacy.Number, legacy.Generation, legacy.ArrayUuid));
    }

    [Fact]
    public void AChangedLunByteFailsTheSuperblockChecksum()
    {
        var block = new byte[Units.BlockBytes];
        SuperblockWith(new VolumeEntry("db", Guid.NewGuid(), 0, 256) { Lun = 4 }).Encode(block);
        block[3328] = 9;
        Assert.Null(Superblock.TryDecode(block, out var error));
        Assert.Equal("superblock checksum mismatch", error);
    }

    // ---- the table both controllers make of the stored LUNs

    static Superblock Array(string name, int number, params (string Name, int Uuid, int? Lun)[] volumes) => SuperblockWith(
        [.. volumes.Select(v => new VolumeEntry(v.Name, Uuid(v.Uuid), 0, 256) { Lun = v.Lun })]) with
    {
        Name = name, ArrayUuid = Uuid(0x1000 + number), Number = (byte)number,
    };

    static Guid Uuid(int n) => new($"00000000-0000-0000-0000-{n:x12}");

    static Dictionary<string, int?> LunsOf(LunTable t) => t.Entries.ToDictionary(e => e.Volume, e => e.Lun);

    [Fact]
    public void WithoutStoredLunsEveryVolumeGetsItsPlaceInNameOrder_TheMappingUsedBeforeLunsWereStored()
    {
        var t = LunTable.Resolve([Array("arr1", 1, ("web", 1, null), ("a", 2, null)), Array("arr0", 0, ("db", 3, null), ("Z", 4, null))]);
        Assert.Equal(new Dictionary<string, int?> { ["Z"] = 0, ["a"] = 1, ["db"] = 2, ["web"] = 3 }, LunsOf(t));
        Assert.All(t.Entries, e => Assert.Null(e.Warning));
    }

    [Fact]
    public void VolumesWithoutALunTakeTheLowestLunsNoStoredOneHas_InNameOrder()
    {
        var t = LunTable.Resolve([Array("arr0", 0, ("db", 1, 0), ("web", 2, 2), ("c", 3, null), ("b", 4, null), ("a", 5, 7))]);
        Assert.Equal(new Dictionary<string, int?> { ["db"] = 0, ["web"] = 2, ["b"] = 1, ["c"] = 3, ["a"] = 7 }, LunsOf(t));
        Assert.Equal(4, t.LowestFree());
        Assert.Equal("web", t.Holder(2)!.Volume);
        Assert.Null(t.Holder(4));
    }

    [Fact]
    public void TwoVolumesStoringOneLun_TheLowerVolumeUuidKeepsIt_TheOtherTakesTheLowestFree_WhateverOrderTheArraysComeIn()
    {
        var a = Array("arr0", 0, ("x", 9, 0), ("p", 3, 1));
        var b = Array("arr1", 1, ("y", 5, 0), ("q", 6, 3));
        foreach (var order in new[] { new[] { a, b }, [b, a] })
        {
            var t = LunTable.Resolve(order);
            Assert.Equal(new Dictionary<string, int?> { ["x"] = 2, ["y"] = 0, ["p"] = 1, ["q"] = 3 }, LunsOf(t));
            var x = t.Entries.Single(e => e.Volume == "x");
            Assert.Equal(0, x.Stored);
            Assert.Equal("LUN 0 is also stored for volume 'y' (array arr1), which keeps it (lower volume UUID); this volume now has LUN 2", x.Warning);
            Assert.All(t.Entries.Where(e => e.Volume != "x"), e => Assert.Null(e.Warning));
        }
    }

    [Fact]
    public void WhenAll255LunsAreTakenAVolumeWithoutOneIsLeftWithoutAndWarned()
    {
        var arrays = Enumerable.Range(0, 8).Select(n => Array($"arr{n}", n,
            [.. Enumerable.Range(0, 32).Select(i => ($"v{n * 32 + i:000}", 100 + n * 32 + i, n * 32 + i <= Superblock.MaxLun ? n * 32 + i : (int?)null))])).ToList();
        var t = LunTable.Resolve(arrays);
        Assert.Equal(256, t.Entries.Count);
        var last = t.Entries.Single(e => e.Volume == "v255");
        Assert.Null(last.Lun);
        Assert.Equal("no LUN is free (0..254 are all in use): not served over iSCSI", last.Warning);
        Assert.Null(t.LowestFree());
    }

    // ---- the array manager

    static MemoryShelf Shelf(int drives)
    {
        var shelf = new MemoryShelf();
        for (int i = 0; i < drives; i++) shelf.Insert($"d{i}", DriveBytes);
        return shelf;
    }

    static Func<Guid> Uuids(int first)
    {
        int next = first;
        return () => Uuid(Interlocked.Increment(ref next));
    }

    static Task<ArrayManager> OpenAsync(IDriveShelf shelf, string? controller = null, int firstUuid = 0) =>
        ArrayManager.OpenAsync(new ArrayManagerOptions { Shelf = shelf, Controller = controller, NewUuid = Uuids(firstUuid) });

    static Dictionary<string, int?> LunsOf(ArrayManager m) => m.Status().Volumes.ToDictionary(v => v.Name, v => v.Lun);

    static Task<VolumeInfo> CreateAsync(ArrayManager m, string name, string array, int? lun = null) =>
        m.CreateVolumeAsync(new CreateVolumeRequest(name, array, 1 << 20, lun));

    /// <summary>Rewrites both superblock copies of each drive of <paramref name="drives"/> through <paramref name="change"/> (CRC recomputed).</summary>
    static async Task RewriteSuperblocksAsync(IDriveShelf shelf, IEnumerable<string> drives, Func<Superblock, Superblock> change)
    {
        foreach (var name in drives)
        {
            var d = shelf.Open(name);
            var buf = new byte[Units.BlockBytes];
            await d.ReadAsync(MemberLayout.SuperblockLba, buf);
            var sb = Superblock.TryDecode(buf, out var error) ?? throw new InvalidOperationException($"{name}: {error}");
            change(sb).Encode(buf);
            await d.WriteAsync(MemberLayout.SuperblockLba, buf, fua: true);
            await d.WriteAsync(MemberLayout.SuperblockCopyLba, buf, fua: true);
        }
    }

    static async Task<IReadOnlyList<VolumeEntry>> StoredVolumesAsync(IDriveShelf shelf, string drive)
    {
        var buf = new byte[Units.BlockBytes];
        await shelf.Open(drive).ReadAsync(MemberLayout.SuperblockCopyLba, buf);
        return Superblock.TryDecode(buf, out _)!.Volumes;
    }

    [Fact]
    public async Task ANewVolumeTakesTheLowestFreeLun_AVolumeNamedToSortFirstRenumbersNothing_AndADeleteFreesOnlyItsOwn()
    {
        var shelf = Shelf(3);
        await using (var m = await OpenAsync(shelf))
        {
            await m.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"]));
            Assert.Equal(0, (await CreateAsync(m, "db", "arr0")).Lun);
            Assert.Equal(1, (await CreateAsync(m, "web", "arr0")).Lun);
            Assert.Equal(2, (await CreateAsync(m, "log", "arr0")).Lun);
            Assert.Equal(3, (await CreateAsync(m, "aaa", "arr0")).Lun); // sorts first: takes a new LUN, moves no other
            Assert.Equal(new Dictionary<string, int?> { ["aaa"] = 3, ["db"] = 0, ["log"] = 2, ["web"] = 1 }, LunsOf(m));

            await m.DeleteVolumeAsync("web");
            Assert.Equal(new Dictionary<string, int?> { ["aaa"] = 3, ["db"] = 0, ["log"] = 2 }, LunsOf(m));
            Assert.Equal(1, (await CreateAsync(m, "zzz", "arr0")).Lun); // the freed LUN is the lowest free one
            Assert.Equal([(0, "db"), (1, "zzz"), (2, "log"), (3, "aaa")], m.LunAssignments);
            Assert.Equal([0, 1, 2, 3], m.LunVolumes.Select(v => v.Lun));
            Assert.Equal(["db", "zzz", "log", "aaa"], m.LunVolumes.Select(v => v.Volume.Name));
        }
        // Stored: the next start reads the same LUNs back.
        await using (var m = await OpenAsync(shelf))
            Assert.Equal(new Dictionary<string, int?> { ["aaa"] = 3, ["db"] = 0, ["log"] = 2, ["zzz"] = 1 }, LunsOf(m));
        Assert.Equal([0, 2, 3, 1], (await StoredVolumesAsync(shelf, "d1")).Select(v => v.Lun));
    }

    [Fact]
    public async Task ALunAskedForIsKept_OneAnotherVolumeHasIsAConflict_AndOneOutOfRangeIsInvalid_NeitherChangingAnything()
    {
        var shelf = Shelf(3);
        await using var m = await OpenAsync(shelf);
        await m.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"]));
        Assert.Equal(7, (await CreateAsync(m, "db", "arr0", lun: 7)).Lun);
        Assert.Equal(0, (await CreateAsync(m, "web", "arr0")).Lun);
        long generation = m.Status().Arrays.Single().Generation;

        var taken = await Assert.ThrowsAsync<ManagementException>(() => CreateAsync(m, "log", "arr0", lun: 7));
        Assert.Equal(ManagementErrorKind.Conflict, taken.Kind);
        Assert.Equal("LUN 7 is already used by volume 'db' (array arr0); choose another, or leave --lun out for the lowest free LUN", taken.Message);
        foreach (var bad in new[] { -1, Superblock.MaxLun + 1, 1000 })
        {
            var e = await Assert.ThrowsAsync<ManagementException>(() => CreateAsync(m, "log", "arr0", lun: bad));
            Assert.Equal(ManagementErrorKind.Invalid, e.Kind);
            Assert.Equal($"LUN {bad} is out of range: a volume's LUN is 0 to 254", e.Message);
        }
        Assert.Equal(["db", "web"], m.Status().Volumes.Select(v => v.Name));
        Assert.Equal(generation, m.Status().Arrays.Single().Generation);
        Assert.Equal(Superblock.MaxLun, (await CreateAsync(m, "log", "arr0", lun: Superblock.MaxLun)).Lun);
    }

    /// <summary>arr0 served by A (d0-d2), arr1 by B (d3-d5); A's volume UUIDs from 0x1000, B's from 0x2000, setup's from 0x3000.</summary>
    static async Task<MemoryShelf> PairShelfAsync()
    {
        var shelf = Shelf(6);
        await using var setup = await OpenAsync(shelf, "A", 0x3000);
        await setup.CreateArrayAsync(new CreateArrayRequest("arr0", 5, ["d0", "d1", "d2"], Owner: "A"));
        await setup.CreateArrayAsync(new CreateArrayRequest("arr1", 5, ["d3", "d4", "d5"], Owner: "B"));
        return shelf;
    }

    [Fact]
    public async Task BothControllersGiveEachVolumeTheSameLun_AndAVolumeCreatedThroughEitherCountsThePeersLuns()
    {
        var shelf = await PairShelfAsync();
        await using var a = await OpenAsync(new MemoryShelf(shelf), "A", 0x1000);
        await using var b = await OpenAsync(new MemoryShelf(shelf), "B", 0x2000);
        Assert.Equal(0, (await CreateAsync(a, "db", "arr0")).Lun);
        await b.RescanAsync(); // what A's controller's array-table update makes B do
        Assert.Equal(1, (await CreateAsync(b, "aaa", "arr1")).Lun);
        await a.RescanAsync();
        var expected = new Dictionary<string, int?> { ["aaa"] = 1, ["db"] = 0 };
        Assert.Equal(expected, LunsOf(a));
        Assert.Equal(expected, LunsOf(b));
        Assert.Equal(a.LunAssignments, b.LunAssignments);
        Assert.Equal([(0, "db")], a.LunVolumes.Select(v => (v.Lun, v.Volume.Name))); // the volumes A serves
        // A volume name either controller has is taken on both; so is a LUN.
        var again = await Assert.ThrowsAsync<ManagementException>(() => CreateAsync(a, "aaa", "arr0"));
        Assert.Equal((ManagementErrorKind.Conflict, "a volume named 'aaa' already exists (on array arr1)"), (again.Kind, again.Message));
        var usedByPeer = await Assert.ThrowsAsync<ManagementException>(() => CreateAsync(a, "web", "arr0", lun: 1));
        Assert.Equal("LUN 1 is already used by volume 'aaa' (array arr1); choose another, or leave --lun out for the lowest free LUN", usedByPeer.Message);
    }

    [Fact]
    public async Task SuperblocksWithoutLunsGetThemInNameOrderAtLoad_TheSameOnBothControllers_AndEachOwnerStoresItsOwn()
    {
        var shelf = await PairShelfAsync();
        await using (var a = await OpenAsync(new MemoryShelf(shelf), "A", 0x1000))
        {
            await CreateAsync(a, "web", "arr0");
            await CreateAsync(a, "b", "arr0");
        }
        await using (var b = await OpenAsync(new MemoryShelf(shelf), "B", 0x2000))
            await CreateAsync(b, "a", "arr1");
        // As a Duet that stored no LUNs left them.
        await RewriteSuperblocksAsync(shelf, ["d0", "d1", "d2", "d3", "d4", "d5"], sb => sb with { Volumes = [.. sb.Volumes.Select(v => v with { Lun = null })] });

        await using var a2 = await OpenAsync(new MemoryShelf(shelf), "A", 0x1000);
        var expected = new Dictionary<string, int?> { ["a"] = 0, ["b"] = 1, ["web"] = 2 };
        Assert.Equal(expected, LunsOf(a2));
        Assert.Equal([2, 1], (await StoredVolumesAsync(shelf, "d0")).Select(v => v.Lun)); // A stored its own
        Assert.Equal([null], (await StoredVolumesAsync(shelf, "d3")).Select(v => v.Lun)); // and left B's alone
        await using var b2 = await OpenAsync(new MemoryShelf(shelf), "B", 0x2000);
        Assert.Equal(expected, LunsOf(b2));
        Assert.Equal([0], (await StoredVolumesAsync(shelf, "d4")).Select(v => v.Lun));
        await a2.RescanAsync();
        Assert.Equal(expected, LunsOf(a2));
        Assert.All(a2.Status().Volumes, v => Assert.Null(v.LunWarning));
    }

    [Fact]
    public async Task TwoVolumesCreatedAtOnceThroughBothControllersAreGivenOneLun_BothResolveItTheSameWay_WarnInStatus_AndTheLosersOwnerStoresItsNewLun()
    {
        var shelf = await PairShelfAsync();
        // A's volume UUIDs from 0x5000, B's from 0x2000: B's volume has the lower UUID.
        await using var a = await OpenAsync(new MemoryShelf(shelf), "A", 0x5000);
        await using var b = await OpenAsync(new MemoryShelf(shelf), "B", 0x2000);
        // Each creates a volume before it has read the other's superblocks: both take LUN 0.
        Assert.Equal(0, (await CreateAsync(a, "x", "arr0")).Lun);
        Assert.Equal(0, (await CreateAsync(b, "y", "arr1")).Lun);
        int toldByA = 0, toldByB = 0;
        a.LunsStored += () => toldByA++;
        b.LunsStored += () => toldByB++;

        // B reads A's superblocks: y (lower UUID) keeps LUN 0, x takes the lowest free; x is A's to store, so B writes nothing.
        await b.RescanAsync();
        const string Warning = "LUN 0 is also stored for volume 'y' (array arr1), which keeps it (lower volume UUID); this volume now has LUN 1";
        Assert.Equal(new Dictionary<string, int?> { ["x"] = 1, ["y"] = 0 }, LunsOf(b));
        Assert.Equal(Warning, b.Status().Volumes.Single(v => v.Name == "x").LunWarning);
        Assert.Equal([0], (await StoredVolumesAsync(shelf, "d0")).Select(v => v.Lun));
        Assert.Equal(0, toldByB);

        // A reads B's: the same answer; A stores x's new LUN and says so (its controller tells B to read it).
        await a.RescanAsync();
        Assert.Equal(1, toldByA);
        Assert.Equal([1], (await StoredVolumesAsync(shelf, "d0")).Select(v => v.Lun));
        await b.RescanAsync();
        foreach (var m in new[] { a, b })
        {
            Assert.Equal(new Dictionary<string, int?> { ["x"] = 1, ["y"] = 0 }, LunsOf(m));
            Assert.Equal(Warning, m.Status().Volumes.Single(v => v.Name == "x").LunWarning);
            Assert.Null(m.Status().Volumes.Single(v => v.Name == "y").LunWarning);
        }

        // Deleting y frees LUN 0 and moves nothing: x keeps LUN 1 on both (it is stored now), still warned.
        await b.DeleteVolumeAsync("y");
        await a.RescanAsync();
        Assert.Equal((1, 0), (toldByA, toldByB));
        Assert.Equal(new Dictionary<string, int?> { ["x"] = 1 }, LunsOf(a));
        Assert.Equal(new Dictionary<string, int?> { ["x"] = 1 }, LunsOf(b));
        Assert.Equal(Warning, a.Status().Volumes.Single().LunWarning);
        Assert.Equal(0, (await CreateAsync(b, "z", "arr1")).Lun);
    }
}
