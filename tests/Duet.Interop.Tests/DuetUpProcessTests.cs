using System.Text.Json;
using Duet.Host.Management;
using Duet.Interop.Tests.Support;
using Duet.Raid.Management;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// `duet up` as an operator runs it: a separate process on a data directory (the default
/// layout, eight sparse 1 GiB drive files), stopped with SIGTERM and started again.
/// </summary>
[Trait("Area", "Interop")]
public sealed class DuetUpProcessTests(ITestOutputHelper log) : IDisposable
{
    static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(60);
    static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(30);
    const long Written = 16L << 20;

    readonly string _dir = Directory.CreateTempSubdirectory("duet-up-").FullName;
    readonly ProcessRunner _run = new(log);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    string DrivePath(string drive) => Path.Combine(_dir, "drives", drive + ".img");

    static string Dotnet => DuetProcesses.Dotnet;

    /// <summary>Starts `dotnet duet.dll up --data DIR --nbd-port PORT` and waits until it says it is ready.</summary>
    async Task<(BackgroundProcess Process, int Port, string Output)> UpAsync()
    {
        int port = TestData.FreePorts(TestData.DuetUpPorts); // NBD A on port, B on port + 1; host units port + 2 .. + 5; TCP ICL port + 6; iSCSI port + 7, + 8
        var duet = Path.Combine(AppContext.BaseDirectory, "duet.dll");
        var process = BackgroundProcess.Start(Dotnet, [duet, "up", "--data", _dir, .. TestData.DuetUpArgs(port)], log);
        try
        {
            return (process, port, await process.WaitForOutputAsync("duet: ready", StartTimeout));
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }

    static async Task<string> StopAsync(BackgroundProcess process)
    {
        process.Terminate();
        Assert.Equal(0, await process.WaitForExitAsync(StopTimeout));
        Assert.Contains("duet: stopped", process.Output);
        return process.Output;
    }

    async Task<StatusInfo> StatusAsync()
    {
        using StringWriter o = new(), e = new();
        Assert.Equal(0, await Duet.Cli.Program.RunAsync(["status", "--json", "--data", _dir], o, e));
        return JsonSerializer.Deserialize(o.ToString(), ManagementJsonContext.Default.StatusInfo)!;
    }

    async Task WriteAsync(int port, string volume, string input) =>
        await _run.RunOkAsync("nbdcopy", "--requests=32", input, $"nbd://127.0.0.1:{port}/{volume}");

    async Task<string> ReadHashAsync(int port, string volume)
    {
        var output = Path.Combine(_dir, "out.img");
        File.Delete(output);
        await _run.RunOkAsync("nbdcopy", "--requests=32", $"nbd://127.0.0.1:{port}/{volume}", output);
        using (var f = new FileStream(output, FileMode.Open, FileAccess.ReadWrite)) f.SetLength(Written);
        var hash = TestData.HashFile(output);
        File.Delete(output);
        return hash;
    }

    [Fact]
    public async Task UpPrintsItsEndpointsServesNbdStopsCleanlyOnSigtermAndReassemblesOnTheNextStart()
    {
        var input = Path.Combine(_dir, "in.img");
        var expected = TestData.WriteRandomFile(input, Written, seed: 4);

        var (first, port, output) = await UpAsync();
        await using (first)
        {
            Assert.Contains($"duet: data directory {_dir} (new: created the default layout)", output);
            Assert.Contains($"duet: management socket {Path.Combine(_dir, "duet.sock")}", output);
            Assert.Contains($"duet: NBD nbd://127.0.0.1:{port}/vol0", output);
            Assert.Contains($"duet: NBD nbd://127.0.0.1:{port}/vol1", output);
            Assert.Contains($"nbdinfo nbd://127.0.0.1:{port}/vol0", output);
            Assert.Equal(8, Directory.GetFiles(Path.Combine(_dir, "drives"), "*.img").Length);

            using (var doc = JsonDocument.Parse(await _run.RunOkAsync("nbdinfo", "--json", $"nbd://127.0.0.1:{port}/vol0")))
            {
                var export = doc.RootElement.GetProperty("exports")[0];
                Assert.Equal((await StatusAsync()).Volumes.Single(v => v.Name == "vol0").SizeBytes, export.GetProperty("export-size").GetInt64());
            }
            await WriteAsync(port, "vol0", input);
            await StopAsync(first);
        }

        var (second, port2, output2) = await UpAsync();
        await using (second)
        {
            Assert.DoesNotContain("new: created", output2);
            Assert.Contains("duet: array arr0: RAID 6, 4 drives", output2);
            Assert.Contains("duet: array arr1: RAID 6, 4 drives", output2);
            Assert.DoesNotContain("degraded", output2);
            Assert.DoesNotContain("not shut down cleanly", output2);
            Assert.All((await StatusAsync()).Arrays, a => Assert.Equal("optimal", a.State));
            Assert.Equal(expected, await ReadHashAsync(port2, "vol0"));
            await StopAsync(second);
        }
    }

    [Fact]
    [Trait("Claim", "ISCSI")]
    public async Task UpServesOneIscsiTargetOnBothControllersAndWhatBWritesAReadsBack()
    {
        const string target = "iqn.2026-12.org.duet:array";
        var input = Path.Combine(_dir, "in.img");
        var expected = TestData.WriteRandomFile(input, Written, seed: 9);
        var (up, port, output) = await UpAsync();
        await using (up)
        {
            int a = port + 7, b = port + 8;
            Assert.Contains($"controller A portal 127.0.0.1:{a},1; controller B portal 127.0.0.1:{b},2", output);
            Assert.Contains($"iscsi://127.0.0.1:{a}/{target}/0 and iscsi://127.0.0.1:{b}/{target}/0 (vol0)", output);
            var ls = await _run.RunOkAsync("iscsi-ls", "-s", $"iscsi://127.0.0.1:{a}");
            Assert.Contains($"Target:{target} Portal:127.0.0.1:{a},1", ls);
            Assert.Contains($"Target:{target} Portal:127.0.0.1:{b},2", ls);
            Assert.Contains("Lun:1", ls);

            // vol0 is served by A: written through B (forwarded over the link), read back through A.
            await _run.RunOkAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", input, $"iscsi://127.0.0.1:{b}/{target}/0");
            var back = Path.Combine(_dir, "back.img");
            await _run.RunOkAsync("qemu-img", "dd", "-f", "raw", "-O", "raw", $"if=iscsi://127.0.0.1:{a}/{target}/0", $"of={back}", "bs=1M", $"count={Written >> 20}");
            Assert.Equal(expected, TestData.HashFile(back));
            // And NBD sees the same bytes.
            Assert.Equal(expected, await ReadHashAsync(port, "vol0"));
            await StopAsync(up);
        }
    }

    async Task CliAsync(params string[] args)
    {
        using StringWriter o = new(), e = new();
        int code = await Duet.Cli.Program.RunAsync([.. args, "--data", _dir], o, e);
        log.WriteLine($"$ duet {string.Join(' ', args)}\nexit {code}\n{o}{e}");
        Assert.True(code == 0, $"duet {string.Join(' ', args)} exited {code}: {e}");
    }

    /// <summary>LUN → volume name as libiscsi's tools see them through one portal: iscsi-ls for the LUNs,
    /// iscsi-inq's unit serial number (VPD 0x80, the first 10 bytes of SHA-256 of the volume name) for each.</summary>
    async Task<Dictionary<int, string>> LunsThroughAsync(int portal, params string[] volumes)
    {
        const string target = "iqn.2026-12.org.duet:array";
        var names = volumes.ToDictionary(n => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(n)), 0, 10));
        var luns = new Dictionary<int, string>();
        var ls = await _run.RunAsync("iscsi-ls", ["-s", $"iscsi://127.0.0.1:{portal}"]);
        // A LUN's access states changed while iscsi-ls looked (a new volume's owner settling): the target says so
        // once with a unit attention (2A/06), which iscsi-ls does not retry. Not seen this time; the caller asks again.
        if (ls.ExitCode != 0 && ls.Stderr.Contains("UNIT_ATTENTION", StringComparison.Ordinal)) return luns;
        Assert.True(ls.ExitCode == 0, ls.ToString());
        foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(ls.Stdout, @"Lun:(\d+)"))
        {
            int lun = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            var inq = await _run.RunAsync("iscsi-inq", ["-e", "1", "-c", "128", $"iscsi://127.0.0.1:{portal}/{target}/{lun}"]);
            // The target rebuilt its LUN map between the listing and this inquiry (it looks at its catalog once a
            // second): not seen this time; the caller asks again.
            if (inq.ExitCode != 0) continue;
            var serial = System.Text.RegularExpressions.Regex.Match(inq.Stdout, "[0-9A-F]{20}").Value;
            luns[lun] = names.TryGetValue(serial, out var name) ? name : $"unknown serial '{serial}'";
        }
        return luns;
    }

    /// <summary>Both portals, until both list <paramref name="expected"/>: B hears of a change made through A by a
    /// notice over the link and its target looks at its catalog once a second.</summary>
    async Task BothPortalsServeAsync(int portalA, int portalB, Dictionary<int, string> expected)
    {
        var volumes = expected.Values.ToArray();
        var limit = System.Diagnostics.Stopwatch.StartNew();
        foreach (var portal in new[] { portalA, portalB })
        {
            while (true)
            {
                var seen = await LunsThroughAsync(portal, volumes);
                if (seen.Count == expected.Count && !seen.Except(expected).Any()) break;
                // A LUN that already names a volume must never name another.
                foreach (var (lun, name) in seen) Assert.True(!expected.TryGetValue(lun, out var want) || want == name, $"portal {portal}: LUN {lun} is {name}, not {want}");
                Assert.True(limit.Elapsed < TimeSpan.FromSeconds(20), $"portal {portal} serves {string.Join(", ", seen.Select(kv => $"{kv.Key}={kv.Value}"))}");
                await Task.Delay(200);
            }
        }
    }

    [Fact]
    [Trait("Claim", "ISCSI")]
    public async Task VolumesCreatedBThenAKeepTheirLunsThroughBothPortals_AndDeletingOneMovesNoOther()
    {
        var (up, port, _) = await UpAsync();
        await using (up)
        {
            int a = port + 7, b = port + 8;
            await BothPortalsServeAsync(a, b, new() { [0] = "vol0", [1] = "vol1" });

            await CliAsync("drive", "add", "d8", "--size", "256M");
            await CliAsync("drive", "add", "d9", "--size", "256M");
            await CliAsync("array", "create", "arr2", "--level", "1", "--drives", "d8,d9");
            await CliAsync("volume", "create", "b", "--array", "arr2", "--size", "64M");
            await BothPortalsServeAsync(a, b, new() { [0] = "vol0", [1] = "vol1", [2] = "b" });
            // "a" sorts before every other volume: it takes the next LUN; vol0, vol1 and b stay where they were.
            await CliAsync("volume", "create", "a", "--array", "arr2", "--size", "64M");
            await BothPortalsServeAsync(a, b, new() { [0] = "vol0", [1] = "vol1", [2] = "b", [3] = "a" });
            Assert.Equal(new Dictionary<string, int?> { ["a"] = 3, ["b"] = 2, ["vol0"] = 0, ["vol1"] = 1 },
                (await StatusAsync()).Volumes.ToDictionary(v => v.Name, v => v.Lun));

            await CliAsync("volume", "delete", "b");
            await BothPortalsServeAsync(a, b, new() { [0] = "vol0", [1] = "vol1", [3] = "a" });
            await StopAsync(up);
        }
        // The LUNs are in the superblocks: the next start serves every volume where it was.
        var (again, port2, output2) = await UpAsync();
        await using (again)
        {
            Assert.Contains($"iscsi://127.0.0.1:{port2 + 7}/iqn.2026-12.org.duet:array/3 and iscsi://127.0.0.1:{port2 + 8}/iqn.2026-12.org.duet:array/3 (a)", output2);
            await BothPortalsServeAsync(port2 + 7, port2 + 8, new() { [0] = "vol0", [1] = "vol1", [3] = "a" });
            await StopAsync(again);
        }
    }

    [Fact]
    public async Task UpStartsDegradedWithADriveFileGoneAndAnotherDamagedAndServesBothVolumes()
    {
        string in0 = Path.Combine(_dir, "in0.img"), in1 = Path.Combine(_dir, "in1.img");
        var expected0 = TestData.WriteRandomFile(in0, Written, seed: 5);
        var expected1 = TestData.WriteRandomFile(in1, Written, seed: 6);
        var (first, port, _) = await UpAsync();
        await using (first)
        {
            await WriteAsync(port, "vol0", in0);
            await WriteAsync(port, "vol1", in1);
            await StopAsync(first);
        }

        File.Delete(DrivePath("d2"));
        using (var d5 = new FileStream(DrivePath("d5"), FileMode.Open, FileAccess.Write))
            d5.Write(Enumerable.Range(0, 8192).Select(i => (byte)(i * 151 + 17)).ToArray());

        var (second, port2, output) = await UpAsync();
        await using (second)
        {
            Assert.Matches(@"duet: array arr0: RAID 6, 4 drives, .*, degraded \(slot 2 - missing\)", output);
            Assert.Matches(@"duet: array arr1: RAID 6, 4 drives, .*, degraded \(slot 1 - missing\)", output);
            Assert.Contains($"duet: NBD nbd://127.0.0.1:{port2}/vol0", output);
            Assert.Contains($"duet: NBD nbd://127.0.0.1:{port2}/vol1", output);

            var status = await StatusAsync();
            Assert.All(status.Arrays, a => Assert.Equal("degraded", a.State));
            Assert.DoesNotContain(status.Drives, d => d.Name == "d2");
            // With no Duet superblock left, d5 is not taken for a member: it is offered as a free drive.
            Assert.Equal("free", status.Drives.Single(d => d.Name == "d5").Role);

            Assert.Equal(expected0, await ReadHashAsync(port2, "vol0"));
            Assert.Equal(expected1, await ReadHashAsync(port2, "vol1"));

            // ... and taking it back as a spare rebuilds arr1 onto it.
            using (StringWriter o = new(), e = new())
                Assert.Equal(0, await Duet.Cli.Program.RunAsync(["spare", "add", "d5", "--array", "arr1", "--data", _dir], o, e));
            var arr1 = await TestData.PollAsync(async () => (await StatusAsync()).Arrays.Single(a => a.Name == "arr1"),
                a => a.State == "optimal", TimeSpan.FromSeconds(120), "arr1 to finish rebuilding onto d5");
            Assert.Equal("d5", arr1.Members[1].Drive);
            Assert.Equal(expected1, await ReadHashAsync(port2, "vol1"));
            await StopAsync(second);
        }
    }

    [Fact]
    public async Task UpStartsDegradedWhenADriveFileIsTruncatedToAnOddSize()
    {
        string in1 = Path.Combine(_dir, "in1.img");
        var expected1 = TestData.WriteRandomFile(in1, Written, seed: 8);
        var (first, port, _) = await UpAsync();
        await using (first)
        {
            await WriteAsync(port, "vol1", in1);
            await StopAsync(first);
        }

        using (var d6 = new FileStream(DrivePath("d6"), FileMode.Open, FileAccess.Write)) d6.SetLength(12345);

        var (second, port2, output) = await UpAsync();
        await using (second)
        {
            Assert.Matches(@"duet: array arr0: RAID 6, 4 drives, .*, optimal", output);
            Assert.Matches(@"duet: array arr1: RAID 6, 4 drives, .*, degraded \(slot 2 - missing\)", output);
            Assert.Contains("drive d6: ", output); // the log names the drive it could not use, and why
            Assert.Contains("is not a positive multiple of 4096", output);
            Assert.Equal(expected1, await ReadHashAsync(port2, "vol1"));
            await StopAsync(second);
        }
    }
}
