using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiFuzzTests
{
    static readonly byte[] Opcodes =
    [
        0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x25, 0x28, 0x2A, 0x2E, 0x2F, 0x34, 0x35, 0x41, 0x42,
        0x55, 0x56, 0x57, 0x5A, 0x5E, 0x5F, 0x88, 0x89, 0x8A, 0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8,
        0xAA, 0xAE, 0xAF, 0x1B, 0x1E, 0x04, 0x83, 0x84, 0xFF, 0x8B, 0x37, 0xB7,
    ];

    [Fact]
    public async Task RandomCdbsAndDataNeverThrowAndAlwaysAnswerWithWellFormedSense()
    {
        var h = new ScsiHarness();
        var rng = new Random(20261202);
        var nexuses = new[] { A, B, new ItNexus("iqn.fuzz", 7, 1, 1) };
        for (int i = 0; i < 20000; i++)
        {
            var cdb = new byte[rng.Next(0, 3) == 0 ? rng.Next(0, 17) : 16];
            rng.NextBytes(cdb);
            if (cdb.Length > 0) cdb[0] = Opcodes[rng.Next(Opcodes.Length)];
            // Keep the reserved bits mostly clear so that the commands get past the mask and into their handlers.
            if (cdb.Length > 1 && rng.Next(4) != 0) cdb[1] &= 0x1F;
            if (rng.Next(3) != 0)
                for (int b = 2; b < cdb.Length; b++) if (rng.Next(3) != 0) cdb[b] = (byte)(cdb[b] & rng.Next(0, 8));
            if (cdb.Length > 0 && rng.Next(4) != 0) cdb[^1] = 0;
            var data = new byte[rng.Next(0, 4) switch { 0 => 0, 1 => rng.Next(0, 64), 2 => 512 * rng.Next(1, 4), _ => rng.Next(0, 3000) }];
            rng.NextBytes(data);
            var nexus = nexuses[rng.Next(nexuses.Length)];
            ulong lun = (ulong)rng.Next(0, 3);
            if (rng.Next(500) == 0) await h.Device.TaskManagementAsync(nexus, (TaskManagementFunction)rng.Next(5, 8), lun, default);
            var r = await h.Device.ExecuteAsync(new ScsiCommand { Nexus = nexus, Lun = lun, Cdb = cdb, DataOut = data }, default);
            Assert.True(r.Status is ScsiStatus.Good or ScsiStatus.CheckCondition or ScsiStatus.ReservationConflict, $"{r.Status} for {Convert.ToHexString(cdb)}");
            if (r.Status == ScsiStatus.CheckCondition)
            {
                Assert.Equal(18, r.Sense.Length);
                Assert.NotEqual(0, r.Sense.Span[2] & 0x0F);
                Assert.NotEqual(0x44, r.Sense.Span[12]); // never an internal failure
            }
            else Assert.Equal(0, r.Sense.Length);
            Assert.True(r.TransferLength >= 0);
        }
    }
}
