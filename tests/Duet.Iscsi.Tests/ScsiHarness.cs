using System.Buffers.Binary;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi.Tests;

/// <summary>
/// A device server over real in-memory volumes, with two initiators (A through controller A's port,
/// B through controller B's port), CDB builders and sense assertions.
/// </summary>
sealed class ScsiHarness
{
    public const long Blocks = 2048; // 1 MiB volume
    public static readonly ItNexus A = new("iqn.2026-01.test:host-a", 0x23d000000001, 1, 1);
    public static readonly ItNexus B = new("iqn.2026-01.test:host-b", 0x23d000000002, 2, 2);

    public MemoryBlockVolume Volume { get; }
    public MemoryBlockVolume Second { get; }
    public InMemoryReservationStore Store { get; }
    public FixedScsiPortGroups PortGroups { get; }
    public ScsiDevice Device { get; }

    public ScsiHarness(bool readOnlySecond = false, ScsiDeviceOptions? options = null, InMemoryReservationStore? store = null)
    {
        Volume = new MemoryBlockVolume("vol0", Blocks * 512);
        Second = new MemoryBlockVolume("vol1", 64 * 512, readOnlySecond);
        Store = store ?? new InMemoryReservationStore();
        PortGroups = new FixedScsiPortGroups();
        Device = new ScsiDevice(new VolumeList(Volume, Second), Store, PortGroups, options ?? new ScsiDeviceOptions { TargetName = "iqn.2026-01.duet:target" });
    }

    /// <summary>A harness whose nexuses A and B have seen (and cleared) their POWER ON unit attention.</summary>
    public static ScsiHarness Ready(bool readOnlySecond = false)
    {
        var h = new ScsiHarness(readOnlySecond);
        h.ClearAttentions(A);
        h.ClearAttentions(B);
        h.ClearAttentions(A, lun: 1);
        h.ClearAttentions(B, lun: 1);
        return h;
    }

    public ScsiResult Run(byte[] cdb, byte[]? dataOut = null, ItNexus? nexus = null, ulong lun = 0, int expectedIn = 0)
    {
        var task = Device.ExecuteAsync(new ScsiCommand
        {
            Nexus = nexus ?? A,
            Lun = lun,
            Cdb = cdb,
            DataOut = dataOut ?? [],
            ExpectedDataInLength = expectedIn,
            ExpectedDataOutLength = dataOut?.Length ?? 0,
        }, CancellationToken.None);
        return task.AsTask().GetAwaiter().GetResult();
    }

    public Task<ScsiResult> RunAsync(byte[] cdb, byte[]? dataOut = null, ItNexus? nexus = null, ulong lun = 0) =>
        Device.ExecuteAsync(new ScsiCommand { Nexus = nexus ?? A, Lun = lun, Cdb = cdb, DataOut = dataOut ?? [] }, CancellationToken.None).AsTask();

    public byte Tmf(ItNexus nexus, TaskManagementFunction function, ulong lun) =>
        Device.TaskManagementAsync(nexus, function, lun, CancellationToken.None).AsTask().GetAwaiter().GetResult();

    public void ClearAttentions(ItNexus nexus, ulong lun = 0)
    {
        for (int i = 0; i < 10; i++)
            if (Run(Cdb.TestUnitReady(), nexus: nexus, lun: lun).Status == ScsiStatus.Good) return;
        throw new InvalidOperationException("unit attentions do not clear");
    }

    public static void Good(ScsiResult r)
    {
        Assert.True(r.Status == ScsiStatus.Good, $"expected GOOD, got {r.Status} {SenseText(r)}");
    }

    public static void CheckCondition(ScsiResult r, byte key, byte asc, byte ascq)
    {
        Assert.True(r.Status == ScsiStatus.CheckCondition, $"expected CHECK CONDITION {key:X}/{asc:X2}/{ascq:X2}, got {r.Status}");
        var s = r.Sense.Span;
        Assert.Equal(18, s.Length);
        Assert.Equal(0x70, s[0] & 0x7F);
        Assert.Equal(10, s[7]);
        Assert.Equal((key, asc, ascq), (s[2], s[12], s[13]));
    }

