using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Xunit.Abstractions;

namespace Duet.Nbd.Tests;

/// <summary>Real clients (libnbd's nbdinfo and nbdcopy, qemu-img, fio) against the in-process server.</summary>
[Trait("Area", "Nbd")]
public sealed class NbdRealClientTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("duet-nbd-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private async Task<string> RunAsync(string file, string arguments, int timeoutSeconds = 120)
    {
        var info = new ProcessStartInfo(file, arguments)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {arguments} did not finish in {timeoutSeconds} s");
        }
        string text = await stdout, errors = await stderr;
        output.WriteLine($"$ {file} {arguments}\n{text}{errors}");
        Assert.True(process.ExitCode == 0, $"{file} {arguments} exited {process.ExitCode}: {errors}");
        return text;
    }

    /// <summary>Writes <paramref name="bytes"/> of seeded random data and returns its SHA-256.</summary>
    private static byte[] WriteRandomFile(string path, long bytes, int seed)
    {
        var random = new Random(seed);
        var chunk = new byte[1 << 20];
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var file = File.Create(path);
        for (long done = 0; done < bytes; done += chunk.Length)
        {
            random.NextBytes(chunk);
            file.Write(chunk);
            sha.AppendData(chunk);
        }
        return sha.GetHashAndReset();
    }

    private static byte[] HashFile(string path)
    {
        using var file = File.OpenRead(path);
        return SHA256.HashData(file);
    }

    /// <summary>A well-behaved client never trips edge validation or a protocol violation.</summary>
    private static void AssertNoRequestWasRejected(ServerFixture f) =>
        Assert.DoesNotContain(f.Logger.Entries, e => e.Level >= Microsoft.Extensions.Logging.LogLevel.Warning);

    [Fact]
    public async Task NbdinfoReportsSizeBlockSizesExportsAndMap()
    {
        await using var f = await ServerFixture.StartAsync();
        using (var doc = JsonDocument.Parse(await RunAsync("nbdinfo", $"--json {f.Uri}")))
        {
            Assert.True(doc.RootElement.GetProperty("structured").GetBoolean());
            var export = doc.RootElement.GetProperty("exports")[0];
            Assert.Equal(16 << 20, export.GetProperty("export-size").GetInt64());
            Assert.Equal(512, export.GetProperty("block_size_minimum").GetInt32());
            Assert.Equal(4096, export.GetProperty("block_size_preferred").GetInt32());
            Assert.Equal(32 << 20, export.GetProperty("block_size_maximum").GetInt32());
            Assert.True(export.GetProperty("can_multi_conn").GetBoolean());
            Assert.True(export.GetProperty("can_fua").GetBoolean());
            Assert.True(export.GetProperty("can_trim").GetBoolean());
            Assert.False(export.GetProperty("is_read_only").GetBoolean());
            Assert.Equal("base:allocation", export.GetProperty("contexts")[0].GetString());
        }

        var list = await RunAsync("nbdinfo", $"--list --json nbd://127.0.0.1:{f.EndPoint.Port}");
        using (var doc = JsonDocument.Parse(list))
        {
            var names = doc.RootElement.GetProperty("exports").EnumerateArray().Select(e => e.GetProperty("export-name").GetString()!).ToArray();
            Assert.Equal(["vol", "ro"], names);
            var ro = doc.RootElement.GetProperty("exports")[1];
            Assert.True(ro.GetProperty("is_read_only").GetBoolean());
            Assert.Contains("read-only", ro.GetProperty("description").GetString());
        }

        await using (var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol"))
            Assert.Equal(Duet.Nbd.NbdError.None, (await client.WriteAsync(1 << 20, new byte[65536].Select(_ => (byte)1).ToArray())).Error);
        var map = (await RunAsync("nbdinfo", $"--map {f.Uri}")).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToArray();
        Assert.Equal(["0", "1048576", "3", "hole,zero"], map[0]);
        Assert.Equal(["1048576", "65536", "0", "data"], map[1]);
        Assert.Equal(["1114112", $"{(16 << 20) - 1114112}", "3", "hole,zero"], map[2]);
    }

    [Fact]
    public async Task NbdcopyMoves256MiBInAndOutUnchanged()
    {
        const long size = 256L << 20;
        await using var f = await ServerFixture.StartAsync(sizeBytes: size);
        string input = Path.Combine(_dir, "in.img"), outFile = Path.Combine(_dir, "out.img");
        var expected = WriteRandomFile(input, size, seed: 42);
        await RunAsync("nbdcopy", $"--requests=32 {input} {f.Uri}", timeoutSeconds: 300);
        Assert.Equal(expected, SHA256.HashData(f.Volume.Contents));
        File.Delete(input);
        await RunAsync("nbdcopy", $"--requests=32 {f.Uri} {outFile}", timeoutSeconds: 300);
        Assert.Equal(expected, HashFile(outFile));
        AssertNoRequestWasRejected(f);
    }

    [Fact]
    public async Task QemuImgConvertsInAndDdsOutUnchanged()
    {
        const long size = 32L << 20;
        await using var f = await ServerFixture.StartAsync(sizeBytes: 64L << 20);
        string input = Path.Combine(_dir, "in.img"), outFile = Path.Combine(_dir, "out.img");
        var expected = WriteRandomFile(input, size, seed: 7);
        await RunAsync("qemu-img", $"convert -n -f raw -O raw {input} {f.Uri}", timeoutSeconds: 300);
        await RunAsync("qemu-img", $"compare -f raw -F raw {input} {f.Uri}", timeoutSeconds: 300);
        await RunAsync("qemu-img", $"dd -f raw -O raw bs=1M count=32 if={f.Uri} of={outFile}", timeoutSeconds: 300);
        Assert.Equal(expected, HashFile(outFile));
        Assert.Equal(expected, SHA256.HashData(f.Volume.Contents[..(int)size]));
        AssertNoRequestWasRejected(f);
    }

    [Fact]
    public async Task FioRandomWritesVerifyAtQueueDepth32()
    {
        await using var f = await ServerFixture.StartAsync(sizeBytes: 64L << 20);
        string text = await RunAsync("fio", $"--name=randwrite --ioengine=nbd --uri={f.Uri} --rw=randwrite --bs=4k --iodepth=32 " +
                                            "--size=64M --verify=crc32c --do_verify=1 --verify_fatal=1", timeoutSeconds: 300);
        Assert.Contains("randwrite", text);
        Assert.DoesNotContain("verify: bad", text);
        Assert.Contains("err= 0", text);
        AssertNoRequestWasRejected(f);
    }

    [Fact]
    public async Task FioMixedRandomReadWriteVerifies()
    {
        await using var f = await ServerFixture.StartAsync(sizeBytes: 64L << 20);
        string text = await RunAsync("fio", $"--name=randrw --ioengine=nbd --uri={f.Uri} --rw=randrw --bs=4k --iodepth=32 " +
                                            "--size=32M --verify=crc32c --do_verify=1 --verify_fatal=1", timeoutSeconds: 300);
        Assert.DoesNotContain("verify: bad", text);
        Assert.Contains("err= 0", text);
        AssertNoRequestWasRejected(f);
    }
}
