namespace Duet.Interconnect.Link;

/// <summary>
/// ICL-3: what a transfer carries. Written into the receiver's command queue (or, for
/// <see cref="Reply"/>, its reply queue) next to the message and data it describes.
/// </summary>
public enum IclSignal : byte
{
    /// <summary>A message with no data.</summary>
    Message = 1,
    /// <summary>A message and all of its data (the data fits the receiver's data buffer).</summary>
    MessageWithData = 2,
    /// <summary>One piece of data that is larger than the receiver's data buffer; the link assembles
    /// the pieces and delivers the whole once, with this signal.</summary>
    MessageWithPartialData = 3,
    /// <summary>A reply (seed claims 8, 13, 19, 23): goes into the peer's reply queue, never its command queue.</summary>
    Reply = 4,
}

/// <summary>
/// One transfer handed to the receiver's handler. The instance and the memory it points at
/// (usually the window itself) are valid only during the handler call: copy what you keep.
/// Returning from the handler frees the window space (ICL-4).
/// </summary>
public sealed class IclTransfer
{
    internal IclTransfer() { }

    public IclSignal Signal { get; private set; }
    /// <summary>The sender's ownership epoch, carried verbatim.</summary>
    public ulong Epoch { get; private set; }
    public ReadOnlyMemory<byte> Message { get; private set; }
    /// <summary>The data; for a message-with-partial-data sequence, the whole assembled data (ICL-3).</summary>
    public ReadOnlyMemory<byte> Data { get; private set; }

    internal void Set(IclSignal signal, ulong epoch, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data)
    {
        Signal = signal;
        Epoch = epoch;
        Message = message;
        Data = data;
    }

    internal void Clear() => Set(0, 0, default, default);

    public override string ToString() => $"{Signal} epoch {Epoch} message {Message.Length} B data {Data.Length} B";
}

/// <summary>The link is down (cut, not connected, disposed) or the peer freed no window space within PostTimeout.</summary>
public sealed class IclLinkDownException : Exception
{
    public IclLinkDownException(string message) : base(message) { }
    public IclLinkDownException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>
/// The inter-controller link, seen from one controller. Same semantics over every transport
/// (in-memory, shared memory, TCP); see docs/internals/interconnect.md.
/// </summary>
public interface IIclLink : IAsyncDisposable
{
    string LocalName { get; }
    string PeerName { get; }
    bool IsUp { get; }
    /// <summary>Raised with the new value whenever <see cref="IsUp"/> changes (on the thread that noticed).</summary>
    event Action<bool>? UpChanged;

    /// <summary>
    /// Posts one transfer into the peer's window (message into its message buffer, data into its
    /// data buffer, an entry into its command queue, or its reply queue for <see cref="IclSignal.Reply"/>)
    /// and rings the peer's doorbell once (ICL-2). Data larger than the peer's data buffer goes as
    /// several message-with-partial-data transfers, one doorbell each. Waits asynchronously for
    /// window space (ICL-4); throws <see cref="IclLinkDownException"/> if the link is down or no
    /// space frees within <see cref="IclWindowOptions.PostTimeout"/>.
    /// </summary>
    ValueTask PostAsync(IclSignal signal, ulong epoch, ReadOnlyMemory<byte> message, ReadOnlyMemory<byte> data, CancellationToken ct = default);

    /// <summary>Starts delivering the peer's transfers, in order per queue, one at a time, to <paramref name="handler"/>.</summary>
    void Start(Func<IclTransfer, ValueTask> handler);

    /// <summary>A snapshot of this end's counters (ICL-5).</summary>
    IclCounters Counters { get; }

    /// <summary>Sees, when the link is cut, each whole message-only transfer still unread in this end's window, in
    /// order (signal, epoch, message), before they are dropped; none reaches the handler (<see cref="IclLink.Salvage"/>).</summary>
    Action<IclSignal, ulong, ReadOnlySpan<byte>>? Salvage { get; set; }

    /// <summary>
    /// True only on proof that the process of the peer this end last paired with no longer runs (it exited, or is a
    /// zombie: every thread gone, every connection closed), not merely that it is silent. Only a link that can see
    /// the peer's process says so: the shared-memory link, both ends on one host. Such a peer serves nothing any
    /// more, from its cache or otherwise, whatever lease it held (FO-7). False while nothing proves it, or before
    /// any pairing.
    /// </summary>
    bool PeerProcessGone => false;
}
