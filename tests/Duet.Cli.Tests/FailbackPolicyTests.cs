using Duet.Core;
using Duet.Host.Controller;

namespace Duet.Cli.Tests;

/// <summary>
/// The failback decision (issue 5) on a ticked clock: an array served here for its preferred owner, the peer,
/// goes back only with failback "auto", only while the pair is healthy, and only once it has been healthy
/// without a break for the settle time; a refused move waits another settle time; a peer that fails again
/// soon after a failback doubles the settle time.
/// </summary>
[Trait("Claim", "FO-6")]
public sealed class FailbackPolicyTests
{
    static readonly TimeSpan Settle = TimeSpan.FromSeconds(10);
    readonly ManualTimeProvider _time = new();

    static PairHealth Healthy(long generation = 1) => new(LinkUp: true, MirrorHealthy: true, PeerFenced: false, PeerRegistered: true, PeerLeaseHeld: true,
        Standby: false, SteppedDown: false, TakingOver: false, PoweringDown: false, PeerPoweringDown: false, ShelfLost: false, PairGeneration: generation);

    static readonly FailbackCandidate[] Arr0 = [new("arr0", null)];

    FailbackPolicy Auto() => new(FailbackMode.Auto, Settle, "A", _time);

    [Fact]
    public void NothingIsPendingWhenEveryArrayIsOnItsPreferredOwner()
    {
        var d = Auto().Evaluate(Healthy(), []);
        Assert.Equal("none", d.State);
        Assert.Empty(d.Pending);
    }

    [Fact]
    public void WithManualFailbackTheArrayIsShownPendingAndNeverMoved()
    {
        var policy = new FailbackPolicy(FailbackMode.Manual, Settle, "A", _time);
        for (int i = 0; i < 5; i++)
        {
            var d = policy.Evaluate(Healthy(), Arr0);
            Assert.Equal("manual", d.State);
            Assert.Equal(["arr0"], d.Pending);
            Assert.Empty(d.MoveNow);
            _time.Advance(Settle);
        }
        Assert.Contains("duet array move", policy.Last.Waiting);
    }

    [Fact]
    public void AnArrayGoesBackOnlyAfterThePairHasBeenHealthyForTheSettleTime()
    {
        var policy = Auto();
        // The peer restarted as standby: fenced, then registered but without a lease, then paired.
        var fenced = Healthy() with { PeerFenced = true };
        Assert.Equal(("waiting", "controller A is fenced at the shelf (down, or restarting as standby)"), (policy.Evaluate(fenced, Arr0).State, policy.Last.Waiting));
        _time.Advance(Settle * 3);
        Assert.Equal("waiting", policy.Evaluate(Healthy() with { PeerLeaseHeld = false }, Arr0).State);
        Assert.Contains("holds no lease", policy.Last.Waiting);
        Assert.Equal("waiting", policy.Evaluate(Healthy() with { MirrorHealthy = false }, Arr0).State);

        // Healthy from now: the settle time counts from here, not from the time the peer came back.
        var d = policy.Evaluate(Healthy(), Arr0);
        Assert.Equal(("settling", Settle), (d.State, d.DueIn));
        _time.Advance(Settle - TimeSpan.FromMilliseconds(1));
        d = policy.Evaluate(Healthy(), Arr0);
        Assert.Equal(("settling", TimeSpan.FromMilliseconds(1)), (d.State, d.DueIn));
        Assert.Empty(d.MoveNow);
        _time.Advance(TimeSpan.FromMilliseconds(1));
        d = policy.Evaluate(Healthy(), Arr0);
        Assert.Equal("moving", d.State);
        Assert.Equal(["arr0"], d.MoveNow);
    }

    [Fact]
    public void ABreakOfThePairRestartsTheSettleTimeEvenWhenNoEvaluationSawIt()
    {
        var policy = Auto();
        policy.Evaluate(Healthy(generation: 1), Arr0);
        _time.Advance(Settle - TimeSpan.FromSeconds(1));
        // The link dropped and the pair formed again between two heartbeats: only the generation tells.
        var d = policy.Evaluate(Healthy(generation: 3), Arr0);
        Assert.Equal(("settling", Settle), (d.State, d.DueIn));
        _time.Advance(Settle - TimeSpan.FromSeconds(1));
        // A break seen as such restarts it too.
        policy.Evaluate(Healthy(generation: 3) with { LinkUp = false }, Arr0);
        _time.Advance(TimeSpan.FromSeconds(5));
        d = policy.Evaluate(Healthy(generation: 3), Arr0);
        Assert.Equal(("settling", Settle), (d.State, d.DueIn));
        _time.Advance(Settle);
        Assert.Equal(["arr0"], policy.Evaluate(Healthy(generation: 3), Arr0).MoveNow);
    }

