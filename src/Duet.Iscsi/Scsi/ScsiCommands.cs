namespace Duet.Iscsi.Scsi;

/// <summary>Operation codes the device server knows.</summary>
static class Op
{
    public const byte TestUnitReady = 0x00, RequestSense = 0x03, Read6 = 0x08, Write6 = 0x0A, Inquiry = 0x12,
        ModeSelect6 = 0x15, Reserve6 = 0x16, Release6 = 0x17, ModeSense6 = 0x1A, ReadCapacity10 = 0x25,
        Read10 = 0x28, Write10 = 0x2A, WriteAndVerify10 = 0x2E, Verify10 = 0x2F, PreFetch10 = 0x34,
        SynchronizeCache10 = 0x35, WriteSame10 = 0x41, Unmap = 0x42, ModeSelect10 = 0x55, Reserve10 = 0x56,
        Release10 = 0x57, ModeSense10 = 0x5A, PersistentReserveIn = 0x5E, PersistentReserveOut = 0x5F,
        Read16 = 0x88, CompareAndWrite = 0x89, Write16 = 0x8A, WriteAndVerify16 = 0x8E, Verify16 = 0x8F,
        PreFetch16 = 0x90, SynchronizeCache16 = 0x91, WriteSame16 = 0x93, ServiceActionIn16 = 0x9E,
        ReportLuns = 0xA0, MaintenanceIn = 0xA3, Read12 = 0xA8, Write12 = 0xAA, WriteAndVerify12 = 0xAE,
        Verify12 = 0xAF, OrWrite16 = 0x8B, ReadDefectData10 = 0x37, ReadDefectData12 = 0xB7;

    public const byte SaReadCapacity16 = 0x10, SaGetLbaStatus = 0x12;
    public const byte SaReportTargetPortGroups = 0x0A, SaReportSupportedOpcodes = 0x0C;
}

/// <summary>How a command fares against a reservation held by another I_T nexus (SPC-4 5.12, SBC-3 4.17).</summary>
enum Access : byte
{
    /// <summary>Allowed under every reservation (INQUIRY, REPORT LUNS, PR IN, READ CAPACITY...).</summary>
    Always,
    /// <summary>Reads the medium: conflicts under exclusive access for non-holders (and unregistered nexuses under EA-RO/EA-AR).</summary>
    Read,
    /// <summary>Writes the medium or the mode pages: conflicts for non-holders except registered nexuses under RO/AR types.</summary>
    Write,
    /// <summary>SPC-2 RESERVE/RELEASE: conflicts whenever a persistent registration exists.</summary>
    Spc2,
    /// <summary>PERSISTENT RESERVE OUT: governed by its service action rules, never by the SPC-2 or PR table.</summary>
    PrOut,
}

/// <summary>
/// One supported command: its CDB usage mask (what REPORT SUPPORTED OPERATION CODES reports, and
/// what the device server enforces: a bit set outside the mask is INVALID FIELD IN CDB) and its
/// reservation access class.
/// </summary>
sealed class CommandInfo(byte opcode, int serviceAction, Access access, params byte[] usage)
{
    public byte Opcode { get; } = opcode;
    /// <summary>-1: the command has no service action.</summary>
    public int ServiceAction { get; } = serviceAction;
    public Access Access { get; } = access;
    /// <summary>CDB usage data: byte 0 is the opcode, then one mask per CDB byte.</summary>
    public byte[] Usage { get; } = usage;
    public int CdbLength => Usage.Length;
    /// <summary>Nominal command timeout for the RCTD descriptor, seconds.</summary>
    public uint TimeoutSeconds => Access == Access.Write ? 60u : 30u;
}

static class CommandTable
{
    const byte Ctl = 0x00; // control byte: NACA and LINK are not supported

