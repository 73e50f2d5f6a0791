using System.Buffers;
using System.Buffers.Binary;
using Duet.Core;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi;

// The full feature phase: SCSI commands with R2T / Data-Out / Data-In, NOP, task management,
// Text (SendTargets), Logout and Reject (RFC 7143 §11).
internal sealed partial class IscsiConnection
{
    private enum Next { Continue, Stop, Cut }

    private readonly Dictionary<uint, IscsiTask> _tasks = [];
    private readonly Dictionary<uint, IscsiTask> _gathering = [];
    private readonly Lock _tasksGate = new();
    private uint _lastTtt;

    // Target-initiated NOP-In.
    private long _lastReceived;
    private uint _pingTtt = IscsiWire.ReservedTag;
    private long _pingSent;

    // A Text Response too long for one PDU, sent in pieces (C bit) as the initiator asks.
    private byte[]? _textPending;
    private int _textPendingOffset;
    private uint _textPendingTtt;
    private readonly ArrayBufferWriter<byte> _textIn = new();

    private async Task FullFeatureAsync()
    {
        _lastReceived = _options.TimeProvider.GetTimestamp();
        if (_options.NopInInterval is { } interval && !_session!.Discovery)
        {
            Interlocked.Increment(ref _inFlightCount);
            _ = PingLoopAsync(interval);
        }
        // From here the reader runs on its own thread and sleeps in the socket's receive (ThreadReceiveStream); a
        // handler that waited on something else resumed on the pool and comes back before the next read.
        while (true)
        {
            await _reader.SwitchTo(); // at once when it is there
            var (ok, pdu) = await ReadPduAsync(_parameters.TargetMaxRecvDataSegmentLength, AbortToken);
            if (!ok) return;
            Next next;
            try
            {
                _lastReceived = _options.TimeProvider.GetTimestamp();
                next = await HandlePduAsync(pdu);
            }
            finally
            {
                pdu.Dispose();
            }
            if (next == Next.Stop) return;
            if (next == Next.Cut)
            {
                Abort();
                return;
            }
        }
    }

    private async ValueTask<Next> HandlePduAsync(Pdu pdu)
    {
        var h = pdu.Header;
        switch (pdu.Error)
        {
            case IscsiFrameError.HeaderDigest:
                // The lengths cannot be trusted: nothing after this header can be framed.
                IscsiLog.FrameError(_logger, Id, pdu.Error, h.Opcode);
                return Next.Cut;
            case IscsiFrameError.DataSegmentTooLong:
                await RejectAsync(h, RejectReason.ProtocolError, $"data segment of {h.DataSegmentLength} bytes exceeds MaxRecvDataSegmentLength {_parameters.TargetMaxRecvDataSegmentLength}");
                IscsiLog.FrameError(_logger, Id, pdu.Error, h.Opcode);
                return Next.Cut;
            case IscsiFrameError.DataDigest:
                await RejectAsync(h, RejectReason.DataDigestError, "data digest mismatch");
                // A Data-Out's data is lost: at ErrorRecoveryLevel 0 it cannot be asked for again, so its task ends
                // CHECK CONDITION once its sequences have (RFC 7143 §7.7 b), as for a DataSN out of order.
                if (h.Opcode == IscsiOpcode.ScsiDataOut && _session is { Discovery: false }) return await HandleDataOutAsync(pdu, dataLost: true);
                // A SCSI Command's immediate data cannot be asked for again either, nor the command re-sent in its slot.
                return h.Opcode is IscsiOpcode.ScsiCommand or IscsiOpcode.ScsiDataOut ? Next.Cut : Next.Continue;
        }
        var session = _session!;
        if (session.Discovery && h.Opcode is not (IscsiOpcode.TextRequest or IscsiOpcode.LogoutRequest or IscsiOpcode.NopOut))
        {
            await RejectAsync(h, RejectReason.ProtocolError, "a discovery session takes only Text, NOP-Out and Logout");
            return Next.Continue;
        }
        switch (h.Opcode)
        {
            case IscsiOpcode.ScsiCommand: return await HandleCommandAsync(pdu);
            case IscsiOpcode.ScsiDataOut: return await HandleDataOutAsync(pdu);
            case IscsiOpcode.NopOut: return await HandleNopOutAsync(pdu);
            case IscsiOpcode.TaskManagementRequest: return await HandleTaskManagementAsync(h);
            case IscsiOpcode.TextRequest: return await HandleTextAsync(pdu);
            case IscsiOpcode.LogoutRequest: return await HandleLogoutAsync(h);
            case IscsiOpcode.LoginRequest:
                await RejectAsync(h, RejectReason.ProtocolError, "Login Request in the full feature phase");
                return Next.Continue;
            case IscsiOpcode.SnackRequest:
                await RejectAsync(h, RejectReason.SnackReject, "SNACK needs ErrorRecoveryLevel > 0");
                return Next.Continue;
            default:
                await RejectAsync(h, RejectReason.CommandNotSupported, $"opcode 0x{(byte)h.Opcode:x2}");
                return Next.Continue;
        }
    }

    /// <summary>CmdSN check for a non-Data-Out PDU: false means drop it silently.</summary>
    private bool Accept(in IscsiHeader h, bool isTask)
    {
        if (_session!.TryAccept(h.Immediate, h.CmdSN, isTask, out uint exp, out uint max)) return true;
        IscsiLog.CommandDropped(_logger, Id, h.Opcode, h.CmdSN, exp, max);
        return false;
    }

