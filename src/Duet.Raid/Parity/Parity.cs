using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Duet.Core;

namespace Duet.Raid.Parity;

/// <summary>
/// The parity kernels the RAID engine calls. Every source, parity and destination span
/// has the same length (any length; the vector kernels finish the tail byte at a time).
/// A destination is either the very same span as its source or disjoint from it.
/// Each method has a scalar twin in <see cref="ScalarParity"/> and equals it for every input.
///
/// The widest kernel the CPU runs well is chosen once, at type load: 512-bit where
/// Vector512 is hardware accelerated (AVX-512BW), else 256-bit (AVX2), else scalar.
/// GF(2^8) multiplication by a constant uses GFNI's affine transform when the CPU has it,
/// else nibble tables and byte shuffles. See docs/internals/parity.md.
/// </summary>
public static class Parity
{
    /// <summary>More members than this go to the scalar kernels (a pointer per member is stack allocated).</summary>
    const int MaxVectorMembers = 255;

    internal static readonly ParityKernel Best = ChooseBest();

    /// <summary>The kernel family in use on this CPU, for logs and benchmarks (e.g. "Vector512Gfni").</summary>
    public static string KernelName => Best.ToString();

    public static void Xor(ReadOnlySpan<ReadOnlyMemory<byte>> sources, Span<byte> parity) => Xor(Best, sources, parity);

    public static void GenPQ(ReadOnlySpan<ReadOnlyMemory<byte>> data, Span<byte> p, Span<byte> q) => GenPQ(Best, data, p, q);

    public static void XorInto(ReadOnlySpan<byte> src, Span<byte> dst) => XorInto(Best, src, dst);

    public static void MulInto(byte c, ReadOnlySpan<byte> src, Span<byte> dst) => Mul(Best, c, src, dst, accumulate: false);

    public static void MulXorInto(byte c, ReadOnlySpan<byte> src, Span<byte> dst) => Mul(Best, c, src, dst, accumulate: true);

    static ParityKernel ChooseBest()
    {
        if (Vector512.IsHardwareAccelerated && Avx512BW.IsSupported)
            return Gfni.V512.IsSupported ? ParityKernel.Vector512Gfni : ParityKernel.Vector512;
        if (Vector256.IsHardwareAccelerated && Avx2.IsSupported)
            return Gfni.V256.IsSupported ? ParityKernel.Vector256Gfni : ParityKernel.Vector256;
        return ParityKernel.Scalar;
    }

    internal static bool IsSupported(ParityKernel kernel) => kernel switch
    {
        ParityKernel.Scalar => true,
        ParityKernel.Vector256 => Avx2.IsSupported,
        ParityKernel.Vector256Gfni => Avx2.IsSupported && Gfni.V256.IsSupported,
        ParityKernel.Vector512 => Avx512BW.IsSupported,
        ParityKernel.Vector512Gfni => Avx512BW.IsSupported && Gfni.V512.IsSupported,
        _ => false,
    };

    // ------------------------------------------------------------------ XOR

    internal static unsafe void Xor(ParityKernel kernel, ReadOnlySpan<ReadOnlyMemory<byte>> sources, Span<byte> parity)
    {
        foreach (var s in sources) Invariant.Assert(s.Length == parity.Length);
        if (kernel == ParityKernel.Scalar || sources.Length == 0 || sources.Length > MaxVectorMembers)
        {
            ScalarParity.Xor(sources, parity);
            return;
        }
        if (parity.IsEmpty) return;
        byte** members = stackalloc byte*[sources.Length];
        fixed (byte* p = parity)
            PinThenRun(kernel, Operation.Xor, sources, 0, members, p, null, parity.Length);
    }

    // ------------------------------------------------------------------ P+Q

    internal static unsafe void GenPQ(ParityKernel kernel, ReadOnlySpan<ReadOnlyMemory<byte>> data, Span<byte> p, Span<byte> q)
    {
        Invariant.Assert(q.Length == p.Length);
        foreach (var d in data) Invariant.Assert(d.Length == p.Length);
        if (kernel == ParityKernel.Scalar || data.Length == 0 || data.Length > MaxVectorMembers)
        {
            ScalarParity.GenPQ(data, p, q);
            return;
        }
        if (p.IsEmpty) return;
        byte** members = stackalloc byte*[data.Length];
        fixed (byte* pp = p)
        fixed (byte* qq = q)
            PinThenRun(kernel, Operation.PQ, data, 0, members, pp, qq, p.Length);
    }

    enum Operation { Xor, PQ }

    /// <summary>
    /// Pins member <paramref name="index"/> with a fixed local and recurses to the next, so
    /// all members stay pinned for the duration of the kernel without a GCHandle each
    /// (a fixed local costs nothing unless a GC happens to run).
    /// </summary>
    static unsafe void PinThenRun(ParityKernel kernel, Operation op, ReadOnlySpan<ReadOnlyMemory<byte>> members,
        int index, byte** pointers, byte* out1, byte* out2, int length)
    {
        fixed (byte* m = members[index].Span)
        {
            pointers[index] = m;
            if (index + 1 < members.Length)
                PinThenRun(kernel, op, members, index + 1, pointers, out1, out2, length);
            else if (op == Operation.Xor)
                XorPinned(kernel, pointers, members.Length, out1, length);
            else
                GenPQPinned(kernel, pointers, members.Length, out1, out2, length);
        }
    }

