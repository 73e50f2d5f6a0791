using System.Text.Json;
using Duet.Interop.Tests.Support;
using Xunit.Abstractions;

namespace Duet.Interop.Tests;

/// <summary>
/// The real controller (RAID 6 arrays on drive files, served over NBD) driven by the clients
/// people use: libnbd's nbdinfo and nbdcopy, qemu-img and fio.
/// </summary>
[Trait("Area", "Interop")]
[Trait("Claim", "AW-7")]
public sealed class RealClientTests(ITestOutputHelper log)
{
    static string[] MapLine(string line) => line.Split(' ', StringSplitOptions.RemoveEmptyEntries);

    static string[][] Map(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(MapLine).ToArray();

    [Fact]
    public async Task NbdinfoShowsTheVolumeSizeBlockSizesAndAnAllocationMapThatFollowsWrites()
    {
        await using var c = await Controller.StartAsync(log);
        var vol0 = (await c.Status()).Volumes.Single(v => v.Name == "vol0");

        using (var doc = JsonDocument.Parse(await c.Run.RunOkAsync("nbdinfo", "--json", c.Uri("vol0"))))
        {
            var export = doc.RootElement.GetProperty("exports")[0];
            Assert.Equal("vol0", export.GetProperty("export-name").GetString());
            Assert.Equal(vol0.SizeBytes, export.GetProperty("export-size").GetInt64());
            Assert.Equal(512, export.GetProperty("block_size_minimum").GetInt32());
            Assert.Equal(4096, export.GetProperty("block_size_preferred").GetInt32());
            Assert.False(export.GetProperty("is_read_only").GetBoolean());
            Assert.Contains("base:allocation", export.GetProperty("contexts").EnumerateArray().Select(e => e.GetString()));
        }

        var fresh = Map(await c.Run.RunOkAsync("nbdinfo", "--map", c.Uri("vol0")));
        Assert.Equal([["0", $"{vol0.SizeBytes}", "3", "hole,zero"]], fresh);

        const long written = 4L << 20;
        var input = c.ScratchFile("in.img");
        TestData.WriteRandomFile(input, written, seed: 1);
        await c.NbdcopyIn(input, "vol0");

        var after = Map(await c.Run.RunOkAsync("nbdinfo", "--map", c.Uri("vol0")));
        Assert.Equal(["0", $"{written}", "0", "data"], after[0]);
        Assert.Equal([$"{written}", $"{vol0.SizeBytes - written}", "3", "hole,zero"], after[^1]);
    }

    [Fact]
    public async Task Nbdcopy256MiBOfRandomDataGoesInAndComesBackUnchanged()
    {
        const long size = 256L << 20;
        await using var c = await Controller.StartAsync(log);
        var input = c.ScratchFile("in.img");
        var expected = TestData.WriteRandomFile(input, size, seed: 42);

        await c.NbdcopyIn(input, "vol0");
        File.Delete(input);

        Assert.Equal(expected, await c.NbdcopyOutHash("vol0", size));
    }

    [Fact]
    public async Task QemuImgWritesAndDdReadsBackUnchanged()
    {
        const long size = 64L << 20;
        await using var c = await Controller.StartAsync(log);
        string input = c.ScratchFile("in.img"), output = c.ScratchFile("out.img");
        var expected = TestData.WriteRandomFile(input, size, seed: 7);

        await c.Run.RunOkAsync("qemu-img", "dd", "-f", "raw", "-O", "raw", "bs=1M", $"if={input}", $"of={c.Uri("vol1")}");
        await c.Run.RunOkAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", input, c.Uri("vol1"));
        await c.Run.RunOkAsync("qemu-img", "dd", "-f", "raw", "-O", "raw", "bs=1M", "count=64", $"if={c.Uri("vol1")}", $"of={output}");

        Assert.Equal(expected, TestData.HashFile(output));
    }

    static string[] Fio(Controller c, string name, params string[] more) =>
        [$"--name={name}", "--ioengine=nbd", $"--uri={c.Uri("vol1")}", "--verify=crc32c", "--verify_fatal=1", .. more];

    static void AssertFioVerified(ProcessResult r)
    {
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.DoesNotContain("verify: bad", r.Stdout + r.Stderr);
        Assert.Contains("err= 0", r.Stdout);
    }

    [Fact]
    public async Task FioRandomWritesAtQueueDepth32VerifyWithCrc32c()
    {
        await using var c = await Controller.StartAsync(log);
        AssertFioVerified(await c.Run.RunAsync("fio", Fio(c, "randwrite", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M", "--do_verify=1")));
    }

    [Fact]
    public async Task FioMixedRandomReadWriteOf512BytesTo64KiBVerifies()
    {
        await using var c = await Controller.StartAsync(log);
        AssertFioVerified(await c.Run.RunAsync("fio", Fio(c, "randrw", "--rw=randrw", "--bsrange=512-64k", "--iodepth=16", "--size=32M", "--do_verify=1")));
    }

    [Fact]
    public async Task DataFioWroteVerifiesAfterTwoMembersOfItsArrayFail()
    {
        await using var c = await Controller.StartAsync(log);
        string[] job = ["--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16M", "--randseed=1234"];
        AssertFioVerified(await c.Run.RunAsync("fio", Fio(c, "write", [.. job, "--do_verify=0"])));

        await c.CliOk("drive", "fail", "d4");
        await c.CliOk("drive", "fail", "d6");
        var arr1 = await c.WaitForArray("arr1", a => a.Members.Count(m => m.State == "failed") == 2, "to have two failed members");
        Assert.Equal("degraded", arr1.State);

        var verify = await c.Run.RunAsync("fio", Fio(c, "write", [.. job, "--verify_only"]));
        AssertFioVerified(verify);
        Assert.Contains("READ: ", verify.Stdout); // it read back what it wrote, not nothing
    }
}
