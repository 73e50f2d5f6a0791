using System.Security.Cryptography;
using System.Text;
using Duet.Host.Controller;
using Duet.Iscsi;
using Duet.Iscsi.Scsi;
using Duet.Raid.Management;
using PairController = Duet.Host.Controller.Controller;

namespace Duet.Cli.Tests;

/// <summary>
/// Persistent LUNs across the pair (issue 7), both controllers in one process behind one shelf, each with the
/// iSCSI device its ControllerServer builds over its catalog: a volume created through either controller takes
/// a free LUN, no other volume's LUN changes (even for a name that sorts first), both targets serve every volume
/// at the same LUN, and a delete or a takeover moves nothing.
/// </summary>
[Trait("Claim", "ISCSI")]
public sealed class ControllerLunInProcessTests
{
    static readonly ItNexus ViaA = new("iqn.2026-12.test:host1", 0x23d000000001, 1, 1);
    static readonly ItNexus ViaB = new("iqn.2026-12.test:host1", 0x23d000000001, 2, 2);

    [Fact]
    public async Task AVolumeNamedToSortFirstRenumbersNothing_AndBothTargetsServeEveryVolumeAtTheSameLun()
    {
        var (_, a, b) = await ControllerScsiStateInProcessTests.StartPairAsync();
        using var targetA = IscsiCatalogDevice.Create(a.Volumes, "iqn.test:target", TimeProvider.System, () => ControllerServer.VolumeAccessStates(a), a.Reservations);
        using var targetB = IscsiCatalogDevice.Create(b.Volumes, "iqn.test:target", TimeProvider.System, () => ControllerServer.VolumeAccessStates(b), b.Reservations);
        try
        {
            Assert.Equal(["0 vol0"], await LunsAsync(targetA, ViaA));
            Assert.Equal(["0 vol0"], await LunsAsync(targetB, ViaB));

            // Through A, on A's array: the lowest free LUN. B reads the superblocks when told (here: now).
            Assert.Equal(1, (await a.ArrayService.CreateVolumeAsync(new CreateVolumeRequest("db", "arr0", 1 << 20))).Lun);
            await b.RescanAsync();
            // Through B, on B's array, a name that sorts before every other: a new LUN, and nobody else's moves.
            Assert.Equal(2, (await b.ArrayService.CreateVolumeAsync(new CreateVolumeRequest("aaa", "arr1", 1 << 20))).Lun);
            await a.RescanAsync();
            string[] all = ["0 vol0", "1 db", "2 aaa"];
            Assert.Equal(all, await LunsAsync(targetA, ViaA));
            Assert.Equal(all, await LunsAsync(targetB, ViaB));
            Assert.Equal(Luns(a), Luns(b));
            Assert.Equal(new Dictionary<string, int?> { ["aaa"] = 2, ["db"] = 1, ["vol0"] = 0 }, Luns(a));

            // A LUN the peer's volume has is refused with a clear message by either controller.
            var taken = await Assert.ThrowsAsync<ManagementException>(() => a.ArrayService.CreateVolumeAsync(new CreateVolumeRequest("web", "arr0", 1 << 20, Lun: 2)));
            Assert.Equal((ManagementErrorKind.Conflict, "LUN 2 is already used by volume 'aaa' (array arr1); choose another, or leave --lun out for the lowest free LUN"),
                (taken.Kind, taken.Message));

            // Deleting db frees LUN 1 and moves nothing.
            await a.ArrayService.DeleteVolumeAsync("db");
            await b.RescanAsync();
            Assert.Equal(["0 vol0", "2 aaa"], await LunsAsync(targetA, ViaA));
            Assert.Equal(["0 vol0", "2 aaa"], await LunsAsync(targetB, ViaB));

            // B takes A over: the LUNs are in the superblocks, so B's target serves every volume where it was.
            await b.TakeOverAsync("test: A stopped answering");
            Assert.Equal(["0 vol0", "2 aaa"], await LunsAsync(targetB, ViaB));
            Assert.Equal(new Dictionary<string, int?> { ["aaa"] = 2, ["vol0"] = 0 }, Luns(b));
        }
        finally
        {
            await b.DisposeAsync();
            await a.DisposeAsync();
        }
    }

    static Dictionary<string, int?> Luns(PairController c) => c.ArrayService.Status().Volumes.ToDictionary(v => v.Name, v => v.Lun);

    /// <summary>"LUN name" for every LUN the target lists in REPORT LUNS, the name from each LUN's unit serial
    /// number (VPD 0x80: the volume name's hash), read through the target as an initiator would.</summary>
    static async Task<string[]> LunsAsync(IscsiCatalogDevice target, ItNexus nexus)
    {
        target.Refresh();
        var names = new[] { "vol0", "db", "aaa", "web" }.ToDictionary(n => Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(n)), 0, 10));
        var report = await target.ExecuteAsync(new ScsiCommand { Nexus = nexus, Lun = 0, Cdb = new byte[] { 0xA0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0 }, ExpectedDataInLength = 1024 }, default);
        Assert.Equal(ScsiStatus.Good, report.Status);
        int count = (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(report.DataIn.Span) / 8;
        var result = new List<string>();
        for (int i = 0; i < count; i++)
        {
            ulong lun = report.DataIn.Span[8 + 8 * i + 1]; // peripheral addressing: LUNs below 256
            var serial = await target.ExecuteAsync(new ScsiCommand { Nexus = nexus, Lun = lun, Cdb = new byte[] { 0x12, 1, 0x80, 0, 255, 0 }, ExpectedDataInLength = 255 }, default);
            Assert.Equal(ScsiStatus.Good, serial.Status);
            result.Add($"{lun} {names[Encoding.ASCII.GetString(serial.DataIn.Span[4..24])]}");
        }
        return [.. result];
    }
}
