using System.Buffers.Binary;
using System.Text;
using Duet.Core;

namespace Duet.Cache.Nvram;

/// <summary>
/// The header's fields. The 4 KiB header block holds two copies of a 512-byte record, at
/// offsets 0 and 512 (different sectors), written one after the other with a sync between, so
/// a power cut while the header changes leaves at least one copy whole. Open takes the valid
/// copy with the higher <see cref="UpdateCount"/> and repairs the other. Record layout
/// (little-endian):
/// <code>
///  0-7     magic "DUETNVRM"
///  8-11    format version (3: the write logs of AW-4, then the tables of finished host commands, follow region 2)
///  12-15   header bytes (4096)
///  16-23   total bytes
///  24-27   element bytes (16384)
///  28-31   element count per region
///  32-35   descriptor bytes (64)
///  36-39   zero
///  40-47   descriptor table 1 offset
///  48-55   descriptor table 2 offset
///  56-63   region 1 offset
///  64-71   region 2 offset
///  72-87   pair id (Guid, .NET little-endian byte order)
///  88-95   ownership epoch
///  96-103  generation (+1 every open)
///  104-111 update count (+1 every header write; picks the newer copy)
///  112     owner name length (1..15)
///  113-127 owner name, ASCII, zero padded
///  128-507 zero
///  508-511 CRC32C over bytes 0..507
/// </code>
/// </summary>
internal sealed record NvramHeader(
    long TotalBytes,
    int ElementBytes,
    int ElementCount,
    int DescriptorBytes,
    long DescriptorTable1Offset,
    long DescriptorTable2Offset,
    long Region1Offset,
    long Region2Offset,
    Guid PairId,
    ulong Epoch,
    ulong Generation,
    ulong UpdateCount,
    string Owner)
{
    public const int CopyBytes = 512;
    public const int CopyAOffset = 0;
    public const int CopyBOffset = 512;
    public const uint FormatVersion = 4;
    public const int MaxOwnerBytes = 15;
    const int CrcOffset = CopyBytes - sizeof(uint);
    public static ReadOnlySpan<byte> Magic => "DUETNVRM"u8;

    static NvramHeader()
    {
        Invariant.Assert(CopyBOffset + CopyBytes <= NvramLayout.HeaderBytes);
        Invariant.Assert(CopyBOffset % NvramLayout.SectorBytes == 0);
        Invariant.Assert(CopyBOffset - CopyAOffset >= CopyBytes);
    }

    public static NvramHeader From(NvramLayout layout, string owner, Guid pairId, ulong epoch, ulong generation, ulong updateCount) => new(
        layout.TotalBytes, layout.ElementBytes, layout.ElementCount, NvramLayout.DescriptorBytes,
        layout.DescriptorTable1Offset, layout.DescriptorTable2Offset, layout.Region1Offset, layout.Region2Offset,
        pairId, epoch, generation, updateCount, owner);

    public static string? OwnerProblem(string owner)
    {
        if (owner.Length == 0) return "owner name is empty";
        if (owner.Length > MaxOwnerBytes) return $"owner name '{owner}' is longer than {MaxOwnerBytes} characters";
        foreach (var c in owner)
            if (c is < '!' or > '~') return $"owner name '{owner}' must be printable ASCII without spaces";
        return null;
    }

    public void Encode(Span<byte> copy)
    {
        Invariant.Assert(copy.Length == CopyBytes);
        Invariant.Assert(OwnerProblem(Owner) is null);
        copy.Clear();
        Magic.CopyTo(copy);
        BinaryPrimitives.WriteUInt32LittleEndian(copy[8..], FormatVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(copy[12..], NvramLayout.HeaderBytes);
        BinaryPrimitives.WriteInt64LittleEndian(copy[16..], TotalBytes);
        BinaryPrimitives.WriteInt32LittleEndian(copy[24..], ElementBytes);
        BinaryPrimitives.WriteInt32LittleEndian(copy[28..], ElementCount);
        BinaryPrimitives.WriteInt32LittleEndian(copy[32..], DescriptorBytes);
        BinaryPrimitives.WriteInt64LittleEndian(copy[40..], DescriptorTable1Offset);
        BinaryPrimitives.WriteInt64LittleEndian(copy[48..], DescriptorTable2Offset);
        BinaryPrimitives.WriteInt64LittleEndian(copy[56..], Region1Offset);
        BinaryPrimitives.WriteInt64LittleEndian(copy[64..], Region2Offset);
        Invariant.Assert(PairId.TryWriteBytes(copy.Slice(72, 16)));
        BinaryPrimitives.WriteUInt64LittleEndian(copy[88..], Epoch);
        BinaryPrimitives.WriteUInt64LittleEndian(copy[96..], Generation);
        BinaryPrimitives.WriteUInt64LittleEndian(copy[104..], UpdateCount);
        copy[112] = (byte)Owner.Length;
        Encoding.ASCII.GetBytes(Owner, copy[113..]);
        BinaryPrimitives.WriteUInt32LittleEndian(copy[CrcOffset..], Crc32C.Compute(copy[..CrcOffset]));
    }

    /// <summary>Decodes one copy; on failure <paramref name="problem"/> says why.</summary>
    public static NvramHeader? TryDecode(ReadOnlySpan<byte> copy, out string? problem)
    {
        Invariant.Assert(copy.Length == CopyBytes);
        if (!copy[..8].SequenceEqual(Magic))
        {
            problem = $"no magic (found '{Printable(copy[..8])}', expected 'DUETNVRM'): not a Duet NVRAM file";
            return null;
        }
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(copy[CrcOffset..]);
        uint computed = Crc32C.Compute(copy[..CrcOffset]);
        if (stored != computed)
        {
            problem = $"header damaged: CRC32C mismatch (stored 0x{stored:x8}, computed 0x{computed:x8})";
            return null;
        }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(copy[8..]);
        if (version != FormatVersion)
        {
            problem = $"format version {version}; this build reads version {FormatVersion}";
            return null;
        }
        uint headerBytes = BinaryPrimitives.ReadUInt32LittleEndian(copy[12..]);
        if (headerBytes != NvramLayout.HeaderBytes)
        {
            problem = $"header size {headerBytes}, expected {NvramLayout.HeaderBytes}";
            return null;
        }
        int ownerLength = copy[112];
        if (ownerLength is 0 or > MaxOwnerBytes)
        {
            problem = $"owner name length {ownerLength} is outside 1..{MaxOwnerBytes}";
            return null;
        }
        var owner = Encoding.ASCII.GetString(copy.Slice(113, ownerLength));
        if (OwnerProblem(owner) is { } ownerProblem)
        {
            problem = ownerProblem;
            return null;
        }
        problem = null;
        return new NvramHeader(
            TotalBytes: BinaryPrimitives.ReadInt64LittleEndian(copy[16..]),
            ElementBytes: BinaryPrimitives.ReadInt32LittleEndian(copy[24..]),
            ElementCount: BinaryPrimitives.ReadInt32LittleEndian(copy[28..]),
            DescriptorBytes: BinaryPrimitives.ReadInt32LittleEndian(copy[32..]),
            DescriptorTable1Offset: BinaryPrimitives.ReadInt64LittleEndian(copy[40..]),
            DescriptorTable2Offset: BinaryPrimitives.ReadInt64LittleEndian(copy[48..]),
            Region1Offset: BinaryPrimitives.ReadInt64LittleEndian(copy[56..]),
            Region2Offset: BinaryPrimitives.ReadInt64LittleEndian(copy[64..]),
            PairId: new Guid(copy.Slice(72, 16)),
            Epoch: BinaryPrimitives.ReadUInt64LittleEndian(copy[88..]),
            Generation: BinaryPrimitives.ReadUInt64LittleEndian(copy[96..]),
            UpdateCount: BinaryPrimitives.ReadUInt64LittleEndian(copy[104..]),
            Owner: owner);
    }

    /// <summary>The layout this header describes, or a reason it describes none this build accepts.</summary>
    public NvramLayout? Layout(out string? problem)
    {
        if (ElementBytes != NvramLayout.ElementBytesFixed)
        {
            problem = $"element size {ElementBytes} bytes; this build uses {NvramLayout.ElementBytesFixed}";
            return null;
        }
        if (DescriptorBytes != NvramLayout.DescriptorBytes)
        {
            problem = $"descriptor size {DescriptorBytes} bytes; this build uses {NvramLayout.DescriptorBytes}";
            return null;
        }
        if (NvramLayout.Problem(TotalBytes, ElementCount) is { } layoutProblem)
        {
            problem = $"header describes an impossible layout: {layoutProblem}";
            return null;
        }
        var layout = NvramLayout.Of(TotalBytes, ElementCount);
        if (layout.DescriptorTable1Offset != DescriptorTable1Offset || layout.DescriptorTable2Offset != DescriptorTable2Offset ||
            layout.Region1Offset != Region1Offset || layout.Region2Offset != Region2Offset)
        {
            problem = $"header offsets (tables 0x{DescriptorTable1Offset:x}, 0x{DescriptorTable2Offset:x}; regions 0x{Region1Offset:x}, 0x{Region2Offset:x}) " +
                      $"differ from this build's layout for {TotalBytes} bytes and {ElementCount} elements";
            return null;
        }
        problem = null;
        return layout;
    }

    static string Printable(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder(bytes.Length);
        foreach (var b in bytes) sb.Append(b is >= 0x20 and < 0x7f ? (char)b : '.');
        return sb.ToString();
    }
}
