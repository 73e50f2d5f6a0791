using System.Buffers;
using Duet.Core;
using Duet.Drives;

namespace Duet.Raid;

/// <summary>
/// One member of an array: its drive, its slot, and its checksum tags. Every data block read
/// through here is checked against its tag; every data block written gets a new tag.
///
/// Tag blocks are cached in memory after their first use (4 KiB per 2 MiB of data) and
/// written through. A tag group's gate serialises the read-modify-write of its tag block;
/// callers already hold the stripe lock of the blocks they touch, so no two requests
/// change the same tag at once.
/// </summary>
public sealed class MemberDisk
{
    sealed class TagGroup
    {
        public readonly AsyncGate Gate = new(1, 1);
        public byte[]? Bytes;
    }

    readonly TagGroup[] _groups;

    public MemberDisk(IBlockDevice drive, int slot, Guid arrayUuid, long memberBlocks)
    {
        Invariant.Assert(MemberLayout.DataBlocksFor(drive.BlockCount) >= memberBlocks);
        Drive = drive;
        Slot = slot;
        Salt = Tag.Salt(arrayUuid, slot);
        MemberBlocks = memberBlocks;
        _groups = new TagGroup[(memberBlocks + MemberLayout.TagsPerGroup - 1) / MemberLayout.TagsPerGroup];
        for (int i = 0; i < _groups.Length; i++) _groups[i] = new TagGroup();
    }

    public IBlockDevice Drive { get; }
    public int Slot { get; }
    public ulong Salt { get; }
    public long MemberBlocks { get; }

    async ValueTask<byte[]> GroupBytesAsync(long group, CancellationToken ct)
    {
        var g = _groups[group];
        var bytes = Volatile.Read(ref g.Bytes);
        if (bytes is not null) return bytes;
        await g.Gate.WaitAsync(ct);
        try
        {
            if (g.Bytes is null)
            {
                var b = new byte[Units.BlockBytes];
                await Drive.ReadAsync(MemberLayout.TagLba(group), b, ct);
                Volatile.Write(ref g.Bytes, b);
            }
            return g.Bytes;
        }
        finally
        {
            g.Gate.Release();
        }
    }

    /// <summary>The stored tag of a block (0 = never written).</summary>
    public async ValueTask<ulong> TagOfAsync(long memberBlock, CancellationToken ct = default)
    {
        var bytes = await GroupBytesAsync(MemberLayout.GroupOf(memberBlock), ct);
        return Tag.Read(bytes, (int)(memberBlock % MemberLayout.TagsPerGroup));
    }

    /// <summary>
    /// Reads <c>destination.Length / 4096</c> data blocks from <paramref name="memberBlock"/> on and checks each
    /// against its tag. Returns the indexes (relative to the first block) that failed their check, or null.
    /// A drive error is thrown as <see cref="BlockIoException"/>; a medium error makes the whole range bad.
    /// </summary>
    public ValueTask<List<int>?> ReadAsync(long memberBlock, Memory<byte> destination, CancellationToken ct = default) =>
        ReadAsync(memberBlock, destination, null, ct);

    /// <summary>
    /// As <see cref="ReadAsync(long, Memory{byte}, CancellationToken)"/>; <paramref name="mismatched"/>, if given, also
    /// receives the failed blocks that were read but did not match their tag (a torn write, or rot):
    /// their data as read is in <paramref name="destination"/>. The other failed blocks hit a medium error.
    /// </summary>
    public async ValueTask<List<int>?> ReadAsync(long memberBlock, Memory<byte> destination, List<int>? mismatched, CancellationToken ct = default)
    {
        int count = destination.Length / Units.BlockBytes;
        Invariant.Assert(count * Units.BlockBytes == destination.Length);
        Invariant.Assert(memberBlock >= 0 && memberBlock + count <= MemberBlocks);
        List<int>? bad = null;
        int done = 0;
        while (done < count)
        {
            long block = memberBlock + done;
            int inGroup = (int)Math.Min(count - done, MemberLayout.TagsPerGroup - block % MemberLayout.TagsPerGroup);
            var slice = destination.Slice(done * Units.BlockBytes, inGroup * Units.BlockBytes);
            byte[] tags;
            try
            {
                await Drive.ReadAsync(MemberLayout.DataLba(block), slice, ct);
                tags = await GroupBytesAsync(MemberLayout.GroupOf(block), ct);
            }
            catch (BlockIoException e) when (e.Kind == BlockErrorKind.Medium)
            {
                bad ??= [];
                for (int i = 0; i < inGroup; i++) bad.Add(done + i);
                done += inGroup;
                continue;
            }
            for (int i = 0; i < inGroup; i++)
            {
                long b = block + i;
                ulong tag = Tag.Read(tags, (int)(b % MemberLayout.TagsPerGroup));
                var blockSpan = slice.Span.Slice(i * Units.BlockBytes, Units.BlockBytes);
                if (tag == 0)
                {
                    // Never written since the array was created: logically zeros, whatever bytes a
                    // reused drive still holds there.
                    blockSpan.Clear();
                    continue;
                }
                if (!Tag.Verify(tag, Salt, b, blockSpan))
                {
                    (bad ??= []).Add(done + i);
                    mismatched?.Add(done + i);
                }
            }
            done += inGroup;
        }
        return bad;
    }

