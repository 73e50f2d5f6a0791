using Duet.Core;
using Duet.Raid.Parity;
using FsCheck;
using FsCheck.Fluent;

namespace Duet.Raid.Tests;

using Parity = Duet.Raid.Parity.Parity;

/// <summary>
/// The vector kernels against the byte-at-a-time reference, every kernel family this CPU
/// can run (so a 512-bit machine also checks the 256-bit and non-GFNI paths), plus the
/// field laws and a two-member RAID 6 recovery built only from the public kernels.
/// </summary>
[Trait("Claim", "AW-7")]
public sealed class ParityKernelTests
{
    /// <summary>A stripe: member count, member length, and the seed its bytes come from.</summary>
    public sealed record Stripe(int Members, int Length, int Seed, byte Constant)
    {
        public byte[][] Build()
        {
            var random = new Random(Seed);
            var members = new byte[Members][];
            for (int i = 0; i < Members; i++)
            {
                members[i] = new byte[Length];
                random.NextBytes(members[i]);
            }
            return members;
        }
    }

    static readonly ParityKernel[] Kernels =
        Enum.GetValues<ParityKernel>().Where(Parity.IsSupported).ToArray();

    /// <summary>Any length up to 70000, biased towards multiples of 64 and short tails.</summary>
    static readonly Gen<int> Lengths = Gen.OneOf(
        Gen.Choose(0, 70000),
        Gen.Choose(0, 70000 / 64).Select(n => n * 64),
        Gen.Choose(0, 300));

    static readonly Arbitrary<Stripe> Stripes =
        (from members in Gen.Choose(1, 32)
         from length in Lengths
         from seed in Gen.Choose(0, int.MaxValue)
         from constant in Gen.Choose(0, 255)
         select new Stripe(members, length, seed, (byte)constant)).ToArbitrary();

    static readonly Config Quick = Config.QuickThrowOnFailure.WithMaxTest(40);

    static ReadOnlyMemory<byte>[] AsMemories(byte[][] members) =>
        members.Select(m => (ReadOnlyMemory<byte>)m).ToArray();

    [Fact]
    public void The_best_kernel_is_supported_and_the_scalar_kernel_is_always_available()
    {
        Assert.True(Parity.IsSupported(Parity.Best));
        Assert.Contains(ParityKernel.Scalar, Kernels);
        Assert.Equal(Parity.Best.ToString(), Parity.KernelName);
    }

    [Fact]
    public void Xor_equals_scalar_for_every_kernel() =>
        Prop.ForAll(Stripes, stripe =>
        {
            var sources = AsMemories(stripe.Build());
            var expected = new byte[stripe.Length];
            ScalarParity.Xor(sources, expected);
            foreach (var kernel in Kernels)
            {
                var parity = new byte[stripe.Length];
                new Random(stripe.Seed ^ 1).NextBytes(parity); // stale contents must not leak through
                Parity.Xor(kernel, sources, parity);
                if (!parity.AsSpan().SequenceEqual(expected)) return false;
            }
            var viaFacade = new byte[stripe.Length];
            Parity.Xor(sources, viaFacade);
            return viaFacade.AsSpan().SequenceEqual(expected);
        }).Check(Quick);

    [Fact]
    public void GenPQ_equals_scalar_for_every_kernel() =>
        Prop.ForAll(Stripes, stripe =>
        {
            var data = AsMemories(stripe.Build());
            var p0 = new byte[stripe.Length];
            var q0 = new byte[stripe.Length];
            ScalarParity.GenPQ(data, p0, q0);
            foreach (var kernel in Kernels)
            {
                var p = new byte[stripe.Length];
                var q = new byte[stripe.Length];
                new Random(stripe.Seed ^ 2).NextBytes(q);
                Parity.GenPQ(kernel, data, p, q);
                if (!p.AsSpan().SequenceEqual(p0) || !q.AsSpan().SequenceEqual(q0)) return false;
            }
            var pf = new byte[stripe.Length];
            var qf = new byte[stripe.Length];
            Parity.GenPQ(data, pf, qf);
            return pf.AsSpan().SequenceEqual(p0) && qf.AsSpan().SequenceEqual(q0);
        }).Check(Quick);

    [Fact]
    public void XorInto_MulInto_and_MulXorInto_equal_scalar_for_every_kernel() =>
        Prop.ForAll(Stripes, stripe =>
        {
            var random = new Random(stripe.Seed);
            var src = new byte[stripe.Length];
            var dst = new byte[stripe.Length];
            random.NextBytes(src);
            random.NextBytes(dst);
            byte c = stripe.Constant;

            var xorExpected = (byte[])dst.Clone();
            ScalarParity.XorInto(src, xorExpected);
            var mulExpected = new byte[stripe.Length];
            ScalarParity.MulInto(c, src, mulExpected);
            var mulXorExpected = (byte[])dst.Clone();
            ScalarParity.MulXorInto(c, src, mulXorExpected);

            foreach (var kernel in Kernels)
            {
                var x = (byte[])dst.Clone();
                Parity.XorInto(kernel, src, x);
                var m = (byte[])dst.Clone();
                Parity.Mul(kernel, c, src, m, accumulate: false);
                var mx = (byte[])dst.Clone();
                Parity.Mul(kernel, c, src, mx, accumulate: true);
                var inPlace = (byte[])src.Clone();
                Parity.Mul(kernel, c, inPlace, inPlace, accumulate: false); // dst may be src itself
                if (!x.AsSpan().SequenceEqual(xorExpected) || !m.AsSpan().SequenceEqual(mulExpected) ||
                    !mx.AsSpan().SequenceEqual(mulXorExpected) || !inPlace.AsSpan().SequenceEqual(mulExpected))
                    return false;
            }
            return true;
        }).Check(Quick);

