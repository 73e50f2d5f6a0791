using System.Buffers.Binary;
using System.Text;
using Duet.Core;

namespace Duet.Raid;

public enum SlotState : uint
{
    /// <summary>No drive in the slot (never used, or removed).</summary>
    Empty = 0,
    Active = 1,
    /// <summary>The drive failed or went missing; the array runs without it.</summary>
    Failed = 2,
    /// <summary>A drive is being rebuilt into the slot.</summary>
    Rebuilding = 3,
}

public readonly record struct SlotEntry(Guid Drive, SlotState State);

/// <param name="Name">Unique among the volumes of both controllers.</param>
public sealed record VolumeEntry(string Name, Guid Uuid, long OffsetBlocks, long SizeBlocks)
{
    /// <summary>The volume's iSCSI LUN (0..<see cref="Superblock.MaxLun"/>), fixed when the volume is created and
    /// kept until it is deleted; null in a superblock written before LUNs were stored (the array manager assigns
    /// one at load, <see cref="Management.LunTable"/>, and the next superblock write stores it).</summary>
    public int? Lun { get; init; }
}

/// <summary>
/// The superblock: block 0 (and a copy in block 1) of every member and spare, 4096 bytes,
/// little-endian. Everything needed to reassemble the array from its drives alone.
///
///   0     8  magic "DUETRAID"
///   8     4  format version (1)
///   12    4  CRC32C of the 4096 bytes with this field zero
///   16   16  array UUID
///   32   16  this drive's UUID
///   48    8  generation: +1 on every change of array state; the highest wins at assembly
///   56    4  RAID level (0, 1, 5, 6, 10)
///   60    4  member count (slots)
///   64    4  chunk size in 4 KiB blocks
///   68    4  this drive's slot, or 0xFFFFFFFF for a spare
///   72    8  data blocks used per member
///   80    4  flags: bit 0 = clean (shut down cleanly)
///   84    4  rebuild rate limit, MiB/s (0 = unlimited)
///   88   32  array name, UTF-8, zero padded
///   120   1  owning controller: 'A' (0x41) or 'B' (0x42); 0 in a single-controller array (served by A)
///   121   1  array number (MR-5): the 8-bit number both controllers name this array by on the link
///   122   1  preferred owner (failback): 'A', 'B', or '-' (0x2D) for none; 0 in a superblock written before
///            preferences were kept (those bytes were reserved and zero): read as the owner byte 120 names
///   123   5  reserved (zero)
///   128 1024 slot table: 32 × { drive UUID (16), state (4), reserved (12) }
///   1152 128 spares: 8 × drive UUID (16); all-zero = unused
///   1280 2048 volumes: 32 × { name (32, UTF-8, zero padded), UUID (16), offset blocks (8), size blocks (8) }
///   3328  32 LUNs: one byte per volume slot (byte 3328 + i for the volume in slot i): the volume's iSCSI LUN + 1,
///            so 1..255 = LUN 0..254; 0 = no LUN stored (a superblock written before LUNs were kept: these bytes
///            were reserved and zero). The byte of an empty slot is 0.
///   3360 736 reserved (zero)
///
/// The LUN bytes use what version 1 left reserved and zero, so the format version stays 1: a reader that
/// does not know them (an older Duet) reads the superblock correctly and ignores them — but also rewrites
/// them as zero, after which the next reader assigns LUNs again as for any superblock without them.
/// </summary>
public sealed record Superblock
{
    public const int Version = 1;
    public const int MaxSpares = 8;
    public const int MaxVolumes = 32;
    public const int MaxNameBytes = 32;
    /// <summary>The highest LUN a volume can have: the LUN byte holds LUN + 1, and 0 means none.</summary>
    public const int MaxLun = 254;
    const int LunTableOffset = 3328;

    static Superblock()
    {
        // The LUN bytes sit right after the volume table, one per volume slot, inside the block.
        Invariant.Assert(1280 + MaxVolumes * 64 == LunTableOffset);
        Invariant.Assert(LunTableOffset + MaxVolumes <= Units.BlockBytes);
        Invariant.Assert(MaxLun + 1 <= byte.MaxValue);
    }
    public const uint SpareSlot = 0xFFFFFFFF;
    static ReadOnlySpan<byte> Magic => "DUETRAID"u8;

