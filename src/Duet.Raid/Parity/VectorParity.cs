using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Duet.Raid.Parity;

/// <summary>
/// The vector bodies of the parity kernels, over pinned pointers. Each method processes
/// the longest prefix that is a whole number of vectors and returns its length; the
/// caller (<see cref="Parity"/>) finishes the tail byte at a time. Nothing here checks
/// lengths or pins: that is the facade's job.
///
/// Multi-source kernels walk the members in the inner loop and keep the running parity
/// in registers, so each source byte is read once and each parity byte written once:
///
///     offset:   0        256       512   ...   (P+Q: 128-byte columns)
///     D_0      [a0..a3] [a0..a3]
///     D_1      [  ^   ] [  ^   ]          one 256-byte column (4 x 64) at a time,
///     ...      [  ^   ] [  ^   ]          all members, then store P (and Q)
///     D_{k-1}  [  ^   ] [  ^   ]
///
/// The kernels are jitted fully optimized on first call (AggressiveOptimization): they
/// are all loop, so tier-0 code or on-stack replacement would cost the first few hundred
/// stripes a factor of two or more, and there is nothing for profile-guided tiering to learn.
/// </summary>
internal static unsafe class VectorParity
{
    const byte ReductionLow = 0x1d; // x^8 = x^4+x^3+x^2+1 in the 0x11d field

