using System.Net;
using Duet.Core;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi.Tests;

/// <summary>The real device server (ScsiDevice) over real volumes (MemoryBlockVolume), behind an
/// in-process target: what every real-client test runs against.</summary>
public static class IscsiRealDevice
{
    public sealed class Catalog(params IBlockVolume[] volumes) : IVolumeCatalog
    {
        public IReadOnlyList<IBlockVolume> Volumes => volumes;

        public bool TryGetVolume(string name, out IBlockVolume volume)
        {
            volume = volumes.FirstOrDefault(v => v.Name == name)!;
            return volume is not null;
        }
    }

    /// <summary>A target whose LUN i is volume i of <paramref name="volumes"/>.</summary>
    public static Task<IscsiServerFixture> StartAsync(IBlockVolume[] volumes, Func<IscsiServerOptions, IscsiServerOptions>? configure = null)
    {
        var device = new ScsiDevice(new Catalog(volumes), new InMemoryReservationStore(), new FixedScsiPortGroups(),
            new ScsiDeviceOptions { TargetName = IscsiServerOptions.DefaultTargetName });
        return IscsiServerFixture.StartAsync(configure, device);
    }

    public static IscsiServerOptions Portals(IscsiServerOptions o, int port) => new()
    {
        Endpoint = o.Endpoint,
        Portals = [new IscsiPortal("127.0.0.1", port, 1), new IscsiPortal("127.0.0.1", port + 1, 2)],
        Chap = o.Chap,
    };

    public static IPEndPoint Loopback0 => new(IPAddress.Loopback, 0);
}
