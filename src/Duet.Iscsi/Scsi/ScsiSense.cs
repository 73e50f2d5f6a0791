namespace Duet.Iscsi.Scsi;

/// <summary>SPC-4 sense keys.</summary>
public enum SenseKey : byte
{
    NoSense = 0x0,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

/// <summary>
/// One sense condition: key, additional sense code and qualifier, plus the optional INFORMATION
/// field (VALID bit) and sense-key-specific field pointer. Rendered as fixed-format sense (0x70).
/// </summary>
public readonly record struct SenseCondition(SenseKey Key, byte Asc, byte Ascq)
{
    /// <summary>INFORMATION field (LBA of a medium error, offset of a miscompare); negative = not valid.</summary>
    public long Information { get; init; } = -1;

    /// <summary>Field pointer byte for SKSV (negative = none); <see cref="PointerInCdb"/> tells CDB from parameter list.</summary>
    public int FieldPointer { get; init; } = -1;
    public int BitPointer { get; init; } = -1;
    public bool PointerInCdb { get; init; } = true;

    public const int FixedLength = 18;

    public byte[] ToFixed()
    {
        var s = new byte[FixedLength];
        WriteFixed(s);
        return s;
    }

    public void WriteFixed(Span<byte> s)
    {
        s[..FixedLength].Clear();
        s[0] = 0x70;
        s[2] = (byte)Key;
        if (Information >= 0)
        {
            s[0] |= 0x80;
            // Fixed format carries 32 bits; an LBA beyond that cannot be VALID.
            if (Information > uint.MaxValue) s[0] &= 0x7F;
            else System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(s[3..], (uint)Information);
        }
        s[7] = FixedLength - 8;
        s[12] = Asc;
        s[13] = Ascq;
        if (FieldPointer >= 0)
        {
            s[15] = (byte)(0x80 | (PointerInCdb ? 0x40 : 0) | (BitPointer >= 0 ? 0x08 | (BitPointer & 7) : 0));
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(s[16..], (ushort)FieldPointer);
        }
    }

    // The conditions the device server reports, by name.
    public static SenseCondition NoSenseData => new(SenseKey.NoSense, 0, 0);
    public static SenseCondition InvalidOpcode => new(SenseKey.IllegalRequest, 0x20, 0x00) { FieldPointer = 0, BitPointer = 7 };
    public static SenseCondition LbaOutOfRange => new(SenseKey.IllegalRequest, 0x21, 0x00);
    public static SenseCondition ParameterListLengthError => new(SenseKey.IllegalRequest, 0x1A, 0x00);
    public static SenseCondition LogicalUnitNotSupported => new(SenseKey.IllegalRequest, 0x25, 0x00);
    public static SenseCondition InvalidReleaseOfPr => new(SenseKey.IllegalRequest, 0x26, 0x04);
    public static SenseCondition InsufficientRegistrationResources => new(SenseKey.IllegalRequest, 0x55, 0x04);
    public static SenseCondition WriteProtected => new(SenseKey.DataProtect, 0x27, 0x00);
    public static SenseCondition Miscompare(long offset) => new(SenseKey.Miscompare, 0x1D, 0x00) { Information = offset };
    public static SenseCondition PowerOnReset => new(SenseKey.UnitAttention, 0x29, 0x00);
    public static SenseCondition ModeParametersChanged => new(SenseKey.UnitAttention, 0x2A, 0x01);
    public static SenseCondition ReservationsPreempted => new(SenseKey.UnitAttention, 0x2A, 0x03);
    public static SenseCondition ReservationsReleased => new(SenseKey.UnitAttention, 0x2A, 0x04);
    public static SenseCondition RegistrationsPreempted => new(SenseKey.UnitAttention, 0x2A, 0x05);
    public static SenseCondition AsymmetricAccessStateChanged => new(SenseKey.UnitAttention, 0x2A, 0x06);
    public static SenseCondition CapacityDataChanged => new(SenseKey.UnitAttention, 0x2A, 0x09);

    public static SenseCondition InvalidFieldInCdb(int bytePointer, int bit = -1) =>
        new(SenseKey.IllegalRequest, 0x24, 0x00) { FieldPointer = bytePointer, BitPointer = bit };

    public static SenseCondition InvalidFieldInParameterList(int bytePointer, int bit = -1) =>
        new(SenseKey.IllegalRequest, 0x26, 0x00) { FieldPointer = bytePointer, BitPointer = bit, PointerInCdb = false };
}

/// <summary>
/// A command ends in CHECK CONDITION (or another non-GOOD status). Thrown inside the device server's
/// command handlers and turned into a <see cref="ScsiResult"/> by <see cref="ScsiDevice.ExecuteAsync"/>:
/// only error paths throw, never the READ/WRITE success path.
/// </summary>
public sealed class ScsiCheckException(SenseCondition sense, ScsiStatus status = ScsiStatus.CheckCondition)
    : Exception($"{status} {sense.Key} {sense.Asc:X2}/{sense.Ascq:X2}")
{
    public SenseCondition Sense { get; } = sense;
    public ScsiStatus Status { get; } = status;

    public static ScsiCheckException Conflict() => new(default, ScsiStatus.ReservationConflict);
    public static ScsiCheckException InvalidField(int bytePointer, int bit = -1) => new(SenseCondition.InvalidFieldInCdb(bytePointer, bit));
    public static ScsiCheckException InvalidParameter(int bytePointer, int bit = -1) => new(SenseCondition.InvalidFieldInParameterList(bytePointer, bit));
}
