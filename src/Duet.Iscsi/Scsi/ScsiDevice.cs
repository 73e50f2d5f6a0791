using Duet.Core;

namespace Duet.Iscsi.Scsi;

/// <summary>
/// The SCSI device server (SPC-4 / SBC-3) behind Duet's iSCSI target: one LUN per volume of the
/// catalog — the volume's own LUN for an <see cref="ILunCatalog"/> (a controller's: stored with the
/// volume), else LUN i = the catalog's i-th volume — 512-byte logical blocks. It parses CDBs, keeps
/// unit attentions, SPC-2 and persistent reservations, and answers with fixed-format sense.
/// No sockets, threads or clocks: the transport calls <see cref="ExecuteAsync"/> per command.
/// </summary>
public sealed partial class ScsiDevice : IScsiDevice, IDisposable
{
    readonly LogicalUnit[] _units;   // in LUN order
    readonly LogicalUnit?[] _byLun;  // indexed by LUN; null where no volume has that LUN
    readonly ulong[] _luns;
    readonly IReservationStore _store;
    /// <summary>The peer's side of resets (the reservation store's, when it mirrors to a peer).</summary>
    readonly IUnitResetRelay? _resets;
    readonly IScsiPortGroups _portGroups;
    readonly ScsiDeviceOptions _options;

    public ScsiDevice(IVolumeCatalog catalog, IReservationStore? reservations = null, IScsiPortGroups? portGroups = null, ScsiDeviceOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        _store = reservations ?? new InMemoryReservationStore();
        _portGroups = portGroups ?? new FixedScsiPortGroups();
        _options = options ?? new ScsiDeviceOptions();
        var volumes = LunsOf(catalog);
        _units = new LogicalUnit[volumes.Count];
        _luns = new ulong[volumes.Count];
        _byLun = new LogicalUnit?[volumes.Count == 0 ? 0 : volumes[^1].Lun + 1];
        for (int i = 0; i < volumes.Count; i++)
        {
            var (lun, volume) = volumes[i];
            Invariant.Assert(lun >= 0);
            Invariant.Assert(i == 0 || lun > volumes[i - 1].Lun); // increasing: each LUN once
            var unit = new LogicalUnit((ulong)lun, volume, _store.Load(volume.Name));
            unit.Pr.Attention = unit.AddAttention;
            unit.PortGroups = [.. _portGroups.GroupsFor(unit.Name)];
            _units[i] = unit;
            _byLun[lun] = unit;
            _luns[i] = (ulong)lun;
        }
        _store.Changed += OnReservationsChanged;
        _portGroups.Changed += OnPortGroupsChanged;
        _resets = _store as IUnitResetRelay;
        if (_resets is not null) _resets.ResetElsewhere += OnResetElsewhere;
    }

    public IReadOnlyList<ulong> Luns => _luns;

    /// <summary>The catalog's volumes with their LUNs: an <see cref="ILunCatalog"/>'s own, else LUN i for the i-th.</summary>
    internal static IReadOnlyList<LunVolume> LunsOf(IVolumeCatalog catalog)
    {
        if (catalog is ILunCatalog numbered) return numbered.LunVolumes;
        var volumes = catalog.Volumes;
        var list = new LunVolume[volumes.Count];
        for (int i = 0; i < list.Length; i++) list[i] = new LunVolume(i, volumes[i]);
        return list;
    }

    /// <summary>Stops listening to the reservation store and the port-group view (a device replaced by a
    /// newer one over the same store and view must not keep reloading state or queueing attentions).</summary>
    public void Dispose()
    {
        _store.Changed -= OnReservationsChanged;
        _portGroups.Changed -= OnPortGroupsChanged;
        if (_resets is not null) _resets.ResetElsewhere -= OnResetElsewhere;
    }

    public ScsiDeviceOptions Options => _options;

