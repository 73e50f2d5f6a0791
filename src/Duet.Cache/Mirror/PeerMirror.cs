using System.Buffers;
using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Microsoft.Extensions.Logging;

namespace Duet.Cache.Mirror;

/// <summary>How mirrored writes cross the link.</summary>
public enum MirrorMethod
{
    /// <summary>CC-2/CC-3: changes accumulate in the coherency log's filling list while the active
    /// batch is in flight; one WRITE BUFFER-style transfer per batch, one status back.</summary>
    Batched,
    /// <summary>The seed's per-write messages, small (MR-3) or large (MR-2) as figure 7 (MR-4) chooses.</summary>
    Seed,
    /// <summary>The seed's large path for every write (for measurement).</summary>
    SeedLarge,
    /// <summary>No mirror at all (<see cref="NoMirror"/>): for measuring what the mirror costs. Unsafe.</summary>
    None,
}

public sealed record PeerMirrorOptions
{
    public MirrorMethod Path { get; init; } = MirrorMethod.Batched;
    /// <summary>MR-3's opcode for this controller's small writes: 0xA0 for A, 0xB0 for B.</summary>
    public required byte SmallWriteOpcode { get; init; }
    /// <summary>How long the peer may take to answer a transfer before it is declared gone.</summary>
    public TimeSpan StatusTimeout { get; init; } = TimeSpan.FromSeconds(2);
    public int BatchBytesMax { get; init; } = 4 << 20;
    public TimeProvider Time { get; init; } = TimeProvider.System;
}

/// <summary>
/// The sending side of the mirror (MR-1): the owner's changes, in order, into the peer's region 2.
///
/// One operation is on the link at a time — a batch, or one seed write — and the next waits for
/// the peer's status (flow control by reply, ICL-4); changes appended meanwhile gather in the
/// coherency log's filling list (CC-2), which is what makes batching pay under load.
///
///   batched:    [WRITE BUFFER cdb + headers | data] ──▶  ◀── status           2 doorbells per batch
///   seed small: [12-byte command] ──▶ [data] ──▶  ◀── status                 3 doorbells per write
///   seed large: [0x3C] ──▶ [1024-byte metadata] ──▶ [data] ──▶  ◀── status   4 doorbells per write
///
/// If the link drops or the peer does not answer within the status timeout, every pending group
/// fails with <see cref="MirrorUnavailableException"/> and the mirror stays down (error-recovery
/// mode) until <see cref="Resume"/>.
/// </summary>
public sealed partial class PeerMirror : ICacheMirror, IAsyncDisposable
{
    readonly IIclLink _link;
    readonly Func<ulong> _epoch;
    readonly PeerMirrorOptions _options;
    readonly ILogger _logger;
    readonly Lock _sync = new();
    CoherencyLog _log;
    long _appended, _completed;
    readonly Queue<(long End, TaskCompletionSource Done)> _groups = new();
    readonly Queue<(IReadOnlyList<MirrorChange> Changes, TaskCompletionSource Done)> _seedQueue = new();
    TaskCompletionSource<StatusMessage>? _status;
    TaskCompletionSource _wake = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly CancellationTokenSource _stop = new();
    readonly Task _pump;
    bool _down = true;
    uint _metadataSequence;
    string _downReason = "not yet paired";

    // counters (MR-6 and the benchmark)
    long _batches, _smallWrites, _largeWrites, _groupsMirrored, _groupsAppended;

    public PeerMirror(IIclLink link, Func<ulong> epoch, PeerMirrorOptions options, ILogger logger)
    {
        _link = link;
        _epoch = epoch;
        _options = options;
        _logger = logger;
        _log = new CoherencyLog(options.BatchBytesMax);
        _link.UpChanged += up => { if (!up) Fail("the link went down"); };
        _pump = PumpAsync(_stop.Token);
    }

