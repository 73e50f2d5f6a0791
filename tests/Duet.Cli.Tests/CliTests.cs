using System.Text.Json;
using Duet.Core;
using Duet.Host.Management;
using Duet.Raid.Management;
using DriveInfo = Duet.Raid.Management.DriveInfo;

namespace Duet.Cli.Tests;

[Trait("Area", "Cli")]
public sealed class CliTests : IAsyncLifetime
{
    static readonly long GiB = Units.GiB(1);
    Controller controller = null!;

    InMemoryArrayService Service => controller.Service;

    public async Task InitializeAsync() => controller = await Controller.StartAsync(new InMemoryArrayService().WithDrives(10, GiB));

    public async Task DisposeAsync() => await controller.DisposeAsync();

    Task<CliResult> Duet(params string[] args) => controller.Duet(args);

    static T Parse<T>(string json, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        JsonSerializer.Deserialize(json, info) ?? throw new InvalidOperationException("null JSON");

    static ManagementJsonContext J => ManagementJsonContext.Default;

    async Task CreateR6()
    {
        await Service.CreateArrayAsync(new CreateArrayRequest("r0", 6, ["d0", "d1", "d2", "d3"]));
    }

    static void Ok(CliResult r)
    {
        Assert.True(r.Code == 0, $"exit {r.Code}\nstdout:\n{r.Out}\nstderr:\n{r.Err}");
        Assert.Equal("", r.Err);
    }

    // ---- status ----

    [Fact]
    public async Task StatusShowsArraysMembersSparesVolumesAndFreeDrives()
    {
        await CreateR6();
        await Service.AddSpareAsync(new AddSpareRequest("d4", "r0"));
        await Service.CreateVolumeAsync(new CreateVolumeRequest("vol0", "r0", Units.MiB(512)));

        var r = await Duet("status");

        Ok(r);
        Assert.Contains("array r0: RAID 6, optimal, 2 GiB (1.5 GiB free), chunk 64 KiB", r.Out);
        Assert.Contains("  SLOT  DRIVE  STATE\n  0     d0     active\n  1     d1     active\n  2     d2     active\n  3     d3     active\n", r.Out);
        Assert.Contains("  spares: d4\n", r.Out);
        Assert.Contains("volumes:\n  NAME  ARRAY  SIZE     OFFSET  LUN\n  vol0  r0     512 MiB  0 B     0\n", r.Out);
        Assert.Contains("free drives: d5 (1 GiB), d6 (1 GiB), d7 (1 GiB), d8 (1 GiB), d9 (1 GiB)\n", r.Out);
        Assert.DoesNotContain("rebuild", r.Out);
    }

    [Fact]
    public async Task StatusOnAnEmptyControllerSaysSo()
    {
        var r = await Duet("status");

        Ok(r);
        Assert.StartsWith("no arrays\n", r.Out);
        Assert.Contains("volumes: none\n", r.Out);
    }

    [Fact]
    public async Task StatusJsonIsTheStatusRecord()
    {
        await CreateR6();

        var r = await Duet("status", "--json");

        Ok(r);
        var status = Parse(r.Out, J.StatusInfo);
        var array = Assert.Single(status.Arrays);
        Assert.Equal("r0", array.Name);
        Assert.Equal(6, array.Level);
        Assert.Equal(2 * GiB, array.CapacityBytes);
        Assert.Equal(["d0", "d1", "d2", "d3"], array.Members.Select(m => m.Drive));
        Assert.Equal(10, status.Drives.Count);
        Assert.Contains("\"capacityBytes\": 2147483648", r.Out); // camelCase on the wire
    }

    [Fact]
    public async Task StatusShowsRebuildProgressAsAPlainLineWhenNotATerminal()
    {
        await CreateR6();
        await Service.FailDriveAsync("d3");
        await Service.AddSpareAsync(new AddSpareRequest("d8", "r0"));
        Service.SetRebuild("r0", new ProgressInfo(0.42, (long)(0.42 * GiB), GiB, 95.2, "d8"));

        var r = await Duet("status");

        Ok(r);
        Assert.Contains("array r0: RAID 6, rebuilding,", r.Out);
        Assert.Contains("  3     d8     rebuilding\n", r.Out);
        Assert.Contains("  rebuild 42.0% (430 MiB of 1 GiB) onto d8 at 95.2 MiB/s\n", r.Out);
        Assert.DoesNotContain("━", r.Out);
        Assert.DoesNotContain("\u001b[", r.Out);
    }

    [Fact]
    public async Task StatusShowsScrubProgressAndFindings()
    {
        await CreateR6();
        Service.SetScrub("r0", new ScrubReport(true, new ProgressInfo(0.25, GiB / 2, 2 * GiB, 80, null), 4096, 1, 0, 1, 0,
            ["stripe 12 member 3 (d3): checksum mismatch, repaired"]));

        var running = await Duet("status");

        Ok(running);
        Assert.Contains("  scrub 25.0% (512 MiB of 2 GiB) at 80.0 MiB/s\n", running.Out);
        Assert.Contains("    4096 stripes checked, 1 checksum errors, 0 parity mismatches, 1 repaired, 0 unrepairable so far\n", running.Out);
        Assert.Contains("    stripe 12 member 3 (d3): checksum mismatch, repaired\n", running.Out);

        Service.SetScrub("r0", new ScrubReport(false, new ProgressInfo(1, 2 * GiB, 2 * GiB, 0, null), 16384, 0, 2, 1, 1,
            ["stripe 7 member 0 (d0): parity mismatch, repaired", "stripe 9 member 1 (d1): parity mismatch, unrepairable"]));

        var finished = await Duet("status");

        Ok(finished);
        Assert.Contains("  scrub finished: 16384 stripes checked, 0 checksum errors, 2 parity mismatches, 1 repaired, 1 unrepairable\n", finished.Out);
        Assert.Contains("    stripe 9 member 1 (d1): parity mismatch, unrepairable\n", finished.Out);
    }

    // ---- array ----

    [Fact]
    public async Task ArrayCreateCreatesTheArrayAndPrintsIt()
    {
        var r = await Duet("array", "create", "r0", "--level", "6", "--drives", "d0,d1,d2,d3");

        Ok(r);
        Assert.StartsWith("created array r0\narray r0: RAID 6, optimal, 2 GiB (2 GiB free), chunk 64 KiB", r.Out);
        var array = Assert.Single(Service.Status().Arrays);
        Assert.Equal(["d0", "d1", "d2", "d3"], array.Members.Select(m => m.Drive));
    }

    [Fact]
    public async Task ArrayCreatePassesChunkAndRebuildRate()
    {
        var r = await Duet("array", "create", "r1", "--level", "10", "--drives", "d0,d1", "--drives", "d2,d3", "--chunk", "128k", "--rebuild-rate", "50", "--json");

        Ok(r);
        var sent = Service.LastCreateArray!;
        Assert.Equal(("r1", 10, 128, 50), (sent.Name, sent.Level, sent.ChunkKiB, sent.RebuildMiBps));
        Assert.Equal(["d0", "d1", "d2", "d3"], sent.Drives);
        var array = Parse(r.Out, J.ArrayInfo);
        Assert.Equal(128, array.ChunkKiB);
        Assert.Equal(10, array.Level);
        Assert.Equal(2 * GiB, array.CapacityBytes);
    }

    [Fact]
    public async Task ArrayCreateWithTooFewDrivesIsRefusedWithExit1AndChangesNothing()
    {
        var r = await Duet("array", "create", "r0", "--level", "6", "--drives", "d0,d1,d2");

        Assert.Equal(1, r.Code);
        Assert.Equal("duet: RAID 6 needs at least 4 drives; got 3\n", r.Err);
        Assert.Equal("", r.Out);
        Assert.Empty(Service.Status().Arrays);
        Assert.All(Service.Status().Drives, d => Assert.Equal("free", d.Role));
    }

    [Fact]
    public async Task ArrayCreateWithADriveInUseIsAConflict()
    {
        await CreateR6();

        var r = await Duet("array", "create", "r1", "--level", "1", "--drives", "d3,d4", "--json");

        Assert.Equal(1, r.Code);
        Assert.Equal("", r.Err);
        Assert.Equal("drive d3 is in use (member of r0)", Parse(r.Out, J.ErrorResponse).Error);
        Assert.Single(Service.Status().Arrays);
    }

    [Theory]
    [InlineData("7")]
    [InlineData("raid5")]
    public async Task ArrayCreateWithABadLevelExits2WithoutAsking(string level)
    {
        var r = await Duet("array", "create", "r0", "--level", level, "--drives", "d0,d1,d2,d3");

        Assert.Equal(2, r.Code);
        Assert.Contains($"'{level}'", r.Err);
        Assert.Contains("Run 'duet array create --help' for usage.", r.Err);
        Assert.Equal("", r.Out);
        Assert.Null(Service.LastCreateArray);
    }

    [Theory]
    [InlineData("64", "duet: --chunk 64 is not a whole number of KiB")]
    [InlineData("lots", "duet: --chunk 'lots' is not a size")]
    public async Task ArrayCreateWithABadChunkExits2(string chunk, string message)
    {
        var r = await Duet("array", "create", "r0", "--level", "5", "--drives", "d0,d1,d2", "--chunk", chunk);

        Assert.Equal(2, r.Code);
        Assert.StartsWith(message, r.Err);
        Assert.Null(Service.LastCreateArray);
    }

    [Fact]
    public async Task ArrayCreateWithoutDrivesExits2()
    {
        var r = await Duet("array", "create", "r0", "--level", "5");

        Assert.Equal(2, r.Code);
        Assert.Contains("--drives", r.Err);
    }

    [Fact]
    public async Task ArrayDeleteOfAnUnknownArrayExits1WithTheMessage()
    {
        var r = await Duet("array", "delete", "nope");

        Assert.Equal(1, r.Code);
        Assert.Equal("duet: no array named nope\n", r.Err);
        Assert.Equal("", r.Out);
    }

    [Fact]
    public async Task ArrayDeleteOfAnUnknownArrayWithJsonPrintsTheErrorOnStdout()
    {
        var r = await Duet("array", "delete", "nope", "--json");

        Assert.Equal(1, r.Code);
        Assert.Equal("", r.Err);
        Assert.Equal("no array named nope", Parse(r.Out, J.ErrorResponse).Error);
    }

    // ---- array bad-blocks (AW-5) ----

    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task ArrayBadBlocksListsEachBlockWithItsVolumeAndLbas()
    {
        await CreateR6();
        Service.SetBadBlocks("r0",
            new BadBlockInfo(259, 2072, [0, 1, 2, 3, 4, 5, 6, 7], "vol0", 24, "settle"),
            new BadBlockInfo(4096, 32772, [4, 5, 7], null, null, "scrub"));

        var r = await Duet("array", "bad-blocks", "r0");

        Ok(r);
        Assert.Equal(
            "array r0: 2 bad blocks (the list holds at most 504); reads of a bad sector fail with a medium error until a host writes it again\n" +
            "  ARRAY BLOCK  ARRAY LBA  SECTORS  VOLUME  VOLUME LBA  FOUND BY\n" +
            "  259          2072       0-7      vol0    24          settle\n" +
            "  4096         32772      4-5,7    -       -           scrub\n", r.Out);

        var json = await Duet("array", "bad-blocks", "r0", "--json");
        Ok(json);
        var report = Parse(json.Out, J.BadBlockReport);
        Assert.Equal("r0", report.Array);
        Assert.Equal([259L, 4096L], report.Blocks.Select(b => b.ArrayBlock));
        Assert.Equal(24L, report.Blocks[0].VolumeLba);

        var status = await Duet("status");
        Assert.Contains("  bad blocks: 2 (reads of them fail until a host writes them again; see 'duet array bad-blocks r0')\n", status.Out);
    }

    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task ArrayBadBlocksOfAnArrayWithNoneSaysSoAndOfAnUnknownArrayExits1()
    {
        await CreateR6();
        var r = await Duet("array", "bad-blocks", "r0");
        Ok(r);
        Assert.Equal("array r0: no bad blocks\n", r.Out);
        Assert.DoesNotContain("bad blocks:", (await Duet("status")).Out);

        var unknown = await Duet("array", "bad-blocks", "nope");
        Assert.Equal(1, unknown.Code);
        Assert.Equal("duet: no array named nope\n", unknown.Err);
        Assert.Equal("", unknown.Out);

        var missing = await Duet("array", "bad-blocks");
        Assert.Equal(2, missing.Code);
    }

    [Fact]
    public async Task ArrayDeleteFreesItsDrives()
    {
        await CreateR6();

        var human = await Duet("array", "delete", "r0");

        Ok(human);
        Assert.Equal("deleted array r0\n", human.Out);
        Assert.Empty(Service.Status().Arrays);
        Assert.All(Service.Status().Drives, d => Assert.Equal("free", d.Role));

        await CreateR6();
        var json = await Duet("array", "delete", "r0", "--json");

        Ok(json);
        Assert.True(Parse(json.Out, J.OkResponse).Ok);
        Assert.Empty(Service.Status().Arrays);
    }

    [Fact]
    public async Task ArrayDeleteWithVolumesIsRefused()
    {
        await CreateR6();
        await Service.CreateVolumeAsync(new CreateVolumeRequest("vol0", "r0", 0));

        var r = await Duet("array", "delete", "r0");

        Assert.Equal(1, r.Code);
        Assert.Equal("duet: array r0 still has volumes (vol0); delete them first\n", r.Err);
        Assert.Single(Service.Status().Arrays);
    }

    [Fact]
    public async Task ArrayListShowsATableOrJson()
    {
        var empty = await Duet("array", "list");
        Ok(empty);
        Assert.Equal("no arrays\n", empty.Out);

        await CreateR6();
        await Service.AddSpareAsync(new AddSpareRequest("d4", "r0"));

        var human = await Duet("array", "list");
        Ok(human);
        Assert.Equal(
            "NAME  LEVEL   CAPACITY  FREE   STATE    OWNER  PREFERRED  MEMBERS      SPARES\n" +
            "r0    RAID 6  2 GiB     2 GiB  optimal  A      A          d0,d1,d2,d3  d4\n", human.Out);

        var json = await Duet("array", "list", "--json");
        Ok(json);
        var arrays = Parse(json.Out, J.IReadOnlyListArrayInfo);
        Assert.Equal(["d4"], Assert.Single(arrays).Spares);
    }

    // ---- volume ----

    [Fact]
    public async Task VolumeCreateParsesTheSize()
    {
        await CreateR6();

        var r = await Duet("volume", "create", "vol0", "--array", "r0", "--size", "512M");

        Ok(r);
        Assert.Equal("created volume vol0: 512 MiB on array r0 at offset 0 B, iSCSI LUN 0\n", r.Out);
        Assert.Equal(Units.MiB(512), Assert.Single(Service.Status().Volumes).SizeBytes);
    }

    [Fact]
    public async Task VolumeCreateWithoutASizeTakesTheRestOfTheArray()
    {
        await CreateR6();
        await Service.CreateVolumeAsync(new CreateVolumeRequest("vol0", "r0", GiB / 2));

        var r = await Duet("volume", "create", "vol1", "--array", "r0", "--json");

        Ok(r);
        var volume = Parse(r.Out, J.VolumeInfo);
        Assert.Equal(new VolumeInfo("vol1", "r0", GiB * 3 / 2, GiB / 2) { Lun = 1 }, volume);
    }

    [Fact]
    [Trait("Claim", "ISCSI")]
    public async Task VolumeCreateWithLunAsksForThatLun_AndALunInUseIsRefusedWithTheControllersMessage()
    {
        await CreateR6();
        await Service.CreateVolumeAsync(new CreateVolumeRequest("vol0", "r0", GiB / 2));

        var r = await Duet("volume", "create", "vol1", "--array", "r0", "--size", "512M", "--lun", "7");
        Ok(r);
        Assert.Equal("created volume vol1: 512 MiB on array r0 at offset 512 MiB, iSCSI LUN 7\n", r.Out);
        Assert.Equal(7, Service.Status().Volumes.Single(v => v.Name == "vol1").Lun);

        var taken = await Duet("volume", "create", "vol2", "--array", "r0", "--size", "512M", "--lun", "0");
        Assert.Equal(1, taken.Code);
        Assert.Equal("duet: LUN 0 is already used by volume 'vol0'\n", taken.Err);

        var bad = await Duet("volume", "create", "vol2", "--array", "r0", "--size", "512M", "--lun", "x");
        Assert.Equal(2, bad.Code);
        Assert.Equal(2, Service.Status().Volumes.Count);
    }

    [Fact]
    public async Task VolumeCreateWithABadSizeExits2()
    {
        await CreateR6();

        var r = await Duet("volume", "create", "vol0", "--array", "r0", "--size", "12x");

        Assert.Equal(2, r.Code);
        Assert.StartsWith("duet: --size '12x' is not a size", r.Err);
        Assert.Empty(Service.Status().Volumes);
    }

    [Fact]
    public async Task VolumeCreateOnAnUnknownArrayExits1()
    {
        var r = await Duet("volume", "create", "vol0", "--array", "nope", "--size", "1G");

        Assert.Equal(1, r.Code);
        Assert.Equal("duet: no array named nope\n", r.Err);
    }

    [Fact]
    public async Task VolumeDeleteAndList()
    {
        await CreateR6();
        await Service.CreateVolumeAsync(new CreateVolumeRequest("vol0", "r0", GiB));
        await Service.CreateVolumeAsync(new CreateVolumeRequest("vol1", "r0", GiB));

        var list = await Duet("volume", "list");
        Ok(list);
        Assert.Equal("NAME  ARRAY  SIZE   OFFSET  LUN\nvol0  r0     1 GiB  0 B     0\nvol1  r0     1 GiB  1 GiB   1\n", list.Out);

        var delete = await Duet("volume", "delete", "vol0");
        Ok(delete);
        Assert.Equal("deleted volume vol0\n", delete.Out);

        var json = await Duet("volume", "list", "--json");
        Ok(json);
        Assert.Equal("vol1", Assert.Single(Parse(json.Out, J.IReadOnlyListVolumeInfo)).Name);

        var again = await Duet("volume", "delete", "vol0", "--json");
        Assert.Equal(1, again.Code);
        Assert.Equal("no volume named vol0", Parse(again.Out, J.ErrorResponse).Error);
    }

    // ---- drive ----

    [Fact]
    public async Task DriveListShowsRoleArraySlotAndState()
    {
        await CreateR6();

        var r = await Duet("drive", "list");

        Ok(r);
        var lines = r.Out.Split('\n');
        Assert.Equal("NAME  SIZE   ROLE    ARRAY  SLOT  STATE", lines[0]);
        Assert.Equal("d0    1 GiB  member  r0     0     ok", lines[1]);
        Assert.Equal("d9    1 GiB  free    -      -     ok", lines[10]);

        var json = await Duet("drive", "list", "--json");
        Ok(json);
        var drives = Parse(json.Out, J.IReadOnlyListDriveInfo);
        Assert.Equal(3, drives.Single(d => d.Name == "d3").Slot);
    }

    [Fact]
    public async Task DriveAddCreatesADrive()
    {
        var r = await Duet("drive", "add", "d10", "--size", "2G");

        Ok(r);
        Assert.Equal("added drive d10: 2 GiB, free, ok\n", r.Out);
        Assert.Equal(2 * GiB, Service.Status().Drives.Single(d => d.Name == "d10").SizeBytes);

        var json = await Duet("drive", "add", "d11", "--size", "1G", "--json");
        Ok(json);
        Assert.Equal(new DriveInfo("d11", GiB, "free", null, null, "ok"), Parse(json.Out, J.DriveInfo));

        var taken = await Duet("drive", "add", "d10", "--size", "1G");
        Assert.Equal(1, taken.Code);
        Assert.Equal("duet: a drive named d10 already exists\n", taken.Err);

        var missingSize = await Duet("drive", "add", "d12");
        Assert.Equal(2, missingSize.Code);
        Assert.Contains("--size", missingSize.Err);
    }

    [Fact]
    public async Task DriveFailDegradesTheArray()
    {
        await CreateR6();

        var r = await Duet("drive", "fail", "d2");

        Ok(r);
        Assert.Equal("failed drive d2 (see 'duet status' for the array's state)\n", r.Out);
        Assert.Equal("degraded", Service.Status().Arrays[0].State);

        var json = await Duet("drive", "fail", "d1", "--json");
        Ok(json);
        Assert.Equal("{\n  \"ok\": true\n}\n", json.Out);

        var unknown = await Duet("drive", "fail", "d99");
        Assert.Equal(1, unknown.Code);
        Assert.Equal("duet: no drive named d99\n", unknown.Err);
    }

    [Fact]
    public async Task DriveReplaceRebuildsOntoTheNewDrive()
    {
        await CreateR6();
        await Service.FailDriveAsync("d1");

        var r = await Duet("drive", "replace", "d1", "--with", "d7");

        Ok(r);
        Assert.Equal("replacing drive d1 with d7 (see 'duet status' for rebuild progress)\n", r.Out);
        var array = Service.Status().Arrays[0];
        Assert.Equal(new MemberInfo(1, "d7", "rebuilding"), array.Members[1]);
        Assert.Equal("d7", array.Rebuild?.TargetDrive);

        var inUse = await Duet("drive", "replace", "d2", "--with", "d7", "--json");
        Assert.Equal(1, inUse.Code);
        Assert.Equal("drive d7 is in use (member of r0)", Parse(inUse.Out, J.ErrorResponse).Error);

        var missingWith = await Duet("drive", "replace", "d2");
        Assert.Equal(2, missingWith.Code);
        Assert.Contains("--with", missingWith.Err);
    }

    // ---- spare, scrub ----

    [Fact]
    public async Task SpareAddOnADegradedArrayStartsARebuild()
    {
        await CreateR6();
        await Service.FailDriveAsync("d0");

        var r = await Duet("spare", "add", "d5", "--array", "r0");

        Ok(r);
        Assert.Equal("added d5 as a hot spare of r0\n", r.Out);
        var array = Service.Status().Arrays[0];
        Assert.Equal("rebuilding", array.State);
        Assert.Equal("d5", array.Members[0].Drive);

        var json = await Duet("spare", "add", "d6", "--array", "r0", "--json");
        Ok(json);
        Assert.True(Parse(json.Out, J.OkResponse).Ok);
        Assert.Equal(["d6"], Service.Status().Arrays[0].Spares);

        var unknownArray = await Duet("spare", "add", "d7", "--array", "r9");
        Assert.Equal(1, unknownArray.Code);
        Assert.Equal("duet: no array named r9\n", unknownArray.Err);
    }

    [Fact]
    public async Task ScrubStartRepairsUnlessToldNotTo()
    {
        await CreateR6();

        var r = await Duet("scrub", "start", "r0");

        Ok(r);
        Assert.Equal("started scrub of r0 (repairing what it finds; see 'duet status')\n", r.Out);
        Assert.True(Service.LastScrub?.Repair);

        var again = await Duet("scrub", "start", "r0");
        Assert.Equal(1, again.Code);
        Assert.Equal("duet: array r0 is already being scrubbed\n", again.Err);

        Service.SetScrub("r0", new ScrubReport(false, new ProgressInfo(1, 2 * GiB, 2 * GiB, 0, null), 1, 0, 0, 0, 0, []));
        var reportOnly = await Duet("scrub", "start", "r0", "--no-repair", "--json");
        Ok(reportOnly);
        Assert.False(Service.LastScrub?.Repair);
        Assert.True(Parse(reportOnly.Out, J.OkResponse).Ok);
    }
}
