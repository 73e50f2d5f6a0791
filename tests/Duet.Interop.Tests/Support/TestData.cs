using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;

namespace Duet.Interop.Tests.Support;

public static class TestData
{
    /// <summary>Writes <paramref name="bytes"/> of seeded pseudo-random data and returns its SHA-256 as hex.</summary>
    public static string WriteRandomFile(string path, long bytes, int seed)
    {
        var random = new Random(seed);
        var chunk = new byte[1 << 20];
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var file = File.Create(path);
        for (long done = 0; done < bytes; done += chunk.Length)
        {
            var span = chunk.AsSpan(0, (int)Math.Min(chunk.Length, bytes - done));
            random.NextBytes(span);
            file.Write(span);
            sha.AppendData(span);
        }
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    public static string HashFile(string path)
    {
        using var file = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(file));
    }

    /// <summary>A TCP port that was free a moment ago (bind port 0, read it, release it).</summary>
    /// <summary>Ports one `duet up` binds: NBD A and B, four host units, a TCP ICL, iSCSI A and B.</summary>
    public const int DuetUpPorts = 9;

    /// <summary>`duet up` port arguments for a block of <see cref="DuetUpPorts"/>: NBD on P, iSCSI on P+7
    /// (never the well-known 3260, which tests running in parallel would share).</summary>
    public static string[] DuetUpArgs(int port) => ["--nbd-port", $"{port}", "--iscsi-port", $"{port + 7}"];

    /// <summary>
    /// A first port P such that P .. P+count-1 can all be bound now (`duet up --nbd-port P` puts
    /// controller B on P+1, the host protocol's units on P+2 .. P+5 and a TCP ICL on P+6). Ports handed out here are not handed out again by this process.
    /// </summary>
    public static int FreePorts(int count)
    {
        for (int attempt = 0; attempt < 200; attempt++)
        {
            int first = FreePort();
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
        throw new InvalidOperationException($"no {count} consecutive free ports on 127.0.0.1");
    }

    static readonly HashSet<int> Given = [];

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    /// <summary>Polls <paramref name="condition"/> every 100 ms for up to <paramref name="timeout"/>.</summary>
    public static async Task<T> PollAsync<T>(Func<Task<T>> probe, Func<T, bool> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        T last = await probe();
        while (!condition(last))
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"timed out after {timeout.TotalSeconds:0} s waiting for {what}; last: {last}");
            await Task.Delay(100);
            last = await probe();
        }
        return last;
    }
}
