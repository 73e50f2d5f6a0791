using System.Buffers;
using System.Net.Sockets;
using Duet.Core;
using Duet.Drives;

namespace Duet.Shelf.Tests;

/// <summary>`duet shelf` for real: a ShelfServer on Unix sockets over FileShelf drives, controllers'
/// RemoteShelfPorts and the admin client talking to it.</summary>
public class ShelfServerTests
{
    static async Task<ShelfError> ErrorOf(Func<Task> request) => (await Assert.ThrowsAsync<ShelfException>(request)).Error;

    [Fact]
    public async Task Writes_reads_fua_and_flush_round_trip_through_a_remote_port_and_reach_the_drive_file()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        await a.RegisterAsync(0xA1);
        Assert.Equal(new[] { "d0", "d1" }, a.List());
        Assert.True(a.Contains("d1"));
        Assert.False(a.Contains("d9"));

        var d0 = a.Open("d0");
        Assert.Equal(ShelfRig.DriveBytes / Units.BlockBytes, d0.BlockCount);
        Assert.Equal((256L, Shelf.SerialOf("d0")), await a.IdentifyAsync("d0"));

        await d0.WriteAsync(3, Blocks.Of(0x5A, 2), fua: true);
        await d0.WriteAsync(7, Blocks.Of(0x11));
        await d0.FlushAsync();
        var back = new byte[2 * Units.BlockBytes];
        await d0.ReadAsync(3, back);
        Assert.Equal(Blocks.Of(0x5A, 2), back);

        // What the shelf acknowledged is in the drive file itself.
        await using (var file = FileDrive.Open(Path.Combine(FileShelf.DirectoryFor(rig.DataDir), "d0.img")))
        {
            var onDisk = new byte[Units.BlockBytes];
            await file.ReadAsync(7, onDisk);
            Assert.Equal(Blocks.Of(0x11), onDisk);
        }

        Assert.Throws<FileNotFoundException>(() => a.Open("d9"));
        var outside = await Assert.ThrowsAnyAsync<BlockIoException>(() => d0.ReadAsync(256, new byte[Units.BlockBytes]).AsTask());
        Assert.Equal(BlockErrorKind.OutOfRange, outside.Kind);
        var created = a.Create("d2", 64 * Units.BlockBytes);
        Assert.Equal(64, created.BlockCount);
        Assert.Throws<IOException>(() => a.Create("d2", 64 * Units.BlockBytes));

