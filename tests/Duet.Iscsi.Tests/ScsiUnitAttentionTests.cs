using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiUnitAttentionTests
{
    [Fact]
    public void EachNexusSeesPowerOnResetOnceOnItsFirstCommand()
    {
        var h = new ScsiHarness();
        CheckCondition(h.Run(Cdb.Read10(0, 1)), 6, 0x29, 0);
        Good(h.Run(Cdb.Read10(0, 1)));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x29, 0); // per nexus
        CheckCondition(h.Run(Cdb.TestUnitReady(), lun: 1), 6, 0x29, 0);   // and per LUN
        Good(h.Run(Cdb.TestUnitReady(), nexus: B));
    }

    [Fact]
    public void InquiryReportLunsAndRequestSenseDoNotConsumeTheAttention()
    {
        var h = new ScsiHarness();
        Good(h.Run(Cdb.Inquiry()));
        Good(h.Run(Cdb.Inquiry(evpd: true, page: 0x83)));
        Good(h.Run(Cdb.ReportLuns()));
        CheckCondition(h.Run(Cdb.ModeSense6(0x3F)), 6, 0x29, 0);
    }

    [Fact]
    public void UnknownOpcodeStillReportsThePendingAttentionFirst()
    {
        var h = new ScsiHarness();
        CheckCondition(h.Run([0xC5, 0, 0, 0, 0, 0]), 6, 0x29, 0);
        CheckCondition(h.Run([0xC5, 0, 0, 0, 0, 0]), 5, 0x20, 0);
    }

    [Fact]
    public void AttentionsComeOutInOrderOneAtATime()
    {
        var h = Ready();
        Good(h.Run(Cdb.PrOut(0), Cdb.PrOutParams(0, 0xB), nexus: B));
        Good(h.Run(Cdb.PrOut(0), Cdb.PrOutParams(0, 0xA)));
        Good(h.Run(Cdb.PrOut(3), Cdb.PrOutParams(0xA, 0)));               // CLEAR: B's registration preempted
        h.PortGroups.SetOwner("vol0", FixedScsiPortGroups.GroupB);        // then its access state changes
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x03);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x06);
        Good(h.Run(Cdb.TestUnitReady(), nexus: B));
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x06);
        Good(h.Run(Cdb.TestUnitReady()));
    }

    [Fact]
    public void AResetReplacesPendingAttentionsWithPowerOnReset()
    {
        var h = Ready();
        h.PortGroups.SetOwner("vol0", FixedScsiPortGroups.GroupB);
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.LogicalUnitReset, 0));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x29, 0);
        Good(h.Run(Cdb.TestUnitReady(), nexus: B));
        Good(h.Run(Cdb.TestUnitReady(), lun: 1));                         // a LUN reset leaves the other LUN alone
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.TargetWarmReset, 0));
        CheckCondition(h.Run(Cdb.TestUnitReady(), lun: 1), 6, 0x29, 0);
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.ClearTaskSet, 0));
        Good(h.Run(Cdb.TestUnitReady(), lun: 1));
    }

    [Fact]
    public void RequestSenseTakesTheAttentionInsteadOfTheNextCommand()
    {
        var h = Ready();
        h.PortGroups.SetOwner("vol0", FixedScsiPortGroups.GroupB);
        var r = h.Run(Cdb.RequestSense());
        Assert.Equal((6, 0x2A, 0x06), (r.DataIn.Span[2] & 0x0F, (int)r.DataIn.Span[12], (int)r.DataIn.Span[13]));
        Good(h.Run(Cdb.Read10(0, 1)));
    }

    [Fact]
    public void AttentionsFollowTheNexusValueNotTheObject()
    {
        var h = Ready();
        var sameAsB = B with { };                                       // another object for the same I_T nexus
        Assert.NotSame(B, sameAsB);
        Good(h.Run(Cdb.TestUnitReady(), nexus: sameAsB));
        h.PortGroups.SetOwner("vol0", FixedScsiPortGroups.GroupB);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x06); // reported once, to whichever object asks
        Good(h.Run(Cdb.TestUnitReady(), nexus: sameAsB));
        Good(h.Run(Cdb.TestUnitReady(), nexus: B));
        Good(h.Run(Cdb.PrOut(0), Cdb.PrOutParams(0, 0xB), nexus: sameAsB)); // registered as B
        Conflict(h.Run(Cdb.PrOut(0), Cdb.PrOutParams(0, 0xC), nexus: B));   // B is registered with 0xB
    }

    [Fact]
    public void ANexusThatReturnsAfterLossSeesPowerOnAgain()
    {
        var h = Ready();
        h.Device.NexusLost(B);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x29, 0);
        Good(h.Run(Cdb.TestUnitReady()));
    }

    [Fact]
    public async Task CancelledCommandsPropagateCancellation_BadInputNeverThrows()
    {
        var h = Ready();
        Assert.Equal(ScsiStatus.CheckCondition, h.Run([]).Status);
        Assert.Equal(ScsiStatus.CheckCondition, h.Run([0x28, 0, 0]).Status);     // READ(10) cut short
        h.Volume.YieldOnIo = true;
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            await h.Device.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = 0, Cdb = Cdb.CompareAndWrite(0, 1), DataOut = new byte[1024] }, cts.Token));
        Good(await h.RunAsync(Cdb.CompareAndWrite(0, 1), new byte[1024]));
    }

    [Fact]
    public async Task ACancelledWaiterForTheCompareAndWriteGateDoesNotKeepIt()
    {
        var inner = new MemoryBlockVolume("vol0", 64 * 512);
        var gated = new GatedVolume(inner);
        var device = new ScsiDevice(new VolumeList(gated));
        ScsiCommand Caw() => new() { Nexus = A, Lun = 0, Cdb = Cdb.CompareAndWrite(0, 1), DataOut = new byte[1024] };
        await device.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = 0, Cdb = Cdb.TestUnitReady() }, default);
        gated.Hold();
        var first = device.ExecuteAsync(Caw(), default).AsTask();        // holds the gate, its read held
        using var cts = new CancellationTokenSource();
        var second = device.ExecuteAsync(Caw(), cts.Token).AsTask();     // waits for the gate
        var write = device.ExecuteAsync(new ScsiCommand { Nexus = A, Lun = 0, Cdb = Cdb.Write10(1, 1), DataOut = new byte[512] }, default).AsTask();
        await Task.Delay(20);
        Assert.False(second.IsCompleted);
        Assert.False(write.IsCompleted);                                 // plain writes wait for COMPARE AND WRITE too
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => second);
        gated.Release();
        Good(await first);
        Good(await write);
        Good(await device.ExecuteAsync(Caw(), default));
    }

    /// <summary>A volume whose reads wait while held (to keep a command inside the device server).</summary>
    sealed class GatedVolume(MemoryBlockVolume inner) : Duet.Core.IBlockVolume
    {
        TaskCompletionSource _open = Opened();
        static TaskCompletionSource Opened() { var t = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously); t.SetResult(); return t; }
        public void Hold() => _open = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        public void Release() => _open.TrySetResult();
        public string Name => inner.Name;
        public long SizeBytes => inner.SizeBytes;
        public bool ReadOnly => inner.ReadOnly;
        public async ValueTask ReadAsync(long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
        {
            await _open.Task;
            await inner.ReadAsync(offset, destination, cancellationToken);
        }
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken = default) => inner.WriteAsync(offset, source, fua, cancellationToken);
        public ValueTask FlushAsync(CancellationToken cancellationToken = default) => inner.FlushAsync(cancellationToken);
        public ValueTask WriteZeroesAsync(long offset, long length, bool fua, CancellationToken cancellationToken = default) => inner.WriteZeroesAsync(offset, length, fua, cancellationToken);
        public ValueTask TrimAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.TrimAsync(offset, length, cancellationToken);
        public ValueTask<IReadOnlyList<Duet.Core.AllocationExtent>> GetAllocationAsync(long offset, long length, CancellationToken cancellationToken = default) => inner.GetAllocationAsync(offset, length, cancellationToken);
    }
}

