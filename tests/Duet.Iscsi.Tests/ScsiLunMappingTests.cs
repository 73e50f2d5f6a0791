using System.Buffers.Binary;
using Duet.Core;
using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

/// <summary>A catalog whose volumes carry their own LUNs (a controller's, stored in the superblocks).</summary>
sealed class NumberedCatalog : ILunCatalog
{
    public List<LunVolume> List { get; } = [];
    public IReadOnlyList<LunVolume> LunVolumes => [.. List.OrderBy(v => v.Lun)];
    public IReadOnlyList<IBlockVolume> Volumes => [.. List.Select(v => v.Volume).OrderBy(v => v.Name, StringComparer.Ordinal)];

    public bool TryGetVolume(string name, out IBlockVolume volume)
    {
        volume = List.Select(v => v.Volume).FirstOrDefault(v => v.Name == name)!;
        return volume is not null;
    }
}

/// <summary>LUN → volume by each volume's own LUN (issue 7): gaps are LUNs that do not exist.</summary>
[Trait("Claim", "ISCSI-SCSI")]
public sealed class ScsiLunMappingTests
{
    static ScsiResult Run(ScsiDevice device, byte[] cdb, ulong lun, int expectedIn = 0) =>
        device.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = lun, Cdb = cdb, ExpectedDataInLength = expectedIn }, default).AsTask().GetAwaiter().GetResult();

    static long CapacityBlocks(ScsiDevice device, ulong lun)
    {
        var r = Run(device, Cdb.ReadCapacity10(), lun);
        for (int i = 0; i < 3 && r.Status != ScsiStatus.Good; i++) r = Run(device, Cdb.ReadCapacity10(), lun); // POWER ON first
        Good(r);
        return BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span) + 1L;
    }

    [Fact]
    public async Task EachVolumeIsServedAtItsOwnLun_ReportLunsListsThem_AndALunInAGapIsNotSupported()
    {
        var catalog = new NumberedCatalog();
        catalog.List.Add(new LunVolume(3, new MemoryBlockVolume("db", 64 * 512)));
        catalog.List.Add(new LunVolume(0, new MemoryBlockVolume("web", 128 * 512)));
        catalog.List.Add(new LunVolume(254, new MemoryBlockVolume("aaa", 256 * 512)));
        var device = new ScsiDevice(catalog);

        Assert.Equal(new ulong[] { 0, 3, 254 }, device.Luns);
        var report = Run(device, Cdb.ReportLuns(), 0);
        Good(report);
        var d = report.DataIn.Span;
        Assert.Equal(24u, BinaryPrimitives.ReadUInt32BigEndian(d));
        Assert.Equal(0x0000_0000_0000_0000ul, BinaryPrimitives.ReadUInt64BigEndian(d[8..]));
        Assert.Equal(0x0003_0000_0000_0000ul, BinaryPrimitives.ReadUInt64BigEndian(d[16..]));
        Assert.Equal(0x00FE_0000_0000_0000ul, BinaryPrimitives.ReadUInt64BigEndian(d[24..]));

        Assert.Equal(128, CapacityBlocks(device, 0));
        Assert.Equal(64, CapacityBlocks(device, 3));
        Assert.Equal(256, CapacityBlocks(device, 254));
        foreach (ulong gap in new ulong[] { 1, 2, 4, 253, 255, 300 })
        {
            CheckCondition(Run(device, Cdb.TestUnitReady(), gap), 5, 0x25, 0);               // LOGICAL UNIT NOT SUPPORTED
            Assert.Equal(0x7F, Run(device, Cdb.Inquiry(), gap, 255).DataIn.Span[0]);           // no logical unit here
            Assert.Equal(2, await device.TaskManagementAsync(A, TaskManagementFunction.LogicalUnitReset, gap, default));
        }
    }

    [Fact]
    public void APlainCatalogStillNumbersItsVolumesInOrder()
    {
        var device = new ScsiDevice(new VolumeList(new MemoryBlockVolume("b", 64 * 512), new MemoryBlockVolume("a", 128 * 512)));
        Assert.Equal(new ulong[] { 0, 1 }, device.Luns);
        Assert.Equal(64, CapacityBlocks(device, 0));
        Assert.Equal(128, CapacityBlocks(device, 1));
    }
}
