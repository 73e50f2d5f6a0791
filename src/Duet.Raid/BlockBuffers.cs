using System.Buffers;
using Duet.Core;

namespace Duet.Raid;

/// <summary>
/// The pool of a stripe write's block buffers (old data and parity read for a read-modify-write, new data,
/// partial sums). A destage round holds a few hundred of them across its drive waits and returns them on
/// other threads; <see cref="ArrayPool{T}.Shared"/> keeps only a few dozen per size and core, so in the steady
/// state most returns were dropped and most rents allocated a fresh 4 KiB array (and the collector a fresh page
/// to zero). This pool keeps up to <see cref="PerSize"/> buffers of each size up to <see cref="LargestPooled"/>
/// (at most ~64 MiB in all, reached only by a load that held that many at once); larger ones are not pooled.
/// Single blocks, by far the most common (a 4 KiB random write's every buffer), have a pool of their own that
/// keeps up to <see cref="SingleBlocksKept"/>: a 512-element destage round of such writes holds ~2,000 at once,
/// and with 512 kept the rest were allocated afresh every round (an allocation trace of the steady state: 11%
/// of controller A's allocated bytes). At most 16 MiB, again only after a load held that many at once.
/// </summary>
internal static class BlockBuffers
{
    public const int LargestPooled = 64 * 1024;
    public const int PerSize = 512;
    public const int SingleBlocksKept = 4096;

    static readonly Pool Shared = Create();

    /// <summary>A pool made as the shared one is (tests use one of their own).</summary>
    public static Pool Create() => new();

    public static byte[] Rent(int bytes) => Shared.Rent(bytes);

    public static void Return(byte[] buffer) => Shared.Return(buffer);

    internal sealed class Pool
    {
        readonly ArrayPool<byte> _singleBlocks = ArrayPool<byte>.Create(Units.BlockBytes, SingleBlocksKept);
        readonly ArrayPool<byte> _sizes = ArrayPool<byte>.Create(LargestPooled, PerSize);

        public byte[] Rent(int bytes) => bytes == Units.BlockBytes ? _singleBlocks.Rent(bytes) : _sizes.Rent(bytes);

        public void Return(byte[] buffer)
        {
            if (buffer.Length == Units.BlockBytes) _singleBlocks.Return(buffer);
            else _sizes.Return(buffer);
        }
    }
}
