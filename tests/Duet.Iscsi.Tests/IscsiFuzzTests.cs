using Duet.Core;
using Microsoft.Extensions.Logging;

namespace Duet.Iscsi.Tests;

/// <summary>Bad input: specific malformed PDUs get what RFC 7143 prescribes (Reject and carry on,
/// silence, or a dropped connection); random and mutated PDUs never crash the target; and a
/// well-behaved session keeps working throughout.</summary>
[Trait("Claim", "ISCSI")]
public sealed class IscsiFuzzTests
{
    private const string Target = IscsiServerOptions.DefaultTargetName;

    private static Task<IscsiServerFixture> StartAsync() =>
        IscsiRealDevice.StartAsync([new MemoryBlockVolume("vol0", 16 << 20)]);

    /// <summary>The connection still answers a NOP-Out ping.</summary>
    private static async Task AssertAliveAsync(IscsiTestClient client)
    {
        uint itt = client.NextItt++;
        await client.SendAsync(client.Nop(itt));
        var (h, _) = await client.ExpectAsync(IscsiOpcode.NopIn);
        Assert.Equal(itt, h.InitiatorTaskTag);
    }

    private static async Task AssertDroppedAsync(IscsiTestClient client)
    {
        for (int i = 0; i < 10; i++)
        {
            var pdu = await client.ReceiveAsync(5000);
            if (pdu is null) return;
        }
        Assert.Fail("the connection was not dropped");
    }

    [Fact]
    public async Task Unknown_opcode_is_rejected_and_the_connection_carries_on()
    {
        await using var fixture = await StartAsync();
        await using var client = await fixture.LoginAsync();
        await client.SendAsync(new IscsiHeader { Opcode = (IscsiOpcode)0x1c, Flags = 0x80, InitiatorTaskTag = 99 });
        var (reject, data) = await client.ExpectAsync(IscsiOpcode.Reject);
        Assert.Equal((byte)RejectReason.CommandNotSupported, reject.Byte2);
        Assert.Equal(48, data.Length);
        Assert.Equal(0x1c, data[0] & 0x3f);
        await AssertAliveAsync(client);
    }

    [Fact]
    public async Task Data_out_for_an_unknown_task_is_rejected_and_the_connection_carries_on()
    {
        await using var fixture = await StartAsync();
        await using var client = await fixture.LoginAsync();
        await client.SendAsync(client.DataOut(0x4444, 0x5555, 0, 0, final: true), new byte[512]);
        Assert.Equal((byte)RejectReason.InvalidPduField, (await client.ExpectAsync(IscsiOpcode.Reject)).Header.Byte2);
        await client.SendAsync(client.DataOut(0x4444, IscsiWire.ReservedTag, 0, 0, final: true), new byte[512]);
        Assert.Equal((byte)RejectReason.InvalidPduField, (await client.ExpectAsync(IscsiOpcode.Reject)).Header.Byte2);
        await AssertAliveAsync(client);
    }

    [Fact]
    public async Task Data_segment_beyond_max_recv_is_rejected_and_the_connection_dropped()
    {
        await using var fixture = await StartAsync();
        await using var client = await fixture.LoginAsync();
        var h = client.Nop(client.NextItt++);
        var header = new byte[48];
        h.DataSegmentLength = (256 * 1024) + 4;
        IscsiCodec.WriteHeader(header, h);
        await client.SendRawAsync(header);
        Assert.Equal((byte)RejectReason.ProtocolError, (await client.ExpectAsync(IscsiOpcode.Reject)).Header.Byte2);
        await AssertDroppedAsync(client);
        await fixture.AssertStillServesAsync();
    }

