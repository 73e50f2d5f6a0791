using Duet.Core;
using Duet.Interconnect.Wire;

namespace Duet.HostProtocol;

/// <summary>The seams and limits of one controller's <see cref="CommandHandshake"/>.</summary>
public sealed class CommandHandshakeOptions
{
    /// <summary>FO-5's default time limit, measured from the host's timestamp.</summary>
    public static readonly TimeSpan DefaultTimeLimit = TimeSpan.FromSeconds(1.5);

    /// <summary>Sends a handshake message to the partner controller (the ICL). Throws when the partner is unreachable.</summary>
    public required Func<HandshakeMessage, ValueTask> SendToPartner { get; init; }

    /// <summary>True when this controller owns the volume's array (primary); false: secondary.</summary>
    public required Func<string, bool> IsPrimaryFor { get; init; }

    /// <summary>Runs a command against its volume. Errors come back as a completion's status.</summary>
    public required Func<HostCommand, CancellationToken, ValueTask<HostCompletion>> Execute { get; init; }

    /// <summary>The controller's takeover: fence the partner at the drives, then own its arrays.
    /// The handshake only calls it; once it returns, the handshake runs the commands it held as secondary.</summary>
    public required Func<CancellationToken, Task> FencePrimaryAndTakeOver { get; init; }

    /// <summary>How long after the host sent a command the secondary waits for the primary to complete it.</summary>
    public TimeSpan TimeLimit { get; init; } = DefaultTimeLimit;

    /// <summary>How long the primary waits for the secondary's "ready" before it processes the
    /// command anyway (the secondary may not have the command, or may be gone).</summary>
    public TimeSpan ReadyWait { get; init; } = DefaultTimeLimit / 3;

    /// <summary>The largest difference between a host's clock and the controllers' clocks the
    /// protocol assumes. A host timestamp is trusted within it: an older one counts as this old,
    /// a later one as now, so a host with a wrong clock cannot make the secondary fence at once.</summary>
    public TimeSpan MaxClockSkew { get; init; } = TimeSpan.FromMilliseconds(250);

    /// <summary>The clock of the time limit.</summary>
    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>How many finished commands are remembered, so a late copy of one is not run again.</summary>
    public int FinishedRememberedMax { get; init; } = 4096;

    /// <summary>The durable table of finished commands (idempotent re-issue): every write run here is
    /// recorded in it before its host is answered, and a command the handshake neither holds nor
    /// remembers is looked up in it (after a restart, a power cut, a takeover). Null: memory only.</summary>
    public IFinishedCommandTable? Table { get; init; }

    /// <summary>Sees every step (tests, tracing). Called outside the handshake's lock; must not block.</summary>
    public Action<HandshakeEvent>? Observer { get; init; }

    /// <summary>False while this controller can neither run a command nor take over (standby after it was
    /// fenced, stepped down): a host's command is then answered Unavailable and not queued, a forwarded
    /// frame dropped. Such a controller holding commands as secondary would time them out against a primary
    /// that cannot tell it they completed (the primary treats it as fenced), then fence that healthy primary
    /// the moment it rejoins. Null: always.</summary>
    public Func<bool>? MayHoldCommands { get; init; }

    internal void Validate()
    {
        ArgumentNullException.ThrowIfNull(SendToPartner);
        ArgumentNullException.ThrowIfNull(IsPrimaryFor);
        ArgumentNullException.ThrowIfNull(Execute);
        ArgumentNullException.ThrowIfNull(FencePrimaryAndTakeOver);
        ArgumentNullException.ThrowIfNull(Time);
        if (TimeLimit <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(TimeLimit), TimeLimit, "must be positive");
        if (ReadyWait <= TimeSpan.Zero || ReadyWait >= TimeLimit) throw new ArgumentOutOfRangeException(nameof(ReadyWait), ReadyWait, "must be positive and below the time limit");
        if (MaxClockSkew < TimeSpan.Zero || MaxClockSkew >= TimeLimit) throw new ArgumentOutOfRangeException(nameof(MaxClockSkew), MaxClockSkew, "must be non-negative and below the time limit");
        ArgumentOutOfRangeException.ThrowIfLessThan(FinishedRememberedMax, 1);
    }
}

public enum HandshakeEventKind
{
    /// <summary>The command entered this controller's queue (as primary or secondary).</summary>
    Queued,
    /// <summary>A copy of a command already queued or finished here arrived and was merged or dropped.</summary>
    Duplicate,
    ForwardedFrameSent,
    PrimaryReadySent,
    SecondaryReadySent,
    PrimaryAckSent,
    /// <summary>The primary waited <see cref="CommandHandshakeOptions.ReadyWait"/> for the secondary's "ready" in vain.</summary>
    ReadyTimedOut,
    Executing,
    AnsweredHost,
    CompletedSent,
    CompletedReceived,
    /// <summary>The command left this controller's queue.</summary>
    Removed,
    /// <summary>The secondary still held the command at the time limit.</summary>
    LimitReached,
    TakeoverDone,
    TakeoverFailed,
    PartnerUnreachable,
    /// <summary>Both controllers consider themselves primary for the command.</summary>
    RoleConflict,
    /// <summary>A handshake message that does not make sense (a forwarded frame that does not decode).</summary>
    BadMessage,
    /// <summary>A host reused the tag of another command (another volume, opcode or range) that is
    /// queued or remembered here: the new one is answered Invalid, never given the other's answer.</summary>
    TagReused,
    /// <summary>A write that ran here went into the durable table of finished commands (before its host is answered).</summary>
    RecordedInTable,
    /// <summary>Recording in the durable table failed (the controller is stopping); the host is answered anyway.</summary>
    TableRecordFailed,
    /// <summary>A copy of a command this controller did not hold or remember was found in the durable
    /// table with the same digest: answered with the recorded status, not run again.</summary>
    RecalledFromTable,
    /// <summary>A command refused (Unavailable, not queued) because this controller may hold none now
    /// (<see cref="CommandHandshakeOptions.MayHoldCommands"/>).</summary>
    RefusedNotHolding,
    /// <summary>A command held as secondary is run here because its volume's array moved here meanwhile.</summary>
    BecamePrimary,
}

