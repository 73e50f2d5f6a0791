using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace Duet.Interconnect.Link;

/// <summary>
/// The ICL over shared memory on one host (the software analogue of a PCI/NTB window, ICL-1):
/// each controller's window is a file under /dev/shm named from the pair id and its name,
/// mapped by both controllers. The doorbell is the interrupt word: the sender bumps it and
/// wakes the owner with a futex (shared, not private, since the mapping is shared).
/// </summary>
public static class SharedMemoryIclTransport
{
    public const string DefaultDirectory = "/dev/shm";

    /// <summary>
    /// Creates (or re-creates) this controller's window and starts looking for the peer's; the
    /// link is up once the peer's window is there and valid.
    /// </summary>
    public static SharedMemoryIclLink Open(string pairId, string localName, string peerName, IclWindowOptions options,
        TimeProvider? timeProvider = null, string? directory = null)
    {
        directory ??= DefaultDirectory;
        return new SharedMemoryIclLink(WindowPath(directory, pairId, localName), WindowPath(directory, pairId, peerName),
            localName, peerName, options, timeProvider ?? TimeProvider.System);
    }

    /// <summary>The window file of controller <paramref name="name"/> in pair <paramref name="pairId"/>: duet-icl-{pairId}-{name}.</summary>
    public static string WindowPath(string directory, string pairId, string name)
    {
        foreach (var part in new[] { pairId, name })
        {
            ArgumentException.ThrowIfNullOrWhiteSpace(part);
            if (part.IndexOfAny(['/', '\\', '\0']) >= 0 || part is "." or "..")
                throw new ArgumentException($"'{part}' cannot be part of a window file name");
        }
        return Path.Combine(directory, $"duet-icl-{pairId}-{name}");
    }
}

/// <summary>
/// One end of a shared-memory link (see <see cref="SharedMemoryIclTransport"/>).
///
/// Sessions and liveness. Every window made records its owner's process id and a fresh random
/// session nonce in its header. The two ends pair up by a handshake through the windows: an end
/// that maps a peer window (nonce p) first drops what an earlier producer left queued in its own
/// window (<c>DiscardPending</c>), then writes p into its own window's accepted word. It is up when
/// it has accepted the peer and the peer's window has accepted this end's nonce; only then does it
/// post, so nothing a new peer sends is mistaken for a leftover of the old one. Ring counters are
/// never reset: the producer writes bytes, then message/data heads, then the entry head (the commit
/// point), and a new session continues from the heads found in the window; bytes a dead producer
/// wrote past its last committed entry are skipped by the consumer's next release. The interrupt
/// thread probes the peer every <see cref="ProbeInterval"/>: its window file gone or re-created
/// (another nonce at the path), or its owner process gone (kill(pid, 0) = ESRCH, or a zombie),
/// marks the link down at once: waiting posts fail with <see cref="IclLinkDownException"/>, and a
/// window that later appears with a new nonce and a live owner starts a new session. Mappings of a
/// dead peer's window are kept (unused) until this end is disposed, since a post or a release may
/// still be touching them when the peer is found dead.
/// </summary>
public sealed unsafe partial class SharedMemoryIclLink : IclLink
{
    /// <summary>How often the interrupt thread checks that the peer's window and process are still there.</summary>
    public static readonly TimeSpan ProbeInterval = TimeSpan.FromMilliseconds(50);
    static readonly TimeSpan IdleWait = ProbeInterval;
    static readonly TimeSpan SearchWait = TimeSpan.FromMilliseconds(10);

    readonly string _localPath;
    readonly string _peerPath;
    readonly Thread _thread;
    readonly long _nonce;
    readonly List<IclWindow> _retired = [];
    IclWindow? _peer;
    long _peerNonce;
    long _deadNonce;
    /// <summary>The process of the peer this end last paired with: one snapshot, read by other threads too (kept after
    /// the peer is lost: <see cref="PeerProcessGone"/>).</summary>
    PeerProcess? _lastPeer;
    DirectSink? _sink;
    int _sessions;
    volatile bool _stopping;

