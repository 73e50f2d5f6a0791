namespace Duet.Cache.Mirror;

/// <summary>
/// Write-back with no peer: writes are acknowledged from this controller's NVRAM alone. Not safe
/// (a controller that dies takes its dirty data with it until it comes back); it exists to measure
/// what the mirror costs (`duet controller --mirror none`, `duet bench mirror`).
/// </summary>
public sealed class NoMirror : ICacheMirror
{
    public MirrorMode Mode => MirrorMode.Healthy;
    public Task AppendGroup(IReadOnlyList<MirrorChange> changes) => Task.CompletedTask;
    public bool CarriesGaps => true; // nothing travels
}