public readonly record struct HandshakeEvent(HandshakeEventKind Kind, HostCommandKey Key);

/// <summary>What one controller's handshake did, for metrics and tests.</summary>
public sealed class HandshakeCounters
{
    long _forwardedFramesSent, _forwardedFramesReceived, _primaryReadiesSent, _secondaryReadiesSent, _secondaryReadiesReceived,
        _acksSent, _acksReceived, _completionsSent, _completionsReceived, _executedAsPrimary, _executedAfterTakeover, _hostAnswers,
        _limitsReached, _takeoversByLimit, _takeoverFailures, _readyTimeouts, _partnerUnreachable, _duplicates, _roleConflicts, _badMessages, _tagsReused,
        _tableRecords, _tableRecordFailures, _tableRecalls;

    public long ForwardedFramesSent => Volatile.Read(ref _forwardedFramesSent);
    public long ForwardedFramesReceived => Volatile.Read(ref _forwardedFramesReceived);
    public long PrimaryReadiesSent => Volatile.Read(ref _primaryReadiesSent);
    public long SecondaryReadiesSent => Volatile.Read(ref _secondaryReadiesSent);
    public long SecondaryReadiesReceived => Volatile.Read(ref _secondaryReadiesReceived);
    public long AcksSent => Volatile.Read(ref _acksSent);
    public long AcksReceived => Volatile.Read(ref _acksReceived);
    public long CompletionsSent => Volatile.Read(ref _completionsSent);
    public long CompletionsReceived => Volatile.Read(ref _completionsReceived);
    public long ExecutedAsPrimary => Volatile.Read(ref _executedAsPrimary);
    public long ExecutedAfterTakeover => Volatile.Read(ref _executedAfterTakeover);
    public long HostAnswers => Volatile.Read(ref _hostAnswers);
    /// <summary>Commands the secondary still held at the time limit.</summary>
    public long LimitsReached => Volatile.Read(ref _limitsReached);
    /// <summary>Takeovers (fence, then run the held commands) the time limit set off.</summary>
    public long TakeoversByLimit => Volatile.Read(ref _takeoversByLimit);
    public long TakeoverFailures => Volatile.Read(ref _takeoverFailures);
    public long ReadyTimeouts => Volatile.Read(ref _readyTimeouts);
    public long PartnerUnreachable => Volatile.Read(ref _partnerUnreachable);
    public long Duplicates => Volatile.Read(ref _duplicates);
    public long RoleConflicts => Volatile.Read(ref _roleConflicts);
    public long BadMessages => Volatile.Read(ref _badMessages);
    /// <summary>Commands answered Invalid because their tag named another command here.</summary>
    public long TagsReused => Volatile.Read(ref _tagsReused);
    /// <summary>Writes recorded in the durable table of finished commands.</summary>
    public long TableRecords => Volatile.Read(ref _tableRecords);
    public long TableRecordFailures => Volatile.Read(ref _tableRecordFailures);
    /// <summary>Copies answered from the durable table (not from memory), never run again.</summary>
    public long TableRecalls => Volatile.Read(ref _tableRecalls);

    internal void Count(HandshakeEventKind kind)
    {
        switch (kind)
        {
            case HandshakeEventKind.ForwardedFrameSent: Interlocked.Increment(ref _forwardedFramesSent); break;
            case HandshakeEventKind.PrimaryReadySent: Interlocked.Increment(ref _primaryReadiesSent); break;
            case HandshakeEventKind.SecondaryReadySent: Interlocked.Increment(ref _secondaryReadiesSent); break;
            case HandshakeEventKind.PrimaryAckSent: Interlocked.Increment(ref _acksSent); break;
            case HandshakeEventKind.CompletedSent: Interlocked.Increment(ref _completionsSent); break;
            case HandshakeEventKind.CompletedReceived: Interlocked.Increment(ref _completionsReceived); break;
            case HandshakeEventKind.AnsweredHost: Interlocked.Increment(ref _hostAnswers); break;
            case HandshakeEventKind.LimitReached: Interlocked.Increment(ref _limitsReached); break;
            case HandshakeEventKind.TakeoverDone: Interlocked.Increment(ref _takeoversByLimit); break;
            case HandshakeEventKind.TakeoverFailed: Interlocked.Increment(ref _takeoverFailures); break;
            case HandshakeEventKind.ReadyTimedOut: Interlocked.Increment(ref _readyTimeouts); break;
            case HandshakeEventKind.PartnerUnreachable: Interlocked.Increment(ref _partnerUnreachable); break;
            case HandshakeEventKind.TagReused: Interlocked.Increment(ref _tagsReused); break;
            case HandshakeEventKind.RecordedInTable: Interlocked.Increment(ref _tableRecords); break;
            case HandshakeEventKind.TableRecordFailed: Interlocked.Increment(ref _tableRecordFailures); break;
            case HandshakeEventKind.RecalledFromTable: Interlocked.Increment(ref _tableRecalls); break;
            case HandshakeEventKind.Duplicate: Interlocked.Increment(ref _duplicates); break;
            case HandshakeEventKind.RoleConflict: Interlocked.Increment(ref _roleConflicts); break;
            case HandshakeEventKind.BadMessage: Interlocked.Increment(ref _badMessages); break;
        }
    }

    internal void ForwardedFrameReceived() => Interlocked.Increment(ref _forwardedFramesReceived);
    internal void SecondaryReadyReceived() => Interlocked.Increment(ref _secondaryReadiesReceived);
    internal void AckReceived() => Interlocked.Increment(ref _acksReceived);
    internal void Executed(bool afterTakeover) => Interlocked.Increment(ref afterTakeover ? ref _executedAfterTakeover : ref _executedAsPrimary);
}

