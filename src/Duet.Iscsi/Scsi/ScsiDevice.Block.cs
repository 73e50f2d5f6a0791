using System.Buffers.Binary;
using Duet.Core;

namespace Duet.Iscsi.Scsi;

// SBC-3 medium access: READ, WRITE, WRITE AND VERIFY, VERIFY, PRE-FETCH, SYNCHRONIZE CACHE.
// The hot path (READ/WRITE) allocates only the data buffer and awaits the volume directly.
public sealed partial class ScsiDevice
{
    /// <summary>INVALID FIELD IN COMMAND INFORMATION UNIT: the Data-Out the transport delivered does not fit the CDB.</summary>
    static readonly SenseCondition DataOutMismatch = new(SenseKey.IllegalRequest, 0x0E, 0x03);

    static void CheckRange(LogicalUnit lu, long lba, long blocks)
    {
        long count = lu.BlockCount;
        if (lba > count || blocks > count - lba) throw new ScsiCheckException(SenseCondition.LbaOutOfRange);
    }

    void CheckTransferLength(long blocks)
    {
        if (blocks > _options.MaxTransferBlocks) throw new ScsiCheckException(SenseCondition.InvalidFieldInCdb(-1));
    }

    ValueTask<ScsiResult> ReadAsync(LogicalUnit lu, long lba, long blocks, CancellationToken ct)
    {
        CheckRange(lu, lba, blocks);
        if (blocks == 0) return Done(GoodNoData);
        CheckTransferLength(blocks);
        int bytes = (int)(blocks << Units.SectorShift);
        var buffer = GC.AllocateUninitializedArray<byte>(bytes);
        ValueTask read;
        try
        {
            read = lu.Volume.ReadAsync(lba << Units.SectorShift, buffer, ct);
            if (read.IsCompletedSuccessfully)
            {
                read.GetAwaiter().GetResult();
                return Done(ScsiResult.Good(buffer, bytes));
            }
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, lba, blocks));
        }
        return AwaitRead(read, buffer, lba, blocks);
    }

    static async ValueTask<ScsiResult> AwaitRead(ValueTask read, byte[] buffer, long lba, long blocks)
    {
        try
        {
            await read.ConfigureAwait(false);
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, lba, blocks));
        }
        return ScsiResult.Good(buffer, buffer.Length);
    }

    ValueTask<ScsiResult> WriteAsync(LogicalUnit lu, ScsiCommand command, long lba, long blocks, bool fua, CancellationToken ct)
    {
        CheckRange(lu, lba, blocks);
        if (blocks == 0) return Done(GoodNoData);
        CheckTransferLength(blocks);
        int bytes = (int)(blocks << Units.SectorShift);
        if (lu.Volume.ReadOnly) throw new ScsiCheckException(SenseCondition.WriteProtected);
        var data = command.DataOut;
        if (data.Length < bytes)
        {
            // The initiator's expected transfer length was shorter than the CDB's (residual overflow). Whole
            // blocks that arrived are written and nothing beyond them (FCP-4 9.4.2 a); a partial block cannot
            // be, so that transfers nothing: INVALID FIELD IN COMMAND INFORMATION UNIT (b).
            if (data.Length % Units.SectorBytes != 0) return Done(Check(DataOutMismatch, bytes));
            if (data.Length == 0) return Done(ScsiResult.Good(default, bytes));
            return WriteCoreAsync(lu, data, lba, data.Length >> Units.SectorShift, fua, bytes, ct);
        }
        return WriteCoreAsync(lu, data[..bytes], lba, blocks, fua, bytes, ct);
    }

    static async ValueTask<ScsiResult> WriteCoreAsync(LogicalUnit lu, ReadOnlyMemory<byte> data, long lba, long blocks, bool fua, int transfer, CancellationToken ct)
    {
        await lu.WriteGate.EnterSharedAsync(ct).ConfigureAwait(false);
        try
        {
            await lu.Volume.WriteAsync(lba << Units.SectorShift, data, fua, ct).ConfigureAwait(false);
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, lba, blocks));
        }
        finally
        {
            lu.WriteGate.ExitShared();
        }
        return ScsiResult.Good(default, transfer);
    }

    ValueTask<ScsiResult> VerifyAsync(LogicalUnit lu, ScsiCommand command, long lba, long blocks, bool byteCheck, CancellationToken ct)
    {
        CheckRange(lu, lba, blocks);
        if (blocks == 0) return Done(GoodNoData);
        CheckTransferLength(blocks);
        if (!byteCheck) return Done(GoodNoData); // medium verification: the range is checked, the volume keeps its own checksums
        int bytes = (int)(blocks << Units.SectorShift);
        if (command.DataOut.Length < bytes) return Done(Check(DataOutMismatch, bytes));
        return VerifyCoreAsync(lu, command.DataOut[..bytes], lba, blocks, ct);
    }

    static async ValueTask<ScsiResult> VerifyCoreAsync(LogicalUnit lu, ReadOnlyMemory<byte> expected, long lba, long blocks, CancellationToken ct)
    {
        var actual = GC.AllocateUninitializedArray<byte>(expected.Length);
        try
        {
            await lu.Volume.ReadAsync(lba << Units.SectorShift, actual, ct).ConfigureAwait(false);
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, lba, blocks));
        }
        int diff = FirstDifference(expected.Span, actual);
        if (diff >= 0) return Check(SenseCondition.Miscompare(diff), expected.Length);
        return ScsiResult.Good(default, expected.Length);
    }

    /// <summary>Offset of the first differing byte, or -1.</summary>
    static int FirstDifference(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        int common = a.CommonPrefixLength(b);
        return common == a.Length && a.Length == b.Length ? -1 : common;
    }

    /// <summary>PRE-FETCH: the range is checked; the cache fills on demand, so nothing is promised (GOOD, never CONDITION MET).</summary>
    static ValueTask<ScsiResult> PreFetch(LogicalUnit lu, long lba, long blocks)
    {
        CheckRange(lu, lba, blocks);
        return Done(GoodNoData);
    }

    static ValueTask<ScsiResult> SynchronizeCacheAsync(LogicalUnit lu, long lba, long blocks, CancellationToken ct)
    {
        CheckRange(lu, lba, blocks);
        return FlushAsync(lu, ct);
    }

    static async ValueTask<ScsiResult> FlushAsync(LogicalUnit lu, CancellationToken ct)
    {
        try
        {
            await lu.Volume.FlushAsync(ct).ConfigureAwait(false);
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, -1, 0));
        }
        return GoodNoData;
    }

    // ---- READ CAPACITY

    static ScsiResult ReadCapacity10(LogicalUnit lu, ReadOnlySpan<byte> cdb)
    {
        bool pmi = (cdb[8] & 1) != 0;
        if (!pmi && Be32(cdb, 2) != 0) throw ScsiCheckException.InvalidField(2);
        var data = new byte[8];
        long last = lu.BlockCount - 1;
        BinaryPrimitives.WriteUInt32BigEndian(data, last > uint.MaxValue - 1 ? uint.MaxValue : (uint)last);
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(4), Units.SectorBytes);
        return ScsiResult.Good(data, data.Length);
    }

    static ScsiResult ReadCapacity16(LogicalUnit lu, ReadOnlySpan<byte> cdb)
    {
        bool pmi = (cdb[14] & 1) != 0;
        if (!pmi && Be64(cdb, 2) != 0) throw ScsiCheckException.InvalidField(2);
        var data = new byte[32];
        BinaryPrimitives.WriteUInt64BigEndian(data, (ulong)(lu.BlockCount - 1));
        BinaryPrimitives.WriteUInt32BigEndian(data.AsSpan(8), Units.SectorBytes);
        data[13] = 3; // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: 8 x 512 = 4 KiB
        data[14] = 0x80 | 0x40; // LBPME (UNMAP, WRITE SAME with UNMAP, GET LBA STATUS), LBPRZ (unmapped blocks read zeros)
        return DataIn(data, (int)Math.Min(Be32(cdb, 10), int.MaxValue));
    }
}