    [Fact]
    public async Task Header_digest_error_drops_the_connection_and_data_digest_error_is_rejected()
    {
        await using var fixture = await StartAsync();
        await using (var client = await fixture.LoginAsync(("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")))
        {
            // A NOP-Out whose data digest is wrong: Reject (data digest error); the connection stays.
            var bytes = new byte[IscsiCodec.PduBytes(8, true, true)];
            IscsiCodec.WritePdu(bytes, client.Nop(client.NextItt++), new byte[8], true, true);
            bytes[^1] ^= 0xff;
            await client.SendRawAsync(bytes);
            Assert.Equal((byte)RejectReason.DataDigestError, (await client.ExpectAsync(IscsiOpcode.Reject)).Header.Byte2);
            await AssertAliveAsync(client);

            // A header digest error: nothing after it can be framed; the connection goes.
            bytes = new byte[IscsiCodec.PduBytes(0, true, true)];
            IscsiCodec.WritePdu(bytes, client.Nop(client.NextItt++), default, true, true);
            bytes[50] ^= 1;
            await client.SendRawAsync(bytes);
            await AssertDroppedAsync(client);
        }
        Assert.True(fixture.Logger.Has(39));
        await fixture.AssertStillServesAsync();
    }

    [Fact]
    public async Task Full_feature_pdus_before_login_fail_the_login()
    {
        await using var fixture = await StartAsync();
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        await client.SendAsync(client.Command(IscsiTestClient.Read10(0, 1), 512, true, false));
        var (r, _) = await client.ExpectAsync(IscsiOpcode.LoginResponse);
        Assert.Equal(LoginStatus.InvalidDuringLogin, IscsiTestClient.Status(r));
        await AssertDroppedAsync(client);
    }

    [Fact]
    public async Task Random_and_mutated_pdus_never_stop_the_target_and_a_good_session_keeps_working()
    {
        await using var fixture = await StartAsync();
        await using var good = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        good.Isid = 0x80_0000_0000_42UL;
        Assert.Equal(LoginStatus.Success, await good.LoginAsync(Target));
        await good.ClearUnitAttentionsAsync();
        var random = new Random(20261202);
        var goodData = new byte[4096];

        for (int round = 0; round < 60; round++)
        {
            await using (var bad = await IscsiTestClient.ConnectAsync(fixture.EndPoint))
            {
                bad.Isid = 0x80_0000_1000_00UL + (ulong)round;
                if (random.Next(4) != 0) await bad.LoginAsync(Target); // or fuzz the login phase
                for (int i = 0; i < 8; i++)
                {
                    byte[] pdu = Mutated(random, bad);
                    try
                    {
                        await bad.SendRawAsync(pdu);
                    }
                    catch (IOException)
                    {
                        break; // dropped: allowed
                    }
                    // Whatever comes back must be a well-formed target PDU.
                    var answer = await SafeReceiveAsync(bad, 100);
                    if (answer is { } a) Assert.True((byte)a.Header.Opcode >= 0x20, $"round {round}: initiator opcode {a.Header.Opcode} from the target");
                }
            }

            // The well-behaved session is unaffected.
            random.NextBytes(goodData);
            uint lba = (uint)(round * 8);
            // A fuzzed TMF (LUN or target reset) leaves this nexus a unit attention: retried, as initiators do.
            Assert.Equal(0, (await RetryUnitAttentionAsync(() => good.WriteAsync(IscsiTestClient.Write10(lba, 8), goodData, immediateBytes: 2048))).Status);
            var read = await RetryUnitAttentionAsync(() => good.ReadAsync(IscsiTestClient.Read10(lba, 8), 4096));
            Assert.Equal(0, read.Status);
            Assert.Equal(goodData, read.DataIn);
        }
        Assert.DoesNotContain(fixture.Logger.Entries, e => e.Level >= LogLevel.Error);
        Assert.DoesNotContain(fixture.Logger.Entries, e => e.Exception is InvariantViolationException);
        await IscsiLoginTests.WaitForAsync(() => fixture.Server.SessionCount == 1);
        await fixture.AssertStillServesAsync();
        await good.LogoutAsync();
    }

    private static async Task<IscsiTestClient.Result> RetryUnitAttentionAsync(Func<Task<IscsiTestClient.Result>> command)
    {
        for (int attempt = 0; ; attempt++)
        {
            var result = await command();
            if (attempt == 4 || result.Status != 2 || result.Sense.Length < 3 || (result.Sense[2] & 0x0f) != 6) return result;
        }
    }

    private static async Task<(IscsiHeader Header, byte[] Data)?> SafeReceiveAsync(IscsiTestClient client, int timeoutMs)
    {
        try
        {
            return await client.ReceiveAsync(timeoutMs);
        }
        catch (InvalidDataException)
        {
            Assert.Fail("the target sent a PDU that does not frame");
            return null;
        }
    }

