using System.Globalization;

namespace Duet.Iscsi;

/// <summary>Operational parameters of a session and its connection, as negotiated at login
/// (RFC 7143 §13). Before negotiation every field holds the RFC's default.</summary>
public sealed class IscsiParameters
{
    public bool HeaderDigest { get; set; }
    public bool DataDigest { get; set; }
    public int MaxConnections { get; set; } = 1;
    public bool InitialR2T { get; set; } = true;
    public bool ImmediateData { get; set; } = true;
    /// <summary>What the initiator declared it can receive: the cap on our Data-In, text and NOP-In data segments.</summary>
    public int InitiatorMaxRecvDataSegmentLength { get; set; } = IscsiWire.DefaultMaxRecvDataSegmentLength;
    /// <summary>What we declared we can receive: the cap on the initiator's data segments.</summary>
    public int TargetMaxRecvDataSegmentLength { get; set; } = IscsiWire.DefaultMaxRecvDataSegmentLength;
    public int MaxBurstLength { get; set; } = 262144;
    public int FirstBurstLength { get; set; } = 65536;
    public int DefaultTime2Wait { get; set; } = 2;
    public int DefaultTime2Retain { get; set; } = 20;
    public int MaxOutstandingR2T { get; set; } = 1;
    public bool DataPduInOrder { get; set; } = true;
    public bool DataSequenceInOrder { get; set; } = true;
    public int ErrorRecoveryLevel { get; set; }
    public string? InitiatorAlias { get; set; }

    public override string ToString() =>
        $"HeaderDigest={(HeaderDigest ? "CRC32C" : "None")} DataDigest={(DataDigest ? "CRC32C" : "None")} InitialR2T={InitialR2T} " +
        $"ImmediateData={ImmediateData} MaxRecvDataSegmentLength={InitiatorMaxRecvDataSegmentLength}/{TargetMaxRecvDataSegmentLength} " +
        $"MaxBurstLength={MaxBurstLength} FirstBurstLength={FirstBurstLength} MaxOutstandingR2T={MaxOutstandingR2T}";
}

/// <summary>The outcome of one offered key: the value to answer with (null: answer nothing,
/// e.g. a declaration), or a login failure.</summary>
public readonly record struct KeyOutcome(string? Response, LoginStatus Failure = LoginStatus.Success);

/// <summary>
/// Pure operational-key negotiation (RFC 7143 §6 and §13) for the target side: the initiator
/// offers, the target answers. Lists take the initiator's first value the target supports;
/// numbers take the minimum or maximum the RFC names; booleans AND or OR. Values outside the
/// RFC's range are answered "Reject"; keys the target does not know "NotUnderstood"; keys that
/// are irrelevant to the session type "Irrelevant".
/// </summary>
public sealed class IscsiNegotiator(IscsiServerOptions options, IscsiParameters parameters)
{
    public const string Reject = "Reject";
    public const string NotUnderstood = "NotUnderstood";
    public const string Irrelevant = "Irrelevant";

    /// <summary>Keys that only make sense in the first Login Request or are handled by the login
    /// state machine, not here.</summary>
    public static bool IsLoginOnlyIdentityKey(string key) =>
        key is "InitiatorName" or "TargetName" or "SessionType" or "AuthMethod" or "TargetAlias" or "TargetAddress" or "TargetPortalGroupTag"
        || key.StartsWith("CHAP_", StringComparison.Ordinal);

