using System.Buffers.Binary;
using Duet.Core;
using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

/// <summary>
/// What the device server does with the pair's live state: ALUA states other than active (the link down,
/// a takeover running), reservation changes that arrive from the peer, and a rebuild of the device
/// (the catalog changed after a takeover) that must keep what each nexus has yet to hear.
/// </summary>
[Trait("Claim", "ISCSI-FO")]
public sealed class ScsiFailoverStateTests
{
    static (byte A, byte B) StatesReported(ScsiHarness h, ItNexus nexus)
    {
        var r = h.Run(Cdb.MaintenanceIn(0x0A, 1024), nexus: nexus);
        Good(r);
        var d = r.DataIn.Span;
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(d[6..]));
        Assert.Equal(2, BinaryPrimitives.ReadUInt16BigEndian(d[18..]));
        return (d[4], d[16]);
    }

    [Fact]
    public void UnavailableAndTransitioningGroupsAreReportedAndRefuseIo_EachChangeTellsEveryNexusOnce()
    {
        var h = Ready();
        // The link is down at A's side: A's group cannot forward to the owner (B).
        h.PortGroups.SetStates(new VolumeAccess("vol0", AluaState.Unavailable, AluaState.ActiveOptimized));
        h.PortGroups.SetStates(new VolumeAccess("vol0", AluaState.Unavailable, AluaState.ActiveOptimized)); // no change: no attention
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x06);
        CheckCondition(h.Run(Cdb.Read10(0, 1)), 2, 0x04, 0x0C);        // LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE
        CheckCondition(h.Run(Cdb.PrIn(0)), 2, 0x04, 0x0C);
        Good(h.Run(Cdb.Inquiry()));
        Assert.Equal((0x03, 0x80), StatesReported(h, A));               // REPORT TARGET PORT GROUPS still answers
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x06);
        Good(h.Run(Cdb.Read10(0, 1), nexus: B));                         // B's group is active/optimized

        // A takes B over: A's group transitioning, B's unavailable.
        h.PortGroups.SetStates(new VolumeAccess("vol0", AluaState.Transitioning, AluaState.Unavailable));
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x06);
        CheckCondition(h.Run(Cdb.Write10(0, 1), new byte[512]), 2, 0x04, 0x0A); // ASYMMETRIC ACCESS STATE TRANSITION
        Assert.Equal((0x0F, 0x03), StatesReported(h, A));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x06);
        CheckCondition(h.Run(Cdb.Read10(0, 1), nexus: B), 2, 0x04, 0x0C);

        // Done: A owns it. One more attention each (not two: the queue holds one of each code), then I/O.
        h.PortGroups.SetStates(new VolumeAccess("vol0", AluaState.ActiveOptimized, AluaState.Unavailable));
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x06);
        Good(h.Run(Cdb.Write10(0, 1), new byte[512]));
        Assert.Equal((0x80, 0x03), StatesReported(h, A));
        Good(h.Run(Cdb.TestUnitReady(), lun: 1));                        // another volume: nothing changed
    }

    static PrSnapshot Snapshot(PrType type, int holder, uint generation, params (ItNexus Nexus, ulong Key)[] regs) =>
        new(generation, false, [.. regs.Select(r => PrRegistration.For(r.Nexus, r.Key))], type, holder);

    static readonly ItNexus C = new("iqn.2026-01.test:host-c", 0x23d000000003, 1, 1);
    /// <summary>A nexus through the peer's port: its commands run there, and their effects reach us by the store.</summary>
    static readonly ItNexus D = new("iqn.2026-01.test:host-d", 0x23d000000004, 2, 2);

    [Fact]
    public void AChangeMadeThroughThePeerTellsTheRegistrantsHereWhatTheyWouldHaveHeardThere()
    {
        var h = Ready();
        h.ClearAttentions(C);
        // Everyone registered; D holds a registrants-only reservation.
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.WriteExclusiveRegistrantsOnly, 0, 4, (D, 4), (A, 1), (B, 2), (C, 3)));
        Good(h.Run(Cdb.TestUnitReady()));                                 // a new state, nothing lost: no attention
        Good(h.Run(Cdb.TestUnitReady(), nexus: C));

        // D preempted C's registration: C hears REGISTRATIONS PREEMPTED, the others nothing.
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.WriteExclusiveRegistrantsOnly, 0, 5, (D, 4), (A, 1), (B, 2)));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: C), 6, 0x2A, 0x05);
        Good(h.Run(Cdb.TestUnitReady()));

        // D released its registrants-only reservation: the other registrants hear RESERVATIONS RELEASED.
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.None, -1, 5, (D, 4), (A, 1), (B, 2)));
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x04);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x04);
        Good(h.Run(Cdb.TestUnitReady(), nexus: C));                      // not registered any more: nothing

        // A write-exclusive reservation taken and released: nothing to hear (SPC-4 5.12.11.2.3).
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.WriteExclusive, 0, 5, (D, 4), (A, 1), (B, 2)));
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.None, -1, 5, (D, 4), (A, 1), (B, 2)));
        Good(h.Run(Cdb.TestUnitReady()));
        Good(h.Run(Cdb.TestUnitReady(), nexus: B));

        // D preempts with another type (takes an exclusive-access reservation from a WE-RO one it held):
        // the other registrants hear RESERVATIONS RELEASED.
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.WriteExclusiveRegistrantsOnly, 0, 5, (D, 4), (A, 1), (B, 2)));
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.ExclusiveAccess, 0, 6, (D, 4), (A, 1), (B, 2)));
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x04);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x04);
        Good(h.Run(Cdb.TestUnitReady()));

        // CLEAR through the peer: every registrant hears RESERVATIONS PREEMPTED.
        _ = h.Store.SaveAsync("vol0", Snapshot(PrType.None, -1, 7));
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x03);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x03);
        Good(h.Run(Cdb.TestUnitReady()));
    }

    [Fact]
    public void AnSpc2ReservationIsOneForBothControllersPorts()
    {
        // RESERVE(6) through the peer's port arrives with the LUN's state: a nexus here conflicts with it.
        var h = Ready();
        _ = h.Store.SaveAsync("vol0", PrSnapshot.Empty with { Spc2Holder = D });
        Conflict(h.Run(Cdb.Reserve6()));
        Conflict(h.Run(Cdb.Read10(0, 1)));
        Good(h.Run(Cdb.Release6()));                                      // someone else's: GOOD, changes nothing
        Conflict(h.Run(Cdb.Read10(0, 1)));

        // Released there: ours to take, and what we take goes to the store (hence to the peer).
        _ = h.Store.SaveAsync("vol0", PrSnapshot.Empty);
        Good(h.Run(Cdb.Reserve6()));
        Assert.Equal(A, h.Store.Load("vol0")!.Spc2Holder);
        Good(h.Run(Cdb.Release6()));
        Assert.Null(h.Store.Load("vol0")!.Spc2Holder);

        // A holder that logs out leaves no reservation behind at the peer either.
        Good(h.Run(Cdb.Reserve6(), nexus: B));
        Assert.Equal(B, h.Store.Load("vol0")!.Spc2Holder);
        h.Device.NexusLost(B);
        Assert.Null(h.Store.Load("vol0")!.Spc2Holder);
        Good(h.Run(Cdb.Reserve6()));
    }

    sealed class MutableCatalog : IVolumeCatalog
    {
        public List<IBlockVolume> List { get; } = [];
        public IReadOnlyList<IBlockVolume> Volumes => [.. List];
        public bool TryGetVolume(string name, out IBlockVolume volume)
        {
            volume = List.FirstOrDefault(v => v.Name == name)!;
            return volume is not null;
        }
    }

    /// <summary>An in-memory store that counts who follows it.</summary>
    sealed class CountingStore : IReservationStore
    {
        readonly InMemoryReservationStore _inner = new();
        public int Followers;
        public PrSnapshot? Load(string volumeName) => _inner.Load(volumeName);
        public ValueTask SaveAsync(string volumeName, PrSnapshot snapshot) => _inner.SaveAsync(volumeName, snapshot);
        public event Action<string, PrSnapshot>? Changed
        {
            add { _inner.Changed += value; Interlocked.Increment(ref Followers); }
            remove { _inner.Changed -= value; Interlocked.Decrement(ref Followers); }
        }
    }

    [Fact]
    public async Task ARebuiltDeviceKeepsWhatEachNexusHasYetToHear_AndTheOldOneStopsFollowing()
    {
        var catalog = new MutableCatalog();
        var forwarded = new MemoryBlockVolume("vol0", 1 << 20);
        catalog.List.Add(forwarded);
        var portGroups = new FixedScsiPortGroups();
        var store = new CountingStore();
        var access = new List<VolumeAccess> { new("vol0", AluaState.ActiveNonOptimized, AluaState.ActiveOptimized) };
        using var device = new IscsiCatalogDevice(catalog, c => new ScsiDevice(c, store, portGroups), new ManualTime(), portGroups, () => access);
        async Task<ScsiResult> Run(ItNexus n, byte[] cdb) => await device.ExecuteAsync(new ScsiCommand { Nexus = n, Lun = 0, Cdb = cdb }, default);
        Assert.Equal(0x29, (await Run(A, Cdb.TestUnitReady())).Sense.Span[12]);
        Assert.Equal(ScsiStatus.Good, (await Run(A, Cdb.TestUnitReady())).Status);
        Assert.Equal(0x29, (await Run(B, Cdb.TestUnitReady())).Sense.Span[12]);
        Assert.Equal(1, store.Followers);

        // A takes the volume over: its state changes and the catalog now holds the served volume (a new object).
        access[0] = new("vol0", AluaState.ActiveOptimized, AluaState.Unavailable);
        catalog.List[0] = new MemoryBlockVolume("vol0", 1 << 20);
        device.Refresh();
        Assert.Equal(1, store.Followers);                                  // the old device was disposed
        var r = await Run(A, Cdb.TestUnitReady());
        Assert.Equal((ScsiStatus.CheckCondition, 0x2A, 0x06), (r.Status, r.Sense.Span[12], r.Sense.Span[13]));
        Assert.Equal(ScsiStatus.Good, (await Run(A, Cdb.TestUnitReady())).Status); // once, and no POWER ON again
        r = await Run(B, Cdb.TestUnitReady());
        Assert.Equal((0x2A, 0x06), (r.Sense.Span[12], r.Sense.Span[13]));
        r = await Run(B, Cdb.TestUnitReady());                             // B's group is unavailable now
        Assert.Equal((ScsiStatus.CheckCondition, 0x04, 0x0C), (r.Status, r.Sense.Span[12], r.Sense.Span[13]));
        var unknown = new ItNexus("iqn.2026-01.test:new", 9, 1, 1);
        Assert.Equal(0x29, (await Run(unknown, Cdb.TestUnitReady())).Sense.Span[12]); // a nexus it never saw: POWER ON
    }

    [Fact]
    [Trait("Claim", "ISCSI-FO")]
    public async Task ACommandThroughAPortThatIsNotAccessibleForNowIsHeldUntilATakeoverMakesItAccessible()
    {
        var catalog = new MutableCatalog();
        catalog.List.Add(new MemoryBlockVolume("vol0", 1 << 20));
        var portGroups = new FixedScsiPortGroups();
        // Nexus B reaches vol0 through group 2, unavailable: the link to the owner is down.
        var access = new List<VolumeAccess> { new("vol0", AluaState.ActiveOptimized, AluaState.Unavailable) };
        var time = new ManualTimeProvider();
        using var device = new IscsiCatalogDevice(catalog, c => new ScsiDevice(c, new InMemoryReservationStore(), portGroups), time, portGroups, () => access)
        {
            FailoverHold = TimeSpan.FromSeconds(8),
        };
        async Task<ScsiResult> Run(byte[] cdb) => await device.ExecuteAsync(new ScsiCommand { Nexus = B, Lun = 0, Cdb = cdb }, default);
        Assert.Equal(0x29, (await Run(Cdb.TestUnitReady())).Sense.Span[12]); // power on, once

        var held = Run(Cdb.Read10(0, 8));
        for (int i = 0; i < 5; i++) time.Advance(TimeSpan.FromMilliseconds(100));
        await Task.Delay(50);
        Assert.False(held.IsCompleted, "answered while the port was unavailable");

        // This controller took the owner over: its group is active/optimized now. The held command comes back
        // with the ALUA change's unit attention (an initiator retries it), and the next one runs.
        access[0] = new("vol0", AluaState.Unavailable, AluaState.ActiveOptimized);
        time.Advance(TimeSpan.FromMilliseconds(100));
        var r = await held.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal((ScsiStatus.CheckCondition, 0x2A, 0x06), (r.Status, r.Sense.Span[12], r.Sense.Span[13]));
        Assert.Equal(ScsiStatus.Good, (await Run(Cdb.Read10(0, 8))).Status);

        // With no takeover, the hold ends and the initiator hears NOT READY, unavailable.
        access[0] = new("vol0", AluaState.ActiveOptimized, AluaState.Unavailable);
        device.Refresh();
        Assert.Equal(0x2A, (await Run(Cdb.TestUnitReady())).Sense.Span[12]);
        var late = Run(Cdb.Read10(0, 8));
        for (int i = 0; i < 90 && !late.IsCompleted; i++)
        {
            time.Advance(TimeSpan.FromMilliseconds(100));
            await Task.Delay(5);
        }
        r = await late.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal((ScsiStatus.CheckCondition, 0x04, 0x0C), (r.Status, r.Sense.Span[12], r.Sense.Span[13]));
    }

    /// <summary>A TimeProvider whose timers never fire (the test calls Refresh itself).</summary>
    sealed class ManualTime : TimeProvider
    {
        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period) => new Never();
        sealed class Never : ITimer
        {
            public bool Change(TimeSpan dueTime, TimeSpan period) => true;
            public void Dispose() { }
            public ValueTask DisposeAsync() => ValueTask.CompletedTask;
        }
    }
}