    public MirrorMode Mode
    {
        get { lock (_sync) return _down || !_link.IsUp ? MirrorMode.ErrorRecovery : MirrorMode.Healthy; }
    }

    public string? DownReason { get { lock (_sync) return _down ? _downReason : null; } }

    /// <summary>Replaced elements the peer retired by the flag of their successor's reference block or base block
    /// (a multicast image, or a rewrite sent with its base), each one invalidation header not sent.</summary>
    public long RetiredByReference => Interlocked.Read(ref _retiredByReference);
    long _retiredByReference;

    public MirrorCounters Counters => new(Interlocked.Read(ref _batches), Interlocked.Read(ref _smallWrites), Interlocked.Read(ref _largeWrites),
        Interlocked.Read(ref _groupsMirrored), Interlocked.Read(ref _groupsAppended));

    /// <summary>Marks the mirror usable (the peer is paired and its region 2 matches what this
    /// controller will send from now on: empty, or resynchronised by the caller).</summary>
    public void Resume()
    {
        lock (_sync)
        {
            _log = new CoherencyLog(_options.BatchBytesMax);
            _appended = _completed = 0;
            _down = false;
        }
        LogResumed();
    }

    /// <summary>The mirror's state in one line (the simulator's report of a run that does not finish).</summary>
    public string DescribeState()
    {
        lock (_sync)
            return $"mirror {(_down ? "down" : "up")}, groups waiting {_groups.Count + _seedQueue.Count}, headers appended {_appended} mirrored {_completed}, " +
                   $"status awaited {_status is not null}, pump {_pump.Status}{(_pump.Exception is { } e ? $" ({e.InnerException?.GetType().Name}: {e.InnerException?.Message})" : "")}";
    }

    /// <summary>Batched: a coherency header carries an image with gaps (by reference too: the peer composes the
    /// kept and the host's sectors and leaves the gaps invalid).</summary>
    public bool CarriesGaps => _options.Path == MirrorMethod.Batched;

