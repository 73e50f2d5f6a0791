using System.Numerics;

namespace Duet.Core;

/// <summary>
/// The one source of randomness for simulation and fault injection: xoshiro256** (Blackman and
/// Vigna) seeded through SplitMix64, so a 64-bit seed reproduces every draw exactly, on every
/// platform and .NET version (the framework's Random class does not promise its algorithm).
///
/// Not thread-safe: give each component its own stream with <see cref="Fork"/> instead of
/// sharing one, so that one component's draws never shift another's. Every method consumes a
/// fixed number of 64-bit draws (one, except <see cref="Next(int)"/> which may reject and
/// redraw, and <see cref="NextBytes"/> which takes one per 8 bytes).
/// </summary>
public sealed class DeterministicRandom
{
    ulong _s0, _s1, _s2, _s3;

    public DeterministicRandom(ulong seed)
    {
        Seed = seed;
        ulong x = seed;
        _s0 = SplitMix64(ref x);
        _s1 = SplitMix64(ref x);
        _s2 = SplitMix64(ref x);
        _s3 = SplitMix64(ref x);
        // SplitMix64 is a bijection of its counter, so four consecutive outputs are never all zero.
        Invariant.Assert((_s0 | _s1 | _s2 | _s3) != 0);
    }

    /// <summary>The seed this stream was created from (for failure messages: "seed 42").</summary>
    public ulong Seed { get; }

    /// <summary>One step of SplitMix64: advances <paramref name="state"/> and returns a well-mixed value.</summary>
    public static ulong SplitMix64(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextUInt64()
    {
        ulong result = BitOperations.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = BitOperations.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>A uniform integer in [0, <paramref name="maxExclusive"/>), without modulo bias (Lemire's method).</summary>
    public int Next(int maxExclusive)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxExclusive);
        return (int)NextInt64(maxExclusive);
    }

    /// <summary>A uniform integer in [<paramref name="minInclusive"/>, <paramref name="maxExclusive"/>).</summary>
    public int Next(int minInclusive, int maxExclusive)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(minInclusive, maxExclusive);
        return (int)(minInclusive + NextInt64((long)maxExclusive - minInclusive));
    }

    /// <summary>A uniform integer in [0, <paramref name="maxExclusive"/>), without modulo bias (Lemire's method).</summary>
    public long NextInt64(long maxExclusive)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxExclusive);
        ulong range = (ulong)maxExclusive;
        ulong high = Math.BigMul(NextUInt64(), range, out ulong low);
        if (low < range)
        {
            ulong threshold = (0 - range) % range; // 2^64 mod range
            while (low < threshold) high = Math.BigMul(NextUInt64(), range, out low);
        }
        Invariant.Assert(high < range);
        return (long)high;
    }

    /// <summary>A uniform double in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>True with probability <paramref name="probability"/> (clamped to [0, 1]). Always consumes exactly one draw.</summary>
    public bool Chance(double probability)
    {
        if (double.IsNaN(probability)) throw new ArgumentOutOfRangeException(nameof(probability), "probability is NaN");
        double draw = NextDouble();
        return draw < probability; // p <= 0: never (draw >= 0); p >= 1: always (draw < 1)
    }

    public void NextBytes(Span<byte> destination)
    {
        while (destination.Length >= 8)
        {
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(destination, NextUInt64());
            destination = destination[8..];
        }
        if (!destination.IsEmpty)
        {
            ulong last = NextUInt64();
            for (int i = 0; i < destination.Length; i++) destination[i] = (byte)(last >> (8 * i));
        }
    }

    /// <summary>
    /// Derives an independent child stream. Deterministic: the same parent state always yields
    /// the same child. Consumes one draw from this stream.
    /// </summary>
    public DeterministicRandom Fork()
    {
        // Mix the parent draw once more so the child's seed is not a raw output of the parent.
        ulong x = NextUInt64();
        return new DeterministicRandom(SplitMix64(ref x));
    }
}
