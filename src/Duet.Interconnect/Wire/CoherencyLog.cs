using System.Diagnostics.CodeAnalysis;

namespace Duet.Interconnect.Wire;

/// <summary>A batch taken from the log for transmission: one WRITE BUFFER command.</summary>
public sealed class CoherencyBatch
{
    internal CoherencyBatch(uint batchNumber, IReadOnlyList<CoherencyHeader> headers, IReadOnlyList<ReadOnlyMemory<byte>> segments, long totalBytes)
    {
        BatchNumber = batchNumber;
        Headers = headers;
        Segments = segments;
        TotalBytes = totalBytes;
    }

    /// <summary>24-bit batch number carried in the CDB and echoed by the peer's status.</summary>
    public uint BatchNumber { get; }
    public IReadOnlyList<CoherencyHeader> Headers { get; }

    /// <summary>What to transmit, in order: [0] CDB + list header + header blocks, then each mirror header's data.</summary>
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
/// </summary>
public sealed class CoherencyLog
{
    readonly int batchBytesMax;
    List<CoherencyHeader> filling = [];
    List<ReadOnlyMemory<byte>> fillingData = [];
    List<CoherencyHeader> spare = [];
    List<ReadOnlyMemory<byte>> spareData = [];
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
    public long MirrorBytesSent { get; private set; }

    public void AppendMirror(CoherencyHeader header, ReadOnlyMemory<byte> data)
    {
        if (!header.Stores) throw new ArgumentException("not a mirror header", nameof(header));
        if (data.Length != header.DataBytes) throw new ArgumentException($"data is {data.Length} bytes; the header says {header.DataBytes}", nameof(data));
        Append(header, data);
    }

    public void AppendInvalidate(CoherencyHeader header)
    {
        if (header.Kind != CoherencyHeaderKind.Invalidate) throw new ArgumentException("not an invalidate header", nameof(header));
        Append(header, ReadOnlyMemory<byte>.Empty);
    }

    void Append(CoherencyHeader header, ReadOnlyMemory<byte> data)
    {
        var error = header.Validate(long.MaxValue);
        if (error != WireError.None) throw new ArgumentException($"invalid header: {error}", nameof(header));
        if (anyAppended && header.Sequence <= lastSequence)
            throw new ArgumentException($"sequence {header.Sequence} does not follow {lastSequence}", nameof(header));
        filling.Add(header);
        fillingData.Add(data);
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

        // Take headers in order while the command stays within the batch limit.
        int take = 0;
        long bytes = CoherencyBatchCommand.HeadBytes(0);
        while (take < filling.Count)
        {
            long more = CoherencyHeader.Size + filling[take].DataBytes;
            if (take > 0 && bytes + more > batchBytesMax) break;
            bytes += more;
            take++;
        }

        List<CoherencyHeader> headers;
        List<ReadOnlyMemory<byte>> data;
        if (take == filling.Count)
        {
            // The swap of seed 003: the filling list becomes the active one, the spare one fills.
            headers = filling; data = fillingData;
            filling = spare; fillingData = spareData;
            spare = []; spareData = [];
        }
        else
        {
            headers = filling.GetRange(0, take); data = fillingData.GetRange(0, take);
            filling.RemoveRange(0, take); fillingData.RemoveRange(0, take);
        }

        uint number = nextBatchNumber;
        nextBatchNumber = (nextBatchNumber + 1) & CoherencyBatchCommand.BatchNumberMask;
        var head = new byte[CoherencyBatchCommand.HeadBytes(headers.Count)];
        CoherencyBatchCommand.EncodeHead(number, headers, head);
        var segments = new List<ReadOnlyMemory<byte>>(1 + headers.Count) { head };
        foreach (var d in data) if (!d.IsEmpty) segments.Add(d);
        Duet.Core.Invariant.Assert(segments.Sum(s => (long)s.Length) == bytes);

        active = new CoherencyBatch(number, headers, segments, bytes);
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
