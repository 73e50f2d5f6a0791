using Duet.Core;

namespace Duet.Drives;

/// <summary>
/// The enclosure a controller's drives sit in: named drives that both controllers of a pair
/// see. <c>ArrayManager</c> lists the shelf at start and on every rescan, opens each drive once,
/// and creates new ones on `duet drive add`. Names are the drives' identity on the shelf
/// (d0, d1, ...); what a drive belongs to is in its superblock, not in its name.
///
/// Two implementations: <see cref="FileShelf"/> (DATA/drives/NAME.img, the default) and
/// <see cref="MemoryShelf"/> (named in-memory drives, shared by the simulator's two
/// controllers). Implementations are called on the management path only, never per request.
/// </summary>
public interface IDriveShelf
{
    /// <summary>The names of the drives on the shelf now, in ordinal order.</summary>
    IReadOnlyList<string> List();

    /// <summary>Opens a drive of <see cref="List"/>. The caller owns the returned device and disposes it;
    /// disposing it never destroys what the shelf holds. IOException or UnauthorizedAccessException
    /// (or a <see cref="BlockIoException"/>) if it cannot be opened.</summary>
    IBlockDevice Open(string name);

    /// <summary>Whether a drive of that name is on the shelf.</summary>
    bool Contains(string name);

    /// <summary>Creates a new, zeroed drive of <paramref name="sizeBytes"/> (a multiple of 4 KiB) and
    /// opens it. IOException if a drive of that name exists.</summary>
    IBlockDevice Create(string name, long sizeBytes);

    /// <summary>Where a drive lives, for messages: its file, or "memory drive NAME".</summary>
    string Describe(string name);
}

/// <summary>The shelf as a folder: every NAME.img file in it is a drive (<see cref="FileDrive"/>). The
/// folder is created if it does not exist.</summary>
public sealed class FileShelf : IDriveShelf
{
    public const string Extension = ".img";

    public FileShelf(string directory)
    {
        Directory = Path.GetFullPath(directory);
        System.IO.Directory.CreateDirectory(Directory);
    }

    public string Directory { get; }

    /// <summary>DATA/drives: the shelf of a data directory.</summary>
    public static string DirectoryFor(string dataDirectory) => Path.Combine(dataDirectory, "drives");

    public IReadOnlyList<string> List() =>
        [.. System.IO.Directory.EnumerateFiles(Directory, "*" + Extension).Select(Path.GetFileNameWithoutExtension).Select(n => n!).Order(StringComparer.Ordinal)];

    public IBlockDevice Open(string name) => FileDrive.Open(PathOf(name));

    public bool Contains(string name) => File.Exists(PathOf(name));

    public IBlockDevice Create(string name, long sizeBytes) => FileDrive.Create(PathOf(name), sizeBytes);

    public string Describe(string name) => PathOf(name);

    string PathOf(string name) => Path.Combine(Directory, name + Extension);
}

/// <summary>
/// A shelf of named <see cref="MemoryDrive"/>s, with no file system underneath. Several views
/// share one set of drives (<see cref="MemoryShelf(MemoryShelf, Func{string, IBlockDevice, IBlockDevice}?)"/>),
/// as two controllers share one enclosure; each view may wrap every drive it opens (the
/// simulator puts a FaultyDrive per controller and drive around it). Drives outlive every
/// opener: disposing an opened drive leaves its contents on the shelf (MemoryDrive's dispose
/// is a no-op), so a controller can be dropped and another opened over the same shelf.
/// </summary>
public sealed class MemoryShelf : IDriveShelf
{
    // The drives, shared by every view of one shelf.
    sealed class Bay
    {
        public readonly Lock Gate = new();
        public readonly SortedDictionary<string, MemoryDrive> Drives = new(StringComparer.Ordinal);
    }

    readonly Bay _bay;
    readonly Func<string, IBlockDevice, IBlockDevice>? _wrap;

    /// <summary>An empty shelf. <paramref name="wrap"/>(name, drive) decorates every drive this view opens or creates.</summary>
    public MemoryShelf(Func<string, IBlockDevice, IBlockDevice>? wrap = null)
    {
        _bay = new Bay();
        _wrap = wrap;
    }

    /// <summary>Another view of <paramref name="shared"/>'s drives, with its own decorator.</summary>
    public MemoryShelf(MemoryShelf shared, Func<string, IBlockDevice, IBlockDevice>? wrap = null)
    {
        ArgumentNullException.ThrowIfNull(shared);
        _bay = shared._bay;
        _wrap = wrap;
    }

    public IReadOnlyList<string> List()
    {
        lock (_bay.Gate) return [.. _bay.Drives.Keys];
    }

    public bool Contains(string name)
    {
        lock (_bay.Gate) return _bay.Drives.ContainsKey(name);
    }

    public IBlockDevice Open(string name)
    {
        MemoryDrive? drive;
        lock (_bay.Gate) _bay.Drives.TryGetValue(name, out drive);
        if (drive is null) throw new FileNotFoundException($"no memory drive named '{name}' on the shelf");
        return _wrap is null ? drive : _wrap(name, drive);
    }

    public IBlockDevice Create(string name, long sizeBytes)
    {
        var drive = Insert(name, sizeBytes);
        return _wrap is null ? drive : _wrap(name, drive);
    }

    public string Describe(string name) => $"memory drive {name}";

    /// <summary>Puts a new, zeroed drive on the shelf without opening it (setting up a simulated enclosure).</summary>
    public MemoryDrive Insert(string name, long sizeBytes)
    {
        if (sizeBytes <= 0 || sizeBytes % Units.BlockBytes != 0)
            throw new ArgumentException($"drive size {sizeBytes} is not a positive multiple of {Units.BlockBytes}", nameof(sizeBytes));
        var drive = new MemoryDrive(name, sizeBytes / Units.BlockBytes);
        lock (_bay.Gate)
        {
            if (!_bay.Drives.TryAdd(name, drive)) throw new IOException($"a memory drive named '{name}' is already on the shelf");
        }
        return drive;
    }

    /// <summary>The drive itself, undecorated (for checkers that read what is really stored), or null.</summary>
    public MemoryDrive? Drive(string name)
    {
        lock (_bay.Gate) return _bay.Drives.GetValueOrDefault(name);
    }

    /// <summary>Takes a drive off the shelf: it is no longer listed or opened. Handles already open keep
    /// working on its contents (a pulled drive is failed through the openers' decorators).</summary>
    public bool Remove(string name)
    {
        lock (_bay.Gate) return _bay.Drives.Remove(name);
    }
}
