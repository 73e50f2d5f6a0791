namespace Duet.Iscsi.Scsi;

/// <summary>
/// A LUN's persistent reservation state machine (SPC-4 5.12): registrations per I_T nexus, the
/// reservation and its holder, PRgeneration and APTPL. Mutated only under the LUN's lock; every
/// change ends in a new <see cref="PrSnapshot"/> for the store. Unit attentions it establishes
/// go through <see cref="Attention"/>.
/// </summary>
sealed class PersistentReservation
{
    readonly List<PrRegistration> _registrations = [];

    public PersistentReservation(PrSnapshot snapshot)
    {
        Generation = snapshot.Generation;
        Aptpl = snapshot.Aptpl;
        _registrations.AddRange(snapshot.Registrations);
        Type = snapshot.Type;
        if (Type != PrType.None && !IsAllRegistrants(Type))
            Holder = snapshot.HolderIndex >= 0 && snapshot.HolderIndex < _registrations.Count ? _registrations[snapshot.HolderIndex].Nexus : null;
        if (Type != PrType.None && !IsAllRegistrants(Type) && Holder is null) Type = PrType.None;
    }

    public uint Generation { get; private set; }
    public bool Aptpl { get; private set; }
    public PrType Type { get; private set; }
    /// <summary>The holder of a reservation that is not an all-registrants one.</summary>
    public ItNexus? Holder { get; private set; }
    public IReadOnlyList<PrRegistration> Registrations => _registrations;
    public bool HasRegistrations => _registrations.Count > 0;

    public Action<ItNexus, Duet.Iscsi.Scsi.SenseCondition>? Attention { get; set; }

    public static bool IsAllRegistrants(PrType t) => t is PrType.WriteExclusiveAllRegistrants or PrType.ExclusiveAccessAllRegistrants;
    public static bool IsRegistrantsOnlyOrAll(PrType t) => t is PrType.WriteExclusiveRegistrantsOnly or PrType.ExclusiveAccessRegistrantsOnly
        or PrType.WriteExclusiveAllRegistrants or PrType.ExclusiveAccessAllRegistrants;
    public static bool IsValidType(int t) => t is 1 or 3 or 5 or 6 or 7 or 8;

    public PrSnapshot Snapshot()
    {
        int holder = -1;
        if (Holder is not null)
            for (int i = 0; i < _registrations.Count; i++)
                if (_registrations[i].Nexus.Equals(Holder)) { holder = i; break; }
        return new PrSnapshot(Generation, Aptpl, _registrations.ToArray(), Type, holder);
    }

    public int IndexOf(ItNexus nexus)
    {
        for (int i = 0; i < _registrations.Count; i++)
        {
            var r = _registrations[i];
            if (r.RelativeTargetPort == nexus.RelativeTargetPort && r.Isid == nexus.Isid && r.TargetPortGroup == nexus.TargetPortGroup
                && string.Equals(r.InitiatorName, nexus.InitiatorName, StringComparison.Ordinal)) return i;
        }
        return -1;
    }

    public bool IsRegistered(ItNexus nexus) => IndexOf(nexus) >= 0;

    /// <summary>Whether this nexus holds the reservation (every registrant does under an all-registrants type).</summary>
    public bool IsHolder(ItNexus nexus) =>
        Type != PrType.None && (IsAllRegistrants(Type) ? IsRegistered(nexus) : nexus.Equals(Holder));

    /// <summary>SPC-4 table 62 / SBC-3 table 13: may this nexus run a command of this class now?</summary>
    public bool Conflicts(ItNexus nexus, Access access)
    {
        if (Type == PrType.None || access is Access.Always or Access.PrOut) return false;
        if (access == Access.Spc2) return true;
        if (IsHolder(nexus)) return false;
        bool registered = IsRegistered(nexus);
        return Type switch
        {
            PrType.WriteExclusive => access == Access.Write,
            PrType.ExclusiveAccess => true,
            PrType.WriteExclusiveRegistrantsOnly or PrType.WriteExclusiveAllRegistrants => access == Access.Write && !registered,
            PrType.ExclusiveAccessRegistrantsOnly or PrType.ExclusiveAccessAllRegistrants => !registered,
            _ => true,
        };
    }

    // ---- PERSISTENT RESERVE OUT service actions. Each returns normally on success (the caller saves
    // the snapshot) or throws ScsiCheckException (nothing changed).

