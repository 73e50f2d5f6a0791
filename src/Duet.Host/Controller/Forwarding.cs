using System.Collections.Concurrent;
using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

/// <summary>
/// Active-active (MR-1): a request for a volume the peer serves is forwarded over the ICL and
/// answered from there. If the owner cannot be reached, the request fails with an I/O error at
/// once or after the timeout — it never hangs.
/// </summary>
public sealed class ForwardingClient
{
    readonly IIclLink _link;
    readonly Func<ulong> _epoch;
    readonly TimeSpan _timeout;
    readonly TimeProvider _time;
    readonly ConcurrentDictionary<ulong, (TaskCompletionSource<(int Errno, long Lba)> Done, Memory<byte> Into)> _pending = new();
    long _nextId;
    readonly long _firstId;

    /// <param name="firstRequestId">Where request ids start: different in every run of the controller
    /// (the server derives it from its session id), so an answer the peer sends late, to a request of
    /// an earlier run, can never match a request of this one and fill it with another request's data.</param>
    public ForwardingClient(IIclLink link, Func<ulong> epoch, TimeSpan timeout, TimeProvider time, ulong firstRequestId = 0)
    {
        _firstId = _nextId = (long)(firstRequestId & 0x7FFF_FFFF_0000_0000UL);
        _link = link;
        _epoch = epoch;
        _timeout = timeout;
        _time = time;
        _link.UpChanged += up => { if (!up) FailAll("the link to the owning controller went down"); };
    }

    public long Forwarded => Interlocked.Read(ref _nextId) - _firstId;

    void FailAll(string why)
    {
        foreach (var (id, p) in _pending)
            if (_pending.TryRemove(id, out _)) p.Done.TrySetException(new BlockIoException(BlockErrorKind.PathDown, why));
    }

