using Duet.Cache;
using Duet.Core;
using Duet.HostProtocol;
using Duet.Interconnect.Link;
using Duet.Interconnect.Wire;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Controller;

// Idempotent re-issue for the host protocol (host-protocol.md, "Finished commands survive a restart").
// The handshake's memory of finished commands dies with the process. So every host write this
// controller runs is also recorded in a table in its NVRAM (HostTagTable: key, request digest, status,
// sequence, CRC), before the host is answered, and the entry goes to the peer, which keeps it in its
// copy of our table (message HostTagEntries, 0x010C; entries recorded while the last one was posted go
// together). The sender waits for the post at most 100 ms, as
// for a write checkpoint (a hung peer must not stall host writes); the link is FIFO, so the peer has
// the entry before any later message of ours — our answer's consequences included. A pairing sends
// the whole table. The handshake looks a command it neither holds nor remembers up in both tables, own
// first: after a restart, a power cut (both tables are read back from NVRAM) or a takeover (the
// survivor has the dead peer's entries) a write re-issued under its tag is answered with its status
// and not run again.
//
// Neither table is cleared: not when the peer says hello (its resend overwrites the same slots, and
// until then the old entries are still true: those commands did finish), not when this controller
// starts fenced (the survivor still needs our entries, and we need them when we serve again). An entry
// only ever leaves its ring when a newer one takes its slot.
public sealed partial class Controller : IFinishedCommandTable
{
    /// <summary>This controller's table of finished host commands in NVRAM, and its copy of the peer's.</summary>
    public HostTagTable HostTags { get; }

    async ValueTask IFinishedCommandTable.RecordAsync(FinishedCommandRecord record)
    {
        var entry = HostTags.Record(ToTagKey(record.Key), record.Digest, checked((byte)record.Status));
        if (!HostTagsFlow) return;
        // Entries recorded while the last message was posted go together (as the handshake's steps do): one
        // 16-byte head for several 32-byte entries instead of one each. The writer still waits for the post of its own.
        var posted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool pump;
        lock (_hostTagSendLock)
        {
            _hostTagSends.Add((entry, posted));
            pump = !_hostTagPumping;
            _hostTagPumping = true;
        }
        if (pump) _ = PumpHostTagsAsync();
        try { await Waits.WithTimeout(posted.Task, CheckpointPostLimit, _options.Time); }
        catch (TimeoutException) { }
    }

    readonly Lock _hostTagSendLock = new();
    readonly List<(HostTagEntry Entry, TaskCompletionSource Posted)> _hostTagSends = [];
    bool _hostTagPumping;

    /// <summary>Posts the recorded entries, those gathered meanwhile together, until none wait.</summary>
    async Task PumpHostTagsAsync()
    {
        await Task.Yield();
        while (true)
        {
            List<(HostTagEntry Entry, TaskCompletionSource Posted)> run;
            lock (_hostTagSendLock)
            {
                if (_hostTagSends.Count == 0)
                {
                    _hostTagPumping = false;
                    return;
                }
                int n = Math.Min(_hostTagSends.Count, HostTagEntries.EntriesMax);
                run = _hostTagSends.GetRange(0, n);
                _hostTagSends.RemoveRange(0, n);
            }
            try { await PostOrDropAsync(IclSignal.Message, HostTagBytes(run.Select(r => r.Entry), resend: false)); }
            catch (Exception e) when (e is not InvariantViolationException) { LogUnknown("host tag entries post", e.Message); }
            catch (InvariantViolationException)
            {
                // A broken invariant ends the pump; the next writer starts another. Left set, the flag made every later
                // writer wait out the post limit, and the peer's copy of the table never heard of them again.
                lock (_hostTagSendLock) _hostTagPumping = false;
                throw;
            }
            finally
            {
                foreach (var r in run) r.Posted.TrySetResult();
            }
        }
    }

    bool IFinishedCommandTable.TryRecall(HostCommandKey key, out FinishedCommandRecord record)
    {
        if (HostTags.TryFind(ToTagKey(key), out var e, out _))
        {
            record = new FinishedCommandRecord(key, e.Digest, (HostStatus)e.Status);
            return true;
        }
        record = default;
        return false;
    }

    static HostTagKey ToTagKey(HostCommandKey key) => new(key.Unit, key.HostId, key.HostTag);

    // Entries go to a peer that is paired and listening, as checkpoints do (with or without a shelf: the
    // copy also answers re-issues after a restart of this side). Between pairings the peer's copy misses
    // entries; the pairing's resend fills it.
    bool HostTagsFlow => Link.IsUp && !_peerFenced && Mirror.Mode == MirrorMode.Healthy;

    /// <summary>A message of <paramref name="entries"/>, in sequence order as the wire wants them. Recorders take their
    /// sequence under the table's lock and join the pump's list under another, so two on different threads can join
    /// it in the other order: unsorted, such a run broke the message's invariant, killed the pump and left every
    /// later command waiting out the post limit (seen after a path-failover takeover: ~180 writes/s for minutes).</summary>
    public static byte[] HostTagBytes(IEnumerable<HostTagEntry> entries, bool resend) =>
        DuetFrame.ToArray(new HostTagEntries([.. entries.OrderBy(e => e.Sequence).Select(e => new HostTagWireEntry(e.Key.Unit, e.Key.HostId, e.Key.HostTag, e.Digest, e.Status, e.Sequence))], resend));

    /// <summary>Pairing: the peer's copy of our table gets every entry we have, oldest first. Entries
    /// recorded meanwhile flow on their own (the mirror is healthy by now); a resent entry older than
    /// what the peer's slot holds is not stored there.</summary>
    async Task SendHostTagsAsync()
    {
        var entries = HostTags.OwnEntries();
        for (int i = 0; i < entries.Count; i += HostTagEntries.EntriesMax)
            await PostOrDropAsync(IclSignal.Message, HostTagBytes(entries.Skip(i).Take(HostTagEntries.EntriesMax), resend: true));
    }

    void OnHostTagEntries(ReadOnlySpan<byte> message)
    {
        if (HostTagEntries.TryDecode(message, out var m, out _, out var error) != System.Buffers.OperationStatus.Done)
        {
            LogUnknown("host tag entries", error.ToString());
            return;
        }
        foreach (var e in m!.Entries)
        {
            if (e.Status > (byte)HostStatus.NotAttached)
            {
                LogUnknown("host tag entry", $"status {e.Status}");
                continue;
            }
            HostTags.StoreMirrored(new HostTagEntry(new HostTagKey(e.Unit, e.HostId, e.HostTag), e.Digest, e.Status, e.Sequence));
        }
    }

    void LogHostTagsOpened()
    {
        if (HostTags.RecoveredOwn > 0 || HostTags.RecoveredPeer > 0 || HostTags.Skipped.Count > 0)
            LogHostTags(HostTags.RecoveredOwn, HostTags.RecoveredPeer, HostTags.Skipped.Count);
        foreach (var why in HostTags.Skipped.Take(8)) LogHostTagSkipped(why);
    }

    [LoggerMessage(EventId = 7070, Level = LogLevel.Information, Message = "host tag tables: {Own} finished host commands of ours and {Peer} of the peer's read back from NVRAM; {Skipped} damaged entries skipped")]
    partial void LogHostTags(int own, int peer, int skipped);

    [LoggerMessage(EventId = 7071, Level = LogLevel.Warning, Message = "host tag table: entry skipped: {Why}")]
    partial void LogHostTagSkipped(string why);
}
