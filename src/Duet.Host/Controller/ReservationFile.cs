using System.Buffers;
using System.Buffers.Binary;
using Duet.Core;
using Duet.Interconnect.Wire;

namespace Duet.Host.Controller;

/// <summary>Where a controller keeps the persistent-reservation state that must survive its power loss
/// (APTPL): the bytes of a <see cref="ReservationFile"/>. The controller core only calls it; the shell
/// supplies a file (<see cref="FileReservationPersistence"/>), tests a byte array.</summary>
public interface IReservationPersistence
{
    /// <summary>The last contents written, or null if there are none.</summary>
    byte[]? Read();
    /// <summary>Replaces the contents; returns once they would survive a power loss.</summary>
    void Write(byte[] contents);
}

/// <summary>
/// The APTPL state of a controller (SPC-4 5.12.4: with APTPL set, registrations and the reservation
/// survive a power loss), kept next to its NVRAM. Layout, big-endian: 0-7 magic "DUETPR01"; 8-11 count n;
/// 12-15 zero; then n <see cref="ReservationStateMessage"/>s, each with its Duet header (which carries its
/// length); then CRC32C of everything before it (4 bytes). A file that fails any check is not used.
/// </summary>
public static class ReservationFile
{
    static ReadOnlySpan<byte> Magic => "DUETPR01"u8;
    const int HeadBytes = 16;

    public static byte[] Encode(IReadOnlyList<ReservationStateMessage> states)
    {
        int length = HeadBytes + 4;
        foreach (var m in states) length += DuetFrame.EncodedBytes(m);
        var bytes = new byte[length];
        Magic.CopyTo(bytes);
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(8), (uint)states.Count);
        int at = HeadBytes;
        foreach (var m in states) at += m.Encode(bytes.AsSpan(at));
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(at), Crc32C.Compute(bytes.AsSpan(0, at)));
        return bytes;
    }

    public static bool TryDecode(ReadOnlySpan<byte> bytes, out List<ReservationStateMessage> states, out string why)
    {
        states = [];
        if (bytes.Length < HeadBytes + 4 || !bytes[..8].SequenceEqual(Magic)) return Fail("not a reservation file", out why);
        int end = bytes.Length - 4;
        if (Crc32C.Compute(bytes[..end]) != BinaryPrimitives.ReadUInt32BigEndian(bytes[end..])) return Fail("CRC32C mismatch", out why);
        if (BinaryPrimitives.ReadUInt32BigEndian(bytes[12..]) != 0) return Fail("reserved bytes set", out why);
        uint count = BinaryPrimitives.ReadUInt32BigEndian(bytes[8..]);
        int at = HeadBytes;
        for (uint i = 0; i < count; i++)
        {
            var status = ReservationStateMessage.TryDecode(bytes[at..end], out var m, out int consumed, out var error);
            if (status != OperationStatus.Done) return Fail($"state {i}: {(status == OperationStatus.NeedMoreData ? "truncated" : error.ToString())}", out why);
            states.Add(m!);
            at += consumed;
        }
        if (at != end) return Fail("bytes after the last state", out why);
        why = "";
        return true;
    }

    static bool Fail(string reason, out string why)
    {
        why = reason;
        return false;
    }
}

/// <summary>The APTPL state in a file (DATA/pr-NAME.bin, next to the NVRAM file): written to a temporary
/// file, flushed to the disk, renamed over the old one.</summary>
public sealed class FileReservationPersistence(string path) : IReservationPersistence
{
    public string Path { get; } = path;

    public byte[]? Read() => File.Exists(Path) ? File.ReadAllBytes(Path) : null;

    public void Write(byte[] contents)
    {
        var tmp = Path + ".tmp";
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            f.Write(contents);
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, Path, overwrite: true);
    }
}
