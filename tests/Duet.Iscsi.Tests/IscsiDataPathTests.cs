namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI")]
public sealed class IscsiDataPathTests
{
    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Fact]
    public async Task Read_is_split_by_the_initiators_max_recv_with_data_sn_and_collapsed_status()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        var contents = Pattern(64 * 1024, 1);
        contents.CopyTo(fixture.TestDevice.Contents, 0);
        await using var client = await fixture.LoginAsync(("MaxRecvDataSegmentLength", "4096"), ("MaxBurstLength", "16384"));
        var r = await client.ReadAsync(IscsiTestClient.Read10(0, 128), 64 * 1024);
        Assert.Equal(0, r.Status);
        Assert.Equal(contents, r.DataIn);
        Assert.Equal(16, r.Pdus.Count);
        for (int i = 0; i < 16; i++)
        {
            var pdu = r.Pdus[i];
            Assert.Equal(IscsiOpcode.ScsiDataIn, pdu.Opcode);
            Assert.Equal(4096, pdu.DataSegmentLength);
            Assert.Equal((uint)i, pdu.DataSN);
            Assert.Equal(i % 4 == 3, pdu.Final); // F at the end of each 16 KiB burst
            Assert.Equal(i == 15, (pdu.Flags & IscsiWire.StatusBit) != 0);
        }
    }

    [Fact]
    public async Task Residuals_report_underflow_and_overflow_and_data_in_is_truncated()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync();
        // Underflow: the initiator expects 4096, the CDB moves 1024.
        var under = await client.ReadAsync(IscsiTestClient.Read10(0, 2), 4096);
        Assert.Equal(0, under.Status);
        Assert.True((under.Flags & IscsiWire.ResidualUnderflowBit) != 0);
        Assert.Equal(3072u, under.Residual);
        // Overflow: the initiator expects 512, the CDB moves 2048; only 512 bytes come back.
        var over = await client.ReadAsync(IscsiTestClient.Read10(0, 4), 512);
        Assert.True((over.Flags & IscsiWire.ResidualOverflowBit) != 0);
        Assert.Equal(1536u, over.Residual);
        Assert.Equal(512, over.Pdus.Sum(p => p.DataSegmentLength));
    }

    [Fact]
    public async Task Check_condition_comes_in_a_scsi_response_with_sense()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync();
        var r = await client.ReadAsync([0xff, 0, 0, 0, 0, 0], 0);
        Assert.Equal(2, r.Status);
        Assert.Equal(18, r.Sense.Length);
        Assert.Equal(0x05, r.Sense[2]);
        Assert.Equal(0x20, r.Sense[12]);
    }

    [Theory]
    [InlineData(true, false, 0, 0)]        // InitialR2T=Yes, ImmediateData=No: everything solicited
    [InlineData(true, true, 8192, 0)]      // immediate data, then R2Ts
    [InlineData(false, true, 8192, 65536)] // immediate + unsolicited Data-Out up to FirstBurstLength, then R2Ts
    [InlineData(false, false, 0, 65536)]   // unsolicited Data-Out only
    [InlineData(false, true, 8192, 0)]     // InitialR2T=No but F set: no unsolicited Data-Out, R2Ts from the immediate data on
    public async Task Write_gathers_immediate_unsolicited_and_solicited_data(bool initialR2T, bool immediateData, int immediate, int unsolicited)
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("InitialR2T", initialR2T ? "Yes" : "No"), ("ImmediateData", immediateData ? "Yes" : "No"),
            ("MaxRecvDataSegmentLength", "65536"), ("MaxBurstLength", "131072"), ("FirstBurstLength", "65536"), ("MaxOutstandingR2T", "2"));
        var data = Pattern(1 << 20, 2);
        var w = await client.WriteAsync(IscsiTestClient.Write10(100, 2048), data, immediate, unsolicited, segment: 16384);
        Assert.Equal(0, w.Status);
        Assert.Equal(data, fixture.TestDevice.Contents.AsSpan(100 * 512, data.Length).ToArray());
        var r2ts = w.Pdus.Where(p => p.Opcode == IscsiOpcode.ReadyToTransfer).ToList();
        int solicitedStart = !initialR2T && unsolicited > immediate ? 65536 : immediate;
        Assert.Equal(solicitedStart, (int)r2ts[0].BufferOffset);
        Assert.Equal((data.Length - solicitedStart + 131071) / 131072, r2ts.Count);
        for (int i = 0; i < r2ts.Count; i++) Assert.Equal((uint)i, r2ts[i].DataSN); // R2TSN
        Assert.All(r2ts, r => Assert.True(r.DesiredDataTransferLength <= 131072));
        // The command handed to the device carried the whole buffer.
        var command = fixture.TestDevice.Commands.Last();
        Assert.Equal(data.Length, command.ExpectedDataOutLength);
        Assert.Equal(data.Length, command.DataOut.Length);
    }

    [Fact]
    public async Task The_full_feature_phase_reads_on_the_connections_own_thread_and_a_stop_wakes_it()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync();
        // Login reads on the pool (its time limit holds): at most the first full feature read has started on the thread.
        Assert.True(fixture.Server.ReaderThreadReads.Reads <= 1, $"{fixture.Server.ReaderThreadReads.Reads} reads on the thread after login");
        for (int i = 0; i < 8; i++)
        {
            var data = Pattern(4096, 10 + i);
            Assert.Equal(0, (await client.WriteAsync(IscsiTestClient.Write10((uint)(8 * i), 8), data, immediateBytes: 4096)).Status);
            Assert.Equal(data, (await client.ReadAsync(IscsiTestClient.Read10((uint)(8 * i), 8), 4096)).DataIn);
        }
        var (reads, sleeps, switches) = fixture.Server.ReaderThreadReads;
        Assert.True(reads >= 16, $"{reads} reads on the connection's own thread");
        Assert.True(sleeps >= 1, $"{sleeps} of them slept in poll first"); // most do; one that finds its bytes there already does not
        Assert.True(switches >= 1);
        // The reader is asleep in poll now: stopping the server wakes it (shut receive side) and the session ends.
        await fixture.Server.StopAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, fixture.Server.SessionCount);
    }

    [Fact]
    public async Task Outstanding_r2ts_never_exceed_max_outstanding_r2t()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "8192"), ("MaxOutstandingR2T", "2"));
        var h = client.Command(IscsiTestClient.Write10(0, 64), 32768, read: false, write: true);
        await client.SendAsync(h);
        var first = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        var second = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        Assert.Null(await client.ReceiveAsync(300)); // no third until a burst completes
        Assert.Equal(0u, first.BufferOffset);
        Assert.Equal(8192u, second.BufferOffset);
        var data = Pattern(32768, 3);
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, second.TargetTransferTag, 0, 8192, final: true), data.AsMemory(8192, 8192));
        var third = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        Assert.Equal(16384u, third.BufferOffset);
        Assert.Equal(2u, third.DataSN);
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, first.TargetTransferTag, 0, 0, final: true), data.AsMemory(0, 8192));
        var fourth = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, third.TargetTransferTag, 0, 16384, final: true), data.AsMemory(16384, 8192));
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, fourth.TargetTransferTag, 0, 24576, final: true), data.AsMemory(24576, 8192));
        var (response, _) = await client.ExpectAsync(IscsiOpcode.ScsiResponse);
        Assert.Equal(0, response.Byte3);
        Assert.Equal(data, fixture.TestDevice.Contents.AsSpan(0, 32768).ToArray());
    }

    /// <summary>RFC 7143 §7.8 / §7.7 (b) at ERL 0: the task ends CHECK CONDITION, ABORTED COMMAND, PROTOCOL
    /// SERVICE CRC ERROR (47/05), the device never runs it, and the connection carries on.</summary>
    private static async Task AssertProtocolServiceCrcErrorAsync(IscsiServerFixture fixture, IscsiTestClient client, uint itt)
    {
        var r = await client.CollectAsync(itt, 0);
        Assert.Equal(2, r.Status);
        Assert.Equal(0x0B, r.Sense[2] & 0x0F);
        Assert.Equal(0x47, r.Sense[12]);
        Assert.Equal(0x05, r.Sense[13]);
        Assert.DoesNotContain(fixture.TestDevice.Commands, c => c.Tag == itt);
        Assert.True(fixture.Logger.Has(40));
        Assert.False(fixture.Logger.Has(31)); // no protocol violation: the connection stays
        var w = await client.WriteAsync(IscsiTestClient.Write10(8, 2), new byte[1024]);
        Assert.Equal(0, w.Status);
    }

    [Fact]
    public async Task Solicited_data_out_with_a_wrong_datasn_ends_the_task_with_check_condition_and_the_connection_stays()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("InitialR2T", "Yes"), ("ImmediateData", "No"));
        var h = client.Command(IscsiTestClient.Write10(0, 16), 8192, read: false, write: true);
        await client.SendAsync(h);
        var r2t = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, r2t.TargetTransferTag, 5, 0, final: false), new byte[4096]);
        // Nothing is answered until the burst ends (F): its remaining Data-Out is taken and discarded.
        Assert.Null(await client.ReceiveAsync(300));
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, r2t.TargetTransferTag, 6, 4096, final: true), new byte[4096]);
        await AssertProtocolServiceCrcErrorAsync(fixture, client, h.InitiatorTaskTag);
    }

    [Fact]
    public async Task Unsolicited_data_out_with_datasn_reversed_ends_the_task_with_check_condition_and_the_connection_stays()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("InitialR2T", "No"), ("ImmediateData", "No"));
        var h = client.Command(IscsiTestClient.Write10(100, 2), 1024, read: false, write: true);
        h.Flags &= unchecked((byte)~IscsiWire.FinalBit); // unsolicited Data-Out follows
        await client.SendAsync(h);
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, IscsiWire.ReservedTag, 1, 0, final: false), new byte[512]);
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, IscsiWire.ReservedTag, 0, 512, final: true), new byte[512]);
        await AssertProtocolServiceCrcErrorAsync(fixture, client, h.InitiatorTaskTag);
    }

    [Theory]
    [InlineData(0u)]   // the second Data-Out repeats DataSN 0
    [InlineData(27u)]
    [InlineData(uint.MaxValue)]
    public async Task A_single_unsolicited_data_out_with_a_wrong_datasn_is_answered_at_once(uint dataSn)
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("InitialR2T", "No"), ("ImmediateData", "No"));
        var h = client.Command(IscsiTestClient.Write10(100, 2), 1024, read: false, write: true);
        h.Flags &= unchecked((byte)~IscsiWire.FinalBit);
        await client.SendAsync(h);
        if (dataSn == 0)
        {
            await client.SendAsync(client.DataOut(h.InitiatorTaskTag, IscsiWire.ReservedTag, 0, 0, final: false), new byte[512]);
            await client.SendAsync(client.DataOut(h.InitiatorTaskTag, IscsiWire.ReservedTag, 0, 512, final: true), new byte[512]);
        }
        else
        {
            await client.SendAsync(client.DataOut(h.InitiatorTaskTag, IscsiWire.ReservedTag, dataSn, 0, final: true), new byte[512]);
        }
        await AssertProtocolServiceCrcErrorAsync(fixture, client, h.InitiatorTaskTag);
    }

    [Fact]
    public async Task After_a_datasn_error_no_more_r2ts_go_out_and_the_task_ends_when_every_outstanding_burst_has()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "8192"), ("MaxOutstandingR2T", "2"));
        var h = client.Command(IscsiTestClient.Write10(0, 64), 32768, read: false, write: true);
        await client.SendAsync(h);
        var first = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        var second = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, first.TargetTransferTag, 3, first.BufferOffset, final: true), new byte[8192]);
        Assert.Null(await client.ReceiveAsync(300)); // no third R2T, no response: the second burst is still owed
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, second.TargetTransferTag, 0, second.BufferOffset, final: true), new byte[8192]);
        await AssertProtocolServiceCrcErrorAsync(fixture, client, h.InitiatorTaskTag);
    }

    [Fact]
    public async Task A_data_out_whose_data_digest_fails_is_rejected_and_its_task_ends_with_check_condition_and_the_connection_stays()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("DataDigest", "CRC32C"), ("InitialR2T", "Yes"), ("ImmediateData", "No"));
        Assert.True(client.DataDigest);
        var h = client.Command(IscsiTestClient.Write10(0, 16), 8192, read: false, write: true);
        await client.SendAsync(h);
        var r2t = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        var first = client.DataOut(h.InitiatorTaskTag, r2t.TargetTransferTag, 0, 0, final: false);
        var bytes = new byte[IscsiCodec.PduBytes(4096, false, true)];
        IscsiCodec.WritePdu(bytes, first, new byte[4096], false, true);
        bytes[^1] ^= 0xff; // the data digest
        await client.SendRawAsync(bytes);
        Assert.Equal((byte)RejectReason.DataDigestError, (await client.ExpectAsync(IscsiOpcode.Reject)).Header.Byte2);
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, r2t.TargetTransferTag, 1, 4096, final: true), new byte[4096]);
        await AssertProtocolServiceCrcErrorAsync(fixture, client, h.InitiatorTaskTag);
    }

    [Fact]
    public async Task Data_out_at_a_wrong_offset_is_rejected_and_the_connection_dropped()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync(("InitialR2T", "Yes"), ("ImmediateData", "No"));
        var h = client.Command(IscsiTestClient.Write10(0, 16), 8192, read: false, write: true);
        await client.SendAsync(h);
        var r2t = (await client.ExpectAsync(IscsiOpcode.ReadyToTransfer)).Header;
        await client.SendAsync(client.DataOut(h.InitiatorTaskTag, r2t.TargetTransferTag, 0, 512, final: false), new byte[4096]);
        var (reject, _) = await client.ExpectAsync(IscsiOpcode.Reject);
        Assert.Equal((byte)RejectReason.ProtocolError, reject.Byte2);
        Assert.Null(await client.ReceiveAsync(5000));
        Assert.DoesNotContain(fixture.TestDevice.Commands, c => c.Tag == h.InitiatorTaskTag);
        await fixture.AssertStillServesAsync();
    }

    [Fact]
    public async Task Commands_outside_the_cmdsn_window_are_dropped_silently()
    {
        await using var fixture = await IscsiServerFixture.StartAsync(o => new IscsiServerOptions { Endpoint = o.Endpoint, CommandWindow = 4 });
        await using var client = await fixture.LoginAsync();
        // Too high, then too low (already used): no answer for either.
        var high = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false);
        high.CmdSN += 100;
        await client.SendAsync(high);
        var low = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false);
        low.CmdSN -= 50;
        await client.SendAsync(low);
        Assert.Null(await client.ReceiveAsync(300));
        Assert.True(fixture.Logger.Has(32));
        client.CmdSN -= 2;
        var ok = await client.ReadAsync(IscsiTestClient.Read10(0, 1), 512);
        Assert.Equal(0, ok.Status);
    }

    [Fact]
    public async Task Window_announces_max_cmd_sn_and_stays_bounded_by_outstanding_commands()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var device = new IscsiTestDevice { Gate = gate };
        await using var fixture = await IscsiServerFixture.StartAsync(o => new IscsiServerOptions { Endpoint = o.Endpoint, CommandWindow = 2 }, device);
        await using var client = await fixture.LoginAsync();
        var a = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false);
        var b = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false);
        var c = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false); // beyond MaxCmdSN
        await client.SendAsync(a);
        await client.SendAsync(b);
        await client.SendAsync(c);
        await IscsiLoginTests.WaitForAsync(() => device.Commands.Count == 2);
        // c must have been read (and dropped) while the window was full, not after a and b free it.
        await IscsiLoginTests.WaitForAsync(() => fixture.Logger.Has(32));
        gate.SetResult();
        // The two answers come in either order; each is one Data-In with the status.
        var first = await client.ExpectAsync(IscsiOpcode.ScsiDataIn);
        var last = (await client.ExpectAsync(IscsiOpcode.ScsiDataIn)).Header;
        Assert.Equal([a.InitiatorTaskTag, b.InitiatorTaskTag], new[] { first.Header.InitiatorTaskTag, last.InitiatorTaskTag }.Order());
        Assert.Null(await client.ReceiveAsync(300));
        Assert.Equal(2, device.Commands.Count);
        Assert.Equal(c.CmdSN, last.ExpCmdSN);
        Assert.Equal(c.CmdSN + 1, last.MaxCmdSN);
    }

    [Fact]
    public async Task Abort_task_stops_a_running_command_and_answers_function_complete()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var device = new IscsiTestDevice { Gate = gate };
        await using var fixture = await IscsiServerFixture.StartAsync(device: device);
        await using var client = await fixture.LoginAsync();
        var cmd = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false);
        await client.SendAsync(cmd);
        await IscsiLoginTests.WaitForAsync(() => device.Commands.Count == 1);
        var tmf = Tmf(client, TmfFunction.AbortTask, cmd.InitiatorTaskTag, cmd.CmdSN);
        await client.SendAsync(tmf);
        var (response, _) = await client.ExpectAsync(IscsiOpcode.TaskManagementResponse);
        Assert.Equal((byte)TmfResponse.FunctionComplete, response.Byte2);
        Assert.Equal(tmf.InitiatorTaskTag, response.InitiatorTaskTag);
        // An unknown task.
        await client.SendAsync(Tmf(client, TmfFunction.AbortTask, 0x5555, cmd.CmdSN));
        Assert.Equal((byte)TmfResponse.TaskDoesNotExist, (await client.ExpectAsync(IscsiOpcode.TaskManagementResponse)).Header.Byte2);
        Assert.Null(await client.ReceiveAsync(300)); // the aborted command is never answered
        gate.SetResult();
        Assert.Equal(0, (await client.ReadAsync(IscsiTestClient.Read10(0, 1), 512)).Status);
    }

    [Theory]
    [InlineData(TmfFunction.LogicalUnitReset, TmfResponse.FunctionComplete)]
    [InlineData(TmfFunction.TargetWarmReset, TmfResponse.FunctionComplete)]
    [InlineData(TmfFunction.ClearTaskSet, TmfResponse.FunctionComplete)]
    [InlineData(TmfFunction.AbortTaskSet, TmfResponse.FunctionComplete)]
    [InlineData(TmfFunction.ClearAca, TmfResponse.NotSupported)]
    [InlineData(TmfFunction.TaskReassign, TmfResponse.ReassignmentNotSupported)]
    [InlineData((TmfFunction)20, TmfResponse.NotSupported)]
    public async Task Task_management_functions_answer_as_the_rfc_says(TmfFunction function, TmfResponse expected)
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await fixture.LoginAsync();
        await client.SendAsync(Tmf(client, function, IscsiWire.ReservedTag, client.CmdSN));
        Assert.Equal((byte)expected, (await client.ExpectAsync(IscsiOpcode.TaskManagementResponse)).Header.Byte2);
        if (function is TmfFunction.LogicalUnitReset or TmfFunction.TargetWarmReset or TmfFunction.ClearTaskSet)
            Assert.Contains(fixture.TestDevice.TaskManagement, t => (byte)t.Function == (function == TmfFunction.ClearTaskSet ? 3 : (byte)function));
        var lunReset = Tmf(client, TmfFunction.LogicalUnitReset, IscsiWire.ReservedTag, client.CmdSN);
        lunReset.Lun = IscsiCodec.EncodeLun(9);
        await client.SendAsync(lunReset);
        Assert.Equal((byte)TmfResponse.LunDoesNotExist, (await client.ExpectAsync(IscsiOpcode.TaskManagementResponse)).Header.Byte2);
    }

    [Fact]
    public async Task Target_pings_an_idle_initiator_and_drops_one_that_never_answers()
    {
        await using var fixture = await IscsiServerFixture.StartAsync(o => new IscsiServerOptions
        {
            Endpoint = o.Endpoint, NopInInterval = TimeSpan.FromMilliseconds(250), NopInTimeout = TimeSpan.FromMilliseconds(1500),
        });
        await using var client = await fixture.LoginAsync();
        var (ping, _) = await client.ExpectAsync(IscsiOpcode.NopIn, 5000);
        Assert.Equal(IscsiWire.ReservedTag, ping.InitiatorTaskTag);
        Assert.NotEqual(IscsiWire.ReservedTag, ping.TargetTransferTag);
        var answer = client.Nop(IscsiWire.ReservedTag);
        answer.TargetTransferTag = ping.TargetTransferTag;
        answer.Lun = ping.Lun;
        await client.SendAsync(answer);
        // Answered: the next ping comes; ignored: the connection goes.
        var next = await client.ExpectAsync(IscsiOpcode.NopIn, 5000);
        Assert.NotEqual(ping.TargetTransferTag, next.Header.TargetTransferTag);
        Assert.Null(await client.ReceiveAsync(15000));
        Assert.True(fixture.Logger.Has(38));
    }

    [Fact]
    public async Task Several_sessions_work_at_once()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        var tasks = Enumerable.Range(0, 6).Select(async i =>
        {
            await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
            client.Isid = 0x80_0000_0001_00UL + (ulong)i;
            Assert.Equal(LoginStatus.Success, await client.LoginAsync(IscsiServerFixture.Target));
            var data = Pattern(65536, 10 + i);
            for (int round = 0; round < 5; round++)
            {
                Assert.Equal(0, (await client.WriteAsync(IscsiTestClient.Write10((uint)(i * 256), 128), data, immediateBytes: 8192)).Status);
                Assert.Equal(data, (await client.ReadAsync(IscsiTestClient.Read10((uint)(i * 256), 128), 65536)).DataIn);
            }
            await client.LogoutAsync();
        });
        await Task.WhenAll(tasks);
    }

    internal static IscsiHeader Tmf(IscsiTestClient client, TmfFunction function, uint rtt, uint refCmdSn) => new()
    {
        Opcode = IscsiOpcode.TaskManagementRequest,
        Immediate = true,
        Flags = (byte)(IscsiWire.FinalBit | (byte)function),
        InitiatorTaskTag = client.NextItt++,
        ReferencedTaskTag = rtt,
        CmdSN = client.CmdSN,
        ExpStatSN = client.ExpStatSN,
        RefCmdSN = refCmdSn,
    };
}
