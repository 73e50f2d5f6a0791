using Duet.Cache.Nvram;
using Duet.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Cache.Tests.Cache;

/// <summary>An array in memory behind the cache. Writes can be held (to fill the cache).</summary>
internal sealed class MemoryBacking(byte arrayNumber, ulong serial, long sectors) : ICacheBacking
{
    public readonly byte[] Bytes = new byte[sectors * Units.SectorBytes];
    /// <summary>While set, array writes wait for it (a stalled array).</summary>
    public volatile TaskCompletionSource? Hold;
    public long Writes, Flushes;
    /// <summary>Every write's sector range, and whether it was a recovery write.</summary>
    public readonly List<(long Sector, long Count, bool Recovery)> WriteLog = [];
    public byte ArrayNumber { get; } = arrayNumber;
    public ulong ArraySerial { get; } = serial;
    public long CapacitySectors { get; } = sectors;
    public long StripeSectors => 256;

    /// <summary>While set, array reads wait for it.</summary>
    public volatile TaskCompletionSource? ReadHold;
    /// <summary>While set, array writes fail (a failed array).</summary>
    public volatile bool FailWrites;

    /// <summary>Sectors whose reads fail with a medium error (a listed bad block, AW-5).</summary>
    public readonly HashSet<long> MediumSectors = [];
    public long Reads;

    public async ValueTask ReadAsync(long sector, Memory<byte> destination, CancellationToken ct)
    {
        if (ReadHold is { } hold) await hold.Task.WaitAsync(ct);
        Interlocked.Increment(ref Reads);
        long count = destination.Length / Units.SectorBytes;
        lock (MediumSectors)
            for (long x = sector; x < sector + count; x++)
                if (MediumSectors.Contains(x)) throw new BlockIoException(BlockErrorKind.Medium, $"sector {x} is listed bad (test)", x);
        lock (Bytes) Bytes.AsSpan((int)(sector * Units.SectorBytes), destination.Length).CopyTo(destination.Span);
    }

    public async ValueTask WriteAsync(long sector, ReadOnlyMemory<byte> source, bool recovery, CancellationToken ct)
    {
        if (Hold is { } hold) await hold.Task.WaitAsync(ct);
        if (FailWrites) throw new BlockIoException(BlockErrorKind.Io, "array write failed (test)");
        lock (Bytes)
        {
            source.Span.CopyTo(Bytes.AsSpan((int)(sector * Units.SectorBytes)));
            lock (MediumSectors) for (long x = sector; x < sector + source.Length / Units.SectorBytes; x++) MediumSectors.Remove(x);
            WriteLog.Add((sector, source.Length / Units.SectorBytes, recovery));
        }
        Interlocked.Increment(ref Writes);
    }

    public ValueTask FlushAsync(CancellationToken ct) { Interlocked.Increment(ref Flushes); return ValueTask.CompletedTask; }
}

/// <summary>A peer in the same process: each change is applied to the peer NVRAM's region 2 at once,
/// through the same <see cref="MirrorApplier"/> (and header encoding) the link receiver uses.</summary>
internal sealed class DirectMirror(MirrorApplier applier) : ICacheMirror
{
    public MirrorMode Mode { get; set; } = MirrorMode.Healthy;
    public long Changes;
    /// <summary>As the batched mirror (true) or the seed's per-write messages (false, the default).</summary>
    public bool CarriesGaps { get; set; }

    public Task AppendGroup(IReadOnlyList<MirrorChange> changes)
    {
        if (Mode != MirrorMode.Healthy) throw new MirrorUnavailableException("peer gone");
        foreach (var change in changes)
        {
            var (header, data) = MirrorApplier.Encode(change);
            var problem = applier.Apply(header, data.Span);
            Assert.True(problem is null, problem);
            Interlocked.Increment(ref Changes);
        }
        return Task.CompletedTask;
    }
}

internal sealed class CacheHarness : IAsyncDisposable
{
    public readonly string Dir = Path.Combine(Path.GetTempPath(), "duet-cache-" + Guid.NewGuid().ToString("N")[..8]);
    public NvramFile Owner;
    public readonly NvramFile Peer;
    public readonly MemoryBacking Backing;
    public readonly DirectMirror Mirror;
    public WriteBackCache Cache;
    public readonly byte[] Model;
    readonly Random _rng;
    readonly Guid _pair = Guid.NewGuid();

