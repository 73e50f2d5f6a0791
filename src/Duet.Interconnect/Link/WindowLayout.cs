using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Duet.Interconnect.Link;

/// <summary>
/// Byte offsets of one window (ICL-1). Every multi-byte field is little-endian; counters are
/// 64-bit and never wrap in practice (positions are free-running, taken modulo the capacity).
///
/// <code>
///   0      header (256 B): magic "DUETICL1", version, entry size, total bytes, ready,
///          lane count, owner name, and per lane {entries, offsets and sizes}
///          (at 160) owner pid u32, (at 168) owner session nonce u64, (at 176) owner process start time u64
///   256    interrupt range (128 B): doorbell u64, wake u32 (futex word), sleeping u32, spaceFreed u64,
///          accepted u64 (the peer session nonce the owner accepts as producer), spaceWanted u32 (the
///          producer waits for space in this window: the owner tells it when it frees some)
///   384    lane control, 384 B per lane (2 lanes), one 64-byte line per counter:
///          entryHead, entryTail, messageHead, messageTail, dataHead, dataTail
///   1152   (4 KiB aligned from here) command queue entries, reply queue entries,
///          command message buffer, command data buffer, reply message buffer, reply data buffer
/// </code>
/// Heads are written only by the peer (the producer), tails only by the owner (the consumer).
/// </summary>
internal sealed record WindowLayout(LaneLayout Commands, LaneLayout Replies, int TotalBytes)
{
    public const ulong Magic = 0x314C434954455544UL; // "DUETICL1" as little-endian bytes
    public const uint Version = 2; // 2: spaceWanted (a v1 producer would never be told of freed space)
    public const int HeaderBytes = 256;
    public const int EntryBytes = 64;
    public const int Lanes = 2;
    public const int CommandLane = 0;
    public const int ReplyLane = 1;

    // Header fields.
    public const int MagicOffset = 0;
    public const int VersionOffset = 8;
    public const int EntrySizeOffset = 12;
    public const int TotalBytesOffset = 16;
    public const int ReadyOffset = 24;
    public const int LaneCountOffset = 28;
    public const int OwnerNameOffset = 32;
    public const int OwnerNameBytes = 32;
    public const int LaneDescriptorOffset = 64;   // 2 x 48 bytes: entries, entriesOffset, messageBytes, messageOffset, dataBytes, dataOffset (u64 each)
    public const int LaneDescriptorBytes = 48;
    public const int OwnerPidOffset = 160;        // u32: the owner's process id (0: not recorded, no liveness check)
    public const int OwnerNonceOffset = 168;      // u64: the owner's session nonce, new for every window made (0: none)
    public const int OwnerStartOffset = 176;      // u64: the owner process's start time (/proc/pid/stat field 22; 0: not recorded)

    // Interrupt range.
    public const int InterruptOffset = 256;
    public const int DoorbellOffset = 256;        // u64: transfers rung by the peer
    public const int WakeOffset = 264;            // u32: futex word, bumped on every doorbell or space notification
    public const int SleepingOffset = 268;        // u32: 1 while the owner sleeps in FUTEX_WAIT
    public const int SpaceFreedOffset = 272;      // u64: bumped by the peer when it frees space in ITS window
    public const int AcceptedOffset = 280;        // u64: the nonce of the peer session the owner accepts as producer (0: none yet)
    public const int SpaceWantedOffset = 288;     // u32: 1 while the producer waits for space here (set by it, cleared by the owner when it notifies)

    // Lane control: six counters, each on its own cache line.
    public const int ControlOffset = 384;
    public const int ControlBytesPerLane = 384;
    public const int EntryHead = 0, EntryTail = 64, MessageHead = 128, MessageTail = 192, DataHead = 256, DataTail = 320;

    public LaneLayout Lane(int lane) => lane == CommandLane ? Commands : Replies;

