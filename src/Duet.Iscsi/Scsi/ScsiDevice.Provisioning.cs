using System.Buffers.Binary;
using Duet.Core;

namespace Duet.Iscsi.Scsi;

// SBC-3 WRITE SAME, UNMAP, GET LBA STATUS and COMPARE AND WRITE.
public sealed partial class ScsiDevice
{
    /// <summary>How much a replicated WRITE SAME writes per volume call.</summary>
    const int WriteSameChunkBytes = 1 << 20;

    ValueTask<ScsiResult> WriteSameAsync(LogicalUnit lu, ScsiCommand command, long lba, long blocks, bool unmap, bool ndob, CancellationToken ct)
    {
        // WSNZ=1 in the block limits page: zero blocks does not mean "to the end of the medium".
        int lengthField = command.Cdb.Span[0] == Op.WriteSame10 ? 7 : 10;
        if (blocks == 0) throw ScsiCheckException.InvalidField(lengthField);
        if (blocks > _options.MaxWriteSameBlocks) throw ScsiCheckException.InvalidField(lengthField);
        CheckRange(lu, lba, blocks);
        ReadOnlyMemory<byte> block = default;
        if (!ndob)
        {
            if (command.DataOut.Length != Units.SectorBytes) return Done(Check(DataOutMismatch, Units.SectorBytes));
            block = command.DataOut;
        }
        if (lu.Volume.ReadOnly) throw new ScsiCheckException(SenseCondition.WriteProtected);
        bool zeros = ndob || !block.Span.ContainsAnyExcept((byte)0);
        return WriteSameCoreAsync(lu, lba, blocks, block, zeros, unmap, ndob ? 0 : Units.SectorBytes, ct);
    }

