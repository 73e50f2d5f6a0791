using System.IO.MemoryMappedFiles;
using Duet.Core;

namespace Duet.Cache.Nvram;

/// <summary>
/// A controller's NVRAM: a file mapped shared into the process. Every store into the mapping
/// lands in the kernel's page cache, which belongs to the file, not to the process, so after
/// <c>kill -9</c> every completed store is in the file: that is what "non-volatile" means
/// here (ARCHITECTURE.md). A power cut is different: only what <see cref="Flush"/> (msync)
/// reached the disk survives, and the CRCs in the descriptors catch whatever tore.
///
/// The file is held with an exclusive lock (FileShare.None, flock on Linux) so two processes
/// never map the same NVRAM; the kernel drops the lock when the holder dies.
///
/// Layout: <see cref="NvramLayout"/>; header: <c>NvramHeader</c>; format:
/// docs/internals/nvram.md. Spans from <see cref="NvramRegion.Data"/> point into the mapping
/// and must not be used after <see cref="Dispose"/>.
///
/// The same NVRAM can live in a caller-owned <see cref="NvramStore"/> instead of a file (the
/// simulator's NVRAM, which outlives a crashed controller): same header, descriptors and
/// regions, no mapping, no msync. See <see cref="OpenOrCreate(NvramStore, NvramLayout, string, Guid)"/>.
/// </summary>
public sealed unsafe class NvramFile : IDisposable
{
    readonly string _path;
    // Exactly one of (_stream, _map, _view) and _store is set.
    readonly FileStream? _stream;
    readonly MemoryMappedFile? _map;
    readonly MemoryMappedViewAccessor? _view;
    readonly NvramStore? _store;
    readonly byte* _base;
    readonly Lock _headerGate = new();
    NvramHeader _header;
    int _disposed;

