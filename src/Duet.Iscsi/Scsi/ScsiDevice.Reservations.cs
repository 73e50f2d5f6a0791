using System.Buffers.Binary;
using System.Text;

namespace Duet.Iscsi.Scsi;

// SPC-2 RESERVE/RELEASE and SPC-4 PERSISTENT RESERVE IN/OUT.
public sealed partial class ScsiDevice
{
    // SPC-2 RESERVE/RELEASE. The LUN is one logical unit behind both controllers' target ports, so its holder is
    // saved with its PR state (mirrored to the peer, never persisted): a RESERVE through one controller's port
    // conflicts with the other's nexuses too. The command completes once the peer has the change.
    async ValueTask<ScsiResult> Spc2Async(LogicalUnit lu, ItNexus nexus, bool reserve)
    {
        var result = reserve ? Reserve(lu, nexus, out var saved) : Release(lu, nexus, out saved);
        await saved.ConfigureAwait(false);
        return result;
    }

    ScsiResult Reserve(LogicalUnit lu, ItNexus nexus, out ValueTask saved)
    {
        saved = ValueTask.CompletedTask;
        PrSnapshot snapshot;
        using var saving = lu.SaveLock.EnterScope();
        lock (lu.Sync)
        {
            if (lu.Pr.HasRegistrations) return Conflict;
            if (lu.Spc2Holder is { } holder && !holder.Equals(nexus)) return Conflict;
            if (nexus.Equals(lu.Spc2Holder)) return GoodNoData;
            lu.Spc2Holder = nexus;
            snapshot = StateOf(lu);
            lu.MarkSaved(snapshot);
        }
        saved = SaveReservations(lu, snapshot);
        return GoodNoData;
    }

    ScsiResult Release(LogicalUnit lu, ItNexus nexus, out ValueTask saved)
    {
        saved = ValueTask.CompletedTask;
        PrSnapshot snapshot;
        using var saving = lu.SaveLock.EnterScope();
        lock (lu.Sync)
        {
            if (lu.Pr.HasRegistrations) return Conflict;
            // Releasing someone else's reservation (or none) is GOOD and changes nothing (SPC-2 7.17).
            if (!nexus.Equals(lu.Spc2Holder)) return GoodNoData;
            lu.Spc2Holder = null;
            snapshot = StateOf(lu);
            lu.MarkSaved(snapshot);
        }
        saved = SaveReservations(lu, snapshot);
        return GoodNoData;
    }

    /// <summary>The LUN's reservation state to save: its persistent reservation and its SPC-2 holder (under its lock).</summary>
    static PrSnapshot StateOf(LogicalUnit lu) => lu.Pr.Snapshot() with { Spc2Holder = lu.Spc2Holder };

    /// <summary>Raised after a PREEMPT AND ABORT with the LUN and the I_T nexuses whose registrations it removed:
    /// the transport aborts their tasks on that LUN (SPC-4 5.12.11.2.5), as the device server keeps no task set.</summary>
    public event Action<ulong, IReadOnlyList<ItNexus>>? PreemptedAndAborted;

    static readonly ScsiResult Conflict = new(ScsiStatus.ReservationConflict, default, default, 0);

    // ---- PERSISTENT RESERVE IN

    static ScsiResult PersistentReserveIn(LogicalUnit lu, int serviceAction, int allocation)
    {
        byte[] data;
        lock (lu.Sync)
        {
            var pr = lu.Pr;
            data = serviceAction switch
            {
                0 => ReadKeys(pr),
                1 => ReadReservation(pr),
                2 => ReportCapabilities(pr.Aptpl),
                _ => ReadFullStatus(pr),
            };
        }
        return DataIn(data, allocation);
    }

