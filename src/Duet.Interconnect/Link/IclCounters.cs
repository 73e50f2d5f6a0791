using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Duet.Interconnect.Link;

/// <summary>Transfers and their bytes for one signal in one direction.</summary>
public readonly record struct IclTrafficCounts(long Transfers, long MessageBytes, long DataBytes);

/// <summary>
/// A snapshot of one link end's counters (ICL-5). A transfer is one queue entry (one piece
/// of a message-with-partial-data sequence counts as one); every transfer rings one doorbell.
/// </summary>
public sealed record IclCounters
{
    /// <summary>Doorbells this end rang at the peer (one per transfer sent).</summary>
    public long DoorbellsRung { get; init; }
    /// <summary>Doorbells the peer rang here that this end has taken (seen in its interrupt range).</summary>
    public long DoorbellsTaken { get; init; }
    /// <summary>PostAsync calls that gave up because no window space freed within PostTimeout.</summary>
    public long PostTimeouts { get; init; }
    /// <summary>Message-with-partial-data sequences assembled and delivered whole.</summary>
    public long PartialTransfersAssembled { get; init; }
    /// <summary>Received transfers not delivered: pending when the link was cut, an abandoned partial sequence, or malformed.</summary>
    public long TransfersDropped { get; init; }
    /// <summary>Received transfers that broke the ring protocol (bad signal, lengths, positions).</summary>
    public long ProtocolErrors { get; init; }
    /// <summary>Exceptions thrown by the handler (caught; the transfer still counts as delivered).</summary>
    public long HandlerErrors { get; init; }
    /// <summary>Space-freed notifications this end sent to the peer (flow control; not doorbells).</summary>
    public long SpaceNotificationsSent { get; init; }
    /// <summary>By signal, transfers this end posted.</summary>
    public required IReadOnlyDictionary<IclSignal, IclTrafficCounts> Sent { get; init; }
    /// <summary>By signal, transfers this end took from its window.</summary>
    public required IReadOnlyDictionary<IclSignal, IclTrafficCounts> Received { get; init; }
    /// <summary>By message type (<see cref="Wire.MessageKind"/>, named as the classifier names it from the
    /// message's first bytes; "Data" for a transfer that carries data only), transfers this end posted.
    /// Types never sent are left out.</summary>
    public IReadOnlyDictionary<string, IclTrafficCounts> SentByType { get; init; } = new Dictionary<string, IclTrafficCounts>();

    public long TransfersSent => Sent.Values.Sum(c => c.Transfers);
    public long TransfersReceived => Received.Values.Sum(c => c.Transfers);
    public long MessageBytesSent => Sent.Values.Sum(c => c.MessageBytes);
    public long DataBytesSent => Sent.Values.Sum(c => c.DataBytes);
    public long MessageBytesReceived => Received.Values.Sum(c => c.MessageBytes);
    public long DataBytesReceived => Received.Values.Sum(c => c.DataBytes);
}

/// <summary>
/// The live counters of one link end, mirrored into the "Duet.Interconnect" meter (ICL-5):
/// duet.icl.doorbells{link, peer, direction=rung|taken}, duet.icl.transfers and
/// duet.icl.message_bytes / duet.icl.data_bytes {link, peer, signal, direction=sent|received},
/// duet.icl.post_timeouts, duet.icl.partial_assembled, duet.icl.dropped {link, peer};
/// duet.icl.sent_bytes {link, peer, type}: message + data bytes posted, by message type.
/// </summary>
internal sealed class IclCounterSet(string link, string peer)
{
    public const string MeterName = "Duet.Interconnect";
    static readonly Meter Meter = new(MeterName);
    static readonly Counter<long> Doorbells = Meter.CreateCounter<long>("duet.icl.doorbells", "{doorbell}", "ICL doorbells rung at the peer or taken from it");
    static readonly Counter<long> Transfers = Meter.CreateCounter<long>("duet.icl.transfers", "{transfer}", "ICL transfers (queue entries) by signal and direction");
    static readonly Counter<long> MessageBytes = Meter.CreateCounter<long>("duet.icl.message_bytes", "By", "ICL message bytes by signal and direction");
    static readonly Counter<long> DataBytes = Meter.CreateCounter<long>("duet.icl.data_bytes", "By", "ICL data bytes by signal and direction");
    static readonly Counter<long> PostTimeoutCounter = Meter.CreateCounter<long>("duet.icl.post_timeouts", "{post}", "PostAsync calls that found no window space within PostTimeout");
    static readonly Counter<long> PartialCounter = Meter.CreateCounter<long>("duet.icl.partial_assembled", "{transfer}", "message-with-partial-data sequences assembled");
    static readonly Counter<long> DroppedCounter = Meter.CreateCounter<long>("duet.icl.dropped", "{transfer}", "received transfers not delivered");
    static readonly Counter<long> SentBytesByType = Meter.CreateCounter<long>("duet.icl.sent_bytes", "By", "ICL message + data bytes posted, by message type");
    static readonly int Kinds = Enum.GetValues<Wire.MessageKind>().Length;

