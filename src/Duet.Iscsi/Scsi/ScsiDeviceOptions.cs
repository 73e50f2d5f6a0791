namespace Duet.Iscsi.Scsi;

/// <summary>What the device server reports about itself (INQUIRY, block limits) and the target name
/// it puts in the device identification VPD page.</summary>
public sealed class ScsiDeviceOptions
{
    /// <summary>T10 vendor identification (8 ASCII characters, padded).</summary>
    public const string Vendor = "DUET";
    /// <summary>Product identification (at most 16 ASCII characters).</summary>
    public string Product { get; init; } = "Duet volume";
    /// <summary>Product revision level (at most 4 ASCII characters).</summary>
    public string Revision { get; init; } = "0001";
    /// <summary>The iSCSI target name; when set, VPD 0x83 carries the SCSI name strings of the target port and device.</summary>
    public string? TargetName { get; init; }
    /// <summary>MAXIMUM TRANSFER LENGTH in logical blocks (16 MiB). Must not exceed what the transport accepts per
    /// command (IscsiServerOptions.MaxTransferBytes / 512): initiators size their commands by it.</summary>
    public uint MaxTransferBlocks { get; init; } = 32768;
    /// <summary>OPTIMAL TRANSFER LENGTH in logical blocks (256 KiB).</summary>
    public uint OptimalTransferBlocks { get; init; } = 512;
    /// <summary>MAXIMUM UNMAP LBA COUNT.</summary>
    public uint MaxUnmapBlocks { get; init; } = 1 << 20;
    /// <summary>MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.</summary>
    public uint MaxUnmapDescriptors { get; init; } = 256;
    /// <summary>MAXIMUM WRITE SAME LENGTH in logical blocks (16 MiB): a WRITE SAME covers at most what one WRITE
    /// may (<see cref="MaxTransferBlocks"/>), so one command's work (replicated writes, zeroes, trims) stays
    /// bounded like any other write's. UNMAP takes more per command (<see cref="MaxUnmapBlocks"/>).</summary>
    public uint MaxWriteSameBlocks { get; init; } = 32768;
    /// <summary>MAXIMUM COMPARE AND WRITE LENGTH in logical blocks (1..255).</summary>
    public byte MaxCompareAndWriteBlocks { get; init; } = 128;
}