    /// <summary>
    /// For a device that replaces <paramref name="previous"/> over the same store and view (the catalog
    /// changed): each LUN takes the previous device's unit attentions and SPC-2 reservation of the same
    /// volume, so a rebuild loses no attention (an ASYMMETRIC ACCESS STATE CHANGED of a takeover, a
    /// RESERVATIONS PREEMPTED) and does not tell every nexus POWER ON again. Attentions this device queued
    /// itself meanwhile are kept after the carried ones.
    /// </summary>
    public void CarryOver(ScsiDevice previous)
    {
        ArgumentNullException.ThrowIfNull(previous);
        foreach (var lu in _units)
        {
            if (previous.UnitByName(lu.Name) is not { } old) continue;
            lock (old.Sync)
            lock (lu.Sync)
            {
                lu.CarryAttentionsFrom(old);
                lu.Spc2Holder ??= old.Spc2Holder;
            }
        }
    }

    LogicalUnit? Unit(ulong lun) => lun < (ulong)_byLun.Length ? _byLun[lun] : null;

    LogicalUnit? UnitByName(string name)
    {
        foreach (var u in _units)
            if (u.Name == name) return u;
        return null;
    }

    public ValueTask<ScsiResult> ExecuteAsync(ScsiCommand command, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(command);
        ValueTask<ScsiResult> pending;
        try
        {
            pending = Dispatch(command, cancellationToken);
        }
        catch (Exception e) when (IsCommandFailure(e, cancellationToken))
        {
            return ValueTask.FromResult(ToResult(e));
        }
        if (pending.IsCompletedSuccessfully) return pending;
        return AwaitGuarded(pending, cancellationToken);
    }

    static async ValueTask<ScsiResult> AwaitGuarded(ValueTask<ScsiResult> pending, CancellationToken ct)
    {
        try
        {
            return await pending.ConfigureAwait(false);
        }
        catch (Exception e) when (IsCommandFailure(e, ct))
        {
            return ToResult(e);
        }
    }

    /// <summary>What becomes a status instead of an exception: everything but the task's own abort and Duet's invariants.</summary>
    static bool IsCommandFailure(Exception e, CancellationToken ct) =>
        e is not InvariantViolationException && !(e is OperationCanceledException && ct.IsCancellationRequested);

    static ScsiResult ToResult(Exception e) => e switch
    {
        ScsiCheckException c when c.Status == ScsiStatus.CheckCondition => Check(c.Sense),
        ScsiCheckException c => new ScsiResult(c.Status, default, default, 0),
        BlockIoException b => Check(MapBlockError(b, -1, 0)),
        _ => Check(new SenseCondition(SenseKey.HardwareError, 0x44, 0x00)), // INTERNAL TARGET FAILURE
    };

    internal static ScsiResult Check(SenseCondition sense, int transferLength = 0) =>
        new(ScsiStatus.CheckCondition, default, sense.ToFixed(), transferLength);

    /// <summary>Data-In truncated to the allocation length: the transfer is what the device server returns.</summary>
    static ScsiResult DataIn(byte[] data, int allocationLength)
    {
        int n = Math.Min(data.Length, allocationLength);
        return ScsiResult.Good(data.AsMemory(0, n), n);
    }

    static readonly ScsiResult GoodNoData = ScsiResult.Good(default, 0);

    /// <summary>Maps a volume's failure to sense; a medium error's LBA goes into INFORMATION when it lies in the command's range.</summary>
    internal static SenseCondition MapBlockError(BlockIoException e, long lba, long blocks) => e.Kind switch
    {
        BlockErrorKind.Medium => new SenseCondition(SenseKey.MediumError, 0x11, 0x00)
        {
            Information = e.Lba >= 0 && (blocks == 0 || (e.Lba >= lba && e.Lba < lba + blocks)) ? e.Lba : -1,
        },
        BlockErrorKind.OutOfRange => SenseCondition.LbaOutOfRange,
        BlockErrorKind.Invalid => SenseCondition.InvalidFieldInCdb(-1),
        BlockErrorKind.ReadOnly => SenseCondition.WriteProtected,
        BlockErrorKind.Unavailable => new SenseCondition(SenseKey.NotReady, 0x04, 0x03), // MANUAL INTERVENTION REQUIRED
        BlockErrorKind.PathDown => new SenseCondition(SenseKey.NotReady, 0x04, 0x0C),    // TARGET PORT IN UNAVAILABLE STATE
        _ => new SenseCondition(SenseKey.HardwareError, 0x44, 0x00),                      // INTERNAL TARGET FAILURE
    };