    const int Signals = 5;
    readonly long[] _sent = new long[Signals * 3];
    readonly long[] _received = new long[Signals * 3];
    long _rung, _taken, _timeouts, _partials, _dropped, _protocol, _handler, _space;

    public void Sent(IclSignal s, int message, int data) => Count(_sent, s, message, data, "sent");

    // By message type: transfers, message bytes, data bytes (index Kinds: data only).
    readonly long[] _byType = new long[(Enum.GetValues<Wire.MessageKind>().Length + 1) * 3];

    public void Sent(IclSignal s, ReadOnlySpan<byte> message, int data)
    {
        Sent(s, message.Length, data);
        int kind = message.IsEmpty ? Kinds : (int)Wire.MessageClassifier.Classify(message);
        int i = kind * 3;
        Interlocked.Increment(ref _byType[i]);
        Interlocked.Add(ref _byType[i + 1], message.Length);
        Interlocked.Add(ref _byType[i + 2], data);
        SentBytesByType.Add(message.Length + data, new TagList { { "link", link }, { "peer", peer }, { "type", TypeName(kind) } });
    }

    static string TypeName(int kind) => kind == Kinds ? "Data" : ((Wire.MessageKind)kind).ToString();
    public void Received(IclSignal s, int message, int data) => Count(_received, s, message, data, "received");

    void Count(long[] a, IclSignal s, int message, int data, string direction)
    {
        int i = (int)s * 3;
        Interlocked.Increment(ref a[i]);
        Interlocked.Add(ref a[i + 1], message);
        Interlocked.Add(ref a[i + 2], data);
        var tags = new TagList { { "link", link }, { "peer", peer }, { "signal", s.ToString() }, { "direction", direction } };
        Transfers.Add(1, tags);
        if (message > 0) MessageBytes.Add(message, tags);
        if (data > 0) DataBytes.Add(data, tags);
    }

    public void Rung()
    {
        Interlocked.Increment(ref _rung);
        Doorbells.Add(1, new TagList { { "link", link }, { "peer", peer }, { "direction", "rung" } });
    }

    public void Taken(long n)
    {
        if (n <= 0) return;
        Interlocked.Add(ref _taken, n);
        Doorbells.Add(n, new TagList { { "link", link }, { "peer", peer }, { "direction", "taken" } });
    }

    public void PostTimeout() { Interlocked.Increment(ref _timeouts); PostTimeoutCounter.Add(1, new TagList { { "link", link }, { "peer", peer } }); }
    public void PartialAssembled() { Interlocked.Increment(ref _partials); PartialCounter.Add(1, new TagList { { "link", link }, { "peer", peer } }); }
    public void Dropped() { Interlocked.Increment(ref _dropped); DroppedCounter.Add(1, new TagList { { "link", link }, { "peer", peer } }); }
    public void ProtocolError() => Interlocked.Increment(ref _protocol);
    public void HandlerError() => Interlocked.Increment(ref _handler);
    public void SpaceNotification() => Interlocked.Increment(ref _space);

    public IclCounters Snapshot() => new()
    {
        DoorbellsRung = Interlocked.Read(ref _rung),
        DoorbellsTaken = Interlocked.Read(ref _taken),
        PostTimeouts = Interlocked.Read(ref _timeouts),
        PartialTransfersAssembled = Interlocked.Read(ref _partials),
        TransfersDropped = Interlocked.Read(ref _dropped),
        ProtocolErrors = Interlocked.Read(ref _protocol),
        HandlerErrors = Interlocked.Read(ref _handler),
        SpaceNotificationsSent = Interlocked.Read(ref _space),
        Sent = Read(_sent),
        Received = Read(_received),
        SentByType = ReadByType(),
    };

    Dictionary<string, IclTrafficCounts> ReadByType()
    {
        var d = new Dictionary<string, IclTrafficCounts>();
        for (int k = 0; k <= Kinds; k++)
        {
            long n = Interlocked.Read(ref _byType[k * 3]);
            if (n > 0) d[TypeName(k)] = new IclTrafficCounts(n, Interlocked.Read(ref _byType[k * 3 + 1]), Interlocked.Read(ref _byType[k * 3 + 2]));
        }
        return d;
    }

    static Dictionary<IclSignal, IclTrafficCounts> Read(long[] a)
    {
        var d = new Dictionary<IclSignal, IclTrafficCounts>();
        foreach (var s in Enum.GetValues<IclSignal>())
        {
            int i = (int)s * 3;
            d[s] = new IclTrafficCounts(Interlocked.Read(ref a[i]), Interlocked.Read(ref a[i + 1]), Interlocked.Read(ref a[i + 2]));
        }
        return d;
    }
}
