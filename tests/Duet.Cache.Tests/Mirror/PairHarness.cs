using Duet.Cache.Mirror;
using Duet.Cache.Nvram;
using Duet.Cache.Tests.Cache;
using Duet.Core;
using Duet.Interconnect.Link;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Cache.Tests.Mirror;

/// <summary>
/// Controller A's cache mirroring into controller B's region 2 over a real in-memory ICL link:
/// A runs the cache and the <see cref="PeerMirror"/>, B runs the <see cref="MirrorReceiver"/>.
/// </summary>
internal sealed class PairHarness : IAsyncDisposable
{
    public readonly string Dir = Path.Combine(Path.GetTempPath(), "duet-pair-" + Guid.NewGuid().ToString("N")[..8]);
    public readonly NvramFile NvramA, NvramB;
    public readonly InMemoryIclLink LinkA, LinkB;
    public readonly PeerMirror Mirror;
    public readonly MirrorReceiver Receiver;
    public readonly MirrorApplier Applier;
    public readonly MemoryBacking Backing;
    public readonly WriteBackCache Cache;
    public readonly byte[] Model;
    readonly Random _rng;

    /// <summary>B's copies of multicast host commands, by tag: what a by-reference header names.</summary>
    public readonly System.Collections.Concurrent.ConcurrentDictionary<ulong, byte[]> HeldByB = new();

    /// <param name="mirrorTime">The clock of A's mirror (its status time limit).</param>
    /// <param name="peerSilent">B takes A's transfers and never answers (a peer that hangs).</param>
    public PairHarness(MirrorMethod path, bool manualDelivery = false, long nvramBytes = 4 << 20, long arraySectors = 16384, int seed = 1,
        TimeProvider? mirrorTime = null, bool peerSilent = false)
    {
        Directory.CreateDirectory(Dir);
        var layout = NvramLayout.For(nvramBytes);
        var pair = Guid.NewGuid();
        NvramA = NvramFile.Create(Path.Combine(Dir, "a.nvram"), layout, "A", pair);
        NvramB = NvramFile.Create(Path.Combine(Dir, "b.nvram"), layout, "B", pair);
        (LinkA, LinkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System, "A", "B", manualDelivery);
        Mirror = new PeerMirror(LinkA, () => 1, new PeerMirrorOptions { Path = path, SmallWriteOpcode = 0xA0, Time = mirrorTime ?? TimeProvider.System }, NullLogger.Instance);
        Applier = new MirrorApplier(NvramB.Peer, v => v == 7 ? 0xABCDEFUL : null,
            r => HeldByB.TryGetValue(r.HostTag, out var held) ? held : null);
        Receiver = new MirrorReceiver(Applier,
            status => LinkB.PostAsync(IclSignal.Reply, 1, status, default), 0xA0, NullLogger.Instance);
        LinkA.Start(t =>
        {
            if (t.Signal == IclSignal.Reply) Mirror.OnReply(t.Message.Span);
            return ValueTask.CompletedTask;
        });
        if (peerSilent) LinkB.Start(_ => ValueTask.CompletedTask);
        else LinkB.Start(async t => { await Receiver.HandleAsync(t); });
        Backing = new MemoryBacking(7, 0xABCDEF, arraySectors);
        Cache = new WriteBackCache(NvramA.Own, Mirror, new CacheOptions { IdleDestageDelay = TimeSpan.FromHours(1) }, NullLogger.Instance);
        Cache.AddArray(Backing);
        Cache.Start();
        Mirror.Resume();
        Model = new byte[arraySectors * Units.SectorBytes];
        _rng = new Random(seed);
    }

    public long Doorbells => LinkA.Counters.DoorbellsRung + LinkB.Counters.DoorbellsRung;
    public long LinkBytes => LinkA.Counters.MessageBytesSent + LinkA.Counters.DataBytesSent + LinkB.Counters.MessageBytesSent + LinkB.Counters.DataBytesSent;

    public async Task WriteAsync(long sector, int sectors)
    {
        var data = new byte[sectors * Units.SectorBytes];
        _rng.NextBytes(data);
        await Cache.WriteAsync(7, sector, data, fua: false);
        data.CopyTo(Model, sector * Units.SectorBytes);
    }

    /// <summary>A multicast host write: B holds the command (tag) too, unless <paramref name="heldByB"/> is false.</summary>
    public async Task MulticastWriteAsync(ulong tag, long sector, int sectors, bool heldByB = true)
    {
        var data = new byte[sectors * Units.SectorBytes];
        _rng.NextBytes(data);
        if (heldByB) HeldByB[tag] = data;
        await Cache.WriteAsync(7, sector, data, fua: false, new HostDataReference(0, 0x77, tag, 0));
        data.CopyTo(Model, sector * Units.SectorBytes);
    }

    public Task RandomWriteAsync(int maxSectors = 64)
    {
        int n = _rng.Next(1, maxSectors + 1);
        long at = _rng.NextInt64(0, Backing.CapacitySectors - n + 1);
        return WriteAsync(at, n);
    }

    public async Task VerifyAsync()
    {
        var buf = new byte[Model.Length];
        await Cache.ReadAsync(7, 0, buf);
        Assert.True(buf.AsSpan().SequenceEqual(Model), $"differs at sector {buf.AsSpan().CommonPrefixLength(Model) / 512}");
    }

    /// <summary>Survivor's view: B's region 2 replayed in sequence order over what the drives hold.</summary>
    public byte[] PeerReplay()
    {
        var drives = Backing.Bytes.ToArray();
        foreach (var (e, d) in NvramB.Peer.ReplayOrder())
            for (int s = 0; s < 32; s++)
                if ((d.ValidMask & (1u << s)) != 0)
                    NvramB.Peer.Data(e).Slice(s * 512, 512).CopyTo(drives.AsSpan((int)((d.ArrayLba + s) * 512)));
        return drives;
    }

    public async ValueTask DisposeAsync()
    {
        await Cache.DisposeAsync();
        await Mirror.DisposeAsync();
        await LinkA.DisposeAsync();
        await LinkB.DisposeAsync();
        NvramA.Dispose();
        NvramB.Dispose();
        try { Directory.Delete(Dir, true); } catch (IOException) { }
    }
}
