namespace Duet.Core.Tests;

public class Crc32CTests
{
    /// <summary>Bit at a time, reflected polynomial 0x82F63B78: the definition, independent of the code under test.</summary>
    static uint Reference(uint state, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data)
        {
            state ^= b;
            for (int k = 0; k < 8; k++) state = (state & 1) != 0 ? (state >> 1) ^ 0x82F63B78u : state >> 1;
        }
        return state;
    }

    [Fact]
    public void AppendMatchesTheBitwiseDefinitionAtEveryLengthAroundTheLaneBlocks()
    {
        var rng = new Random(7);
        var buf = new byte[20_000];
        rng.NextBytes(buf);
        var lengths = new List<int>();
        for (int n = 0; n <= 1600; n++) lengths.Add(n);
        lengths.AddRange([2303, 2304, 2305, 4095, 4096, 4097, 4104, 16383, 16384, 16392, 19_999]);
        foreach (int n in lengths)
        {
            uint start = (uint)rng.Next() ^ ((uint)rng.Next() << 16);
            int offset = rng.Next(0, 8); // unaligned starts too
            var span = buf.AsSpan(offset, Math.Min(n, buf.Length - offset));
            Assert.Equal(Reference(start, span), Crc32C.Append(start, span));
        }
    }

    [Fact]
    public void PiecewiseAppendEqualsOneAppend()
    {
        var rng = new Random(11);
        var buf = new byte[16384];
        rng.NextBytes(buf);
        uint whole = Crc32C.Compute(buf);
        for (int trial = 0; trial < 200; trial++)
        {
            uint s = Crc32C.Start;
            int at = 0;
            while (at < buf.Length)
            {
                int n = Math.Min(buf.Length - at, rng.Next(1, 3000));
                s = Crc32C.Append(s, buf.AsSpan(at, n));
                at += n;
            }
            Assert.Equal(whole, Crc32C.Finish(s));
        }
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));
    }
}
