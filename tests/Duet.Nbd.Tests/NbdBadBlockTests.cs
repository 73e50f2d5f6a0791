using System.Net;
using Duet.Core;
using Duet.Drives;
using Duet.Raid;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Nbd.Tests;

/// <summary>AW-5 at the NBD edge: a block on the array's bad-block list fails every read (EIO), whole or
/// in part, until the client writes it again; the blocks around it are served as ever.</summary>
[Trait("Claim", "AW-5")]
public sealed class NbdBadBlockTests
{
    [Fact]
    public async Task AReadOfAListedBlockIsEioUntilTheClientWritesItAgain()
    {
        const long memberDataBlocks = 256;
        long driveBlocks = MemberLayout.MetadataBlocks + MemberLayout.GroupBlocks;
        var drives = Enumerable.Range(0, 3).Select(i => new MemoryDrive($"d{i}", driveBlocks)).ToArray();
        var uuid = Guid.NewGuid();
        var g = new ArrayGeometry(RaidLevel.Raid5, 3, 4, memberDataBlocks);
        var array = new RaidArray("a", uuid, g, drives.Select((d, i) => (MemberDisk?)new MemberDisk(d, i, uuid, g.MemberBlocks)).ToArray(),
            [MemberStatus.Active, MemberStatus.Active, MemberStatus.Active], TimeProvider.System, NullLogger.Instance);
        var volume = new RaidVolume("vol", array, 4, 64); // the volume starts 4 blocks into the array
        var data = new byte[64 * Units.BlockBytes];
        new System.Random(71).NextBytes(data);
        await volume.WriteAsync(0, data, fua: true);
        // The volume's block 1 (array block 5) torn behind the array's back together with its row's parity: a scrub lists it.
        var (stripe, dataIndex, _, memberBlock) = g.Map(5);
        await drives[g.DataMember(stripe, dataIndex)].WriteAsync(MemberLayout.DataLba(memberBlock), new byte[Units.BlockBytes]);
        await drives[g.PMember(stripe)].WriteAsync(MemberLayout.DataLba(memberBlock), Enumerable.Repeat((byte)1, Units.BlockBytes).ToArray());
        await array.ScrubAsync(true, new ScrubResult(), new PassProgress { TotalStripes = g.Stripes }, default); // a scrub with repair lists it
        Assert.Equal(5, Assert.Single(array.BadBlocks.Entries).ArrayBlock);

        await using var server = new NbdServer(new MemoryCatalog(volume), new NbdServerOptions { Endpoint = new IPEndPoint(IPAddress.Loopback, 0) }, NullLogger.Instance);
        await server.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(server.LocalEndPoint, "vol");

        Assert.Equal(NbdError.Io, (await client.ReadAsync(Units.BlockBytes, Units.BlockBytes)).Error);
        Assert.Equal(NbdError.Io, (await client.ReadAsync(Units.BlockBytes + 3 * Units.SectorBytes, Units.SectorBytes)).Error);
        Assert.Equal(NbdError.Io, (await client.ReadAsync(0, 8 * Units.BlockBytes)).Error);
        var before = await client.ReadAsync(0, Units.BlockBytes);
        Assert.Equal(NbdError.None, before.Error);
        Assert.Equal(data.AsSpan(0, Units.BlockBytes).ToArray(), before.Data);

        var fresh = new byte[Units.BlockBytes];
        new System.Random(72).NextBytes(fresh);
        Assert.Equal(NbdError.None, (await client.WriteAsync(Units.BlockBytes, fresh)).Error);
        Assert.True(array.BadBlocks.IsEmpty);
        var back = await client.ReadAsync(Units.BlockBytes, Units.BlockBytes);
        Assert.Equal(NbdError.None, back.Error);
        Assert.Equal(fresh, back.Data);
    }
}
