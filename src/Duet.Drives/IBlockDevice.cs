using Duet.Core;

namespace Duet.Drives;

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
}

public static class BlockDeviceChecks
{
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
