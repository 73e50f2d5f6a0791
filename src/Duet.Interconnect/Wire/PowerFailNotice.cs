using System.Buffers;
using System.Buffers.Binary;

namespace Duet.Interconnect.Wire;

/// <summary>Where a controller is in its power-fail window (AW-6).</summary>
public enum PowerFailPhase : byte
{
    /// <summary>The window began: the sender takes no new host command and will stop within the window.</summary>
    Began = 1,
    /// <summary>The sender's work is done (or its window ran out): it stops now.</summary>
    Done = 2,
}

/// <summary>Whom the power failure strikes.</summary>
public enum PowerFailScope : byte
{
    /// <summary>The sender alone (its process was sent SIGTERM): the peer goes on and takes its arrays over.</summary>
    Controller = 1,
    /// <summary>Both controllers (`duet power-fail`, `./duet up` stopping): the peer runs its own window too, and
    /// neither takes the other over.</summary>
    Pair = 2,
}

/// <summary>
/// AW-6: a controller tells its peer that its power-fail window began, and that it ended. Body 16
/// bytes: 0 phase (1 began, 2 done); 1 scope (1 this controller alone, 2 the pair); 2 flags (bit 0:
/// done because the window ran out); 3 zero; 4-7 the window in milliseconds; 8-11 dirty cache elements
/// the sender keeps in NVRAM (done; else zero); 12-15 write-log records it leaves to recovery (done;
/// else zero).
/// </summary>
public readonly record struct PowerFailNotice(PowerFailPhase Phase, PowerFailScope Scope, bool WindowExpired, uint WindowMs, uint DirtyElements, uint LogRecords)
    : IDuetMessage<PowerFailNotice>
{
    const int Body = 16;
    const byte FlagExpired = 0x01;
    public static ushort MessageType => MirrorWire.TypePowerFail;
    public int BodyBytes => Body;

    public static bool TryReadBody(ReadOnlySpan<byte> b, out PowerFailNotice value, out WireError error)
    {
        value = default;
        if (b.Length != Body) return DuetFrame.Fail(out error, WireError.BadLength);
        if (b[0] is not ((byte)PowerFailPhase.Began or (byte)PowerFailPhase.Done)) return DuetFrame.Fail(out error, WireError.BadEnum);
        if (b[1] is not ((byte)PowerFailScope.Controller or (byte)PowerFailScope.Pair)) return DuetFrame.Fail(out error, WireError.BadEnum);
        if ((b[2] & ~FlagExpired) != 0 || b[3] != 0) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        // Only the end of a window can say how it ended, or what it left.
        bool expired = (b[2] & FlagExpired) != 0;
        uint dirty = BinaryPrimitives.ReadUInt32BigEndian(b[8..]), records = BinaryPrimitives.ReadUInt32BigEndian(b[12..]);
        if (b[0] == (byte)PowerFailPhase.Began && (expired || dirty != 0 || records != 0)) return DuetFrame.Fail(out error, WireError.NonZeroReserved);
        value = new PowerFailNotice((PowerFailPhase)b[0], (PowerFailScope)b[1], expired, BinaryPrimitives.ReadUInt32BigEndian(b[4..]), dirty, records);
        error = WireError.None;
        return true;
    }

    public void WriteBody(Span<byte> b)
    {
        Duet.Core.Invariant.Assert(Phase == PowerFailPhase.Done || (!WindowExpired && DirtyElements == 0 && LogRecords == 0));
        b[0] = (byte)Phase;
        b[1] = (byte)Scope;
        b[2] = WindowExpired ? FlagExpired : (byte)0;
        b[3] = 0;
        BinaryPrimitives.WriteUInt32BigEndian(b[4..], WindowMs);
        BinaryPrimitives.WriteUInt32BigEndian(b[8..], DirtyElements);
        BinaryPrimitives.WriteUInt32BigEndian(b[12..], LogRecords);
    }

    public static OperationStatus TryDecode(ReadOnlySpan<byte> source, out PowerFailNotice value, out int consumed, out WireError error) => DuetFrame.TryDecode<PowerFailNotice>(source, out value, out consumed, out error);
    public static OperationStatus TryDecode(ref SequenceReader<byte> reader, out PowerFailNotice value, out WireError error) => DuetFrame.TryDecode<PowerFailNotice>(ref reader, out value, out error);
    public int Encode(Span<byte> destination) => DuetFrame.Encode(this, destination);
}
