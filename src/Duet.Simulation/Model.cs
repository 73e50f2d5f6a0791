using System.Buffers.Binary;
using Duet.Core;

namespace Duet.Simulation;

/// <summary>
/// What the hosts know about one volume: for every sector ever written, the versions it may
/// hold. Every sector a write carries is stamped with the write's id and its own LBA (and a
/// pattern derived from both), so a read shows which write each sector came from.
///
/// The workload never has two writes to one sector in flight at once (as a file system would
/// not), so "the last acknowledged write" of a sector is well defined. A version is
/// acceptable to a read that ran from logical time s to e if it was issued by e and not
/// superseded before s; a write's acknowledgement supersedes every older version of its
/// sectors. A write that failed (an I/O error, a crash, a timeout) may or may not have landed,
/// and may still land later (a storage target may still hold it): it stays acceptable for
/// good. Never-written sectors read as zeros (version 0).
/// </summary>
public sealed class VolumeModel(string name, long sectors)
{
    struct Version
    {
        public ulong Id;
        public long Issued;
        public long Superseded; // long.MaxValue while current
        public bool Failed;
    }

    readonly Dictionary<long, List<Version>> _sectors = [];
    readonly List<(long Start, long End, ulong Id)> _inflightWrites = [];

    public string Name { get; } = name;
    public long Sectors { get; } = sectors;
    public bool Deleted { get; set; }

    public bool OverlapsWriteInFlight(long sector, long count)
    {
        foreach (var (s, e, _) in _inflightWrites)
            if (sector < e && s < sector + count) return true;
        return false;
    }

    public void WriteIssued(ulong id, long sector, long count, long now)
    {
        Invariant.Assert(!OverlapsWriteInFlight(sector, count), "the workload issued overlapping writes");
        _inflightWrites.Add((sector, sector + count, id));
        for (long s = sector; s < sector + count; s++)
        {
            if (!_sectors.TryGetValue(s, out var list)) _sectors[s] = list = [new Version { Id = 0, Issued = -1, Superseded = long.MaxValue }];
            list.Add(new Version { Id = id, Issued = now, Superseded = long.MaxValue });
        }
    }

    public void WriteDone(ulong id, long sector, long count, bool acknowledged, long now)
    {
        _inflightWrites.RemoveAll(w => w.Id == id);
        for (long s = sector; s < sector + count; s++)
        {
            var list = _sectors[s];
            for (int i = 0; i < list.Count; i++)
            {
                var v = list[i];
                if (v.Id == id) { v.Failed = !acknowledged; list[i] = v; }
                else if (acknowledged && !v.Failed && v.Superseded == long.MaxValue) { v.Superseded = now; list[i] = v; }
            }
            if (list.Count > 16) list.RemoveAll(v => !v.Failed && v.Superseded != long.MaxValue && v.Superseded < now - 100_000);
        }
    }

    /// <summary>Null if the sector's content is acceptable for a read that ran from <paramref name="start"/> to <paramref name="end"/>; else why not.</summary>
    public string? Check(long sector, ReadOnlySpan<byte> content, long start, long end)
    {
        var id = Content.IdOf(content, sector, out var problem);
        if (problem is not null) return $"{Name} sector {sector}: {problem}";
        if (!_sectors.TryGetValue(sector, out var list))
            return id == 0 ? null : $"{Name} sector {sector}: holds write {id}, but no write to it was ever issued";
        foreach (var v in list)
            if (v.Id == id) return v.Issued <= end && (v.Failed || v.Superseded > start) ? null
                : $"{Name} sector {sector}: holds write {id} (issued at {v.Issued}), superseded at {v.Superseded} before the read began at {start}; expected {Expected(list, start)}";
        return $"{Name} sector {sector}: holds write {id}, which is not among its versions; expected {Expected(list, start)}";
    }

    static string Expected(List<Version> list, long start) =>
        string.Join(" or ", list.Where(v => v.Failed || v.Superseded > start).Select(v => v.Failed ? $"{v.Id}?" : v.Id.ToString()));

    /// <summary>Sectors that hold data the hosts care about (for the final read-back).</summary>
    public IEnumerable<long> WrittenSectors => _sectors.Keys;
}

/// <summary>The stamp a simulated host writes into each 512-byte sector.</summary>
public static class Content
{
    public static void Fill(Span<byte> buffer, ulong id, long firstSector)
    {
        for (int i = 0; i * Units.SectorBytes < buffer.Length; i++)
        {
            var s = buffer.Slice(i * Units.SectorBytes, Units.SectorBytes);
            long sector = firstSector + i;
            ulong pattern = Pattern(id, sector);
            for (int o = 0; o < Units.SectorBytes; o += 8) BinaryPrimitives.WriteUInt64LittleEndian(s[o..], pattern + (ulong)o);
            BinaryPrimitives.WriteUInt64LittleEndian(s, id);
            BinaryPrimitives.WriteInt64LittleEndian(s[8..], sector);
        }
    }

    static ulong Pattern(ulong id, long sector)
    {
        ulong x = id * 0x9E3779B97F4A7C15UL ^ (ulong)sector * 0xC2B2AE3D27D4EB4FUL;
        return x ^ (x >> 29);
    }

    /// <summary>The write id a sector holds (0: zeros); a problem if it is torn, misplaced or corrupt.</summary>
    public static ulong IdOf(ReadOnlySpan<byte> s, long sector, out string? problem)
    {
        problem = null;
        ulong id = BinaryPrimitives.ReadUInt64LittleEndian(s);
        if (id == 0)
        {
            if (s.IndexOfAnyExcept((byte)0) >= 0) problem = "neither zeros nor a stamped sector (corrupt)";
            return 0;
        }
        long at = BinaryPrimitives.ReadInt64LittleEndian(s[8..]);
        if (at != sector)
        {
            problem = $"holds write {id}'s data for sector {at} (misplaced)";
            return id;
        }
        ulong pattern = Pattern(id, sector);
        for (int o = 16; o < Units.SectorBytes; o += 8)
            if (BinaryPrimitives.ReadUInt64LittleEndian(s[o..]) != pattern + (ulong)o)
            {
                problem = $"write {id}'s stamp is torn or corrupt at byte {o}";
                return id;
            }
        return id;
    }
}
