using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Duet.Core;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.HostProtocol;

/// <summary>How a host reaches a volume through the pair.</summary>
public enum HostPathMode
{
    /// <summary>Every command to both units of the group at once (FO-3): the pair decides who runs
    /// it, and a controller's death costs the host nothing but the handshake's time limit.</summary>
    Multicast,

    /// <summary>One unit at a time, the primary's first; on a lost connection, an Unavailable
    /// answer or no answer in time, the command is sent again to the other unit (as an ALUA
    /// multipath initiator behaves).</summary>
    PathFailover,
}

public sealed class HostSessionOptions
{
    public required ulong HostId { get; init; }

    public required string Volume { get; init; }

    /// <summary>Unit N of A and unit N of B (one multicast group), or one unit.</summary>
    public required IReadOnlyList<EndPoint> Units { get; init; }

    public HostPathMode Mode { get; init; } = HostPathMode.Multicast;

    /// <summary>Where tags come from. The units name a command by (unit, host id, tag) whatever
    /// its volume, so every session of one host id must draw from one source.</summary>
    public HostTagSource Tags { get; init; } = new();

    /// <summary>The host's clock: request timestamps, attempt timeouts and reconnect pauses.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;

    /// <summary>An attempt with no final answer after this long is given up and the command sent
    /// again (under a new tag unless the caller fixed it). Must be well above the pair's time limit (1.5 s by default).</summary>
    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>A command that has had no final answer after this long fails with an I/O error.</summary>
    public TimeSpan GiveUpAfter { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Pause between attempts to reconnect a lost unit, and before re-sending a command
    /// that no unit could take.</summary>
    public TimeSpan RetryInterval { get; init; } = TimeSpan.FromMilliseconds(100);

    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(2);

    public ILogger Logger { get; init; } = NullLogger.Instance;

    internal void Validate()
    {
        ArgumentException.ThrowIfNullOrEmpty(Volume);
        if (Units is null || Units.Count is < 1 or > 2) throw new ArgumentException("a host attaches to one unit or to the two units of a group", nameof(Units));
        if (AttemptTimeout <= TimeSpan.Zero || GiveUpAfter < AttemptTimeout || RetryInterval <= TimeSpan.Zero || ConnectTimeout <= TimeSpan.Zero)
            throw new ArgumentException("timeouts must be positive, and GiveUpAfter at least AttemptTimeout");
    }
}

/// <summary>Tags of one host id: unique among all its commands, on every volume and unit. The AW-1
/// adapter pair gives each process that acts for the host id a generation in the top 16 bits
/// (<see cref="ForGeneration"/>), so a backup that takes over never draws a tag its primary used.</summary>
public sealed class HostTagSource(ulong first = 1)
{
    public const int GenerationShift = 48;

    /// <summary>Tags (generation &lt;&lt; 48) + 1, + 2, ...</summary>
    public static HostTagSource ForGeneration(ushort generation) => new(((ulong)generation << GenerationShift) + 1);

    long _next = (long)first - 1;

    public ulong Next() => (ulong)Interlocked.Increment(ref _next);
}

/// <summary>
/// The production host side of Duet's host protocol for one volume: connections to one or both
/// units of a group, kept up (a lost unit is reconnected in the background), and commands that
/// survive a controller's death. In <see cref="HostPathMode.Multicast"/> every command goes to
/// every connected unit under one tag; in <see cref="HostPathMode.PathFailover"/> to one unit.
/// The first final answer per tag wins. An attempt that every unit it reached lost, answered
/// Unavailable, or left unanswered past <see cref="HostSessionOptions.AttemptTimeout"/> is sent
/// again — under a new tag, or under the caller's tag when it gave one (the units merge or answer
/// a copy of a command they know) — until
/// <see cref="HostSessionOptions.GiveUpAfter"/>. See docs/internals/host-adapter.md.
/// </summary>
public sealed class HostSession : IAsyncDisposable
{
    readonly HostSessionOptions _options;
    readonly Link[] _links;
    readonly ConcurrentDictionary<ulong, Attempt> _pending = new();
    readonly CancellationTokenSource _disposed = new();
    readonly Lock _lock = new();
    TaskCompletionSource _linkUp = NewSignal();
    int _active; // PathFailover: the link commands go to
    long _attempts, _resends, _duplicates;

    HostSession(HostSessionOptions options)
    {
        _options = options;
        _links = [.. options.Units.Select((e, i) => new Link(i, e))];
    }