    public void Register(ItNexus nexus, ulong key, ulong newKey, bool ignoreExisting, bool aptpl)
    {
        int i = IndexOf(nexus);
        if (i < 0)
        {
            if (!ignoreExisting && key != 0) throw ScsiCheckException.Conflict();
            if (newKey == 0) return; // nothing to register: GOOD, no change
            _registrations.Add(PrRegistration.For(nexus, newKey));
            Aptpl = aptpl;
            Generation++;
            return;
        }
        if (!ignoreExisting && _registrations[i].Key != key) throw ScsiCheckException.Conflict();
        if (newKey == 0)
        {
            Unregister(i);
        }
        else
        {
            _registrations[i] = _registrations[i] with { Key = newKey };
            Aptpl = aptpl;
        }
        Generation++;
    }

    void Unregister(int index)
    {
        var nexus = _registrations[index].Nexus;
        bool wasHolder = IsHolder(nexus);
        var type = Type;
        _registrations.RemoveAt(index);
        if (!wasHolder) return;
        if (IsAllRegistrants(type))
        {
            if (_registrations.Count == 0) ClearReservation();
            return;
        }
        ClearReservation();
        // SPC-4 5.12.11.2.2: releasing a registrants-only reservation by unregistering tells the other registrants.
        if (type is PrType.WriteExclusiveRegistrantsOnly or PrType.ExclusiveAccessRegistrantsOnly)
            foreach (var r in _registrations) Attention?.Invoke(r.Nexus, SenseCondition.ReservationsReleased);
    }

    void ClearReservation()
    {
        Type = PrType.None;
        Holder = null;
    }

    int CheckRegisteredKey(ItNexus nexus, ulong key)
    {
        int i = IndexOf(nexus);
        if (i < 0 || _registrations[i].Key != key) throw ScsiCheckException.Conflict();
        return i;
    }

    public void Reserve(ItNexus nexus, ulong key, PrType type)
    {
        CheckRegisteredKey(nexus, key);
        if (Type != PrType.None)
        {
            // Only the holder may "reserve" again, and only with the same type (SPC-4 5.12.11.2.2).
            if (!IsHolder(nexus) || Type != type) throw ScsiCheckException.Conflict();
            return;
        }
        Type = type;
        Holder = IsAllRegistrants(type) ? null : nexus;
    }

    public void Release(ItNexus nexus, ulong key, PrType type)
    {
        CheckRegisteredKey(nexus, key);
        if (Type == PrType.None || !IsHolder(nexus)) return; // GOOD, nothing released
        if (Type != type) throw new ScsiCheckException(SenseCondition.InvalidReleaseOfPr);
        var released = Type;
        ClearReservation();
        if (released is not (PrType.WriteExclusive or PrType.ExclusiveAccess))
            foreach (var r in _registrations)
                if (!r.Nexus.Equals(nexus)) Attention?.Invoke(r.Nexus, SenseCondition.ReservationsReleased);
    }

    public void Clear(ItNexus nexus, ulong key)
    {
        CheckRegisteredKey(nexus, key);
        foreach (var r in _registrations)
            if (!r.Nexus.Equals(nexus)) Attention?.Invoke(r.Nexus, SenseCondition.ReservationsPreempted);
        _registrations.Clear();
        ClearReservation();
        Generation++;
    }

    /// <summary>PREEMPT and PREEMPT AND ABORT (SPC-4 5.12.11.2.4). Returns the preempted nexuses (their tasks are the
    /// transport's to abort for PREEMPT AND ABORT).</summary>
    public List<ItNexus> Preempt(ItNexus nexus, ulong key, ulong victimKey, PrType type)
    {
        CheckRegisteredKey(nexus, key);
        var removed = new List<ItNexus>();
        if (Type == PrType.None || (IsAllRegistrants(Type) && victimKey != 0) || (!IsAllRegistrants(Type) && victimKey != KeyOf(Holder!)))
        {
            // No reservation to take: only registrations go (SPC-4: a zero key here is an invalid parameter).
            if (victimKey == 0) throw ScsiCheckException.InvalidParameter(8);
            RemoveKey(victimKey, nexus, removed);
            if (removed.Count == 0) throw ScsiCheckException.Conflict();
            Generation++;
            return removed;
        }
        // Preempting the reservation: remove the victims' registrations (all others for an all-registrants
        // reservation preempted with key 0), then take the reservation with the new type.
        var oldType = Type;
        if (IsAllRegistrants(Type)) RemoveAllBut(nexus, removed);
        else RemoveKey(victimKey, nexus, removed);
        Type = type;
        Holder = IsAllRegistrants(type) ? null : nexus;
        if (oldType != type)
            foreach (var r in _registrations)
                if (!r.Nexus.Equals(nexus)) Attention?.Invoke(r.Nexus, SenseCondition.ReservationsReleased);
        Generation++;
        return removed;
    }