    public required Guid ArrayUuid { get; init; }
    public required Guid DriveUuid { get; init; }
    public required long Generation { get; init; }
    public required RaidLevel Level { get; init; }
    public required int MemberCount { get; init; }
    public required int ChunkBlocks { get; init; }
    /// <summary>Slot of this drive, or -1 for a spare.</summary>
    public required int Slot { get; init; }
    public required long MemberBlocks { get; init; }
    public bool Clean { get; init; }
    /// <summary>AW-3: a controller took this array over from a peer that had written to it while its write log's copy
    /// was incomplete, so any stripe may be torn and every one is owed a settle. Written with the new owner, in the
    /// same superblock update, and cleared once the whole array is settled: a stop in between leaves it for the next
    /// controller to serve the array. (Held only in memory, a takeover cut by a crash after the superblocks named the
    /// new owner forgot it: simulator seed 9758 of `--faults all --ops 1000` found a RAID 1 row torn for good.)</summary>
    public bool SettleOwed { get; init; }
    public int RebuildMiBps { get; init; }
    /// <summary>The controller that serves this array (MR-1: ownership is per array): "A" or "B".</summary>
    public string Owner { get; init; } = "A";
    /// <summary>The controller the array belongs on when both run (failback, issue 5): "A", "B", or null for none.
    /// The owner moves the array there once the pair is healthy again, with failback "auto"; a superblock
    /// written before preferences were kept reads as its owner.</summary>
    public string? PreferredOwner { get; init; }
    /// <summary>MR-5's 8-bit number of the array, the same on both controllers; chosen at creation.</summary>
    public byte Number { get; init; }
    public required string Name { get; init; }
    public required IReadOnlyList<SlotEntry> Slots { get; init; }
    public IReadOnlyList<Guid> Spares { get; init; } = [];
    public IReadOnlyList<VolumeEntry> Volumes { get; init; } = [];

    public void Encode(Span<byte> block)
    {
        Invariant.Assert(block.Length == Units.BlockBytes);
        Invariant.Assert(Slots.Count == MemberCount && MemberCount <= ArrayGeometry.MaxMembers);
        Invariant.Assert(Spares.Count <= MaxSpares && Volumes.Count <= MaxVolumes);
        block.Clear();
        Magic.CopyTo(block);
        BinaryPrimitives.WriteInt32LittleEndian(block[8..], Version);
        ArrayUuid.TryWriteBytes(block[16..32]);
        DriveUuid.TryWriteBytes(block[32..48]);
        BinaryPrimitives.WriteInt64LittleEndian(block[48..], Generation);
        BinaryPrimitives.WriteInt32LittleEndian(block[56..], (int)Level);
        BinaryPrimitives.WriteInt32LittleEndian(block[60..], MemberCount);
        BinaryPrimitives.WriteInt32LittleEndian(block[64..], ChunkBlocks);
        BinaryPrimitives.WriteUInt32LittleEndian(block[68..], Slot < 0 ? SpareSlot : (uint)Slot);
        BinaryPrimitives.WriteInt64LittleEndian(block[72..], MemberBlocks);
        BinaryPrimitives.WriteUInt32LittleEndian(block[80..], (Clean ? 1u : 0u) | (SettleOwed ? 2u : 0u));
        BinaryPrimitives.WriteInt32LittleEndian(block[84..], RebuildMiBps);
        WriteName(block.Slice(88, MaxNameBytes), Name);
        Invariant.Assert(Owner is "A" or "B");
        block[120] = (byte)Owner[0];
        block[121] = Number;
        Invariant.Assert(PreferredOwner is null or "A" or "B");
        block[122] = PreferredOwner is null ? (byte)'-' : (byte)PreferredOwner[0];
        for (int i = 0; i < Slots.Count; i++)
        {
            var e = block.Slice(128 + i * 32, 32);
            Slots[i].Drive.TryWriteBytes(e[..16]);
            BinaryPrimitives.WriteUInt32LittleEndian(e[16..], (uint)Slots[i].State);
        }
        for (int i = 0; i < Spares.Count; i++) Spares[i].TryWriteBytes(block.Slice(1152 + i * 16, 16));
        for (int i = 0; i < Volumes.Count; i++)
        {
            var e = block.Slice(1280 + i * 64, 64);
            var v = Volumes[i];
            WriteName(e[..32], v.Name);
            v.Uuid.TryWriteBytes(e[32..48]);
            BinaryPrimitives.WriteInt64LittleEndian(e[48..], v.OffsetBlocks);
            BinaryPrimitives.WriteInt64LittleEndian(e[56..], v.SizeBlocks);
            Invariant.Assert(v.Lun is null or (>= 0 and <= MaxLun));
            block[LunTableOffset + i] = v.Lun is { } lun ? (byte)(lun + 1) : (byte)0;
        }
        BinaryPrimitives.WriteUInt32LittleEndian(block[12..], Crc32C.Compute(block));
    }

