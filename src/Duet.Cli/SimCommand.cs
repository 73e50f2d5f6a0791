using System.CommandLine;
using Duet.Simulation;

namespace Duet.Cli;

// `duet sim`: the deterministic simulator (docs/internals/simulator.md). A line per failing
// seed (with the seed that replays it), then `seeds N failures K` as the last line.
public static partial class Program
{
    static Command SimCommand()
    {
        var seeds = new Option<int>("--seeds") { Description = "How many seeds to run (from --from on)", DefaultValueFactory = _ => 100 };
        var from = new Option<ulong>("--from") { Description = "The first seed of the campaign", DefaultValueFactory = _ => 1 };
        var seed = new Option<ulong?>("--seed") { Description = "Run this one seed only (replays it exactly)" };
        var faults = new Option<string>("--faults") { Description = $"Faults the seeds may draw: a comma list of {string.Join(", ", FaultPlan.Names)}, or all, or none", DefaultValueFactory = _ => "all" };
        var exact = new Option<bool>("--exact") { Description = "Turn every fault of --faults on, instead of drawing a subset per seed" };
        var ops = new Option<int>("--ops") { Description = "Host operations per seed (at most 2000)", DefaultValueFactory = _ => 1000 };
        var trace = new Option<bool>("--trace") { Description = "With --seed: print the event trace" };
        var threads = new Option<int>("--threads") { Description = "Seeds run in parallel (each simulation is single-threaded)", DefaultValueFactory = _ => Environment.ProcessorCount };
        var verbose = new Option<bool>("--verbose") { Description = "Print a line for every seed (seed, faults, operations, steps, virtual time, trace hash)" };
        var failbackSettle = new Option<int?>("--failback-settle-ms") { Description = "Failback auto with this settle time (virtual ms): the controllers move arrays back to their preferred owner themselves; default: manual, as duet up" };
        var bug = new Option<PlantedBug>("--planted-bug") { Description = "Test only: switch on a deliberate bug, to see the checkers fail", DefaultValueFactory = _ => PlantedBug.None };
        var cmd = new Command("sim", "Run the deterministic simulator: both controllers, the link, the drives and hosts on virtual time, with faults drawn per seed")
        {
            seeds, from, seed, faults, exact, ops, trace, threads, verbose, bug, failbackSettle,
        };
        cmd.SetAction(parse =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            FaultKind allowed;
            try { allowed = FaultPlan.Parse(parse.GetValue(faults)!); }
            catch (ArgumentException e)
            {
                error.WriteLine($"duet sim: {e.Message}");
                return ExitUsage;
            }
            int opCount = parse.GetValue(ops);
            if (opCount is < 1 or > 2000)
            {
                error.WriteLine("duet sim: --ops must be between 1 and 2000");
                return ExitUsage;
            }
            var options = new SimOptions
            {
                Operations = opCount, AllowedFaults = allowed, ForcedFaults = parse.GetValue(exact) ? allowed : null,
                KeepTrace = parse.GetValue(trace), Bug = parse.GetValue(bug),
                FailbackSettle = parse.GetValue(failbackSettle) is { } settleMs ? TimeSpan.FromMilliseconds(Math.Max(0, settleMs)) : null,
            };
            if (parse.GetValue(seed) is { } one)
            {
                var r = Simulator.Run(one, options);
                if (options.KeepTrace) foreach (var line in r.Trace.Lines) output.WriteLine(line);
                output.WriteLine($"seed {r.Seed} faults {r.Plan} writes {r.Stats.Writes} acked {r.Stats.WritesAcked} reads {r.Stats.Reads} crashes {r.Stats.Crashes} takeovers {r.Stats.Takeovers} hangs {r.Stats.Hangs} power cuts {r.Stats.PowerCuts} (blocks rolled back {r.Stats.BlocksRolledBack}) " +
                                 $"virtual {r.Stats.VirtualTime.TotalSeconds:F2} s steps {r.Stats.Steps} trace {r.TraceHash:x16}");
                foreach (var f in r.Failures) output.WriteLine($"failure seed {r.Seed}: {f}");
                output.WriteLine($"seeds 1 failures {(r.Passed ? 0 : 1)}");
                return r.Passed ? ExitOk : ExitFailed;
            }
            int count = parse.GetValue(seeds);
            if (count < 1)
            {
                error.WriteLine("duet sim: --seeds must be at least 1");
                return ExitUsage;
            }
            var summary = Campaign.Run(parse.GetValue(from), count, options, Math.Max(1, parse.GetValue(threads)), r =>
            {
                if (parse.GetValue(verbose))
                    output.WriteLine($"seed {r.Seed} faults {r.Plan} writes {r.Stats.Writes} crashes {r.Stats.Crashes} power cuts {r.Stats.PowerCuts} rolled back {r.Stats.BlocksRolledBack} steps {r.Stats.Steps} virtual {r.Stats.VirtualTime.TotalSeconds:F2} s trace {r.TraceHash:x16} {(r.Passed ? "ok" : "FAILED")} heap {GC.GetTotalMemory(true) >> 20} MiB");
                if (!r.Passed)
                    output.WriteLine($"failure seed {r.Seed} (faults {r.Plan}; replay: duet sim --seed {r.Seed}{ReplayFlags(parse.GetValue(faults)!, parse.GetValue(exact), opCount, parse.GetValue(bug))}" +
                                     (options.FailbackSettle is { } s ? $" --failback-settle-ms {s.TotalMilliseconds:F0}" : "") + $"): {r.Failures[0]}");
            });
            output.WriteLine($"virtual time {summary.VirtualTime.TotalSeconds:F0} s, {summary.Writes} writes, {summary.Crashes} crashes, {summary.Takeovers} takeovers, {summary.Hangs} hangs, {summary.PowerCuts} power cuts ({summary.BlocksRolledBack} drive blocks rolled back), " +
                $"{summary.PartialParityRows} rows with partial parity ({summary.UnguardedRows} unguarded), {summary.Steps} steps" +
                (options.FailbackSettle is null ? "" : $", {summary.FailBacks} failbacks"));
            if (summary.HostCommands > 0)
                output.WriteLine($"host protocol: {summary.HostCommands} commands, {summary.HostResends} sent again, {summary.HostLimitsReached} time limits reached, " +
                    $"longest wait of a command both controllers held {summary.HostStallMax.TotalMilliseconds:F0} ms ({summary.HostStallsExempt} not judged: both controllers impaired), " +
                    $"longest command {summary.HostCommandMax.TotalMilliseconds:F0} ms");
            output.WriteLine($"seeds {summary.Seeds} failures {summary.Failed.Count}");
            return summary.Failed.Count == 0 ? ExitOk : ExitFailed;
        });
        return cmd;
    }

    static string ReplayFlags(string faults, bool exact, int ops, PlantedBug bug) =>
        (faults == "all" ? "" : $" --faults {faults}") + (exact ? " --exact" : "") + (ops == 1000 ? "" : $" --ops {ops}") +
        (bug == PlantedBug.None ? "" : $" --planted-bug {bug}");
}
