using Duet.Cache.Nvram;
using Duet.Core;
using Duet.Host.Management;
using Duet.Interop.Tests.Support;
using Duet.Raid.Management;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// The controller pair as real processes (`duet controller --name A|B`) on one data directory,
/// driven by real NBD clients. The link is the default one (shared memory under /dev/shm);
/// one test runs the pair again over `--icl tcp`.
/// </summary>
[Trait("Area", "Interop")]
public sealed class PairProcessTests(ITestOutputHelper log) : IAsyncLifetime
{
    readonly string _dir = Directory.CreateTempSubdirectory("duet-pair-").FullName;
    readonly ProcessRunner _run = new(log);
    readonly int _portA = TestData.FreePorts(1), _portB = TestData.FreePorts(1), _icl = TestData.FreePorts(1);
    // The host protocol's units (two per controller), on ports of their own.
    readonly int _unitsA = TestData.FreePorts(2), _unitsB = TestData.FreePorts(2);
    readonly int _iscsi = TestData.FreePorts(2); // A on it, B on the next (each reports the other in SendTargets)
    BackgroundProcess? _a, _b;
    static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    static string Dotnet => DuetProcesses.Dotnet;

    public async Task InitializeAsync()
    {
        // The default layout, on small drives: arr0 (vol0) served by A, arr1 (vol1) served by B.
        await using (var m = await ArrayManager.OpenAsync(new ArrayManagerOptions { DataDirectory = _dir }))
        {
            for (int i = 0; i < 8; i++) await m.AddDriveAsync(new AddDriveRequest($"d{i}", 128L << 20));
            for (int a = 0; a < 2; a++)
            {
                await m.CreateArrayAsync(new CreateArrayRequest($"arr{a}", 6, Enumerable.Range(a * 4, 4).Select(i => $"d{i}").ToList(), Owner: a == 0 ? "A" : "B"));
                await m.CreateVolumeAsync(new CreateVolumeRequest($"vol{a}", $"arr{a}", 0));
            }
        }
        _a = Start("A", _portA);
        _b = Start("B", _portB);
        await _a.WaitForOutputAsync("duet controller A: ready", Timeout);
        await _b.WaitForOutputAsync("duet controller B: ready", Timeout);
        await WaitFor(s => s.Controller?.Mirror == "healthy" && s.PeerController?.Mirror == "healthy", "both mirrors healthy");
    }

    BackgroundProcess Start(string name, int port, string? icl = null) =>
        BackgroundProcess.Start(Dotnet, [Path.Combine(AppContext.BaseDirectory, "duet.dll"), "controller", "--name", name, "--data", _dir,
            "--nbd-port", $"{port}", "--iscsi-port", $"{(name == "A" ? _iscsi : _iscsi + 1)}", "--host-port", $"{(name == "A" ? _unitsA : _unitsB)}", "--icl-port", $"{_icl}", "--nvram", "64M", .. icl is null ? Array.Empty<string>() : ["--icl", icl]], log);

    public async Task DisposeAsync()
    {
        foreach (var p in new[] { _a, _b }) if (p is not null) await p.DisposeAsync();
        // A controller killed with -9 leaves its shared-memory window behind.
        if (File.Exists(Path.Combine(_dir, "pair.id")))
        {
            var pair = Duet.Host.Controller.ControllerServer.PairId(_dir).ToString("N");
            foreach (var name in new[] { "A", "B" })
                File.Delete(Duet.Interconnect.Link.SharedMemoryIclTransport.WindowPath(Duet.Interconnect.Link.SharedMemoryIclTransport.DefaultDirectory, pair, name));
        }
        Directory.Delete(_dir, recursive: true);
    }

    string Uri(int port, string volume) => $"nbd://127.0.0.1:{port}/{volume}";

    async Task<StatusInfo> StatusAsync()
    {
        using var client = PairClient.ForDataDirectory(_dir);
        return await client.StatusAsync();
    }

    async Task<StatusInfo> WaitFor(Func<StatusInfo, bool> condition, string what)
    {
        var until = DateTime.UtcNow + Timeout;
        StatusInfo? last = null;
        while (DateTime.UtcNow < until)
        {
            try { last = await StatusAsync(); if (condition(last)) return last; }
            catch (ControllerUnavailableException) { }
            await Task.Delay(100);
        }
        Assert.Fail($"timed out waiting for {what}; last status: {System.Text.Json.JsonSerializer.Serialize(last)}");
        return null!;
    }

    async Task<string> CopyOutHash(int port, string volume, long bytes, string name)
    {
        var file = Path.Combine(_dir, name);
        await _run.RunOkAsync("nbdcopy", "--synchronous", "-C", "1", Uri(port, volume), file);
        using (var f = File.Open(file, FileMode.Open)) f.SetLength(bytes);
        return TestData.HashFile(file);
    }