    static byte[] ReadKeys(PersistentReservation pr)
    {
        var regs = pr.Registrations;
        var d = new byte[8 + 8 * regs.Count];
        BinaryPrimitives.WriteUInt32BigEndian(d, pr.Generation);
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(4), (uint)(8 * regs.Count));
        for (int i = 0; i < regs.Count; i++) BinaryPrimitives.WriteUInt64BigEndian(d.AsSpan(8 + 8 * i), regs[i].Key);
        return d;
    }

    static byte[] ReadReservation(PersistentReservation pr)
    {
        bool reserved = pr.Type != PrType.None;
        var d = new byte[reserved ? 24 : 8];
        BinaryPrimitives.WriteUInt32BigEndian(d, pr.Generation);
        if (!reserved) return d;
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(4), 16);
        // An all-registrants reservation reports key 0 (SPC-4 6.16.3).
        ulong key = pr.Holder is { } h ? pr.Registrations[pr.IndexOf(h)].Key : 0;
        BinaryPrimitives.WriteUInt64BigEndian(d.AsSpan(8), key);
        d[21] = (byte)pr.Type; // scope 0: logical unit
        return d;
    }

    static byte[] ReportCapabilities(bool aptpl)
    {
        var d = new byte[8];
        BinaryPrimitives.WriteUInt16BigEndian(d, 8);
        d[2] = 0x10 | 0x01;    // CRH (RESERVE/RELEASE handled per SPC-4 5.12.3), PTPL_C (APTPL accepted)
        d[3] = (byte)(0x80 | 0x10 | (aptpl ? 0x01 : 0)); // TMV, ALLOW COMMANDS 001b, PTPL_A
        d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
        d[5] = 0x01;           // EX_AC_AR
        return d;
    }

    static byte[] ReadFullStatus(PersistentReservation pr)
    {
        var ms = new MemoryStream();
        Span<byte> head = stackalloc byte[24];
        foreach (var r in pr.Registrations)
        {
            var transportId = IscsiTransportId(r.InitiatorName, r.Isid);
            head.Clear();
            BinaryPrimitives.WriteUInt64BigEndian(head, r.Key);
            bool holder = pr.IsHolder(r.Nexus);
            head[12] = (byte)(holder ? 0x01 : 0); // R_HOLDER; ALL_TG_PT 0
            head[13] = holder ? (byte)pr.Type : (byte)0;
            BinaryPrimitives.WriteUInt16BigEndian(head[18..], r.RelativeTargetPort);
            BinaryPrimitives.WriteUInt32BigEndian(head[20..], (uint)transportId.Length);
            ms.Write(head);
            ms.Write(transportId);
        }
        var body = ms.ToArray();
        var d = new byte[8 + body.Length];
        BinaryPrimitives.WriteUInt32BigEndian(d, pr.Generation);
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(4), (uint)body.Length);
        body.CopyTo(d, 8);
        return d;
    }

    /// <summary>iSCSI TransportID, initiator port format (SPC-4 7.6.4.6, format code 01b): "name,i,0xISID".</summary>
    static byte[] IscsiTransportId(string initiatorName, ulong isid)
    {
        var name = Encoding.UTF8.GetBytes($"{initiatorName},i,0x{isid:x12}");
        int length = (name.Length + 1 + 3) & ~3; // null-terminated, padded to a multiple of 4
        var id = new byte[4 + length];
        id[0] = 0x40 | 0x05; // format 01b, protocol identifier 5 (iSCSI)
        BinaryPrimitives.WriteUInt16BigEndian(id.AsSpan(2), (ushort)length);
        name.CopyTo(id, 4);
        return id;
    }

    /// <summary>Parses an iSCSI TransportID (both formats); null if it is not one.</summary>
    static (string Name, ulong? Isid)? ParseIscsiTransportId(ReadOnlySpan<byte> id, out int consumed)
    {
        consumed = 0;
        if (id.Length < 4 || (id[0] & 0x0F) != 0x05) return null;
        int format = id[0] >> 6;
        int length = Be16(id, 2);
        if (length < 4 || length % 4 != 0 || 4 + length > id.Length || format > 1) return null;
        consumed = 4 + length;
        var text = id.Slice(4, length);
        int end = text.IndexOf((byte)0);
        var s = Encoding.UTF8.GetString(end >= 0 ? text[..end] : text);
        if (format == 0) return (s, null);
        int sep = s.IndexOf(",i,0x", StringComparison.OrdinalIgnoreCase);
        if (sep < 0 || !ulong.TryParse(s.AsSpan(sep + 5), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out var isid)) return null;
        return (s[..sep], isid);
    }

    // ---- PERSISTENT RESERVE OUT

    /// <summary>PERSISTENT RESERVE OUT: the change, then its snapshot saved (mirrored to the peer by the
    /// controller's store) before the command completes.</summary>
    async ValueTask<ScsiResult> PersistentReserveOutAsync(LogicalUnit lu, ScsiCommand command, int serviceAction)
    {
        var result = PersistentReserveOut(lu, command, serviceAction, command.Cdb.Span, out var saved, out var aborted);
        await saved.ConfigureAwait(false);
        if (aborted is { Count: > 0 }) PreemptedAndAborted?.Invoke(lu.Lun, aborted);
        return result;
    }

    ScsiResult PersistentReserveOut(LogicalUnit lu, ScsiCommand command, int serviceAction, ReadOnlySpan<byte> cdb,
        out ValueTask saved, out List<ItNexus>? aborted)
    {
        saved = ValueTask.CompletedTask;
        aborted = null;
        int scope = cdb[2] >> 4;
        int type = cdb[2] & 0x0F;
        long length = Be32(cdb, 5);
        var nexus = command.Nexus;
        if (serviceAction != 7 && length != 24)
        {
            // SPEC_I_PT is not supported (INVALID FIELD IN PARAMETER LIST when set); without it the list is
            // the basic 24 bytes (SPC-4 6.17.3).
            if (length > 20 && command.DataOut.Length > 20 && (command.DataOut.Span[20] & 0x08) != 0)
                throw ScsiCheckException.InvalidParameter(20, 3);
            throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
        }
        if (serviceAction == 7 && length < 24) throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
        if (command.DataOut.Length < length) return Check(DataOutMismatch, (int)Math.Min(length, int.MaxValue));
        var list = command.DataOut.Span[..(int)length];
        ulong key = BinaryPrimitives.ReadUInt64BigEndian(list);
        ulong serviceKey = BinaryPrimitives.ReadUInt64BigEndian(list[8..]);

        bool needsType = serviceAction is 1 or 2 or 4 or 5;
        if (needsType)
        {
            if (scope != 0) throw ScsiCheckException.InvalidField(2, 7);
            if (!PersistentReservation.IsValidType(type)) throw ScsiCheckException.InvalidField(2, 3);
        }

        using var saving = lu.SaveLock.EnterScope();
        PrSnapshot snapshot;
        lock (lu.Sync)
        {
            var pr = lu.Pr;
            if (serviceAction == 7)
            {
                RegisterAndMove(pr, nexus, list, key, serviceKey, lu.PortGroups);
            }
            else
            {
                byte flags = list[20];
                bool specIpt = (flags & 0x08) != 0, allTgPt = (flags & 0x04) != 0, aptpl = (flags & 0x01) != 0;
                if (specIpt) throw ScsiCheckException.InvalidParameter(20, 3);
                if (allTgPt) throw ScsiCheckException.InvalidParameter(20, 2);
                if (aptpl && serviceAction is not (0 or 6)) { /* APTPL is ignored outside the register actions */ }
                switch (serviceAction)
                {
                    case 0: pr.Register(nexus, key, serviceKey, ignoreExisting: false, aptpl); break;
                    case 6: pr.Register(nexus, key, serviceKey, ignoreExisting: true, aptpl); break;
                    case 1: pr.Reserve(nexus, key, (PrType)type); break;
                    case 2: pr.Release(nexus, key, (PrType)type); break;
                    case 3: pr.Clear(nexus, key); break;
                    case 4: pr.Preempt(nexus, key, serviceKey, (PrType)type); break;
                    case 5: aborted = pr.Preempt(nexus, key, serviceKey, (PrType)type); break;
                }
            }
            snapshot = StateOf(lu);
            if (lu.LastSaved is { } last && SameState(last, snapshot)) return GoodNoData;
            lu.MarkSaved(snapshot);
        }
        saved = SaveReservations(lu, snapshot);
        return GoodNoData;
    }

    static bool SameState(PrSnapshot a, PrSnapshot b) =>
        a.Generation == b.Generation && a.Aptpl == b.Aptpl && a.Type == b.Type && a.HolderIndex == b.HolderIndex
        && a.Registrations.SequenceEqual(b.Registrations) && Equals(a.Spc2Holder, b.Spc2Holder);

    /// <summary>REGISTER AND MOVE: the parameter list names the target I_T nexus by relative target port and TransportID.</summary>
    static void RegisterAndMove(PersistentReservation pr, ItNexus nexus, ReadOnlySpan<byte> list, ulong key, ulong serviceKey, IReadOnlyList<TargetPortGroup> groups)
    {
        bool unregister = (list[17] & 0x02) != 0, aptpl = (list[17] & 0x01) != 0;
        int relativePort = Be16(list, 18);
        long idLength = Be32(list, 20);
        if (24 + idLength > list.Length) throw new ScsiCheckException(SenseCondition.ParameterListLengthError);
        var parsed = ParseIscsiTransportId(list.Slice(24, (int)idLength), out _);
        if (parsed is not { Isid: { } isid } id) throw ScsiCheckException.InvalidParameter(24);
        // The target port's group comes from the ALUA view.
        int group = -1;
        foreach (var g in groups)
            foreach (var p in g.RelativePorts)
                if (p == relativePort) group = g.Id;
        if (group < 0) throw ScsiCheckException.InvalidParameter(18);
        var target = new ItNexus(id.Name, isid, (ushort)group, (ushort)relativePort);
        pr.RegisterAndMove(nexus, key, serviceKey, target, unregister, aptpl);
    }
}