    static unsafe void XorPinned(ParityKernel kernel, byte** src, int count, byte* dst, int length)
    {
        nuint done = kernel >= ParityKernel.Vector512
            ? VectorParity.Xor512(src, count, dst, (nuint)length)
            : VectorParity.Xor256(src, count, dst, (nuint)length);
        for (nuint b = done; b < (nuint)length; b++)
        {
            byte x = src[0][b];
            for (int j = 1; j < count; j++) x ^= src[j][b];
            dst[b] = x;
        }
    }

    static unsafe void GenPQPinned(ParityKernel kernel, byte** data, int count, byte* p, byte* q, int length)
    {
        nuint done = kernel >= ParityKernel.Vector512
            ? VectorParity.GenPQ512(data, count, p, q, (nuint)length)
            : VectorParity.GenPQ256(data, count, p, q, (nuint)length);
        for (nuint b = done; b < (nuint)length; b++)
        {
            byte pp = 0, qq = 0;
            for (int j = count - 1; j >= 0; j--)
            {
                byte d = data[j][b];
                pp ^= d;
                qq = (byte)(Gf256.Mul2(qq) ^ d);
            }
            p[b] = pp;
            q[b] = qq;
        }
    }

    // ------------------------------------------------------------------ dst ^= src

    internal static unsafe void XorInto(ParityKernel kernel, ReadOnlySpan<byte> src, Span<byte> dst)
    {
        Invariant.Assert(src.Length == dst.Length);
        if (kernel == ParityKernel.Scalar)
        {
            ScalarParity.XorInto(src, dst);
            return;
        }
        fixed (byte* s = src)
        fixed (byte* d = dst)
        {
            nuint length = (nuint)dst.Length;
            nuint done = kernel >= ParityKernel.Vector512
                ? VectorParity.XorInto512(s, d, length)
                : VectorParity.XorInto256(s, d, length);
            for (nuint b = done; b < length; b++) d[b] ^= s[b];
        }
    }

    // ------------------------------------------------------------------ dst (^)= c·src

    internal static unsafe void Mul(ParityKernel kernel, byte c, ReadOnlySpan<byte> src, Span<byte> dst, bool accumulate)
    {
        Invariant.Assert(src.Length == dst.Length);
        if (kernel == ParityKernel.Scalar)
        {
            if (accumulate) ScalarParity.MulXorInto(c, src, dst);
            else ScalarParity.MulInto(c, src, dst);
            return;
        }
        fixed (byte* s = src)
        fixed (byte* d = dst)
        fixed (byte* tables = GfTables.Nibbles)
        {
            nuint length = (nuint)dst.Length;
            byte* low = tables + c * 32;
            byte* high = low + 16;
            nuint done = kernel switch
            {
                ParityKernel.Vector512Gfni => VectorParity.MulGfni512(GfTables.Affine[c], s, d, length, accumulate),
                ParityKernel.Vector512 => VectorParity.MulShuffle512(low, high, s, d, length, accumulate),
                ParityKernel.Vector256Gfni => VectorParity.MulGfni256(GfTables.Affine[c], s, d, length, accumulate),
                _ => VectorParity.MulShuffle256(low, high, s, d, length, accumulate),
            };
            for (nuint b = done; b < length; b++)
            {
                byte x = s[b];
                byte r = (byte)(low[x & 0x0f] ^ high[x >> 4]);
                d[b] = accumulate ? (byte)(d[b] ^ r) : r;
            }
        }
    }
}

/// <summary>Kernel families, ordered by width; tests run every one the CPU supports.</summary>
internal enum ParityKernel
{
    Scalar,
    Vector256,
    Vector256Gfni,
    Vector512,
    Vector512Gfni,
}

/// <summary>Per-constant tables for multiplication by c in GF(2^8)/0x11d.</summary>
internal static class GfTables
{
    /// <summary>
    /// 32 bytes per c: c·x for x = 0..15, then c·(x &lt;&lt; 4) for x = 0..15. Since
    /// multiplication distributes over xor, c·x = low[x &amp; 15] ^ high[x &gt;&gt; 4].
    /// </summary>
    public static readonly byte[] Nibbles = BuildNibbles();

    /// <summary>
    /// For each c, the 8x8 bit matrix that GF2P8AFFINEQB needs to compute c·x. Multiplication
    /// by c is linear over GF(2): column j is c·2^j. The instruction computes result bit i
    /// as parity(matrix byte (7 - i) AND x), so byte (7 - i) holds row i: bit j of it is
    /// bit i of c·2^j. (GF2P8MULB would be simpler but multiplies modulo 0x11b, the AES
    /// field, which is not the RAID 6 field.)
    /// </summary>
    public static readonly ulong[] Affine = BuildAffine();

    static byte[] BuildNibbles()
    {
        var t = new byte[256 * 32];
        for (int c = 0; c < 256; c++)
            for (int x = 0; x < 16; x++)
            {
                t[c * 32 + x] = Gf256.Mul((byte)c, (byte)x);
                t[c * 32 + 16 + x] = Gf256.Mul((byte)c, (byte)(x << 4));
            }
        return t;
    }

    static ulong[] BuildAffine()
    {
        var t = new ulong[256];
        for (int c = 0; c < 256; c++)
        {
            ulong matrix = 0;
            for (int i = 0; i < 8; i++)
            {
                ulong row = 0;
                for (int j = 0; j < 8; j++)
                    row |= (ulong)((Gf256.Mul((byte)c, (byte)(1 << j)) >> i) & 1) << j;
                matrix |= row << (8 * (7 - i));
            }
            t[c] = matrix;
        }
        return t;
    }
}