    [Fact]
    public void MulInto_multiplies_every_byte_by_every_constant_for_every_kernel()
    {
        // Exhaustive over the 65536 products: pins the GFNI affine matrices and nibble tables.
        var src = new byte[256 + 7]; // a tail after the whole vectors too
        for (int i = 0; i < src.Length; i++) src[i] = (byte)i;
        foreach (var kernel in Kernels)
            for (int c = 0; c < 256; c++)
            {
                var dst = new byte[src.Length];
                Parity.Mul(kernel, (byte)c, src, dst, accumulate: false);
                for (int i = 0; i < src.Length; i++)
                    Assert.True(dst[i] == Gf256.Mul((byte)c, src[i]), $"{kernel}: {c}*{src[i]}");
            }
    }

    [Fact]
    public void Mismatched_lengths_are_an_invariant_violation()
    {
        var a = new byte[64];
        var b = new byte[65];
        Assert.Throws<InvariantViolationException>(() => Parity.XorInto(a, b));
        Assert.Throws<InvariantViolationException>(() => Parity.MulInto(3, a, b));
        Assert.Throws<InvariantViolationException>(() => Parity.Xor(new ReadOnlyMemory<byte>[] { a }, b));
        Assert.Throws<InvariantViolationException>(() => Parity.GenPQ(new ReadOnlyMemory<byte>[] { a }, a, b));
    }

    // ------------------------------------------------------------------ the field

    static readonly Arbitrary<byte> Bytes = Gen.Choose(0, 255).Select(x => (byte)x).ToArbitrary();
    static readonly Arbitrary<(byte, byte, byte)> Triples =
        (from a in Gen.Choose(0, 255) from b in Gen.Choose(0, 255) from c in Gen.Choose(0, 255)
         select ((byte)a, (byte)b, (byte)c)).ToArbitrary();