    public Task AppendGroup(IReadOnlyList<MirrorChange> changes)
    {
        // Batched: the pump completes a batch's groups itself, while the next batch is on the link,
        // and their writers' continuations run right there (one thread acknowledging a batch's
        // writes in turn, rather than a thread-pool hop, and often a thread wake-up, for each).
        var done = _options.Path == MirrorMethod.Batched
            ? new TaskCompletionSource()
            : new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_sync)
        {
            if (_down || !_link.IsUp) throw new MirrorUnavailableException($"the peer mirror is down: {_downReason}");
            if (_options.Path == MirrorMethod.Batched)
            {
                // An image sent by reference, or with the element it replaces as its base, retires that element itself
                // (a flag of its reference or base block): the group's invalidation of it is not sent (32 bytes).
                // Only an element the group does invalidate (the cache's order: images, then invalidations). A group
                // is one host write's few elements: looked up in place, nothing allocated on the write path.
                static bool Retires(in MirrorChange c) => !c.Invalidate && c.Replaces >= 0 &&
                    (c.Reference is not null ? c.KeepFrom < 0 || c.KeepFrom == c.Replaces : MirrorApplier.GoesWithBase(c) && c.KeepFrom == c.Replaces);
                bool Invalidated(int element)
                {
                    for (int i = 0; i < changes.Count; i++) if (changes[i].Invalidate && changes[i].Element == element) return true;
                    return false;
                }
                bool RetiredByImage(int element)
                {
                    for (int i = 0; i < changes.Count; i++) if (Retires(changes[i]) && changes[i].Replaces == element) return true;
                    return false;
                }
                int headers = 0;
                for (int i = 0; i < changes.Count; i++)
                {
                    var c = changes[i];
                    if (c.Invalidate)
                    {
                        if (RetiredByImage(c.Element)) _retiredByReference++;
                        else
                        {
                            _log.AppendInvalidate(MirrorApplier.Encode(c).Header);
                            headers++;
                        }
                        continue;
                    }
                    var (header, prefix, data) = MirrorApplier.EncodeParts(c, byReference: true, retiresReplaced: Retires(c) && Invalidated(c.Replaces), withBase: true);
                    _log.AppendMirror(header, prefix, data);
                    headers++;
                }
                _appended += headers;
                _groups.Enqueue((_appended, done));
            }
            else
            {
                _seedQueue.Enqueue((changes, done));
            }
        }
        Interlocked.Increment(ref _groupsAppended);
        _wake.TrySetResult();
        return done.Task;
    }

    /// <summary>A reply transfer from the peer: the status of the operation in flight.</summary>
    public void OnReply(ReadOnlySpan<byte> message)
    {
        if (!StatusMessage.TryDecode(message, out var status, out var error))
        {
            LogBadStatus(error.ToString());
            return;
        }
        TaskCompletionSource<StatusMessage>? waiter;
        lock (_sync) waiter = _status;
        waiter?.TrySetResult(status);
    }

    /// <summary>The peer is gone: every pending write fails over to write-through; stays down until Resume.</summary>
    public void Fail(string reason)
    {
        List<TaskCompletionSource> failed = [];
        lock (_sync)
        {
            if (!_down) LogDown(reason);
            _down = true;
            _downReason = reason;
            while (_groups.TryDequeue(out var g)) failed.Add(g.Done);
            while (_seedQueue.TryDequeue(out var s)) failed.Add(s.Done);
            _status?.TrySetException(new MirrorUnavailableException(reason));
        }
        foreach (var f in failed) f.TrySetException(new MirrorUnavailableException($"the peer mirror went down: {reason}"));
    }

    async Task PumpAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            var wake = Volatile.Read(ref _wake);
            try { await Waits.OrCancel(wake.Task, ct); }
            catch (OperationCanceledException) { return; }
            Interlocked.CompareExchange(ref _wake, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously), wake);
            try
            {
                if (_options.Path == MirrorMethod.Batched) await PumpBatchesAsync(ct);
                else await PumpSeedAsync(ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return; }
            catch (Exception e) when (e is IclLinkDownException or TimeoutException or MirrorUnavailableException or InvalidDataException)
            {
                Fail(e.Message);
            }
        }
    }

    async Task<StatusMessage> ExchangeAsync(Func<ValueTask> send, CancellationToken ct)
    {
        var waiter = new TaskCompletionSource<StatusMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_sync)
        {
            if (_down) throw new MirrorUnavailableException(_downReason);
            _status = waiter;
        }
        try
        {
            await send();
            var limitMs = _options.StatusTimeout.TotalMilliseconds;
            using var limit = _options.Time.CreateTimer(s => ((TaskCompletionSource<StatusMessage>)s!).TrySetException(
                new TimeoutException($"the peer's status of a mirror transfer did not come within {limitMs} ms")), waiter, _options.StatusTimeout, Timeout.InfiniteTimeSpan);
            using var cancel = ct.UnsafeRegister(static (s, token) => ((TaskCompletionSource<StatusMessage>)s!).TrySetCanceled(token), waiter);
            var status = await waiter.Task;
            if (status.Code != MirrorStatusCode.Ok) throw new InvalidDataException($"the peer refused a mirror transfer: {status.Code}");
            return status;
        }
        finally
        {
            lock (_sync) if (_status == waiter) _status = null;
        }
    }

    async Task PumpBatchesAsync(CancellationToken ct)
    {
        // The groups of the batch the peer acknowledged last: completed once the next batch is on
        // the link (or when there is none, or the link failed: they are mirrored either way), so
        // their writers' continuations run while the peer works on the next batch.
        List<TaskCompletionSource>? acknowledged = null;
        try
        {
            while (true)
            {
                CoherencyBatch? batch;
                lock (_sync)
                {
                    if (_down || !_log.TryTakeActive(out batch)) return;
                }
                var head = batch.Segments[0];
                int dataBytes = (int)(batch.TotalBytes - head.Length);
                byte[]? rented = dataBytes > 0 ? ArrayPool<byte>.Shared.Rent(dataBytes) : null;
                try
                {
                    int at = 0;
                    for (int i = 1; i < batch.Segments.Count; i++) { batch.Segments[i].Span.CopyTo(rented.AsSpan(at)); at += batch.Segments[i].Length; }
                    var data = rented is null ? ReadOnlyMemory<byte>.Empty : rented.AsMemory(0, dataBytes);
                    var exchange = ExchangeAsync(() => _link.PostAsync(data.IsEmpty ? IclSignal.Message : IclSignal.MessageWithData, _epoch(), head, data, ct), ct);
                    Acknowledge(ref acknowledged);
                    var status = await exchange;
                    if (status.Sequence != (batch.BatchNumber & 0xFFFFFF)) throw new InvalidDataException($"status for batch {status.Sequence} while batch {batch.BatchNumber} was in flight");
                }
                finally
                {
                    if (rented is not null) ArrayPool<byte>.Shared.Return(rented);
                }
                List<TaskCompletionSource> done = [];
                lock (_sync)
                {
                    _log.CompleteActive();
                    _completed += batch.Appends;
                    while (_groups.TryPeek(out var g) && g.End <= _completed) done.Add(_groups.Dequeue().Done);
                }
                Interlocked.Increment(ref _batches);
                Interlocked.Add(ref _groupsMirrored, done.Count);
                acknowledged = done;
            }
        }
        finally
        {
            Acknowledge(ref acknowledged);
        }
    }

    static void Acknowledge(ref List<TaskCompletionSource>? groups)
    {
        var list = groups;
        groups = null;
        if (list is not null) foreach (var d in list) d.TrySetResult();
    }

    async Task PumpSeedAsync(CancellationToken ct)
    {
        while (true)
        {
            (IReadOnlyList<MirrorChange> Changes, TaskCompletionSource Done) item;
            lock (_sync)
            {
                if (_down || !_seedQueue.TryDequeue(out item)) return;
            }
            try
            {
                var mirrors = item.Changes.Where(c => !c.Invalidate).ToList();
                var invalidations = item.Changes.Where(c => c.Invalidate).ToList();
                // Consecutive element images that continue each other form one seed write.
                int i = 0;
                while (i < mirrors.Count)
                {
                    int j = i + 1;
                    while (j < mirrors.Count && Start(mirrors[j]) == End(mirrors[j - 1]) && mirrors[j].Descriptor.ArrayNumber == mirrors[i].Descriptor.ArrayNumber) j++;
                    await SendSeedWriteAsync(mirrors.GetRange(i, j - i), ct);
                    i = j;
                }
                if (invalidations.Count > 0)
                {
                    // The seed has no message for dropping an element: Duet sends a header-only batch.
                    var log = new CoherencyLog(_options.BatchBytesMax);
                    foreach (var c in invalidations) log.AppendInvalidate(MirrorApplier.Encode(c).Header);
                    Invariant.Assert(log.TryTakeActive(out var batch));
                    await ExchangeAsync(() => _link.PostAsync(IclSignal.Message, _epoch(), batch.Segments[0], default, ct), ct);
                }
            }
            catch (Exception e)
            {
                // The group in hand is out of the queue, so Fail (which the pump calls next) cannot reach it: its writer
                // learns here that it was not mirrored, and writes through (it used to wait for ever).
                item.Done.TrySetException(new MirrorUnavailableException($"the peer mirror went down: {e.Message}"));
                throw;
            }
            Interlocked.Increment(ref _groupsMirrored);
            item.Done.TrySetResult();
        }
    }

    static long Start(in MirrorChange c) => c.Descriptor.ArrayLba + System.Numerics.BitOperations.TrailingZeroCount(c.Descriptor.ValidMask);
    static long End(in MirrorChange c) => c.Descriptor.ArrayLba + 32 - System.Numerics.BitOperations.LeadingZeroCount(c.Descriptor.ValidMask);

    async Task SendSeedWriteAsync(List<MirrorChange> images, CancellationToken ct)
    {
        var first = images[0].Descriptor;
        var elements = new List<SgElement>(images.Count);
        int bytes = 0;
        foreach (var c in images)
        {
            var (h, data) = MirrorApplier.Encode(c);
            elements.Add(new SgElement(h.ElementIndex * (uint)Units.SectorBytes, (uint)data.Length));
            bytes += data.Length;
        }
        var buffer = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            int at = 0;
            foreach (var c in images)
            {
                var data = MirrorApplier.Encode(c).Data;
                data.Span.CopyTo(buffer.AsSpan(at));
                at += data.Length;
            }
            var payload = buffer.AsMemory(0, bytes);
            ulong lba = (ulong)Start(images[0]);
            var decision = _options.Path == MirrorMethod.SeedLarge
                ? new MirrorPathDecision(Duet.Interconnect.Wire.MirrorPath.Large, "large path forced")
                : MirrorPathChooser.Choose(elements, errorRecovery: false, peerInitialised: true, lba);
            ulong epoch = _epoch();
            if (decision.Path == Duet.Interconnect.Wire.MirrorPath.Small)
            {
                var small = SmallWriteMirrorMessage.Create(_options.SmallWriteOpcode,
                    elements[0].NvramOffset, (int)(elements[0].ByteCount / Units.SectorBytes),
                    elements.Count > 1 ? elements[1].NvramOffset : 0, elements.Count > 1 ? (int)(elements[1].ByteCount / Units.SectorBytes) : 0,
                    first.ArrayNumber, (uint)lba);
                var command = new byte[SmallWriteMirrorMessage.Size];
                small.Encode(command);
                await ExchangeAsync(async () =>
                {
                    await _link.PostAsync(IclSignal.Message, epoch, command, default, ct);
                    await _link.PostAsync(IclSignal.MessageWithData, epoch, default, payload, ct);
                }, ct);
                Interlocked.Increment(ref _smallWrites);
            }
            else
            {
                var metadata = new MetadataMirrorMessage
                {
                    Sequence = ++_metadataSequence, Lba = lba, BlockCount = (uint)(bytes / Units.SectorBytes), ArraySerial = first.ArraySerial,
                    Region = MirrorWire.RegionSecond, ArrayNumber = first.ArrayNumber, Elements = elements,
                };
                var notice = new byte[NotificationMirrorMessage.Size];
                new NotificationMirrorMessage().Encode(notice);
                var meta = new byte[MetadataMirrorMessage.Size];
                metadata.Encode(meta);
                await ExchangeAsync(async () =>
                {
                    await _link.PostAsync(IclSignal.Message, epoch, notice, default, ct);
                    await _link.PostAsync(IclSignal.Message, epoch, meta, default, ct);
                    await _link.PostAsync(IclSignal.MessageWithData, epoch, default, payload, ct);
                }, ct);
                Interlocked.Increment(ref _largeWrites);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        Fail("stopping");
        try { await _pump; } catch (OperationCanceledException) { }
    }

    [LoggerMessage(EventId = 5001, Level = LogLevel.Warning, Message = "peer mirror down: {Reason}; writes go through to the drives (error-recovery mode)")]
    partial void LogDown(string reason);
    [LoggerMessage(EventId = 5002, Level = LogLevel.Information, Message = "peer mirror resumed")]
    partial void LogResumed();
    [LoggerMessage(EventId = 5003, Level = LogLevel.Warning, Message = "malformed status from the peer: {Error}")]
    partial void LogBadStatus(string error);
}

public readonly record struct MirrorCounters(long Batches, long SmallWrites, long LargeWrites, long GroupsMirrored, long GroupsAppended);
