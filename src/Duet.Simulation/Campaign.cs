namespace Duet.Simulation;

/// <summary>Runs many seeds (on a few threads, each simulation single-threaded) and collects the failures.</summary>
public static class Campaign
{
    public sealed record Summary(int Seeds, IReadOnlyList<SimResult> Failed, TimeSpan VirtualTime, long Steps, long Writes, long Crashes, long Takeovers = 0, long Hangs = 0, long PowerCuts = 0, long BlocksRolledBack = 0,
        long PartialParityRows = 0, long UnguardedRows = 0, long FailBacks = 0)
    {
        /// <summary>Host-protocol hosts (--faults multicast): commands, attempts sent again, time limits reached, the
        /// longest wait of an attempt both controllers held, the longest command, attempts not judged (double faults).</summary>
        public long HostCommands { get; init; }
        public long HostResends { get; init; }
        public long HostLimitsReached { get; init; }
        public TimeSpan HostStallMax { get; init; }
        public TimeSpan HostCommandMax { get; init; }
        public long HostStallsExempt { get; init; }
    }

    /// <summary>Seeds <paramref name="first"/> .. first + count - 1; <paramref name="onResult"/> sees each result (on a worker thread, serialised).</summary>
    public static Summary Run(ulong first, int count, SimOptions options, int threads, Action<SimResult>? onResult = null)
    {
        var failed = new List<SimResult>();
        var gate = new Lock();
        long failBacks = 0;
        long hostCommands = 0, hostResends = 0, hostLimits = 0, hostExempt = 0;
        TimeSpan hostStallMax = TimeSpan.Zero, hostCommandMax = TimeSpan.Zero;
        long next = 0, steps = 0, writes = 0, crashes = 0, takeovers = 0, hangs = 0, powerCuts = 0, rolledBack = 0, ppRows = 0, unguarded = 0;
        var virtualTime = TimeSpan.Zero;
        var workers = new Thread[Math.Max(1, threads)];
        for (int t = 0; t < workers.Length; t++)
        {
            workers[t] = new Thread(() =>
            {
                while (true)
                {
                    long i = Interlocked.Increment(ref next) - 1;
                    if (i >= count) return;
                    var r = Simulator.Run(first + (ulong)i, options);
                    lock (gate)
                    {
                        if (!r.Passed) failed.Add(r);
                        steps += r.Stats.Steps;
                        writes += r.Stats.Writes;
                        crashes += r.Stats.Crashes;
                        takeovers += r.Stats.Takeovers;
                        failBacks += r.Stats.FailBacks;
                        hangs += r.Stats.Hangs;
                        powerCuts += r.Stats.PowerCuts;
                        rolledBack += r.Stats.BlocksRolledBack;
                        ppRows += r.Stats.PartialParityRows;
                        unguarded += r.Stats.UnguardedRows;
                        virtualTime += r.Stats.VirtualTime;
                        hostCommands += r.Stats.HostCommands;
                        hostResends += r.Stats.HostResends;
                        hostLimits += r.Stats.HostLimitsReached;
                        hostExempt += r.Stats.HostStallsExempt;
                        if (r.Stats.HostStallMax > hostStallMax) hostStallMax = r.Stats.HostStallMax;
                        if (r.Stats.HostCommandMax > hostCommandMax) hostCommandMax = r.Stats.HostCommandMax;
                        onResult?.Invoke(r);
                    }
                }
            }, 16 << 20) { IsBackground = true, Name = $"sim-{t}" };
            workers[t].Start();
        }
        foreach (var w in workers) w.Join();
        failed.Sort((a, b) => a.Seed.CompareTo(b.Seed));
        return new Summary(count, failed, virtualTime, steps, writes, crashes, takeovers, hangs, powerCuts, rolledBack, ppRows, unguarded, failBacks)
        {
            HostCommands = hostCommands, HostResends = hostResends, HostLimitsReached = hostLimits, HostStallMax = hostStallMax,
            HostCommandMax = hostCommandMax, HostStallsExempt = hostExempt,
        };
    }
}
