using Duet.Core;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI")]
public sealed class IscsiCatalogDeviceTests
{
    private sealed class MutableCatalog : IVolumeCatalog
    {
        public List<IBlockVolume> List { get; } = [];
        public IReadOnlyList<IBlockVolume> Volumes => [.. List];
        public bool TryGetVolume(string name, out IBlockVolume volume)
        {
            volume = List.FirstOrDefault(v => v.Name == name)!;
            return volume is not null;
        }
    }

    [Fact]
    public async Task New_volumes_become_luns_and_owners_move_the_optimized_group()
    {
        var catalog = new MutableCatalog();
        catalog.List.Add(new MemoryBlockVolume("vol0", 1 << 20));
        var owners = new List<VolumeAccess> { VolumeAccess.OwnedBy("vol0", FixedScsiPortGroups.GroupA) };
        var portGroups = new FixedScsiPortGroups();
        var reservations = new InMemoryReservationStore();
        using var device = new IscsiCatalogDevice(catalog, c => new ScsiDevice(c, reservations, portGroups), TimeProvider.System, portGroups, () => owners);
        Assert.Equal([0UL], device.Luns);

        catalog.List.Add(new MemoryBlockVolume("vol1", 2 << 20));
        owners.Add(VolumeAccess.OwnedBy("vol1", FixedScsiPortGroups.GroupB));
        device.Refresh();
        Assert.Equal([0UL, 1UL], device.Luns);
        var groups = portGroups.GroupsFor("vol1");
        Assert.Equal(AluaState.ActiveOptimized, groups.Single(g => g.Id == FixedScsiPortGroups.GroupB).State);
        Assert.Equal(AluaState.ActiveOptimized, portGroups.GroupsFor("vol0").Single(g => g.Id == FixedScsiPortGroups.GroupA).State);

        // The new device serves the new LUN (READ CAPACITY(10) of 2 MiB).
        var nexus = new ItNexus("iqn.test", 1, 1, 1);
        var command = new ScsiCommand { Nexus = nexus, Lun = 1, Cdb = new byte[] { 0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0 }, ExpectedDataInLength = 8 };
        var result = await device.ExecuteAsync(command, default);
        for (int i = 0; i < 3 && result.Status != ScsiStatus.Good; i++) result = await device.ExecuteAsync(command, default); // unit attentions first
        Assert.Equal(ScsiStatus.Good, result.Status);
        Assert.Equal((2 << 20) / 512 - 1, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(result.DataIn.Span));

        // A tick with nothing changed keeps the device (and its unit attentions).
        device.Refresh();
        Assert.Equal([0UL, 1UL], device.Luns);
    }
}