    ValueTask<ScsiResult> Dispatch(ScsiCommand command, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested(); // an aborted task never starts
        var cdb = command.Cdb.Span;
        if (cdb.Length == 0) return ValueTask.FromResult(Check(SenseCondition.InvalidOpcode));
        byte op = cdb[0];
        var nexus = command.Nexus;
        var lu = Unit(command.Lun);
        if (lu is null) return ValueTask.FromResult(NoSuchLun(command, op));

        // Unit attentions first (SAM-5 5.14): INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear them.
        if (op is not (Op.Inquiry or Op.ReportLuns or Op.RequestSense) && !lu.KnownClean(nexus))
        {
            SenseCondition ua;
            bool pending;
            lock (lu.Sync) pending = lu.TryTakeAttention(nexus, out ua);
            if (pending) return ValueTask.FromResult(Check(ua));
        }

        var info = CommandTable.Find(op, CommandTable.HasServiceAction(op) && cdb.Length > 1 ? cdb[1] & 0x1F : -1);
        if (info is null)
        {
            var sense = CommandTable.IsSupportedOpcode(op) ? SenseCondition.InvalidFieldInCdb(1, 4) : SenseCondition.InvalidOpcode;
            return ValueTask.FromResult(Check(sense));
        }
        if (cdb.Length < info.CdbLength) return ValueTask.FromResult(Check(SenseCondition.InvalidFieldInCdb(0)));
        CommandTable.CheckReservedBits(info, cdb);

        var state = lu.StateOf(nexus.TargetPortGroup);
        if (state is not (AluaState.ActiveOptimized or AluaState.ActiveNonOptimized) && !AllowedInState(state, op))
            return ValueTask.FromResult(Check(NotAccessible(state)));

        if (info.Access != Access.Always && ReservationConflict(lu, nexus, info))
            return ValueTask.FromResult(new ScsiResult(ScsiStatus.ReservationConflict, default, default, 0));

        return op switch
        {
            Op.Read6 => ReadAsync(lu, Lba6(cdb), Blocks6(cdb), ct),
            Op.Read10 => ReadAsync(lu, Be32(cdb, 2), Be16(cdb, 7), ct),
            Op.Read12 => ReadAsync(lu, Be32(cdb, 2), Be32(cdb, 6), ct),
            Op.Read16 => ReadAsync(lu, Be64(cdb, 2), Be32(cdb, 10), ct),
            Op.Write6 => WriteAsync(lu, command, Lba6(cdb), Blocks6(cdb), fua: false, ct),
            Op.Write10 => WriteAsync(lu, command, Be32(cdb, 2), Be16(cdb, 7), Fua(cdb), ct),
            Op.Write12 => WriteAsync(lu, command, Be32(cdb, 2), Be32(cdb, 6), Fua(cdb), ct),
            Op.Write16 => WriteAsync(lu, command, Be64(cdb, 2), Be32(cdb, 10), Fua(cdb), ct),
            Op.WriteAndVerify10 => WriteAsync(lu, command, Be32(cdb, 2), Be16(cdb, 7), fua: true, ct),
            Op.WriteAndVerify12 => WriteAsync(lu, command, Be32(cdb, 2), Be32(cdb, 6), fua: true, ct),
            Op.WriteAndVerify16 => WriteAsync(lu, command, Be64(cdb, 2), Be32(cdb, 10), fua: true, ct),
            Op.Verify10 => VerifyAsync(lu, command, Be32(cdb, 2), Be16(cdb, 7), ByteCheck(cdb), ct),
            Op.Verify12 => VerifyAsync(lu, command, Be32(cdb, 2), Be32(cdb, 6), ByteCheck(cdb), ct),
            Op.Verify16 => VerifyAsync(lu, command, Be64(cdb, 2), Be32(cdb, 10), ByteCheck(cdb), ct),
            Op.PreFetch10 => PreFetch(lu, Be32(cdb, 2), Be16(cdb, 7)),
            Op.PreFetch16 => PreFetch(lu, Be64(cdb, 2), Be32(cdb, 10)),
            Op.SynchronizeCache10 => SynchronizeCacheAsync(lu, Be32(cdb, 2), Be16(cdb, 7), ct),
            Op.SynchronizeCache16 => SynchronizeCacheAsync(lu, Be64(cdb, 2), Be32(cdb, 10), ct),
            Op.WriteSame10 => WriteSameAsync(lu, command, Be32(cdb, 2), Be16(cdb, 7), (cdb[1] & 0x08) != 0, ndob: false, ct),
            Op.WriteSame16 => WriteSameAsync(lu, command, Be64(cdb, 2), Be32(cdb, 10), (cdb[1] & 0x08) != 0, (cdb[1] & 0x01) != 0, ct),
            Op.Unmap => UnmapAsync(lu, command, Be16(cdb, 7), ct),
            Op.CompareAndWrite => CompareAndWriteAsync(lu, command, Be64(cdb, 2), cdb[13], Fua(cdb), ct),
            Op.OrWrite16 => OrWriteAsync(lu, command, Be64(cdb, 2), Be32(cdb, 10), Fua(cdb), ct),
            Op.ReadDefectData10 => Done(ReadDefectData(cdb[2], Be16(cdb, 7), twelve: false)),
            Op.ReadDefectData12 => Done(ReadDefectData(cdb[1], (int)Math.Min(Be32(cdb, 6), int.MaxValue), twelve: true)),
            Op.ServiceActionIn16 when info.ServiceAction == Op.SaReadCapacity16 => Done(ReadCapacity16(lu, cdb)),
            Op.ServiceActionIn16 => GetLbaStatusAsync(lu, Be64(cdb, 2), (int)Math.Min(Be32(cdb, 10), int.MaxValue), ct),
            Op.ReadCapacity10 => Done(ReadCapacity10(lu, cdb)),
            Op.TestUnitReady => Done(GoodNoData),
            Op.RequestSense => Done(RequestSense(lu, nexus, cdb[4])),
            Op.Inquiry => Done(Inquiry(lu, nexus, cdb)),
            Op.ReportLuns => Done(ReportLuns(cdb)),
            Op.MaintenanceIn when info.ServiceAction == Op.SaReportTargetPortGroups => Done(ReportTargetPortGroups(lu, cdb)),
            Op.MaintenanceIn => Done(ReportSupportedOpcodes(cdb)),
            Op.ModeSense6 => Done(ModeSense(lu, cdb, ten: false)),
            Op.ModeSense10 => Done(ModeSense(lu, cdb, ten: true)),
            Op.ModeSelect6 => Done(ModeSelect(lu, command, cdb, ten: false)),
            Op.ModeSelect10 => Done(ModeSelect(lu, command, cdb, ten: true)),
            Op.Reserve6 or Op.Reserve10 => Spc2Async(lu, nexus, reserve: true),
            Op.Release6 or Op.Release10 => Spc2Async(lu, nexus, reserve: false),
            Op.PersistentReserveIn => Done(PersistentReserveIn(lu, info.ServiceAction, Be16(cdb, 7))),
            Op.PersistentReserveOut => PersistentReserveOutAsync(lu, command, info.ServiceAction),
            _ => throw Invariant.Violation($"opcode 0x{op:X2} is in the command table but has no handler"),
        };
    }