    /// <summary>A PDU that is wrong in one of many ways.</summary>
    private static byte[] Mutated(Random random, IscsiTestClient client)
    {
        int kind = random.Next(10);
        IscsiHeader h;
        byte[] data = [];
        switch (kind)
        {
            case 0: // pure noise of a random length
            {
                var noise = new byte[random.Next(1, 200)];
                random.NextBytes(noise);
                return noise;
            }
            case 1: // a random opcode with random fields and a small data segment
                h = new IscsiHeader
                {
                    Opcode = (IscsiOpcode)random.Next(64), Immediate = random.Next(2) == 0, Flags = (byte)random.Next(256),
                    Byte2 = (byte)random.Next(256), Byte3 = (byte)random.Next(256), InitiatorTaskTag = (uint)random.Next(),
                    Word20 = (uint)random.Next(), Word24 = client.CmdSN + (uint)random.Next(-3, 3), Word28 = (uint)random.Next(),
                    Word32 = (uint)random.Next(), Word36 = (uint)random.Next(), Word40 = (uint)random.Next(), Word44 = (uint)random.Next(),
                };
                data = new byte[random.Next(0, 600)];
                random.NextBytes(data);
                break;
            case 2: // a SCSI command outside the CmdSN window
                h = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false);
                h.CmdSN += (uint)random.Next(100, 100000);
                break;
            case 3: // a write with a lying expected length and immediate data
                h = client.Command(IscsiTestClient.Write10((uint)random.Next(0, 64), 8), (uint)random.Next(0, 1 << 30), false, true);
                data = new byte[random.Next(0, 9000)];
                break;
            case 4: // Data-Out for nothing
                h = client.DataOut((uint)random.Next(), (uint)random.Next(), (uint)random.Next(4), (uint)random.Next(1 << 20), random.Next(2) == 0);
                data = new byte[random.Next(0, 4096)];
                break;
            case 5: // a TMF with a random function and task
                h = IscsiDataPathTests.Tmf(client, (TmfFunction)random.Next(0, 20), (uint)random.Next(), client.CmdSN);
                h.Lun = (ulong)random.NextInt64();
                break;
            case 6: // text with garbage keys
                h = new IscsiHeader { Opcode = IscsiOpcode.TextRequest, Immediate = true, Flags = (byte)(random.Next(2) == 0 ? 0x80 : 0x40), InitiatorTaskTag = client.NextItt++, TargetTransferTag = (uint)random.Next(3) == 0 ? (uint)random.Next() : IscsiWire.ReservedTag, CmdSN = client.CmdSN };
                data = new byte[random.Next(0, 300)];
                random.NextBytes(data);
                break;
            case 7: // a login request in the full feature phase, or a second one before login ends
                h = client.LoginHeader((LoginStage)random.Next(4), (LoginStage)random.Next(4));
                data = IscsiTestClient.Text(("InitiatorName", "iqn.x"), ("TargetName", random.Next(2) == 0 ? Target : "nope"), ("HeaderDigest", "Bogus"));
                break;
            case 8: // an AHS that claims more than it has
                h = client.Command(IscsiTestClient.Read10(0, 1), 512, true, false);
                h.TotalAhsWords = (byte)random.Next(1, 255);
                break;
            default: // a valid NOP-Out with bytes flipped
                h = client.Nop(client.NextItt++);
                data = new byte[random.Next(0, 64)];
                break;
        }
        var bytes = new byte[IscsiCodec.PduBytes(data.Length, client.HeaderDigest, client.DataDigest)];
        IscsiCodec.WritePdu(bytes, h, data, client.HeaderDigest, client.DataDigest);
        if (kind >= 8 || random.Next(4) == 0)
        {
            int flips = random.Next(1, 4);
            for (int i = 0; i < flips; i++) bytes[random.Next(Math.Min(bytes.Length, 48))] ^= (byte)(1 << random.Next(8));
        }
        if (random.Next(10) == 0) bytes = bytes[..random.Next(1, bytes.Length)]; // truncated
        return bytes;
    }
}
