using Duet.Core;

namespace Duet.Raid.Parity;

/// <summary>
/// GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d) and generator 2 — the field of
/// Linux md's RAID 6 and ISA-L's pq_gen. Q = Σ g^i · D_i over the data members i = 0..k-1.
/// Scalar tables; the bulk kernels are in <see cref="Parity"/>.
/// </summary>
public static class Gf256
{
    public const int Polynomial = 0x11d;
    static readonly byte[] ExpTable = new byte[512];
    static readonly byte[] LogTable = new byte[256];

    static Gf256()
    {
        int x = 1;
        for (int i = 0; i < 255; i++)
        {
            ExpTable[i] = (byte)x;
            LogTable[x] = (byte)i;
            x <<= 1;
            if ((x & 0x100) != 0) x ^= Polynomial;
        }
        for (int i = 255; i < 512; i++) ExpTable[i] = ExpTable[i - 255];
        Invariant.Assert(x == 1); // 2 generates the whole multiplicative group
    }

    public static byte Mul(byte a, byte b) =>
        a == 0 || b == 0 ? (byte)0 : ExpTable[LogTable[a] + LogTable[b]];

    public static byte Div(byte a, byte b)
    {
        if (b == 0) throw new DivideByZeroException("GF(2^8) division by zero");
        return a == 0 ? (byte)0 : ExpTable[LogTable[a] + 255 - LogTable[b]];
    }

    public static byte Inv(byte a) => Div(1, a);

    /// <summary>g^n for the generator g = 2; n may be negative.</summary>
    public static byte Pow2(int n)
    {
        n %= 255;
        if (n < 0) n += 255;
        return ExpTable[n];
    }

    /// <summary>Multiplication by 2: shift left, and xor 0x1d if the top bit fell out.</summary>
    public static byte Mul2(byte a) => (byte)((a << 1) ^ ((a & 0x80) != 0 ? 0x1d : 0));
}
