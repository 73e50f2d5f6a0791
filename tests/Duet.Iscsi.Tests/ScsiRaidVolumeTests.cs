using System.Buffers.Binary;
using Duet.Core;
using Duet.Drives;
using Duet.Iscsi.Scsi;
using Duet.Raid;
using Microsoft.Extensions.Logging.Abstractions;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

/// <summary>The device server over Duet's own volumes: a RAID 5 array of three memory drives, two volumes.</summary>
[Trait("Claim", "ISCSI-SCSI")]
public class ScsiRaidVolumeTests
{
    static (ScsiDevice Device, RaidVolume First, RaidVolume Second) Build()
    {
        const long memberDataBlocks = 256;
        long driveBlocks = MemberLayout.MetadataBlocks + (memberDataBlocks + MemberLayout.TagsPerGroup - 1) / MemberLayout.TagsPerGroup * MemberLayout.GroupBlocks;
        var drives = Enumerable.Range(0, 3).Select(i => new MemoryDrive($"d{i}", driveBlocks)).ToArray();
        var uuid = Guid.NewGuid();
        var geometry = new ArrayGeometry(RaidLevel.Raid5, 3, 4, memberDataBlocks);
        var disks = drives.Select((d, i) => (MemberDisk?)new MemberDisk(d, i, uuid, geometry.MemberBlocks)).ToArray();
        var array = new RaidArray("a", uuid, geometry, disks, Enumerable.Repeat(MemberStatus.Active, 3).ToArray(), TimeProvider.System, NullLogger.Instance);
        var first = new RaidVolume("v0", array, 0, 128);
        var second = new RaidVolume("v1", array, 128, 64);
        return (new ScsiDevice(new VolumeList(first, second)), first, second);
    }

    static async Task<ScsiResult> Run(ScsiDevice d, byte[] cdb, byte[]? data = null, ulong lun = 0) =>
        await d.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = lun, Cdb = cdb, DataOut = data ?? [] }, default);

    [Fact]
    public async Task ReadWriteUnmapCompareAndWriteAndLbaStatusOverRaid5()
    {
        var (device, first, second) = Build();
        CheckCondition(await Run(device, Cdb.TestUnitReady()), 6, 0x29, 0);
        CheckCondition(await Run(device, Cdb.TestUnitReady(), lun: 1), 6, 0x29, 0);

        var cap = (await Run(device, Cdb.ReadCapacity16())).DataIn.ToArray();
        Assert.Equal((ulong)(first.SizeBytes / 512 - 1), BinaryPrimitives.ReadUInt64BigEndian(cap));
        cap = (await Run(device, Cdb.ReadCapacity16(), lun: 1)).DataIn.ToArray();
        Assert.Equal((ulong)(second.SizeBytes / 512 - 1), BinaryPrimitives.ReadUInt64BigEndian(cap));

        var data = Pattern(24, 5);
        Good(await Run(device, Cdb.Write16(3, 24, flags: 0x08), data));
        Assert.Equal(data, (await Run(device, Cdb.Read16(3, 24))).DataIn.ToArray());
        Assert.All((await Run(device, Cdb.Read10(0, 8), lun: 1)).DataIn.ToArray(), b => Assert.Equal(0, b)); // the other volume untouched

        // UNMAP whole 4 KiB blocks: deallocated, reads zeros.
        Good(await Run(device, Cdb.Unmap(24), Cdb.UnmapList((8, 16))));
        var status = (await Run(device, Cdb.GetLbaStatus(8))).DataIn.ToArray();
        Assert.Equal(8ul, BinaryPrimitives.ReadUInt64BigEndian(status.AsSpan(8)));
        Assert.Equal(16u, BinaryPrimitives.ReadUInt32BigEndian(status.AsSpan(16)));
        Assert.Equal(1, status[20]);
        Assert.All((await Run(device, Cdb.Read10(8, 16))).DataIn.ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(data.AsSpan(0, 5 * 512).ToArray(), (await Run(device, Cdb.Read10(3, 5))).DataIn.ToArray());

        // COMPARE AND WRITE against what the array holds.
        var now = (await Run(device, Cdb.Read10(24, 2))).DataIn.ToArray();
        var next = Pattern(2, 9);
        Good(await Run(device, Cdb.CompareAndWrite(24, 2), [.. now, .. next]));
        Assert.Equal(next, (await Run(device, Cdb.Read10(24, 2))).DataIn.ToArray());
        var r = await Run(device, Cdb.CompareAndWrite(24, 2), [.. now, .. next]);
        CheckCondition(r, 0xE, 0x1D, 0);

        // WRITE SAME replicates across chunk and stripe boundaries.
        var block = Pattern(1, 3);
        Good(await Run(device, Cdb.WriteSame16(100, 300), block));
        var back = (await Run(device, Cdb.Read16(100, 300))).DataIn.ToArray();
        for (int i = 0; i < 300; i++) Assert.Equal(block, back.AsSpan(512 * i, 512).ToArray());
        Good(await Run(device, Cdb.SyncCache10()));
        OutOfRange(await Run(device, Cdb.Read16((ulong)(first.SizeBytes / 512), 1)));
    }
}