    public static readonly CommandInfo[] All =
    [
        new(Op.TestUnitReady, -1, Access.Always, Op.TestUnitReady, 0, 0, 0, 0, Ctl),
        new(Op.RequestSense, -1, Access.Always, Op.RequestSense, 0, 0, 0, 0xFF, Ctl),
        new(Op.Read6, -1, Access.Read, Op.Read6, 0x1F, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.Write6, -1, Access.Write, Op.Write6, 0x1F, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.Inquiry, -1, Access.Always, Op.Inquiry, 0x01, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.ModeSelect6, -1, Access.Write, Op.ModeSelect6, 0x10, 0, 0, 0xFF, Ctl),
        new(Op.Reserve6, -1, Access.Spc2, Op.Reserve6, 0, 0, 0, 0, Ctl),
        new(Op.Release6, -1, Access.Spc2, Op.Release6, 0, 0, 0, 0, Ctl),
        new(Op.ModeSense6, -1, Access.Write, Op.ModeSense6, 0x08, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.ReadCapacity10, -1, Access.Always, Op.ReadCapacity10, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, Ctl),
        new(Op.Read10, -1, Access.Read, Op.Read10, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.Write10, -1, Access.Write, Op.Write10, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.WriteAndVerify10, -1, Access.Write, Op.WriteAndVerify10, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.Verify10, -1, Access.Read, Op.Verify10, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.PreFetch10, -1, Access.Read, Op.PreFetch10, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.SynchronizeCache10, -1, Access.Write, Op.SynchronizeCache10, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.WriteSame10, -1, Access.Write, Op.WriteSame10, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.Unmap, -1, Access.Write, Op.Unmap, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, Ctl),
        new(Op.ModeSelect10, -1, Access.Write, Op.ModeSelect10, 0x10, 0, 0, 0, 0, 0, 0xFF, 0xFF, Ctl),
        new(Op.Reserve10, -1, Access.Spc2, Op.Reserve10, 0, 0, 0, 0, 0, 0, 0, 0, Ctl),
        new(Op.Release10, -1, Access.Spc2, Op.Release10, 0, 0, 0, 0, 0, 0, 0, 0, Ctl),
        new(Op.ModeSense10, -1, Access.Write, Op.ModeSense10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveIn, 0, Access.Always, Op.PersistentReserveIn, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveIn, 1, Access.Always, Op.PersistentReserveIn, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveIn, 2, Access.Always, Op.PersistentReserveIn, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveIn, 3, Access.Always, Op.PersistentReserveIn, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 0, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 1, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 2, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 3, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 4, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 5, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 6, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.PersistentReserveOut, 7, Access.PrOut, Op.PersistentReserveOut, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, Ctl),
        new(Op.ReadDefectData10, -1, Access.Read, Op.ReadDefectData10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, Ctl),
        new(Op.OrWrite16, -1, Access.Write, Op.OrWrite16, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.Read16, -1, Access.Read, Op.Read16, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.CompareAndWrite, -1, Access.Write, Op.CompareAndWrite, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x1F, Ctl),
        new(Op.Write16, -1, Access.Write, Op.Write16, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.WriteAndVerify16, -1, Access.Write, Op.WriteAndVerify16, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.Verify16, -1, Access.Read, Op.Verify16, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.PreFetch16, -1, Access.Read, Op.PreFetch16, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.SynchronizeCache16, -1, Access.Write, Op.SynchronizeCache16, 0x06, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.WriteSame16, -1, Access.Write, Op.WriteSame16, 0x09, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.ServiceActionIn16, Op.SaReadCapacity16, Access.Always, Op.ServiceActionIn16, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, Ctl),
        new(Op.ServiceActionIn16, Op.SaGetLbaStatus, Access.Read, Op.ServiceActionIn16, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl),
        new(Op.ReportLuns, -1, Access.Always, Op.ReportLuns, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl),
        new(Op.MaintenanceIn, Op.SaReportTargetPortGroups, Access.Always, Op.MaintenanceIn, 0x3F, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl),
        new(Op.MaintenanceIn, Op.SaReportSupportedOpcodes, Access.Always, Op.MaintenanceIn, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl),
        new(Op.Read12, -1, Access.Read, Op.Read12, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.Write12, -1, Access.Write, Op.Write12, 0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.ReadDefectData12, -1, Access.Read, Op.ReadDefectData12, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, Ctl),
        new(Op.WriteAndVerify12, -1, Access.Write, Op.WriteAndVerify12, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
        new(Op.Verify12, -1, Access.Read, Op.Verify12, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, Ctl),
    ];

    /// <summary>By opcode: the command (no service action) or the first of its service actions.</summary>
    static readonly CommandInfo?[] ByOpcode = Index();

    /// <summary>Opcodes whose byte 1 carries a service action (bits 4-0).</summary>
    public static bool HasServiceAction(byte opcode) => ByOpcode[opcode] is { ServiceAction: >= 0 };

    static CommandInfo?[] Index()
    {
        var table = new CommandInfo?[256];
        foreach (var c in All)
        {
            Duet.Core.Invariant.Assert(c.Usage[0] == c.Opcode);
            table[c.Opcode] ??= c;
        }
        return table;
    }

    public static bool IsSupportedOpcode(byte opcode) => ByOpcode[opcode] is not null;

    /// <summary>The command for this opcode and service action, or null.</summary>
    public static CommandInfo? Find(byte opcode, int serviceAction)
    {
        var first = ByOpcode[opcode];
        if (first is null || first.ServiceAction < 0) return first;
        foreach (var c in All)
            if (c.Opcode == opcode && c.ServiceAction == serviceAction) return c;
        return null;
    }

    /// <summary>Checks the CDB against the usage mask: a bit set where the mask is clear is INVALID FIELD IN CDB,
    /// pointing at the first such byte and its highest offending bit.</summary>
    public static void CheckReservedBits(CommandInfo info, ReadOnlySpan<byte> cdb)
    {
        var usage = info.Usage;
        for (int i = 1; i < usage.Length; i++)
        {
            int bad = cdb[i] & ~usage[i];
            if (bad != 0) throw ScsiCheckException.InvalidField(i, 31 - System.Numerics.BitOperations.LeadingZeroCount((uint)bad));
        }
    }
}
