using Duet.Core;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

// AW-3, the array controller pair with checkpointing: every write this controller makes to an array
// (a destage run, a write-through) is announced to the peer before it starts ("started": array,
// first 4 KiB block, block count, an id) and after it ends ("done": the same id). The peer keeps
// the started-and-not-done ones; if it takes this controller over, it settles their stripes (scrub
// with repair: parity recomputed from whole data blocks) after adopting the mirrored elements, so a
// write the dead controller left half-way never leaves its stripe with parity that disagrees with its
// data. "Started" is on the link before the first drive write (the sender waits for the post, at most
// 100 ms), and the link is FIFO, so the peer has it whenever the drives may hold part of the write.
// Checkpoints flow only while the pair is healthy (mirror up, peer not fenced): a hung peer's full
// link must never stall this controller's writes.
public sealed partial class Controller : IWriteCheckpoints
{
    ulong _checkpointIds;
    // The peer's writes started and not done, by id.
    readonly Dictionary<ulong, WriteCheckpoint> _peerOpen = [];
    long _checkpointsSettled;

    /// <summary>The peer's writes started and not finished, as far as this controller heard.</summary>
    public int PeerOpenCheckpoints { get { lock (_peerOpen) return _peerOpen.Count; } }

    async ValueTask<ulong> IWriteCheckpoints.StartedAsync(byte array, long firstBlock, long blockCount)
    {
        ulong id = _options.Session + Interlocked.Increment(ref _checkpointIds);
        if (!CheckpointsFlow) return id;
        // Bounded: a peer that stopped reading its link (hung) must not stop our writes; the mirror has
        // failed by then anyway, and a peer that takes us over after that settles nothing it was not told.
        var post = PostOrDropAsync(IclSignal.Message, DuetFrame.ToArray(new WriteCheckpoint(CheckpointPhase.Started, id, array, (ulong)firstBlock, (uint)blockCount)));
        try { await Waits.WithTimeout(post, CheckpointPostLimit, _options.Time); }
        catch (TimeoutException) { }
        return id;
    }

    void IWriteCheckpoints.Done(ulong id, byte array, long firstBlock, long blockCount)
    {
        if (CheckpointsFlow) _ = PostOrDropAsync(IclSignal.Message, DuetFrame.ToArray(new WriteCheckpoint(CheckpointPhase.Done, id, array, (ulong)firstBlock, (uint)blockCount)));
    }

    // Checkpoints go to a peer that can take over and is listening: paired (mirror healthy), not fenced.
    bool CheckpointsFlow => Link.IsUp && !_peerFenced && Mirror.Mode == Duet.Cache.MirrorMode.Healthy;
    static readonly TimeSpan CheckpointPostLimit = TimeSpan.FromMilliseconds(100);

    void OnWriteCheckpoint(ReadOnlySpan<byte> message)
    {
        if (WriteCheckpoint.TryDecode(message, out var c, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("write checkpoint", error.ToString());
            return;
        }
        lock (_peerOpen)
        {
            if (c.Phase == CheckpointPhase.Started) _peerOpen[c.HostTag] = c;
            else _peerOpen.Remove(c.HostTag);
        }
    }

    /// <summary>A new session of the peer: what its old session started is its own replay's to finish.</summary>
    void ForgetPeerCheckpoints()
    {
        lock (_peerOpen) _peerOpen.Clear();
    }

    /// <summary>Takeover: settles the stripes of every write the peer started on the taken arrays and never finished.</summary>
    async Task<int> SettlePeerCheckpointsAsync(HashSet<byte> numbers)
    {
        List<WriteCheckpoint> open;
        lock (_peerOpen) open = [.. _peerOpen.Values.Where(c => numbers.Contains(c.Volume))];
        int settled = 0;
        foreach (var c in open)
        {
            var raid = Arrays.ServedArrays.FirstOrDefault(a => Arrays.NumberOf(a) == c.Volume);
            if (raid is null) continue;
            var result = await raid.SettleStripesAsync((long)c.Lba, c.BlockCount);
            if (result.Repaired > 0 || result.Unrepairable > 0) LogSettled(raid.Name, (long)c.Lba, c.BlockCount, result.Repaired, result.Unrepairable);
            lock (_peerOpen) _peerOpen.Remove(c.HostTag);
            settled++;
        }
        Interlocked.Add(ref _checkpointsSettled, settled);
        return settled;
    }

    [LoggerMessage(EventId = 7040, Level = LogLevel.Warning, Message = "array {Array}: the peer's unfinished write at block {Lba} (+{Count}) settled: {Repaired} blocks repaired, {Unrepairable} unrepairable")]
    partial void LogSettled(string array, long lba, uint count, long repaired, long unrepairable);
}
