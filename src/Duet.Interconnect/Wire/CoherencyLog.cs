using System.Diagnostics.CodeAnalysis;

namespace Duet.Interconnect.Wire;

/// <summary>A batch taken from the log for transmission: one WRITE BUFFER command.</summary>
public sealed class CoherencyBatch
{
    internal CoherencyBatch(uint batchNumber, IReadOnlyList<CoherencyHeader> headers, IReadOnlyList<ReadOnlyMemory<byte>> segments, long totalBytes, int appends)
    {
        BatchNumber = batchNumber;
        Headers = headers;
        Segments = segments;
        TotalBytes = totalBytes;
        Appends = appends;
    }

    /// <summary>How many appends this batch carries out: its headers and the invalidations a store of the same
    /// element later in the batch made unnecessary (<see cref="CoherencyLog.InvalidationsAbsorbed"/>).</summary>
    public int Appends { get; }

    /// <summary>24-bit batch number carried in the CDB and echoed by the peer's status.</summary>
    public uint BatchNumber { get; }
    public IReadOnlyList<CoherencyHeader> Headers { get; }

    /// <summary>What to transmit, in order: [0] CDB + list header + header blocks, then each mirror header's data
    /// (one segment, or two: its base or reference block, then the host's bytes).</summary>
    public IReadOnlyList<ReadOnlyMemory<byte>> Segments { get; }
    public long TotalBytes { get; }

    public System.Buffers.ReadOnlySequence<byte> ToSequence() => SegmentSequence.Create(Segments);
}

/// <summary>
/// CC-2/CC-3/CC-4: the owner's coherency log, a pure state machine (no I/O, no clock, not
/// thread-safe: the caller serialises access).
/// <code>
///   AppendMirror / AppendInvalidate ──► filling list
///                                          │ TryTakeActive (only when nothing is in flight)
///                                          ▼
///                                      active batch ──► transmitted by the caller as one
///                                          │            WRITE BUFFER command
///                                          │ CompleteActive (peer's status arrived)
///                                          ▼
///                                      (none in flight; the next TryTakeActive swaps again)
/// </code>
/// Appends while a batch is in flight go to the filling list, so the host path never waits
/// for the link; at most one batch is in flight, so the peer applies batches in order, and
/// within a batch headers keep append order: an invalidation appended before a later mirror
/// of the same element reaches the peer before it. Sequence numbers must strictly increase
/// across appends (the cache assigns them; gaps are fine).
///
/// CC-5: periodic flushes of dirty data send nothing to the peer. The log has no entry point
/// for them on purpose: the cache does not call it when it destages on its timer, and the
/// peer's mirror of a flushed element stays as a clean copy equal to the drives. Only a
/// flush forced to make room for a read appends an invalidation (CC-4).
///
/// The data memory passed to <see cref="AppendMirror"/> is referenced, not copied: the
/// caller keeps it unchanged until the batch that carries it has completed.
///
/// An invalidation followed in the same batch by a header that stores the same element is not sent: the
/// peer drops the element's old image when it stores the new one anyway (a store invalidates the element
/// before it writes). That is the cache reusing an element it evicted for a write (the victim's invalidation,
/// then the write's image at the same index): under steady random writes, nearly every write. An eviction to
/// make room for a read (CC-4) stores nothing (a read fill is clean, not mirrored), so its invalidation goes.
/// </summary>
public sealed class CoherencyLog
{
    readonly int batchBytesMax;
    List<CoherencyHeader> filling = [];
    List<Payload> fillingData = [];
    List<CoherencyHeader> spare = [];
    List<Payload> spareData = [];
    // Per filling entry: -1, or (an invalidation a later store of the same element absorbed) that store's position.
    List<int> fillingAbsorbedBy = [];
    // Invalidations in the filling list no store has absorbed yet, by element (index / 32): position.
    readonly Dictionary<uint, int> pendingInvalidations = [];
    CoherencyBatch? active;
    uint nextBatchNumber;
    ulong lastSequence;
    bool anyAppended;