    NvramFile(string path, FileStream stream, NvramLayout layout, NvramHeader header)
    {
        _path = path;
        _stream = stream;
        Layout = layout;
        _header = header;
        Invariant.Assert(stream.Length == layout.TotalBytes);
        _map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0, MemoryMappedFileAccess.ReadWrite,
            HandleInheritability.None, leaveOpen: true);
        _view = _map.CreateViewAccessor(0, layout.TotalBytes, MemoryMappedFileAccess.ReadWrite);
        byte* pointer = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        Invariant.Assert(_view.PointerOffset == 0);
        _base = pointer;
        Prefault(pointer, layout.TotalBytes);
        Own = new NvramRegion(this, 1, _base + layout.DescriptorTable1Offset, _base + layout.Region1Offset, _base + layout.Log1Offset, _base + layout.Tags1Offset);
        Peer = new NvramRegion(this, 2, _base + layout.DescriptorTable2Offset, _base + layout.Region2Offset, _base + layout.Log2Offset, _base + layout.Tags2Offset);
    }

    NvramFile(NvramStore store, NvramLayout layout, NvramHeader header)
    {
        _path = store.Name;
        _store = store;
        Layout = layout;
        _header = header;
        Invariant.Assert(store.Length == layout.TotalBytes);
        _base = store.Pointer;
        Own = new NvramRegion(this, 1, _base + layout.DescriptorTable1Offset, _base + layout.Region1Offset, _base + layout.Log1Offset, _base + layout.Tags1Offset);
        Peer = new NvramRegion(this, 2, _base + layout.DescriptorTable2Offset, _base + layout.Region2Offset, _base + layout.Log2Offset, _base + layout.Tags2Offset);
        store.Holder = this;
    }

    public NvramLayout Layout { get; }

    /// <summary>
    /// Touches every page of the mapping once, at open: NVRAM is memory the controller owns whole, and a page first
    /// touched on the write path (a takeover adopting thousands of the peer's elements into parts of region 1 this
    /// controller had never used) costs a page fault each there instead (tens of milliseconds of a takeover).
    /// Reading keeps the contents; on tmpfs a read fault of a shared mapping allocates the page.
    /// </summary>
    static void Prefault(byte* p, long bytes)
    {
        int sum = 0;
        for (long at = 0; at < bytes; at += Environment.SystemPageSize) sum += Volatile.Read(ref p[at]);
        GC.KeepAlive(sum);
    }

    /// <summary>The 64-byte descriptor of partial-parity entry <paramref name="slot"/> (<see cref="PartialParityLog"/> encodes it).</summary>
    public Span<byte> PpDescriptor(int slot)
    {
        ThrowIfDisposed();
        if ((uint)slot >= (uint)Layout.PpSlots) throw new ArgumentOutOfRangeException(nameof(slot), slot, $"partial-parity slots are 0..{Layout.PpSlots - 1}");
        return new Span<byte>(_base + Layout.PpDescriptorsOffset + (long)slot * NvramLayout.PpDescriptorBytes, NvramLayout.PpDescriptorBytes);
    }

    /// <summary>The 4 KiB block of partial-parity entry <paramref name="slot"/>.</summary>
    public Span<byte> PpBlock(int slot)
    {
        ThrowIfDisposed();
        if ((uint)slot >= (uint)Layout.PpSlots) throw new ArgumentOutOfRangeException(nameof(slot), slot, $"partial-parity slots are 0..{Layout.PpSlots - 1}");
        return new Span<byte>(_base + Layout.PpBlocksOffset + (long)slot * NvramLayout.PpBlockBytes, NvramLayout.PpBlockBytes);
    }

    /// <summary>The NVRAM format this build reads and writes (header bytes 8-11); both controllers of a pair
    /// must use the same one (their <c>PairHello</c> says which).</summary>
    public const uint FormatVersion = NvramHeader.FormatVersion;
    /// <summary>The file's path, or the store's name.</summary>
    public string Path => _path;
    public string Owner => _header.Owner;
    public Guid PairId => _header.PairId;

    /// <summary>Region 1: this controller's own write-back cache.</summary>
    public NvramRegion Own { get; }

    /// <summary>Region 2: the mirror of the peer's region 1, same element indices (CC-1).</summary>
    public NvramRegion Peer { get; }

    public NvramRegion Region(int number) => number switch
    {
        1 => Own,
        2 => Peer,
        _ => throw new ArgumentOutOfRangeException(nameof(number), number, "NVRAM regions are 1 and 2"),
    };

    /// <summary>Number of opens of this file, the creating one included (Create sets 1).</summary>
    public ulong Generation => _header.Generation;

    /// <summary>
    /// The ownership epoch this NVRAM's contents belong to (FO-7). Setting it writes both header
    /// copies and syncs the header page before returning.
    /// </summary>
    public ulong Epoch
    {
        get => _header.Epoch;
        set
        {
            lock (_headerGate)
            {
                ThrowIfDisposed();
                WriteHeader(_header with { Epoch = value, UpdateCount = _header.UpdateCount + 1 });
            }
        }
    }

    /// <summary>Creates a new NVRAM file, zeroed (sparse), with generation 1 and epoch 0.</summary>
    public static NvramFile Create(string path, NvramLayout layout, string owner, Guid pairId)
    {
        ArgumentNullException.ThrowIfNull(layout);
        if (NvramHeader.OwnerProblem(owner) is { } ownerProblem) throw new ArgumentException(ownerProblem, nameof(owner));
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e) when (File.Exists(path))
        {
            throw new NvramException($"NVRAM {path}: cannot create, the file already exists", e);
        }
        try
        {
            stream.SetLength(layout.TotalBytes);
            stream.Flush(flushToDisk: true);
            var header = NvramHeader.From(layout, owner, pairId, epoch: 0, generation: 1, updateCount: 1);
            var file = new NvramFile(path, stream, layout, header);
            file.WriteHeader(header);
            return file;
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens an existing NVRAM file, checking magic, version, CRC and layout, and counts the
    /// open (generation + 1). Any damage is an <see cref="NvramException"/> naming it.
    /// </summary>
    public static NvramFile Open(string path)
    {
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
        }
        catch (FileNotFoundException e)
        {
            throw new NvramException($"NVRAM {path}: no such file", e);
        }
        catch (IOException e)
        {
            throw new NvramException($"NVRAM {path}: cannot open ({e.Message}); is another controller process using it?", e);
        }
        try
        {
            var (header, layout) = ReadHeader(path, stream);
            var file = new NvramFile(path, stream, layout, header);
            file.WriteHeader(header with { Generation = header.Generation + 1, UpdateCount = header.UpdateCount + 1 });
            return file;
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens the file if it exists, else creates it. An existing file must have the same layout,
    /// owner and pair id: a mismatch is an <see cref="NvramException"/>, never a silent reset,
    /// because the file may hold acknowledged writes.
    /// </summary>
    public static NvramFile OpenOrCreate(string path, NvramLayout layout, string owner, Guid pairId)
    {
        ArgumentNullException.ThrowIfNull(layout);
        if (!File.Exists(path)) return Create(path, layout, owner, pairId);
        var file = Open(path);
        if (file.Mismatch(layout, owner, pairId) is not { } problem) return file;
        file.Dispose();
        throw new NvramException($"NVRAM {path}: {problem}; refusing to reuse it");
    }

    /// <summary>
    /// Opens the NVRAM held in <paramref name="store"/>, or formats it (generation 1, epoch 0) if it
    /// has never held one (an all-zero header page). The same checks as a file's: a damaged header,
    /// another layout, owner or pair id is an <see cref="NvramException"/>. The store outlives the
    /// returned object: <see cref="Dispose"/> leaves its bytes alone, and a controller that is
    /// simply dropped (a simulated crash) leaves exactly the stores it completed, as
    /// <c>kill -9</c> leaves a file's page cache. Opening the store again supersedes the previous
    /// object over it, which then throws <see cref="ObjectDisposedException"/> on every use.
    /// </summary>
    public static NvramFile OpenOrCreate(NvramStore store, NvramLayout layout, string owner, Guid pairId)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(layout);
        if (NvramHeader.OwnerProblem(owner) is { } ownerProblem) throw new ArgumentException(ownerProblem, nameof(owner));
        var page = store.Span[..NvramLayout.HeaderBytes];
        if (!page.ContainsAnyExcept((byte)0))
        {
            if (store.Length != layout.TotalBytes)
                throw new NvramException($"NVRAM {store.Name}: the store is {store.Length} bytes but the layout needs {layout.TotalBytes}");
            var header = NvramHeader.From(layout, owner, pairId, epoch: 0, generation: 1, updateCount: 1);
            var created = new NvramFile(store, layout, header);
            created.WriteHeader(header);
            return created;
        }
        var (found, foundLayout) = DecodeHeader(store.Name, page, store.Length);
        var file = new NvramFile(store, foundLayout, found);
        file.WriteHeader(found with { Generation = found.Generation + 1, UpdateCount = found.UpdateCount + 1 });
        if (file.Mismatch(layout, owner, pairId) is not { } problem) return file;
        file.Dispose();
        throw new NvramException($"NVRAM {store.Name}: {problem}; refusing to reuse it");
    }

    string? Mismatch(NvramLayout layout, string owner, Guid pairId) =>
        CompatibilityProblem(Layout, layout) is { } layoutProblem ? $"its layout is not the one asked for: {layoutProblem}"
        : Owner != owner ? $"it belongs to controller '{Owner}', not '{owner}'"
        : PairId != pairId ? $"it belongs to pair {PairId}, not {pairId}"
        : null;

    /// <summary>
    /// Null if two controllers with these layouts may form a pair; otherwise why not. CC-1: the
    /// peer mirrors element e into its element e, so the layouts must be equal.
    /// </summary>
    public static string? CompatibilityProblem(NvramLayout a, NvramLayout b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (a == b) return null;
        var differences = new List<string>();
        if (a.TotalBytes != b.TotalBytes) differences.Add($"size {Units.FormatSize(a.TotalBytes)} vs {Units.FormatSize(b.TotalBytes)}");
        if (a.ElementBytes != b.ElementBytes) differences.Add($"element size {a.ElementBytes} vs {b.ElementBytes} bytes");
        if (a.ElementCount != b.ElementCount) differences.Add($"element count {a.ElementCount} vs {b.ElementCount}");
        if (a.Region1Offset != b.Region1Offset || a.Region2Offset != b.Region2Offset) differences.Add("region offsets differ");
        if (a.Log1Offset != b.Log1Offset || a.Log2Offset != b.Log2Offset || a.Tags1Offset != b.Tags1Offset || a.Tags2Offset != b.Tags2Offset
            || a.PpDescriptorsOffset != b.PpDescriptorsOffset || a.PpSlots != b.PpSlots)
            differences.Add("write-log, host-tag-table or partial-parity offsets differ");
        Invariant.Assert(differences.Count > 0);
        return $"the NVRAM layouts differ ({string.Join("; ", differences)}); both controllers of a pair must have the same NVRAM layout (CC-1)";
    }

    /// <summary>msync of the whole mapping: for power loss. A killed process needs nothing. (A store: nothing to do.)</summary>
    public void Flush()
    {
        ThrowIfDisposed();
        FlushRange(0, Layout.TotalBytes);
    }

    internal void FlushRange(long offset, long length)
    {
        if (_view is null) return; // a store: its bytes are all there is
        if (Msync.Supported) Msync.Range((nint)_base, offset, length);
        else _view.Flush();
    }

    internal void ThrowIfDisposed() =>
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0 || (_store is not null && !ReferenceEquals(_store.Holder, this)), this);

    /// <summary>Unmaps and closes the file; over a store, only lets go of it (the store keeps its bytes).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_store is not null)
        {
            Interlocked.CompareExchange(ref _store.Holder, null, this);
            return;
        }
        _view!.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map!.Dispose();
        _stream!.Dispose();
    }

    public override string ToString() => $"NVRAM {_path} (owner {Owner}, pair {PairId}, epoch {Epoch}, generation {Generation})";

    /// <summary>Copy A, sync, copy B, sync: a cut leaves one copy whole.</summary>
    void WriteHeader(NvramHeader header)
    {
        Span<byte> copy = stackalloc byte[NvramHeader.CopyBytes];
        header.Encode(copy);
        var page = new Span<byte>(_base, NvramLayout.HeaderBytes);
        copy.CopyTo(page.Slice(NvramHeader.CopyAOffset, NvramHeader.CopyBytes));
        FlushRange(0, NvramLayout.HeaderBytes);
        copy.CopyTo(page.Slice(NvramHeader.CopyBOffset, NvramHeader.CopyBytes));
        FlushRange(0, NvramLayout.HeaderBytes);
        _header = header;
    }

    static (NvramHeader, NvramLayout) ReadHeader(string path, FileStream stream)
    {
        long length = stream.Length;
        if (length < NvramLayout.HeaderBytes)
            throw new NvramException($"NVRAM {path}: the file is {length} bytes, too short to hold the {NvramLayout.HeaderBytes}-byte header");
        var block = new byte[NvramLayout.HeaderBytes];
        int read = RandomAccess.Read(stream.SafeFileHandle, block, 0);
        Invariant.Assert(read == block.Length);
        return DecodeHeader(path, block, length);
    }

    /// <summary>The newer whole header copy of the header page, and the layout it describes, which must
    /// cover exactly <paramref name="length"/> bytes.</summary>
    static (NvramHeader, NvramLayout) DecodeHeader(string path, ReadOnlySpan<byte> block, long length)
    {
        var a = NvramHeader.TryDecode(block.Slice(NvramHeader.CopyAOffset, NvramHeader.CopyBytes), out var problemA);
        var b = NvramHeader.TryDecode(block.Slice(NvramHeader.CopyBOffset, NvramHeader.CopyBytes), out var problemB);
        var header = (a, b) switch
        {
            (null, null) => throw new NvramException(problemA == problemB
                ? $"NVRAM {path}: {problemA} (both header copies)"
                : $"NVRAM {path}: no usable header: copy A: {problemA}; copy B: {problemB}"),
            (not null, null) => a,
            (null, not null) => b,
            _ => a!.UpdateCount >= b!.UpdateCount ? a : b,
        };
        var layout = header.Layout(out var layoutProblem)
            ?? throw new NvramException($"NVRAM {path}: {layoutProblem}");
        if (length != layout.TotalBytes)
            throw new NvramException($"NVRAM {path}: the file is {length} bytes but its header says {layout.TotalBytes} (truncated or extended?)");
        return (header, layout);
    }
}

