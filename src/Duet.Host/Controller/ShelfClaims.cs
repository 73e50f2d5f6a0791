using Duet.Raid;
using Duet.Raid.Management;
using Duet.Shelf;

namespace Duet.Host.Controller;

/// <summary>
/// What this controller last heard from the shelf about who owns which array (FO-7). The superblock
/// says who an array belongs to; the shelf's claim says who may serve it now: an array handed over
/// is served by its new owner only once the old one has named it owner at the shelf (the last step
/// of a move), and the array manager assembles an array as this controller's only if no claim
/// names the other controller (<see cref="MayServe"/>). Updated from every heartbeat, claim and
/// status answer; thread-safe.
/// </summary>
public sealed class ShelfClaims(string controller)
{
    readonly Lock _lock = new();
    Dictionary<ulong, ArrayClaim> _claims = [];

    public string Controller { get; } = controller;

    /// <summary>The shelf's whole table (a status or heartbeat answer).</summary>
    public void Replace(IEnumerable<ArrayClaim> claims)
    {
        var next = claims.ToDictionary(c => c.Serial);
        lock (_lock) _claims = next;
    }

    /// <summary>Claims the shelf just made (a claim answer).</summary>
    public void Merge(IEnumerable<ArrayClaim> claims)
    {
        lock (_lock)
            foreach (var c in claims)
                if (!_claims.TryGetValue(c.Serial, out var old) || old.Epoch <= c.Epoch) _claims[c.Serial] = c;
    }

    public ArrayClaim? Of(ulong serial)
    {
        lock (_lock) return _claims.GetValueOrDefault(serial);
    }

    public IReadOnlyList<ArrayClaim> All
    {
        get { lock (_lock) return [.. _claims.Values]; }
    }

    /// <summary>For <see cref="ArrayManagerOptions.MayServe"/>: an array no claim gives to the other controller.</summary>
    public bool MayServe(Superblock sb) => Of(ArrayManager.SerialOf(sb.ArrayUuid)) is not { } c || c.Owner == Controller;
}
