using Duet.Core;
using Duet.Interconnect.Wire;

namespace Duet.HostProtocol.Tests;

/// <summary>
/// Two controllers' handshakes wired to each other in memory. Every message is encoded and
/// decoded on the way (so the ICL codec is in the loop) and logged. A owns the volume (primary)
/// until B takes over. Time is a ManualTimeProvider the test ticks.
/// </summary>
sealed class TestPair
{
    public const string VolumeName = "vol";
    public readonly ManualTimeProvider Time = new();
    public readonly MemoryVolume Volume = new(VolumeName, 1 << 20);
    public readonly MemoryCatalog Catalog;
    public readonly CommandHandshake A, B;
    public readonly List<string> Messages = [];
    readonly Lock _lock = new();
    readonly List<TaskCompletionSource> _progress = [];

    public bool LinkUp = true;
    public char Owner = 'A';
    public int FenceCalls;
    /// <summary>When set, the controller's execute waits for this before running (a hung primary).</summary>
    public TaskCompletionSource? HoldA;
    /// <summary>When set, A answers every command with this status without running it (a serve gate that refuses).</summary>
    public HostStatus? RefuseA;

    public TestPair()
    {
        Catalog = new MemoryCatalog(Volume);
        A = Make('A', () => B!);
        B = Make('B', () => A);
    }

    CommandHandshake Make(char me, Func<CommandHandshake> partner) => new(new CommandHandshakeOptions
    {
        Time = Time,
        IsPrimaryFor = _ => Owner == me,
        SendToPartner = async m =>
        {
            if (!LinkUp) throw new IOException("the ICL is down");
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
    });

    public string[] MessageLog() { lock (_lock) return [.. Messages]; }

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

    public static HostRequest Write(ulong tag, ulong timestampMicros, long offset, byte[] data, HostRequestFlags flags) =>
        new(HostOpcode.Write, flags, 7, tag, timestampMicros, (ulong)offset, (uint)data.Length, data);

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
