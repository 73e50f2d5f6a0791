using System.Diagnostics;
using Duet.Cache.Nvram;

namespace Duet.Cache.Tests.Nvram;

/// <summary>
/// A real <c>kill -9</c>: a separate process (tests/Duet.Cache.Crasher) writes elements into
/// both regions without flushing and is killed with SIGKILL; everything it wrote must be in
/// the file. Nothing here waits on a clock: the test waits for the process's "written" line
/// and for its exit.
/// </summary>
[Trait("Claim", "MR-1")]
[Trait("Claim", "CC-1")]
public sealed class NvramKillTests : IDisposable
{
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    [Trait("Claim", "AW-1")]
    public void Elements_and_host_tag_entries_written_by_a_process_killed_with_sigkill_are_all_in_the_file()
    {
        const int count = 20;
        const ulong epoch = 7;
        var path = _dir.File("killed.nvram");
        var layout = NvramLayout.For(2L << 20);
        Assert.True(layout.ElementCount >= count);
        NvramFile.Create(path, layout, "A", Sample.Pair).Dispose();

        using (var crasher = StartCrasher(path, count, epoch))
        {
            string? line;
            while ((line = crasher.StandardOutput.ReadLine()) is not null && line != "written") { }
            if (line != "written")
            {
                crasher.WaitForExit();
                Assert.Fail($"the crasher exited ({crasher.ExitCode}) without writing: {crasher.StandardError.ReadToEnd()}");
            }
            crasher.Kill(); // SIGKILL on Unix: no finalizers, no flush, no unmap
            crasher.WaitForExit();
            Assert.True(crasher.HasExited);
            Assert.NotEqual(0, crasher.ExitCode);
        }

        using var nvram = NvramFile.Open(path);
        Assert.Equal(epoch, nvram.Epoch);
        Assert.Equal(3UL, nvram.Generation); // create, crasher, this open
        foreach (var region in new[] { nvram.Own, nvram.Peer })
        {
            var order = region.ReplayOrder(out var skipped);
            Assert.Empty(skipped);
            // Sequence 1000 - e: replay runs from the last element written back to the first.
            Assert.Equal(Enumerable.Range(0, count).Reverse(), order.Select(x => x.Element));
            foreach (var (element, d) in order)
            {
                Assert.Equal(new ElementDescriptor(0xD0E7, 1, 32L * element, 32, uint.MaxValue, (ulong)(1000 - element), true), d);
                var data = region.Data(element);
                for (int i = 0; i < data.Length; i++)
                    if (data[i] != Pattern(region.Number, element, i))
                        Assert.Fail($"region {region.Number} element {element} byte {i}: {data[i]} != {Pattern(region.Number, element, i)}");
            }
        }

        // The host tag tables: every finished command the crasher recorded, and every entry of the peer's it stored.
        var tags = new HostTagTable(nvram);
        Assert.Equal((count, count), (tags.RecoveredOwn, tags.RecoveredPeer));
        Assert.Empty(tags.Skipped);
        Assert.Equal((ulong)count, tags.Sequence);
        for (int i = 0; i < count; i++)
        {
            var (key, digest, status) = HostTag(i);
            Assert.True(tags.TryFind(key, out var own, out bool peers));
            Assert.False(peers);
            Assert.Equal(new HostTagEntry(key, digest, status, (ulong)i + 1), own);
            Assert.True(tags.TryFind(key with { HostId = key.HostId + 1 }, out var theirs, out peers));
            Assert.True(peers);
            Assert.Equal(100UL + (ulong)i, theirs.Sequence);
        }
    }

    static (HostTagKey, uint, byte) HostTag(int i) => (new HostTagKey((byte)(i % 2), 0xD0E7_0000UL, (0x0001UL << 48) + (ulong)i + 1), 0xC0FFEE00u + (uint)i, (byte)(i % 3));

    // The same formula is in tests/Duet.Cache.Crasher/Program.cs.
    static byte Pattern(int region, int element, int index) => (byte)(region * 101 + element * 31 + index * 7 + (index >> 9));

    static Process StartCrasher(string path, int count, ulong epoch)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "crasher", "Duet.Cache.Crasher.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing: the test project's CopyCrasher target should have put it there");
        var info = new ProcessStartInfo(DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { dll, path, count.ToString(System.Globalization.CultureInfo.InvariantCulture), epoch.ToString(System.Globalization.CultureInfo.InvariantCulture) })
            info.ArgumentList.Add(arg);
        return Process.Start(info) ?? throw new InvalidOperationException("could not start the crasher");
    }

    /// <summary>The dotnet host running these tests (the CLI exports it), else dotnet on PATH.</summary>
    static string DotnetHost()
    {
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host)) return host;
        var self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet") return self;
        return "dotnet";
    }
}