    public static void Conflict(ScsiResult r) => Assert.Equal(ScsiStatus.ReservationConflict, r.Status);

    public static void InvalidField(ScsiResult r) => CheckCondition(r, 0x5, 0x24, 0x00);
    public static void InvalidParameter(ScsiResult r) => CheckCondition(r, 0x5, 0x26, 0x00);
    public static void OutOfRange(ScsiResult r) => CheckCondition(r, 0x5, 0x21, 0x00);

    /// <summary>The INFORMATION field, or null when VALID is clear.</summary>
    public static uint? Information(ScsiResult r) =>
        (r.Sense.Span[0] & 0x80) != 0 ? BinaryPrimitives.ReadUInt32BigEndian(r.Sense.Span[3..]) : null;

    /// <summary>Sense-key-specific field pointer: (in CDB, byte, bit or -1), or null without SKSV.</summary>
    public static (bool Cdb, int Byte, int Bit)? FieldPointer(ScsiResult r)
    {
        var s = r.Sense.Span;
        if ((s[15] & 0x80) == 0) return null;
        return ((s[15] & 0x40) != 0, BinaryPrimitives.ReadUInt16BigEndian(s[16..]), (s[15] & 0x08) != 0 ? s[15] & 7 : -1);
    }

    static string SenseText(ScsiResult r) => r.Sense.Length >= 14 ? $"{r.Sense.Span[2]:X}/{r.Sense.Span[12]:X2}/{r.Sense.Span[13]:X2}" : "";

    public static byte[] Pattern(int blocks, byte seed)
    {
        var b = new byte[blocks * 512];
        for (int i = 0; i < b.Length; i++) b[i] = (byte)(seed + i * 7 + (i >> 9));
        return b;
    }
}

