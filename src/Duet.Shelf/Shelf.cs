using System.Text;
using Duet.Core;
using Duet.Drives;

namespace Duet.Shelf;

/// <summary>
/// The drive enclosure both controllers share (issue 5, FO-2/FO-7): the drive slots, one port per
/// controller, and the state that makes fencing enforceable at the drives rather than trusted to
/// the failed controller:
///
/// - Per port: enabled or disabled, fenced or not, its registration key (SCSI-3 persistent
///   reservations: REGISTER, RESERVE with type "write exclusive, registrants only", PREEMPT).
///   A data request (read, write, flush) from a port is served only if the port is enabled, not
///   fenced and registered, and the reservation (if any is held) admits registrants, which it does.
/// - Fencing a port (<see cref="IShelfPort.FenceAsync"/>) disables it, removes its registration
///   (and its reservation), marks it fenced, persists that, and then waits until every write the
///   shelf had already accepted from that port has finished: once the fence returns, nothing from
///   the fenced controller can reach a drive. A fenced port cannot register or enable itself;
///   only the other port (the owner) or the administrator (`duet shelf unfence`) lifts the fence.
/// - Per array (by 64-bit serial): the owning controller and the epoch at which it became owner.
///   Epochs come from one counter, so every claim is numbered above every claim before it.
/// - A heartbeat slot per port (as Pacemaker's SBD keeps one per node on a shared disk).
/// - Pulled slots (`duet shelf pull`): a pulled drive is not listed, and requests to it fail.
///
/// Everything but the heartbeat slots is kept in an <see cref="IShelfStateStore"/> and survives a
/// restart of the shelf. Thread-safe: the shelf process serves both ports' connections at once.
/// Deterministic given its callers: no clocks, threads or timers.
/// </summary>
public sealed class Shelf : IAsyncDisposable
{
    readonly IDriveShelf _drives;
    readonly IShelfStateStore _store;
    readonly Func<string, IBlockDevice, IBlockDevice>? _wrap;
    readonly Lock _gate = new();
    ShelfState _state;
    long _lateWrites;
    // One open handle per drive, shared by both ports (disposed with the shelf).
    readonly Dictionary<string, IBlockDevice> _open = new(StringComparer.Ordinal);
    readonly Dictionary<string, ulong> _heartbeats = new(StringComparer.Ordinal) { ["A"] = 0, ["B"] = 0 };
    readonly Dictionary<string, int> _attached = new(StringComparer.Ordinal) { ["A"] = 0, ["B"] = 0 };
    readonly Dictionary<string, bool> _departed = new(StringComparer.Ordinal) { ["A"] = false, ["B"] = false };
    readonly Dictionary<string, PortIo> _io = new(StringComparer.Ordinal) { ["A"] = new(), ["B"] = new() };

    sealed class PortIo
    {
        public long Writes;                  // accepted and not yet finished
        public TaskCompletionSource? Drained; // a fence waiting for Writes to reach 0
        public long Rejected;
        public bool FenceComplete;           // fenced, and every write accepted before the fence has finished
    }

    /// <summary>Writes that finished after a fence of their port had completed: must stay 0 (the simulator checks it).</summary>
    public long LateWrites { get { lock (_gate) return _lateWrites; } }

    /// <summary>
    /// The shelf process restarting (the simulator's fault): its state is read back from the store,
    /// the heartbeat slots start from zero. Requests in flight are not interrupted (the drives are the same).
    /// </summary>
    public void Restart()
    {
        lock (_gate)
        {
            var text = _store.Load();
            _state = text is null ? new ShelfState() : ShelfState.Decode(text);
            _state.Boots++;
            Persist();
            foreach (var p in ShelfPorts.All) _heartbeats[p] = 0;
        }
    }

    /// <summary>A shelf over <paramref name="drives"/>, its state in <paramref name="store"/> (loaded now).
    /// <paramref name="wrap"/>(name, drive) decorates every drive the shelf opens (the simulator's faults).</summary>
    public Shelf(IDriveShelf drives, IShelfStateStore store, Func<string, IBlockDevice, IBlockDevice>? wrap = null)
    {
        _drives = drives;
        _store = store;
        _wrap = wrap;
        var text = store.Load();
        _state = text is null ? new ShelfState() : ShelfState.Decode(text);
        _state.Boots++;
        Persist();
    }

