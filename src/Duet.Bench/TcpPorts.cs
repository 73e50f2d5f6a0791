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
        for (int attempt = 0; attempt < 200; attempt++)
        {
            int first;
            using (var probe = new TcpListener(IPAddress.Loopback, 0))
            {
                probe.Start();
                first = ((IPEndPoint)probe.LocalEndpoint).Port;
                probe.Stop();
            }
            if (first + count > 65535) continue;
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
}
