using System.Buffers.Binary;
using System.Text;

namespace Duet.Iscsi.Scsi;

// INQUIRY: standard data and the vital product data pages.
public sealed partial class ScsiDevice
{
    const int StandardInquiryLength = 96;

    static readonly byte[] SupportedVpdPages = [0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2];

    ScsiResult Inquiry(LogicalUnit lu, ItNexus nexus, ReadOnlySpan<byte> cdb)
    {
        int allocation = Be16(cdb, 3);
        bool evpd = (cdb[1] & 1) != 0;
        if (!evpd)
        {
            if (cdb[2] != 0) throw ScsiCheckException.InvalidField(2);
            return DataIn(StandardInquiry(lu), allocation);
        }
        byte[] page = cdb[2] switch
        {
            0x00 => VpdPage(0x00, SupportedVpdPages),
            0x80 => VpdPage(0x80, Encoding.ASCII.GetBytes(lu.Serial)),
            0x83 => VpdPage(0x83, DeviceIdentification(lu, nexus)),
            0x86 => VpdPage(0x86, ExtendedInquiry()),
            0xB0 => VpdPage(0xB0, BlockLimits()),
            0xB1 => VpdPage(0xB1, BlockDeviceCharacteristics()),
            0xB2 => VpdPage(0xB2, LogicalBlockProvisioning()),
            _ => throw ScsiCheckException.InvalidField(2),
        };
        return DataIn(page, allocation);
    }

    byte[] StandardInquiry(LogicalUnit? lu)
    {
        var d = new byte[StandardInquiryLength];
        d[0] = 0x00;              // connected, direct access block device
        d[2] = 0x06;              // SPC-4
        d[3] = 0x12;              // HISUP, response data format 2
        d[4] = StandardInquiryLength - 5;
        d[5] = 0x10;              // TPGS 01b: implicit ALUA
        d[6] = 0x10;              // MULTIP: reachable through both controllers' ports
        d[7] = 0x02;              // CMDQUE
        Ascii(d.AsSpan(8, 8), ScsiDeviceOptions.Vendor);
        Ascii(d.AsSpan(16, 16), _options.Product);
        Ascii(d.AsSpan(32, 4), _options.Revision);
        // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
        ReadOnlySpan<ushort> versions = [0x00A0, 0x0960, 0x0460, 0x04C0];
        for (int i = 0; i < versions.Length; i++) BinaryPrimitives.WriteUInt16BigEndian(d.AsSpan(58 + 2 * i), versions[i]);
        _ = lu;
        return d;
    }

    /// <summary>Space-padded printable ASCII (anything else becomes '?').</summary>
    static void Ascii(Span<byte> field, string text)
    {
        field.Fill((byte)' ');
        for (int i = 0; i < field.Length && i < text.Length; i++)
            field[i] = text[i] is >= ' ' and <= '~' ? (byte)text[i] : (byte)'?';
    }

    static byte[] VpdPage(byte code, ReadOnlySpan<byte> body)
    {
        var page = new byte[4 + body.Length];
        page[1] = code;
        BinaryPrimitives.WriteUInt16BigEndian(page.AsSpan(2), (ushort)body.Length);
        body.CopyTo(page.AsSpan(4));
        return page;
    }

    byte[] DeviceIdentification(LogicalUnit lu, ItNexus nexus)
    {
        var ms = new MemoryStream();
        // NAA IEEE Registered Extended, logical unit: the same on both controllers (derived from the volume name).
        Designator(ms, 0x01, 0x03, lu.Naa);
        Span<byte> four = stackalloc byte[4];
        // Relative target port and target port group of the port this command came through (iSCSI, PIV).
        four.Clear();
        BinaryPrimitives.WriteUInt16BigEndian(four[2..], nexus.RelativeTargetPort);
        Designator(ms, 0x51, 0x94, four);
        four.Clear();
        BinaryPrimitives.WriteUInt16BigEndian(four[2..], nexus.TargetPortGroup);
        Designator(ms, 0x51, 0x95, four);
        if (_options.TargetName is { } target)
        {
            // SCSI name strings: the target port ("name,t,0xTPGT") and the target device.
            Designator(ms, 0x53, 0x98, NameString($"{target},t,0x{nexus.TargetPortGroup:x4}"));
            Designator(ms, 0x53, 0xA8, NameString(target));
        }
        return ms.ToArray();
    }

    static void Designator(MemoryStream ms, byte protocolAndCodeSet, byte pivAssociationType, ReadOnlySpan<byte> value)
    {
        ms.WriteByte(protocolAndCodeSet);
        ms.WriteByte(pivAssociationType);
        ms.WriteByte(0);
        ms.WriteByte((byte)value.Length);
        ms.Write(value);
    }

    /// <summary>UTF-8, null-terminated, padded with nulls to a multiple of 4 (SPC-4 7.8.6.11).</summary>
    static byte[] NameString(string name)
    {
        var utf8 = Encoding.UTF8.GetBytes(name);
        int length = Math.Min((utf8.Length + 4) & ~3, 252);
        var value = new byte[length];
        utf8.AsSpan(0, Math.Min(utf8.Length, length - 1)).CopyTo(value);
        return value;
    }

    static byte[] ExtendedInquiry()
    {
        var b = new byte[0x3C];
        b[1] = 0x07; // HEADSUP, ORDSUP, SIMPSUP
        b[2] = 0x03; // NV_SUP (non-volatile cache), V_SUP (volatile cache)
        return b;
    }

    byte[] BlockLimits()
    {
        var b = new byte[0x3C];
        b[0] = 0x01; // WSNZ: WRITE SAME with zero blocks is not "to the end of the medium"
        b[1] = _options.MaxCompareAndWriteBlocks;
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(2), Duet.Core.Units.SectorsPerBlock); // OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(4), _options.MaxTransferBlocks);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), _options.OptimalTransferBlocks);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), _options.MaxUnmapBlocks);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(20), _options.MaxUnmapDescriptors);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), Duet.Core.Units.SectorsPerBlock); // OPTIMAL UNMAP GRANULARITY
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(28), 0x8000_0000);                  // UGAVALID, alignment 0
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(32), _options.MaxWriteSameBlocks);
        return b;
    }

    static byte[] BlockDeviceCharacteristics()
    {
        var b = new byte[0x3C];
        b[1] = 0x01; // MEDIUM ROTATION RATE 1: non-rotating medium
        return b;
    }

    static byte[] LogicalBlockProvisioning()
    {
        var b = new byte[4];
        b[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ
        b[2] = 0x02;                      // thin provisioned
        return b;
    }
}
