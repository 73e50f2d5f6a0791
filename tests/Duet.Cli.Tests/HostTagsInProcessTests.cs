using Duet.Cache.Nvram;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.HostProtocol;
using Duet.Interconnect.Link;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

using static Duet.Cli.Tests.InProcessPair;

namespace Duet.Cli.Tests;

/// <summary>
/// Idempotent re-issue through real controllers (both in one process behind one shelf core): a host
/// write finished by A is in A's NVRAM table of finished host commands and in B's copy of it; after B
/// took A over and B itself restarted (so no handshake remembers anything), the write re-issued under
/// its tag is answered with its status and not run again — another host's later write over the same
/// block stays. And a pairing sends each controller's table to the other, and is refused with a peer whose
/// NVRAM is of another format (where the tables are, and their sizes, differ).
/// </summary>
public sealed class HostTagsInProcessTests
{
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000d0ea");
    const ulong Host7 = 7, Host8 = 8;

    static byte[] Pattern(byte seed) => [.. Enumerable.Range(0, 4096).Select(i => (byte)(seed + i * 13))];

    static HostCommand Write(ulong host, ulong tag, byte[] data, HostRequestFlags flags = HostRequestFlags.Multicast) =>
        new(0, "vol0", new HostRequest(HostOpcode.Write, flags, host, tag, NowMicros, 0, (uint)data.Length, data));

    static ulong NowMicros => (ulong)(DateTimeOffset.UtcNow - DateTimeOffset.UnixEpoch).Ticks / 10;

    [Fact]
    [Trait("Claim", "AW-1")]
    [Trait("Claim", "FO-2")]
    public async Task AWriteReissuedAfterATakeoverAndARestartOfTheSurvivorIsAnsweredFromTheTableAndNotRunAgain()
    {
        var shelf = await TwoArrayShelfAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var storeB = NvramStore.For(layout, "nvram-B");
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        var b = await StartControllerAsync("B", 2, shelf, storeB, layout, linkB, Pair);
        var (x, y) = (Pattern(1), Pattern(2));
        try
        {
            await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && a.HoldsLease && b.HoldsLease, "the pair to form");

            // Host 7 writes X under tag 1; then host 8 writes Y over the same block. A (vol0's owner) runs both.
            Assert.Equal([HostCompletion.Ok(1)], await MulticastAsync(a, b, Write(Host7, 1, x)));
            Assert.Equal([HostCompletion.Ok(1)], await MulticastAsync(a, b, Write(Host8, 1, y)));
            Assert.Equal(2, a.HostTags.OwnCount);
            // Each entry went to B before A answered, and the link is FIFO: B has both.
            await Until(() => b.HostTags.PeerCount == 2, "B to store A's entries");

            // A dies (B takes it over), then B restarts: no handshake memory is left anywhere.
            await b.TakeOverAsync("test: A stopped answering");
            Assert.True(shelf.Status().Port("A").Fenced);
        }
        finally
        {
            await b.DisposeAsync();
        }