    // ---------------------------------------------------------------- XOR, 512-bit

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint Xor512(byte** src, int count, byte* dst, nuint length)
    {
        nuint i = 0;
        for (; i + 256 <= length; i += 256)
        {
            byte* s = src[0] + i;
            var a0 = Vector512.Load(s);
            var a1 = Vector512.Load(s + 64);
            var a2 = Vector512.Load(s + 128);
            var a3 = Vector512.Load(s + 192);
            int j = 1;
            // Two members per step: the JIT folds x ^ y ^ z into one vpternlog.
            for (; j + 1 < count; j += 2)
            {
                byte* s1 = src[j] + i;
                byte* s2 = src[j + 1] + i;
                a0 = Ternary(a0, Vector512.Load(s1), Vector512.Load(s2));
                a1 = Ternary(a1, Vector512.Load(s1 + 64), Vector512.Load(s2 + 64));
                a2 = Ternary(a2, Vector512.Load(s1 + 128), Vector512.Load(s2 + 128));
                a3 = Ternary(a3, Vector512.Load(s1 + 192), Vector512.Load(s2 + 192));
            }
            if (j < count)
            {
                s = src[j] + i;
                a0 ^= Vector512.Load(s);
                a1 ^= Vector512.Load(s + 64);
                a2 ^= Vector512.Load(s + 128);
                a3 ^= Vector512.Load(s + 192);
            }
            a0.Store(dst + i);
            a1.Store(dst + i + 64);
            a2.Store(dst + i + 128);
            a3.Store(dst + i + 192);
        }
        for (; i + 64 <= length; i += 64)
        {
            var a = Vector512.Load(src[0] + i);
            for (int j = 1; j < count; j++) a ^= Vector512.Load(src[j] + i);
            a.Store(dst + i);
        }
        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> Ternary(Vector512<byte> a, Vector512<byte> b, Vector512<byte> c) =>
        Avx512F.IsSupported
            ? Avx512F.TernaryLogic(a.AsUInt64(), b.AsUInt64(), c.AsUInt64(), 0x96).AsByte() // a ^ b ^ c
            : a ^ b ^ c;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint XorInto512(byte* src, byte* dst, nuint length)
    {
        nuint i = 0;
        for (; i + 256 <= length; i += 256)
        {
            (Vector512.Load(dst + i) ^ Vector512.Load(src + i)).Store(dst + i);
            (Vector512.Load(dst + i + 64) ^ Vector512.Load(src + i + 64)).Store(dst + i + 64);
            (Vector512.Load(dst + i + 128) ^ Vector512.Load(src + i + 128)).Store(dst + i + 128);
            (Vector512.Load(dst + i + 192) ^ Vector512.Load(src + i + 192)).Store(dst + i + 192);
        }
        for (; i + 64 <= length; i += 64)
            (Vector512.Load(dst + i) ^ Vector512.Load(src + i)).Store(dst + i);
        return i;
    }

    // ---------------------------------------------------------------- P+Q, 512-bit

    /// <summary>
    /// p = Σ D_i, q = Σ 2^i·D_i by Horner from the last member down:
    /// q = (...((D_{k-1})·2 ^ D_{k-2})·2 ^ ...)·2 ^ D_0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint GenPQ512(byte** data, int count, byte* p, byte* q, nuint length)
    {
        nuint i = 0;
        int last = count - 1;
        for (; i + 128 <= length; i += 128)
        {
            byte* s = data[last] + i;
            var q0 = Vector512.Load(s);
            var q1 = Vector512.Load(s + 64);
            var p0 = q0;
            var p1 = q1;
            for (int j = last - 1; j >= 0; j--)
            {
                s = data[j] + i;
                var d0 = Vector512.Load(s);
                var d1 = Vector512.Load(s + 64);
                p0 ^= d0;
                p1 ^= d1;
                q0 = Mul2(q0) ^ d0;
                q1 = Mul2(q1) ^ d1;
            }
            p0.Store(p + i);
            p1.Store(p + i + 64);
            q0.Store(q + i);
            q1.Store(q + i + 64);
        }
        for (; i + 64 <= length; i += 64)
        {
            var qq = Vector512.Load(data[last] + i);
            var pp = qq;
            for (int j = last - 1; j >= 0; j--)
            {
                var d = Vector512.Load(data[j] + i);
                pp ^= d;
                qq = Mul2(qq) ^ d;
            }
            pp.Store(p + i);
            qq.Store(q + i);
        }
        return i;
    }

    /// <summary>
    /// Multiply every byte by 2 in GF(2^8)/0x11d: shift left one bit, and where the top
    /// bit fell out, reduce by xoring 0x1d. The top bit is the byte's sign, so a signed
    /// compare with zero gives the mask (one vpmovb2m / vpcmpgtb).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> Mul2(Vector512<byte> v)
    {
        var overflow = Vector512.LessThan(v.AsSByte(), Vector512<sbyte>.Zero).AsByte();
        return (v + v) ^ (overflow & Vector512.Create(ReductionLow));
    }

    // ---------------------------------------------------------------- GF multiply, 512-bit

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint MulGfni512(ulong matrix, byte* src, byte* dst, nuint length, bool accumulate)
    {
        var m = Vector512.Create(matrix).AsByte();
        nuint i = 0;
        if (accumulate)
        {
            for (; i + 256 <= length; i += 256)
            {
                var r0 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i), m, 0);
                var r1 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i + 64), m, 0);
                var r2 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i + 128), m, 0);
                var r3 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i + 192), m, 0);
                (Vector512.Load(dst + i) ^ r0).Store(dst + i);
                (Vector512.Load(dst + i + 64) ^ r1).Store(dst + i + 64);
                (Vector512.Load(dst + i + 128) ^ r2).Store(dst + i + 128);
                (Vector512.Load(dst + i + 192) ^ r3).Store(dst + i + 192);
            }
            for (; i + 64 <= length; i += 64)
                (Vector512.Load(dst + i) ^ Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i), m, 0)).Store(dst + i);
        }
        else
        {
            for (; i + 256 <= length; i += 256)
            {
                var r0 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i), m, 0);
                var r1 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i + 64), m, 0);
                var r2 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i + 128), m, 0);
                var r3 = Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i + 192), m, 0);
                r0.Store(dst + i);
                r1.Store(dst + i + 64);
                r2.Store(dst + i + 128);
                r3.Store(dst + i + 192);
            }
            for (; i + 64 <= length; i += 64)
                Gfni.V512.GaloisFieldAffineTransform(Vector512.Load(src + i), m, 0).Store(dst + i);
        }
        return i;
    }

    /// <summary>
    /// c·x = c·(x &amp; 0x0f) ^ c·(x &amp; 0xf0): two 16-entry tables, looked up with vpshufb
    /// (which shuffles within each 128-bit lane, so the tables are repeated per lane).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint MulShuffle512(byte* lowTable, byte* highTable, byte* src, byte* dst, nuint length, bool accumulate)
    {
        var lo = Vector512.Create(Vector128.Load(lowTable));
        var hi = Vector512.Create(Vector128.Load(highTable));
        var nibble = Vector512.Create((byte)0x0f);
        nuint i = 0;
        for (; i + 64 <= length; i += 64)
        {
            var x = Vector512.Load(src + i);
            var r = Avx512BW.Shuffle(lo, x & nibble)
                  ^ Avx512BW.Shuffle(hi, Vector512.ShiftRightLogical(x.AsUInt16(), 4).AsByte() & nibble);
            if (accumulate) r ^= Vector512.Load(dst + i);
            r.Store(dst + i);
        }
        return i;
    }

    // ---------------------------------------------------------------- 256-bit twins

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint Xor256(byte** src, int count, byte* dst, nuint length)
    {
        nuint i = 0;
        for (; i + 128 <= length; i += 128)
        {
            byte* s = src[0] + i;
            var a0 = Vector256.Load(s);
            var a1 = Vector256.Load(s + 32);
            var a2 = Vector256.Load(s + 64);
            var a3 = Vector256.Load(s + 96);
            for (int j = 1; j < count; j++)
            {
                s = src[j] + i;
                a0 ^= Vector256.Load(s);
                a1 ^= Vector256.Load(s + 32);
                a2 ^= Vector256.Load(s + 64);
                a3 ^= Vector256.Load(s + 96);
            }
            a0.Store(dst + i);
            a1.Store(dst + i + 32);
            a2.Store(dst + i + 64);
            a3.Store(dst + i + 96);
        }
        for (; i + 32 <= length; i += 32)
        {
            var a = Vector256.Load(src[0] + i);
            for (int j = 1; j < count; j++) a ^= Vector256.Load(src[j] + i);
            a.Store(dst + i);
        }
        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint XorInto256(byte* src, byte* dst, nuint length)
    {
        nuint i = 0;
        for (; i + 128 <= length; i += 128)
        {
            (Vector256.Load(dst + i) ^ Vector256.Load(src + i)).Store(dst + i);
            (Vector256.Load(dst + i + 32) ^ Vector256.Load(src + i + 32)).Store(dst + i + 32);
            (Vector256.Load(dst + i + 64) ^ Vector256.Load(src + i + 64)).Store(dst + i + 64);
            (Vector256.Load(dst + i + 96) ^ Vector256.Load(src + i + 96)).Store(dst + i + 96);
        }
        for (; i + 32 <= length; i += 32)
            (Vector256.Load(dst + i) ^ Vector256.Load(src + i)).Store(dst + i);
        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint GenPQ256(byte** data, int count, byte* p, byte* q, nuint length)
    {
        nuint i = 0;
        int last = count - 1;
        for (; i + 128 <= length; i += 128)
        {
            byte* s = data[last] + i;
            var q0 = Vector256.Load(s);
            var q1 = Vector256.Load(s + 32);
            var q2 = Vector256.Load(s + 64);
            var q3 = Vector256.Load(s + 96);
            var p0 = q0;
            var p1 = q1;
            var p2 = q2;
            var p3 = q3;
            for (int j = last - 1; j >= 0; j--)
            {
                s = data[j] + i;
                var d0 = Vector256.Load(s);
                var d1 = Vector256.Load(s + 32);
                var d2 = Vector256.Load(s + 64);
                var d3 = Vector256.Load(s + 96);
                p0 ^= d0;
                p1 ^= d1;
                p2 ^= d2;
                p3 ^= d3;
                q0 = Mul2(q0) ^ d0;
                q1 = Mul2(q1) ^ d1;
                q2 = Mul2(q2) ^ d2;
                q3 = Mul2(q3) ^ d3;
            }
            p0.Store(p + i);
            p1.Store(p + i + 32);
            p2.Store(p + i + 64);
            p3.Store(p + i + 96);
            q0.Store(q + i);
            q1.Store(q + i + 32);
            q2.Store(q + i + 64);
            q3.Store(q + i + 96);
        }
        for (; i + 32 <= length; i += 32)
        {
            var qq = Vector256.Load(data[last] + i);
            var pp = qq;
            for (int j = last - 1; j >= 0; j--)
            {
                var d = Vector256.Load(data[j] + i);
                pp ^= d;
                qq = Mul2(qq) ^ d;
            }
            pp.Store(p + i);
            qq.Store(q + i);
        }
        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> Mul2(Vector256<byte> v)
    {
        var overflow = Vector256.LessThan(v.AsSByte(), Vector256<sbyte>.Zero).AsByte();
        return (v + v) ^ (overflow & Vector256.Create(ReductionLow));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint MulGfni256(ulong matrix, byte* src, byte* dst, nuint length, bool accumulate)
    {
        var m = Vector256.Create(matrix).AsByte();
        nuint i = 0;
        for (; i + 128 <= length; i += 128)
        {
            var r0 = Gfni.V256.GaloisFieldAffineTransform(Vector256.Load(src + i), m, 0);
            var r1 = Gfni.V256.GaloisFieldAffineTransform(Vector256.Load(src + i + 32), m, 0);
            var r2 = Gfni.V256.GaloisFieldAffineTransform(Vector256.Load(src + i + 64), m, 0);
            var r3 = Gfni.V256.GaloisFieldAffineTransform(Vector256.Load(src + i + 96), m, 0);
            if (accumulate)
            {
                r0 ^= Vector256.Load(dst + i);
                r1 ^= Vector256.Load(dst + i + 32);
                r2 ^= Vector256.Load(dst + i + 64);
                r3 ^= Vector256.Load(dst + i + 96);
            }
            r0.Store(dst + i);
            r1.Store(dst + i + 32);
            r2.Store(dst + i + 64);
            r3.Store(dst + i + 96);
        }
        for (; i + 32 <= length; i += 32)
        {
            var r = Gfni.V256.GaloisFieldAffineTransform(Vector256.Load(src + i), m, 0);
            if (accumulate) r ^= Vector256.Load(dst + i);
            r.Store(dst + i);
        }
        return i;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static nuint MulShuffle256(byte* lowTable, byte* highTable, byte* src, byte* dst, nuint length, bool accumulate)
    {
        var lo = Vector256.Create(Vector128.Load(lowTable));
        var hi = Vector256.Create(Vector128.Load(highTable));
        var nibble = Vector256.Create((byte)0x0f);
        nuint i = 0;
        for (; i + 32 <= length; i += 32)
        {
            var x = Vector256.Load(src + i);
            var r = Avx2.Shuffle(lo, x & nibble)
                  ^ Avx2.Shuffle(hi, Vector256.ShiftRightLogical(x.AsUInt16(), 4).AsByte() & nibble);
            if (accumulate) r ^= Vector256.Load(dst + i);
            r.Store(dst + i);
        }
        return i;
    }
}
