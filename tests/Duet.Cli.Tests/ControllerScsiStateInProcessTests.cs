using System.Buffers.Binary;
using Duet.Cache.Nvram;
using Duet.Drives;
using Duet.Host.Controller;
using Duet.Interconnect.Link;
using Duet.Iscsi;
using Duet.Iscsi.Scsi;
using Duet.Raid.Management;
using Duet.Shelf;
using PairController = Duet.Host.Controller.Controller;

using static Duet.Cli.Tests.InProcessPair;

namespace Duet.Cli.Tests;

/// <summary>
/// SCSI state across the pair, both controllers in one process behind one shelf (as
/// <see cref="ControllerTakeoverInProcessTests"/>), each with its own SCSI device server over its
/// controller's catalog and mirrored reservation store: what an initiator registers and reserves
/// through A is what it sees through B, before and after B takes A over.
/// </summary>
[Trait("Claim", "ISCSI-FO")]
public sealed class ControllerScsiStateInProcessTests
{
    static readonly Guid Pair = new("5d3c1b0a-0000-4000-8000-00000000d0e9");

    // One host, one initiator port, reaching the LUN through A's port (group 1) and B's port (group 2).
    static readonly ItNexus HostViaA = new("iqn.2026-12.test:host1", 0x23d000000001, 1, 1);
    static readonly ItNexus HostViaB = new("iqn.2026-12.test:host1", 0x23d000000001, 2, 2);
    static readonly ItNexus OtherViaB = new("iqn.2026-12.test:host2", 0x23d000000002, 2, 2);
    const ulong KeyA = 0xA1, KeyB = 0xB1;

    [Fact]
    [Trait("Claim", "FO-2")]
    public async Task RegistrationsAndTheReservationMadeThroughAAreSeenThroughB_AndBHoldsThemAfterTakingAOver()
    {
        var (shelf, a, b) = await StartPairAsync();
        try
        {
            var viaA = new ScsiDevice(a.Volumes, a.Reservations);
            var viaB = new ScsiDevice(b.Volumes, b.Reservations);
            await ClearAsync(viaA, HostViaA);
            await ClearAsync(viaB, HostViaB);
            await ClearAsync(viaB, OtherViaB);

            // Register and reserve (write exclusive) through A; register the same host's other path through B.
            Good(await PrOutAsync(viaA, HostViaA, 0, 0, 0, KeyA));
            Good(await PrOutAsync(viaA, HostViaA, 1, 1, KeyA, 0));
            Good(await PrOutAsync(viaB, HostViaB, 0, 0, 0, KeyB));
            // Completed means mirrored: both sides hold the same state now.
            Assert.True(a.Reservations.Applied >= 1 && b.Reservations.Applied >= 2);
            foreach (var (device, nexus) in new[] { (viaA, HostViaA), (viaB, HostViaB) })
            {
                Assert.Equal(new ulong[] { KeyA, KeyB }, await ReadKeysAsync(device, nexus));
                Assert.Equal((KeyA, (byte)1), await ReadReservationAsync(device, nexus));
            }
            // The reservation is enforced at B too: another host may read but not write.
            Assert.Equal(ScsiStatus.ReservationConflict, (await RunAsync(viaB, OtherViaB, Write10(0, 1), new byte[512])).Status);
            Good(await RunAsync(viaB, OtherViaB, Read10(0, 1)));

            // A dies; B fences it and takes its array over. B's device server (rebuilt over the served volume)
            // starts from the mirrored store and still holds every registration and the reservation.
            await b.TakeOverAsync("test: A stopped answering");
            Assert.Equal(["arr0"], b.LastTakeover!.Arrays);
            var afterTakeover = new ScsiDevice(b.Volumes, b.Reservations);
            await ClearAsync(afterTakeover, HostViaB);
            await ClearAsync(afterTakeover, OtherViaB);
            Assert.Equal(new ulong[] { KeyA, KeyB }, await ReadKeysAsync(afterTakeover, HostViaB));
            Assert.Equal((KeyA, (byte)1), await ReadReservationAsync(afterTakeover, HostViaB));
            Assert.Equal(ScsiStatus.ReservationConflict, (await RunAsync(afterTakeover, OtherViaB, Write10(0, 1), new byte[512])).Status);
            // The host's path through B is registered: it preempts A's path and takes the reservation over there.
            Good(await PrOutAsync(afterTakeover, HostViaB, 4, 1, KeyB, KeyA));
            Assert.Equal(new ulong[] { KeyB }, await ReadKeysAsync(afterTakeover, HostViaB));
            Assert.Equal((KeyB, (byte)1), await ReadReservationAsync(afterTakeover, HostViaB));
            await Until(() => a.IsSteppedDown, "A to step down");
        }
        finally
        {
            await b.DisposeAsync();
        }
    }