    static ValueTask<ScsiResult> Done(ScsiResult r) => ValueTask.FromResult(r);

    /// <summary>A command to a LUN that does not exist (SPC-4 8.x, SAM-5 5.8.5).</summary>
    ScsiResult NoSuchLun(ScsiCommand command, byte op)
    {
        var cdb = command.Cdb.Span;
        switch (op)
        {
            case Op.Inquiry when cdb.Length >= 6:
                if ((cdb[1] & 0xFE) != 0) return Check(SenseCondition.InvalidFieldInCdb(1, 1));
                if ((cdb[1] & 1) != 0) return Check(SenseCondition.InvalidFieldInCdb(2));
                var inq = StandardInquiry(null);
                inq[0] = 0x7F; // peripheral qualifier 3, device type 0x1F: no logical unit here
                return DataIn(inq, Be16(cdb, 3));
            case Op.ReportLuns when cdb.Length >= 12:
                return ReportLuns(cdb);
            case Op.RequestSense when cdb.Length >= 6:
                return DataIn(SenseCondition.LogicalUnitNotSupported.ToFixed(), cdb[4]);
            default:
                return Check(SenseCondition.LogicalUnitNotSupported);
        }
    }

    /// <summary>SPC-4 5.11.2.4: what a target port group in standby, unavailable or transitioning state still serves.</summary>
    static bool AllowedInState(AluaState state, byte op) => op switch
    {
        Op.Inquiry or Op.ReportLuns or Op.RequestSense or Op.MaintenanceIn => true,
        Op.ModeSense6 or Op.ModeSense10 or Op.ModeSelect6 or Op.ModeSelect10
            or Op.PersistentReserveIn or Op.PersistentReserveOut => state == AluaState.Standby,
        _ => false,
    };

