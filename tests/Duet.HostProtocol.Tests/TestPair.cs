using Duet.Cache;
using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Interconnect.Wire;

namespace Duet.HostProtocol.Tests;

/// <summary>
/// Two controllers' handshakes wired to each other in memory. Every message is encoded and
/// decoded on the way (so the ICL codec is in the loop) and logged. A owns the volume (primary)
/// until B takes over. Time is a ManualTimeProvider the test ticks.
///
/// With <c>durable: true</c> each controller also has its table of finished host commands in an
/// NVRAM store (the controller's <see cref="HostTagTable"/>), whose entries go to the partner's copy
/// through the ICL codec; <see cref="Restart"/> is a crash and restart of one controller: the
/// handshake's memory is gone, the NVRAM is read back.
/// </summary>
sealed class TestPair
{
    public const string VolumeName = "vol";
    public readonly ManualTimeProvider Time = new();
    public readonly MemoryVolume Volume = new(VolumeName, 1 << 20);
    public readonly MemoryCatalog Catalog;
    public CommandHandshake A, B;
    public readonly List<string> Messages = [];
    readonly Lock _lock = new();
    readonly List<TaskCompletionSource> _progress = [];

    public bool LinkUp = true;
    /// <summary>A message for which this returns true is lost on the way (its sender dies right after sending it).</summary>
    public Func<char, HandshakeMessage, bool>? Lose;
    public char Owner = 'A';
    public int FenceCalls;
    /// <summary>When set, the controller's execute waits for this before running (a hung primary).</summary>
    public TaskCompletionSource? HoldA;
    /// <summary>When set, A answers every command with this status without running it (a serve gate that refuses).</summary>
    public HostStatus? RefuseA;
    /// <summary>When false, that controller may hold no command (a standby): its handshake refuses them.</summary>
    public bool MayHoldA = true, MayHoldB = true;

    /// <summary>When false, a table entry recorded by one controller does not reach the partner's copy
    /// (as while the pair is not formed).</summary>
    public bool MirrorTags = true;
    public static readonly NvramLayout Layout = NvramLayout.For(NvramLayout.MinTotalBytes);
    public static readonly Guid PairId = new("00000000-0000-4000-8000-00000000a6a6");
    public readonly NvramStore? StoreA, StoreB;
    public HostTagTable? TagsA, TagsB;

    public TestPair(bool durable = false)
    {
        Catalog = new MemoryCatalog(Volume);
        if (durable)
        {
            StoreA = NvramStore.For(Layout, "nvram-A");
            StoreB = NvramStore.For(Layout, "nvram-B");
            TagsA = OpenTags('A');
            TagsB = OpenTags('B');
        }
        A = Make('A', () => B!);
        B = Make('B', () => A);
    }

    HostTagTable OpenTags(char me) => new(NvramFile.OpenOrCreate(me == 'A' ? StoreA! : StoreB!, Layout, me.ToString(), PairId));

    /// <summary>A crash (kill -9, a power cut) and restart of one controller: its handshake stops and a new one
    /// starts with an empty memory; its table of finished commands is read back from its NVRAM.</summary>
    public void Restart(char me)
    {
        if (me == 'A')
        {
            A.Stop();
            if (StoreA is not null) TagsA = OpenTags('A');
            A = Make('A', () => B);
        }
        else
        {
            B.Stop();
            if (StoreB is not null) TagsB = OpenTags('B');
            B = Make('B', () => A);
        }
    }

    CommandHandshake Make(char me, Func<CommandHandshake> partner) => new(new CommandHandshakeOptions
    {
        Table = StoreA is null ? null : new NvramTable(this, me),
        Time = Time,
        IsPrimaryFor = _ => Owner == me,
        SendToPartner = async m =>
        {
            if (!LinkUp) throw new IOException("the ICL is down");
            if (Lose?.Invoke(me, m) == true)
            {
                lock (_lock) Messages.Add($"{me}: {m.Phase} (lost)");
                return;
            }
            var bytes = new byte[DuetFrame.EncodedBytes(m)];
            DuetFrame.Encode(m, bytes);
            Assert.Equal(MessageKind.HostHandshake, MessageClassifier.Classify(bytes));
            Assert.Equal(System.Buffers.OperationStatus.Done, HandshakeMessage.TryDecode(bytes, out var decoded, out _, out _));
            lock (_lock) Messages.Add($"{me}: {m.Phase}");
            await partner().ReceiveAsync(decoded!);
        },
        Execute = async (c, ct) =>
        {
            var hold = me == 'A' ? HoldA : null;
            if (hold is not null) await Waits.OrCancel(hold.Task, ct);
            if (me == 'A' && RefuseA is { } refuse) return HostCompletion.Error(c.Request.HostTag, refuse);
            return await HostCommandExecutor.ExecuteAsync(Catalog, c, ct);
        },
        FencePrimaryAndTakeOver = _ =>
        {
            Interlocked.Increment(ref FenceCalls);
            Owner = me;
            return Task.CompletedTask;
        },
        Observer = _ => Pulse(),
        MayHoldCommands = () => me == 'A' ? MayHoldA : MayHoldB,
    });

