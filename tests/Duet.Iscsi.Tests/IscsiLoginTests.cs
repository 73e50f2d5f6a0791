namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI")]
public sealed class IscsiLoginTests
{
    private const string Target = IscsiServerFixture.Target;

    [Fact]
    public async Task Login_without_authentication_negotiates_and_logs_out()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        var (h1, k1) = await client.LoginStepAsync(LoginStage.Security, LoginStage.Operational,
            ("InitiatorName", IscsiTestClient.InitiatorName), ("TargetName", Target), ("AuthMethod", "None"));
        Assert.Equal(LoginStatus.Success, IscsiTestClient.Status(h1));
        Assert.Equal("None", k1["AuthMethod"]);
        Assert.Equal("1", k1["TargetPortalGroupTag"]);
        Assert.True(h1.Transit);
        Assert.Equal(0, h1.Tsih);

        var (h2, k2) = await client.LoginStepAsync(LoginStage.Operational, LoginStage.FullFeature,
            ("HeaderDigest", "CRC32C,None"), ("DataDigest", "None"), ("MaxConnections", "4"), ("InitialR2T", "No"),
            ("ImmediateData", "Yes"), ("MaxRecvDataSegmentLength", "16384"), ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "65536"), ("DefaultTime2Wait", "2"), ("DefaultTime2Retain", "20"), ("MaxOutstandingR2T", "8"),
            ("DataPDUInOrder", "Yes"), ("DataSequenceInOrder", "Yes"), ("ErrorRecoveryLevel", "2"), ("X-com.example.foo", "bar"));
        Assert.Equal(LoginStatus.Success, IscsiTestClient.Status(h2));
        Assert.NotEqual(0, h2.Tsih);
        Assert.Equal("CRC32C", k2["HeaderDigest"]);
        Assert.Equal("None", k2["DataDigest"]);
        Assert.Equal("1", k2["MaxConnections"]);
        Assert.Equal("No", k2["InitialR2T"]);
        Assert.Equal("Yes", k2["ImmediateData"]);
        Assert.Equal((1 << 20).ToString(), k2["MaxBurstLength"]);
        Assert.Equal("65536", k2["FirstBurstLength"]);
        Assert.Equal("2", k2["DefaultTime2Wait"]);
        Assert.Equal("0", k2["DefaultTime2Retain"]);
        Assert.Equal("4", k2["MaxOutstandingR2T"]);
        Assert.Equal("0", k2["ErrorRecoveryLevel"]);
        Assert.Equal("NotUnderstood", k2["X-com.example.foo"]);
        Assert.Equal((256 * 1024).ToString(), k2["MaxRecvDataSegmentLength"]);
        Assert.False(k2.ContainsKey("MaxRecvDataSegmentLength") && k1.ContainsKey("MaxRecvDataSegmentLength"));

        client.HeaderDigest = true;
        var nop = client.Nop(0x77);
        await client.SendAsync(nop, new byte[] { 1, 2, 3 });
        var (nopIn, echo) = await client.ExpectAsync(IscsiOpcode.NopIn);
        Assert.Equal(0x77u, nopIn.InitiatorTaskTag);
        Assert.Equal(new byte[] { 1, 2, 3 }, echo);

        Assert.Equal(1, fixture.Server.SessionCount);
        var logout = await client.LogoutAsync();
        Assert.Equal((byte)LogoutResponse.Success, logout.Byte2);
        Assert.Null(await client.ReceiveAsync(5000));
        await WaitForAsync(() => fixture.Server.SessionCount == 0);
        Assert.Single(fixture.TestDevice.LostNexuses);
    }

    [Theory]
    [InlineData("InitialR2T", "Yes", "Yes")]
    [InlineData("ImmediateData", "No", "No")]
    [InlineData("MaxBurstLength", "4096", "4096")]
    [InlineData("MaxBurstLength", "100", "Reject")]
    [InlineData("MaxBurstLength", "lots", "Reject")]
    [InlineData("HeaderDigest", "MD5", "Reject")]
    [InlineData("DataDigest", "CRC32C", "CRC32C")]
    [InlineData("InitialR2T", "Maybe", "Reject")]
    [InlineData("DefaultTime2Wait", "3601", "Reject")]
    [InlineData("MaxOutstandingR2T", "0x10", "4")]
    [InlineData("IFMarker", "No", "NotUnderstood")]
    public async Task Operational_keys_follow_the_rfc_rules(string key, string offered, string answered)
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        Assert.Equal(LoginStatus.Success, await client.LoginAsync(Target, operational: [(key, offered)]));
        Assert.Equal(answered, client.Negotiated[key]);
    }

    [Fact]
    public async Task Data_digests_protect_a_read_and_write()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        Assert.Equal(LoginStatus.Success, await client.LoginAsync(Target, operational: [("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")]));
        Assert.True(client.HeaderDigest && client.DataDigest);
        var data = Enumerable.Range(0, 8192).Select(i => (byte)(i * 13)).ToArray();
        Assert.Equal(0, (await client.WriteAsync(IscsiTestClient.Write10(10, 16), data, immediateBytes: 4096)).Status);
        var read = await client.ReadAsync(IscsiTestClient.Read10(10, 16), 8192);
        Assert.Equal(data, read.DataIn);
    }

    [Theory]
    [InlineData("iqn.2026-12.org.duet:other", LoginStatus.NotFound)]
    [InlineData(null, LoginStatus.MissingParameter)]
    public async Task Wrong_or_missing_target_name_fails_login(string? target, LoginStatus status)
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        var keys = new List<(string, string)> { ("InitiatorName", IscsiTestClient.InitiatorName), ("AuthMethod", "None") };
        if (target is not null) keys.Add(("TargetName", target));
        var (h, _) = await client.LoginStepAsync(LoginStage.Security, LoginStage.Operational, [.. keys]);
        Assert.Equal(status, IscsiTestClient.Status(h));
        Assert.Null(await client.ReceiveAsync(5000));
        await fixture.AssertStillServesAsync();
    }

    [Fact]
    public async Task Unsupported_version_and_unknown_tsih_fail_login()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using (var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint))
        {
            var h = client.LoginHeader(LoginStage.Security, LoginStage.Operational);
            h.Byte3 = 2; // version-min
            await client.SendAsync(h, IscsiTestClient.Text(("InitiatorName", "iqn.x"), ("TargetName", Target)));
            var (r, _) = await client.ExpectAsync(IscsiOpcode.LoginResponse);
            Assert.Equal(LoginStatus.UnsupportedVersion, IscsiTestClient.Status(r));
        }
        await using (var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint))
        {
            var h = client.LoginHeader(LoginStage.Security, LoginStage.Operational);
            h.Tsih = 999;
            await client.SendAsync(h, IscsiTestClient.Text(("InitiatorName", "iqn.x"), ("TargetName", Target)));
            var (r, _) = await client.ExpectAsync(IscsiOpcode.LoginResponse);
            Assert.Equal(LoginStatus.SessionDoesNotExist, IscsiTestClient.Status(r));
        }
    }

    [Fact]
    public async Task Continued_login_text_is_gathered()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        var text = IscsiTestClient.Text(("InitiatorName", IscsiTestClient.InitiatorName), ("TargetName", Target), ("AuthMethod", "None"));
        await client.SendAsync(client.LoginHeader(LoginStage.Security, null, cont: true), text.AsMemory(0, 10));
        var (ack, ackData) = await client.ExpectAsync(IscsiOpcode.LoginResponse);
        Assert.Equal(LoginStatus.Success, IscsiTestClient.Status(ack));
        Assert.Empty(ackData);
        await client.SendAsync(client.LoginHeader(LoginStage.Security, LoginStage.Operational), text.AsMemory(10));
        var (r, data) = await client.ExpectAsync(IscsiOpcode.LoginResponse);
        Assert.Equal(LoginStatus.Success, IscsiTestClient.Status(r));
        Assert.Equal("None", IscsiTestClient.Parse(data)["AuthMethod"]);
    }

    [Fact]
    public async Task Chap_with_the_right_secret_logs_in_and_with_a_wrong_one_fails()
    {
        var chap = new IscsiChapOptions("duet-user", "a-very-good-secret");
        await using var fixture = await IscsiServerFixture.StartAsync(o => With(o, chap));
        await using (var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint))
        {
            Assert.Equal(LoginStatus.Success, await client.LoginAsync(Target, ("duet-user", "a-very-good-secret")));
            var r = await client.ReadAsync(IscsiTestClient.Read10(0, 1), 512);
            Assert.Equal(0, r.Status);
        }
        await using (var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint))
        {
            Assert.Equal(LoginStatus.AuthenticationFailure, await client.LoginAsync(Target, ("duet-user", "the-wrong-secret")));
            Assert.Null(await client.ReceiveAsync(5000));
        }
        await using (var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint))
        {
            Assert.Equal(LoginStatus.AuthenticationFailure, await client.LoginAsync(Target, ("someone-else", "a-very-good-secret")));
        }
        await using (var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint))
        {
            // No authentication offered to a target that requires CHAP.
            Assert.Equal(LoginStatus.AuthenticationFailure, await client.LoginAsync(Target));
        }
        Assert.True(fixture.Logger.Has(12));
    }

    [Fact]
    public async Task Mutual_chap_proves_the_target()
    {
        var chap = new IscsiChapOptions("duet-user", "initiator-secret", "duet-target", "target-secret-12");
        await using var fixture = await IscsiServerFixture.StartAsync(o => With(o, chap));
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        var (_, k1) = await client.LoginStepAsync(LoginStage.Security, null,
            ("InitiatorName", IscsiTestClient.InitiatorName), ("TargetName", Target), ("AuthMethod", "CHAP"));
        Assert.Equal("CHAP", k1["AuthMethod"]);
        var (_, k2) = await client.LoginStepAsync(LoginStage.Security, null, ("CHAP_A", "7,5"));
        Assert.Equal("5", k2["CHAP_A"]);
        var response = IscsiChap.Response(byte.Parse(k2["CHAP_I"]), "initiator-secret", IscsiChap.Decode(k2["CHAP_C"])!);
        byte[] myChallenge = Enumerable.Range(100, 16).Select(i => (byte)i).ToArray();
        var (h3, k3) = await client.LoginStepAsync(LoginStage.Security, LoginStage.Operational,
            ("CHAP_N", "duet-user"), ("CHAP_R", IscsiChap.Encode(response)), ("CHAP_I", "42"), ("CHAP_C", IscsiChap.Encode(myChallenge)));
        Assert.Equal(LoginStatus.Success, IscsiTestClient.Status(h3));
        Assert.True(h3.Transit);
        Assert.Equal("duet-target", k3["CHAP_N"]);
        Assert.Equal(IscsiChap.Response(42, "target-secret-12", myChallenge), IscsiChap.Decode(k3["CHAP_R"]));
    }

    [Fact]
    public async Task Discovery_session_lists_the_target_with_both_portals()
    {
        IscsiPortal[] portals = [new("127.0.0.1", 3260, 1), new("127.0.0.1", 3261, 2)];
        await using var fixture = await IscsiServerFixture.StartAsync(o => new IscsiServerOptions { Endpoint = o.Endpoint, Portals = portals });
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        Assert.Equal(LoginStatus.Success, await client.LoginAsync(Target, discovery: true));
        Assert.False(client.Negotiated.ContainsKey("TargetPortalGroupTag"));
        var h = new IscsiHeader
        {
            Opcode = IscsiOpcode.TextRequest,
            Immediate = true,
            Flags = IscsiWire.FinalBit,
            InitiatorTaskTag = 5,
            TargetTransferTag = IscsiWire.ReservedTag,
            CmdSN = client.CmdSN,
        };
        await client.SendAsync(h, IscsiTestClient.Text(("SendTargets", "All")));
        var (_, data) = await client.ExpectAsync(IscsiOpcode.TextResponse);
        var pairs = IscsiTestClient.ParseList(data);
        Assert.Equal([new("TargetName", Target), new("TargetAddress", "127.0.0.1:3260,1"), new("TargetAddress", "127.0.0.1:3261,2")], pairs);

        // A SCSI command has no place in a discovery session.
        await client.SendAsync(client.Command(IscsiTestClient.Read10(0, 1), 512, true, false));
        var (reject, _) = await client.ExpectAsync(IscsiOpcode.Reject);
        Assert.Equal((byte)RejectReason.ProtocolError, reject.Byte2);
        Assert.Equal((byte)LogoutResponse.Success, (await client.LogoutAsync()).Byte2);
    }

    [Fact]
    public async Task A_new_login_with_the_same_isid_reinstates_the_session()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        await using var first = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        Assert.Equal(LoginStatus.Success, await first.LoginAsync(Target));
        ushort oldTsih = first.Tsih;
        await using var second = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        second.Isid = first.Isid;
        Assert.Equal(LoginStatus.Success, await second.LoginAsync(Target));
        Assert.NotEqual(oldTsih, second.Tsih);
        Assert.Null(await first.ReceiveAsync(5000)); // the old connection is dropped
        Assert.Equal(0, (await second.ReadAsync(IscsiTestClient.Read10(0, 1), 512)).Status);
        Assert.Equal(1, fixture.Server.SessionCount);
        Assert.True(fixture.Logger.Has(14));
    }

    [Fact]
    public async Task Login_that_never_finishes_times_out()
    {
        await using var fixture = await IscsiServerFixture.StartAsync(o => new IscsiServerOptions { Endpoint = o.Endpoint, LoginTimeout = TimeSpan.FromMilliseconds(300) });
        await using var client = await IscsiTestClient.ConnectAsync(fixture.EndPoint);
        Assert.Null(await client.ReceiveAsync(5000));
        Assert.True(fixture.Logger.Has(15));
    }

    private static IscsiServerOptions With(IscsiServerOptions o, IscsiChapOptions chap) => new() { Endpoint = o.Endpoint, Chap = chap };

    internal static async Task WaitForAsync(Func<bool> condition)
    {
        for (int i = 0; i < 200 && !condition(); i++) await Task.Delay(25);
        Assert.True(condition());
    }
}
