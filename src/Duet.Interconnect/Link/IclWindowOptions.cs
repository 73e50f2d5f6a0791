namespace Duet.Interconnect.Link;

/// <summary>
/// Sizes of the window a controller exposes to its peer (ICL-1), and the link's timeouts.
/// The sender always uses the sizes the receiver announces (its window header, or its TCP
/// hello), so the two ends may differ.
/// </summary>
public sealed record IclWindowOptions
{
    /// <summary>Command queue depth (entries).</summary>
    public int QueueEntries { get; init; } = 256;
    /// <summary>Reply queue depth; at least <see cref="QueueEntries"/> so that every command slot has room for its reply (no deadlock).</summary>
    public int ReplyQueueEntries { get; init; } = 256;
    /// <summary>Message buffer for commands (bytes).</summary>
    public int MessageBufferBytes { get; init; } = 256 * 1024;
    /// <summary>Data buffer for commands (bytes). Larger data goes as message-with-partial-data pieces of half this size.</summary>
    public int DataBufferBytes { get; init; } = 4 * 1024 * 1024;
    /// <summary>Message buffer reserved for replies (bytes).</summary>
    public int ReplyMessageBufferBytes { get; init; } = 64 * 1024;
    /// <summary>Data buffer reserved for replies (bytes); may be 0 (replies then carry no data).</summary>
    public int ReplyDataBufferBytes { get; init; } = 256 * 1024;
    /// <summary>How long PostAsync waits for window space (or a TCP write) before it gives up with <see cref="IclLinkDownException"/>.</summary>
    public TimeSpan PostTimeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>TCP: pause between connection attempts of the connecting side.</summary>
    public TimeSpan ReconnectInterval { get; init; } = TimeSpan.FromMilliseconds(200);
    /// <summary>TCP: how long the hello exchange of a new connection may take.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(5);

    public static IclWindowOptions Default { get; } = new();

    internal void Validate()
    {
        if (QueueEntries < 1) throw new ArgumentOutOfRangeException(nameof(QueueEntries), QueueEntries, "must be at least 1");
        if (ReplyQueueEntries < QueueEntries)
            throw new ArgumentOutOfRangeException(nameof(ReplyQueueEntries), ReplyQueueEntries, "must be at least QueueEntries (one reply per command slot, so full command queues cannot deadlock)");
        if (MessageBufferBytes < 64) throw new ArgumentOutOfRangeException(nameof(MessageBufferBytes), MessageBufferBytes, "must be at least 64");
        if (ReplyMessageBufferBytes < 64) throw new ArgumentOutOfRangeException(nameof(ReplyMessageBufferBytes), ReplyMessageBufferBytes, "must be at least 64");
        if (DataBufferBytes < 2) throw new ArgumentOutOfRangeException(nameof(DataBufferBytes), DataBufferBytes, "must be at least 2");
        if (ReplyDataBufferBytes < 0) throw new ArgumentOutOfRangeException(nameof(ReplyDataBufferBytes), ReplyDataBufferBytes, "must not be negative");
        if (PostTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(PostTimeout), PostTimeout, "must be positive");
        _ = WindowLayout.From(this); // throws if the window would not fit in 2 GiB
    }
}
