using Duet.Cache.Nvram;
using FsCheck;
using FsCheck.Fluent;

namespace Duet.Cache.Tests.Nvram;

/// <summary>
/// Random writes, descriptor-only writes, invalidations, clean marks, clears and reopens
/// against a dictionary model: afterwards <see cref="NvramRegion.ReplayOrder()"/> is exactly
/// the model's valid elements in sequence order, with their data, and nothing is skipped.
/// </summary>
[Trait("Claim", "MR-1")]
public sealed class NvramModelTests : IDisposable
{
    public enum Kind { Write, WriteDescriptorOnly, Invalidate, SetClean, Clear, Reopen }

    public sealed record Op(Kind Kind, int Region, int Element, int BlockCount, uint Mask, int Seed, bool Dirty);

    static readonly Gen<Op> Ops =
        from roll in Gen.Choose(0, 99)
        from region in Gen.Choose(1, 2)
        from element in Gen.Choose(0, Sample.Small.ElementCount - 1)
        from blockCount in Gen.Choose(1, 32)
        from raw in Gen.Choose(int.MinValue, int.MaxValue)
        from seed in Gen.Choose(0, int.MaxValue)
        from dirty in Gen.Elements(true, false)
        select new Op(
            roll switch { < 45 => Kind.Write, < 65 => Kind.WriteDescriptorOnly, < 85 => Kind.Invalidate, < 95 => Kind.SetClean, < 97 => Kind.Clear, _ => Kind.Reopen },
            region, element, blockCount, MaskFor(blockCount, (uint)raw), seed, dirty);

    static uint MaskFor(int blockCount, uint raw)
    {
        uint mask = raw & (blockCount == 32 ? uint.MaxValue : (1u << blockCount) - 1);
        return mask != 0 ? mask : 1u << (blockCount - 1);
    }

    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Replay_order_equals_the_models_valid_elements_in_sequence_order()
    {
        var path = _dir.File("model.nvram");
        NvramFile.Create(path, Sample.Small, "A", Sample.Pair).Dispose();
        var nvram = NvramFile.Open(path);
        try
        {
            Prop.ForAll(Ops.ArrayOf().ToArbitrary(), ops =>
            {
                nvram.Own.Clear();
                nvram.Peer.Clear();
                var models = new Dictionary<int, (ElementDescriptor Descriptor, byte[] Data)>[] { [], [] };
                uint sequence = 0;
                foreach (var op in ops)
                {
                    var region = nvram.Region(op.Region);
                    var model = models[op.Region - 1];
                    switch (op.Kind)
                    {
                        case Kind.Write:
                        case Kind.WriteDescriptorOnly:
                        {
                            // Distinct sequence numbers in scrambled order (odd multiplier: a bijection mod 2^32).
                            var d = new ElementDescriptor((ulong)op.Seed, (byte)op.Element, 32L * op.Seed, op.BlockCount, op.Mask,
                                (uint)(++sequence * 2654435761u), op.Dirty);
                            var sectors = Sample.Sectors(op.BlockCount, op.Seed);
                            if (op.Kind == Kind.Write) region.Write(op.Element, d, sectors);
                            else
                            {
                                sectors.CopyTo(region.Data(op.Element));
                                region.WriteDescriptorOnly(op.Element, d);
                            }
                            model[op.Element] = (d, sectors);
                            break;
                        }
                        case Kind.Invalidate:
                            region.Invalidate(op.Element);
                            model.Remove(op.Element);
                            break;
                        case Kind.SetClean:
                            if (model.TryGetValue(op.Element, out var entry))
                            {
                                region.SetClean(op.Element);
                                model[op.Element] = (entry.Descriptor with { Dirty = false }, entry.Data);
                            }
                            break;
                        case Kind.Clear:
                            region.Clear();
                            model.Clear();
                            break;
                        case Kind.Reopen:
                            nvram.Dispose();
                            nvram = NvramFile.Open(path);
                            break;
                    }
                }
                return Matches(nvram.Own, models[0]) && Matches(nvram.Peer, models[1]);
            }).Check(Config.QuickThrowOnFailure.WithMaxTest(60));
        }
        finally
        {
            nvram.Dispose();
        }
    }

    static bool Matches(NvramRegion region, Dictionary<int, (ElementDescriptor Descriptor, byte[] Data)> model)
    {
        var actual = region.ReplayOrder(out var skipped);
        if (skipped.Count != 0) return false;
        var expected = model.OrderBy(kv => kv.Value.Descriptor.Sequence).Select(kv => (kv.Key, kv.Value.Descriptor)).ToList();
        if (!actual.SequenceEqual(expected)) return false;
        foreach (var (element, d) in actual)
            if (!Sample.ValidSectorsEqual(region.Data(element), model[element].Data, d.ValidMask)) return false;
        return true;
    }
}