        // The connection's reader took these requests on its own thread, asleep in the socket between them.
        var (reads, sleeps, switches) = rig.Server.ReaderThreadReads;
        Assert.True(reads >= 10, $"{reads} reads on the connection's own thread");
        Assert.True(sleeps >= 1, $"{sleeps} of them slept in poll first"); // most do; one that finds its bytes there already does not
        Assert.True(switches >= 1);
        // And the port's reader took the responses on its own thread.
        Assert.True(a.ReaderThreadReads.Reads >= 10, $"{a.ReaderThreadReads.Reads} responses read on the port's own thread");
    }

    [Fact]
    public async Task A_gathered_write_is_one_request_that_writes_every_extent_and_a_refused_extent_answers_with_its_lba()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        await a.RegisterAsync(0xA1);
        var d0 = a.Open("d0");
        long writes = rig.Server.RequestsServed(ShelfOp.Write);

        // A data run and a block elsewhere (as a member writes data and its tag block): one request, both written.
        WriteExtent[] extents = [new(5, Blocks.Of(0x21, 2)), new(200, Blocks.Of(0x22))];
        await d0.WriteGatherAsync(extents);
        Assert.Equal(1, rig.Server.RequestsServed(ShelfOp.WriteGather));
        Assert.Equal(writes, rig.Server.RequestsServed(ShelfOp.Write));
        var back = new byte[2 * Units.BlockBytes];
        await d0.ReadAsync(5, back);
        Assert.Equal(Blocks.Of(0x21, 2), back);
        await d0.ReadAsync(200, back.AsMemory(0, Units.BlockBytes));
        Assert.Equal(Blocks.Of(0x22), back[..Units.BlockBytes]);

        // The client checks every extent's range first, as it does a write's: nothing is sent.
        var outside = await Assert.ThrowsAnyAsync<BlockIoException>(() => d0.WriteGatherAsync(new WriteExtent[] { new(0, Blocks.Of(1)), new(256, Blocks.Of(2)) }).AsTask());
        Assert.Equal(BlockErrorKind.OutOfRange, outside.Kind);
        Assert.Equal(1, rig.Server.RequestsServed(ShelfOp.WriteGather));

        // On the wire, a gather whose second extent lies outside the drive: the first is written, the answer is
        // OutOfRange with the refused LBA, and the connection carries on.
        using var raw = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await raw.ConnectAsync(new UnixDomainSocketEndPoint(ShelfServer.SocketPathFor(rig.DataDir, "A")));
        await raw.SendAsync(ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.WriteGather, 0x77)
        {
            Name = "d0", Extents = [new(9, Blocks.Of(0x33)), new(300, Blocks.Of(0x34))],
        }));
        var r = await ReadResponse(raw);
        Assert.Equal((0x77UL, ShelfError.OutOfRange, 300L), (r.Tag, r.Status, r.Lba));
        await d0.ReadAsync(9, back.AsMemory(0, Units.BlockBytes));
        Assert.Equal(Blocks.Of(0x33), back[..Units.BlockBytes]);
        await raw.SendAsync(ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Status, 0x78)));
        var status = await ReadResponse(raw);
        Assert.Equal((0x78UL, ShelfError.None), (status.Tag, status.Status));
    }

    [Fact]
    [Trait("Claim", "FO-7")]
    public async Task The_mirror_stale_record_travels_over_the_wire()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        await a.RegisterAsync(0xA);
        await a.SetMirrorStaleAsync(true);
        Assert.True((await rig.Port("B").StatusAsync()).Port("A").MirrorStale);
        await a.SetMirrorStaleAsync(false);
        Assert.False((await a.StatusAsync()).Port("A").MirrorStale);
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task The_log_stale_record_travels_over_the_wire()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        await a.RegisterAsync(0xA);
        await a.SetLogStaleAsync(true);
        var seen = (await rig.Port("B").StatusAsync()).Port("A");
        Assert.Equal((true, false), (seen.LogStale, seen.MirrorStale));
        await a.SetLogStaleAsync(false);
        Assert.False((await a.StatusAsync()).Port("A").LogStale);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_port_whose_last_connection_closed_is_departed_until_one_comes_again()
    {
        await using var rig = await ShelfRig.StartAsync();
        var b = rig.Port("B");
        Assert.False((await b.StatusAsync()).Port("A").Departed); // never connected: nothing departed
        var a1 = rig.Port("A");
        var a2 = rig.Port("A");
        await a1.RegisterAsync(0xA);
        await a2.StatusAsync();
        Assert.False((await b.StatusAsync()).Port("A").Departed);
        await a1.DisposeAsync();
        await Until(async () => rig.Server.ControllerConnections == 2);
        Assert.False((await b.StatusAsync()).Port("A").Departed); // one of A's connections is still open
        await a2.DisposeAsync();
        await Until(async () => (await b.StatusAsync()).Port("A").Departed);
        Assert.False((await b.StatusAsync()).Port("B").Departed);
        // The admin socket's clients are not a controller's.
        await using (var admin = rig.Admin()) await admin.StatusAsync();
        Assert.True((await b.StatusAsync()).Port("A").Departed);
        // A new process of A connects again.
        var a3 = rig.Port("A");
        await a3.StatusAsync();
        Assert.False((await b.StatusAsync()).Port("A").Departed);

        static async Task Until(Func<Task<bool>> condition)
        {
            for (int i = 0; i < 500 && !await condition(); i++) await Task.Delay(10);
            Assert.True(await condition());
        }
    }

    [Fact]
    public async Task A_remote_drive_refuses_what_a_local_one_refuses_with_the_same_error()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        var d0 = a.Open("d0");
        Assert.Equal(ShelfError.NotRegistered, await ErrorOf(() => d0.WriteAsync(0, Blocks.Of(1)).AsTask()));
        await a.RegisterAsync(0xA);
        await a.SetEnabledAsync(false);
        Assert.Equal(ShelfError.Disabled, await ErrorOf(() => d0.ReadAsync(0, new byte[Units.BlockBytes]).AsTask()));
        await a.SetEnabledAsync(true);
        var b = rig.Port("B");
        await b.RegisterAsync(0xB);
        await b.ReserveAsync();
        Assert.Equal(ShelfError.ReservationConflict, await ErrorOf(() => a.ReserveAsync()));
        Assert.Equal(ShelfError.NoSuchSlot, await ErrorOf(() => a.IdentifyAsync("nope")));
    }

    [Fact]
    [Trait("Claim", "FO-7")]
    public async Task Both_ports_work_at_once_and_claims_number_epochs_across_them()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        var b = rig.Port("B");
        await Task.WhenAll(a.RegisterAsync(0xA), b.RegisterAsync(0xB));
        var da = a.Open("d0");
        var db = b.Open("d1");
        await Task.WhenAll(
            Enumerable.Range(0, 16).Select(i => da.WriteAsync(i, Blocks.Of((byte)i)).AsTask())
                .Concat(Enumerable.Range(0, 16).Select(i => db.WriteAsync(i, Blocks.Of((byte)(100 + i))).AsTask())));
        var back = new byte[Units.BlockBytes];
        await b.Open("d0").ReadAsync(9, back);
        Assert.Equal(9, back[0]);
        await a.Open("d1").ReadAsync(9, back);
        Assert.Equal(109, back[0]);

        var ca = await a.ClaimAsync([0x1111]);
        var cb = await b.ClaimAsync([0x2222, 0x1111]);
        Assert.Equal(new ArrayClaim(0x1111, "A", 1), ca[0]);
        Assert.Equal([new ArrayClaim(0x2222, "B", 2), new ArrayClaim(0x1111, "B", 3)], cb);
        var status = await a.HeartbeatAsync(42);
        Assert.Equal(42UL, status.Port("A").Heartbeat);
        Assert.Equal(3UL, status.EpochCounter);
        await b.ReleaseAsync([0x2222]);
        Assert.Null((await b.StatusAsync()).Claim(0x2222));
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_fence_from_B_returns_only_after_As_accepted_write_finishes_and_then_A_is_refused()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        var b = rig.Port("B");
        await a.RegisterAsync(0xA);
        await b.RegisterAsync(0xB);
        var da = a.Open("d0");

        var hold = rig.Drives["d0"].HoldRequests("write");
        var write = da.WriteAsync(5, Blocks.Of(0xEE)).AsTask();
        await hold.Entered; // the shelf accepted the write; it is at the drive

        var fenced = rig.State.Saved("port A enabled 0 fenced 1 key 0x0");
        var fence = b.FenceAsync("A");
        await fenced; // the fence is in force at the shelf ...
        Assert.False(fence.IsCompleted); // ... but does not return while A's write is still running
        Assert.Equal(1, (await rig.Admin().StatusAsync()).Port("A").InFlightWrites);

        hold.Release();
        await write; // accepted before the fence: it completes
        await fence;

        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => da.WriteAsync(5, Blocks.Of(0x01)).AsTask()));
        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => da.ReadAsync(5, new byte[Units.BlockBytes]).AsTask()));
        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => a.HeartbeatAsync(1)));
        var back = new byte[Units.BlockBytes];
        await b.Open("d0").ReadAsync(5, back);
        Assert.Equal(0xEE, back[0]);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_fenced_port_cannot_lift_its_own_fence_but_the_administrator_can()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        var b = rig.Port("B");
        await a.RegisterAsync(0xA);
        await b.RegisterAsync(0xB);
        await b.FenceAsync("A");

        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => a.RegisterAsync(0xA2)));
        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => a.SetEnabledAsync(true)));
        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => a.UnfenceAsync("A")));
        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => a.FenceAsync("B")));
        Assert.True((await a.StatusAsync()).Port("A").Fenced); // status is always allowed

        var admin = rig.Admin();
        await admin.UnfenceAsync("A");
        await a.RegisterAsync(0xA2);
        await a.Open("d1").WriteAsync(0, Blocks.Of(3));

        await admin.FenceAsync("B"); // the administrator fences too
        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => b.Open("d1").ReadAsync(0, new byte[Units.BlockBytes]).AsTask()));
        Assert.Equal(ShelfError.Invalid, await ErrorOf(() => admin.UnfenceAsync("C")));
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    [Trait("Claim", "FO-7")]
    public async Task Fences_registrations_epochs_claims_and_pulled_slots_survive_a_shelf_restart()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        var b = rig.Port("B");
        await a.RegisterAsync(0xA);
        await b.RegisterAsync(0xB);
        await a.ReserveAsync();
        await a.ClaimAsync([0xC0FFEE, 0xBEEF]);
        await a.FenceAsync("B");
        await rig.Admin().PullAsync("d1");

        await rig.StopServerAsync();
        await rig.StartServerAsync();

        var status = await rig.Admin().StatusAsync();
        Assert.True(status.Port("B").Fenced);
        Assert.False(status.Port("B").Enabled);
        Assert.Equal(0xAUL, status.Port("A").Key);
        Assert.Equal(0xAUL, status.ReservationHolder);
        Assert.Equal(2UL, status.EpochCounter);
        Assert.Equal(new ArrayClaim(0xBEEF, "A", 2), status.Claim(0xBEEF));
        Assert.True(status.Slots.Single(s => s.Name == "d1").Pulled);

        // The same clients, reconnected: B is still fenced, A still works.
        Assert.Equal(ShelfError.Fenced, await ErrorOf(() => b.RegisterAsync(0xB)));
        await a.Open("d0").WriteAsync(1, Blocks.Of(1));
        Assert.Equal(new[] { "d0" }, a.List());
    }

    [Fact]
    public async Task Pull_and_insert_over_the_admin_socket_take_a_drive_away_and_give_it_back_with_its_data()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        await a.RegisterAsync(0xA);
        var d1 = a.Open("d1");
        await d1.WriteAsync(2, Blocks.Of(0x77));

        var admin = rig.Admin();
        await admin.PullAsync("d1");
        Assert.Equal(new[] { "d0" }, a.List());
        Assert.Equal(ShelfError.SlotEmpty, await ErrorOf(() => d1.ReadAsync(2, new byte[Units.BlockBytes]).AsTask()));
        Assert.True((await admin.StatusAsync()).Slots.Single(s => s.Name == "d1").Pulled);

        await admin.InsertAsync("d1");
        var back = new byte[Units.BlockBytes];
        await d1.ReadAsync(2, back);
        Assert.Equal(0x77, back[0]);

        Assert.Equal(ShelfError.NoSuchSlot, await ErrorOf(() => admin.PullAsync("d9")));
    }

    [Fact]
    public async Task Malformed_bytes_get_a_protocol_error_and_the_other_port_keeps_working()
    {
        await using var rig = await ShelfRig.StartAsync();
        var b = rig.Port("B");
        await b.RegisterAsync(0xB);

        using var raw = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await raw.ConnectAsync(new UnixDomainSocketEndPoint(ShelfServer.SocketPathFor(rig.DataDir, "A")));

        // An unknown opcode: answered with its tag, and the connection carries on.
        await raw.SendAsync(Convert.FromHexString("44535251" + "0063" + "0000" + "00000000000000AB" + "00000002" + "FFFF"));
        var r1 = await ReadResponse(raw);
        Assert.Equal((0xABUL, ShelfError.Invalid), (r1.Tag, r1.Status));
        Assert.Contains("unknown opcode 99", r1.Message);

        // A connection on A's socket cannot act as B.
        await raw.SendAsync(ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Hello, 0xAC) { Name = "B" }));
        var r2 = await ReadResponse(raw);
        Assert.Equal((0xACUL, ShelfError.Invalid), (r2.Tag, r2.Status));
        Assert.Contains("serves port 'A'", r2.Message);
        await raw.SendAsync(ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Status, 0xAD)));
        Assert.Equal(ShelfError.None, (await ReadResponse(raw)).Status);

        // The other port works while this connection misbehaves.
        await b.Open("d0").WriteAsync(0, Blocks.Of(9));

        // Garbage where a header should be: answered with tag 0, then the connection closes.
        await raw.SendAsync(new byte[40]);
        var r3 = await ReadResponse(raw);
        Assert.Equal((0UL, ShelfError.Invalid), (r3.Tag, r3.Status));
        Assert.Contains("magic", r3.Message);
        Assert.Equal(0, await raw.ReceiveAsync(new byte[1]));

        // A client that believes it is B but was pointed at A's socket is refused, not served.
        var misdirected = new RemoteShelfPort(new RemoteShelfPortOptions
        {
            Port = "B", EndPoint = new UnixDomainSocketEndPoint(ShelfServer.SocketPathFor(rig.DataDir, "A")),
        });
        await using (misdirected)
            Assert.Equal(ShelfError.Invalid, await ErrorOf(() => misdirected.HeartbeatAsync(1)));

        Assert.Equal(1UL, (await b.HeartbeatAsync(1)).Port("B").Heartbeat);
        Assert.False((await rig.Admin().StatusAsync()).Port("A").Fenced);
    }

    static async Task<ShelfResponse> ReadResponse(Socket socket)
    {
        var header = await ReadExactly(socket, ShelfWire.ResponseHeaderBytes);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(header));
        Assert.True(ShelfCodec.TryReadResponseHeader(ref reader, out var h));
        return ShelfCodec.ReadResponseBody(h, await ReadExactly(socket, h.BodyBytes));
    }

    static async Task<byte[]> ReadExactly(Socket socket, int n)
    {
        var buffer = new byte[n];
        for (int got = 0; got < n;)
        {
            int r = await socket.ReceiveAsync(buffer.AsMemory(got));
            Assert.True(r > 0, "the shelf closed the connection early");
            got += r;
        }
        return buffer;
    }

    [Fact]
    public async Task A_port_request_on_the_admin_socket_and_an_admin_request_on_a_port_socket_are_refused()
    {
        await using var rig = await ShelfRig.StartAsync();
        using var raw = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await raw.ConnectAsync(new UnixDomainSocketEndPoint(ShelfServer.AdminSocketPathFor(rig.DataDir)));
        await raw.SendAsync(ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.Register, 5) { Value = 1 }));
        Assert.Equal(ShelfError.Invalid, (await ReadResponse(raw)).Status);

        using var port = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await port.ConnectAsync(new UnixDomainSocketEndPoint(ShelfServer.SocketPathFor(rig.DataDir, "B")));
        await port.SendAsync(ShelfCodec.EncodeRequest(new ShelfRequest(ShelfOp.AdminUnfence, 6) { Name = "B" }));
        var r = await ReadResponse(port);
        Assert.Equal(ShelfError.Invalid, r.Status);
        Assert.Contains("administrator", r.Message);
    }

    [Fact]
    public async Task A_slow_drive_request_does_not_delay_a_heartbeat_or_another_drive_on_the_same_connection()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        await a.RegisterAsync(0xA);
        var d0 = a.Open("d0");
        var d1 = a.Open("d1");

        var hold = rig.Drives["d0"].HoldRequests();
        var slow = d0.ReadAsync(0, new byte[Units.BlockBytes]).AsTask();
        await hold.Entered;

        var status = await a.HeartbeatAsync(99);
        Assert.Equal(99UL, status.Port("A").Heartbeat);
        await d1.WriteAsync(0, Blocks.Of(4));
        await d1.ReadAsync(0, new byte[Units.BlockBytes]);
        Assert.False(slow.IsCompleted);
        Assert.Equal(1, a.Connects); // all on one connection

        hold.Release();
        await slow;
    }

    [Fact]
    public async Task Stopping_the_shelf_fails_requests_in_flight_as_unreachable_and_the_client_reconnects_to_a_new_shelf()
    {
        await using var rig = await ShelfRig.StartAsync();
        var a = rig.Port("A");
        await a.RegisterAsync(0xA);
        var d0 = a.Open("d0");

        var hold = rig.Drives["d0"].HoldRequests();
        var inFlight = d0.ReadAsync(0, new byte[Units.BlockBytes]).AsTask();
        await hold.Entered;

        var stop = rig.Server.StopAsync();
        Assert.Equal(ShelfError.Unreachable, await ErrorOf(() => inFlight));
        Assert.Equal(ShelfError.Unreachable, await ErrorOf(() => a.HeartbeatAsync(1))); // nobody listens now
        hold.Release(); // the drive request the stop is waiting for finishes
        await stop;
        await rig.Shelf.DisposeAsync();

        await rig.StartServerAsync();
        Assert.Equal(5UL, (await a.HeartbeatAsync(5)).Port("A").Heartbeat);
        await d0.WriteAsync(0, Blocks.Of(6));
        Assert.Equal(2, a.Connects);
    }

    [Fact]
    public async Task A_request_the_shelf_does_not_answer_fails_as_unreachable_at_its_deadline()
    {
        await using var rig = await ShelfRig.StartAsync();
        var time = new ManualTimeProvider();
        var a = rig.Port("A", time, TimeSpan.FromSeconds(5));
        await a.RegisterAsync(0xA);
        var d0 = a.Open("d0");

        var hold = rig.Drives["d0"].HoldRequests();
        var read = d0.ReadAsync(0, new byte[Units.BlockBytes]).AsTask();
        await hold.Entered;
        Assert.False(read.IsCompleted);
        time.Advance(TimeSpan.FromSeconds(5));
        var e = await Assert.ThrowsAsync<ShelfException>(() => read);
        Assert.Equal(ShelfError.Unreachable, e.Error);
        Assert.Contains("did not answer within 5 s", e.Message);

        hold.Release(); // the late answer is dropped; the connection is still good
        Assert.Equal(7UL, (await a.HeartbeatAsync(7)).Port("A").Heartbeat);
        Assert.Equal(1, a.Connects);
    }

    [Fact]
    public async Task A_second_shelf_cannot_start_on_a_data_directory_that_is_being_served()
    {
        await using var rig = await ShelfRig.StartAsync();
        await using var shelf = ShelfServer.OpenShelf(rig.DataDir);
        var second = new ShelfServer(shelf, new ShelfServerOptions { DataDirectory = rig.DataDir }, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var e = await Assert.ThrowsAsync<IOException>(() => second.StartAsync());
        Assert.Contains("already serving", e.Message);
        await second.StopAsync();
        Assert.NotNull(await rig.Admin().StatusAsync()); // the first one is unharmed
    }

    [Fact]
    public async Task A_port_can_be_served_over_tcp()
    {
        await using var rig = await ShelfRig.StartAsync();
        await rig.StopServerAsync();
        rig.Drives.Clear();
        var shelf = ShelfServer.OpenShelf(rig.DataDir);
        var server = new ShelfServer(shelf, new ShelfServerOptions
        {
            DataDirectory = rig.DataDir,
            Tcp = [new ShelfTcpListener("B", new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0))],
        }, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        await server.StartAsync();
        try
        {
            await using var b = new RemoteShelfPort(new RemoteShelfPortOptions { Port = "B", EndPoint = server.TcpEndPoints["B"] });
            await b.RegisterAsync(0xB);
            await b.Open("d0").WriteAsync(1, Blocks.Of(2), fua: true);
            Assert.Equal(0xBUL, (await b.StatusAsync()).Port("B").Key);
            await using var wrong = new RemoteShelfPort(new RemoteShelfPortOptions { Port = "A", EndPoint = server.TcpEndPoints["B"] });
            Assert.Equal(ShelfError.Invalid, await ErrorOf(() => wrong.StatusAsync()));
        }
        finally
        {
            await server.StopAsync();
            await shelf.DisposeAsync();
            await rig.StartServerAsync(); // so the rig's own dispose has a server to stop
        }
    }
}
