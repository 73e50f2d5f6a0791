namespace Duet.Raid.Parity;

/// <summary>
/// The reference implementation of every parity kernel: byte at a time, obviously right.
/// The vector kernels in <see cref="Parity"/> must equal these for every input.
/// </summary>
public static class ScalarParity
{
    /// <summary>parity = XOR of all sources.</summary>
    public static void Xor(ReadOnlySpan<ReadOnlyMemory<byte>> sources, Span<byte> parity)
    {
        parity.Clear();
        foreach (var s in sources) XorInto(s.Span, parity);
    }

    /// <summary>p = Σ D_i, q = Σ g^i·D_i (Horner: q = ((D_{k-1}·2 + D_{k-2})·2 + ...) + D_0).</summary>
    public static void GenPQ(ReadOnlySpan<ReadOnlyMemory<byte>> data, Span<byte> p, Span<byte> q)
    {
        int n = p.Length;
        for (int b = 0; b < n; b++)
        {
            byte pp = 0, qq = 0;
            for (int i = data.Length - 1; i >= 0; i--)
            {
                byte d = data[i].Span[b];
                pp ^= d;
                qq = (byte)(Gf256.Mul2(qq) ^ d);
            }
            p[b] = pp;
            q[b] = qq;
        }
    }

    /// <summary>dst ^= src.</summary>
    public static void XorInto(ReadOnlySpan<byte> src, Span<byte> dst)
    {
        for (int i = 0; i < dst.Length; i++) dst[i] ^= src[i];
    }

    /// <summary>dst = c·src in GF(2^8).</summary>
    public static void MulInto(byte c, ReadOnlySpan<byte> src, Span<byte> dst)
    {
        for (int i = 0; i < dst.Length; i++) dst[i] = Gf256.Mul(c, src[i]);
    }

    /// <summary>dst ^= c·src in GF(2^8).</summary>
    public static void MulXorInto(byte c, ReadOnlySpan<byte> src, Span<byte> dst)
    {
        for (int i = 0; i < dst.Length; i++) dst[i] ^= Gf256.Mul(c, src[i]);
    }
}
