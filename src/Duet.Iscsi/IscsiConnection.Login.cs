using System.Buffers;
using System.Globalization;
using System.Security.Cryptography;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi;

// The login phase (RFC 7143 §6, §11.12, §11.13): the security stage (AuthMethod None or CHAP),
// the operational stage (IscsiNegotiator), then a session (TSIH) and the full feature phase.
internal sealed partial class IscsiConnection
{
    private enum AuthState { Start, ChapChosen, ChallengeSent, Done }

    private enum LoginStep { Continue, FullFeature, Failed }

    private sealed class LoginState
    {
        public bool First = true;
        public ulong Isid;
        public ushort Tsih;
        public uint CmdSn;
        public LoginStage Stage = LoginStage.Security;
        public AuthState Auth = AuthState.Start;
        public byte ChapIdentifier;
        public byte[]? Challenge;
        public string InitiatorName = "";
        public bool Discovery;
        public bool SentFirstResponse;
        public bool DeclaredMaxRecv;
        public readonly HashSet<string> Negotiated = new(StringComparer.Ordinal);
        public readonly ArrayBufferWriter<byte> Text = new();
        public IscsiNegotiator? Negotiator;
    }

    private sealed class LoginFailure(LoginStatus status, string reason) : Exception(reason)
    {
        public LoginStatus Status { get; } = status;
    }