    public CacheHarness(long nvramBytes = 2 << 20, long arraySectors = 8192, int seed = 1, CacheOptions? options = null)
    {
        Directory.CreateDirectory(Dir);
        var layout = NvramLayout.For(nvramBytes);
        Owner = NvramFile.Create(Path.Combine(Dir, "a.nvram"), layout, "A", _pair);
        Peer = NvramFile.Create(Path.Combine(Dir, "b.nvram"), layout, "B", _pair);
        Backing = new MemoryBacking(7, 0xABCDEF, arraySectors);
        Mirror = new DirectMirror(new MirrorApplier(Peer.Peer, v => v == 7 ? 0xABCDEFUL : null));
        Options = options ?? new CacheOptions { IdleDestageDelay = TimeSpan.FromHours(1) };
        Cache = NewCache();
        Model = new byte[arraySectors * Units.SectorBytes];
        _rng = new Random(seed);
    }

    public CacheOptions Options { get; }

    WriteBackCache NewCache()
    {
        var c = new WriteBackCache(Owner.Own, Mirror, Options, NullLogger.Instance);
        c.AddArray(Backing);
        c.Start();
        return c;
    }

    /// <summary>Throws the cache away as a crash would (its NVRAM file stays) and starts a new one on the same file.</summary>
    public async Task<int> RestartAsync()
    {
        await Cache.DisposeAsync();
        var path = Owner.Path;
        Owner.Dispose();
        Owner = NvramFile.Open(path);
        Cache = NewCache();
        return Cache.Replay();
    }

    public async Task WriteAsync(long sector, int sectors)
    {
        var data = new byte[sectors * Units.SectorBytes];
        _rng.NextBytes(data);
        await Cache.WriteAsync(7, sector, data, fua: false);
        data.CopyTo(Model, sector * Units.SectorBytes);
    }

    public async Task RandomWriteAsync(int maxSectors = 64)
    {
        int n = _rng.Next(1, maxSectors + 1);
        long at = _rng.NextInt64(0, Backing.CapacitySectors - n + 1);
        await WriteAsync(at, n);
    }

    public async Task VerifyAsync()
    {
        var buf = new byte[Model.Length];
        await Cache.ReadAsync(7, 0, buf);
        int diff = buf.AsSpan().CommonPrefixLength(Model);
        Assert.True(diff == Model.Length, $"cache read differs from the model at sector {diff / Units.SectorBytes}");
    }

    /// <summary>SPEC "Invariants the mirror must keep", checked with the link quiet.</summary>
    public void CheckMirrorInvariant()
    {
        var own = Owner.Own.ReplayOrder(out var ownSkipped);
        Assert.Empty(ownSkipped);
        var peer = Peer.Peer.ReplayOrder(out var peerSkipped);
        Assert.Empty(peerSkipped);
        var ownByElement = own.ToDictionary(x => x.Element, x => x.Descriptor);
        // No array LBA is valid in two of the owner's elements.
        Assert.Equal(own.Count, own.Select(x => (x.Descriptor.ArrayNumber, x.Descriptor.ArrayLba)).Distinct().Count());
        // For each element e, the peer's entry is invalid or equal to the owner's element e.
        foreach (var (e, d) in peer)
        {
            Assert.True(ownByElement.TryGetValue(e, out var o), $"peer holds element {e} ({d.ArrayLba}) that the owner does not");
            Assert.Equal((o.ArraySerial, o.ArrayNumber, o.ArrayLba, o.ValidMask, o.Sequence), (d.ArraySerial, d.ArrayNumber, d.ArrayLba, d.ValidMask, d.Sequence));
            for (int s = 0; s < 32; s++)
                if ((d.ValidMask & (1u << s)) != 0)
                    Assert.True(Owner.Own.Data(e).Slice(s * 512, 512).SequenceEqual(Peer.Peer.Data(e).Slice(s * 512, 512)), $"element {e} sector {s} differs");
        }
        // Every dirty element of the owner is valid at the peer.
        var peerSet = peer.Select(x => x.Element).ToHashSet();
        foreach (var (e, d) in own)
            if (d.Dirty) Assert.Contains(e, peerSet);
    }

    public async ValueTask DisposeAsync()
    {
        await Cache.DisposeAsync();
        Owner.Dispose();
        Peer.Dispose();
        try { Directory.Delete(Dir, true); } catch (IOException) { }
    }
}
