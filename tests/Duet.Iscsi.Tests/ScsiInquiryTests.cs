using System.Buffers.Binary;
using System.Text;
using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiInquiryTests
{
    [Fact]
    public void StandardInquiry()
    {
        var h = new ScsiHarness();
        var r = h.Run(Cdb.Inquiry(alloc: 260)); // INQUIRY neither reports nor clears the POWER ON unit attention
        Good(r);
        var d = r.DataIn.Span;
        Assert.Equal(96, d.Length);
        Assert.Equal(0, d[0]);                // qualifier 0, direct access
        Assert.Equal(6, d[2]);                // SPC-4
        Assert.Equal(2, d[3] & 0x0F);         // response data format
        Assert.Equal(d.Length - 5, d[4]);
        Assert.Equal(0x10, d[5] & 0x30);      // TPGS 01: implicit ALUA
        Assert.Equal(0x02, d[7] & 0x02);      // CMDQUE
        Assert.Equal("DUET    ", Encoding.ASCII.GetString(d.Slice(8, 8)));
        Assert.Equal("Duet volume     ", Encoding.ASCII.GetString(d.Slice(16, 16)));
        var bytes = r.DataIn.ToArray();
        var versions = Enumerable.Range(0, 8).Select(i => BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(58 + 2 * i))).ToArray();
        Assert.Contains((ushort)0x0460, versions); // SPC-4
        Assert.Contains((ushort)0x04C0, versions); // SBC-3
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x29, 0);
    }

    [Fact]
    public void AllocationLengthTruncates()
    {
        var h = Ready();
        var r = h.Run(Cdb.Inquiry(alloc: 36));
        Assert.Equal(36, r.DataIn.Length);
        Assert.Equal(36, r.TransferLength);
        Assert.Equal(0, h.Run(Cdb.Inquiry(alloc: 0)).DataIn.Length);
    }

    [Fact]
    public void CmdDtAndBadPagesAreInvalidField()
    {
        var h = Ready();
        var cmddt = Cdb.Inquiry();
        cmddt[1] = 0x02;
        var r = h.Run(cmddt);
        InvalidField(r);
        Assert.Equal((true, 1, 1), FieldPointer(r));
        r = h.Run(Cdb.Inquiry(evpd: false, page: 0x80));
        InvalidField(r);
        Assert.Equal((true, 2, -1), FieldPointer(r));
        InvalidField(h.Run(Cdb.Inquiry(evpd: true, page: 0x81)));
        InvalidField(h.Run(Cdb.Inquiry(evpd: true, page: 0xB3)));
    }

    [Fact]
    public void SupportedPagesAreSortedAndEachAnswers()
    {
        var h = Ready();
        var r = h.Run(Cdb.Inquiry(evpd: true, page: 0));
        Good(r);
        var d = r.DataIn.Span;
        int n = BinaryPrimitives.ReadUInt16BigEndian(d[2..]);
        var pages = d.Slice(4, n).ToArray();
        Assert.Equal(new byte[] { 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2 }, pages);
        foreach (var p in pages)
        {
            var page = h.Run(Cdb.Inquiry(evpd: true, page: p));
            Good(page);
            Assert.Equal(p, page.DataIn.Span[1]);
            Assert.Equal(page.DataIn.Length - 4, BinaryPrimitives.ReadUInt16BigEndian(page.DataIn.Span[2..]));
        }
    }

    [Fact]
    public void SerialAndNaaAreDerivedFromTheVolumeNameAlone()
    {
        // Two devices (two controllers) over volumes of the same name report the same identifiers.
        var one = Ready();
        var other = Ready();
        var serialA = one.Run(Cdb.Inquiry(true, 0x80)).DataIn.ToArray();
        var serialB = other.Run(Cdb.Inquiry(true, 0x80), nexus: B).DataIn.ToArray();
        Assert.Equal(serialA, serialB);
        Assert.Equal(20, serialA.Length - 4);
        Assert.NotEqual(serialA, one.Run(Cdb.Inquiry(true, 0x80), lun: 1).DataIn.ToArray());
        var naaA = Designators(one.Run(Cdb.Inquiry(true, 0x83)).DataIn.ToArray()).Single(x => x.Type == 3);
        var naaB = Designators(other.Run(Cdb.Inquiry(true, 0x83), nexus: B).DataIn.ToArray()).Single(x => x.Type == 3);
        Assert.Equal(naaA.Value, naaB.Value);
        Assert.Equal(16, naaA.Value.Length);
        Assert.Equal(6, naaA.Value[0] >> 4);               // NAA IEEE Registered Extended
        Assert.Equal(0, naaA.Association);                  // the logical unit
        Assert.Equal(1, naaA.CodeSet);                      // binary
        var naaLun1 = Designators(one.Run(Cdb.Inquiry(true, 0x83), lun: 1).DataIn.ToArray()).Single(x => x.Type == 3);
        Assert.NotEqual(naaA.Value, naaLun1.Value);
    }

    [Fact]
    public void DeviceIdentificationNamesThePortOfTheNexus()
    {
        var h = Ready();
        var ids = Designators(h.Run(Cdb.Inquiry(true, 0x83), nexus: B).DataIn.ToArray());
        var rtp = ids.Single(x => x.Type == 4);
        Assert.Equal(1, rtp.Association);
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(rtp.Value.AsSpan(2)));
        var tpg = ids.Single(x => x.Type == 5);
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(tpg.Value.AsSpan(2)));
        var names = ids.Where(x => x.Type == 8).ToArray();
        Assert.Equal("iqn.2026-01.duet:target,t,0x0002", Encoding.UTF8.GetString(names.Single(x => x.Association == 1).Value).TrimEnd('\0'));
        Assert.Equal("iqn.2026-01.duet:target", Encoding.UTF8.GetString(names.Single(x => x.Association == 2).Value).TrimEnd('\0'));
        Assert.All(names, x => Assert.Equal(0, x.Value.Length % 4));
    }

    static List<(int CodeSet, int Association, int Type, byte[] Value)> Designators(byte[] page)
    {
        var list = new List<(int, int, int, byte[])>();
        int end = 4 + BinaryPrimitives.ReadUInt16BigEndian(page.AsSpan(2));
        for (int at = 4; at < end;)
        {
            int len = page[at + 3];
            list.Add((page[at] & 0x0F, (page[at + 1] >> 4) & 3, page[at + 1] & 0x0F, page.AsSpan(at + 4, len).ToArray()));
            at += 4 + len;
        }
        return list;
    }

    [Fact]
    public void ExtendedInquiryBlockLimitsCharacteristicsAndProvisioning()
    {
        var h = Ready();
        var ext = h.Run(Cdb.Inquiry(true, 0x86)).DataIn.Span;
        Assert.Equal(0x3C, BinaryPrimitives.ReadUInt16BigEndian(ext[2..]));
        Assert.Equal(0x07, ext[5] & 0x07);  // HEADSUP, ORDSUP, SIMPSUP
        Assert.Equal(0x03, ext[6] & 0x03);  // NV_SUP, V_SUP

        var bl = h.Run(Cdb.Inquiry(true, 0xB0)).DataIn.Span;
        Assert.Equal(0x3C, BinaryPrimitives.ReadUInt16BigEndian(bl[2..]));
        Assert.Equal(1, bl[4] & 1);         // WSNZ
        Assert.Equal(128, bl[5]);           // MAXIMUM COMPARE AND WRITE LENGTH
        Assert.Equal(32768u, BinaryPrimitives.ReadUInt32BigEndian(bl[8..]));
        Assert.Equal(1u << 20, BinaryPrimitives.ReadUInt32BigEndian(bl[20..]));
        Assert.Equal(256u, BinaryPrimitives.ReadUInt32BigEndian(bl[24..]));
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(bl[28..]));
        Assert.Equal(32768ul, BinaryPrimitives.ReadUInt64BigEndian(bl[36..])); // MAXIMUM WRITE SAME LENGTH = MAXIMUM TRANSFER LENGTH

        var bdc = h.Run(Cdb.Inquiry(true, 0xB1)).DataIn.Span;
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(bdc[4..]));

        var lbp = h.Run(Cdb.Inquiry(true, 0xB2)).DataIn.Span;
        Assert.Equal(4, BinaryPrimitives.ReadUInt16BigEndian(lbp[2..]));
        Assert.Equal(0xE4, lbp[5]);         // LBPU, LBPWS, LBPWS10, LBPRZ
    }

    [Fact]
    public void WrongLunInquiryAnswersQualifier3_OtherCommandsLogicalUnitNotSupported()
    {
        var h = Ready();
        var r = h.Run(Cdb.Inquiry(), lun: 7);
        Good(r);
        Assert.Equal(0x7F, r.DataIn.Span[0]);
        CheckCondition(h.Run(Cdb.TestUnitReady(), lun: 7), 5, 0x25, 0);
        CheckCondition(h.Run(Cdb.Read10(0, 1), lun: 7), 5, 0x25, 0);
        var sense = h.Run(Cdb.RequestSense(), lun: 7);
        Good(sense);
        Assert.Equal((0x05, 0x25), (sense.DataIn.Span[2] & 0x0F, (int)sense.DataIn.Span[12]));
        Good(h.Run(Cdb.ReportLuns(), lun: 7));
    }
}
