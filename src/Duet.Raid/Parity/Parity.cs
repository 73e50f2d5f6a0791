namespace Duet.Raid.Parity;

/// <summary>
/// The parity kernels the RAID engine calls. Every source, parity and destination span
/// has the same length. Each method has a scalar twin in <see cref="ScalarParity"/>.
/// </summary>
public static class Parity
{
    public static void Xor(ReadOnlySpan<ReadOnlyMemory<byte>> sources, Span<byte> parity) => ScalarParity.Xor(sources, parity);

    public static void GenPQ(ReadOnlySpan<ReadOnlyMemory<byte>> data, Span<byte> p, Span<byte> q) => ScalarParity.GenPQ(data, p, q);

    public static void XorInto(ReadOnlySpan<byte> src, Span<byte> dst) => ScalarParity.XorInto(src, dst);

    public static void MulInto(byte c, ReadOnlySpan<byte> src, Span<byte> dst) => ScalarParity.MulInto(c, src, dst);

    public static void MulXorInto(byte c, ReadOnlySpan<byte> src, Span<byte> dst) => ScalarParity.MulXorInto(c, src, dst);
}
