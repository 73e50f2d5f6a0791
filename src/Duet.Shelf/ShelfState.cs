using System.Globalization;
using System.Text;

namespace Duet.Shelf;

/// <summary>
/// What the shelf keeps across its own restarts: per port whether it is enabled or fenced and its
/// registration key, the reservation holder, the epoch counter and every array claim, and which
/// slots are pulled. Heartbeat slots are not kept (controllers write them again every period).
///
/// Stored as a small text file, one fact per line, ending in a CRC32C of everything before it:
/// <code>
/// duet-shelf 1
/// port A enabled 1 fenced 0 key 0x1a2b mirror-stale 0 log-stale 0
/// port B enabled 0 fenced 1 key 0x0 mirror-stale 1 log-stale 1
/// reservation 0x1a2b
/// epoch 7
/// claim 0x0123456789abcdef A 7
/// pulled d3
/// crc32c 0x89abcdef
/// </code>
/// </summary>
public sealed class ShelfState
{
    public sealed class Port
    {
        public bool Enabled = true;
        public bool Fenced;
        public ulong Key;
        public bool MirrorStale;
        public bool LogStale;
    }

    public readonly SortedDictionary<string, Port> Ports = new(StringComparer.Ordinal) { ["A"] = new(), ["B"] = new() };
    public ulong ReservationHolder;
    public ulong EpochCounter;
    public ulong Boots;
    public readonly SortedDictionary<ulong, ArrayClaim> Claims = [];
    public readonly SortedSet<string> Pulled = new(StringComparer.Ordinal);

    const string Magic = "duet-shelf 1";

    public string Encode()
    {
        var sb = new StringBuilder();
        sb.Append(Magic).Append('\n');
        foreach (var (name, p) in Ports)
            sb.Append(CultureInfo.InvariantCulture, $"port {name} enabled {(p.Enabled ? 1 : 0)} fenced {(p.Fenced ? 1 : 0)} key 0x{p.Key:x} mirror-stale {(p.MirrorStale ? 1 : 0)} log-stale {(p.LogStale ? 1 : 0)}\n");
        sb.Append(CultureInfo.InvariantCulture, $"reservation 0x{ReservationHolder:x}\n");
        sb.Append(CultureInfo.InvariantCulture, $"epoch {EpochCounter}\n");
        sb.Append(CultureInfo.InvariantCulture, $"boots {Boots}\n");
        foreach (var c in Claims.Values) sb.Append(CultureInfo.InvariantCulture, $"claim 0x{c.Serial:x16} {c.Owner} {c.Epoch}\n");
        foreach (var s in Pulled) sb.Append(CultureInfo.InvariantCulture, $"pulled {s}\n");
        var body = sb.ToString();
        return body + string.Create(CultureInfo.InvariantCulture, $"crc32c 0x{Duet.Core.Crc32C.Compute(Encoding.UTF8.GetBytes(body)):x8}\n");
    }

    /// <summary>Parses <see cref="Encode"/>'s text. FormatException, with the line, if it is not that.</summary>
    public static ShelfState Decode(string text)
    {
        int crcAt = text.LastIndexOf("crc32c ", StringComparison.Ordinal);
        if (!text.StartsWith(Magic + "\n", StringComparison.Ordinal) || crcAt < 0) throw new FormatException("not a Duet shelf state file");
        var body = text[..crcAt];
        var crcText = text[(crcAt + 7)..].Trim();
        if (!crcText.StartsWith("0x", StringComparison.Ordinal) || !uint.TryParse(crcText[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var crc)
            || crc != Duet.Core.Crc32C.Compute(Encoding.UTF8.GetBytes(body)))
            throw new FormatException("the shelf state file's checksum does not match its contents");
        var s = new ShelfState();
        foreach (var line in body.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1))
        {
            var f = line.Split(' ');
            try
            {
                switch (f[0])
                {
                    case "port" when f.Length is 8 or 10 or 12:
                        s.Ports[ShelfPorts.Check(f[1])] = new Port
                        {
                            Enabled = f[3] == "1", Fenced = f[5] == "1", Key = Hex(f[7]),
                            MirrorStale = f.Length >= 10 && f[9] == "1", LogStale = f.Length == 12 && f[11] == "1",
                        };
                        break;
                    case "reservation" when f.Length == 2: s.ReservationHolder = Hex(f[1]); break;
                    case "epoch" when f.Length == 2: s.EpochCounter = ulong.Parse(f[1], CultureInfo.InvariantCulture); break;
                    case "boots" when f.Length == 2: s.Boots = ulong.Parse(f[1], CultureInfo.InvariantCulture); break;
                    case "claim" when f.Length == 4:
                        var serial = Hex(f[1]);
                        s.Claims[serial] = new ArrayClaim(serial, ShelfPorts.Check(f[2]), ulong.Parse(f[3], CultureInfo.InvariantCulture));
                        break;
                    case "pulled" when f.Length == 2: s.Pulled.Add(f[1]); break;
                    default: throw new FormatException($"unknown line '{line}' in the shelf state file");
                }
            }
            catch (Exception e) when (e is OverflowException or ShelfException) { throw new FormatException($"bad line '{line}' in the shelf state file: {e.Message}"); }
        }
        return s;
    }

    static ulong Hex(string s) => s.StartsWith("0x", StringComparison.Ordinal)
        ? ulong.Parse(s.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture)
        : throw new FormatException($"'{s}' is not a 0x number");
}

/// <summary>Where the shelf keeps its <see cref="ShelfState"/>.</summary>
public interface IShelfStateStore
{
    /// <summary>The stored text, or null if nothing was ever stored.</summary>
    string? Load();
    /// <summary>Stores the text durably before returning.</summary>
    void Save(string text);
}

/// <summary>The state in memory (the simulator's shelf; survives a simulated shelf restart because the store object does).</summary>
public sealed class MemoryShelfStateStore : IShelfStateStore
{
    string? _text;
    public int Saves { get; private set; }
    public string? Load() => Volatile.Read(ref _text);
    public void Save(string text) { Volatile.Write(ref _text, text); Saves++; }
}

/// <summary>The state in a file: written to NAME.tmp, fsynced, renamed over NAME, directory fsynced.</summary>
public sealed class FileShelfStateStore(string path) : IShelfStateStore
{
    public string Path { get; } = System.IO.Path.GetFullPath(path);

    public string? Load() => File.Exists(Path) ? File.ReadAllText(Path) : null;

    public void Save(string text)
    {
        var tmp = Path + ".tmp";
        using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            f.Write(Encoding.UTF8.GetBytes(text));
            f.Flush(flushToDisk: true);
        }
        File.Move(tmp, Path, overwrite: true);
    }
}
