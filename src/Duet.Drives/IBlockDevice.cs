using System.Runtime.ExceptionServices;
using Duet.Core;

namespace Duet.Drives;

/// <summary>One part of a gathered write (<see cref="IBlockDevice.WriteGatherAsync"/>): whole blocks from <see cref="Lba"/> on.</summary>
public readonly record struct WriteExtent(long Lba, ReadOnlyMemory<byte> Data);

/// <summary>
/// A drive: an array of 4 KiB blocks addressed by LBA (in <see cref="Units.BlockBytes"/> units).
/// Buffers are whole blocks. Writes become durable at the next <see cref="FlushAsync"/>
/// (or at once with <c>fua</c>). Failures throw <see cref="BlockIoException"/>:
/// <see cref="BlockErrorKind.Unavailable"/> for a failed or removed drive,
/// <see cref="BlockErrorKind.Medium"/> with the LBA for an unreadable block.
/// </summary>
public interface IBlockDevice : IAsyncDisposable
{
    /// <summary>A stable name for messages: the slot or file name.</summary>
    string Name { get; }

    long BlockCount { get; }

    ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken cancellationToken = default);

    ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken cancellationToken = default);

    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>
    /// Writes several extents of this drive, each as <see cref="WriteAsync"/> would (without FUA), in no order among
    /// them; every extent is attempted, and the first failure is thrown once all have finished. A drive whose
    /// transport can carry them as one request does so (the shelf client: one round trip for a data block and its
    /// tag block); the default starts one write each, all at once, and waits for all of them.
    /// </summary>
    ValueTask WriteGatherAsync(ReadOnlyMemory<WriteExtent> extents, CancellationToken cancellationToken = default) =>
        BlockDeviceChecks.WriteEachAsync(this, extents, cancellationToken);
}

public static class BlockDeviceChecks
{
    /// <summary><see cref="IBlockDevice.WriteGatherAsync"/> as separate writes: all started at once, all awaited, the first failure thrown.</summary>
    public static async ValueTask WriteEachAsync(IBlockDevice device, ReadOnlyMemory<WriteExtent> extents, CancellationToken ct)
    {
        if (extents.Length == 1)
        {
            var only = extents.Span[0];
            await device.WriteAsync(only.Lba, only.Data, false, ct);
            return;
        }
        var pending = new ValueTask[extents.Length];
        for (int i = 0; i < pending.Length; i++)
        {
            var e = extents.Span[i];
            try { pending[i] = device.WriteAsync(e.Lba, e.Data, false, ct); }
            catch (Exception x) { pending[i] = ValueTask.FromException(x); }
        }
        Exception? first = null;
        foreach (var p in pending)
        {
            try { await p; }
            catch (Exception x) { first ??= x; }
        }
        if (first is not null) ExceptionDispatchInfo.Throw(first);
    }

    /// <summary>Edge validation shared by every drive implementation.</summary>
    public static void CheckRange(IBlockDevice device, long lba, int byteCount)
    {
        if (byteCount <= 0 || byteCount % Units.BlockBytes != 0)
            throw new BlockIoException(BlockErrorKind.Invalid, $"{device.Name}: length {byteCount} is not a positive multiple of {Units.BlockBytes}", lba);
        long blocks = byteCount / Units.BlockBytes;
        if (lba < 0 || lba > device.BlockCount - blocks)
            throw new BlockIoException(BlockErrorKind.OutOfRange, $"{device.Name}: blocks {lba}..{lba + blocks - 1} are outside 0..{device.BlockCount - 1}", lba);
    }
}