    ulong KeyOf(ItNexus n) => _registrations[IndexOf(n)].Key;

    void RemoveKey(ulong key, ItNexus except, List<ItNexus> removed)
    {
        for (int i = _registrations.Count - 1; i >= 0; i--)
        {
            var r = _registrations[i];
            if (r.Key != key || r.Nexus.Equals(except)) continue;
            _registrations.RemoveAt(i);
            removed.Add(r.Nexus);
            Attention?.Invoke(r.Nexus, SenseCondition.RegistrationsPreempted);
        }
    }

    void RemoveAllBut(ItNexus keep, List<ItNexus> removed)
    {
        for (int i = _registrations.Count - 1; i >= 0; i--)
        {
            var r = _registrations[i];
            if (r.Nexus.Equals(keep)) continue;
            _registrations.RemoveAt(i);
            removed.Add(r.Nexus);
            Attention?.Invoke(r.Nexus, SenseCondition.RegistrationsPreempted);
        }
    }

    /// <summary>REGISTER AND MOVE (SPC-4 5.12.8): the holder registers <paramref name="target"/> with
    /// <paramref name="newKey"/> and moves the reservation to it; optionally unregisters itself.</summary>
    public void RegisterAndMove(ItNexus nexus, ulong key, ulong newKey, ItNexus target, bool unregister, bool aptpl)
    {
        // Only the holder of a reservation that has one holder may move it (SPC-4 5.12.8).
        CheckRegisteredKey(nexus, key);
        if (Type == PrType.None || !IsHolder(nexus) || IsAllRegistrants(Type)) throw ScsiCheckException.Conflict();
        if (newKey == 0) throw ScsiCheckException.InvalidParameter(8);
        if (target.Equals(nexus)) throw ScsiCheckException.InvalidParameter(18);
        int t = IndexOf(target);
        if (t < 0) _registrations.Add(PrRegistration.For(target, newKey));
        else _registrations[t] = _registrations[t] with { Key = newKey };
        Holder = target;
        if (unregister) _registrations.RemoveAt(IndexOf(nexus));
        Aptpl = aptpl;
        Generation++;
    }

    /// <summary>
    /// The unit attentions SPC-4 5.12.11 has the device server establish, for a change that was made
    /// elsewhere (the peer controller ran the command, or the pair formed and the owner's state replaced
    /// ours), derived from the states before and after: registrations that went hear REGISTRATIONS
    /// PREEMPTED (2A/05), or RESERVATIONS PREEMPTED (2A/03) when none is left (CLEAR); the remaining
    /// registrants other than the (new) holder hear RESERVATIONS RELEASED (2A/04) when a registrants-only or
    /// all-registrants reservation was released or a reservation changed type (a released WE or EA says
    /// nothing, as here).
    /// </summary>
    public static void AttentionsForChange(PersistentReservation before, PrSnapshot after, Action<ItNexus, SenseCondition> add)
    {
        var next = new PersistentReservation(after);
        bool cleared = after.Registrations.Count == 0;
        foreach (var r in before.Registrations)
            if (next.IndexOf(r.Nexus) < 0) add(r.Nexus, cleared ? SenseCondition.ReservationsPreempted : SenseCondition.RegistrationsPreempted);
        if (before.Type == PrType.None || before.Type == next.Type) return;
        if (next.Type == PrType.None && before.Type is PrType.WriteExclusive or PrType.ExclusiveAccess) return;
        foreach (var r in next.Registrations)
            if (before.IndexOf(r.Nexus) >= 0 && !r.Nexus.Equals(next.Holder)) add(r.Nexus, SenseCondition.ReservationsReleased);
    }

    /// <summary>What a cold reset leaves: everything if APTPL, else nothing (SPC-4 5.12.4).</summary>
    public bool ClearUnlessPersistent()
    {
        if (Aptpl || (_registrations.Count == 0 && Type == PrType.None)) return false;
        _registrations.Clear();
        ClearReservation();
        return true;
    }
}