    public string[] MessageLog() { lock (_lock) return [.. Messages]; }

    /// <summary>The controller's seam, as Controller.HostTags binds it: record in the own table, send the entry
    /// to the partner's copy (through the ICL codec) when the link is up; recall from both tables.</summary>
    sealed class NvramTable(TestPair pair, char me) : IFinishedCommandTable
    {
        HostTagTable Tags => (me == 'A' ? pair.TagsA : pair.TagsB)!;
        HostTagTable PartnerTags => (me == 'A' ? pair.TagsB : pair.TagsA)!;

        public ValueTask RecordAsync(FinishedCommandRecord r)
        {
            var e = Tags.Record(new HostTagKey(r.Key.Unit, r.Key.HostId, r.Key.HostTag), r.Digest, (byte)r.Status);
            if (!pair.LinkUp || !pair.MirrorTags) return ValueTask.CompletedTask;
            var bytes = DuetFrame.ToArray(new HostTagEntries([new HostTagWireEntry(e.Key.Unit, e.Key.HostId, e.Key.HostTag, e.Digest, e.Status, e.Sequence)]));
            Assert.Equal(MessageKind.HostTagEntries, MessageClassifier.Classify(bytes));
            Assert.Equal(System.Buffers.OperationStatus.Done, HostTagEntries.TryDecode(bytes, out var m, out _, out _));
            var w = m!.Entries[0];
            PartnerTags.StoreMirrored(new HostTagEntry(new HostTagKey(w.Unit, w.HostId, w.HostTag), w.Digest, w.Status, w.Sequence));
            lock (pair._lock) pair.Messages.Add($"{me}: HostTagEntries");
            return ValueTask.CompletedTask;
        }

        public bool TryRecall(HostCommandKey key, out FinishedCommandRecord record)
        {
            if (Tags.TryFind(new HostTagKey(key.Unit, key.HostId, key.HostTag), out var e, out _))
            {
                record = new FinishedCommandRecord(key, e.Digest, (HostStatus)e.Status);
                return true;
            }
            record = default;
            return false;
        }
    }

    void Pulse()
    {
        TaskCompletionSource[] waiters;
        lock (_lock)
        {
            waiters = [.. _progress];
            _progress.Clear();
        }
        foreach (var w in waiters) w.TrySetResult();
    }

    /// <summary>Waits, event by event (never by sleeping), until <paramref name="condition"/> holds;
    /// gives up after a generous real-time bound so a broken build fails instead of hanging.</summary>
    public async Task UntilAsync(Func<bool> condition, string what)
    {
        var giveUp = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!condition())
        {
            var next = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_lock) _progress.Add(next);
            if (condition()) return;
            var left = giveUp - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) throw new TimeoutException($"never: {what}");
            try { await next.Task.WaitAsync(left < TimeSpan.FromSeconds(1) ? left : TimeSpan.FromSeconds(1)); }
            catch (TimeoutException) { }
        }
    }

    public static HostRequest Write(ulong tag, ulong timestampMicros, long offset, byte[] data, HostRequestFlags flags, ulong hostId = 7) =>
        new(HostOpcode.Write, flags, hostId, tag, timestampMicros, (ulong)offset, (uint)data.Length, data);

    public static HostRequest Read(ulong tag, ulong timestampMicros, long offset, int length, HostRequestFlags flags) =>
        new(HostOpcode.Read, flags, 7, tag, timestampMicros, (ulong)offset, (uint)length, ReadOnlyMemory<byte>.Empty);

    public ulong NowMicros => (ulong)(Time.GetUtcNow() - DateTimeOffset.UnixEpoch).Ticks / 10;

    public static HostCommand Command(HostRequest r, byte unit = 0) => new(unit, VolumeName, r);
}

/// <summary>A host connection as the handshake sees it: records what it was answered.</summary>
sealed class RecordingRoute : IHostCompletionRoute
{
    readonly Lock _lock = new();
    readonly List<HostCompletion> _answers = [];
    public bool Open = true;

    public IReadOnlyList<HostCompletion> Answers { get { lock (_lock) return [.. _answers]; } }

    public ValueTask<bool> TrySendAsync(HostCompletion completion)
    {
        if (!Open) return ValueTask.FromResult(false);
        lock (_lock) _answers.Add(completion);
        return ValueTask.FromResult(true);
    }
}