    [Fact]
    [Trait("Claim", "MR-1")]
    [Trait("Claim", "ICL-1")]
    public async Task WritesThroughEitherControllerReadBackThroughEither()
    {
        // vol0 is served by A: write through A, read through B (forwarded over the link).
        var f0 = Path.Combine(_dir, "in0.img");
        var h0 = TestData.WriteRandomFile(f0, 32L << 20, seed: 1);
        await _run.RunOkAsync("nbdcopy", f0, Uri(_portA, "vol0"));
        Assert.Equal(h0, await CopyOutHash(_portB, "vol0", 32L << 20, "out0.img"));
        // vol1 is served by B: write through A (forwarded), read through B.
        var f1 = Path.Combine(_dir, "in1.img");
        var h1 = TestData.WriteRandomFile(f1, 32L << 20, seed: 2);
        await _run.RunOkAsync("nbdcopy", f1, Uri(_portA, "vol1"));
        Assert.Equal(h1, await CopyOutHash(_portB, "vol1", 32L << 20, "out1.img"));
        Assert.Equal(h1, await CopyOutHash(_portA, "vol1", 32L << 20, "out1a.img"));
        var s = await StatusAsync();
        Assert.True(s.Controller!.ForwardedRequests > 0 && s.PeerController!.ForwardedRequests > 0);
        Assert.True(s.Controller.MirroredWrites > 0 && s.PeerController.MirroredWrites > 0);
        Assert.Equal(0, s.Controller.RefusedTransfers + s.PeerController.RefusedTransfers);
        Assert.Equal(0, s.Controller.InvariantViolations + s.PeerController.InvariantViolations);
    }

    [Fact]
    [Trait("Claim", "MR-1")]
    [Trait("Claim", "CC-1")]
    public async Task AfterKill9OfTheOwnerItsAcknowledgedWriteIsInThePeersNvramRegion2()
    {
        var file = Path.Combine(_dir, "pattern.img");
        TestData.WriteRandomFile(file, 1L << 20, seed: 3);
        var pattern = await File.ReadAllBytesAsync(file);
        await _run.RunOkAsync("nbdcopy", file, Uri(_portA, "vol0")); // every write acknowledged when nbdcopy exits
        _a!.KillHard();
        await WaitFor(s => s.Controller is { Name: "B", Mirror: "error-recovery" }, "B in error-recovery mode");
        _b!.Terminate();
        Assert.Equal(0, await _b.WaitForExitAsync(Timeout));
        // Read B's NVRAM file alone: region 2 holds A's mirrored elements; replay them in sequence order.
        using var nvram = NvramFile.Open(Path.Combine(_dir, "nvram-B.bin"));
        var image = new byte[pattern.Length];
        var seen = new bool[pattern.Length / Units.SectorBytes];
        foreach (var (e, d) in nvram.Peer.ReplayOrder())
        {
            Assert.Equal(0, d.ArrayNumber); // arr0: vol0 starts at its first block
            for (int s = 0; s < 32; s++)
            {
                long sector = d.ArrayLba + s;
                if ((d.ValidMask & (1u << s)) == 0 || sector >= seen.Length) continue;
                nvram.Peer.Data(e).Slice(s * 512, 512).CopyTo(image.AsSpan((int)sector * 512));
                seen[sector] = true;
            }
        }
        Assert.All(seen, Assert.True);
        Assert.Equal(pattern, image);
    }

    [Fact]
    [Trait("Claim", "MR-1")]
    public async Task MovingAnArrayToThePeerLosesNothingAndKeepsItsVolumesReachableOnBoth()
    {
        var f = Path.Combine(_dir, "move.img");
        var h = TestData.WriteRandomFile(f, 16L << 20, seed: 5);
        await _run.RunOkAsync("nbdcopy", f, Uri(_portA, "vol0")); // acknowledged by A, partly still in its cache
        using (StringWriter o = new(), e = new())
            Assert.True(await Duet.Cli.Program.RunAsync(["array", "move", "arr0", "--to", "B", "--data", _dir], o, e) == 0, e.ToString());
        await WaitFor(s => s.Arrays.Single(a => a.Name == "arr0") is { Owner: "B", State: "optimal" }, "arr0 served by B");
        Assert.Equal(h, await CopyOutHash(_portB, "vol0", 16L << 20, "move-b.img"));
        Assert.Equal(h, await CopyOutHash(_portA, "vol0", 16L << 20, "move-a.img"));
        // New writes through B (now the owner), then the array goes back to A.
        var g = Path.Combine(_dir, "move2.img");
        var h2 = TestData.WriteRandomFile(g, 16L << 20, seed: 6);
        await _run.RunOkAsync("nbdcopy", g, Uri(_portB, "vol0"));
        using (StringWriter o = new(), e = new())
            Assert.True(await Duet.Cli.Program.RunAsync(["array", "move", "arr0", "--to", "A", "--data", _dir], o, e) == 0, e.ToString());
        await WaitFor(s => s.Arrays.Single(a => a.Name == "arr0") is { Owner: "A", State: "optimal" }, "arr0 served by A again");
        Assert.Equal(h2, await CopyOutHash(_portA, "vol0", 16L << 20, "back-a.img"));
        Assert.Equal(h2, await CopyOutHash(_portB, "vol0", 16L << 20, "back-b.img"));
        var s = await StatusAsync();
        Assert.Equal(0, s.Controller!.RefusedTransfers + s.PeerController!.RefusedTransfers);
    }