    /// <summary>Runs the login phase. True: a session is open and the full feature phase starts.</summary>
    private async Task<bool> LoginAsync()
    {
        using var timer = new CancellationTokenSource(_options.LoginTimeout, _options.TimeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(AbortToken, timer.Token);
        var state = new LoginState { Negotiator = new IscsiNegotiator(_options, _parameters) };
        _parameters.TargetMaxRecvDataSegmentLength = _options.MaxRecvDataSegmentLength;
        try
        {
            while (true)
            {
                var (ok, pdu) = await ReadPduAsync(IscsiWire.DefaultMaxRecvDataSegmentLength, linked.Token);
                if (!ok)
                {
                    IscsiLog.PeerClosed(_logger, Id, "login");
                    return false;
                }
                try
                {
                    LoginStep step;
                    try
                    {
                        step = await HandleLoginPduAsync(pdu, state);
                    }
                    catch (LoginFailure e)
                    {
                        await FailLoginAsync(pdu.Header, state, e.Status, e.Message);
                        return false;
                    }
                    if (step == LoginStep.FullFeature) return true;
                    if (step == LoginStep.Failed) return false;
                }
                finally
                {
                    pdu.Dispose();
                }
            }
        }
        catch (OperationCanceledException) when (timer.IsCancellationRequested && !AbortToken.IsCancellationRequested)
        {
            IscsiLog.LoginTimedOut(_logger, Id);
            _metrics.LoginFailed();
            return false;
        }
    }

    private async ValueTask<LoginStep> HandleLoginPduAsync(Pdu pdu, LoginState state)
    {
        var h = pdu.Header;
        if (h.Opcode != IscsiOpcode.LoginRequest)
            throw new LoginFailure(LoginStatus.InvalidDuringLogin, $"{h.Opcode} during login");
        if (pdu.Error != IscsiFrameError.None)
            throw new LoginFailure(LoginStatus.InitiatorError, $"login PDU framing: {pdu.Error}");
        if (state.First)
        {
            // Byte2 = Version-max, Byte3 = Version-min.
            if (h.Byte3 > IscsiWire.Version)
                throw new LoginFailure(LoginStatus.UnsupportedVersion, $"version-min {h.Byte3} is above {IscsiWire.Version}");
            state.Isid = h.Isid;
            state.Tsih = h.Tsih;
            state.CmdSn = h.CmdSN;
            _cid = h.Cid;
            _statSn = h.ExpStatSN;
            if (h.Tsih != 0)
            {
                throw _server.FindSession(h.Tsih) is null
                    ? new LoginFailure(LoginStatus.SessionDoesNotExist, $"no session with TSIH {h.Tsih}")
                    : new LoginFailure(LoginStatus.TooManyConnections, "MaxConnections is 1");
            }
        }
        else if (h.Isid != state.Isid || h.Tsih != state.Tsih || h.Cid != _cid)
        {
            throw new LoginFailure(LoginStatus.InitiatorError, "ISID, TSIH or CID changed during login");
        }

        var csg = h.CurrentStage;
        var nsg = h.NextStage;
        if (csg == (LoginStage)2 || (h.Transit && (nsg == (LoginStage)2 || nsg <= csg)))
            throw new LoginFailure(LoginStatus.InitiatorError, $"invalid stage transition CSG {csg} NSG {nsg}");
        if (csg != state.Stage)
        {
            // Skipping the security stage is allowed when nothing was said there yet.
            if (!(state.Stage == LoginStage.Security && csg == LoginStage.Operational && state.Auth == AuthState.Start))
                throw new LoginFailure(LoginStatus.InitiatorError, $"CSG {csg} while in {state.Stage}");
            if (_options.Chap is not null)
                throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP is required; the initiator skipped the security stage");
            state.Auth = AuthState.Done;
            state.Stage = LoginStage.Operational;
        }

        if (state.Text.WrittenCount + pdu.Data.Length > MaxTextBytes)
            throw new LoginFailure(LoginStatus.OutOfResources, "login text too long");
        state.Text.Write(pdu.Data);
        if (h.Continue)
        {
            // More text follows: acknowledge with an empty response (RFC 7143 §11.13.2).
            await SendLoginResponseAsync(h, state, (byte)((byte)csg << 2), ReadOnlyMemory<byte>.Empty, tsih: 0);
            return LoginStep.Continue;
        }
        var pairs = new List<KeyValuePair<string, string>>();
        bool parsed = IscsiCodec.TryParseText(state.Text.WrittenSpan, pairs);
        state.Text.ResetWrittenCount();
        if (!parsed) throw new LoginFailure(LoginStatus.InitiatorError, "malformed login text");

        var response = new ArrayBufferWriter<byte>(256);
        if (state.First) ReadIdentity(pairs, state);
        state.First = false;

        string? authMethod = null, chapA = null, chapN = null, chapR = null, chapI = null, chapC = null;
        foreach (var (key, value) in pairs)
        {
            switch (key)
            {
                case "InitiatorName":
                case "SessionType":
                case "TargetName":
                    continue; // read from the first PDU
                case "AuthMethod": authMethod = value; continue;
                case "CHAP_A": chapA = value; continue;
                case "CHAP_N": chapN = value; continue;
                case "CHAP_R": chapR = value; continue;
                case "CHAP_I": chapI = value; continue;
                case "CHAP_C": chapC = value; continue;
            }
            if (IscsiNegotiator.IsLoginOnlyIdentityKey(key))
            {
                IscsiCodec.AppendText(response, key, IscsiNegotiator.Irrelevant);
                continue;
            }
            if (!state.Negotiated.Add(key)) throw new LoginFailure(LoginStatus.InitiatorError, $"key {key} negotiated twice");
            var outcome = state.Negotiator!.Negotiate(key, value, state.Discovery);
            if (outcome.Failure != LoginStatus.Success) throw new LoginFailure(outcome.Failure, $"{key}={value}");
            if (outcome.Response is null) continue;
            if (outcome.Response is IscsiNegotiator.Reject or IscsiNegotiator.NotUnderstood or IscsiNegotiator.Irrelevant)
                IscsiLog.KeyRefused(_logger, Id, key, value, outcome.Response);
            IscsiCodec.AppendText(response, key, outcome.Response);
        }

        bool securityKeys = authMethod is not null || chapA is not null || chapN is not null || chapR is not null || chapI is not null || chapC is not null;
        if (securityKeys && csg != LoginStage.Security)
            throw new LoginFailure(LoginStatus.InitiatorError, "security keys outside the security stage");
        if (csg == LoginStage.Security)
            Authenticate(state, response, authMethod, chapA, chapN, chapR, chapI, chapC, h.Transit);

        if (!state.SentFirstResponse)
        {
            if (!state.Discovery)
                IscsiCodec.AppendText(response, "TargetPortalGroupTag", _options.PortalGroupTag.ToString(CultureInfo.InvariantCulture));
            if (_options.TargetAlias is { } alias) IscsiCodec.AppendText(response, "TargetAlias", alias);
        }

        bool transit = h.Transit && (csg != LoginStage.Security || state.Auth == AuthState.Done);
        bool toFullFeature = transit && nsg == LoginStage.FullFeature;
        if (!state.DeclaredMaxRecv && (csg == LoginStage.Operational || toFullFeature))
        {
            IscsiCodec.AppendText(response, "MaxRecvDataSegmentLength", _options.MaxRecvDataSegmentLength.ToString(CultureInfo.InvariantCulture));
            state.DeclaredMaxRecv = true;
        }

        ushort tsih = 0;
        if (toFullFeature)
        {
            state.Negotiator!.Finish();
            tsih = await OpenSessionAsync(state);
        }
        byte flags = (byte)(((byte)csg << 2) | (transit ? IscsiWire.TransitBit | (byte)nsg : 0));
        await SendLoginResponseAsync(h, state, flags, response.WrittenMemory, tsih);
        state.SentFirstResponse = true;
        if (transit) state.Stage = nsg;
        if (!toFullFeature) return LoginStep.Continue;

        _digests = true;
        IscsiLog.LoggedIn(_logger, Id, state.Discovery ? "discovery" : "normal", tsih, state.InitiatorName, state.Isid, _parameters);
        return LoginStep.FullFeature;
    }

    private void ReadIdentity(List<KeyValuePair<string, string>> pairs, LoginState state)
    {
        string? initiator = null, sessionType = null, target = null;
        foreach (var (key, value) in pairs)
        {
            if (key == "InitiatorName") initiator = value;
            else if (key == "SessionType") sessionType = value;
            else if (key == "TargetName") target = value;
        }
        if (string.IsNullOrEmpty(initiator) || initiator.Length > 223)
            throw new LoginFailure(LoginStatus.MissingParameter, "InitiatorName is missing");
        state.InitiatorName = initiator;
        if (sessionType is null or "Normal")
        {
            state.Discovery = false;
            if (string.IsNullOrEmpty(target)) throw new LoginFailure(LoginStatus.MissingParameter, "TargetName is missing");
            if (!string.Equals(target, _options.TargetName, StringComparison.OrdinalIgnoreCase))
                throw new LoginFailure(LoginStatus.NotFound, $"no target named '{target}'");
        }
        else if (sessionType == "Discovery")
        {
            state.Discovery = true;
        }
        else
        {
            throw new LoginFailure(LoginStatus.SessionTypeNotSupported, $"SessionType={sessionType}");
        }
    }

    private void Authenticate(LoginState state, ArrayBufferWriter<byte> response, string? authMethod, string? chapA,
        string? chapN, string? chapR, string? chapI, string? chapC, bool transitRequested)
    {
        var chap = _options.Chap;
        if (authMethod is not null)
        {
            if (state.Auth != AuthState.Start) throw new LoginFailure(LoginStatus.InitiatorError, "AuthMethod offered twice");
            bool offersChap = false, offersNone = false;
            foreach (var range in authMethod.AsSpan().Split(','))
            {
                var item = authMethod.AsSpan()[range];
                if (item.SequenceEqual("CHAP")) offersChap = true;
                else if (item.SequenceEqual("None")) offersNone = true;
            }
            if (chap is not null && offersChap)
            {
                IscsiCodec.AppendText(response, "AuthMethod", "CHAP");
                state.Auth = AuthState.ChapChosen;
            }
            else if (chap is null && offersNone)
            {
                IscsiCodec.AppendText(response, "AuthMethod", "None");
                state.Auth = AuthState.Done;
            }
            else
            {
                throw new LoginFailure(LoginStatus.AuthenticationFailure,
                    chap is null ? $"AuthMethod={authMethod}: this target authenticates with None" : $"AuthMethod={authMethod}: this target requires CHAP");
            }
        }
        if (chapA is not null)
        {
            if (state.Auth != AuthState.ChapChosen) throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP_A out of sequence");
            bool md5 = false;
            foreach (var range in chapA.AsSpan().Split(',')) md5 |= chapA.AsSpan()[range].SequenceEqual(IscsiChap.Md5Algorithm);
            if (!md5) throw new LoginFailure(LoginStatus.AuthenticationFailure, $"CHAP_A={chapA}: only MD5 (5) is supported");
            state.ChapIdentifier = (byte)RandomNumberGenerator.GetInt32(256);
            state.Challenge = RandomNumberGenerator.GetBytes(IscsiChap.ChallengeBytes);
            IscsiCodec.AppendText(response, "CHAP_A", IscsiChap.Md5Algorithm);
            IscsiCodec.AppendText(response, "CHAP_I", IscsiChap.FormatIdentifier(state.ChapIdentifier));
            IscsiCodec.AppendText(response, "CHAP_C", IscsiChap.Encode(state.Challenge));
            state.Auth = AuthState.ChallengeSent;
        }
        if (chapN is not null || chapR is not null)
        {
            if (state.Auth != AuthState.ChallengeSent || chap is null || chapN is null || chapR is null)
                throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP_N / CHAP_R out of sequence");
            byte[]? answer = IscsiChap.Decode(chapR);
            byte[] expected = IscsiChap.Response(state.ChapIdentifier, chap.Secret, state.Challenge);
            if (!string.Equals(chapN, chap.UserName, StringComparison.Ordinal) || answer is null
                || !CryptographicOperations.FixedTimeEquals(answer, expected))
                throw new LoginFailure(LoginStatus.AuthenticationFailure, $"CHAP response of '{chapN}' is wrong");
            if (chapI is not null || chapC is not null)
            {
                // Mutual CHAP: the initiator challenges the target in turn.
                if (chapI is null || chapC is null || chap.MutualSecret is null)
                    throw new LoginFailure(LoginStatus.AuthenticationFailure, "mutual CHAP asked for but not configured");
                byte[]? challenge = IscsiChap.Decode(chapC);
                if (!IscsiChap.TryParseIdentifier(chapI, out byte id) || challenge is null || challenge.Length == 0 || challenge.Length > 1024
                    || challenge.AsSpan().SequenceEqual(state.Challenge))
                    throw new LoginFailure(LoginStatus.AuthenticationFailure, "bad mutual CHAP challenge");
                IscsiCodec.AppendText(response, "CHAP_N", chap.MutualUserName ?? _options.TargetName);
                IscsiCodec.AppendText(response, "CHAP_R", IscsiChap.Encode(IscsiChap.Response(id, chap.MutualSecret, challenge)));
            }
            state.Auth = AuthState.Done;
        }
        else if (chapI is not null || chapC is not null)
        {
            throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP_I / CHAP_C without CHAP_N / CHAP_R");
        }
        if (transitRequested && state.Auth == AuthState.Start)
        {
            // Leaving the security stage without offering AuthMethod means None.
            if (chap is not null) throw new LoginFailure(LoginStatus.AuthenticationFailure, "CHAP is required");
            state.Auth = AuthState.Done;
        }
    }

    /// <summary>Opens the session (reinstating one of the same initiator port) and returns its TSIH.</summary>
    private async ValueTask<ushort> OpenSessionAsync(LoginState state)
    {
        if (_server.FindSession(state.InitiatorName, state.Isid) is { } old)
        {
            // Session reinstatement (RFC 7143 §6.3.5): the old session ends before the new one serves.
            IscsiLog.SessionReinstated(_logger, Id, old.Tsih, state.InitiatorName, state.Isid);
            old.Connection.Abort();
            try
            {
                await old.Connection.Completion.WaitAsync(_options.ShutdownTimeout, _options.TimeProvider, AbortToken);
            }
            catch (TimeoutException)
            {
            }
        }
        var nexus = state.Discovery ? null : new ItNexus(state.InitiatorName, state.Isid, _options.PortalGroupTag, _options.RelativeTargetPort);
        var session = _server.OpenSession(tsih => new IscsiSession(tsih, state.InitiatorName, state.Isid, state.Discovery, nexus,
            state.CmdSn, _options.CommandWindow, this));
        if (session is null) throw new LoginFailure(LoginStatus.OutOfResources, $"{_options.MaxSessions} sessions are open");
        _session = session;
        return session.Tsih;
    }

    private async ValueTask SendLoginResponseAsync(IscsiHeader request, LoginState state, byte flags, ReadOnlyMemory<byte> text, ushort tsih)
    {
        var header = new IscsiHeader
        {
            Opcode = IscsiOpcode.LoginResponse,
            Flags = flags,
            Byte2 = IscsiWire.Version,
            Byte3 = IscsiWire.Version,
            InitiatorTaskTag = request.InitiatorTaskTag,
        };
        header.Isid = state.Isid;
        header.Tsih = tsih;
        await _writeLock.WaitAsync(AbortToken);
        try
        {
            header.StatSN = _statSn++;
            header.ExpCmdSN = state.CmdSn;
            header.MaxCmdSN = state.CmdSn + (uint)_options.CommandWindow - 1;
            WritePdu(header, text.Span);
            await FlushAsync();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    private async ValueTask FailLoginAsync(IscsiHeader request, LoginState state, LoginStatus status, string reason)
    {
        IscsiLog.LoginFailed(_logger, Id, status, reason);
        _metrics.LoginFailed();
        var header = new IscsiHeader
        {
            Opcode = IscsiOpcode.LoginResponse,
            Byte2 = IscsiWire.Version,
            Byte3 = IscsiWire.Version,
            InitiatorTaskTag = request.InitiatorTaskTag,
            Word36 = (uint)status << 16,
        };
        header.Isid = request.Isid;
        try
        {
            await _writeLock.WaitAsync(AbortToken);
            try
            {
                header.StatSN = _statSn++;
                header.ExpCmdSN = state.CmdSn;
                header.MaxCmdSN = state.CmdSn;
                WritePdu(header, default);
                await FlushAsync();
            }
            finally
            {
                _writeLock.Release();
            }
        }
        catch (Exception e) when (IsTransportFailure(e))
        {
            // The initiator may already be gone.
        }
    }
}
