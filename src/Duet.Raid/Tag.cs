using System.Buffers.Binary;
using Duet.Core;

namespace Duet.Raid;

/// <summary>
/// The 8-byte checksum tag of one 4 KiB member block:
///   bytes 0-3  CRC32C over (salt: u64 LE, member block number: u64 LE, the 4096 data bytes)
///   bytes 4-7  marker 0x31544744 ("DGT1" little-endian) — the block has been written
/// All eight bytes zero means "never written": the block reads as zeros whatever the drive
/// holds there (so a reused drive needs only its tag blocks cleared, not its data).
/// The salt mixes the array UUID and the member slot, so a block written to the wrong
/// drive, the wrong place, or left over from another array fails its check.
/// </summary>
public static class Tag
{
    public const int Bytes = 8;
    public const uint Marker = 0x31544744;

    public static ulong Compute(ulong salt, long memberBlock, ReadOnlySpan<byte> block)
    {
        Invariant.Assert(block.Length == Units.BlockBytes);
        uint crc = Crc32C.AppendUInt64(Crc32C.Start, salt);
        crc = Crc32C.AppendUInt64(crc, (ulong)memberBlock);
        crc = Crc32C.Finish(Crc32C.Append(crc, block));
        return crc | ((ulong)Marker << 32);
    }

    /// <summary>True if the block's content agrees with its tag.</summary>
    public static bool Verify(ulong tag, ulong salt, long memberBlock, ReadOnlySpan<byte> block)
    {
        if (tag == 0) return !block.ContainsAnyExcept((byte)0);
        if ((uint)(tag >> 32) != Marker) return false;
        return Compute(salt, memberBlock, block) == tag;
    }

    public static ulong Read(ReadOnlySpan<byte> tagBlock, int index) =>
        BinaryPrimitives.ReadUInt64LittleEndian(tagBlock.Slice(index * Bytes, Bytes));

    public static void Write(Span<byte> tagBlock, int index, ulong tag) =>
        BinaryPrimitives.WriteUInt64LittleEndian(tagBlock.Slice(index * Bytes, Bytes), tag);

    public static ulong Salt(Guid arrayUuid, int slot)
    {
        Span<byte> u = stackalloc byte[16];
        arrayUuid.TryWriteBytes(u);
        return BinaryPrimitives.ReadUInt64LittleEndian(u) ^ BinaryPrimitives.ReadUInt64LittleEndian(u[8..]) ^ ((ulong)(uint)slot * 0x9E3779B97F4A7C15UL);
    }
}
