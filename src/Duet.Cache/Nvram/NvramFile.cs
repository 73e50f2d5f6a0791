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
/// </summary>
public sealed unsafe class NvramFile : IDisposable
{
    readonly string _path;
    readonly FileStream _stream;
    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
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
        Own = new NvramRegion(this, 1, _base + layout.DescriptorTable1Offset, _base + layout.Region1Offset);
        Peer = new NvramRegion(this, 2, _base + layout.DescriptorTable2Offset, _base + layout.Region2Offset);
    }

    public NvramLayout Layout { get; }
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
        string? problem = null;
        if (CompatibilityProblem(file.Layout, layout) is { } layoutProblem) problem = $"its layout is not the one asked for: {layoutProblem}";
        else if (file.Owner != owner) problem = $"it belongs to controller '{file.Owner}', not '{owner}'";
        else if (file.PairId != pairId) problem = $"it belongs to pair {file.PairId}, not {pairId}";
        if (problem is null) return file;
        file.Dispose();
        throw new NvramException($"NVRAM {path}: {problem}; refusing to reuse it");
    }

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
        Invariant.Assert(differences.Count > 0);
        return $"the NVRAM layouts differ ({string.Join("; ", differences)}); both controllers of a pair must have the same NVRAM layout (CC-1)";
    }

    /// <summary>msync of the whole mapping: for power loss. A killed process needs nothing.</summary>
    public void Flush()
    {
        ThrowIfDisposed();
        if (Msync.Supported) Msync.Range((nint)_base, 0, Layout.TotalBytes);
        else _view.Flush();
    }

    internal void FlushRange(long offset, long length)
    {
        if (Msync.Supported) Msync.Range((nint)_base, offset, length);
        else _view.Flush();
    }

    internal void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
        _stream.Dispose();
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
        var a = NvramHeader.TryDecode(block.AsSpan(NvramHeader.CopyAOffset, NvramHeader.CopyBytes), out var problemA);
        var b = NvramHeader.TryDecode(block.AsSpan(NvramHeader.CopyBOffset, NvramHeader.CopyBytes), out var problemB);
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
