using System.Buffers;
using Duet.Interconnect.Wire;

namespace Duet.Interconnect.Tests;

static class TestBytes
{
    public static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));

    public static string ToHex(ReadOnlySpan<byte> bytes) => Convert.ToHexString(bytes).ToLowerInvariant();

    /// <summary>The same bytes as a sequence of segments cut at <paramref name="cuts"/> (offsets, ascending).</summary>
    public static ReadOnlySequence<byte> Split(byte[] bytes, params int[] cuts)
    {
        var segments = new List<ReadOnlyMemory<byte>>();
        int start = 0;
        foreach (var cut in cuts.Where(c => c > 0 && c < bytes.Length).Distinct().Order())
        {
            segments.Add(bytes.AsMemory(start, cut - start));
            start = cut;
        }
        segments.Add(bytes.AsMemory(start));
        return SegmentSequence.Create(segments);
    }

    /// <summary>Every byte its own segment: the worst split a transport can produce.</summary>
    public static ReadOnlySequence<byte> OneBytePerSegment(byte[] bytes) =>
        SegmentSequence.Create(Enumerable.Range(0, bytes.Length).Select(i => (ReadOnlyMemory<byte>)bytes.AsMemory(i, 1)).ToList());
}
