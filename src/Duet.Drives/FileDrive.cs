using Duet.Core;
using Microsoft.Win32.SafeHandles;

namespace Duet.Drives;

/// <summary>
/// A drive backed by a file (or a block device node) through <see cref="RandomAccess"/>:
/// positional reads and writes with no shared file pointer, so requests run concurrently.
/// <see cref="Create"/> makes a sparse file of the given size; unwritten ranges read as zeros.
/// Flush is fdatasync (<see cref="RandomAccess.FlushToDisk"/>).
///
/// Transfers of at most <see cref="InlineIoBytes"/> run inline: a plain pread/pwrite on the calling
/// thread. <see cref="RandomAccess.ReadAsync(SafeFileHandle, Memory{byte}, long, CancellationToken)"/> on
/// Linux queues a blocking pread to another thread-pool thread and resumes the caller from there: for the
/// RAID engine's small member I/O (a 4 KiB block, a tag block) that hop, a thread wake-up and a context
/// switch, cost more CPU than the copy itself when the drive file is in memory (/dev/shm, page cache).
/// Larger transfers keep the asynchronous path, so a slow device does not hold the caller for long.
/// </summary>
public sealed class FileDrive : IBlockDevice
{
    readonly SafeFileHandle _handle;
    int _disposed;

    FileDrive(string path, SafeFileHandle handle, long blockCount)
    {
        Path = path;
        Name = System.IO.Path.GetFileNameWithoutExtension(path);
        _handle = handle;
        BlockCount = blockCount;
    }

    /// <summary>Largest transfer done inline (synchronously, on the caller's thread).</summary>
    public const int InlineIoBytes = 128 * 1024;

    public string Path { get; }
    public string Name { get; }
    public long BlockCount { get; }

    /// <summary>Creates a new sparse drive file of <paramref name="sizeBytes"/> (a multiple of 4 KiB). Fails if it exists.</summary>
    public static FileDrive Create(string path, long sizeBytes)
    {
        if (sizeBytes <= 0 || sizeBytes % Units.BlockBytes != 0)
            throw new ArgumentException($"drive size {sizeBytes} is not a positive multiple of {Units.BlockBytes}", nameof(sizeBytes));
        var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.ReadWrite);
        try
        {
            RandomAccess.SetLength(handle, sizeBytes); // ftruncate: sparse, no blocks allocated
        }
        catch
        {
            handle.Dispose();
            File.Delete(path);
            throw;
        }
        return new FileDrive(path, handle, sizeBytes / Units.BlockBytes);
    }

    /// <summary>Opens an existing drive file; its size must be a multiple of 4 KiB.</summary>
    public static FileDrive Open(string path)
    {
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        long length = RandomAccess.GetLength(handle);
        if (length <= 0 || length % Units.BlockBytes != 0)
        {
            handle.Dispose();
            throw new BlockIoException(BlockErrorKind.Invalid, $"{path}: size {length} is not a positive multiple of {Units.BlockBytes}");
        }
        return new FileDrive(path, handle, length / Units.BlockBytes);
    }

    public ValueTask ReadAsync(long lba, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        BlockDeviceChecks.CheckRange(this, lba, destination.Length);
        if (destination.Length > InlineIoBytes) return ReadSlowAsync(lba, destination, cancellationToken);
        if (cancellationToken.IsCancellationRequested) return ValueTask.FromCanceled(cancellationToken);
        long offset = lba * Units.BlockBytes;
        try
        {
            var span = destination.Span;
            while (!span.IsEmpty)
            {
                int n = RandomAccess.Read(_handle, span, offset);
                if (n == 0) { span.Clear(); break; } // past EOF of a shrunk file: zeros
                span = span[n..];
                offset += n;
            }
            return ValueTask.CompletedTask;
        }
        catch (Exception e)
        {
            return ValueTask.FromException(Classify(e, lba, "read"));
        }
    }

    public ValueTask WriteAsync(long lba, ReadOnlyMemory<byte> source, bool fua = false, CancellationToken cancellationToken = default)
    {
        BlockDeviceChecks.CheckRange(this, lba, source.Length);
        if (source.Length > InlineIoBytes) return WriteSlowAsync(lba, source, fua, cancellationToken);
        if (cancellationToken.IsCancellationRequested) return ValueTask.FromCanceled(cancellationToken);
        try
        {
            RandomAccess.Write(_handle, source.Span, lba * Units.BlockBytes);
            if (fua) RandomAccess.FlushToDisk(_handle);
            return ValueTask.CompletedTask;
        }
        catch (Exception e)
        {
            return ValueTask.FromException(Classify(e, lba, "write"));
        }
    }

    Exception Classify(Exception e, long lba, string what) => e switch
    {
        BlockIoException => e,
        IOException => new BlockIoException(BlockErrorKind.Medium, $"{Name}: {what} at block {lba} failed: {e.Message}", lba, e),
        ObjectDisposedException => new BlockIoException(BlockErrorKind.Unavailable, $"{Name}: drive is closed", lba, e),
        _ => e,
    };

    async ValueTask ReadSlowAsync(long lba, Memory<byte> destination, CancellationToken cancellationToken)
    {
        long offset = lba * Units.BlockBytes;
        try
        {
            while (!destination.IsEmpty)
            {
                int n = await RandomAccess.ReadAsync(_handle, destination, offset, cancellationToken);
                if (n == 0) { destination.Span.Clear(); break; } // past EOF of a shrunk file: zeros
                destination = destination[n..];
                offset += n;
            }
        }
        catch (IOException e) when (e is not BlockIoException)
        {
            throw new BlockIoException(BlockErrorKind.Medium, $"{Name}: read at block {lba} failed: {e.Message}", lba, e);
        }
        catch (ObjectDisposedException e)
        {
            throw new BlockIoException(BlockErrorKind.Unavailable, $"{Name}: drive is closed", lba, e);
        }
    }

    async ValueTask WriteSlowAsync(long lba, ReadOnlyMemory<byte> source, bool fua, CancellationToken cancellationToken)
    {
        try
        {
            await RandomAccess.WriteAsync(_handle, source, lba * Units.BlockBytes, cancellationToken);
            if (fua) RandomAccess.FlushToDisk(_handle);
        }
        catch (IOException e) when (e is not BlockIoException)
        {
            throw new BlockIoException(BlockErrorKind.Medium, $"{Name}: write at block {lba} failed: {e.Message}", lba, e);
        }
        catch (ObjectDisposedException e)
        {
            throw new BlockIoException(BlockErrorKind.Unavailable, $"{Name}: drive is closed", lba, e);
        }
    }

    /// <summary>fdatasync blocks, so it runs on the thread pool: flushes of several drives overlap and the
    /// caller's thread is not held (this is the I/O shell; the RAID engine above just awaits).</summary>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => new(Task.Run(() =>
    {
        try
        {
            RandomAccess.FlushToDisk(_handle);
        }
        catch (ObjectDisposedException e)
        {
            throw new BlockIoException(BlockErrorKind.Unavailable, $"{Name}: drive is closed", -1, e);
        }
        catch (IOException e) when (e is not BlockIoException)
        {
            throw new BlockIoException(BlockErrorKind.Io, $"{Name}: flush failed: {e.Message}", -1, e);
        }
    }, cancellationToken));

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0) _handle.Dispose();
        return ValueTask.CompletedTask;
    }
}