    /// <summary>The view of the shelf a controller gets through its port.</summary>
    public IShelfPort Port(string port) => new LocalShelfPort(this, ShelfPorts.Check(port));

    /// <summary>Requests refused per port (disabled, fenced, unregistered, pulled).</summary>
    public long RejectedRequests(string port) { lock (_gate) return _io[ShelfPorts.Check(port)].Rejected; }

    public IDriveShelf Drives => _drives;

    /// <summary>Where admitted writes run and finish (the simulator sets its world's context: the shelf is not
    /// the controller that sent them, and a crash or hang of that controller must not stop them). Null: on the caller's.</summary>
    public SynchronizationContext? Context { get; set; }

    // ---- connections ------------------------------------------------------------------------------

    /// <summary>A connection of <paramref name="port"/>'s controller opened (the server, on accept; the simulator, when
    /// it starts a controller).</summary>
    public void Attach(string port)
    {
        lock (_gate)
        {
            _attached[ShelfPorts.Check(port)]++;
            _departed[port] = false;
        }
    }

    /// <summary>A connection of <paramref name="port"/>'s controller closed; the last one marks the port departed
    /// (<see cref="PortState.Departed"/>).</summary>
    public void Detach(string port)
    {
        lock (_gate)
        {
            if (_attached[ShelfPorts.Check(port)] == 0) return;
            if (--_attached[port] == 0) _departed[port] = true;
        }
    }

    // ---- state ------------------------------------------------------------------------------------

    public ShelfStatus Status()
    {
        lock (_gate) return StatusLocked();
    }

    ShelfStatus StatusLocked()
    {
        var ports = _state.Ports.Select(kv => new PortState(kv.Key, kv.Value.Enabled, kv.Value.Fenced, kv.Value.Key, _heartbeats[kv.Key], _io[kv.Key].Writes)
        {
            MirrorStale = kv.Value.MirrorStale,
            LogStale = kv.Value.LogStale,
            Departed = _departed[kv.Key],
        }).ToList();
        var slots = _drives.List().Select(n => new SlotState(n, BlockCountOrZero(n), SerialOf(n), _state.Pulled.Contains(n))).ToList();
        return new ShelfStatus(ports, _state.ReservationHolder, _state.EpochCounter, [.. _state.Claims.Values], slots) { Boot = _state.Boots };
    }

    // A drive that cannot be opened (a damaged or odd-sized file) is listed with size 0; requests to it
    // fail with the drive's own error, and the controllers report it unreadable.
    long BlockCountOrZero(string name)
    {
        try { return OpenLocked(name).BlockCount; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return 0; }
    }

    /// <summary>A drive's serial number: stable for its name (the drives have no serial of their own).</summary>
    public static string SerialOf(string name) => $"DUET{Crc32C.Compute(Encoding.UTF8.GetBytes(name)):X8}";

    void Persist() => _store.Save(_state.Encode());

    ShelfState.Port Registered(string port)
    {
        var p = _state.Ports[port];
        if (p.Fenced) throw Refused(port, ShelfError.Fenced, $"port {port} is fenced");
        if (!p.Enabled) throw Refused(port, ShelfError.Disabled, $"port {port} is disabled");
        if (p.Key == 0) throw Refused(port, ShelfError.NotRegistered, $"port {port} holds no registration");
        return p;
    }

    ShelfException Refused(string port, ShelfError error, string message)
    {
        _io[port].Rejected++;
        return new ShelfException(error, message);
    }

    // ---- control: reservations, fencing, claims, heartbeats ----------------------------------------

    internal void Register(string port, ulong key)
    {
        lock (_gate)
        {
            var p = _state.Ports[port];
            if (p.Fenced) throw Refused(port, ShelfError.Fenced, $"port {port} is fenced and cannot register itself (the owner or `duet shelf unfence {port}` lifts the fence)");
            if (_state.ReservationHolder != 0 && _state.ReservationHolder == p.Key) _state.ReservationHolder = key;
            p.Key = key;
            Persist();
        }
    }

    internal void Reserve(string port)
    {
        lock (_gate)
        {
            var p = Registered(port);
            if (_state.ReservationHolder == p.Key) return;
            if (_state.ReservationHolder != 0)
                throw Refused(port, ShelfError.ReservationConflict, $"the reservation is held by key 0x{_state.ReservationHolder:x}");
            _state.ReservationHolder = p.Key;
            Persist();
        }
    }

