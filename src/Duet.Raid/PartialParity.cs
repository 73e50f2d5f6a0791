namespace Duet.Raid;

/// <summary>
/// A partial sum of one row an array write changes (write-log.md, "Closing the hole with a member missing"):
/// <see cref="Sum"/> is the XOR of the row's data blocks whose indexes are set in <see cref="Unchanged"/>, as
/// they are once the write is done: either the blocks the write leaves as they are (its partial parity), or
/// one block the write changes, with its new content. Taken before the write touches a drive, it holds
/// whatever part of the write lands. So after a cut that tore the row, a block of a member that cannot be
/// read is the sum plus the row's other blocks in the sum — where parity that may cover either version of
/// the changed blocks cannot tell it.
/// </summary>
/// <remarks>Several writes may have left sums for one row (each write's stripe update ran after the one before
/// had returned): the one with the highest <see cref="Order"/> (the write-log sequence) that covers a lost block
/// is the one whose other blocks are as the drives hold them.</remarks>
public readonly record struct PartialParity(long Stripe, int Row, ulong Unchanged, ReadOnlyMemory<byte> Sum, ulong Order = 0)
{
    public bool Leaves(int dataIndex) => (Unchanged & (1UL << dataIndex)) != 0;
}

/// <summary>Where a parity array write keeps the partial parity of the rows it changes in part, before it
/// writes a drive (the controller's NVRAM pool, tied to the write's log record).</summary>
public interface IPartialParitySink
{
    /// <summary>Stores the partial parity of <paramref name="row"/> of <paramref name="stripe"/>; whole in
    /// non-volatile memory when this returns true. False if there is no room (the row is unguarded).</summary>
    bool Store(long stripe, int row, ulong unchanged, ReadOnlySpan<byte> sum);

    /// <summary>The write is about to change <paramref name="row"/> of <paramref name="stripe"/>: sums other writes
    /// stored for it are stale from now on (what they changed there is on the drives: the array flushed first).</summary>
    void Supersede(long stripe, int row);

    /// <summary>Whether the write must claim room for a stripe's sums (<see cref="RoomAsync"/>) before it stores them;
    /// only then does it count them first.</summary>
    bool ClaimsRoom => false;

    /// <summary>Before the write stores <paramref name="sums"/> sums for rows [<paramref name="rowLo"/>, +<paramref name="rowCount"/>)
    /// of <paramref name="stripe"/> (with <see cref="ClaimsRoom"/>): waits until the pool holds room for all of them (so
    /// none is refused), counting the entries other writes hold for those rows, which it then supersedes. Until it
    /// returns, nothing is superseded: a write that fails here leaves earlier writes' sums as they were.</summary>
    ValueTask RoomAsync(long stripe, int rowLo, int rowCount, int sums, CancellationToken ct) => ValueTask.CompletedTask;

    /// <summary>After the write stored its sums for <paramref name="stripe"/>, before its drive writes there: waits for
    /// whatever else must hold them first (their copies at the peer).</summary>
    ValueTask SumsStoredAsync(long stripe, CancellationToken ct) => ValueTask.CompletedTask;

    /// <summary>The write's drive writes to <paramref name="stripe"/> completed: once the array is flushed, the sums it
    /// stored for that stripe may go (a write waiting for room frees them that way).</summary>
    void StripeWritten(long stripe) { }

    /// <summary>Sums that writes which failed part-way (and may have torn these rows) still hold for rows
    /// [<paramref name="rowLo"/>, +<paramref name="rowCount"/>) of <paramref name="stripe"/>: a block there on a
    /// member that cannot be read is taken from them, not rebuilt from parity the failure may have torn.</summary>
    IReadOnlyList<PartialParity> Held(long stripe, int rowLo, int rowCount) => [];
}
