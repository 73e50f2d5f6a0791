using System.Net;
using Duet.Core;

namespace Duet.Nbd;

/// <summary>How an <see cref="NbdServer"/> listens and what it accepts.</summary>
public sealed class NbdServerOptions
{
    /// <summary>The protocol's well-known port.</summary>
    public const int DefaultPort = 10809;

    /// <summary>Where to listen; port 0 picks a free port (see <see cref="NbdServer.LocalEndPoint"/>).</summary>
    public IPEndPoint Endpoint { get; init; } = new(IPAddress.Loopback, DefaultPort);

    /// <summary>Largest READ or WRITE payload, advertised as the NBD_INFO_BLOCK_SIZE maximum.
    /// A multiple of 4096 between 4096 and 32 MiB (2^25, the size the spec says no server should
    /// treat as denial of service).</summary>
    public int MaxPayloadBytes { get; init; } = 32 << 20;

    /// <summary>Requests a connection may have in flight before the server stops reading from it
    /// (back-pressure through TCP). Clients commonly use queue depth 32..64.</summary>
    public int MaxInFlightRequests { get; init; } = 64;

    /// <summary>The block buffer (AW-2): WRITE payloads are taken whole off the wire into memory
    /// charged to this budget, shared by every connection, before they go to the volume, and the
    /// bytes are returned when the write completes. When it is spent, connections stop reading
    /// (back-pressure through TCP). Null: no limit beyond <see cref="MaxInFlightRequests"/>.</summary>
    public ByteBudget? WriteBuffer { get; init; }

    /// <summary>How long <see cref="NbdServer.StopAsync"/> lets in-flight requests finish before
    /// cutting connections.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The clock behind <see cref="ShutdownTimeout"/>.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    internal void Validate()
    {
        ArgumentNullException.ThrowIfNull(Endpoint);
        ArgumentNullException.ThrowIfNull(TimeProvider);
        if (MaxPayloadBytes < 4096 || MaxPayloadBytes > 32 << 20 || MaxPayloadBytes % 4096 != 0)
            throw new ArgumentOutOfRangeException(nameof(MaxPayloadBytes), MaxPayloadBytes, "must be a multiple of 4096 in [4096, 32 MiB]");
        if (MaxInFlightRequests < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxInFlightRequests), MaxInFlightRequests, "must be at least 1");
        if (ShutdownTimeout < TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(ShutdownTimeout), ShutdownTimeout, "must not be negative");
    }
}
