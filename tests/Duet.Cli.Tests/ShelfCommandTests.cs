using System.Text.Json;
using Duet.Drives;
using Duet.Shelf;
using Microsoft.Extensions.Logging.Abstractions;

namespace Duet.Cli.Tests;

/// <summary>`duet shelf status/pull/insert/fence/unfence` run in-process against a real shelf server.</summary>
public class ShelfCommandTests
{
    [Fact]
    public async Task Shelf_status_pull_insert_fence_and_unfence_talk_to_a_running_shelf()
    {
        var dir = TempDir.Create();
        var drives = new FileShelf(FileShelf.DirectoryFor(dir));
        await drives.Create("d0", 1 << 20).DisposeAsync();
        await drives.Create("d1", 2 << 20).DisposeAsync();
        var shelf = ShelfServer.OpenShelf(dir);
        var server = new ShelfServer(shelf, new ShelfServerOptions { DataDirectory = dir }, NullLogger.Instance);
        await server.StartAsync();
        try
        {
            await using (var a = new RemoteShelfPort(RemoteShelfPortOptions.ForDataDirectory(dir, "A")))
            {
                await a.RegisterAsync(0xA1);
                await a.ClaimAsync([0x42]);
            }

            var status = await Controller.Run(dir, "shelf", "status");
            Assert.Equal(0, status.Code);
            Assert.Contains("A: enabled, key 0xa1, heartbeat 0, 0 write(s) in flight", status.Out);
            Assert.Contains("B: enabled, not registered", status.Out);
            Assert.Contains("epoch counter: 1", status.Out);
            Assert.Contains("array 0x0000000000000042: port A, epoch 1", status.Out);
            Assert.Contains($"serial {Duet.Shelf.Shelf.SerialOf("d1")}", status.Out);

            Assert.Equal(0, (await Controller.Run(dir, "shelf", "pull", "d1")).Code);
            Assert.Equal(0, (await Controller.Run(dir, "shelf", "fence", "A")).Code);
            var json = await Controller.Run(dir, "shelf", "status", "--json");
            Assert.Equal(0, json.Code);
            using (var doc = JsonDocument.Parse(json.Out))
            {
                Assert.True(doc.RootElement.GetProperty("ports")[0].GetProperty("fenced").GetBoolean());
                var d1 = doc.RootElement.GetProperty("slots").EnumerateArray().Single(s => s.GetProperty("name").GetString() == "d1");
                Assert.True(d1.GetProperty("pulled").GetBoolean());
            }
            Assert.Equal(0, (await Controller.Run(dir, "shelf", "insert", "d1")).Code);
            Assert.Equal(0, (await Controller.Run(dir, "shelf", "unfence", "A")).Code);
            Assert.DoesNotContain("PULLED", (await Controller.Run(dir, "shelf", "status")).Out);

            var unknown = await Controller.Run(dir, "shelf", "pull", "d9");
            Assert.Equal(1, unknown.Code);
            Assert.Contains("no drive 'd9'", unknown.Err);
            Assert.Equal(2, (await Controller.Run(dir, "shelf", "fence", "C")).Code);
        }
        finally
        {
            await server.StopAsync();
            await shelf.DisposeAsync();
        }

        var none = await Controller.Run(dir, "shelf", "status");
        Assert.Equal(1, none.Code);
        Assert.Contains("no shelf is running", none.Err);
        Directory.Delete(dir, recursive: true);
    }
}