    public static WindowLayout From(IclWindowOptions o) =>
        Build(o.QueueEntries, o.MessageBufferBytes, o.DataBufferBytes, o.ReplyQueueEntries, o.ReplyMessageBufferBytes, o.ReplyDataBufferBytes);

    public static WindowLayout Build(int cmdEntries, int cmdMessage, int cmdData, int replyEntries, int replyMessage, int replyData)
    {
        long at = Align(ControlOffset + Lanes * ControlBytesPerLane);
        long cmdEntriesAt = at; at = Align(at + (long)cmdEntries * EntryBytes);
        long replyEntriesAt = at; at = Align(at + (long)replyEntries * EntryBytes);
        long cmdMessageAt = at; at = Align(at + cmdMessage);
        long cmdDataAt = at; at = Align(at + cmdData);
        long replyMessageAt = at; at = Align(at + replyMessage);
        long replyDataAt = at; at = Align(at + replyData);
        if (at > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(cmdData), at, "the window must fit in 2 GiB");
        return new WindowLayout(
            new LaneLayout(CommandLane, cmdEntries, (int)cmdEntriesAt, cmdMessage, (int)cmdMessageAt, cmdData, (int)cmdDataAt),
            new LaneLayout(ReplyLane, replyEntries, (int)replyEntriesAt, replyMessage, (int)replyMessageAt, replyData, (int)replyDataAt),
            (int)at);
    }

    static long Align(long v) => (v + 4095) & ~4095L;

