using Duet.Drives;

namespace Duet.Core.Tests;

/// <summary>Behaviour every <see cref="IBlockDevice"/> shares, run against each implementation.</summary>
[Trait("Area", "Drives")]
public sealed class DriveTests : IDisposable
{
    const int B = Units.BlockBytes;
    readonly string _dir = Directory.CreateTempSubdirectory("duet-drive-tests-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    public static TheoryData<string> Kinds => ["memory", "file"];

    IBlockDevice Make(string kind, long blockCount) => kind switch
    {
        "memory" => new MemoryDrive("mem0", blockCount),
        "file" => FileDrive.Create(Path.Combine(_dir, $"d{Guid.NewGuid():N}.img"), blockCount * B),
        _ => throw new ArgumentException(kind),
    };

    internal static byte[] Pattern(int blocks, byte seed)
    {
        var data = new byte[blocks * B];
        new DeterministicRandom(seed).NextBytes(data);
        return data;
    }

    [Theory, MemberData(nameof(Kinds))]
    public async Task UnwrittenBlocksReadAsZerosAndWrittenBlocksReadBack(string kind)
    {
        await using var drive = Make(kind, 1024);
        Assert.Equal(1024, drive.BlockCount);
        var buffer = new byte[4 * B];
        buffer.AsSpan().Fill(0xEE);
        await drive.ReadAsync(1020, buffer);
        Assert.All(buffer, b => Assert.Equal(0, b));

        var data = Pattern(3, 1);
        await drive.WriteAsync(100, data);
        await drive.FlushAsync();
        var back = new byte[5 * B];
        await drive.ReadAsync(99, back);
        Assert.Equal(new byte[B], back[..B]);
        Assert.Equal(data, back[B..(4 * B)]);
        Assert.Equal(new byte[B], back[(4 * B)..]);
    }

    [Theory, MemberData(nameof(Kinds))]
    public async Task MisalignedOrEmptyRequestsAreInvalid(string kind)
    {
        await using var drive = Make(kind, 16);
        foreach (int length in new[] { 0, 1, 512, B + 1, 2 * B - 512 })
        {
            var e = await Assert.ThrowsAsync<BlockIoException>(() => drive.ReadAsync(0, new byte[length]).AsTask());
            Assert.Equal(BlockErrorKind.Invalid, e.Kind);
            e = await Assert.ThrowsAsync<BlockIoException>(() => drive.WriteAsync(0, new byte[length]).AsTask());
            Assert.Equal(BlockErrorKind.Invalid, e.Kind);
        }
    }

    [Theory, MemberData(nameof(Kinds))]
    public async Task RequestsOutsideTheDriveAreOutOfRange(string kind)
    {
        await using var drive = Make(kind, 16);
        foreach (var (lba, blocks) in new (long, int)[] { (-1, 1), (16, 1), (15, 2), (0, 17), (long.MaxValue, 1) })
        {
            var e = await Assert.ThrowsAsync<BlockIoException>(() => drive.ReadAsync(lba, new byte[blocks * B]).AsTask());
            Assert.Equal(BlockErrorKind.OutOfRange, e.Kind);
            e = await Assert.ThrowsAsync<BlockIoException>(() => drive.WriteAsync(lba, new byte[blocks * B]).AsTask());
            Assert.Equal(BlockErrorKind.OutOfRange, e.Kind);
        }
        await drive.WriteAsync(15, new byte[B]); // the last block is in range
        await drive.ReadAsync(0, new byte[16 * B]);
    }

    [Fact]
    public async Task FileDriveIsSparseAndPersistsAcrossReopen()
    {
        string path = Path.Combine(_dir, "persist.img");
        var data = Pattern(2, 7);
        await using (var drive = FileDrive.Create(path, Units.MiB(64)))
        {
            Assert.Equal(Units.MiB(64) / B, drive.BlockCount);
            await drive.WriteAsync(5000, data, fua: true);
            await drive.FlushAsync();
        }
        Assert.Equal(Units.MiB(64), new FileInfo(path).Length);
        long? allocated = AllocatedBytes(path);
        if (allocated is { } bytes) Assert.True(bytes < Units.MiB(1), $"file allocates {bytes} bytes: not sparse");

        await using (var drive = FileDrive.Open(path))
        {
            Assert.Equal(Units.MiB(64) / B, drive.BlockCount);
            var back = new byte[2 * B];
            await drive.ReadAsync(5000, back);
            Assert.Equal(data, back);
            await drive.ReadAsync(0, back);
            Assert.Equal(new byte[2 * B], back);
        }
        Assert.Throws<IOException>(() => FileDrive.Create(path, Units.MiB(1))); // never overwrites
    }

    [Fact]
    public void FileDriveRejectsBadSizes()
    {
        Assert.Throws<ArgumentException>(() => FileDrive.Create(Path.Combine(_dir, "odd.img"), B + 512));
        string odd = Path.Combine(_dir, "odd2.img");
        File.WriteAllBytes(odd, new byte[B + 1]);
        var e = Assert.Throws<BlockIoException>(() => FileDrive.Open(odd));
        Assert.Equal(BlockErrorKind.Invalid, e.Kind);
    }

    [Fact]
    public async Task ClosedFileDriveIsUnavailable()
    {
        var drive = FileDrive.Create(Path.Combine(_dir, "closed.img"), 16 * B);
        await drive.DisposeAsync();
        var e = await Assert.ThrowsAsync<BlockIoException>(() => drive.ReadAsync(0, new byte[B]).AsTask());
        Assert.Equal(BlockErrorKind.Unavailable, e.Kind);
    }

    [Theory]
    [InlineData(1)]                                  // inline: pread/pwrite on the caller's thread
    [InlineData(FileDrive.InlineIoBytes / B)]        // the largest inline transfer
    [InlineData(FileDrive.InlineIoBytes / B + 1)]    // asynchronous (RandomAccess.*Async)
    [InlineData(3 * FileDrive.InlineIoBytes / B)]
    public async Task FileDriveInlineAndAsynchronousTransfersAgree(int blocks)
    {
        string path = Path.Combine(_dir, $"paths{blocks}.img");
        var data = Pattern(blocks, (byte)blocks);
        await using (var drive = FileDrive.Create(path, (4 * FileDrive.InlineIoBytes / B + 8) * B))
        {
            await drive.WriteAsync(3, data);
            var back = new byte[(blocks + 2) * B];
            await drive.ReadAsync(2, back);
            Assert.Equal(new byte[B], back[..B]);
            Assert.Equal(data, back[B..^B]);
            Assert.Equal(new byte[B], back[^B..]);
            // Read back in pieces of the other path's size too.
            var one = new byte[B];
            await drive.ReadAsync(3 + blocks - 1, one);
            Assert.Equal(data[^B..], one);
        }
        var closed = FileDrive.Open(path);
        await closed.DisposeAsync();
        var e = await Assert.ThrowsAsync<BlockIoException>(() => closed.ReadAsync(0, new byte[blocks * B]).AsTask());
        Assert.Equal(BlockErrorKind.Unavailable, e.Kind);
        e = await Assert.ThrowsAsync<BlockIoException>(() => closed.WriteAsync(0, new byte[blocks * B]).AsTask());
        Assert.Equal(BlockErrorKind.Unavailable, e.Kind);
    }

    [Fact]
    public async Task MemoryDriveAllocatesOnlyWrittenExtents()
    {
        await using var drive = new MemoryDrive("big", Units.GiB(1) / B);
        Assert.Equal(0, drive.AllocatedBytes);
        await drive.WriteAsync(12345, new byte[B]);
        Assert.Equal(Units.MiB(1), drive.AllocatedBytes);
    }

    /// <summary>st_blocks * 512 from stat(1), or null where stat is unavailable.</summary>
    static long? AllocatedBytes(string path)
    {
        try
        {
            var psi = new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%b %B", path]) { RedirectStandardOutput = true };
            using var p = System.Diagnostics.Process.Start(psi);
            if (p is null) return null;
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0) return null;
            var parts = output.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(parts[0]) * long.Parse(parts[1]);
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }
}
