using Duet.Core;

namespace Duet.Raid;

public enum RaidLevel
{
    Raid0 = 0,
    Raid1 = 1,
    Raid5 = 5,
    Raid6 = 6,
    Raid10 = 10,
}

/// <summary>What a member holds in one stripe.</summary>
public enum MemberRole : byte { Data, P, Q }

/// <summary>
/// The shape of an array and the pure mapping from array blocks to member blocks.
///
/// Every address here is a 4 KiB block. A member's *data blocks* are numbered 0..MemberBlocks-1
/// (the on-drive placement, with superblock and checksum tags, is <see cref="MemberLayout"/>).
/// A stripe is one chunk (ChunkBlocks blocks) on every member; a *row* is one block offset
/// within the chunk, the same on every member — parity is computed row by row.
///
/// Parity placement (stripe s, n members):
///   RAID 5, left-symmetric (md's default): P on member n-1-(s mod n), data i on (P+1+i) mod n.
///   RAID 6, left-symmetric (md's):         P as RAID 5, Q on (P+1) mod n, data i on (P+2+i) mod n.
///   RAID 0: data i on member i.   RAID 1: every member holds the single data chunk.
///   RAID 10: n/2 mirrored pairs (2i, 2i+1); data i on pair i.
///
///   RAID 5, 4 members:   stripe 0: D0 D1 D2 P
///                        stripe 1: D1 D2 P  D0
///                        stripe 2: D2 P  D0 D1
///                        stripe 3: P  D0 D1 D2
/// </summary>
public sealed class ArrayGeometry
{
    public const int MaxMembers = 32;

    public ArrayGeometry(RaidLevel level, int memberCount, int chunkBlocks, long memberBlocks)
    {
        if (!Enum.IsDefined(level)) throw new ArgumentException($"unknown RAID level {(int)level}");
        if (chunkBlocks < 1 || chunkBlocks > 256 || (chunkBlocks & (chunkBlocks - 1)) != 0)
            throw new ArgumentException($"chunk of {chunkBlocks} blocks is not a power of two from 4 KiB to 1 MiB");
        int min = MinimumMembers(level);
        if (memberCount < min) throw new ArgumentException($"RAID {(int)level} needs at least {min} drives, got {memberCount}");
        if (memberCount > MaxMembers) throw new ArgumentException($"at most {MaxMembers} drives per array, got {memberCount}");
        if (level == RaidLevel.Raid10 && memberCount % 2 != 0) throw new ArgumentException($"RAID 10 needs an even number of drives, got {memberCount}");
        Level = level;
        MemberCount = memberCount;
        ChunkBlocks = chunkBlocks;
        Stripes = memberBlocks / chunkBlocks;
        if (Stripes < 1) throw new ArgumentException("the drives are too small for one stripe");
        MemberBlocks = Stripes * chunkBlocks;
        DataMembers = level switch
        {
            RaidLevel.Raid0 => memberCount,
            RaidLevel.Raid1 => 1,
            RaidLevel.Raid5 => memberCount - 1,
            RaidLevel.Raid6 => memberCount - 2,
            RaidLevel.Raid10 => memberCount / 2,
            _ => throw new InvalidOperationException(),
        };
        ParityMembers = level switch { RaidLevel.Raid5 => 1, RaidLevel.Raid6 => 2, _ => 0 };
        StripeDataBlocks = (long)DataMembers * chunkBlocks;
        CapacityBlocks = Stripes * StripeDataBlocks;
    }

    public RaidLevel Level { get; }
    public int MemberCount { get; }
    public int ChunkBlocks { get; }
    /// <summary>Data blocks used on each member (a whole number of chunks).</summary>
    public long MemberBlocks { get; }
    public long Stripes { get; }
    /// <summary>Data chunks per stripe (k).</summary>
    public int DataMembers { get; }
    /// <summary>Parity chunks per stripe (m): 1 for RAID 5, 2 for RAID 6, else 0.</summary>
    public int ParityMembers { get; }
    public long StripeDataBlocks { get; }
    public long CapacityBlocks { get; }

    public bool IsMirrored => Level is RaidLevel.Raid1 or RaidLevel.Raid10;

    /// <summary>How many members may be lost with the array still readable.</summary>
    public int Redundancy => Level switch
    {
        RaidLevel.Raid0 => 0,
        RaidLevel.Raid1 => MemberCount - 1,
        RaidLevel.Raid5 => 1,
        RaidLevel.Raid6 => 2,
        RaidLevel.Raid10 => 1, // at least one per pair; see IsSurvivable for the exact rule
        _ => 0,
    };

    public static int MinimumMembers(RaidLevel level) => level switch
    {
        RaidLevel.Raid0 => 1,
        RaidLevel.Raid1 => 2,
        RaidLevel.Raid5 => 3,
        RaidLevel.Raid6 => 4,
        RaidLevel.Raid10 => 4,
        _ => int.MaxValue,
    };

    /// <summary>Member holding P in stripe s (RAID 5/6), else -1.</summary>
    public int PMember(long stripe) => ParityMembers == 0 ? -1 : MemberCount - 1 - (int)(stripe % MemberCount);

