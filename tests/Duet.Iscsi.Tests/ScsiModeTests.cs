using System.Buffers.Binary;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiModeTests
{
    /// <summary>The pages of a MODE SENSE answer, by code.</summary>
    static Dictionary<int, byte[]> Pages(ReadOnlySpan<byte> d, int start)
    {
        var pages = new Dictionary<int, byte[]>();
        for (int at = start; at < d.Length;)
        {
            int len = d[at + 1] + 2;
            pages[d[at] & 0x3F] = d.Slice(at, len).ToArray();
            at += len;
        }
        return pages;
    }

    [Fact]
    public void ModeSense6AllPagesWithBlockDescriptor()
    {
        var h = Ready();
        var r = h.Run(Cdb.ModeSense6(0x3F));
        Good(r);
        var d = r.DataIn.Span;
        Assert.Equal(d.Length - 1, d[0]);
        Assert.Equal(0x10, d[2]);                           // DPOFUA, not write-protected
        Assert.Equal(8, d[3]);
        Assert.Equal((uint)Blocks, BinaryPrimitives.ReadUInt32BigEndian(d[4..]));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(d[8..]) & 0xFFFFFF);
        var pages = Pages(d, 12);
        Assert.Equal(new[] { 0x08, 0x0A, 0x1C }, pages.Keys.ToArray());
        Assert.Equal(0x04, pages[0x08][2] & 0x05);          // WCE=1, RCD=0
        Assert.Equal(20, pages[0x08].Length);
        Assert.Equal(12, pages[0x0A].Length);
        Assert.Equal(0, pages[0x0A][4] & 0x08);             // SWP clear
        Assert.Equal(0, pages[0x0A][2] & 0x04);             // D_SENSE clear: fixed format
    }

    [Fact]
    public void ModeSense6DbdAndSinglePagesAndTruncation()
    {
        var h = Ready();
        var d = h.Run(Cdb.ModeSense6(0x08, dbd: true)).DataIn.Span;
        Assert.Equal(0, d[3]);
        Assert.Equal(4 + 20, d.Length);
        Assert.Equal(0x08, d[4]);
        var r = h.Run(Cdb.ModeSense6(0x3F, alloc: 4));
        Assert.Equal(4, r.DataIn.Length);
        Assert.Equal(4, r.TransferLength);
        Assert.True(r.DataIn.Span[0] > 3);                  // the full length is still reported
        Good(h.Run(Cdb.ModeSense6(0x3F, subpage: 0xFF)));
    }

    [Fact]
    public void ModeSense10LongLbaDescriptor()
    {
        var h = Ready();
        var d = h.Run(Cdb.ModeSense10(0x0A, llbaa: true)).DataIn.Span;
        Assert.Equal(d.Length - 2, BinaryPrimitives.ReadUInt16BigEndian(d));
        Assert.Equal(1, d[4] & 1);                          // LONGLBA
        Assert.Equal(16, BinaryPrimitives.ReadUInt16BigEndian(d[6..]));
        Assert.Equal((ulong)Blocks, BinaryPrimitives.ReadUInt64BigEndian(d[8..]));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(d[20..]));
        Assert.Equal(0x0A, d[24]);
        var shortDesc = h.Run(Cdb.ModeSense10(0x1C)).DataIn.Span;
        Assert.Equal(8, BinaryPrimitives.ReadUInt16BigEndian(shortDesc[6..]));
    }

    [Fact]
    public void ChangeableMaskIsAllZero_DefaultEqualsCurrent_SavedIsNotSupported()
    {
        var h = Ready();
        var changeable = Pages(h.Run(Cdb.ModeSense6(0x3F, pc: 1, dbd: true)).DataIn.Span, 4);
        Assert.All(changeable.Values, p => Assert.All(p[2..], b => Assert.Equal(0, b)));
        var current = h.Run(Cdb.ModeSense6(0x3F, pc: 0)).DataIn.ToArray();
        var defaults = h.Run(Cdb.ModeSense6(0x3F, pc: 2)).DataIn.ToArray();
        Assert.Equal(current, defaults);
        CheckCondition(h.Run(Cdb.ModeSense6(0x08, pc: 3)), 5, 0x39, 0);
    }

    [Fact]
    public void ModeSenseErrors()
    {
        var h = Ready();
        var r = h.Run(Cdb.ModeSense6(0x19));
        InvalidField(r);
        Assert.Equal((true, 2, 5), FieldPointer(r));
        InvalidField(h.Run(Cdb.ModeSense6(0x08, subpage: 1)));
        InvalidField(h.Run(Cdb.ModeSense6(0x3F, subpage: 3)));
    }

    [Fact]
    public void ModeSelectAcceptsCurrentValuesAndRejectsChanges()
    {
        var h = Ready();
        var sense = h.Run(Cdb.ModeSense6(0x08)).DataIn.ToArray(); // header + descriptor + caching page
        sense[0] = 0;                                              // MODE DATA LENGTH is reserved in MODE SELECT
        Good(h.Run(Cdb.ModeSelect6((byte)sense.Length), sense));
        var wceOff = (byte[])sense.Clone();
        wceOff[12 + 2] &= 0xFB;                                    // WCE=0: not changeable
        var r = h.Run(Cdb.ModeSelect6((byte)wceOff.Length), wceOff);
        InvalidParameter(r);
        Assert.Equal((false, 14, 2), FieldPointer(r));
        var badLength = (byte[])sense.Clone();
        badLength[11] = 0x02;                                      // block length 512 -> 514
        InvalidParameter(h.Run(Cdb.ModeSelect6((byte)badLength.Length), badLength));
        var unknownPage = new byte[] { 0, 0, 0, 0, 0x19, 0x02, 0, 0 };
        InvalidParameter(h.Run(Cdb.ModeSelect6(8), unknownPage));
        CheckCondition(h.Run(Cdb.ModeSelect6(2), new byte[2]), 5, 0x1A, 0);
        InvalidField(h.Run(Cdb.ModeSelect6((byte)sense.Length, pf: false), sense));
        var sp = Cdb.ModeSelect6((byte)sense.Length);
        sp[1] |= 1;                                                // SP: saving is not supported
        InvalidField(h.Run(sp, sense));
        Good(h.Run(Cdb.ModeSelect6(0)));
        // MODE SELECT(10) with the same page and no block descriptor.
        var ten = h.Run(Cdb.ModeSense10(0x0A, dbd: true)).DataIn.ToArray();
        ten[0] = ten[1] = 0;
        Good(h.Run(Cdb.ModeSelect10((ushort)ten.Length), ten));
        ten[8 + 4] |= 0x08;                                        // SWP: not changeable
        InvalidParameter(h.Run(Cdb.ModeSelect10((ushort)ten.Length), ten));
    }
}
