using System.Buffers.Binary;

namespace Duet.Iscsi.Scsi;

// REQUEST SENSE, REPORT LUNS, REPORT SUPPORTED OPERATION CODES, REPORT TARGET PORT GROUPS.
public sealed partial class ScsiDevice
{
    /// <summary>REQUEST SENSE: the nexus's next unit attention (which it clears), else NO SENSE.</summary>
    static ScsiResult RequestSense(LogicalUnit lu, ItNexus nexus, int allocation)
    {
        SenseCondition sense;
        bool pending;
        lock (lu.Sync) pending = lu.TryTakeAttention(nexus, out sense);
        return DataIn((pending ? sense : SenseCondition.NoSenseData).ToFixed(), allocation);
    }

    ScsiResult ReportLuns(ReadOnlySpan<byte> cdb)
    {
        byte select = cdb[2];
        if (select > 2) throw ScsiCheckException.InvalidField(2);
        int allocation = (int)Math.Min(Be32(cdb, 6), int.MaxValue);
        int count = select == 1 ? 0 : _luns.Length; // no well-known logical units
        var data = new byte[8 + 8 * Math.Max(count, 0)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(8 * count));
        for (int i = 0; i < count; i++) EncodeLun(_luns[i], data.AsSpan(8 + 8 * i, 8));
        return DataIn(data, allocation);
    }

    /// <summary>SAM-5 LUN: peripheral device addressing below 256, flat space addressing up to 16383.</summary>
    public static void EncodeLun(ulong lun, Span<byte> field)
    {
        field[..8].Clear();
        if (lun < 256) field[1] = (byte)lun;
        else
        {
            field[0] = (byte)(0x40 | (lun >> 8) & 0x3F);
            field[1] = (byte)lun;
        }
    }

    ScsiResult ReportTargetPortGroups(LogicalUnit lu, ReadOnlySpan<byte> cdb)
    {
        int format = cdb[1] >> 5;
        if (format > 1) throw ScsiCheckException.InvalidField(1, 7);
        int allocation = (int)Math.Min(Be32(cdb, 6), int.MaxValue);
        var groups = lu.PortGroups;
        int length = format == 1 ? 8 : 4;
        foreach (var g in groups) length += 8 + 4 * g.RelativePorts.Count;
        var data = new byte[length];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(length - 4));
        int at = 4;
        if (format == 1)
        {
            data[4] = 0x10; // extended header format
            data[5] = 0;    // implicit transition time: not reported
            at = 8;
        }
        foreach (var g in groups)
        {
            data[at] = (byte)((g.State == AluaState.ActiveOptimized ? 0x80 : 0) | (byte)g.State); // PREF on the optimized group
            data[at + 1] = 0x80 | 0x08 | 0x04 | 0x02 | 0x01; // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(at + 2), g.Id);
            data[at + 5] = 0x02; // status: altered by an implicit transition (ownership)
            data[at + 7] = (byte)g.RelativePorts.Count;
            at += 8;
            foreach (var port in g.RelativePorts)
            {
                BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(at + 2), port);
                at += 4;
            }
        }
        return DataIn(data, allocation);
    }

    static ScsiResult ReportSupportedOpcodes(ReadOnlySpan<byte> cdb)
    {
        bool rctd = (cdb[2] & 0x80) != 0;
        int option = cdb[2] & 0x07;
        byte opcode = cdb[3];
        int serviceAction = Be16(cdb, 4);
        int allocation = (int)Math.Min(Be32(cdb, 6), int.MaxValue);
        int timeouts = rctd ? 12 : 0;

        if (option == 0)
        {
            var all = CommandTable.All;
            int each = 8 + timeouts;
            var data = new byte[4 + each * all.Length];
            BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(data.Length - 4));
            for (int i = 0; i < all.Length; i++)
            {
                var c = all[i];
                var d = data.AsSpan(4 + each * i, each);
                d[0] = c.Opcode;
                BinaryPrimitives.WriteUInt16BigEndian(d[2..], (ushort)Math.Max(c.ServiceAction, 0));
                d[5] = (byte)((rctd ? 0x02 : 0) | (c.ServiceAction >= 0 ? 0x01 : 0)); // CTDP, SERVACTV
                BinaryPrimitives.WriteUInt16BigEndian(d[6..], (ushort)c.CdbLength);
                if (rctd) WriteTimeouts(c, d[8..]);
            }
            return DataIn(data, allocation);
        }

        bool hasServiceActions = CommandTable.HasServiceAction(opcode);
        if (option == 3) option = hasServiceActions ? 2 : 1;
        if (option == 1 && hasServiceActions) throw ScsiCheckException.InvalidField(3);
        if (option == 2 && !hasServiceActions && CommandTable.IsSupportedOpcode(opcode)) throw ScsiCheckException.InvalidField(3);
        if (option is not (1 or 2)) throw ScsiCheckException.InvalidField(2, 2);

        var info = CommandTable.Find(opcode, option == 2 ? serviceAction : -1);
        if (info is null || (option == 2 && serviceAction > 0x1F))
        {
            var none = new byte[4];
            none[1] = 0x01; // SUPPORT 001b: not supported
            return DataIn(none, allocation);
        }
        var one = new byte[4 + info.CdbLength + timeouts];
        one[1] = (byte)((rctd ? 0x80 : 0) | 0x03); // CTDP, SUPPORT 011b: supported as the standard says
        BinaryPrimitives.WriteUInt16BigEndian(one.AsSpan(2), (ushort)info.CdbLength);
        info.Usage.CopyTo(one, 4);
        if (rctd) WriteTimeouts(info, one.AsSpan(4 + info.CdbLength));
        return DataIn(one, allocation);
    }

    static void WriteTimeouts(CommandInfo c, Span<byte> d)
    {
        BinaryPrimitives.WriteUInt16BigEndian(d, 0x000A);
        BinaryPrimitives.WriteUInt32BigEndian(d[4..], c.TimeoutSeconds);
        BinaryPrimitives.WriteUInt32BigEndian(d[8..], c.TimeoutSeconds);
    }
}