/// <summary>
/// Memory that holds an NVRAM image for <see cref="NvramFile.OpenOrCreate(NvramStore, NvramLayout, string, Guid)"/>:
/// a pinned array (it never moves, so the NVRAM code's pointers stay valid) owned by the caller
/// and outliving every <see cref="NvramFile"/> opened over it. A fresh store is zeroed, which
/// reads as "never formatted". One NvramFile uses a store at a time (the newest opened).
/// </summary>
public sealed unsafe class NvramStore
{
    readonly byte[] _bytes;

    /// <param name="totalBytes">The layout's <see cref="NvramLayout.TotalBytes"/>.</param>
    /// <param name="name">For messages, in place of a file's path.</param>
    public NvramStore(long totalBytes, string name = "memory")
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(totalBytes, NvramLayout.HeaderBytes);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(totalBytes, Array.MaxLength);
        _bytes = GC.AllocateArray<byte>((int)totalBytes, pinned: true);
        Name = name;
    }

    /// <summary>A store sized for <paramref name="layout"/>.</summary>
    public static NvramStore For(NvramLayout layout, string name = "memory")
    {
        ArgumentNullException.ThrowIfNull(layout);
        return new NvramStore(layout.TotalBytes, name);
    }

    public string Name { get; }
    public long Length => _bytes.Length;

    /// <summary>The whole image (checkers, and tests that damage it on purpose).</summary>
    public Span<byte> Span => _bytes;

    internal byte* Pointer => (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(_bytes));

    // The NvramFile now using the store; an older one over it is stale.
    internal NvramFile? Holder;
}
