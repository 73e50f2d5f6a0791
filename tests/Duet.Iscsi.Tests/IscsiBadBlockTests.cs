using System.Buffers.Binary;
using Duet.Core;
using Duet.Drives;
using Duet.Iscsi.Scsi;
using Duet.Raid;
using Microsoft.Extensions.Logging.Abstractions;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

/// <summary>
/// AW-5 at the SCSI edge: a read that covers a block on the array's bad-block list ends in CHECK
/// CONDITION, MEDIUM ERROR / UNRECOVERED READ ERROR (03/11/00), with the first bad sector's LBA (the
/// volume's, not the array's) in INFORMATION; a write of the block clears it.
/// </summary>
[Trait("Claim", "AW-5")]
public class IscsiBadBlockTests
{
    /// <summary>A RAID 5 array with a volume starting 4 blocks in; the volume's block 1 (array block 5) torn with
    /// its row's parity and listed by settling its stripe.</summary>
    static async Task<(RaidArray Array, RaidVolume Volume, byte[] Data)> ListedAsync()
    {
        const long memberDataBlocks = 256;
        long driveBlocks = MemberLayout.MetadataBlocks + MemberLayout.GroupBlocks;
        var drives = Enumerable.Range(0, 3).Select(i => new MemoryDrive($"d{i}", driveBlocks)).ToArray();
        var uuid = Guid.NewGuid();
        var g = new ArrayGeometry(RaidLevel.Raid5, 3, 4, memberDataBlocks);
        var array = new RaidArray("a", uuid, g, drives.Select((d, i) => (MemberDisk?)new MemberDisk(d, i, uuid, g.MemberBlocks)).ToArray(),
            [MemberStatus.Active, MemberStatus.Active, MemberStatus.Active], TimeProvider.System, NullLogger.Instance);
        var volume = new RaidVolume("v0", array, 4, 64);
        var data = Pattern(64 * 8, 3);
        await volume.WriteAsync(0, data, fua: true);
        var (stripe, dataIndex, _, memberBlock) = g.Map(5);
        await drives[g.DataMember(stripe, dataIndex)].WriteAsync(MemberLayout.DataLba(memberBlock), new byte[Units.BlockBytes]);
        await drives[g.PMember(stripe)].WriteAsync(MemberLayout.DataLba(memberBlock), Enumerable.Repeat((byte)9, Units.BlockBytes).ToArray());
        await array.ScrubAsync(true, new ScrubResult(), new PassProgress { TotalStripes = g.Stripes }, default); // a scrub with repair lists it
        Assert.Equal(5, Assert.Single(array.BadBlocks.Entries).ArrayBlock);
        return (array, volume, data);
    }

    [Fact]
    public async Task AReadOfAListedBlockIsAMediumErrorNamingTheVolumesLbaOfTheFirstBadSector()
    {
        var (array, volume, data) = await ListedAsync();
        var device = new ScsiDevice(new VolumeList(volume));
        async Task<ScsiResult> Run(byte[] cdb, byte[]? dataOut = null) =>
            await device.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = 0, Cdb = cdb, DataOut = dataOut ?? [] }, default);
        CheckCondition(await Run(Cdb.TestUnitReady()), 6, 0x29, 0); // power on

        var r = await Run(Cdb.Read10(8, 8));
        CheckCondition(r, 3, 0x11, 0x00);
        Assert.Equal(8u, Information(r));
        r = await Run(Cdb.Read16(10, 1));     // part of the block
        CheckCondition(r, 3, 0x11, 0x00);
        Assert.Equal(10u, Information(r));
        r = await Run(Cdb.Read10(0, 64));     // across it
        CheckCondition(r, 3, 0x11, 0x00);
        Assert.Equal(8u, Information(r));
        var before = await Run(Cdb.Read10(0, 8));
        Good(before);
        Assert.Equal(data.AsSpan(0, 4096).ToArray(), before.DataIn.ToArray());

        // The host writes the block again: off the list, reads back.
        var fresh = Pattern(8, 77);
        Good(await Run(Cdb.Write10(8, 8), fresh));
        Assert.True(array.BadBlocks.IsEmpty);
        var back = await Run(Cdb.Read10(8, 8));
        Good(back);
        Assert.Equal(fresh, back.DataIn.ToArray());
    }

    [Fact]
    public async Task OverTheIscsiTransportTheSenseDataCarriesTheLba()
    {
        var (array, volume, _) = await ListedAsync();
        await using var fixture = await IscsiRealDevice.StartAsync([volume]);
        await using var client = await fixture.LoginAsync();
        var first = await client.ReadAsync(IscsiTestClient.Read10(0, 1), 512); // takes the power-on unit attention
        Assert.Equal(2, first.Status);

        var r = await client.ReadAsync(IscsiTestClient.Read10(12, 4), 2048);
        Assert.Equal(2, r.Status); // CHECK CONDITION
        Assert.Equal(0x70 | 0x80, r.Sense[0]); // fixed format, VALID
        Assert.Equal((3, 0x11, 0x00), (r.Sense[2] & 0x0F, (int)r.Sense[12], (int)r.Sense[13]));
        Assert.Equal(12u, BinaryPrimitives.ReadUInt32BigEndian(r.Sense.AsSpan(3)));

        var fresh = Pattern(8, 5);
        Assert.Equal(0, (await client.WriteAsync(IscsiTestClient.Write10(8, 8), fresh)).Status);
        Assert.True(array.BadBlocks.IsEmpty);
        var back = await client.ReadAsync(IscsiTestClient.Read10(8, 8), 4096);
        Assert.Equal(0, back.Status);
        Assert.Equal(fresh, back.DataIn);
    }
}
