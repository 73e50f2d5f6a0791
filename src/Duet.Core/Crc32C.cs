using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Duet.Core;

/// <summary>
/// CRC32C (Castagnoli) over spans, on the CPU's crc32 instruction through
/// <see cref="BitOperations.Crc32C(uint, ulong)"/>. Standard form: initial value and final
/// xor are 0xFFFFFFFF, so <c>Compute("123456789")</c> is 0xE3069283.
///
/// The instruction has a latency of about three cycles and a throughput of one a cycle, so one
/// chain of dependent updates runs at a third of what the CPU can do. Spans of at least
/// <see cref="BlockBytes"/> are taken a block at a time as three lanes of <see cref="LaneBytes"/>
/// updated side by side, then joined: the register update is linear, so
/// crc(s, A‖B‖C) = shift(shift(crc(s, A)) ⊕ crc(0, B)) ⊕ crc(0, C), where shift advances a
/// register over <see cref="LaneBytes"/> zero bytes (four table lookups). Same result, about
/// 2.5x faster on a 4 KiB block or a 16 KiB cache element.
/// </summary>
public static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data) => Finish(Append(Start, data));

    public const uint Start = 0xFFFFFFFFu;

    const int LaneBytes = 256;
    const int BlockBytes = 3 * LaneBytes;

    /// <summary>The register advanced over <see cref="LaneBytes"/> zero bytes, as four byte-indexed tables.</summary>
    static readonly uint[] ShiftTable = BuildShiftTable();

    static uint[] BuildShiftTable()
    {
        var t = new uint[4 * 256];
        for (int k = 0; k < 4; k++)
            for (int b = 0; b < 256; b++)
            {
                uint x = (uint)b << (8 * k);
                for (int i = 0; i < LaneBytes / 8; i++) x = BitOperations.Crc32C(x, 0UL);
                t[k * 256 + b] = x;
            }
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static uint Shift(uint[] t, uint crc) =>
        t[(int)(crc & 0xFF)] ^ t[256 + (int)((crc >> 8) & 0xFF)] ^ t[512 + (int)((crc >> 16) & 0xFF)] ^ t[768 + (int)(crc >> 24)];

    public static uint Finish(uint state) => state ^ 0xFFFFFFFFu;

    /// <summary>Feeds more bytes into a running (unfinished) state.</summary>
    public static uint Append(uint state, ReadOnlySpan<byte> data)
    {
        if (BitConverter.IsLittleEndian && data.Length >= BlockBytes)
        {
            var t = ShiftTable;
            ref byte p = ref MemoryMarshal.GetReference(data);
            int blocks = data.Length / BlockBytes;
            for (int b = 0; b < blocks; b++)
            {
                ref byte block = ref Unsafe.Add(ref p, b * BlockBytes);
                uint s0 = state, s1 = 0, s2 = 0;
                for (int i = 0; i < LaneBytes; i += 8)
                {
                    s0 = BitOperations.Crc32C(s0, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref block, i)));
                    s1 = BitOperations.Crc32C(s1, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref block, LaneBytes + i)));
                    s2 = BitOperations.Crc32C(s2, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref block, 2 * LaneBytes + i)));
                }
                state = Shift(t, Shift(t, s0) ^ s1) ^ s2;
            }
            data = data[(blocks * BlockBytes)..];
        }
        return AppendOneLane(state, data);
    }

    /// <summary>The plain form: one chain of updates over 8-byte words, then the odd bytes.</summary>
    internal static uint AppendOneLane(uint state, ReadOnlySpan<byte> data)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(data);
        foreach (var w in words) state = BitOperations.Crc32C(state, BitConverter.IsLittleEndian ? w : BinaryPrimitives.ReverseEndianness(w));
        for (int i = words.Length * 8; i < data.Length; i++) state = BitOperations.Crc32C(state, data[i]);
        return state;
    }

    public static uint AppendUInt64(uint state, ulong value) => BitOperations.Crc32C(state, value);
}
