using Duet.Interconnect.Link;
using FsCheck;
using FsCheck.Fluent;

namespace Duet.Interconnect.Tests;

/// <summary>The SPSC ring arithmetic and the window layout, against a queue model.</summary>
[Trait("Claim", "ICL-1")]
public sealed class LinkRingTests
{
    /// <summary>A ring of some capacity and a script of operations: positive n writes n bytes, negative reads.</summary>
    public sealed record Script(int Capacity, int[] Ops, int Seed);

    static readonly Arbitrary<Script> Scripts =
        (from cap in Gen.Choose(1, 300)
         from ops in Gen.Choose(-320, 320).ArrayOf()
         from seed in Gen.Choose(0, int.MaxValue)
         select new Script(cap, ops, seed)).ToArbitrary();

    [Fact]
    public void A_byte_ring_behaves_like_a_bounded_queue_through_any_wrap_around()
    {
        Prop.ForAll(Scripts, script =>
        {
            var region = new byte[script.Capacity];
            var model = new Queue<byte>();
            var random = new Random(script.Seed);
            long head = 0, tail = 0;
            foreach (int op in script.Ops)
            {
                if (op >= 0)
                {
                    bool fits = RingMath.Fits(head, tail, script.Capacity, op);
                    if (fits != (model.Count + op <= script.Capacity)) return false;
                    if (!fits) continue;
                    var bytes = new byte[op];
                    random.NextBytes(bytes);
                    RingMath.Write(region, head, bytes);
                    head += op;
                    foreach (var b in bytes) model.Enqueue(b);
                }
                else
                {
                    int n = Math.Min(-op, (int)RingMath.Used(head, tail));
                    var got = new byte[n];
                    RingMath.Read(region, tail, got);
                    tail += n;
                    for (int i = 0; i < n; i++)
                        if (got[i] != model.Dequeue()) return false;
                }
                if (RingMath.Used(head, tail) != model.Count) return false;
                if (RingMath.Used(head, tail) > script.Capacity) return false;
            }
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(300));
    }

    [Fact]
    public void Segments_cover_exactly_the_bytes_of_a_wrapped_range()
    {
        Prop.ForAll(Gen.Choose(1, 100).SelectMany(cap => Gen.Choose(0, 1000).SelectMany(pos => Gen.Choose(0, cap).Select(len => (cap, pos, len)))).ToArbitrary(), t =>
        {
            var region = new byte[t.cap];
            for (int i = 0; i < region.Length; i++) region[i] = (byte)i;
            var (a, b) = RingMath.Segments(region, t.pos, t.len);
            var joined = a.ToArray().Concat(b.ToArray()).ToArray();
            var expected = new byte[t.len];
            RingMath.Read(region, t.pos, expected);
            return joined.SequenceEqual(expected) && a.Length + b.Length == t.len;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(300));
    }

    [Fact]
    public void Full_and_empty_use_every_byte()
    {
        Assert.True(RingMath.Fits(0, 0, 8, 8));
        Assert.False(RingMath.Fits(0, 0, 8, 9));
        Assert.False(RingMath.Fits(8, 0, 8, 1));
        Assert.True(RingMath.Fits(8, 1, 8, 1));
        Assert.True(RingMath.Fits(long.MaxValue / 2, long.MaxValue / 2, 8, 8)); // free-running positions
        Assert.Equal(0, RingMath.Used(5, 5));
    }

    [Fact]
    public void The_window_layout_is_aligned_and_the_header_round_trips()
    {
        var options = new IclWindowOptions();
        var layout = WindowLayout.From(options);
        Assert.Equal(64, System.Runtime.CompilerServices.Unsafe.SizeOf<IclEntry>());
        Assert.Equal(4096, layout.Commands.EntriesOffset);
        Assert.Equal(4096 + 256 * 64, layout.Replies.EntriesOffset);
        foreach (var l in new[] { layout.Commands, layout.Replies })
        {
            Assert.Equal(0, l.EntriesOffset % 4096);
            Assert.Equal(0, l.MessageOffset % 4096);
            Assert.Equal(0, l.DataOffset % 4096);
            Assert.Equal(0, l.Control % 64);
        }
        Assert.Equal(options.DataBufferBytes, layout.Commands.DataBytes);
        // The offsets docs/internals/interconnect.md spells out for the defaults.
        Assert.Equal(36864, layout.Commands.MessageOffset);
        Assert.Equal(299008, layout.Commands.DataOffset);
        Assert.Equal(4493312, layout.Replies.MessageOffset);
        Assert.Equal(4558848, layout.Replies.DataOffset);
        Assert.Equal(4820992, layout.TotalBytes);
        Assert.Equal(384, layout.Commands.Control);
        Assert.Equal(768, layout.Replies.Control);
        Assert.Equal(options.ReplyQueueEntries, layout.Replies.Entries);

        using var w = IclWindow.CreateInMemory(layout, "A");
        var read = WindowLayout.ReadHeader(w.Span, out var reason);
        Assert.Equal("", reason);
        Assert.Equal(layout, read);
        Assert.Equal("A", WindowLayout.ReadOwner(w.Span));
        Assert.Equal((byte)'D', w.Span[0]);
        Assert.Equal("DUETICL1", System.Text.Encoding.ASCII.GetString(w.Span[..8]));
        Assert.Equal(1, w.Int(WindowLayout.ReadyOffset));

        w.Span[3] ^= 0xFF;
        Assert.Null(WindowLayout.ReadHeader(w.Span, out reason));
        Assert.Equal("bad magic", reason);
    }

    [Fact]
    public void A_reply_queue_smaller_than_the_command_queue_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => InMemoryIclTransport.CreatePair(
            new IclWindowOptions { QueueEntries = 16, ReplyQueueEntries = 8 }, TimeProvider.System));
    }
}