/// <summary>CDB builders (big-endian fields as SPC/SBC lay them out).</summary>
static class Cdb
{
    public static byte[] TestUnitReady() => new byte[6];
    public static byte[] RequestSense(byte alloc = 252) => [0x03, 0, 0, 0, alloc, 0];
    public static byte[] Inquiry(bool evpd = false, byte page = 0, ushort alloc = 255) => [0x12, (byte)(evpd ? 1 : 0), page, (byte)(alloc >> 8), (byte)alloc, 0];
    public static byte[] ReadCapacity10() => [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    public static byte[] ReadCapacity16(uint alloc = 32) => Sa16(0x9E, 0x10, 0, alloc);
    public static byte[] GetLbaStatus(ulong lba, uint alloc = 1024) => Sa16(0x9E, 0x12, lba, alloc);

    static byte[] Sa16(byte op, byte sa, ulong lba, uint alloc)
    {
        var c = new byte[16];
        c[0] = op;
        c[1] = sa;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), alloc);
        return c;
    }

    public static byte[] Rw6(byte op, uint lba, byte blocks) => [op, (byte)(lba >> 16 & 0x1F), (byte)(lba >> 8), (byte)lba, blocks, 0];

    public static byte[] Rw10(byte op, uint lba, ushort blocks, byte flags = 0)
    {
        var c = new byte[10];
        c[0] = op;
        c[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks);
        return c;
    }

    public static byte[] Rw12(byte op, uint lba, uint blocks, byte flags = 0)
    {
        var c = new byte[12];
        c[0] = op;
        c[1] = flags;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), blocks);
        return c;
    }

    public static byte[] Rw16(byte op, ulong lba, uint blocks, byte flags = 0)
    {
        var c = new byte[16];
        c[0] = op;
        c[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(10), blocks);
        return c;
    }

    public static byte[] Read10(uint lba, ushort blocks, byte flags = 0) => Rw10(0x28, lba, blocks, flags);
    public static byte[] Write10(uint lba, ushort blocks, byte flags = 0) => Rw10(0x2A, lba, blocks, flags);
    public static byte[] Read16(ulong lba, uint blocks) => Rw16(0x88, lba, blocks);
    public static byte[] Write16(ulong lba, uint blocks, byte flags = 0) => Rw16(0x8A, lba, blocks, flags);
    public static byte[] WriteSame10(uint lba, ushort blocks, byte flags = 0) => Rw10(0x41, lba, blocks, flags);
    public static byte[] WriteSame16(ulong lba, uint blocks, byte flags = 0) => Rw16(0x93, lba, blocks, flags);
    public static byte[] SyncCache10(uint lba = 0, ushort blocks = 0) => Rw10(0x35, lba, blocks);

    public static byte[] CompareAndWrite(ulong lba, byte blocks, byte flags = 0)
    {
        var c = new byte[16];
        c[0] = 0x89;
        c[1] = flags;
        BinaryPrimitives.WriteUInt64BigEndian(c.AsSpan(2), lba);
        c[13] = blocks;
        return c;
    }

    public static byte[] Unmap(ushort paramLength) => [0x42, 0, 0, 0, 0, 0, 0, (byte)(paramLength >> 8), (byte)paramLength, 0];

    public static byte[] UnmapList(params (ulong Lba, uint Blocks)[] ranges)
    {
        var p = new byte[8 + 16 * ranges.Length];
        BinaryPrimitives.WriteUInt16BigEndian(p, (ushort)(p.Length - 2));
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(2), (ushort)(16 * ranges.Length));
        for (int i = 0; i < ranges.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8 + 16 * i), ranges[i].Lba);
            BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(16 + 16 * i), ranges[i].Blocks);
        }
        return p;
    }

    public static byte[] ModeSense6(byte page, byte pc = 0, bool dbd = false, byte alloc = 255, byte subpage = 0) =>
        [0x1A, (byte)(dbd ? 0x08 : 0), (byte)(pc << 6 | page), subpage, alloc, 0];

    public static byte[] ModeSense10(byte page, byte pc = 0, bool dbd = false, bool llbaa = false, ushort alloc = 1024) =>
        [0x5A, (byte)((dbd ? 0x08 : 0) | (llbaa ? 0x10 : 0)), (byte)(pc << 6 | page), 0, 0, 0, 0, (byte)(alloc >> 8), (byte)alloc, 0];

    public static byte[] ModeSelect6(byte length, bool pf = true) => [0x15, (byte)(pf ? 0x10 : 0), 0, 0, length, 0];
    public static byte[] ModeSelect10(ushort length) => [0x55, 0x10, 0, 0, 0, 0, 0, (byte)(length >> 8), (byte)length, 0];

    public static byte[] ReportLuns(uint alloc = 1024, byte select = 0)
    {
        var c = new byte[12];
        c[0] = 0xA0;
        c[2] = select;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), alloc);
        return c;
    }

    public static byte[] MaintenanceIn(byte sa, uint alloc, byte b2 = 0, byte op = 0, ushort reqSa = 0, byte b1High = 0)
    {
        var c = new byte[12];
        c[0] = 0xA3;
        c[1] = (byte)(b1High | sa);
        c[2] = b2;
        c[3] = op;
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(4), reqSa);
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(6), alloc);
        return c;
    }

    public static byte[] Reserve6() => [0x16, 0, 0, 0, 0, 0];
    public static byte[] Release6() => [0x17, 0, 0, 0, 0, 0];
    public static byte[] Reserve10() => [0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    public static byte[] Release10() => [0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    public static byte[] PrIn(byte sa, ushort alloc = 1024) => [0x5E, sa, 0, 0, 0, 0, 0, (byte)(alloc >> 8), (byte)alloc, 0];

    public static byte[] PrOut(byte sa, byte type = 0, uint length = 24)
    {
        var c = new byte[10];
        c[0] = 0x5F;
        c[1] = sa;
        c[2] = type;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(5), length);
        return c;
    }

    public static byte[] PrOutParams(ulong key, ulong serviceKey, byte flags = 0)
    {
        var p = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(p, key);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), serviceKey);
        p[20] = flags;
        return p;
    }
}