    static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    sealed class Link(int index, EndPoint endpoint)
    {
        public readonly int Index = index;
        public readonly EndPoint Endpoint = endpoint;
        public readonly AsyncGate WriteGate = new(1, 1);
        public volatile Stream? Stream;
        /// <summary>The connection's reader thread (<see cref="ConnectionReader"/>), made with the connection.</summary>
        public volatile ConnectionReader? Reader;
        public HostHelloReply Hello;
        public Task Runner = Task.CompletedTask;
        public string? LastError;
        public long Connects;
    }

    /// <summary>One try of a command: the links it went to and which of them are out of it.</summary>
    sealed class Attempt(int[] targets)
    {
        public readonly TaskCompletionSource<HostCompletion?> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly int[] Targets = targets;
        public readonly bool[] Out = new bool[2];
    }

    public string Volume => _options.Volume;

    public HostPathMode Mode => _options.Mode;

    /// <summary>Size, read-only flag and largest request, from the first hello.</summary>
    public long SizeBytes { get; private set; }

    public bool ReadOnly { get; private set; }

    public int PayloadBytesMax { get; private set; }

    /// <summary>Attempts sent (a command sent again counts again), and those that were re-sends.</summary>
    public long Attempts => Interlocked.Read(ref _attempts);

    public long Resends => Interlocked.Read(ref _resends);

    /// <summary>Answers after the first for a tag (both units answered).</summary>
    public long DuplicateCompletions => Interlocked.Read(ref _duplicates);

    /// <summary>Completions read on the reader threads of the live unit connections, and how many of those reads slept
    /// in poll first (tests, diagnostics).</summary>
    public (long Reads, long Sleeps) ReaderThreadReads
    {
        get
        {
            long reads = 0, sleeps = 0;
            foreach (var link in _links)
                if (link.Reader is { } r) { var c = r.Counts; reads += c.Reads; sleeps += c.Sleeps; }
            return (reads, sleeps);
        }
    }

    /// <summary>Which units are connected now, e.g. "A0 up, B0 down (connection refused)".</summary>
    public string Describe() => string.Join(", ", _links.Select(l => l.Stream is null
        ? $"{l.Endpoint} down{(l.LastError is null ? "" : $" ({l.LastError})")}"
        : $"{l.Hello.Controller}{l.Hello.Unit} up{((l.Hello.Flags & HostVolumeFlags.Primary) != 0 ? " (primary)" : "")}"));

    /// <summary>Attaches the volume on every unit. At least one must answer; the others are
    /// retried in the background. Throws <see cref="IOException"/> when none attaches.</summary>
    public static async Task<HostSession> OpenAsync(HostSessionOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var session = new HostSession(options);
        var first = await Task.WhenAll(session._links.Select(l => session.TryConnectAsync(l, cancellationToken)));
        var up = session._links.Where((l, i) => first[i]).ToArray();
        if (up.Length == 0)
        {
            await session.DisposeAsync();
            throw new IOException($"volume '{options.Volume}': no unit attached it: {session.Describe()}");
        }
        var hello = up[0].Hello;
        session.SizeBytes = (long)hello.VolumeSizeBytes;
        session.ReadOnly = (hello.Flags & HostVolumeFlags.ReadOnly) != 0;
        session.PayloadBytesMax = (int)Math.Min(up.Min(l => l.Hello.PayloadBytesMax), HostWire.PayloadBytesMax);
        var primary = up.FirstOrDefault(l => (l.Hello.Flags & HostVolumeFlags.Primary) != 0) ?? up[0];
        session._active = primary.Index;
        foreach (var link in session._links) link.Runner = session.KeepUpAsync(link, connected: first[link.Index]);
        return session;
    }

