using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Duet.Core;

namespace Duet.HostProtocol;

/// <summary>How a <see cref="TestHost"/> connects and times its commands.</summary>
public sealed class TestHostOptions
{
    public required ulong HostId { get; init; }

    public required string Volume { get; init; }

    /// <summary>One unit, or the two units of a multicast group (unit N of A and unit N of B).</summary>
    public required IReadOnlyList<IPEndPoint> Units { get; init; }

    /// <summary>The host's clock: the source of every request's timestamp (µs since the Unix epoch).</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;

    /// <summary>The clock of <see cref="CommandTimeout"/> (may differ from <see cref="Clock"/>: a
    /// test drives the pair's clock by hand but gives up on a command on real time).</summary>
    public TimeProvider TimeoutClock { get; init; } = TimeProvider.System;

    public TimeSpan CommandTimeout { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>A command got no completion in time.</summary>
public sealed class HostCommandTimeoutException(string message) : TimeoutException(message);

/// <summary>
/// A host of Duet's host protocol, for tests now and the host adapter later. It attaches to one
/// unit or to both units of a multicast group; with two, every command goes to both with the
/// "multicast" flag (FO-3) unless a unit is named. It numbers its own tags, stamps each request
/// with its clock, and takes the first completion per tag; later ones are counted and dropped.
/// </summary>
public sealed class TestHost : IAsyncDisposable
{
    readonly TestHostOptions _options;
    readonly UnitLink[] _links;
    readonly ConcurrentDictionary<ulong, Pending> _pending = new();
    readonly ConcurrentQueue<HostCompletion> _unmatched = new();
    long _lastTag;
    long _duplicateCompletions;

    sealed class Pending(int[] units)
    {
        public readonly TaskCompletionSource<HostCompletion> Done = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public readonly int[] Units = units;
    }

    sealed class UnitLink(int index, Socket socket)
    {
        public readonly int Index = index;
        public readonly Socket Socket = socket;
        public readonly NetworkStream Stream = new(socket, ownsSocket: true);
        public readonly AsyncGate WriteGate = new(1, 1);
        public HostHelloReply Hello;
        public Task Receiver = Task.CompletedTask;
        public volatile bool Closed;
    }

    TestHost(TestHostOptions options, UnitLink[] links)
    {
        _options = options;
        _links = links;
    }

    /// <summary>The hello replies, one per unit in the order of <see cref="TestHostOptions.Units"/>.</summary>
    public IReadOnlyList<HostHelloReply> Units => [.. _links.Select(l => l.Hello)];

    public ulong VolumeSizeBytes => _links[0].Hello.VolumeSizeBytes;

    /// <summary>Completions after the first for a tag (both controllers answered).</summary>
    public long DuplicateCompletions => Interlocked.Read(ref _duplicateCompletions);

    /// <summary>Completions for no command in flight (protocol errors carry tag 0).</summary>
    public IReadOnlyList<HostCompletion> UnmatchedCompletions => [.. _unmatched];

    /// <summary>Connects to every unit and attaches the volume. Throws <see cref="IOException"/>
    /// when a unit refuses the hello (no such volume, bad version).</summary>
    public static async Task<TestHost> ConnectAsync(TestHostOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Units.Count is < 1 or > 2) throw new ArgumentException("a host attaches to one unit or to the two units of a group", nameof(options));
        var links = new List<UnitLink>();
        try
        {
            for (int i = 0; i < options.Units.Count; i++)
            {
                var socket = new Socket(options.Units[i].AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    await socket.ConnectAsync(options.Units[i], cancellationToken);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
                var link = new UnitLink(i, socket);
                links.Add(link);
                var hello = new byte[HostCodec.HelloBytes(new HostHello(options.HostId, options.Volume))];
                HostCodec.WriteHello(new HostHello(options.HostId, options.Volume), hello);
                await link.Stream.WriteAsync(hello, cancellationToken);
                var replyBytes = new byte[HostWire.HelloReplyBytes];
                await link.Stream.ReadExactlyAsync(replyBytes, cancellationToken);
                var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(replyBytes));
                if (HostCodec.TryReadHelloReply(ref reader, out var reply, out var error) != OperationStatus.Done)
                    throw new IOException($"unit {options.Units[i]} answered the hello with a malformed reply ({error})");
                if (reply.Status != HostStatus.Ok)
                    throw new IOException($"unit {reply.Controller}{reply.Unit} at {options.Units[i]} refused to attach volume '{options.Volume}': {reply.Status}");
                link.Hello = reply;
            }
            if (links.Count == 2 && links[0].Hello.Unit != links[1].Hello.Unit)
                throw new IOException($"units {links[0].Hello.Controller}{links[0].Hello.Unit} and {links[1].Hello.Controller}{links[1].Hello.Unit} are not one multicast group");
        }
        catch
        {
            foreach (var l in links) await l.Stream.DisposeAsync();
            throw;
        }
        var host = new TestHost(options, [.. links]);
        foreach (var link in host._links) link.Receiver = host.ReceiveLoopAsync(link);
        return host;
    }

    public Task<HostCompletion> ReadAsync(long offset, int length, int? unit = null) =>
        SendAsync(HostOpcode.Read, offset, (uint)length, ReadOnlyMemory<byte>.Empty, HostRequestFlags.None, unit);

    public Task<HostCompletion> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, int? unit = null) =>
        SendAsync(HostOpcode.Write, offset, (uint)data.Length, data, fua ? HostRequestFlags.Fua : HostRequestFlags.None, unit);