    /// <summary>NOT READY, LOGICAL UNIT NOT ACCESSIBLE: ASYMMETRIC ACCESS STATE TRANSITION (04/0A), TARGET PORT IN STANDBY STATE (04/0B), UNAVAILABLE STATE (04/0C).</summary>
    static SenseCondition NotAccessible(AluaState state) => new(SenseKey.NotReady, 0x04, state switch
    {
        AluaState.Transitioning => 0x0A,
        AluaState.Standby => 0x0B,
        _ => 0x0C,
    });

    bool ReservationConflict(LogicalUnit lu, ItNexus nexus, CommandInfo info)
    {
        // Racy first look on the hot path: with no reservation of either kind there is nothing to check.
        if (lu.Spc2Holder is null && lu.Pr.Type == PrType.None && info.Access != Access.Spc2) return false;
        lock (lu.Sync)
        {
            if (lu.Spc2Holder is { } holder && !holder.Equals(nexus))
            {
                // SPC-2 reservation held by another nexus: only RELEASE (a no-op) and the always-allowed get through.
                return info.Access != Access.Spc2 || info.Opcode is Op.Reserve6 or Op.Reserve10;
            }
            if (info.Access == Access.Spc2) return lu.Pr.HasRegistrations; // SPC-4 5.12.3
            return lu.Pr.Conflicts(nexus, info.Access);
        }
    }

    // ---- task management and nexus loss

    public async ValueTask<byte> TaskManagementAsync(ItNexus nexus, TaskManagementFunction function, ulong lun, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(nexus);
        switch (function)
        {
            case TaskManagementFunction.LogicalUnitReset:
                if (Unit(lun) is not { } lu) return TmfLunDoesNotExist;
                await ResetUnit(lu, cold: false).ConfigureAwait(false);
                // The same logical unit behind the other controller's port: its nexuses see the reset too.
                if (_resets is not null) await _resets.RelayResetAsync(lu.Name).ConfigureAwait(false);
                break;
            case TaskManagementFunction.TargetWarmReset:
            case TaskManagementFunction.TargetColdReset:
                foreach (var u in _units) await ResetUnit(u, cold: function == TaskManagementFunction.TargetColdReset).ConfigureAwait(false);
                if (_resets is not null) await _resets.RelayResetAsync(null).ConfigureAwait(false);
                break;
            case TaskManagementFunction.ClearTaskSet:
                if (Unit(lun) is null) return TmfLunDoesNotExist;
                break; // the transport aborts the tasks; the device server keeps no task set of its own
            default:
                return TmfNotSupported;
        }
        return TmfComplete;
    }

    const byte TmfComplete = 0, TmfLunDoesNotExist = 2, TmfNotSupported = 5;

    ValueTask ResetUnit(LogicalUnit lu, bool cold)
    {
        using var saving = lu.SaveLock.EnterScope();
        PrSnapshot? save = null;
        lock (lu.Sync)
        {
            bool held = lu.Spc2Holder is not null;
            lu.Spc2Holder = null;
            lu.ResetAttentions();
            bool cleared = cold && lu.Pr.ClearUnlessPersistent();
            if (cleared || held)
            {
                // (The peer drops its copy of the SPC-2 holder on the relayed reset as well; saving keeps the
                // store's state, which a pairing sends, from naming it again.)
                save = StateOf(lu);
                lu.MarkSaved(save);
            }
        }
        return save is not null ? SaveReservations(lu, save) : ValueTask.CompletedTask;
    }

