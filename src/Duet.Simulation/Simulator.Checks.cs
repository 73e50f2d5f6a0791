using Duet.Cache;
using Duet.Cache.Nvram;
using Duet.Core;

namespace Duet.Simulation;

public sealed partial class Simulator
{
    const int ElementSectors = NvramLayout.ElementSectors;

    /// <summary>
    /// SPEC: "No write is acknowledged to a host before the peer's status for it (or for its
    /// batch) has come back, unless the pair is in error-recovery mode." Checked at the moment
    /// the controller acknowledges: every sector of the write that the owner holds dirty in its
    /// region 1 must already be in the peer's region 2, at the same element, with the same data.
    /// </summary>
    void CheckMirroredBeforeAck(string volume, long sector, long count, ulong id)
    {
        var owner = _sides.FirstOrDefault(s => s.IsUp && s.Controller!.Arrays.TryGetServedVolume(volume, out _));
        if (owner is null) return;
        var c = owner.Controller!;
        if (c.Mirror.Mode != MirrorMode.Healthy) return;
        if (!c.Arrays.TryGetServedVolume(volume, out var rv)) return;
        var peerNvram = Other(owner).Nvram;
        if (peerNvram is null) return;
        byte number = c.Arrays.NumberOf(rv.Array);
        long first = rv.OffsetBlocks * Units.SectorsPerBlock + sector;
        for (long s = first; s < first + count;)
        {
            long elementLba = s / ElementSectors * ElementSectors;
            long end = Math.Min(first + count, elementLba + ElementSectors);
            int e = c.Cache.ElementOf(number, elementLba);
            if (e >= 0 && c.Nvram.Own.TryRead(e, out var mine) && mine.Dirty)
            {
                bool peerHas = peerNvram.Peer.TryRead(e, out var theirs) && theirs.ArrayNumber == mine.ArrayNumber && theirs.ArrayLba == mine.ArrayLba;
                for (long x = s; x < end; x++)
                {
                    int i = (int)(x - elementLba);
                    if (!mine.IsSectorValid(i)) continue;
                    var data = c.Nvram.Own.Data(e).Slice(i * SectorBytes, SectorBytes);
                    if (Content.IdOf(data, x - first + sector, out _) != id) continue; // already replaced by a newer element
                    bool held = peerHas && theirs.IsSectorValid(i) && peerNvram.Peer.Data(e).Slice(i * SectorBytes, SectorBytes).SequenceEqual(data);
                    // A later write to other sectors of the same element may already have copied
                    // these sectors into a newer element (not yet mirrored) while the peer still
                    // holds the element this write was mirrored in: look for them anywhere there.
                    if (!held) held = PeerHoldsSector(peerNvram.Peer, mine.ArrayNumber, mine.ArrayLba, i, data);
                    if (!held)
                    {
                        Fail($"write {id} to {volume} sector {x - first + sector} was acknowledged by {owner.Name} before the peer held it " +
                             $"(element {e}, dirty in {owner.Name}'s region 1 as array {mine.ArrayNumber} LBA {mine.ArrayLba} seq {mine.Sequence}; in {Other(owner).Name}'s region 2: " +
                             $"{(peerNvram.Peer.TryRead(e, out var t) ? $"array {t.ArrayNumber} LBA {t.ArrayLba} seq {t.Sequence} mask {t.ValidMask:x8}" : peerNvram.Peer.StateOf(e).ToString())}; mirror healthy)");
                        return;
                    }
                }
            }
            s = end;
        }
    }

    static bool PeerHoldsSector(NvramRegion region, byte array, long elementLba, int sector, ReadOnlySpan<byte> data)
    {
        for (int e = 0; e < region.ElementCount; e++)
            if (region.TryRead(e, out var d) && d.ArrayNumber == array && d.ArrayLba == elementLba && d.IsSectorValid(sector)
                && region.Data(e).Slice(sector * SectorBytes, SectorBytes).SequenceEqual(data))
                return true;
        return false;
    }

    /// <summary>Never two owners: no array is served by both live controllers.</summary>
    void CheckOwners()
    {
        if (!_sides[0].IsUp || !_sides[1].IsUp) return;
        // A hung controller, or one without a lease, serves nothing whatever its view says (FO-7); one still taking
        // the peer's arrays over holds their requests until it is done.
        if (_sides.Any(s => s.Node.IsPaused || !s.Controller!.HoldsLease || s.Controller.IsAdoptingPeerArrays)) return;
        foreach (var a in _sides[0].Controller!.Arrays.ServedArrays)
            if (_sides[1].Controller!.Arrays.Serves(a.Name)) Fail($"array {a.Name} is served by both controllers");
    }

    /// <summary>
    /// SPEC, "Invariants the mirror must keep", with the link quiet: for each element e of the
    /// owner, the peer's e is invalid or equal to it; every dirty element of the owner is valid
    /// at the peer; no array LBA is valid in two of the owner's elements.
    /// </summary>
    void CheckMirrorInvariant(Side owner)
    {
        var mine = owner.Controller!.Nvram.Own.ReplayOrder(out var skippedMine);
        var peer = Other(owner).Controller!.Nvram.Peer.ReplayOrder(out var skippedPeer);
        foreach (var s in skippedMine) Fail($"mirror invariant: {owner.Name}'s region 1 element {s.Element} is damaged: {s.Reason}");
        foreach (var s in skippedPeer) Fail($"mirror invariant: {Other(owner).Name}'s region 2 element {s.Element} is damaged: {s.Reason}");
        var byElement = mine.ToDictionary(x => x.Element, x => x.Descriptor);
        var seen = new HashSet<(byte, long)>();
        foreach (var (e, d) in mine)
            if (!seen.Add((d.ArrayNumber, d.ArrayLba))) Fail($"mirror invariant: array {d.ArrayNumber} LBA {d.ArrayLba} is valid in two of {owner.Name}'s elements");
        var peerElements = new HashSet<int>();
        foreach (var (e, d) in peer)
        {
            peerElements.Add(e);
            if (!byElement.TryGetValue(e, out var o))
            {
                Fail($"mirror invariant: {Other(owner).Name}'s region 2 holds element {e} (array {d.ArrayNumber} LBA {d.ArrayLba}) that {owner.Name} does not");
                continue;
            }
            if ((o.ArraySerial, o.ArrayNumber, o.ArrayLba, o.ValidMask) != (d.ArraySerial, d.ArrayNumber, d.ArrayLba, d.ValidMask))
            {
                Fail($"mirror invariant: element {e} differs: {owner.Name} has array {o.ArrayNumber} LBA {o.ArrayLba} mask {o.ValidMask:x8}, its peer array {d.ArrayNumber} LBA {d.ArrayLba} mask {d.ValidMask:x8}");
                continue;
            }
            for (int s = 0; s < ElementSectors; s++)
                if (d.IsSectorValid(s) && !owner.Controller.Nvram.Own.Data(e).Slice(s * SectorBytes, SectorBytes)
                        .SequenceEqual(Other(owner).Controller!.Nvram.Peer.Data(e).Slice(s * SectorBytes, SectorBytes)))
                {
                    Fail($"mirror invariant: element {e} sector {s} holds different data at {owner.Name} and its peer");
                    break;
                }
        }
        foreach (var (e, d) in mine)
            if (d.Dirty && !peerElements.Contains(e)) Fail($"mirror invariant: {owner.Name}'s dirty element {e} (array {d.ArrayNumber} LBA {d.ArrayLba}) is not valid at its peer");
    }
}
