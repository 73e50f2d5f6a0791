using System.Security.Cryptography;
using Xunit.Abstractions;

namespace Duet.Iscsi.Tests;

/// <summary>Real initiators (libiscsi's tools, qemu-img with its iSCSI block driver) against the
/// in-process target and the real SCSI device server over real volumes.</summary>
[Trait("Claim", "ISCSI")]
public sealed class IscsiRealClientTests(ITestOutputHelper output) : IDisposable
{
    private const string Target = IscsiServerOptions.DefaultTargetName;
    private readonly string _dir = Directory.CreateTempSubdirectory("duet-iscsi-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Url(IscsiServerFixture f, int lun, string? credentials = null) =>
        $"iscsi://{(credentials is null ? "" : credentials + "@")}127.0.0.1:{f.EndPoint.Port}/{Target}/{lun}";

    [Fact]
    public async Task Libiscsi_tools_discover_inquire_read_capacity_and_set_write_protect()
    {
        // Two portals over one device server, as controllers A and B serve one target.
        var volumes = new[] { new MemoryBlockVolume("vol0", 64 << 20), new MemoryBlockVolume("vol1", 32 << 20) };
        var device = new Duet.Iscsi.Scsi.ScsiDevice(new IscsiRealDevice.Catalog(volumes));
        int portA = FreePort(), portB = FreePort();
        IscsiPortal[] portals = [new("127.0.0.1", portA, 1), new("127.0.0.1", portB, 2)];
        await using var fixture = await IscsiServerFixture.StartAsync(_ => new IscsiServerOptions
        {
            Endpoint = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, portA), Portals = portals,
        }, device);
        await using var b = new IscsiServer(device, new IscsiServerOptions
        {
            Endpoint = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, portB), Portals = portals, PortalGroupTag = 2, RelativeTargetPort = 2,
        }, new IscsiListLogger());
        await b.StartAsync();
        int port = fixture.EndPoint.Port;
        var ls = await IscsiProcess.RunAsync(output, "iscsi-ls", $"-s iscsi://127.0.0.1:{port}");
        Assert.Contains($"Target:{Target} Portal:127.0.0.1:{portA},1", ls.Stdout);
        Assert.Contains($"Target:{Target} Portal:127.0.0.1:{portB},2", ls.Stdout);
        Assert.Contains("Lun:1", ls.Stdout);

        var inq = await IscsiProcess.RunAsync(output, "iscsi-inq", Url(fixture, 0));
        Assert.Contains("DUET", inq.Stdout);
        var vpd = await IscsiProcess.RunAsync(output, "iscsi-inq", $"-e 1 -c 0x83 {Url(fixture, 0)}");
        Assert.Contains("DEVICE_IDENTIFICATION", vpd.Stdout);

        var cap0 = await IscsiProcess.RunAsync(output, "iscsi-readcapacity16", Url(fixture, 0));
        Assert.Contains($"Total size:{64 << 20}", cap0.Stdout);
        var cap1 = await IscsiProcess.RunAsync(output, "iscsi-readcapacity16", Url(fixture, 1));
        Assert.Contains($"Total size:{32 << 20}", cap1.Stdout);

