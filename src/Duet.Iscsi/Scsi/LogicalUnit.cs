using System.Security.Cryptography;
using System.Text;
using Duet.Core;

namespace Duet.Iscsi.Scsi;

/// <summary>
/// One LUN: its volume, its identifiers (derived from the volume name alone, so both controllers
/// report the same ones), and its per-LUN state: unit attentions per I_T nexus, the SPC-2
/// reservation, the persistent reservation, and the COMPARE AND WRITE gate. Everything mutable
/// is guarded by <see cref="Sync"/>.
/// </summary>
sealed class LogicalUnit
{
    /// <summary>Locally administered IEEE company id for NAA 6 designators (U/L bit set in the first octet).</summary>
    public const uint NaaCompanyId = 0x02D0E7;

    public LogicalUnit(ulong lun, IBlockVolume volume, PrSnapshot? saved)
    {
        Lun = lun;
        Volume = volume;
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(volume.Name));
        Naa = DeriveNaa(hash);
        Serial = Convert.ToHexString(hash, 0, 10);
        Pr = new PersistentReservation(saved ?? PrSnapshot.Empty);
        Spc2Holder = saved?.Spc2Holder;
        LastSaved = saved ?? PrSnapshot.Empty;
    }

    public ulong Lun { get; }
    public IBlockVolume Volume { get; }
    public string Name => Volume.Name;
    /// <summary>16-byte NAA IEEE Registered Extended identifier.</summary>
    public byte[] Naa { get; }
    /// <summary>Unit serial number (VPD 0x80): 20 hex characters of the name's hash.</summary>
    public string Serial { get; }

    public long BlockCount => Volume.SizeBytes >> Units.SectorShift;

    public readonly Lock Sync = new();
    public readonly SharedExclusiveGate WriteGate = new();

    /// <summary>Unit attentions per I_T nexus; a nexus absent here has POWER ON/RESET pending.</summary>
    readonly Dictionary<ItNexus, Queue<SenseCondition>> _attentions = new();
    /// <summary>Nexus objects (by reference, one slot each by identity hash) known to have nothing pending: the
    /// hot path's lock-free look. Cleared whenever any attention is queued or state is reset.</summary>
    readonly ItNexus?[] _clean = new ItNexus?[16];

    static int Slot(ItNexus nexus) => System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(nexus) & 15;

    /// <summary>True when this very nexus object was seen with no attention pending and nothing was queued since
    /// (read without the lock: a command racing a new attention may miss it, as if it had arrived first).</summary>
    public bool KnownClean(ItNexus nexus) => ReferenceEquals(Volatile.Read(ref _clean[Slot(nexus)]), nexus);

    void Dirty() => Array.Clear(_clean);

    /// <summary>The ALUA view of this LUN, refreshed when the port-group view changes (read without the lock: replaced whole).</summary>
    public volatile TargetPortGroup[] PortGroups = [];

    /// <summary>The access state of a target port group; a group the view does not name is served as active/optimized.</summary>
    public AluaState StateOf(ushort group)
    {
        foreach (var g in PortGroups)
            if (g.Id == group) return g.State;
        return AluaState.ActiveOptimized;
    }

    /// <summary>The SPC-2 RESERVE holder, if any.</summary>
    public ItNexus? Spc2Holder;
    public PersistentReservation Pr;
    /// <summary>The PR state as last saved or loaded (a command that changes nothing is not saved again).</summary>
    public PrSnapshot? LastSaved;

    /// <summary>Held from a PR change until its snapshot is saved: saves reach the store in the order the
    /// changes were made (the data path takes only <see cref="Sync"/>, never this).</summary>
    public readonly Lock SaveLock = new();

    /// <summary>Snapshots this device made: the store's echo of them (now or later) is not news from elsewhere.</summary>
    readonly System.Runtime.CompilerServices.ConditionalWeakTable<PrSnapshot, object> _own = new();

    /// <summary>Records a snapshot this device is about to save (caller holds <see cref="Sync"/>).</summary>
    public void MarkSaved(PrSnapshot snapshot)
    {
        LastSaved = snapshot;
        _own.AddOrUpdate(snapshot, this);
    }

    public bool IsOwn(PrSnapshot snapshot) => _own.TryGetValue(snapshot, out _);

    static byte[] DeriveNaa(byte[] hash)
    {
        // NAA 6: 4 bits NAA, 24 bits company id, 36 bits vendor specific id, 64 bits extension.
        var naa = new byte[16];
        naa[0] = (byte)(0x60 | (NaaCompanyId >> 20));
        naa[1] = (byte)((NaaCompanyId >> 12) & 0xFF);
        naa[2] = (byte)((NaaCompanyId >> 4) & 0xFF);
        naa[3] = (byte)((NaaCompanyId & 0xF) << 4 | (hash[0] & 0x0F));
        hash.AsSpan(1, 12).CopyTo(naa.AsSpan(4));
        return naa;
    }

    /// <summary>The next unit attention for this nexus, removed from its queue (caller holds <see cref="Sync"/>).</summary>
    public bool TryTakeAttention(ItNexus nexus, out SenseCondition sense)
    {
        var q = QueueFor(nexus);
        if (q.TryDequeue(out sense)) return true;
        Volatile.Write(ref _clean[Slot(nexus)], nexus);
        return false;
    }

    public bool TryPeekAttention(ItNexus nexus, out SenseCondition sense) => QueueFor(nexus).TryPeek(out sense);

    /// <summary>Queues a unit attention for one nexus (caller holds <see cref="Sync"/>).</summary>
    public void AddAttention(ItNexus nexus, SenseCondition sense)
    {
        var q = QueueFor(nexus);
        foreach (var s in q)
            if (s.Asc == sense.Asc && s.Ascq == sense.Ascq) return;
        q.Enqueue(sense);
        Dirty();
    }

    /// <summary>Queues a unit attention for every nexus this LUN knows (those it does not know get POWER ON first anyway).</summary>
    public void AddAttentionToAll(SenseCondition sense, ItNexus? except = null)
    {
        foreach (var n in _attentions.Keys.ToList())
            if (except is null || !n.Equals(except)) AddAttention(n, sense);
    }

    /// <summary>A reset: every nexus sees POWER ON, RESET OR BUS DEVICE RESET OCCURRED before anything else.</summary>
    public void ResetAttentions()
    {
        _attentions.Clear();
        Dirty();
    }

    /// <summary>Takes <paramref name="old"/>'s attention queues (the same volume in the device this one replaces),
    /// ahead of anything queued here; caller holds both locks.</summary>
    public void CarryAttentionsFrom(LogicalUnit old)
    {
        foreach (var (nexus, queue) in old._attentions)
        {
            var merged = new Queue<SenseCondition>(queue);
            if (_attentions.TryGetValue(nexus, out var mine))
                foreach (var s in mine)
                    if (s.Asc != SenseCondition.PowerOnReset.Asc && !merged.Any(m => m.Asc == s.Asc && m.Ascq == s.Ascq)) merged.Enqueue(s);
            _attentions[nexus] = merged;
        }
        Dirty();
    }

    public void ForgetNexus(ItNexus nexus)
    {
        _attentions.Remove(nexus);
        Dirty();
    }

    Queue<SenseCondition> QueueFor(ItNexus nexus)
    {
        if (!_attentions.TryGetValue(nexus, out var q))
        {
            q = new Queue<SenseCondition>();
            q.Enqueue(SenseCondition.PowerOnReset);
            _attentions.Add(nexus, q);
        }
        return q;
    }
}
