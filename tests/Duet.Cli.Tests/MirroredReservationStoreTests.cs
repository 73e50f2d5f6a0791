using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Duet.Iscsi.Scsi;

namespace Duet.Cli.Tests;

/// <summary>The controller's reservation store on its own: what it sends, in which order, what it applies,
/// and what it keeps for APTPL (the peer and the file are fakes; no link, no clock).</summary>
[Trait("Claim", "ISCSI-FO")]
public sealed class MirroredReservationStoreTests
{
    sealed class Bytes : IReservationPersistence
    {
        public byte[]? Contents;
        public int Writes;
        public byte[]? Read() => Contents;
        public void Write(byte[] contents) { Contents = contents; Writes++; }
    }

    static PrSnapshot State(uint generation, bool aptpl, params ulong[] keys) =>
        new(generation, aptpl, [.. keys.Select((k, i) => new PrRegistration("iqn.test:h", (ulong)i + 1, 1, 1, k))],
            keys.Length > 0 ? PrType.WriteExclusive : PrType.None, keys.Length > 0 ? 0 : -1);

    [Fact]
    public async Task ChangesGoToThePeerOneAtATimeInOrder_AndAPeerThatIsGoneLeavesThemLocal()
    {
        var sent = new List<ReservationStateMessage>();
        var gate = new TaskCompletionSource();
        bool down = false;
        var store = new MirroredReservationStore(async m =>
        {
            if (down) throw new IclLinkDownException("down");
            sent.Add(m);
            await gate.Task;
        });
        var first = store.SaveAsync("vol0", State(1, false, 7));
        var second = store.SaveAsync("vol0", State(2, false, 7, 8));
        Assert.Equal(2u, store.Load("vol0")!.Generation);   // kept at once
        Assert.Single(sent);                                 // the second waits for the first's answer
        Assert.False(first.IsCompleted);
        gate.SetResult();
        await first;
        await second;
        Assert.Equal([1u, 2u], sent.Select(m => m.Generation));
        Assert.Equal(MirroredReservationStore.ToMessage("vol0", State(2, false, 7, 8), sync: false), sent[1]);

        down = true;
        await store.SaveAsync("vol0", State(3, false));      // completes; stays local
        Assert.Equal(2, store.Sent);
        Assert.Equal(3u, store.Load("vol0")!.Generation);
    }

    [Fact]
    public async Task AResetGoesToThePeerAfterTheChangesBeforeIt_AndOneFromThePeerIsRaised()
    {
        var order = new List<string>();
        var gate = new TaskCompletionSource();
        var store = new MirroredReservationStore(async m =>
        {
            order.Add($"state {m.Generation}");
            await gate.Task;
        }, sendUpdate: m =>
        {
            order.Add($"{m.Kind} {System.Text.Encoding.UTF8.GetString(m.Blob.Span)}");
            return ValueTask.CompletedTask;
        });
        var change = store.SaveAsync("vol0", State(1, false, 7));
        var reset = store.RelayResetAsync("vol0");
        Assert.False(reset.IsCompleted); // behind the change, which waits for the peer
        gate.SetResult();
        await change;
        await reset;
        await store.RelayResetAsync(null);  // a target reset: every volume
        Assert.Equal(["state 1", "UnitReset vol0", "UnitReset "], order);
        Assert.Equal(2, store.ResetsSent);

        var raised = new List<string?>();
        store.ResetElsewhere += v => raised.Add(v);
        store.ApplyReset("vol1");
        store.ApplyReset(null);
        Assert.Equal(["vol1", null], raised);
        Assert.Equal(1, store.Sent);
    }

