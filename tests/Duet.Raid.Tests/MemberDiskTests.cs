using Duet.Core;
using Duet.Drives;

namespace Duet.Raid.Tests;

/// <summary>A member's data blocks and their checksum tags reach the drive together: one gathered write per tag group.</summary>
public class MemberDiskTests
{
    /// <summary>A memory drive that records what it is asked to write, and how.</summary>
    sealed class RecordingDrive(long blocks) : IBlockDevice
    {
        readonly MemoryDrive _inner = new("rec", blocks);
        public readonly List<long> PlainWrites = [];
        public readonly List<WriteExtent[]> Gathers = [];

        public string Name => _inner.Name;
        public long BlockCount => _inner.BlockCount;
        public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken ct = default) => _inner.ReadAsync(lba, destination, ct);
        public ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken ct = default)
        {
            lock (PlainWrites) PlainWrites.Add(lba);
            return _inner.WriteAsync(lba, source, fua, ct);
        }
        public ValueTask WriteGatherAsync(ReadOnlyMemory<WriteExtent> extents, CancellationToken ct = default)
        {
            lock (Gathers) Gathers.Add(extents.ToArray());
            return BlockDeviceChecks.WriteEachAsync(_inner, extents, ct);
        }
        public ValueTask FlushAsync(CancellationToken ct = default) => _inner.FlushAsync(ct);
        public ValueTask DisposeAsync() => _inner.DisposeAsync();
    }

    [Fact]
    [Trait("Claim", "AW-5")]
    public async Task A_write_sends_each_tag_groups_data_and_tag_block_as_one_gathered_write()
    {
        var drive = new RecordingDrive(2 * MemberLayout.GroupBlocks + MemberLayout.MetadataBlocks + 8);
        long memberBlocks = MemberLayout.DataBlocksFor(drive.BlockCount);
        var uuid = new Guid("0b7c2e4d-1f3a-4b5c-9d6e-7f8091a2b3c4");
        var disk = new MemberDisk(drive, 0, uuid, memberBlocks);

        // Three blocks across the boundary of tag groups 0 and 1: two gathers, each its data run and its group's tag block.
        long first = MemberLayout.TagsPerGroup - 2;
        var data = new byte[3 * Units.BlockBytes];
        new Random(7).NextBytes(data);
        await disk.WriteAsync(first, data);

        Assert.Empty(drive.PlainWrites);
        Assert.Equal(2, drive.Gathers.Count);
        var (g0, g1) = (drive.Gathers[0], drive.Gathers[1]);
        Assert.Equal([MemberLayout.DataLba(first), MemberLayout.TagLba(0)], g0.Select(e => e.Lba));
        Assert.Equal([2 * Units.BlockBytes, Units.BlockBytes], g0.Select(e => e.Data.Length));
        Assert.Equal([MemberLayout.DataLba(first + 2), MemberLayout.TagLba(1)], g1.Select(e => e.Lba));
        Assert.Equal([Units.BlockBytes, Units.BlockBytes], g1.Select(e => e.Data.Length));

        // What landed verifies against its tags, also for a fresh MemberDisk that reads the tag blocks from the drive.
        var back = new byte[data.Length];
        Assert.Null(await disk.ReadAsync(first, back));
        Assert.Equal(data, back);
        var reopened = new MemberDisk(drive, 0, uuid, memberBlocks);
        Array.Clear(back);
        Assert.Null(await reopened.ReadAsync(first, back));
        Assert.Equal(data, back);
        Assert.Equal(Tag.Compute(reopened.Salt, first + 2, data.AsSpan(2 * Units.BlockBytes)), await reopened.TagOfAsync(first + 2));
    }
}
