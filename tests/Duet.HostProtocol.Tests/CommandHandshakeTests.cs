using Duet.Core;
using Duet.Interconnect.Wire;
using static Duet.HostProtocol.Tests.TestPair;

namespace Duet.HostProtocol.Tests;

public class CommandHandshakeTests
{
    static readonly TimeSpan Tick = TimeSpan.FromTicks(1);

    static byte[] Pattern(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed + i * 7))];

    [Fact, Trait("Claim", "FO-4")]
    public async Task Multicast_command_runs_ready_ready_ack_then_completion_empties_both_queues()
    {
        var pair = new TestPair();
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var data = Pattern(4096, 1);
        var request = Write(1, pair.NowMicros, 8192, data, HostRequestFlags.Multicast);

        var onB = pair.B.SubmitAsync(Command(request), routeB);
        var onA = pair.A.SubmitAsync(Command(request), routeA);
        await onA;
        await onB;

        Assert.Equal(["A: PrimaryReady", "B: SecondaryReady", "A: PrimaryAck", "A: Completed"], pair.MessageLog());
        Assert.Equal([HostCompletion.Ok(1)], routeA.Answers);
        // B answers its host's copy with the status "completed" carried: a duplicate the host drops, or the
        // answer itself should A's have been lost with its connection.
        Assert.Equal([HostCompletion.Ok(1)], routeB.Answers);
        Assert.Equal(0, pair.A.QueuedCount);
        Assert.Equal(0, pair.B.QueuedCount);
        Assert.Equal((1, 1, 1, 1, 1), (pair.A.Counters.PrimaryReadiesSent, pair.B.Counters.SecondaryReadiesSent, pair.A.Counters.AcksSent, pair.A.Counters.CompletionsSent, pair.B.Counters.CompletionsReceived));
        var back = new byte[4096];
        await pair.Volume.ReadAsync(8192, back);
        Assert.Equal(data, back);
        Assert.Equal(0, pair.FenceCalls);
    }

    [Fact, Trait("Claim", "FO-4")]
    public async Task A_tag_reused_for_another_command_is_answered_invalid_and_never_given_the_first_ones_answer()
    {
        var pair = new TestPair();
        var first = Write(7, pair.NowMicros, 0, Pattern(4096, 1), HostRequestFlags.Multicast);
        var routeA = new RecordingRoute();
        await Task.WhenAll(pair.B.SubmitAsync(Command(first), new RecordingRoute()), pair.A.SubmitAsync(Command(first), routeA));
        Assert.Equal([HostCompletion.Ok(7)], routeA.Answers);

        // The same tag for a write elsewhere: a late copy of the first would be answered from
        // memory; another command must not be (its data would never reach the volume).
        var other = Write(7, pair.NowMicros, 65536, Pattern(4096, 2), HostRequestFlags.Multicast);
        var reused = new RecordingRoute();
        await pair.A.SubmitAsync(Command(other), reused);
        Assert.Equal([HostCompletion.Error(7, HostStatus.Invalid)], reused.Answers);
        Assert.Equal(1, pair.A.Counters.TagsReused);

        // A true late copy of the first is still answered from memory.
        var late = new RecordingRoute();
        await pair.A.SubmitAsync(Command(first), late);
        Assert.Equal([HostCompletion.Ok(7)], late.Answers);
        var back = new byte[4096];
        await pair.Volume.ReadAsync(65536, back);
        Assert.Equal(new byte[4096], back);
    }

    [Fact, Trait("Claim", "FO-4")]
    public async Task Primary_ready_that_overtakes_the_secondary_copy_is_answered_when_the_copy_arrives()
    {
        var pair = new TestPair();
        var request = Write(2, pair.NowMicros, 0, Pattern(512, 2), HostRequestFlags.Multicast);
        var onA = pair.A.SubmitAsync(Command(request), new RecordingRoute());
        Assert.Equal(["A: PrimaryReady"], pair.MessageLog());
        Assert.False(onA.IsCompleted);
        var onB = pair.B.SubmitAsync(Command(request), new RecordingRoute());
        await onA;
        await onB;
        Assert.Equal(["A: PrimaryReady", "B: SecondaryReady", "A: PrimaryAck", "A: Completed"], pair.MessageLog());
        Assert.Equal(0, pair.A.Counters.ReadyTimeouts);
    }

    [Fact, Trait("Claim", "FO-3")]
    public async Task Each_controller_keeps_the_command_in_its_own_queue_until_completion()
    {
        var pair = new TestPair { HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var request = Write(3, pair.NowMicros, 0, Pattern(1024, 3), HostRequestFlags.Multicast);
        var key = Command(request).Key;
        var onA = pair.A.SubmitAsync(Command(request), new RecordingRoute());
        var onB = pair.B.SubmitAsync(Command(request), new RecordingRoute());
        await pair.UntilAsync(() => pair.A.Counters.ExecutedAsPrimary == 1, "A executes");

        Assert.True(pair.A.Holds(key));
        Assert.True(pair.B.Holds(key));

        pair.HoldA.SetResult();
        await onA;
        await onB;
        Assert.False(pair.A.Holds(key));
        Assert.False(pair.B.Holds(key));
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task Secondary_fences_a_hung_primary_at_the_limit_and_the_host_sees_no_error()
    {
        var pair = new TestPair { HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var data = Pattern(2048, 4);
        var request = Write(4, pair.NowMicros, 4096, data, HostRequestFlags.Multicast);
        var onA = pair.A.SubmitAsync(Command(request), routeA);
        var onB = pair.B.SubmitAsync(Command(request), routeB);
        await pair.UntilAsync(() => pair.A.Counters.ExecutedAsPrimary == 1, "A executes (and hangs)");

        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit - Tick);
        Assert.Equal(0, pair.FenceCalls);
        Assert.True(pair.B.Holds(Command(request).Key));

        pair.Time.Advance(Tick);
        await onB;
        Assert.Equal(1, pair.FenceCalls);
        Assert.Equal([HostCompletion.Ok(4)], routeB.Answers);
        Assert.Equal((1, 1, 1), (pair.B.Counters.LimitsReached, pair.B.Counters.TakeoversByLimit, pair.B.Counters.ExecutedAfterTakeover));
        var back = new byte[2048];
        await pair.Volume.ReadAsync(4096, back);
        Assert.Equal(data, back);

        // B's "completed" took the command out of A's queue and answered A's host connection with its status;
        // the hung primary wakes up and finishes too, but answers nobody again: each unit answers at most once.
        pair.HoldA.SetResult();
        await onA;
        Assert.Equal([HostCompletion.Ok(4)], routeA.Answers);
        Assert.Single(routeB.Answers);
        Assert.Equal(0, pair.A.QueuedCount);
        Assert.Equal(0, pair.B.QueuedCount);
    }

    // Found by the simulator's multicast hosts (--faults multicast): each of these cases used to end with the
    // secondary fencing a healthy primary at the time limit.

    [Fact, Trait("Claim", "FO-5")]
    public async Task Secondary_whose_completed_was_lost_forwards_its_copy_and_the_primary_answers_from_memory_without_a_fence()
    {
        int lost = 0;
        var pair = new TestPair { Lose = (me, m) => me == 'A' && m.Phase == Duet.Interconnect.Wire.HandshakePhase.Completed && lost++ == 0 };
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var request = Write(40, pair.NowMicros, 0, Pattern(512, 40), HostRequestFlags.Multicast);
        var onB = pair.B.SubmitAsync(Command(request), routeB);
        await pair.A.SubmitAsync(Command(request), routeA);
        Assert.Equal([HostCompletion.Ok(40)], routeA.Answers);
        Assert.True(pair.B.Holds(Command(request).Key)); // "completed" was lost on the way

        pair.Time.Advance(TimeSpan.FromMilliseconds(500)); // ReadyWait: B forwards its copy, A answers "completed" again
        await onB;
        Assert.Equal(0, pair.B.QueuedCount);
        Assert.Equal(1, pair.A.Counters.ExecutedAsPrimary);
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit);
        Assert.Equal(0, pair.FenceCalls);
        Assert.Equal(0, pair.B.Counters.LimitsReached);
    }

    [Fact, Trait("Claim", "FO-4")]
    public async Task A_multicast_retry_the_primary_remembers_is_reported_ended_to_the_secondary_whose_copy_then_never_runs()
    {
        var pair = new TestPair();
        var data = Pattern(1024, 43);
        var request = Write(43, pair.NowMicros, 0, data, HostRequestFlags.Multicast);
        // The first run: the partner hears nothing of it (it was down), so it never gets A's "completed".
        pair.LinkUp = false;
        var first = new RecordingRoute();
        await pair.A.SubmitAsync(Command(request), first);
        Assert.Equal([HostCompletion.Ok(43)], first.Answers);
        pair.LinkUp = true;

        // The host retries the tag, multicast: B holds its copy as secondary, A answers its copy from memory and tells B.
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var onB = pair.B.SubmitAsync(Command(request), routeB);
        await pair.A.SubmitAsync(Command(request), routeA);
        Assert.Equal([HostCompletion.Ok(43)], routeA.Answers);
        Assert.Contains("A: Completed", pair.MessageLog());
        // Without that, B held it to its limit, fenced A and ran it a second time.
        await onB.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal([HostCompletion.Ok(43)], routeB.Answers);
        Assert.Equal(0, pair.B.QueuedCount);
        Assert.Equal(0, pair.B.Counters.LimitsReached);
        Assert.Equal(0, pair.FenceCalls);
    }

    [Fact, Trait("Claim", "FO-4")]
    public async Task A_partners_unavailable_for_a_command_running_here_does_not_end_it_and_a_later_copy_joins_the_run()
    {
        var pair = new TestPair { HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var data = Pattern(1024, 44);
        var request = Write(44, pair.NowMicros, 0, data, HostRequestFlags.Multicast);
        var key = Command(request).Key;
        var first = new RecordingRoute();
        var onA = pair.A.SubmitAsync(Command(request), first);
        var onB = pair.B.SubmitAsync(Command(request), new RecordingRoute());
        await pair.UntilAsync(() => pair.A.Counters.ExecutedAsPrimary == 1, "A executes (and its drives hang)");

        // The partner reports the command ended "Unavailable": it did not run it (say, an earlier copy it refused).
        await pair.A.ReceiveAsync(new HandshakeMessage(HandshakePhase.Completed, key.Unit, key.HostId, key.HostTag,
            request.HostTimestampMicros, TestPair.VolumeName, ReadOnlyMemory<byte>.Empty) { Status = (byte)HostStatus.Unavailable });
        Assert.True(pair.A.Holds(key));
        Assert.Empty(first.Answers);

        // The host sends the tag again: the copy joins the run under way, which answers both; it does not run twice.
        var again = new RecordingRoute();
        var onAgain = pair.A.SubmitAsync(Command(request), again);
        pair.HoldA.SetResult();
        await onA.WaitAsync(TimeSpan.FromSeconds(10));
        await onAgain.WaitAsync(TimeSpan.FromSeconds(10));
        await onB.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(1, pair.A.Counters.ExecutedAsPrimary);
        Assert.Equal([HostCompletion.Ok(44)], first.Answers);
        Assert.Equal([HostCompletion.Ok(44)], again.Answers);
        var back = new byte[1024];
        await pair.Volume.ReadAsync(0, back);
        Assert.Equal(data, back);
    }

    [Fact, Trait("Claim", "FO-6")]
    public async Task Multicast_copy_lost_on_the_way_to_the_primary_is_forwarded_by_the_secondary_and_run_without_a_fence()
    {
        var pair = new TestPair();
        var routeB = new RecordingRoute();
        var data = Pattern(1024, 41);
        var request = Write(41, pair.NowMicros, 0, data, HostRequestFlags.Multicast);
        var onB = pair.B.SubmitAsync(Command(request), routeB); // the host's copy to A never arrives
        Assert.Empty(pair.MessageLog());

        pair.Time.Advance(TimeSpan.FromMilliseconds(500));
        await onB;
        Assert.Equal(["B: ForwardedFrame", "A: PrimaryReady", "B: SecondaryReady", "A: PrimaryAck", "A: Completed"], pair.MessageLog());
        Assert.Equal([HostCompletion.Ok(41)], routeB.Answers); // A had no host: "completed" carried the answer
        Assert.Equal(0, pair.FenceCalls);
        var back = new byte[1024];
        await pair.Volume.ReadAsync(0, back);
        Assert.Equal(data, back);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task Command_held_as_secondary_runs_where_its_array_moved_and_nobody_is_fenced()
    {
        var pair = new TestPair();
        var routeB = new RecordingRoute();
        var request = Write(42, pair.NowMicros, 0, Pattern(512, 42), HostRequestFlags.Multicast);
        var onB = pair.B.SubmitAsync(Command(request), routeB); // B is secondary; A, the owner, never gets its copy
        pair.Owner = 'B';                                      // the array moves to B
        pair.LinkUp = false;                                   // and B's forwarded copies do not reach A
        pair.Time.Advance(TimeSpan.FromMilliseconds(500));
        Assert.Empty(routeB.Answers);                          // not at the forward tick: A may have run it
        // To the limit exactly: a jump past it would make B's limit timer fire late, which B takes for a pause of its
        // own and answers by asking once more (a ReadyWait the test would then have to give as well).
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit - TimeSpan.FromMilliseconds(500));
        await onB.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal([HostCompletion.Ok(42)], routeB.Answers);
        Assert.Equal(0, pair.FenceCalls);
        Assert.Equal(0, pair.B.Counters.LimitsReached);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task A_controller_that_may_hold_no_command_answers_unavailable_and_queues_nothing()
    {
        // A standby (fenced, waiting to be let back in) cannot run a command or take over; holding one as
        // secondary, it would time out against a primary that cannot reach it and fence it once let back in.
        var pair = new TestPair { MayHoldB = false };
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var request = Write(43, pair.NowMicros, 0, Pattern(512, 43), HostRequestFlags.Multicast);
        await pair.B.SubmitAsync(Command(request), routeB);
        Assert.Equal([HostCompletion.Error(43, HostStatus.Unavailable)], routeB.Answers);
        Assert.Equal(0, pair.B.QueuedCount);
        var onA = pair.A.SubmitAsync(Command(request), routeA);
        pair.Time.Advance(TimeSpan.FromMilliseconds(500)); // no "ready" from B: A runs it alone
        await onA;
        Assert.Equal([HostCompletion.Ok(43)], routeA.Answers);
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit * 2);
        Assert.Equal(0, pair.FenceCalls);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task A_controller_that_stepped_down_with_commands_queued_runs_none_and_answers_unavailable()
    {
        // Fenced while hung, it wakes with its queue: its catalog may no longer name the volume, and an answer
        // such as NoSuchVolume would be final for the host and recorded as if the write had run (seed 119 of
        // the simulator's --faults failover,multicast --ops 500: 'ran 2 times').
        var pair = new TestPair(durable: true);
        var routeA = new RecordingRoute();
        var request = Write(46, pair.NowMicros, 0, Pattern(512, 46), HostRequestFlags.Multicast);
        var onA = pair.A.SubmitAsync(Command(request), routeA); // waits for B's "ready", which never comes
        pair.MayHoldA = false;                                    // A steps down meanwhile
        pair.Time.Advance(TimeSpan.FromMilliseconds(500));
        await onA;
        Assert.Equal([HostCompletion.Error(46, HostStatus.Unavailable)], routeA.Answers);
        Assert.Equal((0L, 0L), (pair.A.Counters.ExecutedAsPrimary, pair.A.Counters.TableRecords));
        var back = new byte[512];
        await pair.Volume.ReadAsync(0, back);
        Assert.Equal(new byte[512], back);
    }

    [Fact, Trait("Claim", "FO-4")]
    public async Task Two_primaries_after_a_move_the_old_owner_steps_back_and_the_write_runs_once()
    {
        // The array moves from A to B between the two copies' arrivals: both take the command as primary.
        // Running both would apply the write twice, the second perhaps after the host wrote the blocks again
        // (seed 33 of the simulator's --faults failover,multicast --ops 300: 'ran 2 times').
        var pair = new TestPair();
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var request = Write(45, pair.NowMicros, 0, Pattern(512, 45), HostRequestFlags.Multicast);
        var onA = pair.A.SubmitAsync(Command(request), routeA);
        pair.Owner = 'B';
        await pair.B.SubmitAsync(Command(request), routeB);
        Assert.Equal([HostCompletion.Ok(45)], routeB.Answers);
        Assert.Equal([HostCompletion.Ok(45)], routeA.Answers); // A stepped back; B's "completed" answered its copy
        pair.Time.Advance(TimeSpan.FromMilliseconds(500));
        await onA;
        Assert.Equal((0L, 1L), (pair.A.Counters.ExecutedAsPrimary, pair.B.Counters.ExecutedAsPrimary));
        Assert.Equal(1, pair.A.Counters.RoleConflicts);
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit * 2);
        Assert.Equal(0, pair.FenceCalls);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task A_secondary_told_the_primary_answered_unavailable_answers_its_host_so_and_the_host_retries_at_once()
    {
        // Its drives unreachable (shelf path lost: PathDown), the primary runs nothing and answers Unavailable.
        Assert.Equal(HostStatus.Unavailable, HostCommandExecutor.ToStatus(BlockErrorKind.PathDown));
        var pair = new TestPair { RefuseA = HostStatus.Unavailable };
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var request = Write(44, pair.NowMicros, 0, Pattern(512, 44), HostRequestFlags.Multicast);
        var onB = pair.B.SubmitAsync(Command(request), routeB);
        await pair.A.SubmitAsync(Command(request), routeA);
        await onB;
        Assert.Equal([HostCompletion.Error(44, HostStatus.Unavailable)], routeA.Answers);
        Assert.Equal([HostCompletion.Error(44, HostStatus.Unavailable)], routeB.Answers); // not left waiting
        Assert.Equal(0, pair.B.QueuedCount);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task Limit_is_measured_from_the_host_timestamp()
    {
        var pair = new TestPair { HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var sentAt = pair.NowMicros;
        pair.Time.Advance(TimeSpan.FromMilliseconds(200)); // the frame spent 200 ms on its way (within the skew)
        var request = Write(5, sentAt, 0, Pattern(512, 5), HostRequestFlags.Multicast);
        _ = pair.A.SubmitAsync(Command(request), new RecordingRoute());
        var onB = pair.B.SubmitAsync(Command(request), new RecordingRoute());
        // The handshake's ready / ready / ack delivered before the clock moves: an ack that reached B only after the
        // jump would find B's limit timer fired late, as after a pause of its own, and B would wait once more.
        await pair.UntilAsync(() => pair.MessageLog().Contains("A: PrimaryAck"), "the handshake to reach the ack");

        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit - TimeSpan.FromMilliseconds(200) - Tick);
        Assert.Equal(0, pair.FenceCalls);
        pair.Time.Advance(Tick);
        await onB.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(1, pair.FenceCalls);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task A_host_clock_far_behind_cannot_make_the_secondary_fence_at_once()
    {
        var pair = new TestPair { HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var request = Write(6, pair.NowMicros - 3_600_000_000UL, 0, Pattern(512, 6), HostRequestFlags.Multicast);
        _ = pair.A.SubmitAsync(Command(request), new RecordingRoute());
        var onB = pair.B.SubmitAsync(Command(request), new RecordingRoute());
        // The handshake's ready / ready / ack delivered before the clock moves: an ack that reached B only after the
        // jump would find B's limit timer fired late, as after a pause of its own, and B would wait once more.
        await pair.UntilAsync(() => pair.MessageLog().Contains("A: PrimaryAck"), "the handshake to reach the ack");
        var skew = TimeSpan.FromMilliseconds(250);
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit - skew - Tick);
        Assert.Equal(0, pair.FenceCalls);
        pair.Time.Advance(Tick);
        await onB.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(1, pair.FenceCalls);
    }

    [Fact, Trait("Claim", "FO-6")]
    public async Task Frame_that_reaches_only_the_secondary_unit_is_forwarded_and_answered_there()
    {
        var pair = new TestPair();
        var data = Pattern(1024, 7);
        await pair.Volume.WriteAsync(0, data, fua: false);
        var routeB = new RecordingRoute();
        var request = Read(8, pair.NowMicros, 0, 1024, HostRequestFlags.None);

        await pair.B.SubmitAsync(Command(request), routeB);

        Assert.Equal(["B: ForwardedFrame", "A: PrimaryReady", "B: SecondaryReady", "A: PrimaryAck", "A: Completed"], pair.MessageLog());
        var answer = Assert.Single(routeB.Answers);
        Assert.Equal(HostStatus.Ok, answer.Status);
        Assert.Equal(data, answer.Data.ToArray()); // A had no host to answer, so "completed" carried the data
        Assert.Equal((1, 1), (pair.B.Counters.ForwardedFramesSent, pair.A.Counters.ForwardedFramesReceived));
        Assert.Equal(0, pair.A.QueuedCount);
        Assert.Equal(0, pair.B.QueuedCount);
    }

    [Fact, Trait("Claim", "FO-6")]
    public async Task Frame_that_reaches_only_the_primary_unit_is_forwarded_so_both_queues_hold_it()
    {
        var pair = new TestPair { HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var routeA = new RecordingRoute();
        var request = Write(9, pair.NowMicros, 0, Pattern(512, 9), HostRequestFlags.None);
        var onA = pair.A.SubmitAsync(Command(request), routeA);
        await pair.UntilAsync(() => pair.A.Counters.ExecutedAsPrimary == 1, "A executes");
        Assert.True(pair.B.Holds(Command(request).Key));
        pair.HoldA.SetResult();
        await onA;
        Assert.Equal(["A: ForwardedFrame", "A: PrimaryReady", "B: SecondaryReady", "A: PrimaryAck", "A: Completed"], pair.MessageLog());
        Assert.Equal([HostCompletion.Ok(9)], routeA.Answers);
        Assert.Equal(0, pair.B.QueuedCount);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task Primary_that_cannot_reach_its_partner_executes_at_once_and_the_secondary_waits_for_the_limit()
    {
        var pair = new TestPair { LinkUp = false };
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        var request = Write(10, pair.NowMicros, 0, Pattern(512, 10), HostRequestFlags.Multicast);
        await pair.A.SubmitAsync(Command(request), routeA);
        Assert.Equal([HostCompletion.Ok(10)], routeA.Answers);
        Assert.True(pair.A.Counters.PartnerUnreachable >= 1);

        var onB = pair.B.SubmitAsync(Command(request), routeB);
        Assert.Equal(0, pair.FenceCalls);
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit);
        await onB;
        Assert.Equal(1, pair.FenceCalls);
        Assert.Equal([HostCompletion.Ok(10)], routeB.Answers);
    }

    [Fact, Trait("Claim", "FO-4")]
    public async Task Primary_runs_the_command_when_the_secondary_never_answers_ready_and_a_late_copy_is_not_run_again()
    {
        var pair = new TestPair();
        var routeA = new RecordingRoute();
        var request = Write(11, pair.NowMicros, 0, Pattern(512, 11), HostRequestFlags.Multicast);
        var onA = pair.A.SubmitAsync(Command(request), routeA);
        Assert.False(onA.IsCompleted);
        pair.Time.Advance(TimeSpan.FromMilliseconds(500));
        await onA;
        Assert.Equal(1, pair.A.Counters.ReadyTimeouts);
        Assert.Equal([HostCompletion.Ok(11)], routeA.Answers);

        // The multicast copy to B arrives after all: B knows the command is done and drops it.
        var routeB = new RecordingRoute();
        await pair.B.SubmitAsync(Command(request), routeB);
        Assert.Equal(0, pair.B.QueuedCount);
        Assert.Equal(1, pair.B.Counters.Duplicates);
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit * 2);
        Assert.Equal(0, pair.FenceCalls);
    }

    [Fact, Trait("Claim", "AW-1")]
    public async Task A_late_copy_at_the_controller_only_told_completed_is_answered_with_the_status_the_message_carried()
    {
        // A answered the host itself, so its "completed" carries no completion frame, only the
        // status; B must still answer a late copy (an adapter re-sending under the same tag), or
        // the host would wait for ever. Nothing runs twice.
        var pair = new TestPair();
        var write = Write(21, pair.NowMicros, 4096, Pattern(4096, 21), HostRequestFlags.Multicast);
        var routeA = new RecordingRoute();
        await Task.WhenAll(pair.B.SubmitAsync(Command(write), new RecordingRoute()), pair.A.SubmitAsync(Command(write), routeA));
        Assert.Equal([HostCompletion.Ok(21)], routeA.Answers);

        var late = new RecordingRoute();
        await pair.B.SubmitAsync(Command(write), late);
        Assert.Equal([HostCompletion.Ok(21)], late.Answers);
        Assert.Equal(1, pair.A.Counters.ExecutedAsPrimary);
        Assert.Equal(0, pair.B.Counters.ExecutedAfterTakeover);
        Assert.Equal(0, pair.B.QueuedCount);

        // A failed read is answered with its error; a read that succeeded cannot be answered
        // without its data, so that copy is dropped (a host re-reads under a new tag).
        var bad = Read(22, pair.NowMicros, 1 << 20, 512, HostRequestFlags.Multicast);
        var good = Read(23, pair.NowMicros, 0, 512, HostRequestFlags.Multicast);
        foreach (var r in new[] { bad, good })
            await Task.WhenAll(pair.B.SubmitAsync(Command(r), new RecordingRoute()), pair.A.SubmitAsync(Command(r), new RecordingRoute()));
        var (lateBad, lateGood) = (new RecordingRoute(), new RecordingRoute());
        await pair.B.SubmitAsync(Command(bad), lateBad);
        await pair.B.SubmitAsync(Command(good), lateGood);
        Assert.Equal([HostCompletion.Error(22, HostStatus.OutOfRange)], lateBad.Answers);
        Assert.Empty(lateGood.Answers);
        Assert.Equal(3, pair.B.Counters.Duplicates);
    }

    [Fact, Trait("Claim", "AW-1")]
    public async Task A_command_the_primary_answered_unavailable_runs_when_the_host_sends_it_again_under_its_tag()
    {
        var pair = new TestPair { RefuseA = HostStatus.Unavailable };
        var data = Pattern(4096, 24);
        var write = Write(24, pair.NowMicros, 0, data, HostRequestFlags.Multicast);
        var (routeA, routeB) = (new RecordingRoute(), new RecordingRoute());
        await Task.WhenAll(pair.B.SubmitAsync(Command(write), routeB), pair.A.SubmitAsync(Command(write), routeA));
        Assert.Equal([HostCompletion.Error(24, HostStatus.Unavailable)], routeA.Answers);

        // The host re-sends it under the same tag once A serves again: A runs it (it never ran).
        pair.RefuseA = null;
        var (againA, againB) = (new RecordingRoute(), new RecordingRoute());
        await pair.B.SubmitAsync(Command(write), againB); // B answers from memory once, and forgets it
        Assert.Equal([HostCompletion.Error(24, HostStatus.Unavailable)], againB.Answers);
        var onA = pair.A.SubmitAsync(Command(write), againA);
        pair.Time.Advance(TimeSpan.FromMilliseconds(500)); // B holds no copy to be ready with
        await onA;
        Assert.Equal([HostCompletion.Ok(24)], againA.Answers);
        var back = new byte[4096];
        await pair.Volume.ReadAsync(0, back);
        Assert.Equal(data, back);
        Assert.Equal(0, pair.FenceCalls);

        // Now it is done: a further copy is answered from memory at either controller.
        var late = new RecordingRoute();
        await pair.B.SubmitAsync(Command(write), late);
        Assert.Equal([HostCompletion.Ok(24)], late.Answers);
    }

    [Fact, Trait("Claim", "AW-1")]
    public async Task A_command_refused_unavailable_through_the_secondary_unit_runs_when_the_host_sends_it_there_again()
    {
        var pair = new TestPair { RefuseA = HostStatus.Unavailable };
        var data = Pattern(4096, 25);
        var write = Write(25, pair.NowMicros, 8192, data, HostRequestFlags.None); // to B's unit only: B forwards it
        var first = new RecordingRoute();
        await pair.B.SubmitAsync(Command(write), first);
        Assert.Equal([HostCompletion.Error(25, HostStatus.Unavailable)], first.Answers);

        pair.RefuseA = null;
        var second = new RecordingRoute();
        await pair.B.SubmitAsync(Command(write), second); // answered from memory once, then forgotten
        Assert.Equal([HostCompletion.Error(25, HostStatus.Unavailable)], second.Answers);
        var third = new RecordingRoute();
        await pair.B.SubmitAsync(Command(write), third);  // queued, forwarded, run by A this time
        Assert.Equal([HostCompletion.Ok(25)], third.Answers);
        var back = new byte[4096];
        await pair.Volume.ReadAsync(8192, back);
        Assert.Equal(data, back);
        Assert.Equal(2, pair.A.Counters.ExecutedAsPrimary); // refused once, run once
        Assert.Equal(0, pair.FenceCalls);
        Assert.Equal(0, pair.A.QueuedCount + pair.B.QueuedCount);
    }

    [Fact, Trait("Claim", "FO-4")]
    public async Task Errors_are_completions_and_clear_both_queues()
    {
        var pair = new TestPair();
        var routeA = new RecordingRoute();
        var request = Read(12, pair.NowMicros, 1 << 20, 512, HostRequestFlags.Multicast);
        var onB = pair.B.SubmitAsync(Command(request), new RecordingRoute());
        await pair.A.SubmitAsync(Command(request), routeA);
        await onB;
        Assert.Equal([HostCompletion.Error(12, HostStatus.OutOfRange)], routeA.Answers);
        Assert.Equal(0, pair.B.QueuedCount);
    }

    [Fact, Trait("Claim", "FO-5")]
    public async Task After_a_takeover_every_command_held_as_secondary_runs_at_once()
    {
        var pair = new TestPair { HoldA = new(TaskCreationOptions.RunContinuationsAsynchronously) };
        var first = Write(13, pair.NowMicros, 0, Pattern(512, 13), HostRequestFlags.Multicast);
        _ = pair.A.SubmitAsync(Command(first), new RecordingRoute());
        var onB1 = pair.B.SubmitAsync(Command(first), new RecordingRoute());
        // Before time moves, the handshake must have run up to A's execution (which hangs): B then holds the
        // command and its limit is armed. Advancing first let a loaded machine arm it after the last Advance,
        // due at once but never fired, and the test hung (seen twice in fresh-clone CI).
        await pair.UntilAsync(() => pair.A.Counters.ExecutedAsPrimary == 1, "A executes the first (and hangs)");
        pair.Time.Advance(TimeSpan.FromMilliseconds(1000));
        var second = Write(14, pair.NowMicros, 512, Pattern(512, 14), HostRequestFlags.Multicast);
        _ = pair.A.SubmitAsync(Command(second), new RecordingRoute());
        var onB2 = pair.B.SubmitAsync(Command(second), new RecordingRoute());
        await pair.UntilAsync(() => pair.A.Counters.ExecutedAsPrimary == 2, "A executes the second (and hangs)");

        pair.Time.Advance(TimeSpan.FromMilliseconds(500)); // the first command's limit only
        await onB1;
        await onB2;
        Assert.Equal(1, pair.FenceCalls);
        // Each ran once on B: the takeover runs what B held, unless B's own tick (its copy's ReadyWait, due at the
        // same moment) found the array already B's and ran it first.
        Assert.Equal(2, pair.B.Counters.ExecutedAfterTakeover + pair.B.Counters.ExecutedAsPrimary);
        Assert.Equal(0, pair.B.QueuedCount);
    }

    [Fact]
    public void Options_are_validated()
    {
        var pair = new TestPair();
        Assert.Throws<ArgumentOutOfRangeException>(() => new CommandHandshake(new CommandHandshakeOptions
        {
            SendToPartner = _ => ValueTask.CompletedTask,
            IsPrimaryFor = _ => true,
            Execute = (c, _) => ValueTask.FromResult(HostCompletion.Ok(c.Request.HostTag)),
            FencePrimaryAndTakeOver = _ => Task.CompletedTask,
            TimeLimit = TimeSpan.FromSeconds(1),
            ReadyWait = TimeSpan.FromSeconds(2),
            Time = pair.Time,
        }));
    }
}