    [Fact]
    public void WhatThePeerSendsReplacesOurStateAndIsRaised_ASyncCarriesEveryVolumeHeld()
    {
        var store = new MirroredReservationStore(_ => ValueTask.CompletedTask);
        var raised = new List<(string, PrSnapshot)>();
        store.Changed += (v, s) => raised.Add((v, s));
        store.Apply(MirroredReservationStore.ToMessage("vol1", State(4, false, 9), sync: false));
        Assert.Equal(9UL, store.Load("vol1")!.Registrations.Single().Key);
        Assert.Equal("vol1", raised.Single().Item1);
        _ = store.SaveAsync("vol0", State(1, false));
        Assert.Equal(["vol0", "vol1"], store.SyncMessages().Select(m => m.Volume));
        Assert.All(store.SyncMessages(), m => Assert.True(m.Sync));
        Assert.Equal(PrSnapshot.Empty.Generation, MirroredReservationStore.ToSnapshot(store.SyncMessage("other")).Generation);
    }

    [Fact]
    public async Task AptplStatesAreWrittenBeforeTheChangeCompletes_AndAreWhatANewStoreStartsFrom()
    {
        var file = new Bytes();
        var store = new MirroredReservationStore(_ => ValueTask.CompletedTask, file);
        await store.SaveAsync("vol0", State(1, false, 5));
        Assert.Equal(0, file.Writes);                         // no APTPL: nothing survives a power loss
        await store.SaveAsync("vol0", State(2, true, 5));
        store.Apply(MirroredReservationStore.ToMessage("vol1", State(3, true, 6), sync: false));
        await store.SaveAsync("vol2", State(1, false, 7));
        Assert.Equal(2, file.Writes);

        var restarted = new MirroredReservationStore(_ => ValueTask.CompletedTask, file);
        Assert.Null(restarted.LoadError);
        Assert.Equal(5UL, restarted.Load("vol0")!.Registrations.Single().Key);
        Assert.True(restarted.Load("vol1")!.Aptpl);
        Assert.Null(restarted.Load("vol2"));

        // APTPL cleared by the next REGISTER: the volume leaves the file.
        await restarted.SaveAsync("vol0", State(3, false, 5));
        var again = new MirroredReservationStore(_ => ValueTask.CompletedTask, file);
        Assert.Null(again.Load("vol0"));
        Assert.NotNull(again.Load("vol1"));
    }

    [Fact]
    public void AReservationFileThatFailsItsCheckIsNotUsed()
    {
        var states = new List<ReservationStateMessage> { MirroredReservationStore.ToMessage("vol0", State(2, true, 5, 6), sync: false) };
        var bytes = ReservationFile.Encode(states);
        Assert.True(ReservationFile.TryDecode(bytes, out var back, out _));
        Assert.Equal(states, back);
        Assert.Equal("DUETPR01"u8.ToArray(), bytes[..8]);

        var flipped = (byte[])bytes.Clone();
        flipped[30] ^= 1;
        Assert.False(ReservationFile.TryDecode(flipped, out _, out var why));
        Assert.Equal("CRC32C mismatch", why);
        Assert.False(ReservationFile.TryDecode(bytes[..^1], out _, out _));
        var store = new MirroredReservationStore(_ => ValueTask.CompletedTask, new Bytes { Contents = flipped });
        Assert.Equal("CRC32C mismatch", store.LoadError);
        Assert.Null(store.Load("vol0"));
    }

    [Fact]
    public void TheFileSurvivesBeingReopened()
    {
        var dir = Directory.CreateTempSubdirectory("duet-pr-");
        try
        {
            var path = ControllerOptions.ReservationPathFor(dir.FullName, "A");
            var file = new FileReservationPersistence(path);
            Assert.Null(file.Read());
            var bytes = ReservationFile.Encode([MirroredReservationStore.ToMessage("vol0", State(1, true, 5), sync: false)]);
            file.Write(bytes);
            file.Write(bytes);
            Assert.Equal(bytes, new FileReservationPersistence(path).Read());
            Assert.Equal(["pr-A.bin"], dir.GetFiles().Select(f => f.Name));
        }
        finally { dir.Delete(recursive: true); }
    }
}
