using System.Buffers;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi;

/// <summary>
/// One SCSI command of a connection, from its SCSI Command PDU to its response. While it gathers
/// Data-Out only the connection's reader touches it; once it runs, the device task owns it and
/// the reader may only abort it.
/// </summary>
internal sealed class IscsiTask
{
    /// <summary>One outstanding R2T: the solicited burst [Offset, Offset + Length).</summary>
    public struct Burst
    {
        public uint R2TSN;
        public int Offset;
        public int Length;
        public int Next;
        public uint NextDataSN;
    }

    public required uint Itt { get; init; }
    public required uint Ttt { get; init; }
    public required uint CmdSn { get; init; }
    public required ulong LunField { get; init; }
    public required ulong Lun { get; init; }
    public required byte[] Cdb { get; init; }
    public required bool Read { get; init; }
    public required bool Write { get; init; }
    public required TaskAttribute Attribute { get; init; }
    public required int ExpectedIn { get; init; }
    public required int ExpectedOut { get; init; }

    /// <summary>The Data-Out buffer (pooled, ExpectedOut bytes used).</summary>
    public byte[]? Buffer;

    /// <summary>Data-Out bytes in the buffer so far.</summary>
    public int Received;

    // Unsolicited data (immediate data and Data-Out with TTT 0xffffffff): [0, UnsolicitedEnd).
    public int UnsolicitedEnd;
    public int NextUnsolicitedOffset;
    public uint NextUnsolicitedDataSN;
    /// <summary>Unsolicited Data-Out is still to come (the initiator has not ended that sequence with F).</summary>
    public bool UnsolicitedOpen;

    /// <summary>A Data-Out came with a DataSN out of order (RFC 7143 §7.8: data of the sequence was lost).
    /// ERL 0 cannot ask for it again, so the task will end CHECK CONDITION, ABORTED COMMAND, PROTOCOL SERVICE
    /// CRC ERROR (§7.7, §11.4.7.2) once every sequence the initiator still owes has ended (F bit); until then
    /// its Data-Out is discarded and no further R2T goes out.</summary>
    public bool SequenceError;

    /// <summary>No sequence of Data-Out is still owed: the unsolicited one ended and no R2T is outstanding.</summary>
    public bool NoSequenceOpen => !UnsolicitedOpen && Bursts.Count == 0;

    // Solicited data: R2Ts for [UnsolicitedEnd, ExpectedOut).
    public int NextR2TOffset;
    public uint NextR2TSN;
    public readonly List<Burst> Bursts = new(1);

    /// <summary>Handed to the device (the reader no longer touches the data-phase fields).</summary>
    public bool Running;

    private const int Live = 0, Committed = 1, AbortedState = 2;
    private int _state;

    /// <summary>Aborted by task management or connection loss: nothing more is sent for it.</summary>
    public bool Aborted => Volatile.Read(ref _state) == AbortedState;

    /// <summary>The task's response is about to go out (under the write lock): from now on it can no
    /// longer be aborted. False if it was aborted first.</summary>
    public bool TryCommitResponse() => Interlocked.CompareExchange(ref _state, Committed, Live) == Live;

    /// <summary>Aborts the task unless its response is already committed (then it completes normally,
    /// and ABORT TASK answers "task does not exist"). True if it is aborted now or was already.</summary>
    public bool TryAbort() => Interlocked.CompareExchange(ref _state, AbortedState, Live) != Committed;

    /// <summary>Aborted by another I_T nexus (PREEMPT AND ABORT): answered with TASK ABORTED status
    /// instead of silence, since its initiator asked for nothing.</summary>
    public volatile bool AnswerAborted;

    /// <summary>Released its CmdSN window slot (exactly once).</summary>
    public int WindowReleased;

    public CancellationTokenSource? Cancellation;
    public Task Completion = Task.CompletedTask;

    public bool HasAllData => Received == ExpectedOut;

    public void ReturnBuffer()
    {
        var buffer = Interlocked.Exchange(ref Buffer, null);
        if (buffer is not null) ArrayPool<byte>.Shared.Return(buffer);
    }
}
