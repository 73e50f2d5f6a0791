using Duet.Core;
using Duet.Drives;
using Duet.Drives.Faults;
using Duet.Shelf;

namespace Duet.Shelf.Tests;

public class ShelfCoreTests
{
    const long DriveBytes = 1 << 20;

    static (Shelf Shelf, MemoryShelf Bay, MemoryShelfStateStore Store) NewShelf(int drives = 2, Func<string, IBlockDevice, IBlockDevice>? wrap = null, MemoryShelfStateStore? store = null, MemoryShelf? bay = null)
    {
        if (bay is null)
        {
            bay = new MemoryShelf();
            for (int i = 0; i < drives; i++) bay.Insert($"d{i}", DriveBytes);
        }
        store ??= new MemoryShelfStateStore();
        return (new Shelf(bay, store, wrap), bay, store);
    }

    static byte[] Block(byte fill) => Enumerable.Repeat(fill, Units.BlockBytes).ToArray();

    [Fact]
    [Trait("Claim", "FO-2")]
    public void Departed_follows_the_last_connection_of_a_port_and_is_not_persisted()
    {
        var (shelf, bay, store) = NewShelf();
        shelf.Detach("A"); // a close the shelf never saw open: ignored
        Assert.False(shelf.Status().Port("A").Departed);
        shelf.Attach("A");
        shelf.Attach("A");
        shelf.Detach("A");
        Assert.False(shelf.Status().Port("A").Departed);
        shelf.Detach("A");
        Assert.True(shelf.Status().Port("A").Departed);
        Assert.False(shelf.Status().Port("B").Departed);
        shelf.Detach("A");
        Assert.True(shelf.Status().Port("A").Departed);
        shelf.Attach("A");
        Assert.False(shelf.Status().Port("A").Departed);
        shelf.Detach("A");
        Assert.Throws<ShelfException>(() => shelf.Attach("C"));
        // A shelf that starts again knows of no connection before it.
        var (again, _, _) = NewShelf(bay: bay, store: store);
        Assert.False(again.Status().Port("A").Departed);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_registered_port_reads_and_writes_and_an_unregistered_one_is_refused()
    {
        var (shelf, bay, _) = NewShelf();
        var a = shelf.Port("A");
        var drive = a.Open("d0");
        var ex = await Assert.ThrowsAsync<ShelfException>(async () => await drive.WriteAsync(0, Block(1)));
        Assert.Equal(ShelfError.NotRegistered, ex.Error);
        await a.RegisterAsync(0xA);
        await drive.WriteAsync(0, Block(7));
        var back = new byte[Units.BlockBytes];
        await drive.ReadAsync(0, back);
        Assert.Equal(7, back[100]);
        await bay.Drive("d0")!.ReadAsync(0, back);
        Assert.Equal(7, back[4095]);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_fenced_port_is_refused_reads_writes_and_heartbeats_and_cannot_lift_its_own_fence()
    {
        var (shelf, _, _) = NewShelf();
        var a = shelf.Port("A");
        var b = shelf.Port("B");
        await a.RegisterAsync(0xA);
        await b.RegisterAsync(0xB);
        var da = a.Open("d0");
        await da.WriteAsync(0, Block(1));
        await b.FenceAsync("A");

        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(async () => await da.WriteAsync(0, Block(2)))).Error);
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(async () => await da.ReadAsync(0, new byte[Units.BlockBytes]))).Error);
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(() => a.HeartbeatAsync(5))).Error);
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(() => a.RegisterAsync(0xA))).Error);
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(() => a.SetEnabledAsync(true))).Error);
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(() => a.UnfenceAsync("A"))).Error);
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(() => a.FenceAsync("B"))).Error);
        var status = await a.StatusAsync(); // always allowed
        Assert.True(status.Port("A").Fenced);
        Assert.False(status.Port("A").Enabled);
        Assert.Equal(0UL, status.Port("A").Key);

        // B's drive is untouched by the fence; the owner lifts it, and A may register again.
        var back = new byte[Units.BlockBytes];
        await b.Open("d0").ReadAsync(0, back);
        Assert.Equal(1, back[0]);
        await b.UnfenceAsync("A");
        await a.RegisterAsync(0xA2);
        await da.WriteAsync(0, Block(3));
        Assert.True(shelf.RejectedRequests("A") >= 7);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_fence_completes_only_after_the_writes_already_accepted_from_the_port_have_finished()
    {
        var time = new ManualTimeProvider();
        var (shelf, bay, _) = NewShelf(wrap: (_, d) => new FaultyDrive(d, new FaultOptions { LatencyFixed = TimeSpan.FromMilliseconds(50) }, time));
        var a = shelf.Port("A");
        var b = shelf.Port("B");
        await a.RegisterAsync(1);
        await b.RegisterAsync(2);
        var slow = a.Open("d1").WriteAsync(3, Block(9)).AsTask();
        var fence = b.FenceAsync("A");
        Assert.False(fence.IsCompleted);
        Assert.Equal(1, (await b.StatusAsync()).Port("A").InFlightWrites);
        // A later write from A is refused at once, while the accepted one is still on its way.
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(async () => await a.Open("d1").WriteAsync(4, Block(8)))).Error);
        time.Advance(TimeSpan.FromMilliseconds(50));
        await slow;
        await fence;
        var back = new byte[Units.BlockBytes];
        await bay.Drive("d1")!.ReadAsync(3, back);
        Assert.Equal(9, back[0]);
        await bay.Drive("d1")!.ReadAsync(4, back);
        Assert.Equal(0, back[0]);
    }

    [Fact]
    [Trait("Claim", "FO-7")]
    public async Task Fence_registrations_reservation_and_claims_survive_a_shelf_restart_but_heartbeats_do_not()
    {
        var (shelf, bay, store) = NewShelf();
        var a = shelf.Port("A");
        var b = shelf.Port("B");
        await a.RegisterAsync(0xAA);
        await b.RegisterAsync(0xBB);
        await a.ReserveAsync();
        var first = await a.ClaimAsync([0x1111, 0x2222]);
        Assert.Equal([1UL, 2UL], first.Select(c => c.Epoch));
        await b.HeartbeatAsync(42);
        await b.FenceAsync("A");
        var taken = await b.ClaimAsync([0x1111]);
        Assert.Equal(3UL, taken[0].Epoch);
        shelf.Pull("d1");
        await shelf.DisposeAsync();

        var (again, _, _) = NewShelf(store: store, bay: bay);
        var s = again.Status();
        Assert.True(s.Port("A").Fenced);
        Assert.Equal(0xBBUL, s.Port("B").Key);
        Assert.Equal(0xBBUL, s.ReservationHolder); // moved to B by the fence
        Assert.Equal(3UL, s.EpochCounter);
        Assert.Equal(new ArrayClaim(0x1111, "B", 3), s.Claim(0x1111));
        Assert.Equal(new ArrayClaim(0x2222, "A", 2), s.Claim(0x2222));
        Assert.Equal(0UL, s.Port("B").Heartbeat);
        Assert.True(s.Slots.Single(x => x.Name == "d1").Pulled);
        Assert.Equal(["d0"], again.Port("B").List());
        Assert.Equal(ShelfError.Fenced, (await Assert.ThrowsAsync<ShelfException>(() => again.Port("A").RegisterAsync(0xAA))).Error);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task Reservation_and_preempt_work_as_scsi3_persistent_reservations()
    {
        var (shelf, _, _) = NewShelf();
        var a = shelf.Port("A");
        var b = shelf.Port("B");
        await a.RegisterAsync(0xA);
        await b.RegisterAsync(0xB);
        await a.ReserveAsync();
        await a.ReserveAsync(); // the holder reserving again is fine
        Assert.Equal(ShelfError.ReservationConflict, (await Assert.ThrowsAsync<ShelfException>(() => b.ReserveAsync())).Error);
        // Write exclusive, registrants only: B, a registrant, may write under A's reservation.
        await b.Open("d0").WriteAsync(0, Block(1));
        await b.PreemptAsync(0xA);
        var s = shelf.Status();
        Assert.Equal(0xBUL, s.ReservationHolder);
        Assert.Equal(0UL, s.Port("A").Key);
        Assert.Equal(ShelfError.NotRegistered, (await Assert.ThrowsAsync<ShelfException>(async () => await a.Open("d0").ReadAsync(0, new byte[Units.BlockBytes]))).Error);
        Assert.Equal(ShelfError.NotRegistered, (await Assert.ThrowsAsync<ShelfException>(() => b.PreemptAsync(0x77))).Error);
        // A preempted (not fenced) port may register again.
        await a.RegisterAsync(0xA1);
        await a.Open("d0").ReadAsync(0, new byte[Units.BlockBytes]);
    }

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task A_disabled_port_is_refused_until_it_enables_itself_again()
    {
        var (shelf, _, _) = NewShelf();
        var a = shelf.Port("A");
        await a.RegisterAsync(1);
        await a.SetEnabledAsync(false);
        Assert.Equal(ShelfError.Disabled, (await Assert.ThrowsAsync<ShelfException>(async () => await a.Open("d0").FlushAsync())).Error);
        await a.SetEnabledAsync(true);
        await a.Open("d0").FlushAsync();
    }

    [Fact]
    public async Task A_pulled_drive_is_not_listed_and_refuses_requests_until_it_is_inserted_with_its_data()
    {
        var (shelf, _, _) = NewShelf();
        var a = shelf.Port("A");
        await a.RegisterAsync(1);
        var d = a.Open("d1");
        await d.WriteAsync(2, Block(5));
        shelf.Pull("d1");
        Assert.Equal(["d0"], a.List());
        var ex = await Assert.ThrowsAsync<ShelfException>(async () => await d.ReadAsync(2, new byte[Units.BlockBytes]));
        Assert.Equal(ShelfError.SlotEmpty, ex.Error);
        Assert.Equal(BlockErrorKind.Unavailable, ex.Kind);
        shelf.Insert("d1");
        var back = new byte[Units.BlockBytes];
        await d.ReadAsync(2, back);
        Assert.Equal(5, back[0]);
        Assert.Throws<ShelfException>(() => shelf.Pull("d9"));
    }

    [Fact]
    [Trait("Claim", "FO-1")]
    public async Task Each_port_writes_its_own_heartbeat_slot_and_reads_both()
    {
        var (shelf, _, _) = NewShelf();
        var s1 = await shelf.Port("A").HeartbeatAsync(10);
        var s2 = await shelf.Port("B").HeartbeatAsync(20);
        Assert.Equal(10UL, s1.Port("A").Heartbeat);
        Assert.Equal(10UL, s2.Port("A").Heartbeat);
        Assert.Equal(20UL, s2.Port("B").Heartbeat);
    }

    [Fact]
    public void A_state_file_that_is_damaged_is_refused_with_a_clear_error()
    {
        var s = new ShelfState { EpochCounter = 9 };
        s.Claims[5] = new ArrayClaim(5, "B", 9);
        var text = s.Encode();
        var back = ShelfState.Decode(text);
        Assert.Equal(9UL, back.EpochCounter);
        Assert.Equal("B", back.Claims[5].Owner);
        Assert.Contains("checksum", Assert.Throws<FormatException>(() => ShelfState.Decode(text.Replace("epoch 9", "epoch 8"))).Message);
        Assert.Throws<FormatException>(() => ShelfState.Decode("hello"));
    }

    [Fact]
    public async Task The_file_state_store_keeps_the_state_across_instances()
    {
        var dir = Directory.CreateTempSubdirectory("duet-shelf-");
        try
        {
            var path = Path.Combine(dir.FullName, "shelf.state");
            var bay = new MemoryShelf();
            bay.Insert("d0", DriveBytes);
            var shelf = new Shelf(bay, new FileShelfStateStore(path));
            await shelf.Port("A").RegisterAsync(3);
            await shelf.Port("A").FenceAsync("B");
            var again = new Shelf(bay, new FileShelfStateStore(path));
            Assert.True(again.Status().Port("B").Fenced);
            Assert.Equal(3UL, again.Status().Port("A").Key);
        }
        finally { dir.Delete(recursive: true); }
    }

    [Fact]
    [Trait("Claim", "FO-7")]
    public async Task A_port_records_its_mirror_stale_and_the_record_survives_a_restart()
    {
        var (shelf, bay, store) = NewShelf();
        var a = shelf.Port("A");
        Assert.Equal(ShelfError.NotRegistered, (await Assert.ThrowsAsync<ShelfException>(() => a.SetMirrorStaleAsync(true))).Error);
        await a.RegisterAsync(1);
        await a.SetMirrorStaleAsync(true);
        Assert.True((await shelf.Port("B").StatusAsync()).Port("A").MirrorStale);
        var (again, _, _) = NewShelf(store: store, bay: bay);
        Assert.True(again.Status().Port("A").MirrorStale);
        Assert.False(again.Status().Port("B").MirrorStale);
        await again.Port("A").SetMirrorStaleAsync(false);
        Assert.False(again.Status().Port("A").MirrorStale);
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public async Task A_port_records_its_log_stale_apart_from_its_mirror_and_the_record_survives_a_restart()
    {
        var (shelf, bay, store) = NewShelf();
        var a = shelf.Port("A");
        Assert.Equal(ShelfError.NotRegistered, (await Assert.ThrowsAsync<ShelfException>(() => a.SetLogStaleAsync(true))).Error);
        await a.RegisterAsync(1);
        await a.SetLogStaleAsync(true);
        var seen = (await shelf.Port("B").StatusAsync()).Port("A");
        Assert.Equal((true, false), (seen.LogStale, seen.MirrorStale));
        var (again, _, _) = NewShelf(store: store, bay: bay);
        Assert.Equal((true, false), (again.Status().Port("A").LogStale, again.Status().Port("A").MirrorStale));
        Assert.False(again.Status().Port("B").LogStale);
        await again.Port("A").SetLogStaleAsync(false);
        Assert.False(again.Status().Port("A").LogStale);
    }

    [Fact]
    [Trait("Claim", "AW-3")]
    public void A_state_file_written_before_the_log_stale_record_reads_with_it_clear()
    {
        var old = new ShelfState();
        old.Ports["A"].MirrorStale = true;
        var text = old.Encode().Replace(" log-stale 0", "", StringComparison.Ordinal);
        int crcAt = text.LastIndexOf("crc32c ", StringComparison.Ordinal);
        var body = text[..crcAt];
        text = body + $"crc32c 0x{Duet.Core.Crc32C.Compute(System.Text.Encoding.UTF8.GetBytes(body)):x8}\n";
        var back = ShelfState.Decode(text);
        Assert.Equal((true, false), (back.Ports["A"].MirrorStale, back.Ports["A"].LogStale));
    }
}