    async Task<bool> TryConnectAsync(Link link, CancellationToken cancellationToken)
    {
        Socket? socket = null;
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _disposed.Token);
            timeout.CancelAfter(_options.ConnectTimeout);
            socket = link.Endpoint is UnixDomainSocketEndPoint
                ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                : new Socket(link.Endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await socket.ConnectAsync(link.Endpoint, timeout.Token);
            var stream = new NetworkStream(socket, ownsSocket: true);
            socket = null;
            try
            {
                var request = new HostHello(_options.HostId, _options.Volume);
                var hello = new byte[HostCodec.HelloBytes(request)];
                HostCodec.WriteHello(request, hello);
                await stream.WriteAsync(hello, timeout.Token);
                var replyBytes = new byte[HostWire.HelloReplyBytes];
                await stream.ReadExactlyAsync(replyBytes, timeout.Token);
                var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(replyBytes));
                if (HostCodec.TryReadHelloReply(ref reader, out var reply, out var error) != OperationStatus.Done)
                    throw new IOException($"malformed hello reply ({error})");
                if (reply.Status != HostStatus.Ok)
                    throw new IOException($"unit {reply.Controller}{reply.Unit} refused volume '{_options.Volume}': {reply.Status}");
                if (SizeBytes != 0 && (long)reply.VolumeSizeBytes != SizeBytes)
                    throw new IOException($"unit {reply.Controller}{reply.Unit} reports volume '{_options.Volume}' as {reply.VolumeSizeBytes} bytes, not {SizeBytes}");
                link.Hello = reply;
                link.LastError = null;
                link.Connects++;
                link.Reader = new ConnectionReader(stream.Socket, stream, $"host-session-{link.Index}");
                link.Stream = stream;
                stream = null!;
            }
            finally
            {
                if (stream is not null) await stream.DisposeAsync();
            }
            HostSessionLog.UnitUp(_options.Logger, _options.Volume, link.Endpoint, link.Hello.Controller, link.Hello.Unit);
            lock (_lock) _linkUp.TrySetResult();
            return true;
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or EndOfStreamException)
        {
            socket?.Dispose();
            link.LastError = e is OperationCanceledException ? "no answer" : e.Message;
            return false;
        }
    }

    /// <summary>Per link: receive while connected; when the connection is lost, fail the link out
    /// of every attempt and reconnect after a pause, until disposed.</summary>
    async Task KeepUpAsync(Link link, bool connected)
    {
        while (!_disposed.IsCancellationRequested)
        {
            if (connected)
            {
                await ReceiveAsync(link, link.Stream!);
                var stream = link.Stream;
                link.Stream = null;
                if (stream is not null) await stream.DisposeAsync();
                // The loop ended on the reader's thread: it ends once what is queued on it has run (this continuation).
                var reader = link.Reader;
                link.Reader = null;
                reader?.Stop();
                HostSessionLog.UnitDown(_options.Logger, _options.Volume, link.Endpoint, link.LastError ?? "closed");
                // Path failover moves to the other path now and stays there: a path that comes back is
                // the standby path, as an ALUA initiator treats it.
                if (_options.Mode == HostPathMode.PathFailover) FailOver(link.Index);
                foreach (var attempt in _pending.Values) TakeOut(attempt, link.Index);
            }
            try
            {
                await Task.Delay(_options.RetryInterval, _options.Clock, _disposed.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            connected = await TryConnectAsync(link, CancellationToken.None);
        }
    }

    async Task ReceiveAsync(Link link, Stream stream)
    {
        if (await HostCompletionReader.ReceiveAsync(stream, link.Reader, c => Deliver(link, c), _disposed.Token) is { } why) link.LastError = why;
    }

    static bool Retryable(HostStatus status) => status is HostStatus.Unavailable or HostStatus.NotAttached;

    void Deliver(Link link, HostCompletion completion)
    {
        if (!_pending.TryGetValue(completion.HostTag, out var attempt))
        {
            Interlocked.Increment(ref _duplicates);
            return;
        }
        if (Retryable(completion.Status)) TakeOut(attempt, link.Index);
        else if (!attempt.Done.TrySetResult(completion)) Interlocked.Increment(ref _duplicates);
    }

    /// <summary>Link <paramref name="index"/> will not answer this attempt; when no target is
    /// left, the attempt ends without an answer and is sent again.</summary>
    static void TakeOut(Attempt attempt, int index)
    {
        lock (attempt)
        {
            attempt.Out[index] = true;
            if (attempt.Targets.All(t => attempt.Out[t])) attempt.Done.TrySetResult(null);
        }
    }

    /// <summary>
    /// Runs one command to a final answer: the first answer other than Unavailable from any unit
    /// it went to. Never throws for the pair's behaviour: after <see cref="HostSessionOptions.GiveUpAfter"/>
    /// it answers <see cref="HostStatus.IoError"/>; throws only when cancelled or disposed.
    /// </summary>
    public Task<HostCompletion> ExecuteAsync(HostOpcode opcode, long offset, int length, ReadOnlyMemory<byte> payload, bool fua,
        CancellationToken cancellationToken = default) =>
        ExecuteCoreAsync(opcode, offset, length, payload, fua, tag: null, cancellationToken);

    /// <summary>
    /// As <see cref="ExecuteAsync(HostOpcode, long, int, ReadOnlyMemory{byte}, bool, CancellationToken)"/>,
    /// but every attempt goes under <paramref name="tag"/> (the caller drew it, from this host id's
    /// tag source or a checkpoint): the command runs at most once whatever the re-sends — a copy
    /// that meets a queued one merges with it, one that comes late is answered from memory. The
    /// AW-1 adapter pair sends its writes so, because re-sending a write under a new tag could run
    /// it again after a later write over the same blocks.
    /// </summary>
    public Task<HostCompletion> ExecuteAsync(HostOpcode opcode, long offset, int length, ReadOnlyMemory<byte> payload, bool fua, ulong tag,
        CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfZero(tag);
        return ExecuteCoreAsync(opcode, offset, length, payload, fua, tag, cancellationToken);
    }

    async Task<HostCompletion> ExecuteCoreAsync(HostOpcode opcode, long offset, int length, ReadOnlyMemory<byte> payload, bool fua, ulong? tag,
        CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed.IsCancellationRequested, this);
        var clock = _options.Clock;
        long start = clock.GetTimestamp();
        int tries = 0;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            ObjectDisposedException.ThrowIf(_disposed.IsCancellationRequested, this);
            var remaining = _options.GiveUpAfter - clock.GetElapsedTime(start);
            if (remaining <= TimeSpan.Zero)
            {
                HostSessionLog.GaveUp(_options.Logger, _options.Volume, opcode, offset, length, tries, Describe());
                return HostCompletion.Error(0, HostStatus.IoError);
            }
            var targets = Targets();
            if (targets.Length == 0)
            {
                await WaitForLinkAsync(remaining, cancellationToken);
                continue;
            }
            if (tries++ > 0) Interlocked.Increment(ref _resends);
            var completion = await AttemptAsync(targets, opcode, offset, length, payload, fua, tag, Min(remaining, _options.AttemptTimeout), cancellationToken);
            if (completion is not null) return completion;
            if (_options.Mode == HostPathMode.PathFailover) FailOver(targets[0]);
            await Task.Delay(_options.RetryInterval, clock, cancellationToken);
        }
    }

    static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    int[] Targets()
    {
        if (_options.Mode == HostPathMode.Multicast) return [.. _links.Where(l => l.Stream is not null).Select(l => l.Index)];
        int active = Volatile.Read(ref _active);
        if (_links[active].Stream is not null) return [active];
        var other = _links.FirstOrDefault(l => l.Stream is not null);
        if (other is null) return [];
        Interlocked.CompareExchange(ref _active, other.Index, active);
        return [other.Index];
    }

    void FailOver(int from)
    {
        if (_links.Length < 2) return;
        if (Interlocked.CompareExchange(ref _active, 1 - from, from) == from)
            HostSessionLog.PathSwitched(_options.Logger, _options.Volume, _links[from].Endpoint, _links[1 - from].Endpoint);
    }

    async Task WaitForLinkAsync(TimeSpan limit, CancellationToken cancellationToken)
    {
        Task signal;
        lock (_lock)
        {
            if (_linkUp.Task.IsCompleted) _linkUp = NewSignal();
            signal = _linkUp.Task;
        }
        if (_links.Any(l => l.Stream is not null)) return;
        try
        {
            await signal.WaitAsync(Min(limit, _options.RetryInterval * 10), _options.Clock, cancellationToken);
        }
        catch (TimeoutException)
        {
        }
    }

    async Task<HostCompletion?> AttemptAsync(int[] targets, HostOpcode opcode, long offset, int length, ReadOnlyMemory<byte> payload, bool fua,
        ulong? fixedTag, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var flags = fua ? HostRequestFlags.Fua : HostRequestFlags.None;
        if (targets.Length > 1) flags |= HostRequestFlags.Multicast;
        ulong tag = fixedTag ?? _options.Tags.Next();
        ulong timestamp = (ulong)(_options.Clock.GetUtcNow() - DateTimeOffset.UnixEpoch).Ticks / 10;
        var frame = HostCodec.EncodeRequest(new HostRequest(opcode, flags, _options.HostId, tag, timestamp, (ulong)offset, (uint)length, payload));
        var attempt = new Attempt(targets);
        _pending[tag] = attempt;
        Interlocked.Increment(ref _attempts);
        try
        {
            foreach (var i in targets)
            {
                if (!await SendAsync(_links[i], frame)) TakeOut(attempt, i);
            }
            try
            {
                return await attempt.Done.Task.WaitAsync(timeout, _options.Clock, cancellationToken);
            }
            catch (TimeoutException)
            {
                HostSessionLog.AttemptTimedOut(_options.Logger, _options.Volume, tag, opcode, offset, length, timeout);
                return null;
            }
        }
        finally
        {
            _pending.TryRemove(tag, out _);
        }
    }

    async Task<bool> SendAsync(Link link, byte[] frame)
    {
        var stream = link.Stream;
        if (stream is null) return false;
        await link.WriteGate.WaitAsync();
        try
        {
            await stream.WriteAsync(frame);
            return true;
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            link.LastError = e.Message;
            return false; // the receiver notices the lost connection and reconnects
        }
        finally
        {
            link.WriteGate.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed.IsCancellationRequested) return;
        _disposed.Cancel();
        foreach (var link in _links)
        {
            link.Reader?.StopReceiving(); // a read asleep in its own receive sees the end of the stream
            if (link.Stream is { } s) await s.DisposeAsync();
        }
        foreach (var link in _links)
        {
            try { await link.Runner; }
            catch (OperationCanceledException) { }
        }
        foreach (var attempt in _pending.Values) attempt.Done.TrySetResult(null);
    }

    /// <summary>Asks the first unit that answers for every volume it attaches.</summary>
    public static async Task<HostVolumeList> ListAsync(IReadOnlyList<EndPoint> units, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        var errors = new List<string>();
        foreach (var endpoint in units)
        {
            try
            {
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                cts.CancelAfter(timeout);
                using var socket = endpoint is UnixDomainSocketEndPoint
                    ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                    : new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                await socket.ConnectAsync(endpoint, cts.Token);
                await using var stream = new NetworkStream(socket, ownsSocket: false);
                var request = new byte[HostWire.ListBytes];
                HostCodec.WriteList(request);
                await stream.WriteAsync(request, cts.Token);
                var input = PipeReader.Create(stream, new StreamPipeReaderOptions(leaveOpen: true));
                try
                {
                    while (true)
                    {
                        var result = await input.ReadAsync(cts.Token);
                        var reader = new SequenceReader<byte>(result.Buffer);
                        var status = HostCodec.TryReadListReply(ref reader, out var list, out var error);
                        if (status == OperationStatus.Done && list!.Status == HostStatus.Ok) return list;
                        if (status == OperationStatus.Done) throw new IOException($"answered the list with {list!.Status}");
                        if (status == OperationStatus.InvalidData) throw new IOException($"malformed list reply ({error})");
                        if (result.IsCompleted) throw new IOException("closed the connection before answering the list");
                        input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
                    }
                }
                finally
                {
                    await input.CompleteAsync();
                }
            }
            catch (Exception e) when (e is IOException or SocketException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                errors.Add($"{endpoint}: {(e is OperationCanceledException ? "no answer" : e.Message)}");
            }
        }
        throw new IOException($"no unit listed its volumes: {string.Join("; ", errors)}");
    }
}

