using System.Net;

namespace Duet.Iscsi;

/// <summary>A portal (address:port and target portal group tag) that SendTargets reports.</summary>
public sealed record IscsiPortal(string Address, int Port, ushort GroupTag)
{
    /// <summary>"127.0.0.1:3260,1", the TargetAddress value.</summary>
    public override string ToString() => Address.Contains(':') ? $"[{Address}]:{Port},{GroupTag}" : $"{Address}:{Port},{GroupTag}";
}

/// <summary>CHAP secrets of the target (RFC 7143 §12.1.3). The initiator proves it knows
/// <see cref="Secret"/> under <see cref="UserName"/>; with <see cref="MutualSecret"/> set the target
/// can prove itself to an initiator that asks (mutual CHAP).</summary>
public sealed record IscsiChapOptions(string UserName, string Secret, string? MutualUserName = null, string? MutualSecret = null);

/// <summary>How an <see cref="IscsiServer"/> listens, what it is called and what it negotiates.</summary>
public sealed class IscsiServerOptions
{
    /// <summary>The protocol's well-known port.</summary>
    public const int DefaultPort = 3260;

    /// <summary>Duet's one target name.</summary>
    public const string DefaultTargetName = "iqn.2026-12.org.duet:array";

    /// <summary>Where to listen; port 0 picks a free port (see <see cref="IscsiServer.LocalEndPoint"/>).</summary>
    public IPEndPoint Endpoint { get; init; } = new(IPAddress.Loopback, DefaultPort);

    public string TargetName { get; init; } = DefaultTargetName;

    /// <summary>Sent as TargetAlias at login when set.</summary>
    public string? TargetAlias { get; init; }

    /// <summary>This portal's target portal group tag (= the ALUA target port group).</summary>
    public ushort PortalGroupTag { get; init; } = 1;

    /// <summary>The relative target port identifier of this controller's port.</summary>
    public ushort RelativeTargetPort { get; init; } = 1;

    /// <summary>Every portal of the target, for SendTargets. Empty: this server's own endpoint only.</summary>
    public IReadOnlyList<IscsiPortal> Portals { get; init; } = [];

    /// <summary>Null: AuthMethod=None. Set: CHAP is required.</summary>
    public IscsiChapOptions? Chap { get; init; }

    /// <summary>What we declare as MaxRecvDataSegmentLength (the largest data segment we accept).</summary>
    public int MaxRecvDataSegmentLength { get; init; } = 256 * 1024;

    /// <summary>Upper bounds we negotiate down to.</summary>
    public int MaxBurstLength { get; init; } = 1 << 20;
    public int FirstBurstLength { get; init; } = 256 * 1024;
    public int MaxOutstandingR2T { get; init; } = 4;

    /// <summary>Our side of InitialR2T (OR) and ImmediateData (AND).</summary>
    public bool InitialR2T { get; init; }
    public bool ImmediateData { get; init; } = true;

    /// <summary>Whether CRC32C header and data digests may be chosen.</summary>
    public bool AllowDigests { get; init; } = true;

    /// <summary>Largest Expected Data Transfer Length of one command; larger ones are refused
    /// with CHECK CONDITION before any buffer is taken.</summary>
    public int MaxTransferBytes { get; init; } = 16 << 20;

    /// <summary>Commands a session may have outstanding (the CmdSN window, MaxCmdSN - ExpCmdSN + 1).</summary>
    public int CommandWindow { get; init; } = 32;

    /// <summary>Sessions the server holds at once; more logins get "out of resources".</summary>
    public int MaxSessions { get; init; } = 64;

    /// <summary>How long a connection may take to log in.</summary>
    public TimeSpan LoginTimeout { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>Idle time after which the target pings with a NOP-In; null: never.</summary>
    public TimeSpan? NopInInterval { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How long a ping may go unanswered before the connection is dropped.</summary>
    public TimeSpan NopInTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How long <see cref="IscsiServer.StopAsync"/> lets in-flight commands finish.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(5);

    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    internal void Validate()
    {
        ArgumentNullException.ThrowIfNull(Endpoint);
        ArgumentNullException.ThrowIfNull(TimeProvider);
        ArgumentNullException.ThrowIfNull(Portals);
        if (string.IsNullOrWhiteSpace(TargetName) || TargetName.Length > 223)
            throw new ArgumentException("the target name must be 1..223 characters", nameof(TargetName));
        CheckLength(MaxRecvDataSegmentLength, nameof(MaxRecvDataSegmentLength));
        CheckLength(MaxBurstLength, nameof(MaxBurstLength));
        CheckLength(FirstBurstLength, nameof(FirstBurstLength));
        if (MaxOutstandingR2T is < 1 or > 65535) throw new ArgumentOutOfRangeException(nameof(MaxOutstandingR2T), MaxOutstandingR2T, "must be in [1, 65535]");
        if (MaxTransferBytes < 4096) throw new ArgumentOutOfRangeException(nameof(MaxTransferBytes), MaxTransferBytes, "must be at least 4096");
        if (CommandWindow is < 1 or > 4096) throw new ArgumentOutOfRangeException(nameof(CommandWindow), CommandWindow, "must be in [1, 4096]");
        if (MaxSessions < 1) throw new ArgumentOutOfRangeException(nameof(MaxSessions), MaxSessions, "must be at least 1");
        if (Chap is not null && (string.IsNullOrEmpty(Chap.UserName) || Chap.Secret.Length < 1))
            throw new ArgumentException("CHAP needs a user name and a secret", nameof(Chap));
        if (LoginTimeout <= TimeSpan.Zero || NopInTimeout <= TimeSpan.Zero || ShutdownTimeout < TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(LoginTimeout), "timeouts must be positive");
    }

    private static void CheckLength(int value, string name)
    {
        if (value < IscsiWire.MinDataSegmentLength || value > IscsiWire.MaxDataSegmentLength)
            throw new ArgumentOutOfRangeException(name, value, $"must be in [{IscsiWire.MinDataSegmentLength}, {IscsiWire.MaxDataSegmentLength}]");
    }
}
