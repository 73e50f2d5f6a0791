using System.Buffers;

namespace Duet.Raid;

/// <summary>
/// The pool of a stripe write's block buffers (old data and parity read for a read-modify-write, new data,
/// partial sums). A destage round holds a few hundred of them across its drive waits and returns them on
/// other threads; <see cref="ArrayPool{T}.Shared"/> keeps only a few dozen per size and core, so in the steady
/// state most returns were dropped and most rents allocated a fresh 4 KiB array (and the collector a fresh page
/// to zero). This pool keeps up to <see cref="PerSize"/> buffers of each size up to <see cref="LargestPooled"/>
/// (at most ~64 MiB in all, reached only by a load that held that many at once); larger ones are not pooled.
/// </summary>
internal static class BlockBuffers
{
    public const int LargestPooled = 64 * 1024;
    public const int PerSize = 512;

    static readonly ArrayPool<byte> Pool = Create();

    /// <summary>A pool made as <see cref="Pool"/> is (tests check the sizes on one of their own).</summary>
    public static ArrayPool<byte> Create() => ArrayPool<byte>.Create(LargestPooled, PerSize);

    public static byte[] Rent(int bytes) => Pool.Rent(bytes);

    public static void Return(byte[] buffer) => Pool.Return(buffer);
}