    public KeyOutcome Negotiate(string key, string value, bool discovery)
    {
        switch (key)
        {
            case "HeaderDigest":
            case "DataDigest":
            {
                bool? crc = ChooseDigest(value);
                if (crc is null) return new KeyOutcome(Reject);
                if (key == "HeaderDigest") parameters.HeaderDigest = crc.Value;
                else parameters.DataDigest = crc.Value;
                return new KeyOutcome(crc.Value ? "CRC32C" : "None");
            }
            case "MaxConnections":
                return Number(value, 1, 65535, out int connections) ? Answer(parameters.MaxConnections = Math.Min(connections, 1)) : Rejected;
            case "InitialR2T":
                if (discovery) return new KeyOutcome(Irrelevant);
                return Bool(value, out bool initialR2T) ? Answer(parameters.InitialR2T = initialR2T || options.InitialR2T) : Rejected;
            case "ImmediateData":
                if (discovery) return new KeyOutcome(Irrelevant);
                return Bool(value, out bool immediate) ? Answer(parameters.ImmediateData = immediate && options.ImmediateData) : Rejected;
            case "MaxRecvDataSegmentLength":
                // Declarative: the initiator states what it can receive; nothing to answer.
                if (!Number(value, IscsiWire.MinDataSegmentLength, IscsiWire.MaxDataSegmentLength, out int mrdsl)) return Rejected;
                parameters.InitiatorMaxRecvDataSegmentLength = mrdsl;
                return new KeyOutcome(null);
            case "MaxBurstLength":
                if (discovery) return new KeyOutcome(Irrelevant);
                return Number(value, IscsiWire.MinDataSegmentLength, IscsiWire.MaxDataSegmentLength, out int burst)
                    ? Answer(parameters.MaxBurstLength = Math.Min(burst, options.MaxBurstLength)) : Rejected;
            case "FirstBurstLength":
                if (discovery) return new KeyOutcome(Irrelevant);
                return Number(value, IscsiWire.MinDataSegmentLength, IscsiWire.MaxDataSegmentLength, out int first)
                    ? Answer(parameters.FirstBurstLength = Math.Min(first, options.FirstBurstLength)) : Rejected;
            case "DefaultTime2Wait":
                return Number(value, 0, 3600, out int wait) ? Answer(parameters.DefaultTime2Wait = Math.Max(wait, 0)) : Rejected;
            case "DefaultTime2Retain":
                // Error recovery level 0 keeps nothing once a connection is gone.
                return Number(value, 0, 3600, out _) ? Answer(parameters.DefaultTime2Retain = 0) : Rejected;
            case "MaxOutstandingR2T":
                if (discovery) return new KeyOutcome(Irrelevant);
                return Number(value, 1, 65535, out int r2t) ? Answer(parameters.MaxOutstandingR2T = Math.Min(r2t, options.MaxOutstandingR2T)) : Rejected;
            case "DataPDUInOrder":
                if (discovery) return new KeyOutcome(Irrelevant);
                return Bool(value, out _) ? Answer(parameters.DataPduInOrder = true) : Rejected; // OR with our Yes
            case "DataSequenceInOrder":
                if (discovery) return new KeyOutcome(Irrelevant);
                return Bool(value, out _) ? Answer(parameters.DataSequenceInOrder = true) : Rejected;
            case "ErrorRecoveryLevel":
                return Number(value, 0, 2, out _) ? Answer(parameters.ErrorRecoveryLevel = 0) : Rejected;
            case "InitiatorAlias":
                parameters.InitiatorAlias = value;
                return new KeyOutcome(null);
            default:
                return new KeyOutcome(NotUnderstood);
        }
    }

    /// <summary>After all keys: FirstBurstLength may not exceed MaxBurstLength (RFC 7143 §13.14).</summary>
    public void Finish()
    {
        if (parameters.FirstBurstLength > parameters.MaxBurstLength) parameters.FirstBurstLength = parameters.MaxBurstLength;
    }

    private static readonly KeyOutcome Rejected = new(Reject);

    private static KeyOutcome Answer(int value) => new(value.ToString(CultureInfo.InvariantCulture));

    private static KeyOutcome Answer(bool value) => new(value ? "Yes" : "No");

    private static bool Number(string value, long min, long max, out int number)
    {
        number = 0;
        if (!TryNumber(value, out long v) || v < min || v > max) return false;
        number = (int)v;
        return true;
    }

    private static bool Bool(string value, out bool result)
    {
        result = value == "Yes";
        return value is "Yes" or "No";
    }

    private bool? ChooseDigest(string value)
    {
        foreach (var range in value.AsSpan().Split(','))
        {
            var item = value.AsSpan()[range];
            if (item.SequenceEqual("CRC32C") && options.AllowDigests) return true;
            if (item.SequenceEqual("None")) return false;
        }
        return null;
    }

    /// <summary>Decimal or 0x-hex numbers (RFC 7143 §6.1 numerical values).</summary>
    public static bool TryNumber(string value, out long number)
    {
        number = 0;
        if (value.Length == 0 || value.Length > 20) return false;
        if (value.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            return long.TryParse(value.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out number) && number >= 0;
        return long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out number);
    }
}
