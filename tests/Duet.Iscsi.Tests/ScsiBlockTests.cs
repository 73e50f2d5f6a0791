using System.Buffers.Binary;
using Duet.Core;
using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiBlockTests
{
    [Theory]
    [InlineData(10)]
    [InlineData(12)]
    [InlineData(16)]
    public void WriteThenReadRoundTrips(int size)
    {
        var h = Ready();
        var data = Pattern(8, 3);
        var (write, read) = size switch
        {
            10 => (Cdb.Write10(100, 8), Cdb.Read10(100, 8)),
            12 => (Cdb.Rw12(0xAA, 100, 8), Cdb.Rw12(0xA8, 100, 8)),
            _ => (Cdb.Write16(100, 8), Cdb.Read16(100, 8)),
        };
        var w = h.Run(write, data);
        Good(w);
        Assert.Equal(8 * 512, w.TransferLength);
        var r = h.Run(read);
        Good(r);
        Assert.Equal(data, r.DataIn.ToArray());
        Assert.Equal(8 * 512, r.TransferLength);
    }

    [Fact]
    public void Read6AndWrite6ZeroLengthMeans256Blocks()
    {
        var h = Ready();
        var data = Pattern(256, 9);
        Good(h.Run(Cdb.Rw6(0x0A, 10, 0), data));
        var r = h.Run(Cdb.Rw6(0x08, 10, 0));
        Good(r);
        Assert.Equal(256 * 512, r.DataIn.Length);
        Assert.Equal(data, r.DataIn.ToArray());
    }

    [Fact]
    public void ZeroLengthTransfersAreGoodAndMoveNothing()
    {
        var h = Ready();
        foreach (var cdb in new[] { Cdb.Read10(0, 0), Cdb.Write10(0, 0), Cdb.Read16(5, 0), Cdb.Write16(Blocks, 0), Cdb.Rw12(0xA8, (uint)Blocks, 0) })
        {
            var r = h.Run(cdb);
            Good(r);
            Assert.Equal(0, r.DataIn.Length);
            Assert.Equal(0, r.TransferLength);
        }
    }

    [Fact]
    public void BeyondTheEndIsLbaOutOfRange()
    {
        var h = Ready();
        OutOfRange(h.Run(Cdb.Read10((uint)Blocks - 1, 2)));
        OutOfRange(h.Run(Cdb.Read10((uint)Blocks + 1, 0)));
        OutOfRange(h.Run(Cdb.Read10(0xFFFFFFFF, 1)));
        OutOfRange(h.Run(Cdb.Read16(ulong.MaxValue, 1)));
        OutOfRange(h.Run(Cdb.Read16(0x8000_0000_0000_0000, 1)));
        OutOfRange(h.Run(Cdb.Write16((ulong)Blocks, 1), new byte[512]));
        OutOfRange(h.Run(Cdb.Rw6(0x08, 0x1FFFFF, 1)));
        Good(h.Run(Cdb.Read10((uint)Blocks - 1, 1)));
    }

    [Fact]
    public void ProtectionFieldsAreInvalidWithFieldPointer()
    {
        var h = Ready();
        var r = h.Run(Cdb.Read10(0, 1, flags: 0x20)); // RDPROTECT=001
        InvalidField(r);
        Assert.Equal((true, 1, 5), FieldPointer(r));
        InvalidField(h.Run(Cdb.Write16(0, 1, flags: 0xE0), new byte[512]));
        InvalidField(h.Run(Cdb.Rw12(0xAF, 0, 1, flags: 0x40))); // VRPROTECT
    }

    [Fact]
    public void DpoFuaAndFuaNvAreAccepted_FuaWritesThrough()
    {
        var h = Ready();
        Good(h.Run(Cdb.Write10(0, 1, flags: 0x10), new byte[512]));
        Assert.Equal(0, h.Volume.FuaWriteCount);
        Good(h.Run(Cdb.Write10(0, 1, flags: 0x08), new byte[512]));
        Assert.Equal(1, h.Volume.FuaWriteCount);
        Good(h.Run(Cdb.Write16(0, 1, flags: 0x1A), new byte[512]));
        Assert.Equal(2, h.Volume.FuaWriteCount);
        Good(h.Run(Cdb.Read10(0, 1, flags: 0x18)));
    }

    [Fact]
    public void ReservedBitsAndControlByteAreRejected()
    {
        var h = Ready();
        var cdb = Cdb.Read10(0, 1);
        cdb[9] = 0x04; // NACA
        var r = h.Run(cdb);
        InvalidField(r);
        Assert.Equal((true, 9, 2), FieldPointer(r));
        cdb = Cdb.Read10(0, 1, flags: 0x04); // RARC: not supported
        InvalidField(h.Run(cdb));
    }

    [Fact]
    public void UnknownOpcodeIsInvalidCommandOperationCode()
    {
        var h = Ready();
        CheckCondition(h.Run([0xC5, 0, 0, 0, 0, 0]), 5, 0x20, 0);
        CheckCondition(h.Run([0x1B, 0, 0, 0, 1, 0]), 5, 0x20, 0); // START STOP UNIT: not a removable device
    }

    [Fact]
    public void ShortDataOutWritesTheWholeBlocksThatArrived_APartialBlockIsInvalidFieldInInformationUnit()
    {
        var h = Ready();
        Good(h.Run(Cdb.Write10(0, 4), Pattern(4, 9)));
        var first = Pattern(1, 77);
        var r = h.Run(Cdb.Write10(0, 2), first);
        Good(r);
        Assert.Equal(1024, r.TransferLength); // the transport reports the residual overflow from this
        Assert.Equal(first, h.Volume.Contents[..512].ToArray());
        Assert.Equal(Pattern(4, 9).AsSpan(512, 512).ToArray(), h.Volume.Contents[512..1024].ToArray());
        r = h.Run(Cdb.Write10(2, 1), []);
        Good(r);
        Assert.Equal(512, r.TransferLength);
        Assert.Equal(Pattern(4, 9).AsSpan(1024, 512).ToArray(), h.Volume.Contents[1024..1536].ToArray());
        r = h.Run(Cdb.Write10(3, 1), new byte[200]);
        CheckCondition(r, 5, 0x0E, 0x03);
        Assert.Equal(512, r.TransferLength);
        Assert.Equal(Pattern(4, 9).AsSpan(1536, 512).ToArray(), h.Volume.Contents[1536..2048].ToArray());
        // More Data-Out than the CDB asks for: only the CDB's blocks are written.
        var data = Pattern(2, 1);
        Good(h.Run(Cdb.Write10(0, 1), data));
        Assert.Equal(data.AsSpan(0, 512).ToArray(), h.Volume.Contents[..512].ToArray());
        Assert.Equal(Pattern(4, 9).AsSpan(512, 512).ToArray(), h.Volume.Contents[512..1024].ToArray());
    }

    [Fact]
    public void TransferLongerThanMaximumIsInvalidField()
    {
        var h = new ScsiHarness(options: new ScsiDeviceOptions { MaxTransferBlocks = 16 });
        h.ClearAttentions(A);
        InvalidField(h.Run(Cdb.Read10(0, 17)));
        Good(h.Run(Cdb.Read10(0, 16)));
    }

    [Fact]
    public void ReadOnlyVolumeIsDataProtect()
    {
        var h = Ready(readOnlySecond: true);
        CheckCondition(h.Run(Cdb.Write10(0, 1), new byte[512], lun: 1), 7, 0x27, 0);
        CheckCondition(h.Run(Cdb.WriteSame10(0, 1), new byte[512], lun: 1), 7, 0x27, 0);
        CheckCondition(h.Run(Cdb.Unmap(24), Cdb.UnmapList((0, 1)), lun: 1), 7, 0x27, 0);
        Good(h.Run(Cdb.Read10(0, 1), lun: 1));
        var ms = h.Run(Cdb.ModeSense6(0x3F), lun: 1);
        Assert.Equal(0x80, ms.DataIn.Span[2] & 0x80); // WP
    }

    [Fact]
    public void MediumErrorCarriesTheLbaInInformation()
    {
        var h = Ready();
        h.Volume.ReadFault = (offset, length) => new BlockIoException(BlockErrorKind.Medium, "bad block", 37);
        var r = h.Run(Cdb.Read10(32, 8));
        CheckCondition(r, 3, 0x11, 0);
        Assert.Equal(37u, Information(r));
        // An LBA outside the command's range (another layer's numbering) is not reported as VALID.
        h.Volume.ReadFault = (offset, length) => new BlockIoException(BlockErrorKind.Medium, "bad block", 5000);
        r = h.Run(Cdb.Read10(32, 8));
        CheckCondition(r, 3, 0x11, 0);
        Assert.Null(Information(r));
    }

    [Theory]
    [InlineData(BlockErrorKind.Io, 4, 0x44, 0)]
    [InlineData(BlockErrorKind.Unavailable, 2, 0x04, 0x03)]
    [InlineData(BlockErrorKind.PathDown, 2, 0x04, 0x0C)]
    [InlineData(BlockErrorKind.OutOfRange, 5, 0x21, 0)]
    [InlineData(BlockErrorKind.ReadOnly, 7, 0x27, 0)]
    public void VolumeErrorsMapToSense(BlockErrorKind kind, byte key, byte asc, byte ascq)
    {
        var h = Ready();
        h.Volume.ReadFault = (_, _) => new BlockIoException(kind, "injected");
        CheckCondition(h.Run(Cdb.Read16(0, 1)), key, asc, ascq);
        h.Volume.YieldOnIo = true; // the same when the volume completes asynchronously
        CheckCondition(h.Run(Cdb.Read16(0, 1)), key, asc, ascq);
    }

    [Fact]
    public void WriteAndVerifyWritesThrough()
    {
        var h = Ready();
        var data = Pattern(4, 5);
        Good(h.Run(Cdb.Rw10(0x2E, 8, 4), data));
        Good(h.Run(Cdb.Rw12(0xAE, 8, 4, flags: 0x02), data));
        Good(h.Run(Cdb.Rw16(0x8E, 8, 4), data));
        Assert.Equal(3, h.Volume.FuaWriteCount);
        Assert.Equal(data, h.Run(Cdb.Read10(8, 4)).DataIn.ToArray());
        OutOfRange(h.Run(Cdb.Rw10(0x2E, (uint)Blocks, 1), new byte[512]));
    }

    [Theory]
    [InlineData(0x2F)]
    [InlineData(0xAF)]
    [InlineData(0x8F)]
    public void VerifyWithByteCheckComparesAndReportsTheMiscompareOffset(byte op)
    {
        var h = Ready();
        var data = Pattern(4, 11);
        Good(h.Run(Cdb.Write10(20, 4), data));
        byte[] Verify(byte flags, uint lba, uint n) => op switch
        {
            0x2F => Cdb.Rw10(op, lba, (ushort)n, flags),
            0xAF => Cdb.Rw12(op, lba, n, flags),
            _ => Cdb.Rw16(op, lba, n, flags),
        };
        Good(h.Run(Verify(0x02, 20, 4), data));
        var wrong = (byte[])data.Clone();
        wrong[1000] ^= 0x55;
        var r = h.Run(Verify(0x02, 20, 4), wrong);
        CheckCondition(r, 0xE, 0x1D, 0);
        Assert.Equal(1000u, Information(r));
        // BYTCHK 0: no data is compared, only the range checked.
        Good(h.Run(Verify(0, 20, 4)));
        OutOfRange(h.Run(Verify(0, (uint)Blocks, 1)));
        Good(h.Run(Verify(0x02, 0, 0)));
    }

    [Fact]
    public void SynchronizeCacheFlushesAndChecksRange()
    {
        var h = Ready();
        Good(h.Run(Cdb.SyncCache10()));
        Good(h.Run(Cdb.Rw16(0x91, 10, 10, flags: 0x02))); // IMMED
        Assert.Equal(2, h.Volume.FlushCount);
        OutOfRange(h.Run(Cdb.SyncCache10((uint)Blocks, 1)));
    }

    [Fact]
    public void PreFetchChecksRange()
    {
        var h = Ready();
        Good(h.Run(Cdb.Rw10(0x34, 0, 16)));
        Good(h.Run(Cdb.Rw16(0x90, (ulong)Blocks, 0)));
        OutOfRange(h.Run(Cdb.Rw10(0x34, (uint)Blocks, 1)));
        OutOfRange(h.Run(Cdb.Rw16(0x90, (ulong)Blocks + 1, 0)));
    }

    [Fact]
    public void ReadCapacity10And16()
    {
        var h = Ready();
        var r = h.Run(Cdb.ReadCapacity10());
        Good(r);
        Assert.Equal((uint)Blocks - 1, BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span[4..]));
        var r16 = h.Run(Cdb.ReadCapacity16());
        Good(r16);
        var d = r16.DataIn.Span;
        Assert.Equal(32, d.Length);
        Assert.Equal((ulong)Blocks - 1, BinaryPrimitives.ReadUInt64BigEndian(d));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(d[8..]));
        Assert.Equal(0, d[12] & 1);            // PROT_EN
        Assert.Equal(3, d[13] & 0x0F);         // 4 KiB physical blocks
        Assert.Equal(0xC0, d[14] & 0xC0);      // LBPME, LBPRZ
        // Allocation length truncates.
        var shortR = h.Run(Cdb.ReadCapacity16(alloc: 12));
        Assert.Equal(12, shortR.DataIn.Length);
        // PMI clear with a nonzero LBA is invalid.
        var bad = Cdb.ReadCapacity10();
        bad[5] = 1;
        InvalidField(h.Run(bad));
    }

    [Fact]
    public async Task ReadCapacity10SaturatesForHugeVolumes()
    {
        var huge = new HugeVolume();
        var device = new ScsiDevice(new VolumeList(huge));
        var cmd = new ScsiCommand { Nexus = A, Lun = 0, Cdb = Cdb.TestUnitReady() };
        _ = await device.ExecuteAsync(cmd, default);
        var r = await device.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = 0, Cdb = Cdb.ReadCapacity10() }, default);
        Good(r);
        Assert.Equal(0xFFFFFFFFu, BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span));
        var r16 = await device.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = 0, Cdb = Cdb.ReadCapacity16() }, default);
        Assert.Equal((ulong)(huge.SizeBytes / 512 - 1), BinaryPrimitives.ReadUInt64BigEndian(r16.DataIn.Span));
    }

    /// <summary>A 4 TiB volume for capacity reporting only: it never holds data.</summary>
    sealed class HugeVolume : IBlockVolume
    {
        public string Name => "huge";
        public long SizeBytes => 4L << 40;
        public bool ReadOnly => false;
        static Exception NoIo() => new BlockIoException(BlockErrorKind.Io, "capacity-only volume");
        public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default) => throw NoIo();
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default) => throw NoIo();
        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => ValueTask.CompletedTask;
        public ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) => throw NoIo();
        public ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default) => throw NoIo();
        public ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken cancellationToken = default) => throw NoIo();
    }
}
