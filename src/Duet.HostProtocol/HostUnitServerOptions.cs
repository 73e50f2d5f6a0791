using System.Net;

namespace Duet.HostProtocol;

/// <summary>Which unit a <see cref="HostUnitServer"/> is and where it listens.</summary>
public sealed class HostUnitServerOptions
{
    /// <summary>The unit number: unit N of A and unit N of B form multicast group N.</summary>
    public required byte Unit { get; init; }

    /// <summary>The controller this unit belongs to, 'A' or 'B' (told to hosts in the hello reply).</summary>
    public required char Controller { get; init; }

    /// <summary>Where to listen; port 0 picks a free port (see <see cref="HostUnitServer.LocalEndPoint"/>).
    /// The defaults are <see cref="HostWire.DefaultPort"/> on 127.0.0.1.</summary>
    public IPEndPoint? Endpoint { get; init; }

    /// <summary>Largest read or write length, a multiple of 512 up to <see cref="HostWire.PayloadBytesMax"/>.</summary>
    public int PayloadBytesMax { get; init; } = HostWire.PayloadBytesMax;

    /// <summary>Commands one connection may have in flight before the unit stops reading from it.</summary>
    public int MaxInFlightRequests { get; init; } = 64;

    /// <summary>How long a closing connection waits for its in-flight commands.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The clock of <see cref="ShutdownTimeout"/>.</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    internal IPEndPoint ResolvedEndpoint => Endpoint ?? new IPEndPoint(IPAddress.Loopback, HostWire.DefaultPort(Controller, Unit));

    internal void Validate()
    {
        if (Controller is not ('A' or 'B')) throw new ArgumentOutOfRangeException(nameof(Controller), Controller, "must be 'A' or 'B'");
        if (Unit >= HostWire.UnitsPerController) throw new ArgumentOutOfRangeException(nameof(Unit), Unit, $"must be below {HostWire.UnitsPerController}");
        if (PayloadBytesMax < HostWire.SectorBytes || PayloadBytesMax > HostWire.PayloadBytesMax || PayloadBytesMax % HostWire.SectorBytes != 0)
            throw new ArgumentOutOfRangeException(nameof(PayloadBytesMax), PayloadBytesMax, $"must be a multiple of 512 in [512, {HostWire.PayloadBytesMax}]");
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxInFlightRequests, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(ShutdownTimeout, TimeSpan.Zero);
        ArgumentNullException.ThrowIfNull(TimeProvider);
    }
}