        var (linkB2, _) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System);
        var b2 = await StartControllerAsync("B", 3, shelf, storeB, layout, linkB2, Pair);
        try
        {
            Assert.Equal((0, 2), (b2.HostTags.RecoveredOwn, b2.HostTags.RecoveredPeer));
            await Until(() => b2.HoldsLease && b2.Handshake.IsPrimaryFor("vol0"), "B to serve vol0 again");

            // Host 7 re-issues tag 1 (its answer was lost, say): the status A gave, and Y stays.
            var reissue = new Route();
            await b2.Handshake.SubmitAsync(Write(Host7, 1, x), reissue);
            Assert.Equal([HostCompletion.Ok(1)], reissue.Answers);
            Assert.Equal((1L, 0L), (b2.Handshake.Counters.TableRecalls, b2.Handshake.Counters.ExecutedAsPrimary));
            Assert.Equal(y, await ReadAsync(b2));

            // Tag 1 for other bytes is another command: Invalid, not applied. A new tag runs, and is recorded by B.
            var reused = new Route();
            await b2.Handshake.SubmitAsync(Write(Host7, 1, Pattern(3)), reused);
            Assert.Equal([HostCompletion.Error(1, HostStatus.Invalid)], reused.Answers);
            Assert.Equal(y, await ReadAsync(b2));
            var next = new Route();
            await b2.Handshake.SubmitAsync(Write(Host7, 2, x), next);
            Assert.Equal([HostCompletion.Ok(2)], next.Answers);
            Assert.Equal(x, await ReadAsync(b2));
            Assert.Equal(1, b2.HostTags.OwnCount);
        }
        finally
        {
            // A, fenced, is left as a killed controller is (its orderly stop would wait for a drain it may not do).
            await b2.DisposeAsync();
        }
    }

    /// <summary>
    /// Recorders take their sequence under the table's lock and join the post queue under another, so on several
    /// threads they join it out of order. The message must still carry its entries in sequence order: the pump once
    /// broke that invariant, died, and left every later command waiting out the 100 ms post limit, with the peer's
    /// copy of the table never hearing of them (a path-failover takeover under fio ran at ~180 writes/s for minutes).
    /// In one process the race is rare: the next test pins the order itself.
    /// </summary>
    [Fact]
    [Trait("Claim", "AW-1")]
    public async Task Entries_recorded_on_many_threads_all_reach_the_peers_copy()
    {
        var shelf = await TwoArrayShelfAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        var b = await StartControllerAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB, Pair);
        try
        {
            await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy, "the pair to form");
            long before = b.HostTags.Mirrored;
            const int Threads = 8, Each = 400;
            var table = (IFinishedCommandTable)a;
            await Task.WhenAll(Enumerable.Range(0, Threads).Select(t => Task.Run(async () =>
            {
                for (int i = 0; i < Each; i++)
                    await table.RecordAsync(new FinishedCommandRecord(new HostCommandKey(0, 100 + (ulong)t, (ulong)i + 1), 0xD1, HostStatus.Ok));
            })));
            await Until(() => b.HostTags.Mirrored - before >= Threads * Each, $"all {Threads * Each} entries in B's copy (it has {b.HostTags.Mirrored - before})");
        }
        finally
        {
            await b.DisposeAsync();
            await a.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "AW-1")]
    public void A_host_tag_message_carries_its_entries_in_sequence_order_whatever_order_they_were_queued_in()
    {
        var entries = new ulong[] { 12, 10, 11 }.Select(seq => new Duet.Cache.HostTagEntry(new Duet.Cache.HostTagKey(0, 5, seq), 1, 0, seq)).ToList();
        var bytes = PairController.HostTagBytes(entries, resend: false);
        Assert.Equal(System.Buffers.OperationStatus.Done, Duet.Interconnect.Wire.HostTagEntries.TryDecode(bytes, out var m, out _, out _));
        Assert.Equal([10UL, 11, 12], m!.Entries.Select(e => e.Sequence));
    }

    [Fact]
    [Trait("Claim", "AW-1")]
    public async Task APairingSendsEachControllerItsPeersTable()
    {
        var shelf = await TwoArrayShelfAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        PairController? b = null;
        try
        {
            // A alone: its writes are recorded in its own table and reach no copy.
            await Until(() => a.HoldsLease, "A to hold its lease");
            var route = new Route();
            await a.Handshake.SubmitAsync(Write(Host7, 1, Pattern(1), HostRequestFlags.None), route);
            Assert.Equal([HostCompletion.Ok(1)], route.Answers);
            Assert.Equal(1, a.HostTags.OwnCount);

            b = await StartControllerAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB, Pair);
            await Until(() => b.HostTags.PeerCount == 1, "the pairing to bring A's table to B");
            Assert.True(b.HostTags.TryFind(new Duet.Cache.HostTagKey(0, Host7, 1), out var entry, out bool peers));
            Assert.True(peers);
            Assert.Equal((byte)HostStatus.Ok, entry.Status);
            Assert.Equal(HostCommandDigest.Of(Write(Host7, 1, Pattern(1), HostRequestFlags.None)), entry.Digest);
        }
        finally
        {
            if (b is not null) await b.DisposeAsync();
            await a.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "CC-1")]
    public async Task AControllerRefusesToPairWithAPeerWhoseNvramIsOfAnotherFormat()
    {
        var (shelf, layout, a, peer) = await ControllerWithARawPeerAsync();
        try
        {
            // A peer of an older format (2: no host tag tables, no partial-parity pool) with an NVRAM of the same size and element count.
            peer.Start(_ => ValueTask.CompletedTask);
            var hello = new Duet.Interconnect.Wire.PairHello('B', 9, layout.TotalBytes, layout.ElementCount, layout.ElementBytes, NvramFormat: 2);
            await peer.PostAsync(IclSignal.Message, 0, Duet.Interconnect.Wire.DuetFrame.ToArray(hello), default);
            await Until(() => a.Receiver.RefuseAll is not null, "A to refuse the pair");
            Assert.Contains($"format {NvramFile.FormatVersion}", a.Receiver.RefuseAll);
            Assert.Contains("format 2", a.Receiver.RefuseAll);
        }
        finally
        {
            await a.DisposeAsync();
        }
    }

    /// <summary>
    /// After A fenced B, B's messages fall below A's epoch floor and count for nothing, except the entries of B's
    /// table of finished host writes: each says a write B ran whole before the fence (after it, B's drive writes
    /// fail and its mirror writes are dropped). A looks a command it held as secondary up there before it runs it
    /// after the takeover; dropping them let a write B finished in the instant of the fence run twice
    /// (simulator seed 10376 of --faults failover,multicast --ops 1000). B is a raw link end here.
    /// </summary>
    [Fact]
    [Trait("Claim", "FO-5")]
    [Trait("Claim", "AW-1")]
    public async Task A_fenced_peers_table_entries_still_reach_the_survivors_copy_below_its_epoch_floor()
    {
        var (shelf, _, a, peer) = await ControllerWithARawPeerAsync();
        try
        {
            peer.Start(_ => ValueTask.CompletedTask);
            await a.TakeOverAsync("test: B stopped answering");
            Assert.True(shelf.Status().Port("B").Fenced);
            Assert.True(a.Nvram.Epoch > 0, "the takeover raises A's epoch floor above B's old epoch 0");
            var key = new Duet.Cache.HostTagKey(1, Host7, 42);
            var entry = new Duet.Cache.HostTagEntry(key, Digest: 0xC0FFEE, Status: (byte)HostStatus.Ok, Sequence: 5);
            long dropped = a.StaleTransfersDropped;
            await peer.PostAsync(IclSignal.Message, 0, PairController.HostTagBytes([entry], resend: false), default);
            await Until(() => a.HostTags.TryFind(key, out _, out _), "A to store the fenced B's entry");
            Assert.True(a.HostTags.TryFind(key, out var stored, out bool peers));
            Assert.True(peers, "the entry is in A's copy of B's table, not A's own");
            Assert.Equal((0xC0FFEEu, (byte)HostStatus.Ok), (stored.Digest, stored.Status));
            Assert.Equal(dropped, a.StaleTransfersDropped);
        }
        finally
        {
            await a.DisposeAsync();
        }
    }

    /// <summary>Controller A on the two-array shelf, its link's other end left to the test (no controller B).</summary>
    static async Task<(Duet.Shelf.Shelf Shelf, NvramLayout Layout, PairController A, IIclLink Peer)> ControllerWithARawPeerAsync()
    {
        var shelf = await TwoArrayShelfAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, peer) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        return (shelf, layout, a, peer);
    }

    /// <summary>The command to both controllers' handshakes, as a host multicasting to unit 0 of each;
    /// returns what the primary's connection was answered.</summary>
    static async Task<IReadOnlyList<HostCompletion>> MulticastAsync(PairController primary, PairController secondary, HostCommand command)
    {
        var route = new Route();
        await Task.WhenAll(secondary.Handshake.SubmitAsync(command, new Route()), primary.Handshake.SubmitAsync(command, route));
        return route.Answers;
    }

    static async Task<byte[]> ReadAsync(PairController c)
    {
        Assert.True(c.Volumes.TryGetVolume("vol0", out var vol0));
        var back = new byte[4096];
        await vol0.ReadAsync(0, back);
        return back;
    }

    sealed class Route : IHostCompletionRoute
    {
        readonly Lock _lock = new();
        readonly List<HostCompletion> _answers = [];

        public IReadOnlyList<HostCompletion> Answers { get { lock (_lock) return [.. _answers]; } }

        public ValueTask<bool> TrySendAsync(HostCompletion completion)
        {
            lock (_lock) _answers.Add(completion);
            return ValueTask.FromResult(true);
        }
    }

}
