using System.Buffers.Binary;
using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiProvisioningTests
{
    static (long Lba, uint Blocks, byte Status)[] LbaStatus(ScsiResult r)
    {
        var d = r.DataIn.Span;
        int length = (int)BinaryPrimitives.ReadUInt32BigEndian(d);
        Assert.Equal(d.Length - 4, length);
        var list = new (long, uint, byte)[(d.Length - 8) / 16];
        for (int i = 0; i < list.Length; i++)
        {
            var e = d.Slice(8 + 16 * i, 16);
            list[i] = ((long)BinaryPrimitives.ReadUInt64BigEndian(e), BinaryPrimitives.ReadUInt32BigEndian(e[8..]), e[12]);
        }
        return list;
    }

    [Fact]
    public void WriteSameReplicatesTheBlock()
    {
        var h = Ready();
        var block = Pattern(1, 42);
        Good(h.Run(Cdb.WriteSame10(10, 5), block));
        var r = h.Run(Cdb.Read10(10, 5));
        for (int i = 0; i < 5; i++) Assert.Equal(block, r.DataIn.Span.Slice(512 * i, 512).ToArray());
        Good(h.Run(Cdb.WriteSame16(1000, 1000), block));
        Assert.Equal(block, h.Run(Cdb.Read16(1999, 1)).DataIn.ToArray());
    }

    [Fact]
    public void WriteSameOfZerosWritesZeroes_WithUnmapTrims()
    {
        var h = Ready();
        Good(h.Run(Cdb.Write10(0, 64), Pattern(64, 1)));
        Good(h.Run(Cdb.WriteSame16(0, 16), new byte[512]));
        var status = LbaStatus(h.Run(Cdb.GetLbaStatus(0)));
        Assert.Equal((0L, 64u, (byte)0), status[0]); // zeroes written: still mapped, like the data after them
        Good(h.Run(Cdb.WriteSame16(16, 16, flags: 0x08), new byte[512])); // UNMAP
        status = LbaStatus(h.Run(Cdb.GetLbaStatus(16)));
        Assert.Equal((16L, 16u, (byte)1), status[0]);
        Assert.All(h.Run(Cdb.Read10(0, 32)).DataIn.ToArray(), b => Assert.Equal(0, b));
        // NDOB: no Data-Out, zeros.
        Good(h.Run(Cdb.WriteSame16(32, 8, flags: 0x09)));
        Assert.Equal(1, LbaStatus(h.Run(Cdb.GetLbaStatus(32)))[0].Status);
    }

    [Fact]
    public void WriteSameWithUnmapAndNonZeroDataWritesTheData()
    {
        var h = Ready();
        var block = Pattern(1, 7);
        Good(h.Run(Cdb.WriteSame10(0, 8, flags: 0x08), block));
        Assert.Equal(block, h.Run(Cdb.Read10(7, 1)).DataIn.ToArray());
    }

    [Fact]
    public void WriteSameErrors()
    {
        var h = Ready();
        var zero = Cdb.WriteSame10(0, 0);
        var r = h.Run(zero, new byte[512]); // WSNZ
        InvalidField(r);
        Assert.Equal((true, 7, -1), FieldPointer(r));
        InvalidField(h.Run(Cdb.WriteSame16(0, 32769), new byte[512]));            // over MAXIMUM WRITE SAME LENGTH
        InvalidField(h.Run(Cdb.WriteSame16(0, 65536, flags: 0x08), new byte[512])); // with UNMAP too
        OutOfRange(h.Run(Cdb.WriteSame10((uint)Blocks, 1), new byte[512]));
        OutOfRange(h.Run(Cdb.WriteSame16((ulong)Blocks - 1, 2), new byte[512]));
        CheckCondition(h.Run(Cdb.WriteSame10(0, 1), new byte[256]), 5, 0x0E, 0x03);
        CheckCondition(h.Run(Cdb.WriteSame10(0, 1), new byte[1024]), 5, 0x0E, 0x03);
        InvalidField(h.Run(Cdb.WriteSame10(0, 1, flags: 0x10), new byte[512])); // ANCHOR
        InvalidField(h.Run(Cdb.WriteSame10(0, 1, flags: 0x20), new byte[512])); // WRPROTECT
        InvalidField(h.Run(Cdb.WriteSame10(0, 1, flags: 0x01), new byte[512])); // NDOB is WRITE SAME(16) only
    }

    [Fact]
    public void UnmapTrimsEveryDescriptor()
    {
        var h = Ready();
        Good(h.Run(Cdb.Write10(0, 256), Pattern(256, 3)));
        var list = Cdb.UnmapList((0, 8), (64, 16), (200, 0));
        var r = h.Run(Cdb.Unmap((ushort)list.Length), list);
        Good(r);
        Assert.Equal(list.Length, r.TransferLength);
        Assert.Equal((0L, 8u, (byte)1), LbaStatus(h.Run(Cdb.GetLbaStatus(0)))[0]);
        Assert.Equal((8L, 56u, (byte)0), LbaStatus(h.Run(Cdb.GetLbaStatus(8)))[0]);
        Assert.Equal((64L, 16u, (byte)1), LbaStatus(h.Run(Cdb.GetLbaStatus(64)))[0]);
        Assert.All(h.Run(Cdb.Read10(64, 16)).DataIn.ToArray(), b => Assert.Equal(0, b));
        // An unaligned single block reads back as zeros (LBPRZ) though its 4 KiB block stays mapped.
        Good(h.Run(Cdb.Unmap(24), Cdb.UnmapList((101, 1))));
        Assert.All(h.Run(Cdb.Read10(101, 1)).DataIn.ToArray(), b => Assert.Equal(0, b));
        Assert.NotEqual(0, h.Run(Cdb.Read10(100, 1)).DataIn.Span[5]);
    }

    [Fact]
    public void UnmapParameterListErrors()
    {
        var h = Ready();
        Good(h.Run(Cdb.Unmap(0)));                                   // no list: nothing to do
        Good(h.Run(Cdb.Unmap(8), Cdb.UnmapList()));                  // header only
        Good(h.Run(Cdb.Unmap(24), Cdb.UnmapList(((ulong)Blocks, 0)))); // zero blocks at the end
        CheckCondition(h.Run(Cdb.Unmap(6), new byte[6]), 5, 0x1A, 0);    // shorter than the header
        OutOfRange(h.Run(Cdb.Unmap(24), Cdb.UnmapList(((ulong)Blocks - 1, 2))));
        OutOfRange(h.Run(Cdb.Unmap(24), Cdb.UnmapList((ulong.MaxValue, 1))));
        var tooMany = Cdb.UnmapList(Enumerable.Range(0, 257).Select(i => ((ulong)i, 1u)).ToArray());
        var big = new ScsiHarness();
        big.ClearAttentions(A);
        InvalidParameter(big.Run(Cdb.Unmap((ushort)tooMany.Length), tooMany));
        var opts = new ScsiHarness(options: new ScsiDeviceOptions { MaxUnmapBlocks = 16 });
        opts.ClearAttentions(A);
        InvalidParameter(opts.Run(Cdb.Unmap(40), Cdb.UnmapList((0, 8), (100, 9))));
        var anchor = Cdb.Unmap(24);
        anchor[1] = 1;
        InvalidField(h.Run(anchor, Cdb.UnmapList((0, 1))));
        CheckCondition(h.Run(Cdb.Unmap(24), new byte[16]), 5, 0x0E, 0x03);
        // A failed list trims nothing: the range check comes first.
        Good(h.Run(Cdb.Write10(0, 8), Pattern(8, 1)));
        OutOfRange(h.Run(Cdb.Unmap(40), Cdb.UnmapList((0, 8), ((ulong)Blocks, 1))));
        Assert.Equal(0, LbaStatus(h.Run(Cdb.GetLbaStatus(0)))[0].Status);
    }

    [Fact]
    public void GetLbaStatusReportsExtentsAndHonoursAllocationLength()
    {
        var h = Ready();
        Good(h.Run(Cdb.Write10(8, 8), Pattern(8, 1)));
        var all = LbaStatus(h.Run(Cdb.GetLbaStatus(0)));
        Assert.Equal((0L, 8u, (byte)1), all[0]);
        Assert.Equal((8L, 8u, (byte)0), all[1]);
        Assert.Equal((16L, (uint)Blocks - 16, (byte)1), all[2]);
        var r = h.Run(Cdb.GetLbaStatus(0, alloc: 24));
        Assert.Equal(24, r.DataIn.Length);
        Assert.Equal(4 + 16 * 3, (int)BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span)); // the full length is still reported
        Assert.Single(LbaStatus(h.Run(Cdb.GetLbaStatus((ulong)Blocks - 1))));
        OutOfRange(h.Run(Cdb.GetLbaStatus((ulong)Blocks)));
        OutOfRange(h.Run(Cdb.GetLbaStatus(ulong.MaxValue)));
    }

    [Fact]
    public void CompareAndWriteWritesWhenEqual_MiscompareReportsTheOffset()
    {
        var h = Ready();
        var old = Pattern(2, 1);
        Good(h.Run(Cdb.Write10(50, 2), old));
        var fresh = Pattern(2, 99);
        var r = h.Run(Cdb.CompareAndWrite(50, 2, flags: 0x08), [.. old, .. fresh]);
        Good(r);
        Assert.Equal(2048, r.TransferLength);
        Assert.Equal(fresh, h.Run(Cdb.Read10(50, 2)).DataIn.ToArray());
        Assert.Equal(1, h.Volume.FuaWriteCount);
        var wrong = (byte[])fresh.Clone();
        wrong[700] ^= 1;
        r = h.Run(Cdb.CompareAndWrite(50, 2), [.. wrong, .. old]);
        CheckCondition(r, 0xE, 0x1D, 0);
        Assert.Equal(700u, Information(r));
        Assert.Equal(fresh, h.Run(Cdb.Read10(50, 2)).DataIn.ToArray()); // nothing written
    }

    [Fact]
    public void CompareAndWriteErrors()
    {
        var h = Ready();
        Good(h.Run(Cdb.CompareAndWrite(0, 0)));
        InvalidField(h.Run(Cdb.CompareAndWrite(0, 0), new byte[256 * 1024])); // 256 blocks wrapped to 0 in the CDB
        OutOfRange(h.Run(Cdb.CompareAndWrite((ulong)Blocks - 1, 2), new byte[2048]));
        var r = h.Run(Cdb.CompareAndWrite(0, 129), new byte[129 * 1024]);
        InvalidField(r);
        Assert.Equal((true, 13, -1), FieldPointer(r));
        CheckCondition(h.Run(Cdb.CompareAndWrite(0, 1), new byte[2048]), 5, 0x0E, 0x03); // 4 blocks for 1
        CheckCondition(h.Run(Cdb.CompareAndWrite(0, 3), new byte[2048]), 5, 0x0E, 0x03); // 4 blocks for 3
        InvalidField(h.Run(Cdb.CompareAndWrite(0, 1, flags: 0x20), new byte[1024]));
    }

    [Fact]
    public async Task CompareAndWriteIsAtomicAgainstConcurrentCompareAndWrites()
    {
        // Many initiators increment a counter in block 0 with COMPARE AND WRITE: every success must
        // have seen the value the previous success wrote, so the final count equals the successes.
        var h = Ready();
        h.Volume.YieldOnIo = true;
        int successes = 0;
        async Task Worker(int id)
        {
            for (int round = 0; round < 40; round++)
            {
                var current = (await h.RunAsync(Cdb.Read10(0, 1))).DataIn.ToArray();
                var next = (byte[])current.Clone();
                BinaryPrimitives.WriteInt32LittleEndian(next, BinaryPrimitives.ReadInt32LittleEndian(current) + 1);
                next[4] = (byte)id;
                var r = await h.RunAsync(Cdb.CompareAndWrite(0, 1), [.. current, .. next]);
                if (r.Status == ScsiStatus.Good) Interlocked.Increment(ref successes);
                else CheckCondition(r, 0xE, 0x1D, 0);
            }
        }
        await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() => Worker(i))));
        var final = BinaryPrimitives.ReadInt32LittleEndian(h.Volume.Contents);
        Assert.Equal(successes, final);
        Assert.True(successes > 0);
    }

    [Fact]
    public async Task CompareAndWriteExcludesPlainWritesBetweenCompareAndWrite()
    {
        // While a COMPARE AND WRITE holds the LUN, a plain write of the same block must land entirely
        // before or entirely after it: never between its read and its write.
        var h = Ready();
        h.Volume.YieldOnIo = true;
        for (int round = 0; round < 50; round++)
        {
            var a = Pattern(1, (byte)round);
            Good(await h.RunAsync(Cdb.Write10(0, 1), a));
            var b = Pattern(1, (byte)(round + 100));
            var c = Pattern(1, (byte)(round + 200));
            var caw = h.RunAsync(Cdb.CompareAndWrite(0, 1), [.. a, .. b]);
            var plain = h.RunAsync(Cdb.Write10(0, 1), c);
            var results = await Task.WhenAll(caw, plain);
            Good(results[1]);
            var final = h.Volume.Contents[..512].ToArray();
            // Either the plain write queued behind the COMPARE AND WRITE, or it came first and the compare
            // failed: both end with the plain write's data. A write landing in between would leave b.
            if (results[0].Status != ScsiStatus.Good) CheckCondition(results[0], 0xE, 0x1D, 0);
            Assert.Equal(c, final);
        }
    }
}

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiOrWriteAndDefectDataTests
{
    [Fact]
    public void OrWriteOrsTheDataIntoTheBlocks()
    {
        var h = Ready();
        var a = new byte[1024];
        Array.Fill(a, (byte)0xA5);
        Good(h.Run(Cdb.Write10(10, 2), a));
        var b = new byte[1024];
        Array.Fill(b, (byte)0x5A);
        b[1000] = 0x00;
        var r = h.Run(Cdb.Rw16(0x8B, 10, 2, flags: 0x08), b);
        Good(r);
        Assert.Equal(1024, r.TransferLength);
        var back = h.Run(Cdb.Read10(10, 2)).DataIn.ToArray();
        for (int i = 0; i < back.Length; i++) Assert.Equal(i == 1000 ? 0xA5 : 0xFF, back[i]);
        Assert.Equal(1, h.Volume.FuaWriteCount);
        Good(h.Run(Cdb.Rw16(0x8B, 0, 0)));
        OutOfRange(h.Run(Cdb.Rw16(0x8B, (ulong)Blocks + 1, 0)));
        OutOfRange(h.Run(Cdb.Rw16(0x8B, ulong.MaxValue, 1), new byte[512]));
        InvalidField(h.Run(Cdb.Rw16(0x8B, 0, 1, flags: 0x20), new byte[512])); // ORPROTECT
        CheckCondition(h.Run(Cdb.Rw16(0x8B, 0, 2), new byte[512]), 5, 0x0E, 0x03);
    }

    [Fact]
    public void ReadDefectDataReportsEmptyLists()
    {
        var h = Ready();
        var r = h.Run([0x37, 0, 0x18 | 0x05, 0, 0, 0, 0, 0, 32, 0]);
        Good(r);
        Assert.Equal(new byte[] { 0, 0x1D, 0, 0 }, r.DataIn.ToArray());
        var r12 = h.Run([0xB7, 0x0C, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        Good(r12);
        Assert.Equal(new byte[] { 0, 0x0C, 0, 0, 0, 0, 0, 0 }, r12.DataIn.ToArray());
    }
}
