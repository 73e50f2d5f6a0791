using Duet.Cache;
using Duet.Cache.Nvram;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

using static Duet.Cli.Tests.InProcessPair;

namespace Duet.Cli.Tests;

/// <summary>
/// Failback with both controllers in one process behind one shelf: the controller serving an array whose
/// preferred owner is its peer moves it there through the ordinary move, with "auto", once the pair has been
/// healthy for the settle time — not while the link is cut, and never undoing an operator's move.
/// </summary>
public sealed class FailbackInProcessTests
{
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000fb01");
    static readonly TimeSpan Settle = TimeSpan.FromSeconds(1);

    [Fact]
    [Trait("Claim", "FO-6")]
    public async Task TheServingControllerGivesAnArrayToItsPreferredOwnerOnceThePairHasBeenHealthyForTheSettleTime()
    {
        var shelf = await TwoArrayShelfAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair, new FailoverOptions { Failback = FailbackMode.Auto, FailbackSettle = Settle });
        var b = await StartControllerAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB, Pair, new FailoverOptions { Failback = FailbackMode.Auto, FailbackSettle = Settle });
        try
        {
            await Until(() => a.Mirror.Mode == MirrorMode.Healthy && b.Mirror.Mode == MirrorMode.Healthy && a.HoldsLease && b.HoldsLease, "the pair to form", seconds: 30);
            // Every array on its preferred owner: nothing pending.
            await Until(() => b.Info().Failback is { State: "none" } && a.Info().Failback is { State: "none" }, "both controllers to evaluate the failback", seconds: 30);
            var first = Pattern(1, 256 << 10);
            Assert.True(a.Volumes.TryGetVolume("vol0", out var vol0));
            await vol0.WriteAsync(0, first, fua: false);

            // An operator's move carries the preference: B keeps arr0 (no failback undoes the move).
            var moved = await MoveWhenPairedAsync(a, "arr0", "B");
            Assert.Equal(("B", "B"), (moved.Owner, moved.PreferredOwner));
            await Task.Delay(Settle * 2.5);
            Assert.True(b.Arrays.Serves("arr0"));
            Assert.Equal("none", b.Info().Failback!.State);

            // The link is cut, then arr0 comes to prefer A: while the link is cut nothing moves, however long that lasts.
            // (Cut first: a preference set while the pair is healthy, and settled already, may start its move at B's next
            // evaluation, before a cut that follows; that move then finishes, as a move begun while paired does.)
            linkB.Cut();
            await Until(() => !b.Link.IsUp, "B to see its link down");
            var preferred = await b.ArrayService.PreferArrayAsync("arr0", new PreferArrayRequest("A"));
            Assert.Equal(("B", "A"), (preferred.Owner, preferred.PreferredOwner));
            await Until(() => b.Info().Failback is { State: "waiting" }, "B to see the pair broken", seconds: 30);
            await Task.Delay(Settle * 2.5);
            Assert.True(b.Arrays.Serves("arr0"));
            var waiting = b.ArrayService.Status().Arrays.Single(x => x.Name == "arr0");
            Assert.StartsWith("waiting: ", waiting.Failback);
            Assert.Equal(["arr0"], b.Info().Failback!.Pending);

            // Healed: the pair forms again, settles, and B moves arr0 to A through the ordinary move.
            linkB.Heal();
            await Until(() => a.Arrays.Serves("arr0") && !b.Arrays.Serves("arr0"), "B to give arr0 back to A", seconds: 30);
            await Until(() => b.Info().Failback is { State: "none" }, "B's next evaluation to find nothing pending", seconds: 30);
            Assert.Equal(1L, b.Info().Failback!.FailBacks);
            var back = a.ArrayService.Status().Arrays.Single(x => x.Name == "arr0");
            Assert.Equal(("A", "A", null), (back.Owner, back.PreferredOwner, back.Failback));
            // The shelf names A owner: the move's last step.
            Assert.Equal("A", shelf.Status().Claim(ArrayManager.SerialOf(Guid.Parse(back.Uuid)))!.Owner);

            // Nothing acknowledged was lost on the way; A serves vol0 from its own cache.
            Assert.True(a.Volumes.TryGetVolume("vol0", out var onA));
            Assert.IsType<CachedVolume>(onA);
            var read = new byte[first.Length];
            await onA.ReadAsync(0, read);
            Assert.Equal(first, read);
        }
        finally
        {
            await b.DisposeAsync();
            await a.DisposeAsync();
        }
    }

    // A loaded machine (tests run in parallel) can miss a mirror status deadline: the pair then re-forms, and a move
    // refused meanwhile ("not paired") is asked again.
    static async Task<ArrayInfo> MoveWhenPairedAsync(PairController from, string array, string to)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            try { return await from.MoveArrayAsync(array, to, CancellationToken.None); }
            catch (ManagementException e) when (e.Kind == ManagementErrorKind.Conflict && DateTime.UtcNow < until) { await Task.Delay(50); }
        }
    }

    static byte[] Pattern(int seed, int bytes)
    {
        var data = new byte[bytes];
        new System.Random(seed).NextBytes(data);
        return data;
    }

}