/// <summary>
/// The FO-3..FO-6 command handshake of one controller. Both controllers get every host command
/// (the host multicasts it to unit N of each, or the unit that got it forwards it), and each
/// keeps it in its own queue until it is done:
///
/// <code>
///   host        unit N of A (primary)                     unit N of B (secondary)
///    |--frame-->|  queue                                   |
///    |--frame-------------------------------------------->|  queue, arm limit (host ts + limit)
///    |          |--------------- primary-ready ----------->|
///    |          |&lt;-------------- secondary-ready ----------|
///    |          |--------------- primary-ack ------------->|
///    |          |  execute                                 |
///    |&lt;-compl.-|                                          |
///    |          |--------------- completed --------------->|  dequeue, disarm
///
///   limit passes while B still holds the command:  B fences A, takes over, executes, answers.
/// </code>
///
/// The primary does not wait for ever: if the partner cannot be reached (send throws) it
/// executes at once, and if the secondary's "ready" does not come within ReadyWait it executes
/// anyway. The secondary never executes before the limit unless it took over. Each controller
/// answers each host route of a command at most once; a finished command is remembered (its
/// status always — "completed" carries it —, its completion when known) so that a late copy is
/// answered from memory, never run again: a host may re-send a command under its tag until it
/// has an answer (the AW-1 adapter pair does). The one exception is a command the primary
/// answered Unavailable (it did not run it): a host's next copy of it is queued afresh. "Completed" carries the completion frame when the sender could answer no host
/// itself, so a secondary holding the host's only connection (FO-6) answers it.
///
/// Memory is lost with the process. With <see cref="CommandHandshakeOptions.Table"/> (the controller's
/// NVRAM table, mirrored to the partner) every write run here is recorded, with a digest of its
/// request, before any host hears its answer; a copy that is neither queued nor remembered is looked up
/// there, so a write re-issued after a restart, a power cut or a takeover is answered with its status
/// and not run again (a different command under the tag: Invalid).
///
/// Deterministic: no threads, no clock but <see cref="CommandHandshakeOptions.Time"/>, waits
/// through <see cref="Waits"/> and <see cref="TimeProviderExtensions.DelayAsync"/>.
/// </summary>
public sealed class CommandHandshake
{
    readonly CommandHandshakeOptions _options;
    readonly Lock _lock = new();
    readonly Dictionary<HostCommandKey, Entry> _queue = [];
    // The primary's "ready" for a command whose frame has not reached this (secondary) controller yet.
    readonly HashSet<HostCommandKey> _earlyReadies = [];
    // Finished commands, oldest first, with their completion when this controller knows it.
    readonly Dictionary<HostCommandKey, Finished> _finished = [];

    /// <summary>A finished command as remembered: its answer when known (this controller ran it, or
    /// the partner's "completed" carried it), its status always (the partner's "completed" carries
    /// it), and what it was, so that a tag reused for another command is told apart from a late copy
    /// of this one — down to the payload when its digest is known (a write recorded in, or recalled
    /// from, the durable table).</summary>
    readonly record struct Finished(HostCompletion? Completion, HostStatus Status, string Volume, HostRequest? Request, long Sequence, uint? Digest);

    static bool SameCommand(HostCommand c, Finished done) =>
        SameCommand(c, done.Volume, done.Request) && (done.Digest is not { } digest || HostCommandDigest.Of(c) == digest);

    /// <summary>Whether <paramref name="c"/> is the same command as one with this volume and request
    /// (a copy: the other unit's, the forwarded one, or a host's retry on the same tag). A command remembered
    /// from a partner's compact "completed" (<see cref="HandshakeBatch"/>: no volume name) matches any volume.</summary>
    static bool SameCommand(HostCommand c, string volume, HostRequest? request) =>
        (volume.Length == 0 || string.Equals(c.Volume, volume, StringComparison.Ordinal))
        && (request is null || (c.Request.Opcode == request.Opcode && c.Request.Offset == request.Offset && c.Request.Length == request.Length));
    // Oldest first; an entry whose sequence no longer matches its key's record (the record was
    // forgotten and remembered again) is skipped when it leaves.
    readonly Queue<(HostCommandKey Key, long Sequence)> _finishedOrder = new();
    long _finishedSequence;
    readonly CancellationTokenSource _stopping = new();
    Task<bool>? _takeover;

    sealed class Entry(HostCommand command, bool primary, CancellationTokenSource? watch)
    {
        public readonly HostCommand Command = command;
        /// <summary>Set at arrival; cleared when a primary finds, before it runs the command, that the partner
        /// owns the volume's array now (a move): it then holds the command as a secondary does.</summary>
        public bool Primary = primary;
        // The secondary's limit timer; cancelled (and disposed) when the command finishes.
        public CancellationTokenSource? Watch = watch;
        public CancellationToken WatchToken => Watch?.Token ?? CancellationToken.None;
        public readonly List<IHostCompletionRoute> Routes = [];
        public readonly TaskCompletionSource SecondaryReady = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public bool PrimaryReadySeen;
        public bool SecondaryReadySent;
        public bool Acked;
        /// <summary>When the primary's ack arrived (the time provider's timestamp), if it did.</summary>
        public long AckedAt;
        /// <summary>The partner answered "ready": it holds the command until "completed".</summary>
        public bool PartnerHolds;
        public bool Executing;
        public bool Finished;
    }

    public CommandHandshake(CommandHandshakeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
    }

    public HandshakeCounters Counters { get; } = new();

    public TimeSpan TimeLimit => _options.TimeLimit;

    /// <summary>Commands in this controller's queue.</summary>
    public int QueuedCount { get { lock (_lock) return _queue.Count; } }

    public bool Holds(HostCommandKey key) { lock (_lock) return _queue.ContainsKey(key); }

    public IReadOnlyList<HostCommandKey> QueuedKeys() { lock (_lock) return [.. _queue.Keys]; }

    /// <summary>The payload of a command this controller holds in its queue (as secondary, until the
    /// primary's "completed"): what a by-reference mirror header names. Null when not held.</summary>
    public ReadOnlyMemory<byte>? QueuedPayload(HostDataReference reference)
    {
        var key = new HostCommandKey(reference.Unit, reference.HostId, reference.HostTag);
        lock (_lock)
            return _queue.TryGetValue(key, out var e) && e.Command.Request.Opcode == HostOpcode.Write ? e.Command.Request.Payload : null;
    }

