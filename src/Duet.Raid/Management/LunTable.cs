namespace Duet.Raid.Management;

/// <summary>
/// Which iSCSI LUN each volume has, over every array both controllers know (served here or by the peer).
///
/// A volume's LUN is chosen when it is created and stored in its array's superblock (one byte per volume
/// slot, <see cref="Superblock"/>), so it never changes while the volume exists: creating or deleting other
/// volumes, a move or a takeover leave it alone, and both controllers read the same superblocks, so both
/// targets give a volume the same LUN (ALUA multipath across A and B relies on it). This table is what both
/// make of those stored LUNs, by the same rule on both controllers:
///
///   1. every stored LUN is the volume's, unless two volumes store the same one (two controllers created
///      volumes at the same moment, each before it heard of the other's): the volume with the lower volume
///      UUID keeps it, the other is treated as having none (and carries a warning);
///   2. volumes without a LUN (superblocks written before LUNs were stored, and the losers of 1), in volume
///      name order (ordinal; then UUID), each take the lowest LUN no volume holds. For a pair whose
///      superblocks hold no LUN at all this gives LUN i to the i-th volume by name: the mapping the target
///      used before LUNs were stored, so an upgrade renumbers nothing.
///
/// The array manager stores what 2 chose for the arrays it serves (its next superblock write; it writes at
/// once after assembly or a rescan that found one), after which rule 1 alone gives the same answer.
/// LUNs are 0..<see cref="Superblock.MaxLun"/>; a volume left without one (all 255 taken) is not served over
/// iSCSI and carries a warning. Pure: the same superblocks in any order give the same table.
/// </summary>
public sealed class LunTable
{
    /// <summary>One volume: where it lives, the LUN its superblock stores (null: none), the LUN it has (null:
    /// none free), and why they differ when that is worth an operator's attention.</summary>
    public sealed record Entry(string Volume, string Array, Guid ArrayUuid, Guid VolumeUuid, int? Stored, int? Lun, string? Warning);

    public static readonly LunTable Empty = new([]);

    readonly Dictionary<(Guid Array, Guid Volume), Entry> _byVolume = [];
    readonly Entry?[] _byLun = new Entry?[Superblock.MaxLun + 1];

    LunTable(List<Entry> entries)
    {
        Entries = entries;
        foreach (var e in entries)
        {
            _byVolume[(e.ArrayUuid, e.VolumeUuid)] = e;
            if (e.Lun is not { } lun) continue;
            Duet.Core.Invariant.Assert(lun is >= 0 and <= Superblock.MaxLun);
            Duet.Core.Invariant.Assert(_byLun[lun] is null); // one volume per LUN
            _byLun[lun] = e;
        }
    }

    /// <summary>Every volume, by name.</summary>
    public IReadOnlyList<Entry> Entries { get; }

    public Entry? Of(Guid arrayUuid, Guid volumeUuid) => _byVolume.GetValueOrDefault((arrayUuid, volumeUuid));

    /// <summary>The volume that has <paramref name="lun"/>, if any.</summary>
    public Entry? Holder(int lun) => lun is >= 0 and <= Superblock.MaxLun ? _byLun[lun] : null;

    /// <summary>The lowest LUN no volume has; null when all are taken.</summary>
    public int? LowestFree()
    {
        for (int lun = 0; lun <= Superblock.MaxLun; lun++)
            if (_byLun[lun] is null) return lun;
        return null;
    }

    /// <summary>The table of every volume of <paramref name="arrays"/> (each array's newest superblock).</summary>
    public static LunTable Resolve(IEnumerable<Superblock> arrays)
    {
        // One entry per (array, volume) UUID pair: a copy of a volume in a damaged table is listed once.
        var all = arrays.SelectMany(a => a.Volumes.Select(v => (a.Name, a.ArrayUuid, Volume: v)))
            .OrderBy(x => x.ArrayUuid).ThenBy(x => x.Volume.Uuid).ThenBy(x => x.Volume.Name, StringComparer.Ordinal)
            .DistinctBy(x => (x.ArrayUuid, x.Volume.Uuid)).ToList();
        var taken = new (string Array, VolumeEntry Volume)?[Superblock.MaxLun + 1];
        var lunOf = new Dictionary<(Guid, Guid), int>();
        var lostTo = new Dictionary<(Guid, Guid), (int Lun, string Volume, string Array)>();

        // 1. Stored LUNs; a LUN stored twice goes to the lower volume UUID (then array UUID: never equal in practice).
        foreach (var group in all.Where(x => x.Volume.Lun is >= 0 and <= Superblock.MaxLun).GroupBy(x => x.Volume.Lun!.Value))
        {
            var ordered = group.OrderBy(x => x.Volume.Uuid).ThenBy(x => x.ArrayUuid).ToList();
            var winner = ordered[0];
            lunOf[(winner.ArrayUuid, winner.Volume.Uuid)] = group.Key;
            taken[group.Key] = (winner.Name, winner.Volume);
            foreach (var loser in ordered.Skip(1)) lostTo[(loser.ArrayUuid, loser.Volume.Uuid)] = (group.Key, winner.Volume.Name, winner.Name);
        }

        // 2. The rest, by volume name, take the lowest free LUN.
        int next = 0;
        foreach (var x in all.Where(x => !lunOf.ContainsKey((x.ArrayUuid, x.Volume.Uuid)))
                     .OrderBy(x => x.Volume.Name, StringComparer.Ordinal).ThenBy(x => x.Volume.Uuid).ThenBy(x => x.ArrayUuid))
        {
            while (next <= Superblock.MaxLun && taken[next] is not null) next++;
            if (next > Superblock.MaxLun) break;
            lunOf[(x.ArrayUuid, x.Volume.Uuid)] = next;
            taken[next] = (x.Name, x.Volume);
        }

        var entries = new List<Entry>(all.Count);
        foreach (var (array, arrayUuid, v) in all.OrderBy(x => x.Volume.Name, StringComparer.Ordinal).ThenBy(x => x.Volume.Uuid))
        {
            int? lun = lunOf.TryGetValue((arrayUuid, v.Uuid), out var l) ? l : null;
            string? warning = null;
            if (lostTo.TryGetValue((arrayUuid, v.Uuid), out var lost))
                warning = $"LUN {lost.Lun} is also stored for volume '{lost.Volume}' (array {lost.Array}), which keeps it (lower volume UUID); " +
                          (lun is { } moved ? $"this volume now has LUN {moved}" : "no other LUN is free: not served over iSCSI");
            else if (lun is null)
                warning = $"no LUN is free (0..{Superblock.MaxLun} are all in use): not served over iSCSI";
            entries.Add(new Entry(v.Name, array, arrayUuid, v.Uuid, v.Lun, lun, warning));
        }
        return new LunTable(entries);
    }
}