    public Task<HostCompletion> FlushAsync(int? unit = null) =>
        SendAsync(HostOpcode.Flush, 0, 0, ReadOnlyMemory<byte>.Empty, HostRequestFlags.None, unit);

    /// <summary>
    /// Sends one command with a new tag to every unit (with "multicast" when there are two), or
    /// only to unit index <paramref name="unit"/>, and returns the first completion for its tag.
    /// Throws <see cref="HostCommandTimeoutException"/> after the command timeout and
    /// <see cref="IOException"/> when every unit it went to closed its connection.
    /// </summary>
    public async Task<HostCompletion> SendAsync(HostOpcode opcode, long offset, uint length, ReadOnlyMemory<byte> payload, HostRequestFlags flags, int? unit = null)
    {
        int[] units = unit is { } u ? [u] : [.. Enumerable.Range(0, _links.Length)];
        foreach (var i in units) ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(i, _links.Length, nameof(unit));
        if (units.Length > 1) flags |= HostRequestFlags.Multicast;
        ulong tag = (ulong)Interlocked.Increment(ref _lastTag);
        ulong timestamp = (ulong)(_options.Clock.GetUtcNow() - DateTimeOffset.UnixEpoch).Ticks / 10;
        var request = new HostRequest(opcode, flags, _options.HostId, tag, timestamp, (ulong)offset, length, payload);
        var frame = HostCodec.EncodeRequest(request);
        var pending = new Pending(units);
        _pending[tag] = pending;
        foreach (var i in units) await SendFrameAsync(_links[i], frame);
        FailIfAllClosed(tag, pending);
        try
        {
            return await Waits.WithTimeout(pending.Done.Task, _options.CommandTimeout, _options.TimeoutClock);
        }
        catch (TimeoutException)
        {
            throw new HostCommandTimeoutException(
                $"host {_options.HostId:x}: tag {tag} ({opcode} {offset}+{length}) got no completion within {_options.CommandTimeout} from {Describe(units)}");
        }
        finally
        {
            _pending.TryRemove(tag, out _);
        }
    }

    /// <summary>Raw bytes to one unit (tests of malformed input).</summary>
    public async Task SendRawAsync(int unit, ReadOnlyMemory<byte> bytes) => await SendFrameAsync(_links[unit], bytes);

    string Describe(int[] units) => string.Join(" and ", units.Select(i => $"unit {_links[i].Hello.Controller}{_links[i].Hello.Unit} ({_options.Units[i]})"));

    static async Task SendFrameAsync(UnitLink link, ReadOnlyMemory<byte> frame)
    {
        if (link.Closed) return;
        await link.WriteGate.WaitAsync();
        try
        {
            await link.Stream.WriteAsync(frame);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            link.Closed = true;
        }
        finally
        {
            link.WriteGate.Release();
        }
    }

    void FailIfAllClosed(ulong tag, Pending pending)
    {
        if (pending.Units.All(i => _links[i].Closed))
            pending.Done.TrySetException(new IOException($"host {_options.HostId:x}: tag {tag}: {Describe(pending.Units)} closed the connection"));
    }

    async Task ReceiveLoopAsync(UnitLink link)
    {
        try
        {
            await HostCompletionReader.ReceiveAsync(link.Stream, Deliver, CancellationToken.None);
        }
        finally
        {
            link.Closed = true;
            foreach (var (tag, pending) in _pending) FailIfAllClosed(tag, pending);
        }
    }

    void Deliver(HostCompletion completion)
    {
        if (_pending.TryGetValue(completion.HostTag, out var pending))
        {
            if (!pending.Done.TrySetResult(completion)) Interlocked.Increment(ref _duplicateCompletions);
        }
        else if (completion.HostTag != 0 && completion.HostTag <= (ulong)Interlocked.Read(ref _lastTag))
        {
            Interlocked.Increment(ref _duplicateCompletions); // the other unit's answer after the first was taken
        }
        else
        {
            _unmatched.Enqueue(completion);
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var link in _links)
        {
            link.Closed = true;
            try { link.Socket.Shutdown(SocketShutdown.Both); }
            catch (Exception e) when (e is SocketException or ObjectDisposedException) { }
            await link.Stream.DisposeAsync();
        }
        foreach (var link in _links) await link.Receiver;
    }
}