    /// <summary>Writes the header (all but the ready word) into a zeroed window.</summary>
    public void WriteHeader(Span<byte> w, string owner)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(w[MagicOffset..], Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(w[VersionOffset..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(w[EntrySizeOffset..], EntryBytes);
        BinaryPrimitives.WriteUInt64LittleEndian(w[TotalBytesOffset..], (ulong)TotalBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(w[LaneCountOffset..], Lanes);
        var name = w.Slice(OwnerNameOffset, OwnerNameBytes);
        name.Clear();
        Encoding.UTF8.GetBytes(owner.AsSpan(0, Math.Min(owner.Length, OwnerNameBytes / 4)), name);
        for (int lane = 0; lane < Lanes; lane++)
        {
            var l = Lane(lane);
            var d = w.Slice(LaneDescriptorOffset + lane * LaneDescriptorBytes, LaneDescriptorBytes);
            BinaryPrimitives.WriteUInt64LittleEndian(d[0..], (ulong)l.Entries);
            BinaryPrimitives.WriteUInt64LittleEndian(d[8..], (ulong)l.EntriesOffset);
            BinaryPrimitives.WriteUInt64LittleEndian(d[16..], (ulong)l.MessageBytes);
            BinaryPrimitives.WriteUInt64LittleEndian(d[24..], (ulong)l.MessageOffset);
            BinaryPrimitives.WriteUInt64LittleEndian(d[32..], (ulong)l.DataBytes);
            BinaryPrimitives.WriteUInt64LittleEndian(d[40..], (ulong)l.DataOffset);
        }
    }

    /// <summary>Reads and checks a header written by <see cref="WriteHeader"/>; null with a reason if it is not a valid window.</summary>
    public static WindowLayout? ReadHeader(ReadOnlySpan<byte> w, out string reason)
    {
        reason = "";
        if (w.Length < HeaderBytes) { reason = "shorter than a header"; return null; }
        if (BinaryPrimitives.ReadUInt64LittleEndian(w[MagicOffset..]) != Magic) { reason = "bad magic"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(w[VersionOffset..]) != Version) { reason = "unsupported version"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(w[EntrySizeOffset..]) != EntryBytes) { reason = "unsupported entry size"; return null; }
        if (BinaryPrimitives.ReadUInt32LittleEndian(w[LaneCountOffset..]) != Lanes) { reason = "unsupported lane count"; return null; }
        Span<long> v = stackalloc long[6];
        for (int lane = 0; lane < Lanes; lane++)
        {
            var d = w.Slice(LaneDescriptorOffset + lane * LaneDescriptorBytes, LaneDescriptorBytes);
            ulong entries = BinaryPrimitives.ReadUInt64LittleEndian(d[0..]);
            ulong message = BinaryPrimitives.ReadUInt64LittleEndian(d[16..]);
            ulong data = BinaryPrimitives.ReadUInt64LittleEndian(d[32..]);
            if (entries is 0 or > int.MaxValue || message > int.MaxValue || data > int.MaxValue) { reason = "bad lane sizes"; return null; }
            v[lane * 3] = (long)entries; v[lane * 3 + 1] = (long)message; v[lane * 3 + 2] = (long)data;
        }
        WindowLayout layout;
        try { layout = Build((int)v[0], (int)v[1], (int)v[2], (int)v[3], (int)v[4], (int)v[5]); }
        catch (ArgumentOutOfRangeException) { reason = "window too large"; return null; }
        if (BinaryPrimitives.ReadUInt64LittleEndian(w[TotalBytesOffset..]) != (ulong)layout.TotalBytes) { reason = "total size does not match the lane sizes"; return null; }
        for (int lane = 0; lane < Lanes; lane++)
        {
            var d = w.Slice(LaneDescriptorOffset + lane * LaneDescriptorBytes, LaneDescriptorBytes);
            var l = layout.Lane(lane);
            if (BinaryPrimitives.ReadUInt64LittleEndian(d[8..]) != (ulong)l.EntriesOffset
                || BinaryPrimitives.ReadUInt64LittleEndian(d[24..]) != (ulong)l.MessageOffset
                || BinaryPrimitives.ReadUInt64LittleEndian(d[40..]) != (ulong)l.DataOffset) { reason = "offsets do not match the lane sizes"; return null; }
        }
        return layout;
    }

    public static string ReadOwner(ReadOnlySpan<byte> w)
    {
        var name = w.Slice(OwnerNameOffset, OwnerNameBytes);
        int n = name.IndexOf((byte)0);
        return Encoding.UTF8.GetString(n < 0 ? name : name[..n]);
    }
}

/// <summary>One queue (command or reply) with its own message and data byte rings.</summary>
internal sealed record LaneLayout(int Index, int Entries, int EntriesOffset, int MessageBytes, int MessageOffset, int DataBytes, int DataOffset)
{
    public int Control => WindowLayout.ControlOffset + Index * WindowLayout.ControlBytesPerLane;
}

/// <summary>Entry flags.</summary>
[Flags]
internal enum IclEntryFlags : byte
{
    None = 0,
    /// <summary>One piece of data assembled by the receiver.</summary>
    Partial = 1,
    /// <summary>The first piece of a partial sequence.</summary>
    First = 2,
    /// <summary>The last piece: it carries the message, and the whole is delivered after it.</summary>
    Last = 4,
}

/// <summary>
/// A queue entry (64 bytes, little-endian): the signal identifier and where its message and
/// data lie in the byte rings (ICL-1, claims 4, 15).
/// <code>
///   0 signal u8 | 1 flags u8 | 2 reserved u16 | 4 messageLength u32 | 8 epoch u64
///  16 messagePos u64 | 24 dataPos u64 | 32 dataLength u32 | 36 reserved u32
///  40 totalDataLength u64 (the assembled length, partial sequences) | 48 sequence u64 | 56 reserved u64
/// </code>
/// Positions are free-running ring positions (byte counters); the bytes lie at pos mod capacity, wrapping.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = WindowLayout.EntryBytes)]
internal struct IclEntry
{
    [FieldOffset(0)] public byte Signal;
    [FieldOffset(1)] public IclEntryFlags Flags;
    [FieldOffset(4)] public int MessageLength;
    [FieldOffset(8)] public ulong Epoch;
    [FieldOffset(16)] public long MessagePos;
    [FieldOffset(24)] public long DataPos;
    [FieldOffset(32)] public int DataLength;
    [FieldOffset(40)] public long TotalDataLength;
    [FieldOffset(48)] public long Sequence;
}
