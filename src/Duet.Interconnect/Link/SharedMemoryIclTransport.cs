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

/// <summary>One end of a shared-memory link (see <see cref="SharedMemoryIclTransport"/>).</summary>
public sealed unsafe class SharedMemoryIclLink : IclLink
{
    static readonly TimeSpan IdleWait = TimeSpan.FromMilliseconds(100);
    static readonly TimeSpan SearchWait = TimeSpan.FromMilliseconds(10);

    readonly string _localPath;
    readonly string _peerPath;
    readonly Thread _thread;
    IclWindow? _peer;
    DirectSink? _sink;
    volatile bool _stopping;

    internal SharedMemoryIclLink(string localPath, string peerPath, string localName, string peerName, IclWindowOptions options, TimeProvider time)
        : base(localName, peerName, options, time)
    {
        _localPath = localPath;
        _peerPath = peerPath;
        Local = CreateWindow(localPath, WindowLayout.From(options), localName);
        _thread = new Thread(InterruptLoop) { IsBackground = true, Name = $"icl-{localName}" };
        _thread.Start();
    }

    /// <summary>This controller's window file.</summary>
    public string WindowPath => _localPath;
    /// <summary>The peer's window file.</summary>
    public string PeerWindowPath => _peerPath;
    /// <summary>True when the futex is used; false when the interrupt thread polls instead.</summary>
    public static bool FutexAvailable => Futex.Available;

    public override bool IsUp => Volatile.Read(ref _sink) is not null && !IsDisposed;
    private protected override PeerSink? CurrentSink => IsDisposed ? null : Volatile.Read(ref _sink);

    static IclWindow CreateWindow(string path, WindowLayout layout, string owner)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("the ICL window layout is little-endian");
        // A new file (a new inode): a peer that still maps an old window of ours never sees this one half-made.
        File.Delete(path);
        var fs = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        try
        {
            fs.SetLength(layout.TotalBytes);
            var w = Map(fs, layout.TotalBytes, layout);
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
    /// the pump's interrupt and space-freed notifications into the posters' signal. While the
    /// peer's window is not yet there, it looks for it every few milliseconds.
    /// </summary>
    void InterruptLoop()
    {
        var w = Local;
        long doorbell = 0, freed = 0;
        while (!_stopping)
        {
            int wake = Volatile.Read(ref w.Wake);
            bool any = false;
            long d = Volatile.Read(ref w.Doorbell);
            if (d != doorbell) { doorbell = d; Interrupt.Set(); any = true; }
            long f = Volatile.Read(ref w.SpaceFreed);
            if (f != freed) { freed = f; Space.Set(); any = true; }
            if (Volatile.Read(ref _sink) is null && TryConnect()) any = true;
            if (any) continue;
            Interlocked.Exchange(ref w.Sleeping, 1);
            if (Volatile.Read(ref w.Wake) == wake && !_stopping)
                Futex.Wait((int*)(w.Pointer + WindowLayout.WakeOffset), wake, _peer is null ? SearchWait : IdleWait);
            Volatile.Write(ref w.Sleeping, 0);
        }
    }

    bool TryConnect()
    {
        var peer = TryOpenWindow(_peerPath);
        if (peer is null) return false;
        _peer = peer;
        Volatile.Write(ref _sink, new DirectSink(peer, () => Ring(peer)));
        ReportUp(true);
        return true;
    }

    /// <summary>Wakes the owner of <paramref name="w"/> if it sleeps (its wake word has been bumped already).</summary>
    static void Ring(IclWindow w)
    {
        if (Volatile.Read(ref w.Sleeping) != 0) Futex.Wake((int*)(w.Pointer + WindowLayout.WakeOffset));
    }

    private protected override void NotifySpaceFreed(int lane)
    {
        var peer = _peer;
        if (peer is null) return;
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
