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