    public async ValueTask SendAsync(ForwardedOp op, string volume, long offset, long length, bool fua, ReadOnlyMemory<byte> data, Memory<byte> readInto, CancellationToken ct)
    {
        // PathDown: the volume is fine, this controller cannot reach its owner (NBD: EIO; SCSI: NOT READY,
        // TARGET PORT IN UNAVAILABLE STATE, which the iSCSI target holds and retries across a takeover).
        if (!_link.IsUp) throw new BlockIoException(BlockErrorKind.PathDown, $"volume {volume}: its owning controller is unreachable");
        ulong id = (ulong)Interlocked.Increment(ref _nextId);
        var done = new TaskCompletionSource<(int Errno, long Lba)>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = (done, readInto);
        try
        {
            var request = new ForwardedRequest(id, op, volume, (ulong)offset, (uint)length, fua);
            var bytes = new byte[DuetFrame.EncodedBytes(request)];
            request.Encode(bytes);
            try
            {
                await _link.PostAsync(data.IsEmpty ? IclSignal.Message : IclSignal.MessageWithData, _epoch(), bytes, data, ct);
            }
            catch (IclLinkDownException e)
            {
                throw new BlockIoException(BlockErrorKind.PathDown, $"volume {volume}: its owning controller is unreachable: {e.Message}", -1, e);
            }
            (int Errno, long Lba) answer;
            try { answer = await Waits.WithTimeout(done.Task, _timeout, _time, ct); }
            catch (TimeoutException) { throw new BlockIoException(BlockErrorKind.PathDown, $"volume {volume}: the owning controller did not answer within {_timeout.TotalSeconds:0.#} s"); }
            if (answer.Errno != 0) throw ErrnoToError(answer.Errno, volume, offset, length, answer.Lba);
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    /// <summary>A ForwardedResponse reply (message and the data of a read).</summary>
    public void OnResponse(ReadOnlySpan<byte> message, ReadOnlySpan<byte> data)
    {
        if (ForwardedResponse.TryDecode(message, out var response, out _, out _) != System.Buffers.OperationStatus.Done) return;
        if (!_pending.TryGetValue(response.RequestId, out var p)) return;
        if (response.Errno == 0 && !p.Into.IsEmpty)
        {
            if (data.Length != p.Into.Length) { p.Done.TrySetResult((5, -1)); return; }
            data.CopyTo(p.Into.Span);
        }
        p.Done.TrySetResult((response.Errno, response.ErrorLba));
    }

    public static int ErrorToErrno(BlockIoException e) => e.Kind switch
    {
        BlockErrorKind.Medium => 61, // ENODATA, the Linux block layer's errno for a medium error (a listed bad block, AW-5)
        // Not served there now (no lease, stepped down, powering down; or the owner's own shelf path is down):
        // EAGAIN, which the asker reads as its path to the owner being down, so its iSCSI target holds the
        // command and retries it, as across a takeover, and a host-protocol host is told Unavailable.
        BlockErrorKind.Unavailable or BlockErrorKind.PathDown => 11,
        BlockErrorKind.OutOfRange => 28,
        BlockErrorKind.Invalid => 22,
        BlockErrorKind.ReadOnly => 1,
        _ => 5,
    };

    static BlockIoException ErrnoToError(int errno, string volume, long offset, long length, long lba) => errno switch
    {
        // The owner names the first sector it cannot read; trusted only inside this request.
        61 when lba >= offset / Units.SectorBytes && lba < (offset + length + Units.SectorBytes - 1) / Units.SectorBytes =>
            new BlockIoException(BlockErrorKind.Medium, $"volume {volume}: the owning controller reports a medium error at sector {lba} (a block on its array's bad-block list)", lba),
        28 => new BlockIoException(BlockErrorKind.OutOfRange, $"volume {volume}: request at {offset} is beyond the volume", offset / Units.SectorBytes),
        22 => new BlockIoException(BlockErrorKind.Invalid, $"volume {volume}: request at {offset} is invalid", offset / Units.SectorBytes),
        1 => new BlockIoException(BlockErrorKind.ReadOnly, $"volume {volume} is read-only"),
        // An owner from before the answer named the sector (or a sector outside the request): the error without it.
        61 => new BlockIoException(BlockErrorKind.Medium, $"volume {volume}: the owning controller reports a medium error in the request at {offset} (a block on its array's bad-block list)"),
        2 => new BlockIoException(BlockErrorKind.Unavailable, $"volume {volume} is not served by the owning controller"),
        11 => new BlockIoException(BlockErrorKind.PathDown, $"volume {volume}: the owning controller cannot serve it now"),
        _ => new BlockIoException(BlockErrorKind.Io, $"volume {volume}: the owning controller failed the request (errno {errno})", offset / Units.SectorBytes),
    };
}

/// <summary>Executes requests the peer forwarded for volumes this controller serves.</summary>
public sealed partial class ForwardingServer(IIclLink link, Func<ulong> epoch, Func<string, IBlockVolume?> volumes, ILogger logger, Func<Task>? rescan = null)
{
    public long Served;

    /// <summary>Called from the link handler: copies the request out of the window and runs it in the background.</summary>
    public void OnRequest(ReadOnlySpan<byte> message, ReadOnlySpan<byte> data)
    {
        if (ForwardedRequest.TryDecode(message, out var request, out _, out var error) != System.Buffers.OperationStatus.Done || request is null)
        {
            LogMalformed(error.ToString());
            return;
        }
        var payload = data.ToArray();
        _ = ExecuteAsync(request, payload);
    }

    async Task ExecuteAsync(ForwardedRequest r, byte[] payload)
    {
        int errno = 0;
        long errorLba = -1;
        byte[]? read = null;
        var volume = volumes(r.VolumeName);
        if (volume is null && rescan is not null)
        {
            // The peer may have just handed us the array; its notice can trail its first request.
            await rescan();
            volume = volumes(r.VolumeName);
        }
        try
        {
            if (volume is null) errno = 2;
            else
            {
                long offset = (long)r.Offset;
                switch (r.Op)
                {
                    case ForwardedOp.Read:
                        read = new byte[r.Length];
                        await volume.ReadAsync(offset, read);
                        break;
                    case ForwardedOp.Write:
                        if (payload.Length != r.Length) { errno = 22; break; }
                        await volume.WriteAsync(offset, payload, r.Fua);
                        break;
                    case ForwardedOp.Flush: await volume.FlushAsync(); break;
                    case ForwardedOp.Trim: await volume.TrimAsync(offset, r.Length); break;
                    case ForwardedOp.WriteZeroes: await volume.WriteZeroesAsync(offset, r.Length, r.Fua); break;
                    default: errno = 22; break;
                }
            }
        }
        catch (BlockIoException e)
        {
            errno = ForwardingClient.ErrorToErrno(e);
            errorLba = errno == 61 ? Math.Max(e.Lba, -1) : -1;
            read = null;
        }
        Interlocked.Increment(ref Served);
        var response = new ForwardedResponse(r.RequestId, errno, errno == 0 && read is not null ? (uint)read.Length : 0, errorLba);
        var bytes = new byte[DuetFrame.EncodedBytes(response)];
        response.Encode(bytes);
        try
        {
            await link.PostAsync(IclSignal.Reply, epoch(), bytes, errno == 0 && read is not null ? read : default);
        }
        catch (IclLinkDownException) { }
    }

    [LoggerMessage(EventId = 6001, Level = LogLevel.Warning, Message = "malformed forwarded request refused: {Error}")]
    partial void LogMalformed(string error);
}

/// <summary>A volume the peer serves, reached by forwarding every request to it. With a
/// <paramref name="gate"/>, each request counts as a host command in flight here (AW-6); without one,
/// the caller has counted it (a request a move handed over).</summary>
public sealed class ForwardedVolume(string name, long sizeBytes, ForwardingClient client, HostCommandGate? gate = null) : IBlockVolume
{
    public string Name { get; } = name;
    public long SizeBytes { get; } = sizeBytes;
    public bool ReadOnly => false;

    void Check(long offset, long length) => VolumeChecks.CheckRequest(Name, SizeBytes, offset, length);

    ValueTask SendAsync(ForwardedOp op, long offset, long length, bool fua, ReadOnlyMemory<byte> data, Memory<byte> readInto, CancellationToken ct) =>
        gate is null ? client.SendAsync(op, Name, offset, length, fua, data, readInto, ct) : SendCountedAsync(gate, op, offset, length, fua, data, readInto, ct);

    async ValueTask SendCountedAsync(HostCommandGate g, ForwardedOp op, long offset, long length, bool fua, ReadOnlyMemory<byte> data, Memory<byte> readInto, CancellationToken ct)
    {
        g.Enter();
        bool ok = false;
        try
        {
            await client.SendAsync(op, Name, offset, length, fua, data, readInto, ct);
            ok = true;
        }
        finally { g.Exit(ok); }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken ct = default)
    {
        Check(offset, destination.Length);
        return SendAsync(ForwardedOp.Read, offset, destination.Length, false, default, destination, ct);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken ct = default)
    {
        Check(offset, source.Length);
        return SendAsync(ForwardedOp.Write, offset, source.Length, fua, source, default, ct);
    }

    public ValueTask FlushAsync(CancellationToken ct = default) => SendAsync(ForwardedOp.Flush, 0, 0, false, default, default, ct);

    public ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken ct = default)
    {
        Check(offset, length);
        return SendAsync(ForwardedOp.WriteZeroes, offset, length, fua, default, default, ct);
    }

    public ValueTask TrimAsync(long offset, long length, CancellationToken ct = default)
    {
        Check(offset, length);
        return SendAsync(ForwardedOp.Trim, offset, length, false, default, default, ct);
    }

    public ValueTask<IReadOnlyList<AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken ct = default)
    {
        Check(offset, length);
        // Allocation is the owner's to know; reporting everything allocated is always correct.
        return ValueTask.FromResult<IReadOnlyList<AllocationExtent>>([new AllocationExtent(length, AllocationFlags.None)]);
    }
}
