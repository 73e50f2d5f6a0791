using System.Diagnostics.Metrics;
using Duet.Cache;

namespace Duet.Host.Controller;

/// <summary>
/// The controller's cache and mirror as System.Diagnostics.Metrics instruments (Meter "Duet.Cache"),
/// tagged with the controller's name: mirrored writes by path, cache hits and misses, dirty elements,
/// destaged elements (the destage rate is its derivative), write-throughs and error-recovery mode.
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
        _meter.CreateObservableGauge("duet.mirror.error_recovery", () => new Measurement<int>(c.Mirror.Mode == MirrorMode.Healthy ? 0 : 1, tag),
            description: "1 while the peer is gone and writes go through to the drives");
    }

    public void Dispose() => _meter.Dispose();
}
