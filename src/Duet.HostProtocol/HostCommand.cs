using Duet.Core;

namespace Duet.HostProtocol;

/// <summary>Names one host command across both controllers: the multicast group (unit number),
/// the host and the host's tag.</summary>
public readonly record struct HostCommandKey(byte Unit, ulong HostId, ulong HostTag)
{
    public override string ToString() => $"unit {Unit} host {HostId:x} tag {HostTag}";
}

/// <summary>A host command as a unit hands it to the handshake: the request frame, the unit it
/// arrived on (its group) and the volume the host's connection attached.</summary>
public sealed record HostCommand(byte Unit, string Volume, HostRequest Request)
{
    public HostCommandKey Key => new(Unit, Request.HostId, Request.HostTag);

    /// <summary>Set by the primary's handshake when the partner said "ready": the partner holds
    /// this command (and a write's bytes) in its queue until it is told "completed".</summary>
    public bool PartnerHoldsCopy { get; init; }

    /// <summary>This command's payload as the partner can find it in its own copy.</summary>
    public HostDataReference PayloadReference => new(Unit, Request.HostId, Request.HostTag, 0);
}

/// <summary>
/// Where a completion goes: a host connection that holds the command's tag. The handshake keeps
/// the routes of each queued command and answers every route at most once; a unit registers
/// its connection as the route when it hands the command over.
/// </summary>
public interface IHostCompletionRoute
{
    /// <summary>Writes the completion to the host. False when the connection is gone.</summary>
    ValueTask<bool> TrySendAsync(HostCompletion completion);
}

/// <summary>The usual execute seam: a host command run against a volume of a catalog, with
/// block errors mapped to host statuses.</summary>
public static class HostCommandExecutor
{
    public static Func<HostCommand, CancellationToken, ValueTask<HostCompletion>> For(IVolumeCatalog catalog)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        return (command, ct) => ExecuteAsync(catalog, command, ct);
    }

    public static async ValueTask<HostCompletion> ExecuteAsync(IVolumeCatalog catalog, HostCommand command, CancellationToken cancellationToken)
    {
        var r = command.Request;
        if (!catalog.TryGetVolume(command.Volume, out var volume)) return HostCompletion.Error(r.HostTag, HostStatus.NoSuchVolume);
        if (r.Offset > long.MaxValue) return HostCompletion.Error(r.HostTag, HostStatus.OutOfRange);
        long offset = (long)r.Offset;
        try
        {
            switch (r.Opcode)
            {
                case HostOpcode.Read:
                    var data = new byte[r.Length];
                    await volume.ReadAsync(offset, data, cancellationToken);
                    return new HostCompletion(r.HostTag, HostStatus.Ok, data);
                case HostOpcode.Write:
                    bool fua = (r.Flags & HostRequestFlags.Fua) != 0;
                    if (command.PartnerHoldsCopy && volume is IHostDataWriter held)
                        await held.WriteHeldByPeerAsync(offset, r.Payload, fua, command.PayloadReference, cancellationToken);
                    else
                        await volume.WriteAsync(offset, r.Payload, fua, cancellationToken);
                    return HostCompletion.Ok(r.HostTag);
                case HostOpcode.Flush:
                    await volume.FlushAsync(cancellationToken);
                    return HostCompletion.Ok(r.HostTag);
                default:
                    return HostCompletion.Error(r.HostTag, HostStatus.Invalid);
            }
        }
        catch (BlockIoException e)
        {
            return HostCompletion.Error(r.HostTag, ToStatus(e.Kind));
        }
    }

    public static HostStatus ToStatus(BlockErrorKind kind) => kind switch
    {
        BlockErrorKind.Io => HostStatus.IoError,
        BlockErrorKind.Medium => HostStatus.MediumError,
        BlockErrorKind.OutOfRange => HostStatus.OutOfRange,
        BlockErrorKind.Invalid => HostStatus.Invalid,
        BlockErrorKind.ReadOnly => HostStatus.ReadOnly,
        BlockErrorKind.Unavailable => HostStatus.Unavailable,
        // Its drives (the shelf path) or the owning controller unreachable: not here now, as iSCSI reports it
        // (target port unavailable); the host tries again, on the other unit if need be.
        BlockErrorKind.PathDown => HostStatus.Unavailable,
        _ => HostStatus.IoError,
    };
}