/// <summary>A port-group view the controller could supply: states set by the test.</summary>
sealed class SettablePortGroups : IScsiPortGroups
{
    public AluaState StateA = AluaState.ActiveOptimized, StateB = AluaState.ActiveNonOptimized;
    public event Action<string?>? Changed;
    public IReadOnlyList<TargetPortGroup> GroupsFor(string volumeName) =>
        [new TargetPortGroup(1, StateA, [1]), new TargetPortGroup(2, StateB, [2])];
    public void Set(AluaState a, AluaState b)
    {
        StateA = a;
        StateB = b;
        Changed?.Invoke(null);
    }
}

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiAluaTests
{
    [Theory]
    [InlineData(AluaState.Standby, 0x0B)]
    [InlineData(AluaState.Unavailable, 0x0C)]
    [InlineData(AluaState.Transitioning, 0x0A)]
    public void APortGroupThatIsNotActiveServesOnlyWhatSpc4Allows(AluaState state, byte ascq)
    {
        var view = new SettablePortGroups();
        var volume = new MemoryBlockVolume("vol0", 64 * 512);
        var device = new ScsiDevice(new VolumeList(volume), portGroups: view);
        ScsiResult Run(byte[] cdb, ItNexus n) => device.ExecuteAsync(new ScsiCommand { Nexus = n, Lun = 0, Cdb = cdb }, default).AsTask().GetAwaiter().GetResult();
        Run(Cdb.TestUnitReady(), A);
        Run(Cdb.TestUnitReady(), B);
        view.Set(AluaState.ActiveOptimized, state);
        CheckCondition(Run(Cdb.TestUnitReady(), B), 6, 0x2A, 0x06);     // the change is reported first
        CheckCondition(Run(Cdb.Read10(0, 1), B), 2, 0x04, ascq);
        CheckCondition(Run(Cdb.TestUnitReady(), B), 2, 0x04, ascq);
        Good(Run(Cdb.Inquiry(), B));
        Good(Run(Cdb.ReportLuns(), B));
        Good(Run(Cdb.MaintenanceIn(0x0A, 1024), B));
        var modeSense = Run(Cdb.ModeSense6(0x3F), B);
        if (state == AluaState.Standby) Good(modeSense);
        else CheckCondition(modeSense, 2, 0x04, ascq);
        CheckCondition(Run(Cdb.TestUnitReady(), A), 6, 0x2A, 0x06);
        Good(Run(Cdb.Read10(0, 1), A));                                  // the other group is untouched
        var rtpg = Run(Cdb.MaintenanceIn(0x0A, 1024), A).DataIn.Span;
        Assert.Equal((int)state, rtpg[16] & 0x0F);
    }
}