    /// <summary>Whether this controller is the primary for <paramref name="volume"/>'s commands now.</summary>
    public bool IsPrimaryFor(string volume) => _options.IsPrimaryFor(volume);

    /// <summary>
    /// A command arrived at this controller's unit from the host; <paramref name="route"/> is the
    /// connection to answer on. Returns at once with a task that completes when this controller
    /// is done with the command (answered, or removed by the partner's "completed"); it never faults.
    /// </summary>
    public Task SubmitAsync(HostCommand command, IHostCompletionRoute? route)
    {
        ArgumentNullException.ThrowIfNull(command);
        if (_stopping.IsCancellationRequested) return Task.CompletedTask;
        var key = command.Key;
        if (_options.MayHoldCommands is { } may && !may())
        {
            Notify(HandshakeEventKind.RefusedNotHolding, key);
            return route is null ? Task.CompletedTask : route.TrySendAsync(HostCompletion.Error(key.HostTag, HostStatus.Unavailable)).AsTask();
        }
        bool primary = _options.IsPrimaryFor(command.Volume);
        Entry? entry = null;
        Finished remembered = default;
        FinishedCommandRecord recalled = default;
        bool finished = false, merged = false, reused = false, inTable = false;
        lock (_lock)
        {
            // A command the primary answered Unavailable was not run: a host's copy of it may run now
            // (on the primary; or forwarded by the partner unit, which holds it afresh).
            bool forwarded = (command.Request.Flags & HostRequestFlags.Forwarded) != 0;
            if (_finished.TryGetValue(key, out var done) && done.Status == HostStatus.Unavailable && (forwarded || (primary && route is not null))
                && SameCommand(command, done)) _finished.Remove(key);
            if (_finished.TryGetValue(key, out done))
            {
                finished = true;
                reused = !SameCommand(command, done);
                remembered = done;
                // Answered Unavailable from memory once; the host's next copy is queued afresh.
                if (!reused && done.Status == HostStatus.Unavailable && route is not null) _finished.Remove(key);
            }
            else if (_queue.TryGetValue(key, out entry) && !SameCommand(command, entry.Command.Volume, entry.Command.Request))
            {
                reused = true;
            }
            else if (entry is not null)
            {
                // A second copy (the host retried on this unit, or the forwarded copy met the direct one).
                if (route is not null) entry.Routes.Add(route);
                merged = true;
            }
            else if (_options.Table is { } table && table.TryRecall(key, out recalled))
            {
                // Finished before this controller's memory began (a restart, a power cut), or by the
                // partner that this controller took over: the durable table remembers it.
                inTable = true;
            }
            else
            {
                entry = new Entry(command, primary, primary ? null : CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token));
                if (route is not null) entry.Routes.Add(route);
                entry.PrimaryReadySeen = _earlyReadies.Remove(key);
                _queue.Add(key, entry);
            }
        }
        if (reused) return AnswerTagReusedAsync(key, route);
        if (finished) return AnswerLateCopyAsync(command, remembered, route);
        if (inTable) return AnswerRecalledAsync(command, recalled, route);
        Invariant.Assert(entry is not null);
        if (merged)
        {
            Notify(HandshakeEventKind.Duplicate, key);
            return entry.Done.Task;
        }