    /// <summary>Null if the block holds no Duet superblock (blank drive); an error message if it holds a damaged one.</summary>
    public static Superblock? TryDecode(ReadOnlySpan<byte> block, out string? error)
    {
        error = null;
        if (!block[..8].SequenceEqual(Magic)) return null;
        Span<byte> copy = stackalloc byte[Units.BlockBytes];
        block.CopyTo(copy);
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(copy[12..]);
        copy[12..16].Clear();
        if (Crc32C.Compute(copy) != stored) { error = "superblock checksum mismatch"; return null; }
        int version = BinaryPrimitives.ReadInt32LittleEndian(block[8..]);
        if (version != Version) { error = $"superblock format version {version} is not supported (expected {Version})"; return null; }
        int members = BinaryPrimitives.ReadInt32LittleEndian(block[60..]);
        if (members < 1 || members > ArrayGeometry.MaxMembers) { error = $"superblock member count {members} is out of range"; return null; }
        var level = (RaidLevel)BinaryPrimitives.ReadInt32LittleEndian(block[56..]);
        if (!Enum.IsDefined(level)) { error = $"superblock RAID level {(int)level} is unknown"; return null; }
        var slots = new SlotEntry[members];
        for (int i = 0; i < members; i++)
        {
            var e = block.Slice(128 + i * 32, 32);
            slots[i] = new SlotEntry(new Guid(e[..16]), (SlotState)BinaryPrimitives.ReadUInt32LittleEndian(e[16..]));
        }
        var spares = new List<Guid>();
        for (int i = 0; i < MaxSpares; i++)
        {
            var g = new Guid(block.Slice(1152 + i * 16, 16));
            if (g != Guid.Empty) spares.Add(g);
        }
        var volumes = new List<VolumeEntry>();
        for (int i = 0; i < MaxVolumes; i++)
        {
            var e = block.Slice(1280 + i * 64, 64);
            var name = ReadName(e[..32]);
            if (name.Length == 0) continue;
            byte lun = block[LunTableOffset + i];
            volumes.Add(new VolumeEntry(name, new Guid(e[32..48]), BinaryPrimitives.ReadInt64LittleEndian(e[48..]), BinaryPrimitives.ReadInt64LittleEndian(e[56..]))
            {
                Lun = lun == 0 ? null : lun - 1,
            });
        }
        uint slot = BinaryPrimitives.ReadUInt32LittleEndian(block[68..]);
        string owner = block[120] switch { 0 or (byte)'A' => "A", (byte)'B' => "B", var b => "" + (char)b };
        if (owner is not ("A" or "B")) { error = $"superblock names an unknown owning controller 0x{block[120]:x2}"; return null; }
        string? preferred;
        switch (block[122])
        {
            case 0: preferred = owner; break;
            case (byte)'-': preferred = null; break;
            case (byte)'A': preferred = "A"; break;
            case (byte)'B': preferred = "B"; break;
            default: error = $"superblock names an unknown preferred controller 0x{block[122]:x2}"; return null;
        }
        return new Superblock
        {
            ArrayUuid = new Guid(block[16..32]),
            DriveUuid = new Guid(block[32..48]),
            Generation = BinaryPrimitives.ReadInt64LittleEndian(block[48..]),
            Level = level,
            MemberCount = members,
            ChunkBlocks = BinaryPrimitives.ReadInt32LittleEndian(block[64..]),
            Slot = slot == SpareSlot ? -1 : (int)slot,
            MemberBlocks = BinaryPrimitives.ReadInt64LittleEndian(block[72..]),
            Clean = (BinaryPrimitives.ReadUInt32LittleEndian(block[80..]) & 1) != 0,
            SettleOwed = (BinaryPrimitives.ReadUInt32LittleEndian(block[80..]) & 2) != 0,
            RebuildMiBps = BinaryPrimitives.ReadInt32LittleEndian(block[84..]),
            Name = ReadName(block.Slice(88, MaxNameBytes)),
            Owner = owner,
            PreferredOwner = preferred,
            Number = block[121],
            Slots = slots,
            Spares = spares,
            Volumes = volumes,
        };
    }

    public static bool IsValidName(string name) =>
        name.Length > 0 && Encoding.UTF8.GetByteCount(name) <= MaxNameBytes &&
        name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.') && name[0] != '.';

    static void WriteName(Span<byte> field, string name)
    {
        Invariant.Assert(Encoding.UTF8.GetByteCount(name) <= field.Length);
        Encoding.UTF8.GetBytes(name, field);
    }

    static string ReadName(ReadOnlySpan<byte> field)
    {
        int end = field.IndexOf((byte)0);
        return Encoding.UTF8.GetString(end < 0 ? field : field[..end]);
    }
}
