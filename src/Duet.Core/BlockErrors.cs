namespace Duet.Core;

/// <summary>What went wrong with a block request, in terms every front end can map to its
/// own protocol error (NBD errno, SCSI sense).</summary>
public enum BlockErrorKind
{
    /// <summary>A generic I/O failure (NBD EIO; SCSI HARDWARE ERROR).</summary>
    Io,
    /// <summary>Unreadable block with no redundancy left, or a listed bad block (NBD EIO; SCSI MEDIUM ERROR with the LBA).</summary>
    Medium,
    /// <summary>The request falls outside the device (NBD EINVAL / ENOSPC; SCSI LBA OUT OF RANGE).</summary>
    OutOfRange,
    /// <summary>The request is malformed: misaligned, zero or oversized length (NBD EINVAL; SCSI INVALID FIELD IN CDB).</summary>
    Invalid,
    /// <summary>The device is read-only here (NBD EPERM; SCSI DATA PROTECT).</summary>
    ReadOnly,
    /// <summary>The device was taken away: drive failed or pulled (NBD EIO; SCSI NOT READY).</summary>
    Unavailable,
    /// <summary>The drive is fine but this controller cannot reach it: its path to the shelf is down, or its
    /// port is disabled or fenced. Not a drive fault: RAID fails the request and keeps the member
    /// (NBD EIO; SCSI NOT READY).</summary>
    PathDown,
}

/// <summary>A block request failed. <see cref="Lba"/> is the first failing byte offset's block
/// when known (in the addressing unit of the layer that threw), else -1.</summary>
public class BlockIoException(BlockErrorKind kind, string message, long lba = -1, Exception? inner = null)
    : IOException(message, inner)
{
    public BlockErrorKind Kind { get; } = kind;
    public long Lba { get; } = lba;
}