        var before = await IscsiProcess.RunAsync(output, "iscsi-swp", Url(fixture, 1));
        Assert.Contains("SWP:0", before.Stdout);
        // Setting SWP is MODE SELECT with a control mode page: whether the device server takes it is
        // its business; the transport must carry the parameter list there and the answer back.
        var set = await IscsiProcess.RunAsync(output, "iscsi-swp", $"-s on {Url(fixture, 1)}", check: false);
        if (set.ExitCode == 0)
        {
            Assert.Contains("SWP:1", (await IscsiProcess.RunAsync(output, "iscsi-swp", Url(fixture, 1))).Stdout);
            await IscsiProcess.RunAsync(output, "iscsi-swp", $"-s off {Url(fixture, 1)}");
            Assert.Contains("SWP:0", (await IscsiProcess.RunAsync(output, "iscsi-swp", Url(fixture, 1))).Stdout);
        }
        else
        {
            Assert.Contains("SENSE KEY", set.Stdout + set.Stderr);
        }
    }

    [Fact]
    public async Task Libiscsi_logs_in_with_chap_and_is_refused_with_a_wrong_secret()
    {
        await using var fixture = await IscsiRealDevice.StartAsync([new MemoryBlockVolume("vol0", 8 << 20)],
            o => new IscsiServerOptions { Endpoint = o.Endpoint, Chap = new IscsiChapOptions("duet", "secret-of-twelve") });
        var good = await IscsiProcess.RunAsync(output, "iscsi-inq", Url(fixture, 0, "duet%secret-of-twelve"));
        Assert.Contains("DUET", good.Stdout);
        var bad = await IscsiProcess.RunAsync(output, "iscsi-inq", Url(fixture, 0, "duet%not-the-secret"), check: false);
        Assert.NotEqual(0, bad.ExitCode);
        Assert.True(fixture.Logger.Has(12));
    }

    [Fact]
    public async Task Qemu_img_converts_256_MiB_of_random_data_to_and_from_a_lun()
    {
        const long size = 256L << 20;
        await using var fixture = await IscsiRealDevice.StartAsync([new MemoryBlockVolume("vol0", size)]);
        string source = Path.Combine(_dir, "source.raw"), back = Path.Combine(_dir, "back.raw");
        byte[] hash = WriteRandomFile(source, size, 42);
        await IscsiProcess.RunAsync(output, "qemu-img", $"convert -n -f raw -O raw {source} {Url(fixture, 0)}", 300);
        await IscsiProcess.RunAsync(output, "qemu-img", $"convert -f raw -O raw {Url(fixture, 0)} {back}", 300);
        Assert.Equal(size, new FileInfo(back).Length);
        Assert.Equal(Convert.ToHexString(hash), Convert.ToHexString(HashFile(back)));
    }

    [Fact]
    public async Task Qemu_img_with_header_digests_and_small_segments_round_trips()
    {
        // CRC32C header digests (libiscsi does not do data digests), small MaxRecvDataSegmentLength
        // and bursts, InitialR2T=Yes: every write goes through several R2Ts.
        const long size = 16L << 20;
        await using var fixture = await IscsiRealDevice.StartAsync([new MemoryBlockVolume("vol0", size)],
            o => new IscsiServerOptions { Endpoint = o.Endpoint, MaxRecvDataSegmentLength = 4096, MaxBurstLength = 16384, FirstBurstLength = 8192, InitialR2T = true });
        string source = Path.Combine(_dir, "source.raw"), back = Path.Combine(_dir, "back.raw");
        byte[] hash = WriteRandomFile(source, size, 7);
        string opts = $"driver=iscsi,transport=tcp,portal=127.0.0.1:{fixture.EndPoint.Port},target={Target},lun=0,header-digest=crc32c";
        await IscsiProcess.RunAsync(output, "qemu-img", $"convert -n -f raw --target-image-opts {source} {opts}", 300);
        await IscsiProcess.RunAsync(output, "qemu-img", $"convert --image-opts {opts} -O raw {back}", 300);
        Assert.Equal(Convert.ToHexString(hash), Convert.ToHexString(HashFile(back)));
        Assert.Contains(fixture.Logger.Entries, e => e.EventId.Id == 13 && e.Message.Contains("HeaderDigest=CRC32C", StringComparison.Ordinal));
    }

    private static int FreePort()
    {
        using var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        probe.Start();
        return ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
    }

    internal static byte[] WriteRandomFile(string path, long bytes, int seed)
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

    internal static byte[] HashFile(string path)
    {
        using var file = File.OpenRead(path);
        return SHA256.HashData(file);
    }
}