    /// <param name="batchBytesMax">Largest command (CDB + parameter list) per batch; a longer
    /// filling list is sent as several batches, in order.</param>
    public CoherencyLog(int batchBytesMax = 4 << 20)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchBytesMax, CoherencyBatchCommand.HeadBytes(1) + MirrorWire.ElementBytesMax);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(batchBytesMax, MirrorWire.WriteBufferCdbBytes + MirrorWire.WriteBufferParameterListBytesMax);
        this.batchBytesMax = batchBytesMax;
    }

    public int FillingCount => filling.Count;
    public bool IsActiveInFlight => active is not null;
    public CoherencyBatch? Active => active;

    public long BatchesSent { get; private set; }
    public long BatchesCompleted { get; private set; }
    public long HeadersSent { get; private set; }
    public long InvalidationsSent { get; private set; }
    /// <summary>Invalidations not sent because a store of the same element followed in the same batch.</summary>
    public long InvalidationsAbsorbed { get; private set; }
    public long MirrorBytesSent { get; private set; }

    // A header's data: a short block of its own (a base or reference block) and the host's bytes, kept
    // apart so that neither is copied into a new buffer on the write path; they travel one after the other.
    readonly record struct Payload(ReadOnlyMemory<byte> Prefix, ReadOnlyMemory<byte> Body);

    public void AppendMirror(CoherencyHeader header, ReadOnlyMemory<byte> data) => AppendMirror(header, default, data);

    /// <summary>A mirror header whose data is <paramref name="prefix"/> followed by <paramref name="data"/> (a with-base
    /// image: its base block, then the carried sectors), neither copied.</summary>
    public void AppendMirror(CoherencyHeader header, ReadOnlyMemory<byte> prefix, ReadOnlyMemory<byte> data)
    {
        if (!header.Stores) throw new ArgumentException("not a mirror header", nameof(header));
        if (prefix.Length + data.Length != header.DataBytes)
            throw new ArgumentException($"data is {prefix.Length + data.Length} bytes; the header says {header.DataBytes}", nameof(data));
        Append(header, new Payload(prefix, data));
    }

    public void AppendInvalidate(CoherencyHeader header)
    {
        if (header.Kind != CoherencyHeaderKind.Invalidate) throw new ArgumentException("not an invalidate header", nameof(header));
        Append(header, default);
    }

    void Append(CoherencyHeader header, Payload data)
    {
        var error = header.Validate(long.MaxValue);
        if (error != WireError.None) throw new ArgumentException($"invalid header: {error}", nameof(header));
        if (anyAppended && header.Sequence <= lastSequence)
            throw new ArgumentException($"sequence {header.Sequence} does not follow {lastSequence}", nameof(header));
        uint element = header.ElementIndex / MirrorWire.ElementSectors;
        if (header.Stores && pendingInvalidations.Remove(element, out int invalidation)) fillingAbsorbedBy[invalidation] = filling.Count;
        else if (header.Kind == CoherencyHeaderKind.Invalidate) pendingInvalidations[element] = filling.Count;
        filling.Add(header);
        fillingData.Add(data);
        fillingAbsorbedBy.Add(-1);
        lastSequence = header.Sequence;
        anyAppended = true;
    }

    /// <summary>
    /// If no batch is in flight and the filling list is not empty, makes (a prefix of) the
    /// filling list the active batch and returns it to transmit; otherwise false.
    /// </summary>
    public bool TryTakeActive([NotNullWhen(true)] out CoherencyBatch? batch)
    {
        batch = null;
        if (active is not null || filling.Count == 0) return false;

        // Take entries in order while the command stays within the batch limit (an absorbed invalidation
        // counted as if it went: the limit holds whatever is dropped).
        int take = 0;
        long bound = CoherencyBatchCommand.HeadBytes(0);
        while (take < filling.Count)
        {
            long more = CoherencyHeader.Size + filling[take].DataBytes;
            if (take > 0 && bound + more > batchBytesMax) break;
            bound += more;
            take++;
        }

        List<CoherencyHeader> headers;
        List<Payload> data;
        bool absorbed = false;
        for (int i = 0; i < take; i++)
        {
            // An invalidation whose store stays behind in the filling list goes: the peer must not hold the old
            // image after this batch.
            if (fillingAbsorbedBy[i] >= take) fillingAbsorbedBy[i] = -1;
            absorbed |= fillingAbsorbedBy[i] >= 0;
        }
        if (take == filling.Count && !absorbed)
        {
            // The swap of seed 003: the filling list becomes the active one, the spare one fills.
            headers = filling; data = fillingData;
            filling = spare; fillingData = spareData;
            // The next spare list starts at this batch's size rather than growing to it again by doubling.
            spare = new(headers.Count); spareData = new(headers.Count);
            fillingAbsorbedBy.Clear();
        }
        else
        {
            headers = new List<CoherencyHeader>(take);
            data = new List<Payload>(take);
            for (int i = 0; i < take; i++)
            {
                if (fillingAbsorbedBy[i] >= 0)
                {
                    InvalidationsAbsorbed++;
                    continue;
                }
                headers.Add(filling[i]);
                data.Add(fillingData[i]);
            }
            filling.RemoveRange(0, take); fillingData.RemoveRange(0, take); fillingAbsorbedBy.RemoveRange(0, take);
            for (int i = 0; i < fillingAbsorbedBy.Count; i++)
                if (fillingAbsorbedBy[i] >= 0) fillingAbsorbedBy[i] -= take;
        }
        if (pendingInvalidations.Count > 0)
        {
            foreach (var (element, at) in pendingInvalidations.ToList())
            {
                if (at < take) pendingInvalidations.Remove(element);
                else pendingInvalidations[element] = at - take;
            }
        }
        long bytes = CoherencyBatchCommand.HeadBytes(headers.Count) + headers.Sum(h => h.DataBytes);
        Duet.Core.Invariant.Assert(bytes <= bound);

        uint number = nextBatchNumber;
        nextBatchNumber = (nextBatchNumber + 1) & CoherencyBatchCommand.BatchNumberMask;
        var head = new byte[CoherencyBatchCommand.HeadBytes(headers.Count)];
        CoherencyBatchCommand.EncodeHead(number, headers, head);
        var segments = new List<ReadOnlyMemory<byte>>(1 + 2 * headers.Count) { head };
        foreach (var d in data)
        {
            if (!d.Prefix.IsEmpty) segments.Add(d.Prefix);
            if (!d.Body.IsEmpty) segments.Add(d.Body);
        }
        Duet.Core.Invariant.Assert(segments.Sum(s => (long)s.Length) == bytes);

        active = new CoherencyBatch(number, headers, segments, bytes, take);
        BatchesSent++;
        HeadersSent += headers.Count;
        InvalidationsSent += headers.Count(h => h.Kind == CoherencyHeaderKind.Invalidate);
        MirrorBytesSent += bytes - head.Length;
        batch = active;
        return true;
    }

    /// <summary>The peer's status for the active batch arrived: nothing is in flight any more.
    /// Returns the completed batch so the caller can acknowledge the host writes it carried.</summary>
    public CoherencyBatch CompleteActive()
    {
        var done = active ?? throw new InvalidOperationException("no coherency batch is in flight");
        active = null;
        BatchesCompleted++;
        return done;
    }
}