    internal void Preempt(string port, ulong victimKey)
    {
        lock (_gate)
        {
            var p = Registered(port);
            var victim = _state.Ports.Values.FirstOrDefault(v => v.Key == victimKey && v != p);
            if (victimKey == 0 || victim is null) throw new ShelfException(ShelfError.NotRegistered, $"no other port holds key 0x{victimKey:x}");
            victim.Key = 0;
            if (_state.ReservationHolder == victimKey) _state.ReservationHolder = p.Key;
            Persist();
        }
    }

    internal void SetEnabled(string port, bool enabled)
    {
        lock (_gate)
        {
            var p = _state.Ports[port];
            if (enabled && p.Fenced) throw Refused(port, ShelfError.Fenced, $"port {port} is fenced and cannot enable itself");
            p.Enabled = enabled;
            Persist();
        }
    }

    internal void SetMirrorStale(string port, bool stale) => SetRecord(port, stale, static p => ref p.MirrorStale);

    internal void SetLogStale(string port, bool stale) => SetRecord(port, stale, static p => ref p.LogStale);

    delegate ref bool PortRecord(ShelfState.Port port);

    /// <summary>Sets one persisted record of a registered port; the state file is written only when it changed.</summary>
    void SetRecord(string port, bool value, PortRecord record)
    {
        lock (_gate)
        {
            ref bool field = ref record(Registered(port));
            if (field == value) return;
            field = value;
            Persist();
        }
    }

    internal Task FenceAsync(string port, string victim)
    {
        ShelfPorts.Check(victim);
        TaskCompletionSource? wait = null;
        lock (_gate)
        {
            if (victim == port) throw new ShelfException(ShelfError.Invalid, $"port {port} cannot fence itself");
            var p = Registered(port);
            wait = FenceLocked(victim, p.Key);
        }
        return wait?.Task ?? Task.CompletedTask;
    }