    public void NexusLost(ItNexus nexus)
    {
        ArgumentNullException.ThrowIfNull(nexus);
        foreach (var lu in _units)
        {
            using var saving = lu.SaveLock.EnterScope();
            PrSnapshot? save = null;
            lock (lu.Sync)
            {
                if (nexus.Equals(lu.Spc2Holder))
                {
                    // Its SPC-2 reservation goes with it, at the peer's ports too.
                    lu.Spc2Holder = null;
                    save = StateOf(lu);
                    lu.MarkSaved(save);
                }
                lu.ForgetNexus(nexus);
            }
            if (save is not null) _ = SaveReservations(lu, save).AsTask();
        }
    }

    // ---- injected views

    void OnReservationsChanged(string volume, PrSnapshot snapshot)
    {
        if (UnitByName(volume) is not { } lu) return;
        lock (lu.Sync)
        {
            if (lu.IsOwn(snapshot)) return;
            // A change made elsewhere (through the peer controller, or its whole state when the pair formed):
            // the registrants it affected hear of it here as they would have there.
            PersistentReservation.AttentionsForChange(lu.Pr, snapshot, lu.AddAttention);
            lu.Pr = new PersistentReservation(snapshot) { Attention = lu.AddAttention };
            lu.Spc2Holder = snapshot.Spc2Holder;
            lu.LastSaved = snapshot;
        }
    }

    /// <summary>A reset made through the other controller's port (null: every LUN): the nexuses here see it as
    /// they would have there (POWER ON, RESET, OR BUS DEVICE RESET OCCURRED next; SPC-2 reservation released).
    /// Persistent reservations arrive, when a cold reset changed them, as a reservation change.</summary>
    void OnResetElsewhere(string? volume)
    {
        foreach (var lu in _units)
        {
            if (volume is not null && lu.Name != volume) continue;
            lock (lu.Sync)
            {
                lu.Spc2Holder = null;
                lu.ResetAttentions();
            }
        }
    }

    void OnPortGroupsChanged(string? volume)
    {
        foreach (var lu in _units)
        {
            if (volume is not null && lu.Name != volume) continue;
            var groups = _portGroups.GroupsFor(lu.Name);
            lock (lu.Sync)
            {
                // A notice names every LUN when it cannot tell which changed: only a LUN whose groups did change
                // tells its nexuses (SPC-4 5.15.2.1), or a host listing the LUNs meets a unit attention for nothing.
                if (SamePortGroups(lu.PortGroups, groups)) continue;
                lu.PortGroups = [.. groups];
                lu.AddAttentionToAll(SenseCondition.AsymmetricAccessStateChanged);
            }
        }
    }

    static bool SamePortGroups(IReadOnlyList<TargetPortGroup> had, IReadOnlyList<TargetPortGroup> now)
    {
        if (had.Count != now.Count) return false;
        for (int i = 0; i < had.Count; i++)
            if (had[i].Id != now[i].Id || had[i].State != now[i].State || !had[i].RelativePorts.SequenceEqual(now[i].RelativePorts))
                return false;
        return true;
    }

    /// <summary>Saves a LUN's PR state after a change (outside its lock, under its save lock: the store sees
    /// the changes in order); the task completes when the store has made it safe (mirrored to the peer).</summary>
    ValueTask SaveReservations(LogicalUnit lu, PrSnapshot snapshot) => _store.SaveAsync(lu.Name, snapshot);

    // ---- CDB field helpers

    static long Lba6(ReadOnlySpan<byte> c) => (c[1] & 0x1F) << 16 | c[2] << 8 | c[3];
    static long Blocks6(ReadOnlySpan<byte> c) => c[4] == 0 ? 256 : c[4];
    static bool Fua(ReadOnlySpan<byte> c) => (c[1] & 0x08) != 0;
    static bool ByteCheck(ReadOnlySpan<byte> c) => (c[1] & 0x02) != 0;
    internal static int Be16(ReadOnlySpan<byte> c, int at) => System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(c[at..]);
    internal static long Be32(ReadOnlySpan<byte> c, int at) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(c[at..]);
    /// <summary>A 64-bit LBA; values beyond long's range are clamped (they are out of range either way).</summary>
    internal static long Be64(ReadOnlySpan<byte> c, int at)
    {
        ulong v = System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(c[at..]);
        return v > long.MaxValue ? long.MaxValue : (long)v;
    }
}
