using System.Net;
using System.Net.Sockets;

namespace Duet.Bench;

/// <summary>TCP ports on 127.0.0.1 for the servers a bench or a test starts: one allocator per process,
/// so that no two servers it starts are handed the same port.</summary>
public static class TcpPorts
{
    /// <summary>A TCP port that was free a moment ago and that this process has not handed out
    /// before (a peer's port never lands inside the block a `duet up` uses).</summary>
    public static int FreePort() => FreePorts(1);

    /// <summary>`duet up --nbd-port P --iscsi-port P+7` binds P .. P+5 (NBD of A and B, the host
    /// protocol's four units), with a TCP ICL P+6, and P+7, P+8 (iSCSI of A and B): see <see cref="DuetUpArgs"/>.</summary>
    public const int DuetUpPorts = 9;

    /// <summary>The port arguments of `duet up` for a block from <see cref="FreePorts"/>(<see cref="DuetUpPorts"/>):
    /// NBD on P, iSCSI on P+7 (never the well-known 3260, which parallel runs would share).</summary>
    public static string[] DuetUpArgs(int port) =>
        ["--nbd-port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--iscsi-port", (port + 7).ToString(System.Globalization.CultureInfo.InvariantCulture)];

    /// <summary>A first port P such that P .. P+count-1 could all be bound a moment ago and none of
    /// them was handed out by this process before.</summary>
    public static int FreePorts(int count)
    {
        // Below the kernel's ephemeral range: a port from it (what binding port 0 hands out) can be taken, while a
        // server is down, by the local end of any outgoing connection (the bench's own clients), and a controller
        // restarted on it then cannot bind its listener (seen: `duet bench failover`, round 6, A's iSCSI port).
        var (low, high) = EphemeralRange();
        for (int attempt = 0; attempt < 200; attempt++)
        {
            int first = low > 12_000 + count ? Random.Shared.Next(10_000, low - count)
                : high + 1 < 65_536 - count ? Random.Shared.Next(high + 1, 65_536 - count)
                : Random.Shared.Next(1_024, 65_536 - count); // no room outside it: any unprivileged port
            var held = new List<TcpListener>();
            try
            {
                for (int p = first; p < first + count; p++)
                {
                    var l = new TcpListener(IPAddress.Loopback, p);
                    l.Start();
                    held.Add(l);
                }
                lock (Given)
                {
                    if (Enumerable.Range(first, count).Any(Given.Contains)) continue;
                    for (int p = first; p < first + count; p++) Given.Add(p);
                }
                return first;
            }
            catch (SocketException) { }
            finally { foreach (var l in held) l.Stop(); }
        }
        throw new InvalidOperationException($"no {count} consecutive free TCP ports on 127.0.0.1");
    }

    static readonly HashSet<int> Given = [];

    /// <summary>The kernel's ephemeral port range (Linux: /proc/sys/net/ipv4/ip_local_port_range; else IANA's).</summary>
    static (int Low, int High) EphemeralRange()
    {
        try
        {
            var parts = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])[' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 2 && int.TryParse(parts[0], out int low) && int.TryParse(parts[1], out int high) && low <= high) return (low, high);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return (49_152, 65_535);
    }
}
