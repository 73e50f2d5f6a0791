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

    [Fact]
    public async Task A_volume_named_to_sort_first_takes_its_own_lun_and_every_other_lun_keeps_its_volume()
    {
        var catalog = new NumberedCatalog();
        catalog.List.Add(new LunVolume(0, new MemoryBlockVolume("db", 64 * 512)));
        catalog.List.Add(new LunVolume(1, new MemoryBlockVolume("web", 128 * 512)));
        var reservations = new InMemoryReservationStore();
        using var device = new IscsiCatalogDevice(catalog, c => new ScsiDevice(c, reservations), TimeProvider.System);
        Assert.Equal([0UL, 1UL], device.Luns);
        Assert.Equal(["db", "web"], await SerialsAsync(device, 0, 1));

        // "aaa" sorts first; it was given LUN 2 (the lowest free): LUN 0 and 1 still name db and web.
        catalog.List.Add(new LunVolume(2, new MemoryBlockVolume("aaa", 256 * 512)));
        device.Refresh();
        Assert.Equal([0UL, 1UL, 2UL], device.Luns);
        Assert.Equal(["db", "web", "aaa"], await SerialsAsync(device, 0, 1, 2));

        // Deleting db frees LUN 0 and moves nothing.
        catalog.List.RemoveAt(0);
        device.Refresh();
        Assert.Equal([1UL, 2UL], device.Luns);
        Assert.Equal(["web", "aaa"], await SerialsAsync(device, 1, 2));
        var gone = await device.ExecuteAsync(new ScsiCommand { Nexus = Nexus, Lun = 0, Cdb = new byte[6] }, default);
        Assert.Equal((ScsiStatus.CheckCondition, (byte)0x25), (gone.Status, gone.Sense.Span[12]));

        // A volume whose LUN changed (the same volume object) is a change too: the device is rebuilt.
        var web = catalog.List.Single(v => v.Volume.Name == "web");
        catalog.List.Remove(web);
        catalog.List.Add(web with { Lun = 7 });
        device.Refresh();
        Assert.Equal([2UL, 7UL], device.Luns);
    }

    static readonly ItNexus Nexus = new("iqn.test", 1, 1, 1);

    /// <summary>The volume name behind each LUN, from its unit serial number (VPD 0x80: the name's hash).</summary>
    static async Task<string[]> SerialsAsync(IScsiDevice device, params ulong[] luns)
    {
        var names = new[] { "db", "web", "aaa" }.ToDictionary(n => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(n)), 0, 10));
        var result = new string[luns.Length];
        for (int i = 0; i < luns.Length; i++)
        {
            var r = await device.ExecuteAsync(new ScsiCommand { Nexus = Nexus, Lun = luns[i], Cdb = new byte[] { 0x12, 1, 0x80, 0, 255, 0 }, ExpectedDataInLength = 255 }, default);
            Assert.Equal(ScsiStatus.Good, r.Status);
            result[i] = names[System.Text.Encoding.ASCII.GetString(r.DataIn.Span[4..24])];
        }
        return result;
    }
}