    [Fact]
    public async Task WithTheLinkDownAChangeStaysLocal_AndWhenThePairFormsTheOwnersStateWins()
    {
        var (_, a, b) = await StartPairAsync();
        try
        {
            var viaA = new ScsiDevice(a.Volumes, a.Reservations);
            var viaB = new ScsiDevice(b.Volumes, b.Reservations);
            await ClearAsync(viaA, HostViaA);
            await ClearAsync(viaB, HostViaB);
            Good(await PrOutAsync(viaA, HostViaA, 0, 0, 0, KeyA));
            Assert.Equal(new ulong[] { KeyA }, await ReadKeysAsync(viaB, HostViaB));

            // Partition: each side's change stays its own (the command still completes).
            ((InMemoryIclLink)a.Link).Cut();
            await Until(() => !a.Link.IsUp && !b.Link.IsUp, "the link to go down");
            Good(await PrOutAsync(viaB, HostViaB, 0, 0, 0, KeyB));          // B, not the owner of vol0
            Good(await PrOutAsync(viaA, HostViaA, 1, 3, KeyA, 0));          // A, the owner: exclusive access
            Assert.Equal(new ulong[] { KeyA, KeyB }, await ReadKeysAsync(viaB, HostViaB));
            Assert.Null(await ReadReservationAsync(viaB, HostViaB));
            Assert.Equal(new ulong[] { KeyA }, await ReadKeysAsync(viaA, HostViaA));

            // The pair forms again: A owns vol0's array, so A's state replaces B's. B's path, whose registration
            // went, hears REGISTRATIONS PREEMPTED once.
            ((InMemoryIclLink)a.Link).Heal();
            await Until(() => b.Reservations.Load("vol0") is { Type: PrType.ExclusiveAccess }, "A's state to reach B");
            var r = await RunAsync(viaB, HostViaB, new byte[6]);
            AssertSense(r, 0x6, 0x2A, 0x05);
            Good(await RunAsync(viaB, HostViaB, new byte[6]));
            Assert.Equal(new ulong[] { KeyA }, await ReadKeysAsync(viaB, HostViaB));
            Assert.Equal((KeyA, (byte)3), await ReadReservationAsync(viaB, HostViaB));
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    [Fact]
    [Trait("Claim", "FO-1")]
    public async Task AluaStatesFollowTheLinkAndTheTakeover_AndEveryNexusHearsOfEachChangeOnce()
    {
        var (_, a, b) = await StartPairAsync();
        using var viaA = IscsiCatalogDevice.Create(a.Volumes, "iqn.test:target", TimeProvider.System, () => ControllerServer.VolumeAccessStates(a), a.Reservations);
        using var viaB = IscsiCatalogDevice.Create(b.Volumes, "iqn.test:target", TimeProvider.System, () => ControllerServer.VolumeAccessStates(b), b.Reservations);
        try
        {
            // Paired: A owns vol0 (its group active/optimized, preferred), B forwards it (active/non-optimized).
            Assert.Equal(("vol0", AluaState.ActiveOptimized, AluaState.ActiveNonOptimized), a.AccessStates().Single());
            Assert.Equal(("vol0", AluaState.ActiveNonOptimized, AluaState.ActiveOptimized), b.AccessStates().Single());
            foreach (var (device, nexus) in new[] { ((IScsiDevice)viaA, HostViaA), (viaB, HostViaB) })
            {
                await ClearAsync(device, nexus);
                Assert.Equal((0x80, 0x01), await GroupStatesAsync(device, nexus));
            }
            Good(await RunAsync(viaB, HostViaB, Read10(0, 1)));            // forwarded over the ICL

            // The link goes down (both still heartbeat through the shelf: no takeover). B cannot forward: its
            // group is unavailable for vol0, A reports B's group unavailable too.
            ((InMemoryIclLink)a.Link).Cut();
            await Until(() => !a.Link.IsUp && !b.Link.IsUp, "the link to go down");
            viaA.Refresh();
            viaB.Refresh();
            AssertSense(await RunAsync(viaB, HostViaB, new byte[6]), 0x6, 0x2A, 0x06);
            AssertSense(await RunAsync(viaB, HostViaB, Read10(0, 1)), 0x2, 0x04, 0x0C);
            Assert.Equal((0x80, 0x03), await GroupStatesAsync(viaB, HostViaB));
            AssertSense(await RunAsync(viaA, HostViaA, new byte[6]), 0x6, 0x2A, 0x06);
            Assert.Equal((0x80, 0x03), await GroupStatesAsync(viaA, HostViaA));
            Good(await RunAsync(viaA, HostViaA, Read10(0, 1)));

            // B takes A over: while it runs, B's group is transitioning and A's unavailable; then B's is
            // active/optimized. B's device is rebuilt over the served volume and keeps the attention: once.
            var seen = new List<(string, AluaState, AluaState)>();
            b.AccessChanged += () => { lock (seen) seen.Add(b.AccessStates().Single()); };
            await b.TakeOverAsync("test: A stopped answering");
            lock (seen) Assert.Equal(("vol0", AluaState.Transitioning, AluaState.Unavailable), seen[0]);
            Assert.Equal(("vol0", AluaState.ActiveOptimized, AluaState.Unavailable), b.AccessStates().Single());
            viaB.Refresh();
            AssertSense(await RunAsync(viaB, HostViaB, new byte[6]), 0x6, 0x2A, 0x06);
            Good(await RunAsync(viaB, HostViaB, new byte[6]));
            Good(await RunAsync(viaB, HostViaB, Read10(0, 1)));
            Assert.Equal((0x03, 0x80), await GroupStatesAsync(viaB, HostViaB));

            // A finds itself fenced and steps down: its group is unavailable for everything.
            await Until(() => a.IsSteppedDown, "A to step down");
            Assert.Equal(("vol0", AluaState.Unavailable, AluaState.ActiveOptimized), a.AccessStates().Single());
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    static async Task<(byte A, byte B)> GroupStatesAsync(IScsiDevice device, ItNexus nexus)
    {
        var r = await RunAsync(device, nexus, [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
        Good(r);
        var d = r.DataIn.Span;
        Assert.Equal((1, 2), (BinaryPrimitives.ReadUInt16BigEndian(d[6..]), BinaryPrimitives.ReadUInt16BigEndian(d[18..])));
        return (d[4], d[16]);
    }

    /// <summary>A LUN is one logical unit behind both controllers' ports: a LOGICAL UNIT RESET through A's port is
    /// seen by the nexuses that reach it through B's (POWER ON, RESET, OR BUS DEVICE RESET OCCURRED next, their SPC-2
    /// reservation gone), before the task management function completes; a target reset through B likewise at A.
    /// (iscsi-test-cu MultipathIO.Reset across both portals.)</summary>
    [Fact]
    public async Task AResetThroughOneControllersPortIsSeenByTheNexusesOfTheOthers()
    {
        var (_, a, b) = await StartPairAsync();
        try
        {
            using var viaA = new ScsiDevice(a.Volumes, a.Reservations);
            using var viaB = new ScsiDevice(b.Volumes, b.Reservations);
            await ClearAsync(viaA, HostViaA);
            await ClearAsync(viaB, HostViaB);
            await ClearAsync(viaB, OtherViaB);
            Good(await RunAsync(viaB, OtherViaB, [0x16, 0, 0, 0, 0, 0])); // RESERVE(6) through B
            Assert.Equal(ScsiStatus.ReservationConflict, (await RunAsync(viaB, HostViaB, Write10(0, 1), new byte[512])).Status);

            Assert.Equal(0, await viaA.TaskManagementAsync(HostViaA, TaskManagementFunction.LogicalUnitReset, 0, default));
            Assert.Equal((1L, 1L), (a.Reservations.ResetsSent, b.Reservations.ResetsApplied));
            foreach (var (device, nexus) in new[] { (viaA, HostViaA), (viaB, HostViaB), (viaB, OtherViaB) })
            {
                AssertSense(await RunAsync(device, nexus, new byte[6]), 6, 0x29, 0x00);
                Good(await RunAsync(device, nexus, new byte[6]));
            }
            Good(await RunAsync(viaB, HostViaB, Write10(0, 1), new byte[512])); // the reset released B's SPC-2 reservation

            Assert.Equal(0, await viaB.TaskManagementAsync(HostViaB, TaskManagementFunction.TargetWarmReset, 0, default));
            Assert.Equal((1L, 1L), (b.Reservations.ResetsSent, a.Reservations.ResetsApplied));
            AssertSense(await RunAsync(viaA, HostViaA, new byte[6]), 6, 0x29, 0x00);
            AssertSense(await RunAsync(viaB, HostViaB, new byte[6]), 6, 0x29, 0x00);
        }
        finally
        {
            await a.DisposeAsync();
            await b.DisposeAsync();
        }
    }

    // ---- the pair

    internal static async Task<(Duet.Shelf.Shelf, PairController, PairController)> StartPairAsync()
    {
        var shelf = await TwoArrayShelfAsync();
        var layout = NvramLayout.For(NvramLayout.MinTotalBytes);
        var (linkA, linkB) = InMemoryIclTransport.CreatePair(IclWindowOptions.Default with { ReplyDataBufferBytes = 4 << 20 }, TimeProvider.System);
        var a = await StartControllerAsync("A", 1, shelf, NvramStore.For(layout, "nvram-A"), layout, linkA, Pair);
        var b = await StartControllerAsync("B", 2, shelf, NvramStore.For(layout, "nvram-B"), layout, linkB, Pair);
        await Until(() => a.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && b.Mirror.Mode == Duet.Cache.MirrorMode.Healthy && a.HoldsLease && b.HoldsLease,
            "the pair to form");
        return (shelf, a, b);
    }

    // ---- SCSI

    static async Task<ScsiResult> RunAsync(IScsiDevice device, ItNexus nexus, byte[] cdb, byte[]? data = null) =>
        await device.ExecuteAsync(new ScsiCommand { Nexus = nexus, Lun = 0, Cdb = cdb, DataOut = data ?? [], ExpectedDataOutLength = data?.Length ?? 0 }, default);

    /// <summary>TEST UNIT READY until GOOD: the nexus's unit attentions (POWER ON first) are taken.</summary>
    static async Task ClearAsync(IScsiDevice device, ItNexus nexus)
    {
        for (int i = 0; i < 10; i++)
            if ((await RunAsync(device, nexus, new byte[6])).Status == ScsiStatus.Good) return;
        throw new InvalidOperationException("unit attentions do not clear");
    }

    static Task<ScsiResult> PrOutAsync(ScsiDevice device, ItNexus nexus, byte action, byte type, ulong key, ulong serviceKey)
    {
        var cdb = new byte[10];
        cdb[0] = 0x5F;
        cdb[1] = action;
        cdb[2] = type;
        cdb[8] = 24;
        var list = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(list, key);
        BinaryPrimitives.WriteUInt64BigEndian(list.AsSpan(8), serviceKey);
        return RunAsync(device, nexus, cdb, list);
    }

    static async Task<ulong[]> ReadKeysAsync(ScsiDevice device, ItNexus nexus)
    {
        var r = await RunAsync(device, nexus, [0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        Good(r);
        var d = r.DataIn.Span;
        int n = (int)BinaryPrimitives.ReadUInt32BigEndian(d[4..]) / 8;
        var keys = new ulong[n];
        for (int i = 0; i < n; i++) keys[i] = BinaryPrimitives.ReadUInt64BigEndian(d[(8 + 8 * i)..]);
        return keys;
    }

    static async Task<(ulong Key, byte Type)?> ReadReservationAsync(ScsiDevice device, ItNexus nexus)
    {
        var r = await RunAsync(device, nexus, [0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        Good(r);
        var d = r.DataIn.Span;
        if (BinaryPrimitives.ReadUInt32BigEndian(d[4..]) == 0) return null;
        return (BinaryPrimitives.ReadUInt64BigEndian(d[8..]), (byte)(d[21] & 0x0F));
    }

    static byte[] Read10(uint lba, ushort blocks)
    {
        var c = new byte[10];
        c[0] = 0x28;
        BinaryPrimitives.WriteUInt32BigEndian(c.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(c.AsSpan(7), blocks);
        return c;
    }

    static byte[] Write10(uint lba, ushort blocks)
    {
        var c = Read10(lba, blocks);
        c[0] = 0x2A;
        return c;
    }

    static void Good(ScsiResult r) =>
        Assert.True(r.Status == ScsiStatus.Good, $"expected GOOD, got {r.Status} {Convert.ToHexString(r.Sense.Span)}");

    static void AssertSense(ScsiResult r, byte key, byte asc, byte ascq)
    {
        Assert.Equal(ScsiStatus.CheckCondition, r.Status);
        var s = r.Sense.Span;
        Assert.Equal((key, asc, ascq), ((byte)(s[2] & 0x0F), s[12], s[13]));
    }
}
