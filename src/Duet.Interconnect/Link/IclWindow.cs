using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Duet.Interconnect.Link;

/// <summary>
/// A window in memory: a pinned managed array (in-memory and TCP transports) or a mapped
/// file (shared memory). Gives the rings typed access to counters and byte regions.
/// </summary>
internal sealed unsafe class IclWindow : IDisposable
{
    readonly byte* _base;
    readonly PointerMemoryManager _memory;
    readonly object? _keepAlive;
    readonly Action? _release;
    int _disposed;

    IclWindow(byte* p, int length, WindowLayout layout, object? keepAlive, Action? release)
    {
        _base = p;
        Length = length;
        Layout = layout;
        _keepAlive = keepAlive;
        _release = release;
        _memory = new PointerMemoryManager(p, length);
    }

    public int Length { get; }
    public WindowLayout Layout { get; }
    public Span<byte> Span => new(_base, Length);
    public Memory<byte> Memory => _memory.Memory;
    public byte* Pointer => _base;

    /// <summary>A fresh window in a pinned managed array, header written and marked ready.</summary>
    public static IclWindow CreateInMemory(WindowLayout layout, string owner)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("the ICL window layout is little-endian");
        var array = GC.AllocateArray<byte>(layout.TotalBytes, pinned: true);
        var p = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        var w = new IclWindow(p, array.Length, layout, array, null);
        w.Initialize(owner);
        return w;
    }

    /// <summary>Wraps mapped memory; <paramref name="release"/> unmaps it on dispose.</summary>
    public static IclWindow FromPointer(byte* p, int length, WindowLayout layout, Action release) => new(p, length, layout, null, release);

    /// <summary>Writes the header of a zeroed window and then, last, the ready word.</summary>
    public void Initialize(string owner)
    {
        Layout.WriteHeader(Span, owner);
        Volatile.Write(ref Int(WindowLayout.ReadyOffset), 1);
    }

    public ref long Long(int offset) => ref Unsafe.AsRef<long>(_base + offset);
    public ref int Int(int offset) => ref Unsafe.AsRef<int>(_base + offset);

    public ref long Counter(int lane, int which) => ref Long(Layout.Lane(lane).Control + which);
    public ref long Doorbell => ref Long(WindowLayout.DoorbellOffset);
    public ref int Wake => ref Int(WindowLayout.WakeOffset);
    public ref int Sleeping => ref Int(WindowLayout.SleepingOffset);
    public ref long SpaceFreed => ref Long(WindowLayout.SpaceFreedOffset);
    public ref long Accepted => ref Long(WindowLayout.AcceptedOffset);
    public ref int SpaceWanted => ref Int(WindowLayout.SpaceWantedOffset);
    public ref int OwnerPid => ref Int(WindowLayout.OwnerPidOffset);
    public ref long OwnerNonce => ref Long(WindowLayout.OwnerNonceOffset);
    public ref long OwnerStart => ref Long(WindowLayout.OwnerStartOffset);

    public Span<byte> MessageRegion(int lane) { var l = Layout.Lane(lane); return Span.Slice(l.MessageOffset, l.MessageBytes); }
    public Span<byte> DataRegion(int lane) { var l = Layout.Lane(lane); return Span.Slice(l.DataOffset, l.DataBytes); }

    public IclEntry ReadEntry(int lane, long index)
    {
        var l = Layout.Lane(lane);
        return Unsafe.ReadUnaligned<IclEntry>(_base + l.EntriesOffset + (index % l.Entries) * WindowLayout.EntryBytes);
    }

    public void WriteEntry(int lane, long index, in IclEntry e)
    {
        var l = Layout.Lane(lane);
        Unsafe.WriteUnaligned(_base + l.EntriesOffset + (index % l.Entries) * WindowLayout.EntryBytes, e);
    }

    /// <summary>
    /// The bytes [pos, pos+len) of a byte ring as memory: a slice of the window when they do not
    /// wrap, otherwise copied into <paramref name="scratch"/> (grown as needed).
    /// </summary>
    public ReadOnlyMemory<byte> ReadRing(int regionOffset, int capacity, long pos, int len, ref byte[]? scratch)
    {
        if (len == 0) return ReadOnlyMemory<byte>.Empty;
        int start = (int)(pos % capacity);
        if (start + len <= capacity) return Memory.Slice(regionOffset + start, len);
        if (scratch is null || scratch.Length < len) scratch = new byte[Math.Max(len, capacity)];
        RingMath.Read(Span.Slice(regionOffset, capacity), pos, scratch.AsSpan(0, len));
        return scratch.AsMemory(0, len);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _release?.Invoke();
        GC.KeepAlive(_keepAlive);
    }

    sealed class PointerMemoryManager(byte* p, int length) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(p, length);
        public override MemoryHandle Pin(int elementIndex = 0) => new(p + elementIndex);
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
    }
}

/// <summary>
/// Arithmetic of the single-producer/single-consumer rings. Positions are free-running 64-bit
/// counters: the producer owns head, the consumer owns tail, head - tail is the fill, and the
/// bytes of position p lie at p mod capacity. A ring is empty when head == tail and full when
/// head - tail == capacity; no slot is wasted.
/// </summary>
internal static class RingMath
{
    public static long Used(long head, long tail) => head - tail;

    public static bool Fits(long head, long tail, long capacity, long length) => head - tail + length <= capacity;

    /// <summary>Copies <paramref name="src"/> into the ring at <paramref name="pos"/>, wrapping at the end.</summary>
    public static void Write(Span<byte> region, long pos, ReadOnlySpan<byte> src)
    {
        if (src.IsEmpty) return;
        int cap = region.Length;
        int start = (int)(pos % cap);
        int first = Math.Min(src.Length, cap - start);
        src[..first].CopyTo(region[start..]);
        src[first..].CopyTo(region);
    }

    /// <summary>Copies the ring bytes at <paramref name="pos"/> into <paramref name="dst"/>, wrapping at the end.</summary>
    public static void Read(ReadOnlySpan<byte> region, long pos, Span<byte> dst)
    {
        if (dst.IsEmpty) return;
        int cap = region.Length;
        int start = (int)(pos % cap);
        int first = Math.Min(dst.Length, cap - start);
        region.Slice(start, first).CopyTo(dst);
        region[..(dst.Length - first)].CopyTo(dst[first..]);
    }

    /// <summary>The one or two window slices that hold [pos, pos+len) of a ring.</summary>
    public static (Memory<byte> First, Memory<byte> Second) Segments(Memory<byte> region, long pos, int len)
    {
        if (len == 0) return (Memory<byte>.Empty, Memory<byte>.Empty);
        int cap = region.Length;
        int start = (int)(pos % cap);
        int first = Math.Min(len, cap - start);
        return (region.Slice(start, first), region[..(len - first)]);
    }
}

/// <summary>
/// An edge-triggered async signal: take <see cref="WaitTask"/>, check your condition, then
/// await the task; any <see cref="Set"/> after the task was taken completes it.
/// </summary>
internal sealed class AsyncSignal
{
    TaskCompletionSource _tcs = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task WaitTask => Volatile.Read(ref _tcs).Task;

    public void Set()
    {
        var old = Interlocked.Exchange(ref _tcs, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        old.TrySetResult();
    }
}