    [Fact]
    public void Gf256_multiplication_is_a_commutative_ring_with_xor_as_addition() =>
        Prop.ForAll(Triples, t =>
        {
            var (a, b, c) = t;
            return Gf256.Mul(a, b) == Gf256.Mul(b, a)
                && Gf256.Mul(Gf256.Mul(a, b), c) == Gf256.Mul(a, Gf256.Mul(b, c))
                && Gf256.Mul(a, (byte)(b ^ c)) == (Gf256.Mul(a, b) ^ Gf256.Mul(a, c))
                && Gf256.Mul(a, 1) == a
                && Gf256.Mul(a, 0) == 0;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(500));

    [Fact]
    public void Gf256_division_and_inverse_undo_multiplication() =>
        Prop.ForAll(Triples, t =>
        {
            var (a, b, _) = t;
            if (b == 0) return true;
            return Gf256.Div(Gf256.Mul(a, b), b) == a
                && Gf256.Mul(b, Gf256.Inv(b)) == 1
                && Gf256.Div(a, b) == Gf256.Mul(a, Gf256.Inv(b));
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(500));

    [Fact]
    public void Gf256_division_by_zero_throws() =>
        Assert.Throws<DivideByZeroException>(() => Gf256.Div(7, 0));

    [Fact]
    public void Gf256_powers_of_two_have_period_255_and_generate_the_group()
    {
        var seen = new HashSet<byte>();
        for (int n = 0; n < 255; n++)
        {
            Assert.Equal(Gf256.Pow2(n), Gf256.Pow2(n + 255));
            Assert.Equal(Gf256.Pow2(n), Gf256.Pow2(n - 255));
            Assert.Equal(Gf256.Mul(2, Gf256.Pow2(n)), Gf256.Pow2(n + 1));
            seen.Add(Gf256.Pow2(n));
        }
        Assert.Equal(255, seen.Count); // every non-zero element
        Assert.DoesNotContain((byte)0, seen);
        Assert.Equal(1, Gf256.Mul(Gf256.Pow2(-1), 2));
    }

    [Fact]
    public void Gf256_Mul2_equals_Mul_by_two_for_every_byte()
    {
        for (int x = 0; x < 256; x++) Assert.Equal(Gf256.Mul(2, (byte)x), Gf256.Mul2((byte)x));
        Assert.Equal(0x1d, Gf256.Mul2(0x80)); // x^8 reduces to x^4+x^3+x^2+1
    }

    [Fact]
    public void Gf256_Mul2_property() =>
        Prop.ForAll(Bytes, x => Gf256.Mul2(x) == Gf256.Mul(2, x)).Check(Quick);

    // ------------------------------------------------------------------ known vectors

    [Fact]
    public void P_and_Q_of_one_member_are_that_member()
    {
        var d0 = new byte[] { 0x00, 0x01, 0x80, 0xff, 0x1d, 0x53 };
        var p = new byte[d0.Length];
        var q = new byte[d0.Length];
        Parity.GenPQ(new ReadOnlyMemory<byte>[] { d0 }, p, q);
        Assert.Equal(d0, p);
        Assert.Equal(d0, q); // g^0 = 1
    }

    [Fact]
    public void Q_of_member_one_alone_is_twice_that_member()
    {
        foreach (int length in new[] { 3, 64, 4096 + 3 })
        {
            var d0 = new byte[length];
            var d1 = new byte[length];
            for (int i = 0; i < length; i++) d1[i] = (byte)(i * 37 + 0x80);
            d1[0] = 0x80; d1[1] = 0x01; d1[2] = 0xff;
            var p = new byte[length];
            var q = new byte[length];
            Parity.GenPQ(new ReadOnlyMemory<byte>[] { d0, d1 }, p, q);
            Assert.Equal(d1, p);
            Assert.Equal(0x1d, q[0]); // 0x80·2 = x^8 = 0x1d
            Assert.Equal(0x02, q[1]);
            Assert.Equal(0xe3, q[2]); // 0x1fe ^ 0x11d
            for (int i = 0; i < length; i++) Assert.Equal(Gf256.Mul2(d1[i]), q[i]);
        }
    }

    [Fact]
    public void Q_weights_member_i_by_two_to_the_i()
    {
        const int members = 20;
        const int length = 4096 + 17;
        for (int hot = 0; hot < members; hot++)
        {
            var data = new byte[members][];
            for (int i = 0; i < members; i++) data[i] = new byte[length];
            for (int b = 0; b < length; b++) data[hot][b] = (byte)(b + 1);
            var p = new byte[length];
            var q = new byte[length];
            Parity.GenPQ(AsMemories(data), p, q);
            for (int b = 0; b < length; b++)
                Assert.Equal(Gf256.Mul(Gf256.Pow2(hot), data[hot][b]), q[b]);
        }
    }

    // ------------------------------------------------------------------ recovery

    public sealed record Loss(int Members, int Length, int Seed, int X, int Y);

    static readonly Arbitrary<Loss> Losses =
        (from members in Gen.Choose(2, 32)
         from length in Lengths
         from seed in Gen.Choose(0, int.MaxValue)
         from x in Gen.Choose(0, members - 2)
         from y in Gen.Choose(x + 1, members - 1)
         select new Loss(members, length, seed, x, y)).ToArbitrary();

    /// <summary>
    /// Two data members x &lt; y lost. With Pxy, Qxy the P and Q of the survivors alone
    /// (the lost members taken as zero):
    ///   P ^ Pxy = Dx ^ Dy,   Q ^ Qxy = g^x·Dx ^ g^y·Dy
    /// so  Dx = A·(P ^ Pxy) ^ B·(Q ^ Qxy)  with  A = g^(y-x) / (g^(y-x) ^ 1),  B = g^(-x) / (g^(y-x) ^ 1),
    /// and Dy = (P ^ Pxy) ^ Dx.
    /// </summary>
    [Fact]
    public void Two_lost_data_members_are_recovered_from_P_and_Q() =>
        Prop.ForAll(Losses, loss =>
        {
            var data = new Stripe(loss.Members, loss.Length, loss.Seed, 0).Build();
            int n = loss.Length;
            var p = new byte[n];
            var q = new byte[n];
            Parity.GenPQ(AsMemories(data), p, q);

            var survivors = AsMemories(data);
            survivors[loss.X] = new byte[n];
            survivors[loss.Y] = new byte[n];
            var pxy = new byte[n];
            var qxy = new byte[n];
            Parity.GenPQ(survivors, pxy, qxy);
            Parity.XorInto(p, pxy); // pxy = Dx ^ Dy
            Parity.XorInto(q, qxy); // qxy = g^x·Dx ^ g^y·Dy

            byte gyx = Gf256.Pow2(loss.Y - loss.X);
            byte denominator = (byte)(gyx ^ 1);
            byte a = Gf256.Div(gyx, denominator);
            byte b = Gf256.Div(Gf256.Pow2(-loss.X), denominator);

            var dx = new byte[n];
            Parity.MulInto(a, pxy, dx);
            Parity.MulXorInto(b, qxy, dx);
            var dy = (byte[])pxy.Clone();
            Parity.XorInto(dx, dy);

            return dx.AsSpan().SequenceEqual(data[loss.X]) && dy.AsSpan().SequenceEqual(data[loss.Y]);
        }).Check(Quick);
}
