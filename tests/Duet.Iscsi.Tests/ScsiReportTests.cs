using System.Buffers.Binary;
using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiReportTests
{
    [Fact]
    public void ReportLunsListsOneLunPerVolumeInCatalogOrder()
    {
        var h = new ScsiHarness();
        var r = h.Run(Cdb.ReportLuns()); // REPORT LUNS neither reports nor clears unit attentions
        Good(r);
        var d = r.DataIn.Span;
        Assert.Equal(16u, BinaryPrimitives.ReadUInt32BigEndian(d));
        Assert.Equal(0ul, BinaryPrimitives.ReadUInt64BigEndian(d[8..]));
        Assert.Equal(0x0001_0000_0000_0000ul, BinaryPrimitives.ReadUInt64BigEndian(d[16..]));
        Assert.Equal(new ulong[] { 0, 1 }, h.Device.Luns);
        Assert.Equal(8, h.Run(Cdb.ReportLuns(alloc: 8)).DataIn.Length);
        Assert.Equal(8, h.Run(Cdb.ReportLuns(select: 1)).DataIn.Length); // no well-known LUs
        InvalidField(h.Run(Cdb.ReportLuns(select: 3)));
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x29, 0);
    }

    [Fact]
    public void LunEncodingUsesFlatSpaceAbove255()
    {
        var field = new byte[8];
        ScsiDevice.EncodeLun(300, field);
        Assert.Equal(new byte[] { 0x41, 0x2C, 0, 0, 0, 0, 0, 0 }, field);
    }

    [Fact]
    public void ReportTargetPortGroupsFromTheView()
    {
        var h = Ready();
        var r = h.Run(Cdb.MaintenanceIn(0x0A, 1024));
        Good(r);
        var d = r.DataIn.Span;
        Assert.Equal(d.Length - 4, (int)BinaryPrimitives.ReadUInt32BigEndian(d));
        Assert.Equal(2 * 12, d.Length - 4);
        // Group 1 (controller A, owner): active/optimized, preferred; port 1.
        Assert.Equal(0x80, d[4]);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(d[6..]));
        Assert.Equal(1, d[11]);
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(d[14..]));
        // Group 2 (controller B): active/non-optimized; port 2.
        Assert.Equal(0x01, d[16]);
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(d[18..]));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(d[26..]));
        // Extended header format.
        var ext = h.Run(Cdb.MaintenanceIn(0x0A, 1024, b1High: 0x20)).DataIn.Span;
        Assert.Equal(0x10, ext[4]);
        Assert.Equal(ext.Length - 4, (int)BinaryPrimitives.ReadUInt32BigEndian(ext));
        // A short allocation still reports the full length.
        var four = h.Run(Cdb.MaintenanceIn(0x0A, 4));
        Assert.Equal(24u, BinaryPrimitives.ReadUInt32BigEndian(four.DataIn.Span));
        // Ownership moves: states swap and every nexus gets ASYMMETRIC ACCESS STATE CHANGED.
        h.PortGroups.SetOwner("vol0", FixedScsiPortGroups.GroupB);
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x06);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x06);
        Good(h.Run(Cdb.TestUnitReady(), lun: 1)); // another volume: unchanged
        d = h.Run(Cdb.MaintenanceIn(0x0A, 1024)).DataIn.Span;
        Assert.Equal(0x01, d[4]);
        Assert.Equal(0x80, d[16]);
    }

    [Fact]
    public void ReportSupportedOpcodesAllAndOne()
    {
        var h = Ready();
        var r = h.Run(Cdb.MaintenanceIn(0x0C, 65535));
        Good(r);
        var d = r.DataIn.ToArray();
        int length = (int)BinaryPrimitives.ReadUInt32BigEndian(d);
        Assert.Equal(d.Length - 4, length);
        var descriptors = new List<(byte Op, ushort Sa, bool ServAct, ushort CdbLength)>();
        for (int at = 4; at < d.Length; at += 8)
            descriptors.Add((d[at], BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan(at + 2)), (d[at + 5] & 1) != 0, BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan(at + 6))));
        Assert.Contains(descriptors, x => x.Op == 0x28 && !x.ServAct && x.CdbLength == 10);
        Assert.Contains(descriptors, x => x.Op == 0x9E && x.Sa == 0x10 && x.ServAct && x.CdbLength == 16);
        Assert.Contains(descriptors, x => x.Op == 0x5F && x.Sa == 0x07 && x.ServAct);
        foreach (var x in descriptors)
        {
            // Reporting option 1 for commands without service actions, 2 for those with, each consistent with the CDB it describes.
            var one = h.Run(Cdb.MaintenanceIn(0x0C, 65535, b2: (byte)(x.ServAct ? 2 : 1), op: x.Op, reqSa: x.Sa));
            Good(one);
            var o = one.DataIn.Span;
            Assert.Equal(3, o[1] & 7);
            Assert.Equal(x.CdbLength, BinaryPrimitives.ReadUInt16BigEndian(o[2..]));
            Assert.Equal(x.Op, o[4]);
            InvalidField(h.Run(Cdb.MaintenanceIn(0x0C, 65535, b2: (byte)(x.ServAct ? 1 : 2), op: x.Op, reqSa: x.Sa)));
            // The usage mask is what the device server enforces: every bit outside it is rejected.
            var cdb = new byte[x.CdbLength];
            cdb[0] = x.Op;
            for (int i = 1; i < x.CdbLength; i++)
            {
                int outside = ~o[4 + i] & 0xFF;
                if (outside == 0) continue;
                Array.Clear(cdb, 1, cdb.Length - 1);
                if (x.ServAct) cdb[1] = (byte)x.Sa;
                cdb[i] |= (byte)(outside & -outside); // lowest bit outside the mask
                var res = h.Run(cdb, nexus: B);
                InvalidField(res);
                Assert.Equal(i, FieldPointer(res)!.Value.Byte);
            }
        }
        // WRITE(10) reports DPO and FUA as used (DPOFUA is set in MODE SENSE).
        var w10 = h.Run(Cdb.MaintenanceIn(0x0C, 65535, b2: 1, op: 0x2A)).DataIn.Span;
        Assert.Equal(0x18, w10[5] & 0x18);
        // An unsupported opcode: SUPPORT 001b.
        var none = h.Run(Cdb.MaintenanceIn(0x0C, 65535, b2: 1, op: 0xC0)).DataIn.Span;
        Assert.Equal(1, none[1] & 7);
        // RCTD adds the command timeouts descriptor.
        var rctd = h.Run(Cdb.MaintenanceIn(0x0C, 65535, b2: 0x81, op: 0x28)).DataIn.Span;
        Assert.Equal(0x80, rctd[1] & 0x80);
        Assert.Equal(4 + 10 + 12, rctd.Length);
        Assert.Equal(0x0A, BinaryPrimitives.ReadUInt16BigEndian(rctd[14..]));
        var allRctd = h.Run(Cdb.MaintenanceIn(0x0C, 65535, b2: 0x80)).DataIn.Span;
        Assert.Equal(4 + 20 * descriptors.Count, allRctd.Length);
        InvalidField(h.Run(Cdb.MaintenanceIn(0x0C, 65535, b2: 4)));
    }

    [Fact]
    public void UnknownServiceActionIsInvalidFieldInCdb()
    {
        var h = Ready();
        var r = h.Run(Cdb.MaintenanceIn(0x05, 100));
        InvalidField(r);
        Assert.Equal((true, 1, 4), FieldPointer(r));
        InvalidField(h.Run([0x9E, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]));
        InvalidField(h.Run(Cdb.PrIn(4)));
    }

    [Fact]
    public void RequestSenseReturnsAndClearsTheUnitAttentionThenNoSense()
    {
        var h = new ScsiHarness();
        var r = h.Run(Cdb.RequestSense());
        Good(r);
        Assert.Equal(18, r.DataIn.Length);
        Assert.Equal((0x70, 6, 0x29, 0), (r.DataIn.Span[0] & 0x7F, r.DataIn.Span[2] & 0x0F, (int)r.DataIn.Span[12], (int)r.DataIn.Span[13]));
        r = h.Run(Cdb.RequestSense());
        Assert.Equal((0, 0, 0), (r.DataIn.Span[2] & 0x0F, (int)r.DataIn.Span[12], (int)r.DataIn.Span[13]));
        Good(h.Run(Cdb.TestUnitReady()));
        Assert.Equal(8, h.Run(Cdb.RequestSense(alloc: 8)).DataIn.Length);
        var desc = Cdb.RequestSense();
        desc[1] = 1; // descriptor format: not supported
        InvalidField(h.Run(desc));
    }
}