static partial class HostSessionLog
{
    [LoggerMessage(1, LogLevel.Information, "volume '{Volume}': unit {Controller}{Unit} at {Endpoint} attached")]
    public static partial void UnitUp(ILogger logger, string volume, EndPoint endpoint, char controller, byte unit);

    [LoggerMessage(2, LogLevel.Warning, "volume '{Volume}': lost unit at {Endpoint} ({Reason}); reconnecting")]
    public static partial void UnitDown(ILogger logger, string volume, EndPoint endpoint, string reason);

    [LoggerMessage(3, LogLevel.Warning, "volume '{Volume}': tag {Tag} ({Opcode} {Offset}+{Length}) had no answer within {Timeout}; sending it again")]
    public static partial void AttemptTimedOut(ILogger logger, string volume, ulong tag, HostOpcode opcode, long offset, int length, TimeSpan timeout);

    [LoggerMessage(4, LogLevel.Warning, "volume '{Volume}': path from {From} to {To}")]
    public static partial void PathSwitched(ILogger logger, string volume, EndPoint from, EndPoint to);

    [LoggerMessage(5, LogLevel.Error, "volume '{Volume}': {Opcode} {Offset}+{Length} failed after {Tries} attempts; units: {Units}")]
    public static partial void GaveUp(ILogger logger, string volume, HostOpcode opcode, long offset, int length, int tries, string units);
}
