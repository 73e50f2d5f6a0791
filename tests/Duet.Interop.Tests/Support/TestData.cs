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

    /// <summary>Ports one `duet up` binds: NBD A and B, four host units, a TCP ICL, iSCSI A and B.</summary>
    public const int DuetUpPorts = Duet.Bench.TcpPorts.DuetUpPorts;

    /// <summary>`duet up` port arguments for a block of <see cref="DuetUpPorts"/>: NBD on P, iSCSI on P+7
    /// (never the well-known 3260, which tests running in parallel would share).</summary>
    public static string[] DuetUpArgs(int port) => Duet.Bench.TcpPorts.DuetUpArgs(port);

    /// <summary>A first port P such that P .. P+count-1 could all be bound a moment ago, never handed out
    /// before in this process (the bench runners' allocator, so tests and benches never share a port).</summary>
    public static int FreePorts(int count) => Duet.Bench.TcpPorts.FreePorts(count);

    public static int FreePort() => Duet.Bench.TcpPorts.FreePort();

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
