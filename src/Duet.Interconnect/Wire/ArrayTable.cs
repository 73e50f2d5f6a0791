using Duet.Core;

namespace Duet.Interconnect.Wire;

/// <summary>An array as the metadata mirror message names it: serial number and array number.</summary>
public readonly record struct ArrayKey(ulong ArraySerial, byte ArrayNumber);

/// <summary>One row of the array table: 8-bit volume number -> array.</summary>
public readonly record struct ArrayTableEntry(byte Volume, ulong ArraySerial, byte ArrayNumber)
{
    public ArrayKey Key => new(ArraySerial, ArrayNumber);
}

/// <summary>
/// MR-5: the array table maps (array serial, array number) to the 8-bit volume number the
/// small write message carries, so at most 256 arrays. It changes only when an array is
/// added or removed; every change bumps <see cref="Version"/>. The controller that changes
/// it sends an <see cref="ArrayTableUpdate"/> snapshot to its peer, which applies it when the
/// version is newer; until the peer's status for that update comes back, the sender treats
/// the peer as not initialised for MR-4 (large path), so a volume number is never sent to a
/// peer that might map it differently. Not thread-safe; pure state.
/// </summary>
public sealed class ArrayTable
{
    readonly ArrayKey?[] byVolume = new ArrayKey?[MirrorWire.ArrayTableEntriesMax];
    readonly Dictionary<ArrayKey, byte> byKey = [];

    public ulong Version { get; private set; }
    public int Count => byKey.Count;

    /// <summary>Adds the array under the lowest free volume number; false if present or the table is full.</summary>
    public bool TryAdd(ulong arraySerial, byte arrayNumber, out byte volume)
    {
        var key = new ArrayKey(arraySerial, arrayNumber);
        volume = 0;
        if (byKey.ContainsKey(key)) return false;
        for (int v = 0; v < byVolume.Length; v++)
        {
            if (byVolume[v] is not null) continue;
            volume = (byte)v;
            byVolume[v] = key;
            byKey.Add(key, volume);
            Version++;
            CheckInvariants();
            return true;
        }
        return false;
    }

    public bool Remove(ulong arraySerial, byte arrayNumber)
    {
        var key = new ArrayKey(arraySerial, arrayNumber);
        if (!byKey.Remove(key, out var volume)) return false;
        Invariant.Assert(byVolume[volume] == key);
        byVolume[volume] = null;
        Version++;
        CheckInvariants();
        return true;
    }

    public bool TryGetVolume(ulong arraySerial, byte arrayNumber, out byte volume) =>
        byKey.TryGetValue(new ArrayKey(arraySerial, arrayNumber), out volume);

    public bool TryGetArray(byte volume, out ArrayKey array)
    {
        var key = byVolume[volume];
        array = key ?? default;
        return key is not null;
    }

    public IReadOnlyList<ArrayTableEntry> Entries()
    {
        var entries = new List<ArrayTableEntry>(byKey.Count);
        for (int v = 0; v < byVolume.Length; v++)
            if (byVolume[v] is { } key) entries.Add(new ArrayTableEntry((byte)v, key.ArraySerial, key.ArrayNumber));
        return entries;
    }

    public ArrayTableUpdate Snapshot() => new(Version, Entries());

    /// <summary>
    /// Replaces the table with the peer's snapshot when it is newer than ours; returns false
    /// (and changes nothing) for a stale or repeated snapshot. The codec has already checked
    /// that volumes and arrays are unique.
    /// </summary>
    public bool Apply(ArrayTableUpdate update)
    {
        if (update.Version <= Version) return false;
        Array.Clear(byVolume);
        byKey.Clear();
        foreach (var e in update.Entries)
        {
            Invariant.Assert(byVolume[e.Volume] is null);
            byVolume[e.Volume] = e.Key;
            byKey.Add(e.Key, e.Volume);
        }
        Version = update.Version;
        CheckInvariants();
        return true;
    }

    void CheckInvariants()
    {
        int used = 0;
        foreach (var k in byVolume) if (k is not null) used++;
        Invariant.Assert(used == byKey.Count);
        Invariant.Assert(byKey.Count <= MirrorWire.ArrayTableEntriesMax);
    }
}
