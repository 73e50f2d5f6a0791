using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Duet.Iscsi.Tests;

/// <summary>A minimal raw iSCSI initiator for tests: sends any PDU it is given (well-formed or
/// not) and reads PDUs back with <see cref="IscsiCodec"/>.</summary>
public sealed class IscsiTestClient : IAsyncDisposable
{
    public const string InitiatorName = "iqn.2026-12.org.duet:test-initiator";

    private readonly TcpClient _tcp;
    private readonly NetworkStream _stream;
    private byte[] _buffer = new byte[1 << 20];
    private int _start, _end;

    private IscsiTestClient(TcpClient tcp)
    {
        _tcp = tcp;
        _stream = tcp.GetStream();
    }

    public uint CmdSN { get; set; } = 1;
    public uint ExpStatSN { get; set; }
    public uint NextItt { get; set; } = 1;
    public ushort Tsih { get; private set; }
    public ulong Isid { get; set; } = 0x80_1234_5678_01UL;
    public bool HeaderDigest { get; set; }
    public bool DataDigest { get; set; }
    /// <summary>What the target declared (its MaxRecvDataSegmentLength).</summary>
    public int TargetMaxRecv { get; private set; } = 8192;
    public Dictionary<string, string> Negotiated { get; } = new(StringComparer.Ordinal);