        Notify(HandshakeEventKind.Queued, key);
        bool forward = (command.Request.Flags & (HostRequestFlags.Multicast | HostRequestFlags.Forwarded)) == 0;
        if (primary) return RunPrimaryAsync(entry, forward);
        // Arm the limit before anything is sent, so a test (or the simulator) that advances time
        // once Submit returned always finds the timer.
        _ = WatchAsync(entry, LimitDelay(command.Request.HostTimestampMicros));
        return RunSecondaryAsync(entry, forward);
    }

    /// <summary>A handshake message from the partner controller (the ICL dispatcher calls this).</summary>
    public async ValueTask ReceiveAsync(HandshakeMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        var key = new HostCommandKey(message.Unit, message.HostId, message.HostTag);
        switch (message.Phase)
        {
            case HandshakePhase.ForwardedFrame:
                OnForwardedFrame(message, key);
                return;
            case HandshakePhase.PrimaryReady:
                await OnPrimaryReadyAsync(key);
                return;
            case HandshakePhase.SecondaryReady:
                Counters.SecondaryReadyReceived();
                Entry? e;
                lock (_lock) _queue.TryGetValue(key, out e);
                e?.SecondaryReady.TrySetResult();
                return;
            case HandshakePhase.PrimaryAck:
                Counters.AckReceived();
                lock (_lock)
                {
                    if (_queue.TryGetValue(key, out var acked))
                    {
                        acked.Acked = true;
                        acked.AckedAt = _options.Time.GetTimestamp();
                    }
                }
                return;
            case HandshakePhase.Completed:
                await OnCompletedAsync(message, key);
                return;
            default:
                Notify(HandshakeEventKind.BadMessage, key);
                return;
        }
    }

    /// <summary>Stops: cancels every wait and execution; queued commands are not answered, and
    /// the tasks <see cref="SubmitAsync"/> returned complete.</summary>
    public void Stop()
    {
        _stopping.Cancel();
        Entry[] queued;
        lock (_lock) queued = [.. _queue.Values];
        foreach (var e in queued) e.Done.TrySetResult();
    }

    // ------------------------------------------------------------------ the two roles

    async Task RunPrimaryAsync(Entry e, bool forward)
    {
        bool linked = true;
        if (forward) linked = await TrySendAsync(e.Command, HandshakePhase.ForwardedFrame, ForwardedFrame(e.Command), HandshakeEventKind.ForwardedFrameSent);
        if (linked) linked = await TrySendAsync(e.Command, HandshakePhase.PrimaryReady, default, HandshakeEventKind.PrimaryReadySent);
        if (linked)
        {
            try
            {
                await Waits.WithTimeout(e.SecondaryReady.Task, _options.ReadyWait, _options.Time, _stopping.Token);
                e.PartnerHolds = true;
            }
            catch (TimeoutException)
            {
                Notify(HandshakeEventKind.ReadyTimedOut, e.Command.Key);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            bool steppedBack;
            lock (_lock) steppedBack = !e.Primary;
            if (!steppedBack) await TrySendAsync(e.Command, HandshakePhase.PrimaryAck, default, HandshakeEventKind.PrimaryAckSent);
        }
        // Not if it stepped back meanwhile (OnPrimaryReadyAsync): the partner owns the array now and runs its copy.
        await ExecuteAndFinishAsync(e, afterTakeover: false, asPrimary: true);
        await e.Done.Task;
    }

    async Task RunSecondaryAsync(Entry e, bool forward)
    {
        // A partner that cannot be reached changes nothing here: the limit decides.
        if (forward) await TrySendAsync(e.Command, HandshakePhase.ForwardedFrame, ForwardedFrame(e.Command), HandshakeEventKind.ForwardedFrameSent);
        await SendSecondaryReadyIfDueAsync(e);
        _ = ForwardWhileHeldAsync(e);
        await e.Done.Task;
    }

    /// <summary>
    /// FO-6 from the secondary, for a command it still holds a <see cref="CommandHandshakeOptions.ReadyWait"/>
    /// after it arrived, and every ReadyWait after: the primary may never have had it (the host's copy to the
    /// primary's unit was lost with its connection), or may have finished it with its "completed" lost (a link
    /// cut, a pairing that dropped it). The forwarded copy makes the primary run it, or merges with the copy it
    /// is running, or is answered "completed" from memory; so only a primary that cannot be reached or does not
    /// answer (hung, dead) leaves the command to the time limit. (Without this, every lost host copy and every
    /// lost "completed" fenced a healthy primary at the limit: the simulator's multicast hosts found it.)
    /// </summary>
    async Task ForwardWhileHeldAsync(Entry e)
    {
        var token = e.WatchToken;
        while (true)
        {
            try { await _options.Time.DelayAsync(_options.ReadyWait, token); }
            catch (OperationCanceledException) { return; }
            lock (_lock)
            {
                if (e.Finished || e.Executing) return;
            }
            // Forwarded even when the volume's array has moved here meanwhile: the partner, its old owner, may have
            // run the command without being able to tell us (our "completed" would never come). Only at the
            // limit, when the partner answered none of these copies, does this controller run it (WatchAsync).
            await TrySendAsync(e.Command, HandshakePhase.ForwardedFrame, ForwardedFrame(e.Command), HandshakeEventKind.ForwardedFrameSent);
        }
    }

    async ValueTask SendSecondaryReadyIfDueAsync(Entry e)
    {
        lock (_lock)
        {
            if (!e.PrimaryReadySeen || e.SecondaryReadySent || e.Finished) return;
            e.SecondaryReadySent = true;
        }
        await TrySendAsync(e.Command, HandshakePhase.SecondaryReady, default, HandshakeEventKind.SecondaryReadySent);
    }

    /// <summary>FO-5 on the secondary: at the limit, fence the primary and run the command here.</summary>
    async Task WatchAsync(Entry e, TimeSpan delay)
    {
        var token = e.WatchToken;
        bool graced = false, ackGraced = false;
        while (true)
        {
            var due = _options.Time.GetTimestamp() + (long)(delay.TotalSeconds * _options.Time.TimestampFrequency);
            try
            {
                await _options.Time.DelayAsync(delay, token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            lock (_lock)
            {
                if (e.Finished || e.Executing) return;
            }
            if (!graced && _options.Time.GetElapsedTime(due) > _options.ReadyWait / 5)
            {
                // The timer fired late: this controller was stopped itself (SIGSTOP, a long pause), and what the
                // partner sent meanwhile — "completed" among it — is still queued for us. Ask once more (a forwarded
                // copy is answered from memory) and give it a ReadyWait before fencing a primary that may have
                // done its part (seed 403 of the simulator's --faults failover,multicast --ops 300).
                graced = true;
                await TrySendAsync(e.Command, HandshakePhase.ForwardedFrame, ForwardedFrame(e.Command), HandshakeEventKind.ForwardedFrameSent);
                delay = _options.ReadyWait;
                continue;
            }
            bool ackedJustNow;
            lock (_lock)
                ackedJustNow = (e.Acked && _options.Time.GetElapsedTime(e.AckedAt) < _options.ReadyWait)
                    // Any command held here that the primary only just started: the fence would cut its run as well,
                    // and we would run it again at its own limit (seed 23 of --faults failover,multicast --ops 300:
                    // fenced for another command's limit 87 ms after it acked this one, whose entry never came).
                    || _queue.Values.Any(x => x != e && !x.Primary && !x.Finished && x.Acked && _options.Time.GetElapsedTime(x.AckedAt) < _options.ReadyWait);
            if (!ackGraced && ackedJustNow)
            {
                // The primary only just started it: a command both controllers held as secondary (its array was
                // moving) run by the new owner at its own limit (BecamePrimary below, which announces itself).
                // Give it a ReadyWait rather than fence it mid-run: its "completed" and table entry would not
                // reach us, and we would run the write again (seeds 238 and 355 of --faults failover,multicast).
                ackGraced = true;
                delay = _options.ReadyWait;
                continue;
            }
            if (!e.PrimaryReadySeen && _options.IsPrimaryFor(e.Command.Volume))
            {
                // Held as secondary, but the array moved here meanwhile, and the partner, its old owner, never said
                // it had the command nor answered the copies forwarded to it every ReadyWait: run it; there is
                // nobody to fence. (Running it at the first forward tick ran writes twice: the old owner had run
                // them while it could not reach us, seed 163 of --faults failover,multicast --ops 500.)
                Notify(HandshakeEventKind.BecamePrimary, e.Command.Key);
                // Announced as a primary does, so a partner holding its copy knows it runs now (and waits for it).
                if (await TrySendAsync(e.Command, HandshakePhase.PrimaryReady, default, HandshakeEventKind.PrimaryReadySent))
                    await TrySendAsync(e.Command, HandshakePhase.PrimaryAck, default, HandshakeEventKind.PrimaryAckSent);
                await ExecuteAndFinishAsync(e, afterTakeover: false);
                return;
            }
            Notify(HandshakeEventKind.LimitReached, e.Command.Key);
            if (await TakeOverOnceAsync(e.Command.Key)) break;
            // Fencing failed: running the command now could race a primary that still writes.
            // Try again after another limit; the host retries or times out meanwhile.
            delay = _options.TimeLimit;
        }
        await ExecuteAndFinishAsync(e, afterTakeover: true);
    }

    /// <summary>One takeover at a time; every command that reaches the limit meanwhile waits for
    /// it. After a successful one, every command held as secondary is run here.</summary>
    async Task<bool> TakeOverOnceAsync(HostCommandKey key)
    {
        TaskCompletionSource<bool>? mine = null;
        Task<bool> takeover;
        lock (_lock)
        {
            if (_takeover is null)
            {
                mine = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
                _takeover = mine.Task;
            }
            takeover = _takeover;
        }
        if (mine is not null) mine.SetResult(await TakeOverAsync(key));
        return await takeover;
    }

    async Task<bool> TakeOverAsync(HostCommandKey key)
    {
        bool ok;
        try
        {
            await _options.FencePrimaryAndTakeOver(_stopping.Token);
            ok = true;
        }
        catch (Exception e) when (e is not InvariantViolationException)
        {
            ok = false;
        }
        Entry[] held;
        lock (_lock)
        {
            _takeover = null;
            held = ok ? [.. _queue.Values.Where(x => !x.Primary && !x.Executing && !x.Finished)] : [];
        }
        Notify(ok ? HandshakeEventKind.TakeoverDone : HandshakeEventKind.TakeoverFailed, key);
        foreach (var e in held) _ = ExecuteAndFinishAsync(e, afterTakeover: true);
        return ok;
    }

    /// <summary>
    /// The partner is fenced and its arrays are served here: a takeover the heartbeats set off (FO-1, FO-2) ended.
    /// Every command held as secondary runs now, as after a takeover its own limit set off, instead of waiting
    /// for that limit (up to <see cref="CommandHandshakeOptions.TimeLimit"/> from the host's timestamp: the
    /// adapter bench's longest stall was the limit plus the run). A command the partner finished is still
    /// answered from the durable table, never run again.
    /// </summary>
    public void PartnerTakenOver()
    {
        if (_stopping.IsCancellationRequested) return;
        Entry[] held;
        lock (_lock) held = [.. _queue.Values.Where(x => !x.Primary && !x.Executing && !x.Finished)];
        foreach (var e in held) _ = ExecuteAndFinishAsync(e, afterTakeover: true);
    }

    // ------------------------------------------------------------------ execution and completion

    async Task ExecuteAndFinishAsync(Entry e, bool afterTakeover, bool asPrimary = false)
    {
        lock (_lock)
        {
            if (e.Executing || e.Finished || (asPrimary && !e.Primary)) return;
            e.Executing = true;
        }
        var key = e.Command.Key;
        if (FinishedElsewhere(e.Command) is { } recorded)
        {
            // The partner ran this very command and recorded it before it answered (its "completed" was
            // lost with it): running it again here could undo a later acknowledged write.
            Notify(HandshakeEventKind.RecalledFromTable, key);
            await FinishAsync(e, HostCompletion.Error(key.HostTag, recorded.Status), recorded.Status, executedHere: false, recorded.Digest);
            return;
        }
        if (_options.MayHoldCommands is { } may && !may())
        {
            // Stepped down (fenced) with the command still queued, a hung controller's queue waking up: it runs
            // nothing. Its catalog may no longer name the volume, and an answer such as NoSuchVolume would be
            // final for the host and recorded as if the write had run.
            Notify(HandshakeEventKind.RefusedNotHolding, key);
            await FinishAsync(e, HostCompletion.Error(key.HostTag, HostStatus.Unavailable), HostStatus.Unavailable, executedHere: true);
            return;
        }
        Notify(HandshakeEventKind.Executing, key);
        Counters.Executed(afterTakeover);
        HostCompletion completion;
        try
        {
            completion = await _options.Execute(e.PartnerHolds ? e.Command with { PartnerHoldsCopy = true } : e.Command, _stopping.Token);
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
            e.Done.TrySetResult();
            return;
        }
        catch (Exception x) when (x is not InvariantViolationException)
        {
            completion = HostCompletion.Error(key.HostTag, HostStatus.IoError);
        }
        Invariant.Assert(completion.HostTag == key.HostTag);
        // Durable before any host hears the answer, and while the command is still queued here (a copy
        // that arrives meanwhile merges with it): a host that had its answer never sees it run again.
        uint? digest = _options.Table is not null && HostCommandDigest.IsRecorded(e.Command.Request.Opcode, completion.Status) ? HostCommandDigest.Of(e.Command) : null;
        if (digest is { } d) await RecordAsync(e.Command, completion.Status, d);
        await FinishAsync(e, completion, completion.Status, executedHere: true, digest);
    }

    /// <summary>The status the durable table has for this very command (same digest), or null: a queued
    /// command is in the table only if it ran elsewhere — the secondary about to run a command it held
    /// after a takeover, when the dead primary ran it and its "completed" never came.</summary>
    FinishedCommandRecord? FinishedElsewhere(HostCommand command)
    {
        if (_options.Table is not { } table || !HostCommandDigest.IsRecorded(command.Request.Opcode, HostStatus.Ok)) return null;
        if (!table.TryRecall(command.Key, out var record)) return null;
        return record.Digest == HostCommandDigest.Of(command) ? record : null;
    }

    async ValueTask RecordAsync(HostCommand command, HostStatus status, uint digest)
    {
        var table = _options.Table;
        Invariant.Assert(table is not null);
        try
        {
            await table.RecordAsync(new FinishedCommandRecord(command.Key, digest, status));
        }
        catch (Exception x) when (x is not InvariantViolationException)
        {
            Notify(HandshakeEventKind.TableRecordFailed, command.Key);
            return;
        }
        Notify(HandshakeEventKind.RecordedInTable, command.Key);
    }

    /// <summary>Takes the command out of the queue, answers each host route once, and (when it
    /// ran here) tells the partner. <paramref name="completion"/> is null when the partner
    /// finished the command and answered the host itself; <paramref name="status"/> is its status either way.</summary>
    async Task FinishAsync(Entry e, HostCompletion? completion, HostStatus status, bool executedHere, uint? digest = null)
    {
        var key = e.Command.Key;
        IHostCompletionRoute[] routes;
        lock (_lock)
        {
            if (e.Finished) return;
            e.Finished = true;
            bool removed = _queue.Remove(key);
            Invariant.Assert(removed);
            Remember(key, completion, status, e.Command.Volume, e.Command.Request, digest);
            routes = [.. e.Routes];
        }
        if (e.Watch is not null)
        {
            e.Watch.Cancel();
            e.Watch.Dispose();
        }
        bool answered = false;
        if (completion is not null)
        {
            foreach (var route in routes)
            {
                if (!await route.TrySendAsync(completion)) continue;
                answered = true;
                Notify(HandshakeEventKind.AnsweredHost, key);
            }
        }
        if (executedHere)
        {
            // The partner needs the answer itself only when no host heard it from us.
            var data = answered ? ReadOnlyMemory<byte>.Empty : HostCodec.EncodeCompletion(completion!);
            await TrySendAsync(e.Command, HandshakePhase.Completed, data, HandshakeEventKind.CompletedSent, status);
        }
        Notify(HandshakeEventKind.Removed, key);
        e.Done.TrySetResult();
    }

    async Task AnswerTagReusedAsync(HostCommandKey key, IHostCompletionRoute? route)
    {
        Notify(HandshakeEventKind.TagReused, key);
        if (route is not null) await route.TrySendAsync(HostCompletion.Error(key.HostTag, HostStatus.Invalid));
    }

    /// <summary>A copy of a finished command: answered from memory, never run again. With the
    /// completion when this controller knows it; else with the status the partner's "completed"
    /// carried — whole for a write or flush (their completions carry nothing else), and for a read
    /// only when it failed (an Ok read needs its data: that copy is dropped, and a host re-reads
    /// under a new tag).</summary>
    async Task AnswerLateCopyAsync(HostCommand command, Finished remembered, IHostCompletionRoute? route)
    {
        var key = command.Key;
        Notify(HandshakeEventKind.Duplicate, key);
        var answer = remembered.Completion;
        if (answer is null && (command.Request.Opcode != HostOpcode.Read || remembered.Status != HostStatus.Ok))
            answer = HostCompletion.Error(key.HostTag, remembered.Status);
        bool answered = answer is not null && route is not null && await route.TrySendAsync(answer);
        if (answered) Notify(HandshakeEventKind.AnsweredHost, key);
        // The partner may hold the command: it forwarded its copy because our "completed" did not reach it, or the
        // host multicast this copy to it too (a retry of a command we ran while the partner was down or unreachable:
        // it never heard our "completed"). Tell it, with the answer when no host heard it from us. Told only of a
        // forwarded copy, a secondary held the multicast retry, took us over at its limit and ran it again
        // (simulator seed 9734 of --faults failover,multicast --ops 1000).
        if ((command.Request.Flags & (HostRequestFlags.Multicast | HostRequestFlags.Forwarded)) != 0)
            await TrySendAsync(command, HandshakePhase.Completed, answered || answer is null ? ReadOnlyMemory<byte>.Empty : HostCodec.EncodeCompletion(answer),
                HandshakeEventKind.CompletedSent, remembered.Status);
    }

    /// <summary>A copy of a command found in the durable table only: the same command (same digest) is
    /// answered with the recorded status — the whole answer of a write — and remembered; another
    /// command under the tag is answered Invalid, as in memory.</summary>
    async Task AnswerRecalledAsync(HostCommand command, FinishedCommandRecord record, IHostCompletionRoute? route)
    {
        var key = command.Key;
        if (HostCommandDigest.Of(command) != record.Digest)
        {
            await AnswerTagReusedAsync(key, route);
            return;
        }
        Notify(HandshakeEventKind.RecalledFromTable, key);
        lock (_lock)
        {
            _earlyReadies.Remove(key);
            if (!_finished.ContainsKey(key) && !_queue.ContainsKey(key)) Remember(key, completion: null, record.Status, command.Volume, command.Request, record.Digest);
        }
        var answer = HostCompletion.Error(key.HostTag, record.Status);
        bool answered = route is not null && await route.TrySendAsync(answer);
        if (answered) Notify(HandshakeEventKind.AnsweredHost, key);
        // The partner has a copy too (multicast, or it forwarded this one) and may not know the command
        // ended: a secondary would hold it until its time limit, a primary that does not find it in its
        // tables would run it after ReadyWait. Tell it, as "completed" does for a command run here (with
        // the answer when no host heard it from us).
        if ((command.Request.Flags & (HostRequestFlags.Multicast | HostRequestFlags.Forwarded)) != 0)
            await TrySendAsync(command, HandshakePhase.Completed, answered ? ReadOnlyMemory<byte>.Empty : HostCodec.EncodeCompletion(answer),
                HandshakeEventKind.CompletedSent, record.Status);
    }

    // ------------------------------------------------------------------ messages from the partner

    void OnForwardedFrame(HandshakeMessage m, HostCommandKey key)
    {
        var error = HostCodec.TryDecodeRequest(m.Data, out var request);
        if (error != HostWireError.None || request is null || request.HostId != m.HostId || request.HostTag != m.HostTag
            || (request.Flags & HostRequestFlags.Forwarded) == 0 || m.Volume.Length == 0)
        {
            Notify(HandshakeEventKind.BadMessage, key);
            return;
        }
        Counters.ForwardedFrameReceived();
        _ = SubmitAsync(new HostCommand(m.Unit, m.Volume, request), route: null);
    }

    async ValueTask OnPrimaryReadyAsync(HostCommandKey key)
    {
        Entry? e;
        bool conflict = false;
        lock (_lock)
        {
            if (_queue.TryGetValue(key, out e))
            {
                e.PrimaryReadySeen = true;
                conflict = e.Primary;
            }
            else if (!_finished.ContainsKey(key) && _earlyReadies.Count < _options.FinishedRememberedMax)
            {
                _earlyReadies.Add(key);
            }
        }
        if (e is null) return;
        if (conflict)
        {
            // Both sides took the command as primary: its volume's array moved between the two arrivals. Running
            // both copies would apply a write twice, the second perhaps after the host, answered by the first,
            // wrote the same blocks again. The one that no longer owns the array steps back and holds its copy as
            // a secondary; one that still owns it ignores the partner's "ready" (the partner steps back when
            // ours reaches it, or, taking ours for an early one, runs only if it owns the array).
            Notify(HandshakeEventKind.RoleConflict, key);
            if (_options.IsPrimaryFor(e.Command.Volume)) return;
            bool stepBack;
            lock (_lock)
            {
                stepBack = e.Primary && !e.Executing && !e.Finished;
                if (stepBack)
                {
                    e.Primary = false;
                    e.Watch = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
                }
            }
            if (!stepBack) return;
            _ = WatchAsync(e, LimitDelay(e.Command.Request.HostTimestampMicros));
            _ = ForwardWhileHeldAsync(e);
        }
        await SendSecondaryReadyIfDueAsync(e);
    }

    async ValueTask OnCompletedAsync(HandshakeMessage m, HostCommandKey key)
    {
        Notify(HandshakeEventKind.CompletedReceived, key);
        var completion = m.Data.IsEmpty ? null : HostCodec.TryDecodeCompletion(m.Data);
        var status = (HostStatus)m.Status;
        if (!m.Data.IsEmpty && (completion is null || completion.HostTag != key.HostTag || completion.Status != status))
        {
            Notify(HandshakeEventKind.BadMessage, key);
            completion = null;
        }
        Entry? e;
        lock (_lock)
        {
            _earlyReadies.Remove(key);
            if (!_queue.TryGetValue(key, out e) && !_finished.ContainsKey(key)) Remember(key, completion, status, m.Volume, request: null);
            // "Unavailable" says the partner did not run it (an earlier copy it refused, perhaps one of ours echoed
            // back from its memory), which says nothing of the run under way here. Finished by it, the entry left the
            // queue remembered as not run: the host's next copy was queued afresh and ran a second time beside the
            // first, both recorded (simulator seed 10457 of `--faults failover,multicast --ops 1000`). Our run answers.
            if (e is not null && e.Executing && status == HostStatus.Unavailable) e = null;
        }
        // The host's copy held here is answered as a late copy would be: with the status alone when that is the
        // whole answer (a write, a flush, a failure; not a read's data). The host takes the first answer per tag,
        // so this is a duplicate when the primary's answer reached it — and the answer itself when that one was
        // lost with its connection, or when the primary did not run it (Unavailable): otherwise the host would
        // wait out its attempt's timeout for an answer that no unit is going to send.
        if (e is not null && completion is null && (e.Command.Request.Opcode != HostOpcode.Read || status != HostStatus.Ok))
            completion = HostCompletion.Error(key.HostTag, status);
        if (e is not null) await FinishAsync(e, completion, status, executedHere: false);
    }

    // ------------------------------------------------------------------ helpers

    async ValueTask<bool> TrySendAsync(HostCommand c, HandshakePhase phase, ReadOnlyMemory<byte> data, HandshakeEventKind sent, HostStatus status = HostStatus.Ok)
    {
        var message = new HandshakeMessage(phase, c.Unit, c.Request.HostId, c.Request.HostTag, c.Request.HostTimestampMicros, c.Volume, data)
        {
            Status = checked((byte)status),
        };
        try
        {
            await _options.SendToPartner(message);
        }
        catch (Exception x) when (x is not InvariantViolationException)
        {
            Notify(HandshakeEventKind.PartnerUnreachable, c.Key);
            return false;
        }
        Notify(sent, c.Key);
        return true;
    }

    static byte[] ForwardedFrame(HostCommand c) =>
        HostCodec.EncodeRequest(c.Request with { Flags = c.Request.Flags | HostRequestFlags.Forwarded });

    /// <summary>Time left until the limit: from the host's timestamp, trusted within the clock skew.</summary>
    TimeSpan LimitDelay(ulong hostTimestampMicros)
    {
        var now = _options.Time.GetUtcNow();
        long maxMicros = (DateTimeOffset.MaxValue - DateTimeOffset.UnixEpoch).Ticks / 10;
        var sent = hostTimestampMicros > (ulong)maxMicros ? now : DateTimeOffset.UnixEpoch.AddTicks((long)hostTimestampMicros * 10);
        var earliest = now - _options.MaxClockSkew;
        if (sent > now) sent = now;
        if (sent < earliest) sent = earliest;
        var delay = sent + _options.TimeLimit - now;
        Invariant.Assert(delay > TimeSpan.Zero);
        return delay;
    }

    void Remember(HostCommandKey key, HostCompletion? completion, HostStatus status, string volume, HostRequest? request, uint? digest = null)
    {
        if (_finished.TryGetValue(key, out var known))
        {
            if (completion is not null) _finished[key] = known with { Completion = completion, Status = status };
            return;
        }
        long sequence = ++_finishedSequence;
        _finished.Add(key, new Finished(completion, status, volume, request, sequence, digest));
        _finishedOrder.Enqueue((key, sequence));
        while (_finishedOrder.Count > _options.FinishedRememberedMax)
        {
            var (old, oldSequence) = _finishedOrder.Dequeue();
            if (_finished.TryGetValue(old, out var record) && record.Sequence == oldSequence) _finished.Remove(old);
        }
    }

    void Notify(HandshakeEventKind kind, HostCommandKey key)
    {
        Counters.Count(kind);
        _options.Observer?.Invoke(new HandshakeEvent(kind, key));
    }
}