    static async ValueTask<ScsiResult> WriteSameCoreAsync(LogicalUnit lu, long lba, long blocks, ReadOnlyMemory<byte> block, bool zeros, bool unmap, int transfer, CancellationToken ct)
    {
        long offset = lba << Units.SectorShift, length = blocks << Units.SectorShift;
        await lu.WriteGate.EnterSharedAsync(ct).ConfigureAwait(false);
        try
        {
            if (zeros && unmap) await lu.Volume.TrimAsync(offset, length, ct).ConfigureAwait(false);       // LBPRZ: reads back as zeros
            else if (zeros) await lu.Volume.WriteZeroesAsync(offset, length, fua: false, ct).ConfigureAwait(false);
            else
            {
                // Replicate the one block (UNMAP with non-zero data writes the data: SBC-3 5.42).
                int chunk = (int)Math.Min(length, WriteSameChunkBytes);
                var buffer = GC.AllocateUninitializedArray<byte>(chunk);
                for (int at = 0; at < chunk; at += Units.SectorBytes) block.Span.CopyTo(buffer.AsSpan(at));
                for (long done = 0; done < length; done += chunk)
                {
                    int n = (int)Math.Min(chunk, length - done);
                    await lu.Volume.WriteAsync(offset + done, buffer.AsMemory(0, n), fua: false, ct).ConfigureAwait(false);
                }
            }
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

    ValueTask<ScsiResult> UnmapAsync(LogicalUnit lu, ScsiCommand command, int parameterLength, CancellationToken ct)
    {
        if (parameterLength == 0) return Done(GoodNoData);
        if (parameterLength < 8) throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
        if (command.DataOut.Length < parameterLength) return Done(Check(DataOutMismatch, parameterLength));
        var list = command.DataOut.Span[..parameterLength];
        int descriptorBytes = Math.Min(Be16(list, 2), parameterLength - 8) & ~15;
        int count = descriptorBytes / 16;
        if ((uint)count > _options.MaxUnmapDescriptors) throw ScsiCheckException.InvalidParameter(2);
        if (lu.Volume.ReadOnly) throw new ScsiCheckException(SenseCondition.WriteProtected);
        var ranges = new (long Lba, long Blocks)[count];
        long total = 0;
        for (int i = 0; i < count; i++)
        {
            var d = list.Slice(8 + 16 * i, 16);
            long lba = Be64(d, 0);
            long blocks = Be32(d, 8);
            CheckRange(lu, lba, blocks);
            total += blocks;
            if (total > _options.MaxUnmapBlocks) throw ScsiCheckException.InvalidParameter(8 + 16 * i + 8);
            ranges[i] = (lba, blocks);
        }
        return UnmapCoreAsync(lu, ranges, parameterLength, ct);
    }

    static async ValueTask<ScsiResult> UnmapCoreAsync(LogicalUnit lu, (long Lba, long Blocks)[] ranges, int transfer, CancellationToken ct)
    {
        await lu.WriteGate.EnterSharedAsync(ct).ConfigureAwait(false);
        try
        {
            foreach (var (lba, blocks) in ranges)
            {
                if (blocks == 0) continue;
                try
                {
                    await lu.Volume.TrimAsync(lba << Units.SectorShift, blocks << Units.SectorShift, ct).ConfigureAwait(false);
                }
                catch (BlockIoException e)
                {
                    throw new ScsiCheckException(MapBlockError(e, lba, blocks));
                }
            }
        }
        finally
        {
            lu.WriteGate.ExitShared();
        }
        return ScsiResult.Good(default, transfer);
    }

    /// <summary>How far one GET LBA STATUS looks (the volume reports allocation extent by extent).</summary>
    const long LbaStatusScanBytes = 1L << 30;

    ValueTask<ScsiResult> GetLbaStatusAsync(LogicalUnit lu, long lba, int allocationLength, CancellationToken ct)
    {
        if (lba >= lu.BlockCount) throw new ScsiCheckException(SenseCondition.LbaOutOfRange);
        return GetLbaStatusCoreAsync(lu, lba, allocationLength, ct);
    }

    static async ValueTask<ScsiResult> GetLbaStatusCoreAsync(LogicalUnit lu, long lba, int allocationLength, CancellationToken ct)
    {
        long offset = lba << Units.SectorShift;
        long length = Math.Min(lu.Volume.SizeBytes - offset, LbaStatusScanBytes);
        IReadOnlyList<AllocationExtent> extents;
        try
        {
            extents = await lu.Volume.GetAllocationAsync(offset, length, ct).ConfigureAwait(false);
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, lba, 1));
        }
        // Merge neighbours with the same provisioning status; stop at the scanned length.
        var descriptors = new List<(long Lba, long Blocks, byte Status)>();
        long at = lba;
        foreach (var e in extents)
        {
            long blocks = e.Length >> Units.SectorShift;
            if (blocks <= 0) continue;
            byte status = (e.Flags & AllocationFlags.Hole) != 0 ? (byte)1 : (byte)0; // 1 = deallocated, 0 = mapped
            if (descriptors.Count > 0 && descriptors[^1].Status == status && descriptors[^1].Blocks + blocks <= uint.MaxValue)
                descriptors[^1] = descriptors[^1] with { Blocks = descriptors[^1].Blocks + blocks };
            else descriptors.Add((at, blocks, status));
            at += blocks;
        }
        if (descriptors.Count == 0) descriptors.Add((lba, 1, 0));
        var data = new byte[8 + 16 * descriptors.Count];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(data.Length - 4));
        for (int i = 0; i < descriptors.Count; i++)
        {
            var d = data.AsSpan(8 + 16 * i);
            BinaryPrimitives.WriteUInt64BigEndian(d, (ulong)descriptors[i].Lba);
            BinaryPrimitives.WriteUInt32BigEndian(d[8..], (uint)Math.Min(descriptors[i].Blocks, uint.MaxValue));
            d[12] = descriptors[i].Status;
        }
        return DataIn(data, allocationLength);
    }

    ValueTask<ScsiResult> CompareAndWriteAsync(LogicalUnit lu, ScsiCommand command, long lba, int blocks, bool fua, CancellationToken ct)
    {
        // Zero blocks is no operation, unless data came with it: then the CDB's count is what is wrong
        // (a count of 256 wraps to 0 in its one byte).
        if (blocks == 0) return command.DataOut.Length == 0 ? Done(GoodNoData) : throw ScsiCheckException.InvalidField(13);
        if (blocks > _options.MaxCompareAndWriteBlocks) throw ScsiCheckException.InvalidField(13);
        CheckRange(lu, lba, blocks);
        int bytes = blocks << Units.SectorShift;
        if (command.DataOut.Length != 2 * bytes) return Done(Check(DataOutMismatch, 2 * bytes));
        if (lu.Volume.ReadOnly) throw new ScsiCheckException(SenseCondition.WriteProtected);
        return CompareAndWriteCoreAsync(lu, command.DataOut, lba, blocks, fua, ct);
    }

    static async ValueTask<ScsiResult> CompareAndWriteCoreAsync(LogicalUnit lu, ReadOnlyMemory<byte> data, long lba, int blocks, bool fua, CancellationToken ct)
    {
        int bytes = blocks << Units.SectorShift;
        var current = GC.AllocateUninitializedArray<byte>(bytes);
        long offset = lba << Units.SectorShift;
        // Exclusive against every other write of this LUN: nothing lands between the compare and the write.
        await lu.WriteGate.EnterExclusiveAsync(ct).ConfigureAwait(false);
        try
        {
            await lu.Volume.ReadAsync(offset, current, ct).ConfigureAwait(false);
            int diff = FirstDifference(data.Span[..bytes], current);
            if (diff >= 0) return Check(SenseCondition.Miscompare(diff), data.Length);
            await lu.Volume.WriteAsync(offset, data[bytes..], fua, ct).ConfigureAwait(false);
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, lba, blocks));
        }
        finally
        {
            lu.WriteGate.ExitExclusive();
        }
        return ScsiResult.Good(default, data.Length);
    }

    /// <summary>ORWRITE(16) (SBC-3 5.9): each block becomes itself OR the data, atomically against every other
    /// write of the LUN (the same exclusive gate as COMPARE AND WRITE).</summary>
    ValueTask<ScsiResult> OrWriteAsync(LogicalUnit lu, ScsiCommand command, long lba, long blocks, bool fua, CancellationToken ct)
    {
        CheckRange(lu, lba, blocks);
        if (blocks == 0) return Done(GoodNoData);
        CheckTransferLength(blocks);
        int bytes = (int)(blocks << Units.SectorShift);
        if (command.DataOut.Length < bytes) return Done(Check(DataOutMismatch, bytes));
        if (lu.Volume.ReadOnly) throw new ScsiCheckException(SenseCondition.WriteProtected);
        return OrWriteCoreAsync(lu, command.DataOut[..bytes], lba, blocks, fua, ct);
    }

    static async ValueTask<ScsiResult> OrWriteCoreAsync(LogicalUnit lu, ReadOnlyMemory<byte> data, long lba, long blocks, bool fua, CancellationToken ct)
    {
        var merged = GC.AllocateUninitializedArray<byte>(data.Length);
        long offset = lba << Units.SectorShift;
        await lu.WriteGate.EnterExclusiveAsync(ct).ConfigureAwait(false);
        try
        {
            await lu.Volume.ReadAsync(offset, merged, ct).ConfigureAwait(false);
            OrInto(merged, data.Span);
            await lu.Volume.WriteAsync(offset, merged, fua, ct).ConfigureAwait(false);
        }
        catch (BlockIoException e)
        {
            throw new ScsiCheckException(MapBlockError(e, lba, blocks));
        }
        finally
        {
            lu.WriteGate.ExitExclusive();
        }
        return ScsiResult.Good(default, data.Length);
    }

    static void OrInto(Span<byte> target, ReadOnlySpan<byte> source)
    {
        int i = 0;
        int width = System.Numerics.Vector<byte>.Count;
        if (System.Numerics.Vector.IsHardwareAccelerated)
            for (; i <= target.Length - width; i += width)
                (new System.Numerics.Vector<byte>(target[i..]) | new System.Numerics.Vector<byte>(source[i..])).CopyTo(target[i..]);
        for (; i < target.Length; i++) target[i] |= source[i];
    }

    /// <summary>READ DEFECT DATA (10/12): a volume has no defects a host could see (RAID repairs and remaps
    /// below it), so the requested lists are reported valid and empty, in the requested format.</summary>
    static ScsiResult ReadDefectData(byte flags, int allocation, bool twelve)
    {
        var d = new byte[twelve ? 8 : 4];
        d[1] = (byte)(flags & 0x1F); // PLISTV and GLISTV as requested, the requested format; list length 0
        return DataIn(d, allocation);
    }
}