    /// <summary>Member holding Q in stripe s (RAID 6), else -1.</summary>
    public int QMember(long stripe) => ParityMembers < 2 ? -1 : (PMember(stripe) + 1) % MemberCount;

    /// <summary>Member holding data chunk i of stripe s (for mirrors: the first copy).</summary>
    public int DataMember(long stripe, int dataIndex)
    {
        Invariant.Assert(dataIndex >= 0 && dataIndex < DataMembers);
        return Level switch
        {
            RaidLevel.Raid0 => dataIndex,
            RaidLevel.Raid1 => 0,
            RaidLevel.Raid5 => (PMember(stripe) + 1 + dataIndex) % MemberCount,
            RaidLevel.Raid6 => (PMember(stripe) + 2 + dataIndex) % MemberCount,
            RaidLevel.Raid10 => 2 * dataIndex,
            _ => throw new InvalidOperationException(),
        };
    }

    /// <summary>The members holding copies of data chunk i (mirrored levels).</summary>
    public IEnumerable<int> Copies(int dataIndex)
    {
        if (Level == RaidLevel.Raid1)
        {
            for (int m = 0; m < MemberCount; m++) yield return m;
        }
        else if (Level == RaidLevel.Raid10)
        {
            yield return 2 * dataIndex;
            yield return 2 * dataIndex + 1;
        }
        else
        {
            throw new InvalidOperationException("not a mirrored level");
        }
    }

    /// <summary>Role of member m in stripe s, and its data index if it holds data.</summary>
    public (MemberRole Role, int DataIndex) RoleOf(long stripe, int member)
    {
        switch (Level)
        {
            case RaidLevel.Raid0: return (MemberRole.Data, member);
            case RaidLevel.Raid1: return (MemberRole.Data, 0);
            case RaidLevel.Raid10: return (MemberRole.Data, member / 2);
        }
        int p = PMember(stripe);
        if (member == p) return (MemberRole.P, -1);
        if (Level == RaidLevel.Raid6)
        {
            int q = (p + 1) % MemberCount;
            if (member == q) return (MemberRole.Q, -1);
            return (MemberRole.Data, ((member - p - 2) % MemberCount + MemberCount) % MemberCount);
        }
        return (MemberRole.Data, ((member - p - 1) % MemberCount + MemberCount) % MemberCount);
    }

    /// <summary>Where array block b lives: stripe, data index, row within the chunk, and the member's data block.</summary>
    public (long Stripe, int DataIndex, int Row, long MemberBlock) Map(long arrayBlock)
    {
        Invariant.Assert(arrayBlock >= 0 && arrayBlock < CapacityBlocks);
        long stripe = arrayBlock / StripeDataBlocks;
        long within = arrayBlock % StripeDataBlocks;
        int dataIndex = (int)(within / ChunkBlocks);
        int row = (int)(within % ChunkBlocks);
        return (stripe, dataIndex, row, stripe * ChunkBlocks + row);
    }

    /// <summary>Whether the array can still serve every block with this set of unusable members.</summary>
    public bool IsSurvivable(IReadOnlyCollection<int> lost)
    {
        if (lost.Count == 0) return true;
        switch (Level)
        {
            case RaidLevel.Raid0: return false;
            case RaidLevel.Raid1: return lost.Count < MemberCount;
            case RaidLevel.Raid10:
                for (int pair = 0; pair < MemberCount / 2; pair++)
                    if (lost.Contains(2 * pair) && lost.Contains(2 * pair + 1)) return false;
                return true;
            default: return lost.Count <= ParityMembers;
        }
    }
}

/// <summary>
/// Placement of a member's data blocks on its drive (all in 4 KiB blocks):
///
///   0 .. 255            metadata area: superblock copies at 0 and 1, bad-block list copies at 2 and 3
///                       (<see cref="BadBlockList"/>), the rest reserved
///   256 + g*513         tag block of group g: 512 eight-byte checksum tags
///   256 + g*513 + 1 + j data block g*512 + j  (j = 0..511)
///
/// Tags sit beside the 512 blocks they describe, so a tag read is usually near its data,
/// and one tag block is cached for 2 MiB of data. See docs/internals/on-disk-format.md.
/// </summary>
public static class MemberLayout
{
    public const int MetadataBlocks = 256;
    public const int SuperblockLba = 0;
    public const int SuperblockCopyLba = 1;
    public const int BadBlockListLba = 2;
    public const int BadBlockListCopyLba = 3;
    public const int TagsPerGroup = Units.BlockBytes / Tag.Bytes; // 512
    public const int GroupBlocks = TagsPerGroup + 1;

    public static long DataBlocksFor(long driveBlocks) =>
        driveBlocks <= MetadataBlocks ? 0 : (driveBlocks - MetadataBlocks) / GroupBlocks * TagsPerGroup;

    public static long DataLba(long memberBlock) =>
        MetadataBlocks + memberBlock / TagsPerGroup * GroupBlocks + 1 + memberBlock % TagsPerGroup;

    public static long TagLba(long group) => MetadataBlocks + group * GroupBlocks;

    public static long GroupOf(long memberBlock) => memberBlock / TagsPerGroup;
}