    // ------------------------------------------------------------------ SCSI Command

    private async ValueTask<Next> HandleCommandAsync(Pdu pdu)
    {
        var h = pdu.Header;
        if (!Accept(h, isTask: true)) return Next.Continue;
        var session = _session!;
        bool read = (h.Flags & IscsiWire.ReadBit) != 0;
        bool write = (h.Flags & IscsiWire.WriteBit) != 0;
        long edtl = h.ExpectedDataTransferLength;
        int immediate = pdu.Data.Length;

        string? problem = null;
        if (h.InitiatorTaskTag == IscsiWire.ReservedTag) problem = "ITT 0xffffffff";
        else if (!h.Final && (!write || _parameters.InitialR2T)) problem = "F bit clear (unsolicited Data-Out to follow) without a write allowed to send it";
        else if (immediate > 0 && !write) problem = "immediate data on a command without the W bit";
        else if (immediate > 0 && !_parameters.ImmediateData) problem = "immediate data while ImmediateData=No";
        else if (immediate > edtl) problem = $"{immediate} bytes of immediate data for an expected length of {edtl}";
        else if (immediate > _parameters.FirstBurstLength) problem = $"{immediate} bytes of immediate data exceed FirstBurstLength";
        if (problem is not null)
        {
            session.TaskDone();
            await RejectAsync(h, RejectReason.ProtocolError, problem);
            return Next.Continue;
        }
        lock (_tasksGate)
        {
            if (_tasks.ContainsKey(h.InitiatorTaskTag)) problem = $"ITT 0x{h.InitiatorTaskTag:x8} is in use";
        }
        if (problem is not null)
        {
            session.TaskDone();
            await RejectAsync(h, RejectReason.TaskInProgress, problem);
            return Next.Continue;
        }

        // The CDB: 16 bytes in the BHS, more in an Extended CDB AHS (type 1).
        int expectedIn = read ? (int)Math.Min(edtl, int.MaxValue) : 0;
        byte[] cdb = ReadCdb(h, pdu.Ahs, ref expectedIn, write);
        var task = new IscsiTask
        {
            Itt = h.InitiatorTaskTag,
            Ttt = NextTtt(),
            CmdSn = h.CmdSN,
            LunField = h.Lun,
            Lun = IscsiCodec.DecodeLun(h.Lun),
            Cdb = cdb,
            Read = read,
            Write = write,
            Attribute = (TaskAttribute)(h.Flags & IscsiWire.AttributeMask),
            ExpectedIn = expectedIn,
            ExpectedOut = write ? (int)Math.Min(edtl, int.MaxValue) : 0,
        };
        lock (_tasksGate) _tasks.Add(task.Itt, task);

        if (edtl > _options.MaxTransferBytes || expectedIn > _options.MaxTransferBytes)
        {
            // Refused before any buffer is taken; unsolicited Data-Out for it is rejected as unknown.
            StartTask(task, TooLong(task));
            return Next.Continue;
        }
        if (write && task.ExpectedOut > 0)
        {
            task.Buffer = ArrayPool<byte>.Shared.Rent(task.ExpectedOut);
            pdu.Data.CopyTo(task.Buffer);
            task.Received = immediate;
            task.NextUnsolicitedOffset = immediate;
            // F clear: unsolicited Data-Out follows, up to FirstBurstLength (RFC 7143 §11.3.4); F set: none does.
            task.UnsolicitedEnd = h.Final ? immediate : Math.Max(immediate, Math.Min(_parameters.FirstBurstLength, task.ExpectedOut));
            task.UnsolicitedOpen = task.UnsolicitedEnd > immediate;
            task.NextR2TOffset = task.UnsolicitedEnd;
            if (immediate > 0) _metrics.BytesWritten(immediate);
            if (!task.HasAllData)
            {
                lock (_tasksGate) _gathering.Add(task.Ttt, task);
                await SendR2TsAsync(task);
                return Next.Continue;
            }
        }
        StartTask(task, null);
        return Next.Continue;
    }

