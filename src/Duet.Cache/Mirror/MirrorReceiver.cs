using System.Buffers;
using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Microsoft.Extensions.Logging;

namespace Duet.Cache.Mirror;

/// <summary>
/// The receiving side of the mirror (ICL-4): takes the peer's mirror transfers in order, moves
/// their data out of the link's window into region 2 of this controller's NVRAM, and answers each
/// operation with a status transfer into the peer's reply queue.
///
/// It accepts the three ways a write can arrive: a coherency batch (CC-3), the seed's small write
/// (MR-3: command, then data) and its large write (MR-2: 0x3C notification, metadata — whose
/// elements are marked invalid at once — then data). Anything malformed, out of the region, for an
/// unknown volume, out of sequence, or from a stale epoch is refused, counted and logged, and
/// nothing of it is written.
/// </summary>
public sealed partial class MirrorReceiver(
    MirrorApplier applier, Func<ReadOnlyMemory<byte>, ValueTask> reply, byte peerSmallWriteOpcode, ILogger logger)
{
    enum Expect { Command, SmallData, LargeMetadata, LargeData }

    Expect _expect = Expect.Command;
    SmallWriteMirrorMessage _small;
    MetadataMirrorMessage? _metadata;
    ulong _peerEpoch;
    ulong _sequence; // the highest sequence stored; seed writes carry none, so they take the next one

    public long Refused { get; private set; }
    public long StaleEpochs { get; private set; }
    public long Operations { get; private set; }

    /// <summary>While set, every mirror transfer is answered NotReady and nothing is stored (the pair
    /// refused to form, e.g. NVRAM layouts differ).</summary>
    public string? RefuseAll { get; set; }

    /// <summary>Lowest epoch accepted from the peer (transfers stamped lower are dropped).</summary>
    public ulong PeerEpoch { get => _peerEpoch; set => _peerEpoch = value; }

    long RegionBytes => applier.Region.RegionBytes;

    /// <summary>A new session of the peer (it restarted, or the link came back): forget what was in
    /// progress and the sequence numbers of the old session; the peer resynchronises region 2 next.</summary>
    public void Reset()
    {
        _expect = Expect.Command;
        _metadata = null;
        _sequence = 0;
    }

    /// <summary>Handles one command transfer (not a reply). Returns false if it was not a mirror message.</summary>
    public async ValueTask<bool> HandleAsync(IclTransfer t)
    {
        if (t.Epoch < _peerEpoch)
        {
            StaleEpochs++;
            LogStaleEpoch(t.Epoch, _peerEpoch);
            return true;
        }
        _peerEpoch = t.Epoch;
        if (RefuseAll is { } why)
        {
            _expect = Expect.Command;
            await RefuseAsync(0, MirrorStatusCode.NotReady, why);
            return true;
        }
        var kind = t.Message.IsEmpty ? MessageKind.Unknown : MessageClassifier.Classify(t.Message.Span);
        switch (_expect)
        {
            case Expect.SmallData when t.Message.IsEmpty:
                await FinishSmallAsync(t.Data);
                return true;
            case Expect.LargeMetadata when kind == MessageKind.Metadata:
                BeginLarge(t.Message.Span);
                return true;
            case Expect.LargeData when t.Message.IsEmpty:
                await FinishLargeAsync(t.Data);
                return true;
            case Expect.Command:
                break;
            default:
                var expected = _expect;
                _expect = Expect.Command;
                await RefuseAsync(0, MirrorStatusCode.Malformed, $"a {kind} transfer arrived where the seed protocol expected {expected}");
                return true;
        }
        switch (kind)
        {
            case MessageKind.CoherencyBatch:
                await ApplyBatchAsync(t);
                return true;
            case MessageKind.SmallWrite:
                if (!SmallWriteMirrorMessage.TryDecode(t.Message.Span, RegionBytes, out _small, out var error))
                    await RefuseAsync(0, MirrorStatusCode.Malformed, $"small write command refused: {error}");
                else if (_small.Opcode != peerSmallWriteOpcode)
                    await RefuseAsync(0, MirrorStatusCode.Malformed, $"small write opcode 0x{_small.Opcode:x2} is not the peer's (0x{peerSmallWriteOpcode:x2})");
                else _expect = Expect.SmallData;
                return true;
            case MessageKind.Notification:
                _expect = Expect.LargeMetadata;
                return true;
            case MessageKind.Metadata:
                await RefuseAsync(0, MirrorStatusCode.Malformed, "metadata without a notification before it");
                return true;
            default:
                return false;
        }
    }

    async ValueTask ApplyBatchAsync(IclTransfer t)
    {
        var sequence = t.Data.IsEmpty ? new ReadOnlySequence<byte>(t.Message) : SegmentSequence.Create([t.Message, t.Data]);
        var reader = new SequenceReader<byte>(sequence);
        var status = CoherencyBatchCommand.TryDecode(ref reader, RegionBytes, out var batch, out var error);
        if (status != OperationStatus.Done || batch is null || !reader.End)
        {
            await RefuseAsync(0, MirrorStatusCode.Malformed, $"coherency batch refused: {(status == OperationStatus.Done ? "trailing bytes" : error.ToString())}");
            return;
        }
        // Check every header before writing any, so a refused batch writes nothing. A by-reference or
        // with-base header may keep sectors of an element an earlier header of this batch stores.
        HashSet<int>? stored = null;
        byte[]? reference = null; // a reference block split across segments is gathered here
        static ReadOnlySpan<byte> Block(ReadOnlySequence<byte> data, ref byte[]? into)
        {
            if (data.IsSingleSegment) return data.FirstSpan;
            into ??= new byte[MirrorWire.HostReferenceBytes];
            data.CopyTo(into);
            return into.AsSpan(0, (int)data.Length);
        }
        for (int i = 0; i < batch.Headers.Count; i++)
        {
            var h = batch.Headers[i];
            if (h.Sequence <= _sequence)
            {
                await RefuseAsync(batch.BatchNumber, MirrorStatusCode.Malformed, $"header sequence {h.Sequence} does not follow {_sequence}");
                return;
            }
            int retired = -1;
            if (h.Kind == CoherencyHeaderKind.MirrorByReference)
            {
                if (applier.Check(h, Block(batch.DataOf(i), ref reference), e => stored?.Contains(e) == true, out retired) is { } missing)
                {
                    await RefuseAsync(batch.BatchNumber, MirrorStatusCode.Malformed, missing);
                    return;
                }
            }
            else if (h.Kind == CoherencyHeaderKind.MirrorWithBase)
            {
                if (applier.CheckWithBase(h, Block(batch.DataOf(i).Slice(0, MirrorWire.BaseBlockBytes), ref reference), e => stored?.Contains(e) == true, out retired) is { } missing)
                {
                    await RefuseAsync(batch.BatchNumber, MirrorStatusCode.Malformed, missing);
                    return;
                }
            }
            if (h.Stores) (stored ??= []).Add((int)(h.ElementIndex / WriteBackCache.SectorsPerElement));
            else stored?.Remove((int)(h.ElementIndex / WriteBackCache.SectorsPerElement));
            if (retired >= 0) stored?.Remove(retired);
        }
        byte[]? scratch = null;
        try
        {
            for (int i = 0; i < batch.Headers.Count; i++)
            {
                var h = batch.Headers[i];
                var data = batch.DataOf(i);
                ReadOnlySpan<byte> span;
                if (data.IsSingleSegment) span = data.FirstSpan;
                else
                {
                    scratch ??= new byte[WriteBackCache.ElementBytes];
                    data.CopyTo(scratch);
                    span = scratch.AsSpan(0, (int)data.Length);
                }
                if (applier.Apply(h, span) is { } problem)
                {
                    await RefuseAsync(batch.BatchNumber, MirrorStatusCode.Malformed, problem);
                    return;
                }
                _sequence = h.Sequence;
            }
        }
        finally { _ = scratch; }
        Operations++;
        await ReplyAsync(new StatusMessage(batch.BatchNumber & 0xFFFFFF, MirrorStatusCode.Ok, (uint)batch.Headers.Count));
    }

    async ValueTask FinishSmallAsync(ReadOnlyMemory<byte> data)
    {
        _expect = Expect.Command;
        var s = _small;
        var elements = s.Elements;
        int total = elements.Sum(e => (int)e.ByteCount);
        if (data.Length != total)
        {
            await RefuseAsync(0, MirrorStatusCode.DataMismatch, $"small write carries {data.Length} bytes for {total} announced");
            return;
        }
        if (await StoreAsync(s.Volume, s.Lba, elements, data, 0))
        {
            Operations++;
            await ReplyAsync(new StatusMessage(0, MirrorStatusCode.Ok, (uint)elements.Count));
        }
    }

    void BeginLarge(ReadOnlySpan<byte> message)
    {
        if (!MetadataMirrorMessage.TryDecode(message, RegionBytes, out var metadata, out var error) || metadata is null)
        {
            _expect = Expect.Command;
            _ = RefuseAsync(0, MirrorStatusCode.Malformed, $"metadata refused: {error}").AsTask();
            return;
        }
        if (metadata.Region != MirrorWire.RegionSecond)
        {
            _expect = Expect.Command;
            _ = RefuseAsync(metadata.Sequence, MirrorStatusCode.Malformed, $"metadata names region {metadata.Region}; the peer's mirror is region 2").AsTask();
            return;
        }
        // MR-2b: the blocks the metadata names are invalid until their data has arrived.
        foreach (var e in metadata.Elements) applier.Region.Invalidate((int)(e.NvramOffset / WriteBackCache.ElementBytes));
        _metadata = metadata;
        _expect = Expect.LargeData;
    }

    async ValueTask FinishLargeAsync(ReadOnlyMemory<byte> data)
    {
        _expect = Expect.Command;
        var m = _metadata!;
        _metadata = null;
        if (!DataMirrorMessage.TryDecode(data, m, out _, out var error))
        {
            await RefuseAsync(m.Sequence, MirrorStatusCode.DataMismatch, $"data refused: {error}");
            return;
        }
        if (await StoreAsync(m.ArrayNumber, m.Lba, m.Elements, data, m.Sequence))
        {
            Operations++;
            await ReplyAsync(new StatusMessage(m.Sequence, MirrorStatusCode.Ok, (uint)m.Elements.Count));
        }
    }

    /// <summary>Stores a seed write (one contiguous LBA range over S/G elements) into region 2, one
    /// element image per S/G element. Validates everything first.</summary>
    async ValueTask<bool> StoreAsync(byte volume, ulong lba, IReadOnlyList<SgElement> elements, ReadOnlyMemory<byte> data, uint answerSequence)
    {
        var headers = new List<CoherencyHeader>(elements.Count);
        ulong at = lba;
        foreach (var e in elements)
        {
            uint index = e.NvramOffset / (uint)Units.SectorBytes;
            uint blocks = e.ByteCount / (uint)Units.SectorBytes;
            int first = (int)(index % WriteBackCache.SectorsPerElement);
            if (first + blocks > WriteBackCache.SectorsPerElement)
            {
                await RefuseAsync(answerSequence, MirrorStatusCode.Malformed, $"S/G element at offset {e.NvramOffset} crosses a 16 KiB element");
                return false;
            }
            uint mask = blocks == 32 ? uint.MaxValue : ((1u << (int)blocks) - 1) << first;
            headers.Add(new CoherencyHeader(CoherencyHeaderKind.Mirror, volume, at, blocks, index, mask, ++_sequence));
            at += blocks;
        }
        int offset = 0;
        foreach (var h in headers)
        {
            int length = (int)h.BlockCount * Units.SectorBytes;
            if (applier.Apply(h, data.Span.Slice(offset, length)) is { } problem)
            {
                await RefuseAsync(answerSequence, problem.Contains("volume") ? MirrorStatusCode.UnknownVolume : MirrorStatusCode.Malformed, problem);
                return false;
            }
            offset += length;
        }
        return true;
    }

    async ValueTask RefuseAsync(uint sequence, MirrorStatusCode code, string why)
    {
        Refused++;
        LogRefused(why);
        await ReplyAsync(new StatusMessage(sequence, code, 0));
    }

    ValueTask ReplyAsync(StatusMessage status)
    {
        var bytes = new byte[StatusMessage.Size];
        status.Encode(bytes);
        return reply(bytes);
    }

    [LoggerMessage(EventId = 5101, Level = LogLevel.Warning, Message = "mirror transfer refused, nothing written: {Why}")]
    partial void LogRefused(string why);
    [LoggerMessage(EventId = 5102, Level = LogLevel.Warning, Message = "mirror transfer from stale epoch {Epoch} dropped (peer is at {Current})")]
    partial void LogStaleEpoch(ulong epoch, ulong current);
}