    public static async Task<IscsiTestClient> ConnectAsync(IPEndPoint endPoint)
    {
        var tcp = new TcpClient { NoDelay = true };
        await tcp.ConnectAsync(endPoint);
        return new IscsiTestClient(tcp);
    }

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync();
        _tcp.Dispose();
    }

    // ------------------------------------------------------------------ raw PDUs

    public async Task SendAsync(IscsiHeader header, ReadOnlyMemory<byte> data = default)
    {
        var bytes = new byte[IscsiCodec.PduBytes(data.Length, HeaderDigest, DataDigest)];
        int n = IscsiCodec.WritePdu(bytes, header, data.Span, HeaderDigest, DataDigest);
        await _stream.WriteAsync(bytes.AsMemory(0, n));
    }

    public async Task SendRawAsync(ReadOnlyMemory<byte> bytes) => await _stream.WriteAsync(bytes);

    /// <summary>The next PDU, or null if the target closed the connection (or nothing came in time).</summary>
    public async Task<(IscsiHeader Header, byte[] Data)?> ReceiveAsync(int timeoutMs = 10_000)
    {
        using var timeout = new CancellationTokenSource(timeoutMs);
        while (true)
        {
            var sequence = new ReadOnlySequence<byte>(_buffer, _start, _end - _start);
            var reader = new SequenceReader<byte>(sequence);
            if (IscsiCodec.TryReadPdu(ref reader, HeaderDigest, DataDigest, 1 << 24, out var frame))
            {
                if (frame.Error != IscsiFrameError.None) throw new InvalidDataException($"target sent a PDU with {frame.Error}");
                var data = frame.Data.ToArray();
                _start += (int)reader.Consumed;
                var h = frame.Header;
                if (h.Opcode is IscsiOpcode.ScsiResponse or IscsiOpcode.TaskManagementResponse or IscsiOpcode.LoginResponse
                        or IscsiOpcode.TextResponse or IscsiOpcode.LogoutResponse or IscsiOpcode.Reject
                    || (h.Opcode == IscsiOpcode.NopIn && h.InitiatorTaskTag != IscsiWire.ReservedTag)
                    || (h.Opcode == IscsiOpcode.ScsiDataIn && (h.Flags & IscsiWire.StatusBit) != 0))
                    ExpStatSN = h.StatSN + 1;
                return (h, data);
            }
            if (_start > 0)
            {
                Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                _end -= _start;
                _start = 0;
            }
            if (_end == _buffer.Length) Array.Resize(ref _buffer, _buffer.Length * 2);
            int read;
            try
            {
                read = await _stream.ReadAsync(_buffer.AsMemory(_end), timeout.Token);
            }
            catch (Exception e) when (e is OperationCanceledException or IOException)
            {
                return null;
            }
            if (read == 0) return null;
            _end += read;
        }
    }

    public async Task<(IscsiHeader Header, byte[] Data)> ExpectAsync(IscsiOpcode opcode, int timeoutMs = 10_000)
    {
        while (true)
        {
            var pdu = await ReceiveAsync(timeoutMs) ?? throw new IOException($"connection closed or silent while waiting for {opcode}");
            if (pdu.Header.Opcode == IscsiOpcode.NopIn && pdu.Header.InitiatorTaskTag == IscsiWire.ReservedTag && opcode != IscsiOpcode.NopIn)
                continue; // a ping; tests that care read them explicitly
            Assert.True(pdu.Header.Opcode == opcode, $"expected {opcode}, got {pdu.Header.Opcode} (reason/response {pdu.Header.Byte2})");
            return pdu;
        }
    }

    // ------------------------------------------------------------------ text

    public static byte[] Text(params (string Key, string Value)[] pairs)
    {
        var buffer = new ArrayBufferWriter<byte>();
        foreach (var (key, value) in pairs) IscsiCodec.AppendText(buffer, key, value);
        return buffer.WrittenSpan.ToArray();
    }

    public static Dictionary<string, string> Parse(byte[] data)
    {
        var pairs = new List<KeyValuePair<string, string>>();
        Assert.True(IscsiCodec.TryParseText(data, pairs));
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in pairs) result[k] = v;
        return result;
    }

    public static List<KeyValuePair<string, string>> ParseList(byte[] data)
    {
        var pairs = new List<KeyValuePair<string, string>>();
        Assert.True(IscsiCodec.TryParseText(data, pairs));
        return pairs;
    }

    // ------------------------------------------------------------------ login

    public IscsiHeader LoginHeader(LoginStage csg, LoginStage? nsg, bool cont = false)
    {
        var h = new IscsiHeader
        {
            Opcode = IscsiOpcode.LoginRequest,
            Immediate = true,
            Flags = (byte)(((byte)csg << 2) | (nsg is { } n ? IscsiWire.TransitBit | (byte)n : 0) | (cont ? IscsiWire.ContinueBit : 0)),
            InitiatorTaskTag = 0x1000,
            CmdSN = CmdSN,
            ExpStatSN = ExpStatSN,
        };
        h.Isid = Isid;
        h.Tsih = Tsih;
        h.Cid = 1;
        return h;
    }

    /// <summary>One login request/response exchange; returns the response header and its keys.</summary>
    public async Task<(IscsiHeader Header, Dictionary<string, string> Keys)> LoginStepAsync(LoginStage csg, LoginStage? nsg, params (string, string)[] keys)
    {
        await SendAsync(LoginHeader(csg, nsg), Text(keys));
        var (header, data) = await ExpectAsync(IscsiOpcode.LoginResponse);
        var parsed = Parse(data);
        foreach (var (k, v) in parsed) Negotiated[k] = v;
        if (parsed.TryGetValue("MaxRecvDataSegmentLength", out var mrdsl)) TargetMaxRecv = int.Parse(mrdsl);
        if (header.Tsih != 0) Tsih = header.Tsih;
        return (header, parsed);
    }

    /// <summary>A complete login without authentication (or with CHAP when <paramref name="chap"/> is given)
    /// straight to the full feature phase. Returns the final response's status.</summary>
    public async Task<LoginStatus> LoginAsync(string target, (string User, string Secret)? chap = null, bool discovery = false,
        params (string, string)[] operational)
    {
        var identity = new List<(string, string)> { ("InitiatorName", InitiatorName) };
        if (discovery) identity.Add(("SessionType", "Discovery"));
        else identity.Add(("TargetName", target));
        if (chap is { } c)
        {
            identity.Add(("AuthMethod", "CHAP,None"));
            var (h1, k1) = await LoginStepAsync(LoginStage.Security, null, [.. identity]);
            if (Status(h1) != LoginStatus.Success) return Status(h1);
            Assert.Equal("CHAP", k1["AuthMethod"]);
            var (h2, k2) = await LoginStepAsync(LoginStage.Security, null, ("CHAP_A", "5"));
            if (Status(h2) != LoginStatus.Success) return Status(h2);
            byte id = byte.Parse(k2["CHAP_I"]);
            byte[] challenge = IscsiChap.Decode(k2["CHAP_C"])!;
            var response = IscsiChap.Response(id, c.Secret, challenge);
            var (h3, _) = await LoginStepAsync(LoginStage.Security, LoginStage.Operational, ("CHAP_N", c.User), ("CHAP_R", IscsiChap.Encode(response)));
            if (Status(h3) != LoginStatus.Success) return Status(h3);
            Assert.True(h3.Transit);
        }
        else
        {
            identity.Add(("AuthMethod", "None"));
            var (h1, _) = await LoginStepAsync(LoginStage.Security, LoginStage.Operational, [.. identity]);
            if (Status(h1) != LoginStatus.Success) return Status(h1);
        }
        var keys = new List<(string, string)>(operational);
        if (keys.Count == 0) keys.Add(("MaxRecvDataSegmentLength", "65536"));
        var (h, k) = await LoginStepAsync(LoginStage.Operational, LoginStage.FullFeature, [.. keys]);
        if (Status(h) != LoginStatus.Success) return Status(h);
        Assert.True(h.Transit);
        Assert.Equal(LoginStage.FullFeature, h.NextStage);
        HeaderDigest = k.GetValueOrDefault("HeaderDigest") == "CRC32C";
        DataDigest = k.GetValueOrDefault("DataDigest") == "CRC32C";
        return LoginStatus.Success;
    }

    public static LoginStatus Status(in IscsiHeader h) => (LoginStatus)(h.Word36 >> 16);

    // ------------------------------------------------------------------ commands

    public IscsiHeader Command(ReadOnlySpan<byte> cdb, uint edtl, bool read, bool write, bool immediate = false)
    {
        Span<byte> padded = stackalloc byte[16];
        cdb.CopyTo(padded);
        var h = new IscsiHeader
        {
            Opcode = IscsiOpcode.ScsiCommand,
            Immediate = immediate,
            Flags = (byte)(IscsiWire.FinalBit | (read ? IscsiWire.ReadBit : 0) | (write ? IscsiWire.WriteBit : 0) | 1),
            InitiatorTaskTag = NextItt++,
            ExpectedDataTransferLength = edtl,
            CmdSN = CmdSN,
            ExpStatSN = ExpStatSN,
            Word32 = BinaryPrimitives.ReadUInt32BigEndian(padded),
            Word36 = BinaryPrimitives.ReadUInt32BigEndian(padded[4..]),
            Word40 = BinaryPrimitives.ReadUInt32BigEndian(padded[8..]),
            Word44 = BinaryPrimitives.ReadUInt32BigEndian(padded[12..]),
        };
        if (!immediate) CmdSN++;
        return h;
    }

    public static byte[] Read10(uint lba, ushort blocks)
    {
        var cdb = new byte[10];
        cdb[0] = 0x28;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(2), lba);
        BinaryPrimitives.WriteUInt16BigEndian(cdb.AsSpan(7), blocks);
        return cdb;
    }

    public static byte[] Write10(uint lba, ushort blocks)
    {
        var cdb = Read10(lba, blocks);
        cdb[0] = 0x2a;
        return cdb;
    }

    public sealed record Result(byte Status, byte Response, byte[] DataIn, byte[] Sense, uint Residual, byte Flags, List<IscsiHeader> Pdus);

    /// <summary>Runs a read-type command, gathering Data-In until the status.</summary>
    public async Task<Result> ReadAsync(byte[] cdb, uint edtl)
    {
        var h = Command(cdb, edtl, read: true, write: false);
        await SendAsync(h);
        return await CollectAsync(h.InitiatorTaskTag, edtl);
    }

    public async Task<Result> CollectAsync(uint itt, uint edtl)
    {
        var data = new byte[edtl];
        var pdus = new List<IscsiHeader>();
        uint expectedDataSn = 0;
        while (true)
        {
            var pdu = await ReceiveAsync() ?? throw new IOException("connection closed during a command");
            var h = pdu.Header;
            if (h.Opcode == IscsiOpcode.NopIn && h.InitiatorTaskTag == IscsiWire.ReservedTag) continue;
            pdus.Add(h);
            Assert.Equal(itt, h.InitiatorTaskTag);
            if (h.Opcode == IscsiOpcode.ScsiDataIn)
            {
                Assert.Equal(expectedDataSn++, h.DataSN);
                pdu.Data.CopyTo(data, (int)h.BufferOffset);
                if ((h.Flags & IscsiWire.StatusBit) != 0)
                    return new Result(h.Byte3, 0, data, [], h.ResidualCount, h.Flags, pdus);
                continue;
            }
            Assert.Equal(IscsiOpcode.ScsiResponse, h.Opcode);
            byte[] sense = pdu.Data.Length >= 2 ? pdu.Data.AsSpan(2, BinaryPrimitives.ReadUInt16BigEndian(pdu.Data)).ToArray() : [];
            return new Result(h.Byte3, h.Byte2, data, sense, h.ResidualCount, h.Flags, pdus);
        }
    }

    /// <summary>Runs a write-type command: immediate data up to <paramref name="immediateBytes"/>,
    /// unsolicited Data-Out up to <paramref name="unsolicitedBytes"/>, then answers R2Ts.</summary>
    public async Task<Result> WriteAsync(byte[] cdb, byte[] data, int immediateBytes = 0, int unsolicitedBytes = 0, int? segment = null)
    {
        int seg = segment ?? TargetMaxRecv;
        var h = Command(cdb, (uint)data.Length, read: false, write: true);
        immediateBytes = Math.Min(Math.Min(immediateBytes, data.Length), seg);
        if (Math.Min(unsolicitedBytes, data.Length) > immediateBytes) h.Flags &= unchecked((byte)~IscsiWire.FinalBit); // unsolicited Data-Out follows
        await SendAsync(h, data.AsMemory(0, immediateBytes));
        int offset = immediateBytes;
        uint dataSn = 0;
        int end = Math.Min(unsolicitedBytes, data.Length);
        while (offset < end)
        {
            int n = Math.Min(seg, end - offset);
            await SendAsync(DataOut(h.InitiatorTaskTag, IscsiWire.ReservedTag, dataSn++, (uint)offset, final: offset + n == end), data.AsMemory(offset, n));
            offset += n;
        }
        var pdus = new List<IscsiHeader>();
        while (true)
        {
            var pdu = await ReceiveAsync() ?? throw new IOException("connection closed during a write");
            var r = pdu.Header;
            if (r.Opcode == IscsiOpcode.NopIn && r.InitiatorTaskTag == IscsiWire.ReservedTag) continue;
            pdus.Add(r);
            if (r.Opcode == IscsiOpcode.ReadyToTransfer)
            {
                int o = (int)r.BufferOffset, left = (int)r.DesiredDataTransferLength;
                uint sn = 0;
                while (left > 0)
                {
                    int n = Math.Min(seg, left);
                    await SendAsync(DataOut(h.InitiatorTaskTag, r.TargetTransferTag, sn++, (uint)o, final: n == left), data.AsMemory(o, n));
                    o += n;
                    left -= n;
                }
                continue;
            }
            Assert.Equal(IscsiOpcode.ScsiResponse, r.Opcode);
            byte[] sense = pdu.Data.Length >= 2 ? pdu.Data.AsSpan(2, BinaryPrimitives.ReadUInt16BigEndian(pdu.Data)).ToArray() : [];
            return new Result(r.Byte3, r.Byte2, [], sense, r.ResidualCount, r.Flags, pdus);
        }
    }

    /// <summary>TEST UNIT READY until GOOD: takes the unit attentions a new nexus (or a reset) has pending.</summary>
    public async Task ClearUnitAttentionsAsync()
    {
        for (int i = 0; i < 8; i++)
        {
            var r = await ReadAsync(new byte[6], 0);
            if (r.Status == 0) return;
            Assert.True(r.Sense.Length > 2 && (r.Sense[2] & 0x0f) == 6, $"TEST UNIT READY: status {r.Status}, sense key {(r.Sense.Length > 2 ? r.Sense[2] & 0x0f : -1)}");
        }
        Assert.Fail("unit attentions do not clear");
    }

    public IscsiHeader DataOut(uint itt, uint ttt, uint dataSn, uint offset, bool final) => new()
    {
        Opcode = IscsiOpcode.ScsiDataOut,
        Flags = final ? IscsiWire.FinalBit : (byte)0,
        InitiatorTaskTag = itt,
        TargetTransferTag = ttt,
        ExpStatSN = ExpStatSN,
        DataSN = dataSn,
        BufferOffset = offset,
    };

    public IscsiHeader Nop(uint itt, bool immediate = true)
    {
        var h = new IscsiHeader
        {
            Opcode = IscsiOpcode.NopOut,
            Immediate = immediate,
            Flags = IscsiWire.FinalBit,
            InitiatorTaskTag = itt,
            TargetTransferTag = IscsiWire.ReservedTag,
            CmdSN = CmdSN,
            ExpStatSN = ExpStatSN,
        };
        if (!immediate) CmdSN++;
        return h;
    }

    public async Task<IscsiHeader> LogoutAsync(LogoutReason reason = LogoutReason.CloseSession)
    {
        var h = new IscsiHeader
        {
            Opcode = IscsiOpcode.LogoutRequest,
            Immediate = true,
            Flags = (byte)(IscsiWire.FinalBit | (byte)reason),
            InitiatorTaskTag = NextItt++,
            CmdSN = CmdSN,
            ExpStatSN = ExpStatSN,
        };
        h.Cid = 1;
        await SendAsync(h);
        return (await ExpectAsync(IscsiOpcode.LogoutResponse)).Header;
    }

    public async Task<Dictionary<string, string>> TextAsync(params (string, string)[] keys)
    {
        var h = new IscsiHeader
        {
            Opcode = IscsiOpcode.TextRequest,
            Immediate = true,
            Flags = IscsiWire.FinalBit,
            InitiatorTaskTag = NextItt++,
            TargetTransferTag = IscsiWire.ReservedTag,
            CmdSN = CmdSN,
            ExpStatSN = ExpStatSN,
        };
        await SendAsync(h, Text(keys));
        var (_, data) = await ExpectAsync(IscsiOpcode.TextResponse);
        return Parse(data);
    }

    public static string Describe(byte[] text) => Encoding.UTF8.GetString(text).Replace('\0', ' ');
}