    [Theory]
    [InlineData("standby")]
    [InlineData("stepped down")]
    [InlineData("taking over")]
    [InlineData("powering down")]
    [InlineData("peer powering down")]
    [InlineData("shelf lost")]
    [InlineData("peer not registered")]
    public void NothingMovesWhileAnyPartOfThePairIsUnhealthy(string what)
    {
        var policy = Auto();
        var sick = what switch
        {
            "standby" => Healthy() with { Standby = true },
            "stepped down" => Healthy() with { SteppedDown = true },
            "taking over" => Healthy() with { TakingOver = true },
            "powering down" => Healthy() with { PoweringDown = true },
            "peer powering down" => Healthy() with { PeerPoweringDown = true },
            "shelf lost" => Healthy() with { ShelfLost = true },
            _ => Healthy() with { PeerRegistered = false },
        };
        for (int i = 0; i < 4; i++)
        {
            var d = policy.Evaluate(sick, Arr0);
            Assert.Equal("waiting", d.State);
            Assert.Empty(d.MoveNow);
            _time.Advance(Settle);
        }
    }

    [Fact]
    public void ARebuildingArrayWaitsWhileTheOthersGo()
    {
        var policy = Auto();
        FailbackCandidate[] two = [new("arr0", "array arr0 is rebuilding"), new("arr2", null)];
        policy.Evaluate(Healthy(), two);
        _time.Advance(Settle);
        var d = policy.Evaluate(Healthy(), two);
        Assert.Equal(["arr0", "arr2"], d.Pending);
        Assert.Equal(["arr2"], d.MoveNow);
        d = policy.Evaluate(Healthy(), [two[0]]);
        Assert.Equal(("waiting", "array arr0 is rebuilding"), (d.State, d.Waiting));
    }

    [Fact]
    public void ARefusedMoveIsTriedAgainOnlyAfterAnotherSettleTime()
    {
        var policy = Auto();
        policy.Evaluate(Healthy(), Arr0);
        _time.Advance(Settle);
        Assert.Equal("moving", policy.Evaluate(Healthy(), Arr0).State);
        policy.Failed("controller A is not registered at the shelf yet");
        Assert.Equal("settling", policy.Evaluate(Healthy(), Arr0).State);
        _time.Advance(Settle - TimeSpan.FromMilliseconds(1));
        Assert.Equal("settling", policy.Evaluate(Healthy(), Arr0).State);
        _time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal("moving", policy.Evaluate(Healthy(), Arr0).State);
        policy.Moved();
        Assert.Null(policy.LastError);
        Assert.Equal(1, policy.FailBacks);
    }

    [Fact]
    public void APeerTakenOverSoonAfterAFailbackDoublesTheSettleTimeUpToSixteenTimes()
    {
        var policy = Auto();
        for (int round = 1; round <= 6; round++)
        {
            policy.Moved();
            _time.Advance(TimeSpan.FromSeconds(5)); // the peer dies again 5 s after it got its array back
            policy.PeerTakenOver();
            var expected = Settle * Math.Min(1 << round, FailbackPolicy.MaxBackoff);
            Assert.Equal(expected, policy.Settle);
            // And the next failback waits that long, from the next healthy moment.
            policy.Evaluate(Healthy(round), Arr0);
            _time.Advance(expected - TimeSpan.FromMilliseconds(1));
            Assert.Equal("settling", policy.Evaluate(Healthy(round), Arr0).State);
            _time.Advance(TimeSpan.FromMilliseconds(1));
            Assert.Equal("moving", policy.Evaluate(Healthy(round), Arr0).State);
        }
    }

    [Fact]
    public void ATakeoverLongAfterTheLastFailbackIsNotFlapping()
    {
        var policy = Auto();
        policy.PeerTakenOver(); // no failback yet
        Assert.Equal(Settle, policy.Settle);
        policy.Moved();
        _time.Advance(Settle * FailbackPolicy.FlapWindowSettles + TimeSpan.FromSeconds(1));
        policy.PeerTakenOver();
        Assert.Equal(Settle, policy.Settle);
    }
}