    internal SharedMemoryIclLink(string localPath, string peerPath, string localName, string peerName, IclWindowOptions options, TimeProvider time)
        : base(localName, peerName, options, time)
    {
        _localPath = localPath;
        _peerPath = peerPath;
        do _nonce = BitConverter.ToInt64(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8)); while (_nonce == 0);
        Local = CreateWindow(localPath, WindowLayout.From(options), localName, Environment.ProcessId, StartTime(Environment.ProcessId), _nonce);
        _thread = new Thread(InterruptLoop) { IsBackground = true, Name = $"icl-{localName}" };
        _thread.Start();
    }

    /// <summary>This controller's window file.</summary>
    public string WindowPath => _localPath;
    /// <summary>The peer's window file.</summary>
    public string PeerWindowPath => _peerPath;
    /// <summary>This end's session nonce (recorded in its window header).</summary>
    public long SessionNonce => _nonce;
    /// <summary>How many times the link has come up (peer sessions paired with).</summary>
    public int Sessions => Volatile.Read(ref _sessions);
    /// <summary>True when the futex is used; false when the interrupt thread polls instead.</summary>
    public static bool FutexAvailable => Futex.Available;

    public override bool IsUp => Volatile.Read(ref _sink) is not null && !IsDisposed;
    private protected override PeerSink? CurrentSink => IsDisposed ? null : Volatile.Read(ref _sink);

    static IclWindow CreateWindow(string path, WindowLayout layout, string owner, int pid, long start, long nonce)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("the ICL window layout is little-endian");
        // A new file (a new inode): a peer that still maps an old window of ours never sees this one half-made.
        File.Delete(path);
        var fs = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        try
        {
            fs.SetLength(layout.TotalBytes);
            var w = Map(fs, layout.TotalBytes, layout);
            w.OwnerPid = pid;
            w.OwnerNonce = nonce;
            w.OwnerStart = start;
            w.Initialize(owner); // the ready word last
            return w;
        }
        catch
        {
            fs.Dispose();
            File.Delete(path);
            throw;
        }
    }

    /// <summary>What the header of the window file at a path says about its owner, read without mapping it.</summary>
    enum PeerState { Absent, Unreadable, Present }

    static PeerState ReadIdentity(string path, out long nonce, out int pid, out long start)
    {
        nonce = 0; pid = 0; start = 0;
        Span<byte> h = stackalloc byte[WindowLayout.HeaderBytes];
        try
        {
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            if (RandomAccess.Read(handle, h, 0) < h.Length) return PeerState.Unreadable;
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            return PeerState.Absent;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return PeerState.Unreadable;
        }
        if (System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(h[WindowLayout.ReadyOffset..]) != 1) return PeerState.Unreadable;
        nonce = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(h[WindowLayout.OwnerNonceOffset..]);
        pid = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(h[WindowLayout.OwnerPidOffset..]);
        start = System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(h[WindowLayout.OwnerStartOffset..]);
        return PeerState.Present;
    }

    static IclWindow? TryOpenWindow(string path)
    {
        FileStream fs;
        try
        {
            fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
        long length = fs.Length;
        if (length < WindowLayout.HeaderBytes || length > int.MaxValue)
        {
            fs.Dispose();
            return null;
        }
        var header = WindowLayout.Build(1, 64, 2, 1, 64, 0); // a placeholder layout, only to read the header
        var w = Map(fs, (int)length, header);
        if (Volatile.Read(ref w.Int(WindowLayout.ReadyOffset)) != 1 || WindowLayout.ReadHeader(w.Span, out _) is not { } layout || layout.TotalBytes != length)
        {
            w.Dispose();
            return null;
        }
        var real = IclWindow.FromPointer(w.Pointer, w.Length, layout, w.Dispose);
        return real;
    }

    static IclWindow Map(FileStream fs, int length, WindowLayout layout)
    {
        var mmf = MemoryMappedFile.CreateFromFile(fs, null, length, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = mmf.CreateViewAccessor(0, length, MemoryMappedFileAccess.ReadWrite);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            var v = view;
            return IclWindow.FromPointer(p + view.PointerOffset, length, layout, () =>
            {
                v.SafeMemoryMappedViewHandle.ReleasePointer();
                v.Dispose();
                mmf.Dispose();
            });
        }
        catch
        {
            view?.Dispose();
            mmf.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The I/O shell: sleeps in FUTEX_WAIT on this window's wake word, and turns doorbells into
    /// the pump's interrupt and space-freed notifications into the posters' signal. While there is
    /// no peer it looks for its window every few milliseconds; while there is one it probes it
    /// every <see cref="ProbeInterval"/>.
    /// </summary>
    void InterruptLoop()
    {
        var w = Local;
        long doorbell = 0, freed = 0;
        long nextProbe = 0;
        long probeTicks = (long)(ProbeInterval.TotalSeconds * Time.TimestampFrequency); // the injected clock
        while (!_stopping)
        {
            int wake = Volatile.Read(ref w.Wake);
            bool any = false;
            long d = Volatile.Read(ref w.Doorbell);
            if (d != doorbell)
            {
                doorbell = d;
                PumpInline();
                if (_stopping) break; // disposed from a handler: the window may be going
                any = true;
            }
            long f = Volatile.Read(ref w.SpaceFreed);
            if (f != freed) { freed = f; Space.Set(); any = true; }
            long now = Time.GetTimestamp();
            if (_peer is not null && now >= nextProbe)
            {
                nextProbe = now + probeTicks;
                if (!PeerAlive()) { PeerLost(); any = true; }
            }
            if (_peer is null && TryAccept()) { nextProbe = now + probeTicks; any = true; }
            if (_peer is { } p && Volatile.Read(ref _sink) is null && Volatile.Read(ref p.Accepted) == _nonce && !_stopping)
            {
                Interlocked.Increment(ref _sessions);
                Volatile.Write(ref _sink, new DirectSink(p, () => Ring(p)));
                ReportUp(true);
                any = true;
            }
            if (any) continue;
            Interlocked.Exchange(ref w.Sleeping, 1);
            if (Volatile.Read(ref w.Wake) == wake && !_stopping)
                Futex.Wait((int*)(w.Pointer + WindowLayout.WakeOffset), wake, _peer is null || Volatile.Read(ref _sink) is null ? SearchWait : IdleWait);
            Volatile.Write(ref w.Sleeping, 0);
        }
    }

    sealed record PeerProcess(int Pid, long Start);

    /// <summary>
    /// The process of the peer last paired with is gone (kill(pid, 0) finds none, or a zombie, or another process
    /// under its id: another start time), and no later process of the peer is there either: the peer's window file
    /// is absent or names a process that is not alive. A controller makes its window before it can hold a lease,
    /// so a later process that might hold one shows in the window; a window being made (not readable yet) proves
    /// nothing. Errors reading /proc prove nothing, and neither does a peer in this very process (the in-process
    /// tests' pairs).
    /// </summary>
    public override bool PeerProcessGone
    {
        get
        {
            if (Volatile.Read(ref _lastPeer) is not { } p || p.Pid == Environment.ProcessId || ProcessAlive(p.Pid, p.Start)) return false;
            return ReadIdentity(_peerPath, out _, out int pid, out long start) switch
            {
                PeerState.Absent => true,
                PeerState.Present => pid != Environment.ProcessId && !ProcessAlive(pid, start),
                _ => false,
            };
        }
    }

    /// <summary>The peer's window is still the one mapped, and its owner process still runs.</summary>
    bool PeerAlive()
    {
        var state = ReadIdentity(_peerPath, out long nonce, out _, out _);
        if (state == PeerState.Absent) return false;
        if (state == PeerState.Present && nonce != _peerNonce) return false;
        return Volatile.Read(ref _lastPeer) is { } p && ProcessAlive(p.Pid, p.Start);
    }

    /// <summary>Maps a peer window with a new nonce and a live owner, and accepts it as this window's producer.</summary>
    bool TryAccept()
    {
        if (ReadIdentity(_peerPath, out long nonce, out int pid, out long start) != PeerState.Present) return false;
        if (nonce == _deadNonce || !ProcessAlive(pid, start)) return false;
        var peer = TryOpenWindow(_peerPath);
        if (peer is null) return false;
        if (Volatile.Read(ref peer.OwnerNonce) != nonce) { peer.Dispose(); return false; } // re-created meanwhile: look again
        _peer = peer;
        _peerNonce = nonce;
        Volatile.Write(ref _lastPeer, new PeerProcess(pid, start));
        // Whatever an earlier producer left in our window is not for this session: drop it before
        // the new peer may post (it posts only once it sees its nonce accepted here).
        DiscardPending();
        Volatile.Write(ref Local.Accepted, nonce);
        Interlocked.Increment(ref peer.Wake);
        Ring(peer);
        return true;
    }

    void PeerLost()
    {
        var old = _peer;
        _deadNonce = _peerNonce;
        Volatile.Write(ref Local.Accepted, 0);
        _peer = null;
        if (old is not null) lock (_retired) _retired.Add(old); // still touched by a post or release in flight
        Interlocked.Exchange(ref _sink, null)?.Kill();
        DiscardPending();
        ReportUp(false);
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    /// <summary>
    /// kill(pid, 0): false for ESRCH, a zombie, or another process under the same pid (its start
    /// time differs from the one recorded); true when the pid is not recorded (0) or the check is not possible.
    /// </summary>
    static bool ProcessAlive(int pid, long start)
    {
        if (pid <= 0 || pid == Environment.ProcessId || !OperatingSystem.IsLinux()) return true;
        try
        {
            if (Kill(pid, 0) == -1 && Marshal.GetLastPInvokeError() == 3 /* ESRCH */) return false;
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return true;
        }
        try
        {
            // A killed child not yet reaped by its parent still answers kill(); its state is Z.
            var fields = StatFields(pid);
            if (fields is null) return true;
            if (fields[0] is "Z" or "X") return false;
            if (start != 0 && fields.Length > 19 && long.TryParse(fields[19], out long now) && now != start) return false;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { }
        return true;
    }

    /// <summary>The fields of /proc/{pid}/stat after the command name: [0] is the state (field 3), [19] the start time (field 22).</summary>
    static string[]? StatFields(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        int close = stat.LastIndexOf(')');
        return close < 0 || close + 2 >= stat.Length ? null : stat[(close + 2)..].Split(' ');
    }

    static long StartTime(int pid)
    {
        if (!OperatingSystem.IsLinux()) return 0;
        try
        {
            return StatFields(pid) is { Length: > 19 } f && long.TryParse(f[19], out long t) ? t : 0;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }

    /// <summary>Wakes the owner of <paramref name="w"/> if it sleeps (its wake word has been bumped already).</summary>
    static void Ring(IclWindow w)
    {
        if (Volatile.Read(ref w.Sleeping) != 0) Futex.Wake((int*)(w.Pointer + WindowLayout.WakeOffset));
    }

    /// <summary>Tells the producer that space was freed, only when it said it waits for some (spaceWanted):
    /// otherwise every transfer taken would wake its interrupt thread for nothing.</summary>
    private protected override void NotifySpaceFreed(int lane)
    {
        var peer = _peer;
        if (peer is null) return;
        Interlocked.MemoryBarrier(); // the tails written before this are visible before the flag is read (see DirectSink.WantSpace)
        if (Volatile.Read(ref Local.SpaceWanted) == 0 || Interlocked.Exchange(ref Local.SpaceWanted, 0) == 0) return;
        Interlocked.Increment(ref peer.SpaceFreed);
        Interlocked.Increment(ref peer.Wake);
        CounterSet.SpaceNotification();
        Ring(peer);
    }

    private protected override ValueTask StopTransportAsync()
    {
        _stopping = true;
        Interlocked.Increment(ref Local.Wake);
        Futex.Wake((int*)(Local.Pointer + WindowLayout.WakeOffset));
        if (Thread.CurrentThread != _thread) _thread.Join(); // (disposed from an UpChanged handler on that thread: it ends by itself)
        Interlocked.Exchange(ref _sink, null)?.Kill();
        return ValueTask.CompletedTask;
    }

    private protected override void ReleaseWindows()
    {
        _peer?.Dispose();
        lock (_retired)
        {
            foreach (var w in _retired) w.Dispose();
            _retired.Clear();
        }
        Local.Dispose();
        try { File.Delete(_localPath); } catch (IOException) { }
    }
}

/// <summary>
/// futex(2) through libc's syscall(): FUTEX_WAIT and FUTEX_WAKE without FUTEX_PRIVATE_FLAG,
/// because the word lives in a mapping shared between processes. Where there is no futex
/// (not Linux, an unknown architecture, ENOSYS) Wait is a short bounded sleep (poll).
/// </summary>
internal static unsafe partial class Futex
{
    const int FutexWait = 0;
    const int FutexWake = 1;
    static readonly long SysFutex = !OperatingSystem.IsLinux() ? -1 : RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 202,
        Architecture.Arm64 => 98,
        _ => -1,
    };
    static volatile bool _broken;

    public static bool Available => SysFutex > 0 && !_broken;

    [StructLayout(LayoutKind.Sequential)]
    struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, int* address, int op, int value, Timespec* timeout, int* address2, int value3);

    /// <summary>Sleeps while *address == expected, at most <paramref name="timeout"/>.</summary>
    public static void Wait(int* address, int expected, TimeSpan timeout)
    {
        if (!Available)
        {
            Thread.Sleep(1); // the shell's fallback poll
            return;
        }
        var ts = new Timespec { Seconds = (long)timeout.TotalSeconds, Nanoseconds = (timeout.Ticks % TimeSpan.TicksPerSecond) * 100 };
        try
        {
            if (Syscall(SysFutex, address, FutexWait, expected, &ts, null, 0) == -1 && Marshal.GetLastPInvokeError() == 38 /* ENOSYS */)
                _broken = true;
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            _broken = true;
        }
    }

    /// <summary>Wakes every waiter on <paramref name="address"/>.</summary>
    public static void Wake(int* address)
    {
        if (!Available) return;
        try
        {
            Syscall(SysFutex, address, FutexWake, int.MaxValue, null, null, 0);
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            _broken = true;
        }
    }
}
