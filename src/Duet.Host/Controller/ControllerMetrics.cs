using System.Diagnostics.Metrics;
using Duet.Cache;

namespace Duet.Host.Controller;

/// <summary>
/// The controller's cache and mirror as System.Diagnostics.Metrics instruments (Meter "Duet.Cache"),
/// tagged with the controller's name: mirrored writes by path, cache hits and misses, dirty elements,
/// destaged elements (the destage rate is its derivative), write-throughs and error-recovery mode;
/// and, per array it serves, the AW-5 bad-block list: blocks listed now, listed and cleared since the
/// array was assembled here, and unrecoverable blocks a full list refused.
/// The link's own counters are the Meter "Duet.Interconnect".
/// </summary>
public sealed class ControllerMetrics : IDisposable
{
    public const string MeterName = "Duet.Cache";
    readonly Meter _meter;

    public ControllerMetrics(Controller c)
    {
        _meter = new Meter(MeterName);
        var tag = new KeyValuePair<string, object?>("controller", c.Name);
        _meter.CreateObservableCounter("duet.cache.hits", () => new Measurement<long>(c.Cache.Counters.Hits, tag));
        _meter.CreateObservableCounter("duet.cache.misses", () => new Measurement<long>(c.Cache.Counters.Misses, tag));
        _meter.CreateObservableGauge("duet.cache.dirty_elements", () => new Measurement<int>(c.Cache.DirtyCount, tag));
        _meter.CreateObservableCounter("duet.cache.destaged_elements", () => new Measurement<long>(c.Cache.Counters.DestagedElements, tag));
        _meter.CreateObservableCounter("duet.cache.write_throughs", () => new Measurement<long>(c.Cache.Counters.WriteThroughs, tag));
        _meter.CreateObservableCounter("duet.cache.evictions", () => new Measurement<long>(c.Cache.Counters.Evictions, tag));
        _meter.CreateObservableCounter("duet.mirror.writes", () =>
        {
            var m = c.Mirror.Counters;
            return new[]
            {
                new Measurement<long>(m.Batches, tag, new("path", "batched")),
                new Measurement<long>(m.SmallWrites, tag, new("path", "small")),
                new Measurement<long>(m.LargeWrites, tag, new("path", "large")),
            };
        }, description: "Mirror operations by path: coherency batches, MR-3 small writes, MR-2 large writes");
        IEnumerable<Measurement<long>> PerArray(Func<Duet.Raid.RaidArray, long> value) =>
            c.Arrays.ServedArrays.Select(a => new Measurement<long>(value(a), tag, new("array", a.Name))).ToList();
        _meter.CreateObservableGauge("duet.raid.bad_blocks", () => PerArray(a => a.BadBlocks.Count),
            description: "Blocks on the array's bad-block list (AW-5): reads of them fail until a host writes them again");
        _meter.CreateObservableCounter("duet.raid.bad_blocks_listed", () => PerArray(a => a.BadBlocksListed));
        _meter.CreateObservableCounter("duet.raid.bad_blocks_cleared", () => PerArray(a => a.BadBlocksCleared));
        _meter.CreateObservableCounter("duet.raid.bad_blocks_refused", () => PerArray(a => a.BadBlocksRefused),
            description: "Unrecoverable blocks the full bad-block list could not take");
        _meter.CreateObservableCounter("duet.invariant.violations", () => new Measurement<long>(Duet.Core.Invariant.Violations, tag),
            description: "Assertions on Duet's own state that failed in this process, caught or not (log event 7080)");
        _meter.CreateObservableGauge("duet.mirror.error_recovery", () => new Measurement<int>(c.Mirror.Mode == MirrorMode.Healthy ? 0 : 1, tag),
            description: "1 while the peer is gone and writes go through to the drives");
    }

    /// <summary>This controller's meter (a listener can tell its instruments from another controller's in the same process).</summary>
    public Meter Meter => _meter;

    public void Dispose() => _meter.Dispose();
}