    [Fact]
    [Trait("Claim", "MR-1")]
    public async Task AKilledControllerRestartsReplaysItsNvramAndPairsAgain()
    {
        var f = Path.Combine(_dir, "restart.img");
        var h = TestData.WriteRandomFile(f, 16L << 20, seed: 7);
        await _run.RunOkAsync("nbdcopy", f, Uri(_portA, "vol0"));
        _a!.KillHard();
        await WaitFor(s => s.Controller is { Name: "B", Mirror: "error-recovery" }, "B in error-recovery mode");
        await _a.DisposeAsync();
        _a = Start("A", _portA);
        await _a.WaitForOutputAsync("duet controller A: ready", Timeout);
        await WaitFor(s => s.Controller is { Name: "A", Mirror: "healthy" } && s.PeerController is { Mirror: "healthy" }, "the pair mirrored again");
        Assert.Equal(h, await CopyOutHash(_portA, "vol0", 16L << 20, "restart-a.img"));
        Assert.Equal(h, await CopyOutHash(_portB, "vol0", 16L << 20, "restart-b.img"));
        // Write-back with the mirror resumes: new writes are mirrored again.
        long before = (await StatusAsync()).Controller!.MirroredWrites;
        var g = Path.Combine(_dir, "restart2.img");
        var h2 = TestData.WriteRandomFile(g, 4L << 20, seed: 8);
        await _run.RunOkAsync("nbdcopy", g, Uri(_portA, "vol0"));
        var s = await StatusAsync();
        Assert.True(s.Controller!.MirroredWrites > before);
        Assert.Equal(0, s.Controller.RefusedTransfers + s.PeerController!.RefusedTransfers);
        Assert.Equal(h2, await CopyOutHash(_portB, "vol0", 4L << 20, "restart2-b.img"));
    }

    [Fact]
    public async Task KillingThePeerPutsTheOwnerInErrorRecoveryAndWritesKeepSucceeding()
    {
        _b!.KillHard();
        var s = await WaitFor(s => s.Controller is { Name: "A", Mirror: "error-recovery", LinkUp: false }, "A in error-recovery mode");
        var file = Path.Combine(_dir, "erm.img");
        var hash = TestData.WriteRandomFile(file, 8L << 20, seed: 4);
        await _run.RunOkAsync("nbdcopy", file, Uri(_portA, "vol0"));
        Assert.Equal(hash, await CopyOutHash(_portA, "vol0", 8L << 20, "erm-out.img"));
        s = await StatusAsync();
        Assert.True(s.Controller!.WriteThroughs > 0, "writes in error-recovery mode go through to the drives");
        // vol1's owner is gone: a request for it fails with an I/O error instead of hanging.
        var r = await _run.RunAsync("nbdcopy", ["--synchronous", Uri(_portA, "vol1"), Path.Combine(_dir, "never.img")], TimeSpan.FromSeconds(60));
        Assert.NotEqual(0, r.ExitCode);
    }

    [Fact]
    [Trait("Claim", "ICL-1")]
    public async Task OverTcpTheLinkForwardsAndAKilledPeerPutsTheOwnerInErrorRecovery()
    {
        // The same pair again, its link over TCP this time.
        foreach (var p in new[] { _a!, _b! }) p.Terminate();
        foreach (var p in new[] { _a!, _b! }) Assert.Equal(0, await p.WaitForExitAsync(Timeout));
        await _a!.DisposeAsync();
        await _b!.DisposeAsync();
        _a = Start("A", _portA, "tcp");
        _b = Start("B", _portB, "tcp");
        await _a.WaitForOutputAsync("duet controller A: ready", Timeout);
        await _b.WaitForOutputAsync("duet controller B: ready", Timeout);
        await WaitFor(s => s.Controller?.Mirror == "healthy" && s.PeerController?.Mirror == "healthy", "both mirrors healthy over TCP");
        var pair = Duet.Host.Controller.ControllerServer.PairId(_dir).ToString("N");
        Assert.False(File.Exists(Duet.Interconnect.Link.SharedMemoryIclTransport.WindowPath(Duet.Interconnect.Link.SharedMemoryIclTransport.DefaultDirectory, pair, "A")));
        // vol1 is B's: written through A, forwarded over the TCP link.
        var f = Path.Combine(_dir, "tcp.img");
        var h = TestData.WriteRandomFile(f, 8L << 20, seed: 7);
        await _run.RunOkAsync("nbdcopy", f, Uri(_portA, "vol1"));
        Assert.Equal(h, await CopyOutHash(_portB, "vol1", 8L << 20, "tcp-out.img"));
        _b.KillHard();
        await WaitFor(s => s.Controller is { Name: "A", Mirror: "error-recovery", LinkUp: false }, "A in error-recovery mode over TCP");
    }
}
