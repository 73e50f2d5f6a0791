using Duet.Interconnect.Wire;
using static Duet.HostProtocol.Tests.TestPair;

namespace Duet.HostProtocol.Tests;

/// <summary>
/// Idempotent re-issue (host-protocol.md, "Finished commands survive a restart"): a write re-issued under
/// its tag after the handshake's memory is gone — a restart, a power cut, a takeover — is answered with
/// the status it had and is not applied again, because each controller recorded it in its NVRAM table of
/// finished host commands (and the partner's copy) before answering. The scenario of every test: host 7
/// writes X under tag T, host 8 then writes Y over the same block, and host 7 re-issues T with X: the
/// block must still read Y. Time is the pair's manual clock; nothing sleeps.
/// </summary>
[Trait("Claim", "AW-1")]
public class IdempotentReissueTests
{
    const ulong T = 1, U = 1;
    const ulong Host7 = 7, Host8 = 8;

    static byte[] Pattern(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed + i * 7))];

    static readonly byte[] X = Pattern(4096, 1), Y = Pattern(4096, 2);

    /// <summary>T with X from host 7, then U with Y from host 8, both multicast and answered Ok.</summary>
    static async Task WriteXThenYAsync(TestPair pair)
    {
        var t = Write(T, pair.NowMicros, 0, X, HostRequestFlags.Multicast, Host7);
        var first = new RecordingRoute();
        await Task.WhenAll(pair.B.SubmitAsync(Command(t), new RecordingRoute()), pair.A.SubmitAsync(Command(t), first));
        Assert.Equal([HostCompletion.Ok(T)], first.Answers);
        var u = Write(U, pair.NowMicros, 0, Y, HostRequestFlags.Multicast, Host8);
        var second = new RecordingRoute();
        await Task.WhenAll(pair.B.SubmitAsync(Command(u), new RecordingRoute()), pair.A.SubmitAsync(Command(u), second));
        Assert.Equal([HostCompletion.Ok(U)], second.Answers);
    }

    static async Task<byte[]> BlockAsync(TestPair pair, long offset = 0)
    {
        var back = new byte[4096];
        await pair.Volume.ReadAsync(offset, back);
        return back;
    }

    [Fact]
    public async Task A_write_reissued_after_both_controllers_restart_is_answered_with_its_status_and_not_applied_again()
    {
        var pair = new TestPair(durable: true);
        await WriteXThenYAsync(pair);
        Assert.Equal((2, 2), (pair.TagsA!.OwnCount, pair.TagsB!.PeerCount));

        pair.Restart('A'); // a power cut: both lose their memory; their NVRAM is read back
        pair.Restart('B');
        Assert.Equal((2, 0), (pair.TagsA!.RecoveredOwn, pair.TagsA.RecoveredPeer));
        Assert.Equal((0, 2), (pair.TagsB!.RecoveredOwn, pair.TagsB.RecoveredPeer));

        var reissue = Write(T, pair.NowMicros, 0, X, HostRequestFlags.Multicast, Host7);
        var (onA, onB) = (new RecordingRoute(), new RecordingRoute());
        await pair.A.SubmitAsync(Command(reissue), onA);
        Assert.Equal([HostCompletion.Ok(T)], onA.Answers); // from A's own table
        Assert.Equal(["A: Completed"], pair.MessageLog()[^1..]); // B has a copy coming: A tells it how T ended
        await pair.B.SubmitAsync(Command(reissue), onB);
        Assert.Equal([HostCompletion.Ok(T)], onB.Answers); // from memory, after A's "completed"

        Assert.Equal(Y, await BlockAsync(pair));
        Assert.Equal((0L, 1L, 1L), (pair.A.Counters.ExecutedAsPrimary, pair.A.Counters.TableRecalls, pair.B.Counters.Duplicates));
        Assert.Equal((0, 0, 0), (pair.A.QueuedCount, pair.B.QueuedCount, pair.FenceCalls));

        // B's copy of A's table answers on its own too: a copy that reaches only B, as secondary.
        var onlyB = new RecordingRoute();
        pair.Restart('B');
        await pair.B.SubmitAsync(Command(reissue), onlyB);
        Assert.Equal([HostCompletion.Ok(T)], onlyB.Answers);
        Assert.Equal((1L, 0), (pair.B.Counters.TableRecalls, pair.B.QueuedCount));

        // Remembered now: a further copy is answered from memory.
        var late = new RecordingRoute();
        await pair.A.SubmitAsync(Command(reissue), late);
        Assert.Equal([HostCompletion.Ok(T)], late.Answers);
        Assert.Equal(1L, pair.A.Counters.TableRecalls);
        Assert.Equal(1L, pair.A.Counters.Duplicates);

        // Memory kept the digest too: the tag with other bytes at the same place is another command.
        var other = new RecordingRoute();
        _ = pair.A.SubmitAsync(Command(Write(T, pair.NowMicros, 0, Pattern(4096, 3), HostRequestFlags.Multicast, Host7)), other);
        await AnsweredAsync(pair, other, "A answers the reused tag");
        Assert.Equal([HostCompletion.Error(T, HostStatus.Invalid)], other.Answers);
        Assert.Equal(Y, await BlockAsync(pair));
    }

    [Fact]
    public async Task With_a_table_memory_tells_a_write_of_other_bytes_under_a_finished_tag_from_a_retry()
    {
        var pair = new TestPair(durable: true);
        await WriteXThenYAsync(pair);
        var retry = new RecordingRoute();
        await pair.A.SubmitAsync(Command(Write(U, pair.NowMicros, 0, Y, HostRequestFlags.Multicast, Host8)), retry);
        Assert.Equal([HostCompletion.Ok(U)], retry.Answers);
        var other = new RecordingRoute();
        _ = pair.A.SubmitAsync(Command(Write(U, pair.NowMicros, 0, X, HostRequestFlags.Multicast, Host8)), other);
        await AnsweredAsync(pair, other, "A answers the reused tag");
        Assert.Equal([HostCompletion.Error(U, HostStatus.Invalid)], other.Answers);
        Assert.Equal((0L, 1L), (pair.A.Counters.TableRecalls, pair.A.Counters.TagsReused));
        Assert.Equal(Y, await BlockAsync(pair));
    }

    [Fact]
    public async Task A_primary_that_lost_the_entry_does_not_run_a_reissue_its_partner_knows_finished()
    {
        var pair = new TestPair(durable: true);
        await WriteXThenYAsync(pair);
        // A's entry for T (sequence 1) is torn (say); both restart. Only B's copy still knows T.
        var nvramA = Duet.Cache.Nvram.NvramFile.OpenOrCreate(pair.StoreA!, Layout, "A", PairId);
        nvramA.Own.TagEntry(1)[20] ^= 0x01;
        pair.Restart('A');
        pair.Restart('B');
        Assert.Single(pair.TagsA!.Skipped);

        var reissue = Write(T, pair.NowMicros, 0, X, HostRequestFlags.Multicast, Host7);
        var (onA, onB) = (new RecordingRoute(), new RecordingRoute());
        var atA = pair.A.SubmitAsync(Command(reissue), onA); // queued: A waits for B's "ready"
        await pair.B.SubmitAsync(Command(reissue), onB);    // B finds T in its copy, answers, tells A
        Assert.Equal([HostCompletion.Ok(T)], onB.Answers);
        Assert.Equal([HostCompletion.Ok(T)], onA.Answers); // A's copy is answered with the status "completed" carried
        Assert.False(pair.A.Holds(Command(reissue).Key));

        pair.Time.Advance(pair.A.TimeLimit); // past A's ReadyWait: A would run T now if it still held it
        await atA;
        Assert.Equal(0L, pair.A.Counters.ExecutedAsPrimary);
        Assert.Equal(Y, await BlockAsync(pair));
        Assert.Equal(0, pair.FenceCalls);
    }

    [Fact]
    public async Task A_tag_reused_after_a_restart_for_another_write_is_answered_invalid_and_not_applied()
    {
        var pair = new TestPair(durable: true);
        await WriteXThenYAsync(pair);
        pair.Restart('A');
        pair.Restart('B');

        // Elsewhere on the volume, and at the same place with other bytes: neither is T.
        foreach (var (offset, data) in new[] { (65536L, X), (0L, Pattern(4096, 3)) })
        {
            var other = Write(T, pair.NowMicros, offset, data, HostRequestFlags.Multicast, Host7);
            var route = new RecordingRoute();
            _ = pair.A.SubmitAsync(Command(other), route);
            await AnsweredAsync(pair, route, "A answers the reused tag");
            Assert.Equal([HostCompletion.Error(T, HostStatus.Invalid)], route.Answers);
        }
        Assert.Equal(2L, pair.A.Counters.TagsReused);
        Assert.Equal(0L, pair.A.Counters.ExecutedAsPrimary);
        Assert.Equal(Y, await BlockAsync(pair));
        Assert.Equal(new byte[4096], await BlockAsync(pair, 65536));

        // And a read under a write's tag is another command too.
        var read = new RecordingRoute();
        _ = pair.A.SubmitAsync(Command(Read(T, pair.NowMicros, 0, 4096, HostRequestFlags.Multicast)), read);
        await AnsweredAsync(pair, read, "A answers the read under a write's tag");
        Assert.Equal([HostCompletion.Error(T, HostStatus.Invalid)], read.Answers);
    }

    [Fact]
    public async Task The_write_is_in_the_table_and_on_its_way_to_the_partner_before_the_host_is_answered()
    {
        var pair = new TestPair(durable: true);
        int ownAtAnswer = -1, partnersAtAnswer = -1;
        var route = new CallbackRoute(() =>
        {
            ownAtAnswer = pair.TagsA!.OwnCount;
            partnersAtAnswer = pair.TagsB!.PeerCount;
        });
        var t = Write(T, pair.NowMicros, 0, X, HostRequestFlags.Multicast, Host7);
        await Task.WhenAll(pair.B.SubmitAsync(Command(t), new RecordingRoute()), pair.A.SubmitAsync(Command(t), route));

        Assert.Equal((1, 1), (ownAtAnswer, partnersAtAnswer));
        Assert.Equal(["A: PrimaryReady", "B: SecondaryReady", "A: PrimaryAck", "A: HostTagEntries", "A: Completed"], pair.MessageLog());
        Assert.Equal(1L, pair.A.Counters.TableRecords);

        // Reads and flushes change nothing that running them again could undo: not recorded.
        await pair.A.SubmitAsync(Command(Read(2, pair.NowMicros, 0, 512, default)), new RecordingRoute());
        await pair.A.SubmitAsync(Command(new HostRequest(HostOpcode.Flush, default, Host7, 3, pair.NowMicros, 0, 0, ReadOnlyMemory<byte>.Empty)), new RecordingRoute());
        Assert.Equal(1, pair.TagsA!.OwnCount);
    }

    [Fact]
    public async Task After_a_takeover_the_survivor_does_not_run_again_a_write_the_dead_primary_ran_and_answered()
    {
        // A runs T and answers host 7, and its "completed" for T is lost (A dies right after sending it,
        // as far as B is concerned): B still holds T as secondary. A then runs host 8's U over the same
        // block, and dies. At T's time limit B fences A and takes over: it must not run T.
        var pair = new TestPair(durable: true)
        {
            Lose = (from, m) => from == 'A' && m.Phase == HandshakePhase.Completed && m.HostId == Host7,
        };
        var t = Write(T, pair.NowMicros, 0, X, HostRequestFlags.Multicast, Host7);
        var (onA, onB) = (new RecordingRoute(), new RecordingRoute());
        var heldByB = pair.B.SubmitAsync(Command(t), onB);
        await pair.A.SubmitAsync(Command(t), onA);
        Assert.Equal([HostCompletion.Ok(T)], onA.Answers);
        Assert.True(pair.B.Holds(Command(t).Key));

        var u = Write(U, pair.NowMicros, 0, Y, HostRequestFlags.Multicast, Host8);
        await Task.WhenAll(pair.B.SubmitAsync(Command(u), new RecordingRoute()), pair.A.SubmitAsync(Command(u), new RecordingRoute()));
        Assert.Equal(Y, await BlockAsync(pair));

        pair.A.Stop(); // A dies
        pair.LinkUp = false;
        pair.Time.Advance(CommandHandshakeOptions.DefaultTimeLimit);
        await heldByB;

        Assert.Equal(1, pair.FenceCalls);
        Assert.Equal([HostCompletion.Ok(T)], onB.Answers);
        Assert.Equal((0L, 1L), (pair.B.Counters.ExecutedAfterTakeover, pair.B.Counters.TableRecalls));
        Assert.Equal(Y, await BlockAsync(pair));

        // Host 7 never heard B's answer (say) and re-issues T to B, which serves the volume now.
        pair.Restart('B');
        var reissue = new RecordingRoute();
        await pair.B.SubmitAsync(Command(Write(T, pair.NowMicros, 0, X, default, Host7)), reissue);
        Assert.Equal([HostCompletion.Ok(T)], reissue.Answers);
        Assert.Equal(0L, pair.B.Counters.ExecutedAsPrimary);
        Assert.Equal(Y, await BlockAsync(pair));
    }

    [Fact]
    public async Task A_forwarded_reissue_the_primary_finds_in_its_table_is_answered_to_the_host_through_the_partner()
    {
        // The host reaches only B's unit (FO-6). B's copy of A's table misses T (the pair was not formed
        // when A ran it), so after a power cut B forwards the re-issue to A; A finds T in its own table and
        // tells B how it ended, and B answers the host: no run, no time limit, no fence.
        var pair = new TestPair(durable: true) { MirrorTags = false };
        await WriteXThenYAsync(pair);
        pair.Restart('A');
        pair.Restart('B');
        Assert.Equal(0, pair.TagsB!.PeerCount);

        var onB = new RecordingRoute();
        var held = pair.B.SubmitAsync(Command(Write(T, pair.NowMicros, 0, X, default, Host7)), onB);
        await AnsweredAsync(pair, onB, "B answers the host from A's word");
        await held;

        Assert.Equal([HostCompletion.Ok(T)], onB.Answers);
        Assert.Equal(0, pair.B.QueuedCount);
        Assert.Equal((0L, 1L), (pair.A.Counters.ExecutedAsPrimary, pair.A.Counters.TableRecalls));
        Assert.Equal(0, pair.FenceCalls);
        Assert.Equal(Y, await BlockAsync(pair));
        Assert.Contains("A: Completed", pair.MessageLog());
    }

    /// <summary>Until <paramref name="route"/> has an answer (event by event; a broken build fails after a
    /// real-time bound instead of hanging on a wait the manual clock would have to end).</summary>
    static Task AnsweredAsync(TestPair pair, RecordingRoute route, string what) => pair.UntilAsync(() => route.Answers.Count > 0, what);

    /// <summary>A host connection that runs <paramref name="onAnswer"/> as it is answered.</summary>
    sealed class CallbackRoute(Action onAnswer) : IHostCompletionRoute
    {
        public ValueTask<bool> TrySendAsync(HostCompletion completion)
        {
            onAnswer();
            return ValueTask.FromResult(true);
        }
    }
}