    /// <summary>
    /// Writes data blocks and their tags. With <paramref name="asHole"/> the blocks must be zeros and their
    /// tags are cleared, so they read back as never written (TRIM).
    /// </summary>
    public ValueTask WriteAsync(long memberBlock, ReadOnlyMemory<byte> source, bool asHole = false, CancellationToken ct = default)
    {
        int count = source.Length / Units.BlockBytes;
        int first;
        try
        {
            Invariant.Assert(count * Units.BlockBytes == source.Length);
            Invariant.Assert(memberBlock >= 0 && memberBlock + count <= MemberBlocks);
            first = (int)Math.Min(count, MemberLayout.TagsPerGroup - memberBlock % MemberLayout.TagsPerGroup);
        }
        catch (Exception e) { return ValueTask.FromException(e); }
        // Blocks of one tag group (a destage's member write, nearly always): that group's write itself, no frame of its own.
        return first == count && count > 0 ? WriteWithTagsAsync(memberBlock, source, asHole, ct) : WriteGroupsAsync(memberBlock, source, asHole, ct);
    }

    async ValueTask WriteGroupsAsync(long memberBlock, ReadOnlyMemory<byte> source, bool asHole, CancellationToken ct)
    {
        int count = source.Length / Units.BlockBytes;
        int done = 0;
        while (done < count)
        {
            long block = memberBlock + done;
            int inGroup = (int)Math.Min(count - done, MemberLayout.TagsPerGroup - block % MemberLayout.TagsPerGroup);
            await WriteWithTagsAsync(block, source.Slice(done * Units.BlockBytes, inGroup * Units.BlockBytes), asHole, ct);
            done += inGroup;
        }
    }

    /// <summary>
    /// Writes blocks of one tag group and the group's tag block as one gathered write (one request to a shelf,
    /// where they used to be two), under the group's gate. Both extents are attempted; a failure of either is
    /// the member's failure.
    /// </summary>
    async ValueTask WriteWithTagsAsync(long firstBlock, ReadOnlyMemory<byte> data, bool asHole, CancellationToken ct)
    {
        int count = data.Length / Units.BlockBytes;
        long group = MemberLayout.GroupOf(firstBlock);
        Invariant.Assert(group == MemberLayout.GroupOf(firstBlock + count - 1));
        // Checksums first, outside the gate: they are the expensive part. A destage round writes thousands of
        // single blocks at once, more than a shared pool keeps: one block's tag needs no array.
        ulong single = 0;
        ulong[]? rented = count > 1 ? ArrayPool<ulong>.Shared.Rent(count) : null;
        try
        {
            for (int i = 0; i < count; i++)
            {
                var block = data.Span.Slice(i * Units.BlockBytes, Units.BlockBytes);
                ulong tag;
                if (asHole)
                {
                    Invariant.Assert(!block.ContainsAnyExcept((byte)0));
                    tag = 0;
                }
                else
                {
                    tag = Tag.Compute(Salt, firstBlock + i, block);
                }
                if (rented is null) single = tag;
                else rented[i] = tag;
            }
            var bytes = await GroupBytesAsync(group, ct);
            var g = _groups[group];
            await g.Gate.WaitAsync(ct);
            try
            {
                for (int i = 0; i < count; i++)
                    Tag.Write(bytes, (int)((firstBlock + i) % MemberLayout.TagsPerGroup), rented is null ? single : rented[i]);
                WriteExtent[] extents = [new(MemberLayout.DataLba(firstBlock), data), new(MemberLayout.TagLba(group), bytes)];
                await Drive.WriteGatherAsync(extents, ct);
            }
            finally
            {
                g.Gate.Release();
            }
        }
        finally
        {
            if (rented is not null) ArrayPool<ulong>.Shared.Return(rented);
        }
    }

    /// <summary>Clears every tag of this member's data area: all its blocks read as never written.
    /// Used when a drive joins a new array, so nothing it held before can pass for data. Flushed before it
    /// returns: the superblock that names the new array comes after, and a power cut must not bring back
    /// tags of the drive's old array (salted differently: every such block would fail its check).</summary>
    public async ValueTask ClearTagsAsync(CancellationToken ct = default)
    {
        var zero = new byte[Units.BlockBytes];
        for (long g = 0; g < _groups.Length; g++)
        {
            await Drive.WriteAsync(MemberLayout.TagLba(g), zero, false, ct);
            Volatile.Write(ref _groups[g].Bytes, new byte[Units.BlockBytes]);
        }
        await Drive.FlushAsync(ct);
    }

    /// <summary>Forgets cached tags (after the drive's content was replaced under us).</summary>
    public void DropTagCache()
    {
        foreach (var g in _groups) Volatile.Write(ref g.Bytes, null);
    }
}