    /// <summary>Fences <paramref name="victim"/>; returns what completes when its accepted writes have finished (null: none is in flight).</summary>
    TaskCompletionSource? FenceLocked(string victim, ulong newHolder)
    {
        var v = _state.Ports[victim];
        if (_state.ReservationHolder != 0 && _state.ReservationHolder == v.Key) _state.ReservationHolder = newHolder;
        v.Key = 0;
        v.Enabled = false;
        v.Fenced = true;
        var io = _io[victim];
        io.FenceComplete = io.Writes == 0;
        Persist();
        return io.Writes > 0 ? io.Drained ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously) : null;
    }

    /// <summary>`duet shelf fence PORT` (an administrator's fence). Completes as <see cref="IShelfPort.FenceAsync"/> does.</summary>
    public Task AdminFenceAsync(string victim)
    {
        ShelfPorts.Check(victim);
        TaskCompletionSource? wait;
        lock (_gate) wait = FenceLocked(victim, 0);
        return wait?.Task ?? Task.CompletedTask;
    }

    internal void Unfence(string port, string victim)
    {
        ShelfPorts.Check(victim);
        lock (_gate)
        {
            if (victim == port) throw Refused(port, ShelfError.Fenced, $"port {port} cannot lift its own fence");
            Registered(port);
            UnfenceLocked(victim);
        }
    }

    /// <summary>`duet shelf unfence PORT`: lifts a fence (the port may then register and enable itself).</summary>
    public void AdminUnfence(string victim)
    {
        ShelfPorts.Check(victim);
        lock (_gate) UnfenceLocked(victim);
    }

    void UnfenceLocked(string victim)
    {
        var v = _state.Ports[victim];
        v.Fenced = false;
        v.Enabled = true;
        _io[victim].FenceComplete = false;
        Persist();
    }

    internal IReadOnlyList<ArrayClaim> Claim(string port, IReadOnlyList<ulong> serials, string owner)
    {
        lock (_gate)
        {
            Registered(port);
            var claims = new List<ArrayClaim>(serials.Count);
            foreach (var serial in serials)
            {
                var c = new ArrayClaim(serial, owner, ++_state.EpochCounter);
                _state.Claims[serial] = c;
                claims.Add(c);
            }
            Persist();
            return claims;
        }
    }

    /// <summary>Forgets the claims of arrays that no longer exist (an array deleted by its owner).</summary>
    internal void Release(string port, IReadOnlyList<ulong> serials)
    {
        lock (_gate)
        {
            Registered(port);
            foreach (var s in serials)
                if (_state.Claims.TryGetValue(s, out var c) && c.Owner == port) _state.Claims.Remove(s);
            Persist();
        }
    }

    internal ShelfStatus Heartbeat(string port, ulong beat)
    {
        lock (_gate)
        {
            if (_state.Ports[port].Fenced) throw Refused(port, ShelfError.Fenced, $"port {port} is fenced");
            _heartbeats[port] = beat;
            return StatusLocked();
        }
    }

    // ---- slots ------------------------------------------------------------------------------------

    /// <summary>`duet shelf pull SLOT`: the drive leaves the listing and every request to it fails.</summary>
    public void Pull(string slot)
    {
        lock (_gate)
        {
            if (!_drives.Contains(slot)) throw new ShelfException(ShelfError.NoSuchSlot, $"no drive '{slot}' on the shelf");
            if (_state.Pulled.Add(slot)) Persist();
        }
    }

    /// <summary>`duet shelf insert SLOT`: puts a pulled drive back, with what it held.</summary>
    public void Insert(string slot)
    {
        lock (_gate)
        {
            if (!_drives.Contains(slot)) throw new ShelfException(ShelfError.NoSuchSlot, $"no drive '{slot}' on the shelf");
            if (_state.Pulled.Remove(slot)) Persist();
        }
    }

    internal IReadOnlyList<string> List()
    {
        lock (_gate) return [.. _drives.List().Where(n => !_state.Pulled.Contains(n))];
    }

    internal bool Contains(string name)
    {
        lock (_gate) return _drives.Contains(name) && !_state.Pulled.Contains(name);
    }

    internal long BlockCountOf(string name)
    {
        lock (_gate) return OpenLocked(name).BlockCount;
    }

    internal void Create(string port, string name, long sizeBytes)
    {
        lock (_gate)
        {
            Registered(port);
            if (_drives.Contains(name)) throw new ShelfException(ShelfError.Exists, $"a drive named '{name}' is already on the shelf");
            IBlockDevice d;
            try { d = _drives.Create(name, sizeBytes); }
            catch (ArgumentException e) { throw new ShelfException(ShelfError.Invalid, e.Message); }
            _open[name] = _wrap is null ? d : _wrap(name, d);
        }
    }

    IBlockDevice OpenLocked(string name)
    {
        if (_open.TryGetValue(name, out var d)) return d;
        if (!_drives.Contains(name)) throw new ShelfException(ShelfError.NoSuchSlot, $"no drive '{name}' on the shelf");
        d = _drives.Open(name);
        if (_wrap is not null) d = _wrap(name, d);
        _open[name] = d;
        return d;
    }

    // ---- data -------------------------------------------------------------------------------------

    /// <summary>Admits a data request from <paramref name="port"/> to <paramref name="slot"/>, or throws why not.
    /// An admitted write or flush counts as in flight until <see cref="EndWrite"/>.</summary>
    internal IBlockDevice Admit(string port, string slot, bool write)
    {
        lock (_gate)
        {
            Registered(port);
            if (_state.Pulled.Contains(slot)) throw Refused(port, ShelfError.SlotEmpty, $"slot {slot} is empty (the drive was pulled)");
            var d = OpenLocked(slot);
            if (write) _io[port].Writes++;
            return d;
        }
    }

    internal void EndWrite(string port)
    {
        TaskCompletionSource? drained = null;
        lock (_gate)
        {
            var io = _io[port];
            Invariant.Assert(io.Writes > 0, "a write ended that the shelf never admitted");
            if (io.FenceComplete) _lateWrites++;
            if (--io.Writes == 0 && _state.Ports[port].Fenced) io.FenceComplete = true;
            if (io.Writes == 0 && io.Drained is not null) { drained = io.Drained; io.Drained = null; }
        }
        drained?.TrySetResult();
    }

    public async ValueTask DisposeAsync()
    {
        List<IBlockDevice> open;
        lock (_gate) { open = [.. _open.Values]; _open.Clear(); }
        foreach (var d in open) await d.DisposeAsync();
    }
}
