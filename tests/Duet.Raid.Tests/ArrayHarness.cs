using Duet.Core;
using Duet.Drives;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Raid.Tests;

/// <summary>An array over memory drives plus a byte-exact model of what it should hold.</summary>
internal sealed class ArrayHarness
{
    public readonly RaidArray Array;
    public readonly MemoryDrive[] Drives;
    public readonly byte[] Model;
    public readonly Guid Uuid = new("6f1d3a52-9a0b-4c3e-8f21-0d5e7b9c1a44");
    readonly System.Random _rng;

    public ArrayHarness(RaidLevel level, int members, int chunkBlocks = 4, long memberDataBlocks = 64, int seed = 1)
    {
        _rng = new System.Random(seed);
        long driveBlocks = MemberLayout.MetadataBlocks + (memberDataBlocks + MemberLayout.TagsPerGroup - 1) / MemberLayout.TagsPerGroup * MemberLayout.GroupBlocks;
        Drives = Enumerable.Range(0, members).Select(i => new MemoryDrive($"d{i}", driveBlocks)).ToArray();
        var geometry = new ArrayGeometry(level, members, chunkBlocks, memberDataBlocks);
        var disks = Drives.Select((d, i) => (MemberDisk?)new MemberDisk(d, i, Uuid, geometry.MemberBlocks)).ToArray();
        Array = new RaidArray("t", Uuid, geometry, disks, Enumerable.Repeat(MemberStatus.Active, members).ToArray(), TimeProvider.System, NullLogger.Instance);
        Model = new byte[geometry.CapacityBlocks * Units.BlockBytes];
    }

    public ArrayGeometry Geometry => Array.Geometry;

    /// <summary>Writes random data (from <paramref name="seed"/>) over the whole array, so every block has a tag, and into the model.</summary>
    public async Task FillAsync(int seed)
    {
        var data = new byte[Model.Length];
        new System.Random(seed).NextBytes(data);
        await Array.WriteAsync(0, data);
        data.CopyTo(Model, 0);
    }

    public async Task RandomWritesAsync(int count, int maxSectors = 64)
    {
        long sectors = Array.CapacitySectors;
        for (int i = 0; i < count; i++)
        {
            int n = _rng.Next(1, maxSectors + 1);
            long at = _rng.NextInt64(0, sectors - n + 1);
            var data = new byte[n * Units.SectorBytes];
            _rng.NextBytes(data);
            await Array.WriteAsync(at, data);
            data.CopyTo(Model, at * Units.SectorBytes);
        }
    }

    public async Task VerifyAllAsync()
    {
        var buf = new byte[Model.Length];
        await Array.ReadAsync(0, buf);
        if (!buf.AsSpan().SequenceEqual(Model))
        {
            int first = buf.AsSpan().CommonPrefixLength(Model);
            Assert.Fail($"array content differs from the model at byte {first} (sector {first / 512})");
        }
    }

    public async Task VerifyRandomReadsAsync(int count)
    {
        for (int i = 0; i < count; i++)
        {
            int n = _rng.Next(1, 65);
            long at = _rng.NextInt64(0, Array.CapacitySectors - n + 1);
            var buf = new byte[n * Units.SectorBytes];
            await Array.ReadAsync(at, buf);
            Assert.True(buf.AsSpan().SequenceEqual(Model.AsSpan((int)(at * Units.SectorBytes), buf.Length)), $"read of {n} sectors at {at} differs");
        }
    }

    /// <summary>Flips a byte in member data block b of a drive, behind the array's back.</summary>
    public async Task CorruptAsync(int member, long memberBlock)
    {
        var blk = new byte[Units.BlockBytes];
        long lba = MemberLayout.DataLba(memberBlock);
        await Drives[member].ReadAsync(lba, blk);
        blk[100] ^= 0x5A;
        await Drives[member].WriteAsync(lba, blk);
    }

    /// <summary>Writes member data block b of a drive but not its tag, behind the array's back: a write a
    /// crash tore (the block holds its new content, its tag still names the old).</summary>
    public Task TearAsync(int member, long memberBlock, byte[] newContent) =>
        Drives[member].WriteAsync(MemberLayout.DataLba(memberBlock), newContent).AsTask();

    public MemberDisk NewDisk(int slot, string name)
    {
        var d = new MemoryDrive(name, Drives[0].BlockCount);
        return new MemberDisk(d, slot, Uuid, Geometry.MemberBlocks);
    }
}
