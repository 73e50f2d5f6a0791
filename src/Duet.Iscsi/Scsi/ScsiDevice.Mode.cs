using System.Buffers.Binary;

namespace Duet.Iscsi.Scsi;

// MODE SENSE / MODE SELECT (SPC-4 6.11-6.14, 7.5): caching (0x08), control (0x0A) and informational
// exceptions control (0x1C). Nothing is changeable: the write-back cache is non-volatile and always on
// (WCE=1), so the changeable masks are all zero and MODE SELECT accepts only the current values.
public sealed partial class ScsiDevice
{
    static readonly byte[] ModePageCodes = [0x08, 0x0A, 0x1C];

    /// <summary>Current (= default) values of a page, including its two-byte header.</summary>
    static byte[] ModePage(byte code)
    {
        switch (code)
        {
            case 0x08:
                var caching = new byte[20];
                caching[0] = 0x08; caching[1] = 0x12;
                caching[2] = 0x04;   // WCE: write-back (the cache is mirrored and non-volatile)
                return caching;
            case 0x0A:
                var control = new byte[12];
                control[0] = 0x0A; control[1] = 0x0A;
                control[2] = 0x02;   // GLTSD: no log parameters are saved
                control[3] = 0x10;   // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                control[8] = 0xFF; control[9] = 0xFF; // BUSY TIMEOUT PERIOD: unlimited
                return control;
            case 0x1C:
                var ie = new byte[12];
                ie[0] = 0x1C; ie[1] = 0x0A;
                ie[2] = 0x08;        // DEXCPT: informational exceptions are not reported this way
                return ie;
            default:
                throw new ArgumentOutOfRangeException(nameof(code));
        }
    }

    /// <summary>The changeable mask of a page: header kept, every parameter bit zero.</summary>
    static byte[] ChangeableMask(byte code)
    {
        var page = ModePage(code);
        page.AsSpan(2).Clear();
        return page;
    }

    ScsiResult ModeSense(LogicalUnit lu, ReadOnlySpan<byte> cdb, bool ten)
    {
        bool dbd = (cdb[1] & 0x08) != 0;
        bool longLba = ten && (cdb[1] & 0x10) != 0;
        int pc = cdb[2] >> 6;
        byte page = (byte)(cdb[2] & 0x3F);
        byte subpage = cdb[3];
        int allocation = ten ? Be16(cdb, 7) : cdb[4];
        if (pc == 3) throw new ScsiCheckException(new SenseCondition(SenseKey.IllegalRequest, 0x39, 0x00)); // SAVING PARAMETERS NOT SUPPORTED

        var pages = new List<byte[]>();
        if (page == 0x3F)
        {
            if (subpage is not (0x00 or 0xFF)) throw ScsiCheckException.InvalidField(3);
            foreach (var code in ModePageCodes) pages.Add(pc == 1 ? ChangeableMask(code) : ModePage(code));
        }
        else
        {
            if (Array.IndexOf(ModePageCodes, page) < 0) throw ScsiCheckException.InvalidField(2, 5);
            if (subpage != 0) throw ScsiCheckException.InvalidField(3);
            pages.Add(pc == 1 ? ChangeableMask(page) : ModePage(page));
        }

        int header = ten ? 8 : 4;
        int descriptor = dbd ? 0 : longLba ? 16 : 8;
        int length = header + descriptor;
        foreach (var p in pages) length += p.Length;
        var data = new byte[length];
        byte deviceSpecific = (byte)((lu.Volume.ReadOnly ? 0x80 : 0) | 0x10); // WP, DPOFUA
        if (ten)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data, (ushort)(length - 2));
            data[3] = deviceSpecific;
            data[4] = (byte)(longLba ? 1 : 0);
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6), (ushort)descriptor);
        }
        else
        {
            data[0] = (byte)(length - 1);
            data[2] = deviceSpecific;
            data[3] = (byte)descriptor;
        }
        if (descriptor == 8)
        {
            long blocks = lu.BlockCount;
            BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(header), blocks > uint.MaxValue ? uint.MaxValue : (uint)blocks);
            BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(header + 4), Duet.Core.Units.SectorBytes); // byte 4 (density) stays 0
        }
        else if (descriptor == 16)
        {
            BinaryPrimitives.WriteUInt64BigEndian(data.AsSpan(header), (ulong)lu.BlockCount);
            BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(header + 12), Duet.Core.Units.SectorBytes);
        }
        int at = header + descriptor;
        foreach (var p in pages)
        {
            p.CopyTo(data, at);
            at += p.Length;
        }
        return DataIn(data, allocation);
    }

    ScsiResult ModeSelect(LogicalUnit lu, ScsiCommand command, ReadOnlySpan<byte> cdb, bool ten)
    {
        int length = ten ? Be16(cdb, 7) : cdb[4];
        if (length == 0) return GoodNoData;
        if ((cdb[1] & 0x10) == 0) throw ScsiCheckException.InvalidField(1, 4); // PF=0: vendor-specific pages, none here
        if (command.DataOut.Length < length) return Check(DataOutMismatch, length);
        var list = command.DataOut.Span[..length];
        int header = ten ? 8 : 4;
        if (length < header) throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
        int descriptorLength = ten ? Be16(list, 6) : list[3];
        bool longLba = ten && (list[4] & 1) != 0;
        if (list[ten ? 2 : 1] != 0) throw ScsiCheckException.InvalidParameter(ten ? 2 : 1); // medium type
        if (descriptorLength != 0 && descriptorLength != (longLba ? 16 : 8)) throw ScsiCheckException.InvalidParameter(ten ? 6 : 3);
        if (header + descriptorLength > length) throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
        if (descriptorLength != 0)
        {
            // The block length is fixed at 512; the number of blocks is the volume's (zero: "unchanged").
            int lengthAt = header + (longLba ? 12 : 4);
            uint blockLength = longLba ? BinaryPrimitives.ReadUInt32BigEndian(list[lengthAt..]) : (uint)(list[lengthAt + 1] << 16 | list[lengthAt + 2] << 8 | list[lengthAt + 3]);
            if (blockLength != Duet.Core.Units.SectorBytes) throw ScsiCheckException.InvalidParameter(lengthAt);
            if (!longLba && list[header + 4] != 0) throw ScsiCheckException.InvalidParameter(header + 4); // density code
        }
        int at = header + descriptorLength;
        while (at < length)
        {
            if (length - at < 2) throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
            byte code = (byte)(list[at] & 0x3F);
            if ((list[at] & 0x40) != 0 || Array.IndexOf(ModePageCodes, code) < 0) throw ScsiCheckException.InvalidParameter(at, 5);
            var current = ModePage(code);
            int pageLength = list[at + 1] + 2;
            if (pageLength != current.Length) throw ScsiCheckException.InvalidParameter(at + 1);
            if (at + pageLength > length) throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
            var mask = ChangeableMask(code);
            for (int i = 2; i < pageLength; i++)
            {
                int changed = (list[at + i] ^ current[i]) & ~mask[i];
                if (changed != 0) throw ScsiCheckException.InvalidParameter(at + i, 31 - System.Numerics.BitOperations.LeadingZeroCount((uint)changed));
            }
            at += pageLength;
        }
        _ = lu;
        return GoodNoData;
    }
}