    private static byte[] ReadCdb(in IscsiHeader h, ReadOnlySpan<byte> ahs, ref int expectedIn, bool write)
    {
        Span<byte> bhsCdb = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32BigEndian(bhsCdb, h.Word32);
        BinaryPrimitives.WriteUInt32BigEndian(bhsCdb[4..], h.Word36);
        BinaryPrimitives.WriteUInt32BigEndian(bhsCdb[8..], h.Word40);
        BinaryPrimitives.WriteUInt32BigEndian(bhsCdb[12..], h.Word44);
        ReadOnlySpan<byte> extended = default;
        while (ahs.Length >= 4)
        {
            int length = BinaryPrimitives.ReadUInt16BigEndian(ahs);
            byte type = ahs[2];
            int total = Math.Min(ahs.Length, IscsiWire.Padded(3 + length));
            if (type == 1 && length > 1 && 4 + length - 1 <= ahs.Length) extended = ahs.Slice(4, length - 1);
            else if (type == 2 && length >= 5 && ahs.Length >= 8 && write) expectedIn = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(ahs[4..]), int.MaxValue);
            ahs = ahs[Math.Max(4, total)..];
        }
        var cdb = new byte[16 + extended.Length];
        bhsCdb.CopyTo(cdb);
        extended.CopyTo(cdb.AsSpan(16));
        return cdb;
    }

    private uint NextTtt()
    {
        uint ttt = ++_lastTtt;
        if (ttt == IscsiWire.ReservedTag) ttt = ++_lastTtt;
        return ttt;
    }

    /// <summary>Sends R2Ts while fewer than MaxOutstandingR2T are outstanding and data is still wanted.</summary>
    private async ValueTask SendR2TsAsync(IscsiTask task)
    {
        if (task.Bursts.Count >= _parameters.MaxOutstandingR2T || task.NextR2TOffset >= task.ExpectedOut) return;
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            while (task.Bursts.Count < _parameters.MaxOutstandingR2T && task.NextR2TOffset < task.ExpectedOut)
            {
                int length = Math.Min(_parameters.MaxBurstLength, task.ExpectedOut - task.NextR2TOffset);
                var burst = new IscsiTask.Burst { R2TSN = task.NextR2TSN++, Offset = task.NextR2TOffset, Length = length, Next = task.NextR2TOffset };
                task.Bursts.Add(burst);
                task.NextR2TOffset += length;
                var header = new IscsiHeader
                {
                    Opcode = IscsiOpcode.ReadyToTransfer,
                    Flags = IscsiWire.FinalBit,
                    Lun = task.LunField,
                    InitiatorTaskTag = task.Itt,
                    TargetTransferTag = task.Ttt,
                    DataSN = burst.R2TSN,
                    BufferOffset = (uint)burst.Offset,
                    DesiredDataTransferLength = (uint)length,
                };
                Stamp(ref header, advance: false);
                WritePdu(header, default);
            }
            await FlushAsync();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    // ------------------------------------------------------------------ Data-Out

    /// <param name="dataLost">The PDU's data failed its digest (the header is sound): a sequence error for its task.</param>
    private async ValueTask<Next> HandleDataOutAsync(Pdu pdu, bool dataLost = false)
    {
        var h = pdu.Header;
        int length = pdu.Data.Length;
        int offset = (int)Math.Min(h.BufferOffset, int.MaxValue);
        IscsiTask? task;
        bool solicited = h.TargetTransferTag != IscsiWire.ReservedTag;
        lock (_tasksGate)
        {
            if (solicited) _gathering.TryGetValue(h.TargetTransferTag, out task);
            else if (_tasks.TryGetValue(h.InitiatorTaskTag, out task) && task.Running) task = null;
        }
        if (task is null || task.Itt != h.InitiatorTaskTag || task.Buffer is null)
        {
            await RejectAsync(h, RejectReason.InvalidPduField, $"Data-Out for no task gathering data (ITT 0x{h.InitiatorTaskTag:x8} TTT 0x{h.TargetTransferTag:x8})");
            return Next.Continue;
        }
        if (task.Aborted)
        {
            // Aborted by another nexus while its data was coming in: answered now, its data dropped.
            lock (_tasksGate)
            {
                _gathering.Remove(task.Ttt);
                _tasks.Remove(task.Itt);
            }
            task.ReturnBuffer();
            await SendTaskAbortedAsync(task);
            return Next.Continue;
        }

        string? problem = null, sequenceError = null;
        if (!solicited)
        {
            if (!task.UnsolicitedOpen || offset >= task.UnsolicitedEnd)
                problem = $"unsolicited Data-Out offset {offset} DataSN {h.DataSN} length {length}, none (more) expected (unsolicited data ends at {task.UnsolicitedEnd})";
            else if (dataLost || task.SequenceError || h.DataSN != task.NextUnsolicitedDataSN)
            {
                sequenceError = dataLost ? $"data digest error on unsolicited Data-Out DataSN {h.DataSN} offset {offset}"
                    : $"unsolicited Data-Out DataSN {h.DataSN} offset {offset}, expected DataSN {task.NextUnsolicitedDataSN} offset {task.NextUnsolicitedOffset}";
                if (h.Final) task.UnsolicitedOpen = false;
            }
            else if (offset != task.NextUnsolicitedOffset || length > task.UnsolicitedEnd - offset)
                problem = $"unsolicited Data-Out offset {offset} DataSN {h.DataSN} length {length}, expected offset {task.NextUnsolicitedOffset} DataSN {task.NextUnsolicitedDataSN} up to {task.UnsolicitedEnd}";
            else
            {
                pdu.Data.CopyTo(task.Buffer.AsSpan(offset));
                task.NextUnsolicitedOffset += length;
                task.NextUnsolicitedDataSN++;
                task.Received += length;
                if (h.Final && task.NextUnsolicitedOffset != task.UnsolicitedEnd)
                    problem = $"unsolicited data ended at {task.NextUnsolicitedOffset}, FirstBurstLength called for {task.UnsolicitedEnd}";
                if (h.Final || task.NextUnsolicitedOffset == task.UnsolicitedEnd) task.UnsolicitedOpen = false;
            }
        }
        else
        {
            int index = -1;
            for (int i = 0; i < task.Bursts.Count; i++)
            {
                var b = task.Bursts[i];
                if (offset >= b.Offset && offset < b.Offset + b.Length) index = i;
            }
            if (index < 0)
            {
                problem = $"solicited Data-Out at offset {offset} outside every outstanding R2T";
            }
            else
            {
                var burst = task.Bursts[index];
                if (dataLost || task.SequenceError || h.DataSN != burst.NextDataSN)
                {
                    sequenceError = dataLost ? $"data digest error on Data-Out DataSN {h.DataSN} offset {offset} (R2T {burst.R2TSN})"
                        : $"Data-Out DataSN {h.DataSN} offset {offset}, R2T {burst.R2TSN} expected DataSN {burst.NextDataSN} offset {burst.Next}";
                    if (h.Final) task.Bursts.RemoveAt(index);
                }
                else if (offset != burst.Next || length > burst.Offset + burst.Length - offset)
                {
                    problem = $"Data-Out offset {offset} DataSN {h.DataSN} length {length}, R2T {burst.R2TSN} expected offset {burst.Next} DataSN {burst.NextDataSN} up to {burst.Offset + burst.Length}";
                }
                else
                {
                    pdu.Data.CopyTo(task.Buffer.AsSpan(offset));
                    burst.Next += length;
                    burst.NextDataSN++;
                    task.Received += length;
                    bool done = burst.Next == burst.Offset + burst.Length;
                    if (done != h.Final) problem = done ? "F bit clear on the last Data-Out of a burst" : "F bit set before the burst's end";
                    if (done) task.Bursts.RemoveAt(index);
                    else task.Bursts[index] = burst;
                }
            }
        }
        if (problem is not null)
        {
            // A PDU that fits no sequence, or breaks one other than by its DataSN: the stream cannot be
            // trusted and ErrorRecoveryLevel 0 has no recovery for it: the connection goes.
            await RejectAsync(h, RejectReason.ProtocolError, problem);
            IscsiLog.ProtocolViolation(_logger, Id, problem);
            return Next.Cut;
        }
        if (sequenceError is not null)
        {
            // RFC 7143 §7.8: a DataSN out of order means Data-Out was lost (the implied digest error of §7.7).
            // ERL 0 cannot ask for it again (no recovery R2T), so the task is ended with CHECK CONDITION
            // once the initiator has ended every sequence it still owes (§7.7 b); the connection stays.
            if (!task.SequenceError) IscsiLog.DataSequenceError(_logger, Id, task.Itt, sequenceError);
            task.SequenceError = true;
            if (task.NoSequenceOpen)
            {
                lock (_tasksGate) _gathering.Remove(task.Ttt);
                StartTask(task, ProtocolServiceCrcError(task));
            }
            return Next.Continue;
        }
        _metrics.BytesWritten(length);
        if (task.HasAllData)
        {
            lock (_tasksGate) _gathering.Remove(task.Ttt);
            StartTask(task, null);
        }
        else if (solicited)
        {
            await SendR2TsAsync(task);
        }
        return Next.Continue;
    }

    // ------------------------------------------------------------------ execution and responses

    private void StartTask(IscsiTask task, ScsiResult? preset)
    {
        task.Running = true;
        task.Cancellation = CancellationTokenSource.CreateLinkedTokenSource(AbortToken);
        Interlocked.Increment(ref _inFlightCount);
        task.Completion = ExecuteAsync(task, preset);
    }

    private async Task ExecuteAsync(IscsiTask task, ScsiResult? preset)
    {
        await Task.Yield();
        try
        {
            ScsiResult result;
            if (preset is { } p)
            {
                result = p;
            }
            else
            {
                var command = new ScsiCommand
                {
                    Nexus = _session!.Nexus!,
                    Lun = task.Lun,
                    Cdb = task.Cdb,
                    DataOut = task.Buffer is null ? default : task.Buffer.AsMemory(0, task.ExpectedOut),
                    ExpectedDataInLength = task.ExpectedIn,
                    ExpectedDataOutLength = task.ExpectedOut,
                    Attribute = task.Attribute,
                    Tag = task.Itt,
                };
                try
                {
                    result = await _device.ExecuteAsync(command, task.Cancellation!.Token);
                }
                catch (OperationCanceledException) when (task.Aborted || _abort.IsCancellationRequested)
                {
                    if (task.AnswerAborted && !_abort.IsCancellationRequested) await SendTaskAbortedAsync(task);
                    return;
                }
                catch (Exception e) when (e is not InvariantViolationException)
                {
                    IscsiLog.CommandCrashed(_logger, Id, task.Itt, e);
                    if (task.Aborted) return;
                    await SendTargetFailureAsync(task);
                    return;
                }
            }
            if (task.Aborted)
            {
                if (task.AnswerAborted) await SendTaskAbortedAsync(task);
                return;
            }
            _metrics.Command(result.Status);
            await SendResultAsync(task, result);
        }
        catch (InvariantViolationException e)
        {
            IscsiLog.InvariantViolated(_logger, Id, e);
            Abort();
        }
        catch (Exception e)
        {
            if (!_abort.IsCancellationRequested) IscsiLog.ConnectionFailed(_logger, Id, e);
            Abort();
        }
        finally
        {
            ReleaseWindow(task);
            lock (_tasksGate) _tasks.Remove(task.Itt);
            task.ReturnBuffer();
            task.Cancellation?.Dispose();
            ReleaseInFlight();
        }
    }

    private void ReleaseWindow(IscsiTask task)
    {
        if (Interlocked.Exchange(ref task.WindowReleased, 1) == 0) _session!.TaskDone();
    }

    /// <summary>Data-In (status collapsed into the last one when there is no sense) and/or the SCSI
    /// Response, with residuals from the expected length against the CDB's transfer length.</summary>
    private async ValueTask SendResultAsync(IscsiTask task, ScsiResult result)
    {
        long expected = task.Write ? task.ExpectedOut : task.Read ? task.ExpectedIn : 0;
        byte residualFlags = 0;
        uint residual = 0;
        if (result.TransferLength < expected)
        {
            residualFlags = IscsiWire.ResidualUnderflowBit;
            residual = (uint)(expected - result.TransferLength);
        }
        else if (result.TransferLength > expected)
        {
            residualFlags = IscsiWire.ResidualOverflowBit;
            residual = (uint)(result.TransferLength - expected);
        }
        int dataLength = task.Read ? Math.Min(result.DataIn.Length, task.ExpectedIn) : 0;
        bool collapse = dataLength > 0 && result.Sense.IsEmpty && result.Status is ScsiStatus.Good or ScsiStatus.ConditionMet;
        int segment = _parameters.InitiatorMaxRecvDataSegmentLength;
        int maxBurst = _parameters.MaxBurstLength;

        await _writeLock.WaitAsync(AbortToken);
        try
        {
            if (!task.TryCommitResponse()) return;
            // The window slot is free before this response announces MaxCmdSN.
            ReleaseWindow(task);
            uint dataSn = 0;
            int offset = 0, burstLeft = maxBurst;
            while (offset < dataLength)
            {
                int length = Math.Min(Math.Min(segment, dataLength - offset), burstLeft);
                bool last = offset + length == dataLength;
                burstLeft -= length;
                var header = new IscsiHeader
                {
                    Opcode = IscsiOpcode.ScsiDataIn,
                    Flags = (byte)(last || burstLeft == 0 ? IscsiWire.FinalBit : 0),
                    Lun = task.LunField,
                    InitiatorTaskTag = task.Itt,
                    TargetTransferTag = IscsiWire.ReservedTag,
                    DataSN = dataSn++,
                    BufferOffset = (uint)offset,
                };
                if (last && collapse)
                {
                    header.Flags |= (byte)(IscsiWire.StatusBit | residualFlags);
                    header.Byte3 = (byte)result.Status;
                    header.ResidualCount = residual;
                    Stamp(ref header, advance: true);
                }
                else
                {
                    Stamp(ref header, advance: false);
                    header.StatSN = 0;
                }
                WritePdu(header, result.DataIn.Span.Slice(offset, length));
                offset += length;
                if (burstLeft == 0) burstLeft = maxBurst;
                if (_output.UnflushedBytes >= FlushThresholdBytes) await FlushAsync();
            }
            if (dataLength > 0) _metrics.BytesRead(dataLength);
            if (!collapse)
            {
                var header = new IscsiHeader
                {
                    Opcode = IscsiOpcode.ScsiResponse,
                    Flags = (byte)(IscsiWire.FinalBit | residualFlags),
                    Byte2 = 0, // command completed at target
                    Byte3 = (byte)result.Status,
                    InitiatorTaskTag = task.Itt,
                    DataSN = dataSn, // ExpDataSN
                    ResidualCount = residual,
                };
                Stamp(ref header, advance: true);
                if (result.Sense.IsEmpty)
                {
                    WritePdu(header, default);
                }
                else
                {
                    int senseLength = Math.Min(result.Sense.Length, Math.Min(segment - 2, ushort.MaxValue));
                    byte[] data = ArrayPool<byte>.Shared.Rent(2 + senseLength);
                    try
                    {
                        BinaryPrimitives.WriteUInt16BigEndian(data, (ushort)senseLength);
                        result.Sense.Span[..senseLength].CopyTo(data.AsSpan(2));
                        WritePdu(header, data.AsSpan(0, 2 + senseLength));
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(data);
                    }
                }
            }
            _responses.Request(); // one flush behind the work in hand (Duet.Core.DeferredFlush)
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>SCSI Response with TASK ABORTED status (a task another nexus aborted).</summary>
    private async ValueTask SendTaskAbortedAsync(IscsiTask task)
    {
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            ReleaseWindow(task);
            var header = new IscsiHeader
            {
                Opcode = IscsiOpcode.ScsiResponse,
                Flags = IscsiWire.FinalBit,
                Byte3 = (byte)ScsiStatus.TaskAborted,
                InitiatorTaskTag = task.Itt,
            };
            Stamp(ref header, advance: true);
            WritePdu(header, default);
            await FlushAsync();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>Another nexus's PREEMPT AND ABORT removed this session's registration: its tasks on
    /// <paramref name="lun"/> end with TASK ABORTED (SPC-4 5.12.11.2.5). Called from any thread;
    /// tasks still gathering data are finished by the reader at their next Data-Out.</summary>
    internal void AbortTasksPreempted(ulong lun)
    {
        List<IscsiTask> hit = [];
        lock (_tasksGate)
        {
            foreach (var task in _tasks.Values) if (task.Lun == lun) hit.Add(task);
        }
        foreach (var task in hit)
        {
            task.AnswerAborted = true;
            if (!task.TryAbort() || !task.Running) continue;
            try
            {
                task.Cancellation?.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    /// <summary>The device threw (it should not): SCSI Response "target failure".</summary>
    private async ValueTask SendTargetFailureAsync(IscsiTask task)
    {
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            if (!task.TryCommitResponse()) return;
            ReleaseWindow(task);
            var header = new IscsiHeader
            {
                Opcode = IscsiOpcode.ScsiResponse,
                Flags = IscsiWire.FinalBit,
                Byte2 = 1, // target failure
                InitiatorTaskTag = task.Itt,
            };
            Stamp(ref header, advance: true);
            WritePdu(header, default);
            await FlushAsync();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>CHECK CONDITION, ILLEGAL REQUEST, INVALID FIELD IN CDB: the transfer is larger than
    /// the transport takes (the device's Block Limits page says so too).</summary>
    private static ScsiResult TooLong(IscsiTask task)
    {
        var sense = new byte[18];
        sense[0] = 0x70;
        sense[2] = 0x05;
        sense[7] = 10;
        sense[12] = 0x24;
        return new ScsiResult(ScsiStatus.CheckCondition, default, sense, Math.Max(task.ExpectedIn, task.ExpectedOut));
    }

    /// <summary>CHECK CONDITION, ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (RFC 7143 §11.4.7.2): Data-Out of
    /// the task was lost (§7.7, §7.8); the command was not carried out.</summary>
    private static ScsiResult ProtocolServiceCrcError(IscsiTask task)
    {
        var sense = new byte[18];
        sense[0] = 0x70;
        sense[2] = 0x0B;
        sense[7] = 10;
        sense[12] = 0x47;
        sense[13] = 0x05;
        return new ScsiResult(ScsiStatus.CheckCondition, default, sense, task.ExpectedOut);
    }

    /// <summary>At connection end: tasks still gathering data are dropped (their buffers returned).</summary>
    private void DropGatheringTasks()
    {
        List<IscsiTask> dropped = [];
        lock (_tasksGate)
        {
            foreach (var task in _gathering.Values) dropped.Add(task);
            foreach (var task in dropped)
            {
                _gathering.Remove(task.Ttt);
                _tasks.Remove(task.Itt);
            }
        }
        foreach (var task in dropped)
        {
            task.TryAbort();
            ReleaseWindow(task);
            task.ReturnBuffer();
        }
    }

    // ------------------------------------------------------------------ NOP

    private async ValueTask<Next> HandleNopOutAsync(Pdu pdu)
    {
        var h = pdu.Header;
        if (h.InitiatorTaskTag == IscsiWire.ReservedTag)
        {
            // An answer to our ping (or a bare CmdSN update); never answered. Must be immediate.
            if (!h.Immediate)
            {
                await RejectAsync(h, RejectReason.ProtocolError, "NOP-Out with ITT 0xffffffff must be immediate");
                return Next.Continue;
            }
            if (h.TargetTransferTag != IscsiWire.ReservedTag && h.TargetTransferTag == Volatile.Read(ref _pingTtt))
                Volatile.Write(ref _pingTtt, IscsiWire.ReservedTag);
            return Next.Continue;
        }
        if (!Accept(h, isTask: false)) return Next.Continue;
        var header = new IscsiHeader
        {
            Opcode = IscsiOpcode.NopIn,
            Flags = IscsiWire.FinalBit,
            Lun = h.Lun,
            InitiatorTaskTag = h.InitiatorTaskTag,
            TargetTransferTag = IscsiWire.ReservedTag,
        };
        int echo = Math.Min(pdu.Data.Length, _parameters.InitiatorMaxRecvDataSegmentLength);
        await SendAsync(header, pdu.DataMemory[..echo], advanceStatSn: true);
        return Next.Continue;
    }

    private async Task PingLoopAsync(TimeSpan interval)
    {
        var time = _options.TimeProvider;
        try
        {
            while (true)
            {
                await Task.Delay(interval, time, _readerDone.Token);
                if (Volatile.Read(ref _pingTtt) != IscsiWire.ReservedTag)
                {
                    if (time.GetElapsedTime(Volatile.Read(ref _pingSent)) >= _options.NopInTimeout)
                    {
                        IscsiLog.PingTimedOut(_logger, Id, _options.NopInTimeout);
                        Abort();
                        return;
                    }
                    continue;
                }
                if (time.GetElapsedTime(Volatile.Read(ref _lastReceived)) < interval) continue;
                uint ttt = NextPingTtt();
                Volatile.Write(ref _pingSent, time.GetTimestamp());
                Volatile.Write(ref _pingTtt, ttt);
                var header = new IscsiHeader
                {
                    Opcode = IscsiOpcode.NopIn,
                    Flags = IscsiWire.FinalBit,
                    InitiatorTaskTag = IscsiWire.ReservedTag,
                    TargetTransferTag = ttt,
                };
                await SendAsync(header, default, advanceStatSn: false);
            }
        }
        catch (Exception e) when (IsTransportFailure(e))
        {
        }
        finally
        {
            ReleaseInFlight();
        }
    }

    private uint NextPingTtt()
    {
        lock (_tasksGate) return NextTtt();
    }

    // ------------------------------------------------------------------ task management

    private async ValueTask<Next> HandleTaskManagementAsync(IscsiHeader h)
    {
        if (!Accept(h, isTask: false)) return Next.Continue;
        var function = (TmfFunction)(h.Flags & 0x7f);
        ulong lun = IscsiCodec.DecodeLun(h.Lun);
        var session = _session!;
        var nexus = session.Nexus!;
        TmfResponse response;
        List<IscsiTask> aborted = [];
        bool lunScoped = function is TmfFunction.AbortTaskSet or TmfFunction.ClearTaskSet or TmfFunction.LogicalUnitReset or TmfFunction.ClearAca;
        bool cut = false;
        if (lunScoped && !HasLun(lun))
        {
            response = TmfResponse.LunDoesNotExist;
        }
        else
        {
            switch (function)
            {
                case TmfFunction.AbortTask:
                {
                    IscsiTask? task;
                    lock (_tasksGate) _tasks.TryGetValue(h.ReferencedTaskTag, out task);
                    if (task is not null && task.TryAbort())
                    {
                        aborted.Add(task);
                        response = TmfResponse.FunctionComplete;
                    }
                    else if (task is not null)
                    {
                        // Its response is already going out: it completed before the abort.
                        response = TmfResponse.TaskDoesNotExist;
                    }
                    else
                    {
                        // Never received but within the window and before this request: consider it received and aborted.
                        var (exp, max) = session.Window;
                        response = SerialNumber.InRange(h.RefCmdSN, exp, max) && SerialNumber.Less(h.RefCmdSN, h.CmdSN)
                            ? TmfResponse.FunctionComplete
                            : TmfResponse.TaskDoesNotExist;
                    }
                    break;
                }
                case TmfFunction.AbortTaskSet:
                    CollectTasks(aborted, lun, allLuns: false);
                    response = TmfResponse.FunctionComplete;
                    break;
                case TmfFunction.ClearTaskSet:
                    CollectTasks(aborted, lun, allLuns: false);
                    response = await DeviceTaskManagementAsync(nexus, TaskManagementFunction.ClearTaskSet, lun);
                    break;
                case TmfFunction.LogicalUnitReset:
                    CollectTasks(aborted, lun, allLuns: false);
                    response = await DeviceTaskManagementAsync(nexus, TaskManagementFunction.LogicalUnitReset, lun);
                    break;
                case TmfFunction.TargetWarmReset:
                    CollectTasks(aborted, 0, allLuns: true);
                    response = await DeviceTaskManagementAsync(nexus, TaskManagementFunction.TargetWarmReset, 0);
                    break;
                case TmfFunction.TargetColdReset:
                    CollectTasks(aborted, 0, allLuns: true);
                    response = await DeviceTaskManagementAsync(nexus, TaskManagementFunction.TargetColdReset, 0);
                    cut = true; // a cold reset drops the connection after its response
                    break;
                case TmfFunction.ClearAca:
                    response = TmfResponse.NotSupported;
                    break;
                case TmfFunction.TaskReassign:
                    response = TmfResponse.ReassignmentNotSupported;
                    break;
                default:
                    response = TmfResponse.NotSupported;
                    break;
            }
        }
        IscsiLog.TaskManagement(_logger, Id, function, lun, h.ReferencedTaskTag, response);
        var header = new IscsiHeader
        {
            Opcode = IscsiOpcode.TaskManagementResponse,
            Flags = IscsiWire.FinalBit,
            Byte2 = (byte)response,
            InitiatorTaskTag = h.InitiatorTaskTag,
        };
        if (aborted.Count == 0)
        {
            await SendAsync(header, default, advanceStatSn: true);
            return cut ? Next.Cut : Next.Continue;
        }
        // The response goes out once every aborted task has stopped (none of them answers).
        var running = AbortTasks(aborted);
        if (running.Count == 0)
        {
            await SendAsync(header, default, advanceStatSn: true);
            return cut ? Next.Cut : Next.Continue;
        }
        Interlocked.Increment(ref _inFlightCount);
        _ = AnswerAfterAsync(running, header, cut);
        return Next.Continue;
    }

    private bool HasLun(ulong lun)
    {
        var luns = _device.Luns;
        for (int i = 0; i < luns.Count; i++) if (luns[i] == lun) return true;
        return false;
    }

    private void CollectTasks(List<IscsiTask> into, ulong lun, bool allLuns)
    {
        lock (_tasksGate)
        {
            foreach (var task in _tasks.Values) if (allLuns || task.Lun == lun) into.Add(task);
        }
    }

    /// <summary>Aborts tasks; returns the completions of those the device is running.</summary>
    private List<Task> AbortTasks(List<IscsiTask> tasks)
    {
        List<Task> running = [];
        foreach (var task in tasks)
        {
            if (!task.TryAbort()) continue; // completing: its response is on its way
            bool gathering;
            lock (_tasksGate)
            {
                gathering = !task.Running;
                if (gathering)
                {
                    _gathering.Remove(task.Ttt);
                    _tasks.Remove(task.Itt);
                }
            }
            if (gathering)
            {
                ReleaseWindow(task);
                task.ReturnBuffer();
            }
            else
            {
                try
                {
                    task.Cancellation?.Cancel();
                }
                catch (ObjectDisposedException)
                {
                }
                running.Add(task.Completion);
            }
        }
        return running;
    }

    private async Task AnswerAfterAsync(List<Task> running, IscsiHeader header, bool cut)
    {
        try
        {
            await Task.WhenAll(running);
            await SendAsync(header, default, advanceStatSn: true);
            if (cut) Abort();
        }
        catch (Exception e)
        {
            if (!_abort.IsCancellationRequested) IscsiLog.ConnectionFailed(_logger, Id, e);
            Abort();
        }
        finally
        {
            ReleaseInFlight();
        }
    }

    private async ValueTask<TmfResponse> DeviceTaskManagementAsync(ItNexus nexus, TaskManagementFunction function, ulong lun)
    {
        try
        {
            return (TmfResponse)await _device.TaskManagementAsync(nexus, function, lun, AbortToken);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            IscsiLog.ConnectionFailed(_logger, Id, e);
            return TmfResponse.Rejected;
        }
    }

    // ------------------------------------------------------------------ Text

    private async ValueTask<Next> HandleTextAsync(Pdu pdu)
    {
        var h = pdu.Header;
        if (!Accept(h, isTask: false)) return Next.Continue;
        if (h.TargetTransferTag != IscsiWire.ReservedTag)
        {
            if (_textPending is null || h.TargetTransferTag != _textPendingTtt)
            {
                await RejectAsync(h, RejectReason.InvalidPduField, $"Text Request TTT 0x{h.TargetTransferTag:x8} continues nothing");
                return Next.Continue;
            }
            await SendTextPieceAsync(h);
            return Next.Continue;
        }
        _textPending = null;
        if (_textIn.WrittenCount + pdu.Data.Length > MaxTextBytes)
        {
            _textIn.ResetWrittenCount();
            await RejectAsync(h, RejectReason.ProtocolError, "text too long");
            return Next.Continue;
        }
        _textIn.Write(pdu.Data);
        if ((h.Flags & IscsiWire.ContinueBit) != 0)
        {
            // More text follows: acknowledge with an empty response and a TTT to continue with.
            var ack = new IscsiHeader
            {
                Opcode = IscsiOpcode.TextResponse,
                InitiatorTaskTag = h.InitiatorTaskTag,
                TargetTransferTag = IscsiWire.ReservedTag - 1,
            };
            await SendAsync(ack, default, advanceStatSn: true);
            return Next.Continue;
        }
        var pairs = new List<KeyValuePair<string, string>>();
        bool parsed = IscsiCodec.TryParseText(_textIn.WrittenSpan, pairs);
        _textIn.ResetWrittenCount();
        if (!parsed)
        {
            await RejectAsync(h, RejectReason.ProtocolError, "malformed text");
            return Next.Continue;
        }
        var response = new ArrayBufferWriter<byte>(256);
        foreach (var (key, value) in pairs)
        {
            if (key == "SendTargets")
            {
                if (value == "All" || string.Equals(value, _options.TargetName, StringComparison.OrdinalIgnoreCase)
                    || (value.Length == 0 && !_session!.Discovery))
                {
                    IscsiCodec.AppendText(response, "TargetName", _options.TargetName);
                    foreach (var portal in _server.Portals) IscsiCodec.AppendText(response, "TargetAddress", portal.ToString());
                }
            }
            else
            {
                // Operational keys are not renegotiated in the full feature phase.
                IscsiCodec.AppendText(response, key, IscsiNegotiator.NotUnderstood);
            }
        }
        _textPending = response.WrittenSpan.ToArray();
        _textPendingOffset = 0;
        _textPendingTtt = ++_lastTtt == IscsiWire.ReservedTag ? ++_lastTtt : _lastTtt;
        await SendTextPieceAsync(h);
        return Next.Continue;
    }

    private async ValueTask SendTextPieceAsync(IscsiHeader request)
    {
        var text = _textPending!;
        int length = Math.Min(text.Length - _textPendingOffset, _parameters.InitiatorMaxRecvDataSegmentLength);
        bool last = _textPendingOffset + length == text.Length;
        var header = new IscsiHeader
        {
            Opcode = IscsiOpcode.TextResponse,
            Flags = last ? IscsiWire.FinalBit : IscsiWire.ContinueBit,
            InitiatorTaskTag = request.InitiatorTaskTag,
            TargetTransferTag = last ? IscsiWire.ReservedTag : _textPendingTtt,
        };
        var piece = text.AsMemory(_textPendingOffset, length);
        _textPendingOffset += length;
        if (last) _textPending = null;
        await SendAsync(header, piece, advanceStatSn: true);
    }

    // ------------------------------------------------------------------ Logout

    private async ValueTask<Next> HandleLogoutAsync(IscsiHeader h)
    {
        if (!Accept(h, isTask: false)) return Next.Continue;
        var reason = (LogoutReason)(h.Flags & 0x7f);
        LogoutResponse response;
        if (reason == LogoutReason.RemoveConnectionForRecovery) response = LogoutResponse.RecoveryNotSupported;
        else if (reason == LogoutReason.CloseConnection && h.Cid != _cid) response = LogoutResponse.CidNotFound;
        else if (reason is LogoutReason.CloseSession or LogoutReason.CloseConnection) response = LogoutResponse.Success;
        else
        {
            await RejectAsync(h, RejectReason.InvalidPduField, $"logout reason {(byte)reason}");
            return Next.Continue;
        }
        if (response == LogoutResponse.Success)
        {
            // Commands before the logout complete first; data never sent for the others is not waited for.
            DropGatheringTasks();
            List<Task> running = [];
            lock (_tasksGate)
            {
                foreach (var task in _tasks.Values) running.Add(task.Completion);
            }
            await Task.WhenAll(running);
            IscsiLog.LoggedOut(_logger, Id, reason);
        }
        var header = new IscsiHeader
        {
            Opcode = IscsiOpcode.LogoutResponse,
            Flags = IscsiWire.FinalBit,
            Byte2 = (byte)response,
            InitiatorTaskTag = h.InitiatorTaskTag,
            Word40 = ((uint)_parameters.DefaultTime2Wait << 16) | (uint)_parameters.DefaultTime2Retain,
        };
        await SendAsync(header, default, advanceStatSn: true);
        return response == LogoutResponse.Success ? Next.Stop : Next.Continue;
    }
}
