using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Duet.Core;

/// <summary>
/// CRC32C (Castagnoli) over spans, on the CPU's crc32 instruction through
/// <see cref="BitOperations.Crc32C(uint, ulong)"/>. Standard form: initial value and final
/// xor are 0xFFFFFFFF, so <c>Compute("123456789")</c> is 0xE3069283.
/// </summary>
public static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data) => Finish(Append(Start, data));

    public const uint Start = 0xFFFFFFFFu;

    public static uint Finish(uint state) => state ^ 0xFFFFFFFFu;

    /// <summary>Feeds more bytes into a running (unfinished) state.</summary>
    public static uint Append(uint state, ReadOnlySpan<byte> data)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(data);
        // Four independent lanes would be faster, but combining them needs a shift table;
        // one lane over 8-byte words is ~8 bytes per cycle, plenty beside a 4 KiB I/O.
        foreach (var w in words) state = BitOperations.Crc32C(state, BitConverter.IsLittleEndian ? w : BinaryPrimitives.ReverseEndianness(w));
        for (int i = words.Length * 8; i < data.Length; i++) state = BitOperations.Crc32C(state, data[i]);
        return state;
    }

    public static uint AppendUInt64(uint state, ulong value) => BitOperations.Crc32C(state, value);
}
