using System.CommandLine;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Duet.Core;
using Duet.Host.Management;
using Duet.Raid.Management;

namespace Duet.Cli;

// The `duet` command. The management verbs (status, array, volume, drive, spare, scrub) are
// thin: parse, send one request over the data directory's management socket, print the
// answer (for people, or with --json as the contract's records). Whether a request is
// allowed is the controller's decision; the CLI only rejects what cannot be a request.
//
// Exit codes: 0 done; 1 refused by the controller, or no controller running; 2 bad
// arguments. The server commands (up, bench, sim) live in another file and hook in through
// AddServerCommands, reusing DataOption and ResolveDataDir.
public static partial class Program
{
    public const int ExitOk = 0;
    public const int ExitFailed = 1;
    public const int ExitUsage = 2;
    public const int ExitInterrupted = 130;
    /// <summary>A controller that found itself fenced at the shelf (it was declared dead) and stepped down.</summary>
    public const int ExitSteppedDown = 3;

    public const string DataEnvironmentVariable = "DUET_DATA";
    public const string DefaultDataDirectory = "./duet-data";

    const int DefaultChunkKiB = 64;

    /// <summary>--data DIR, on every command: the controller's data directory (default: $DUET_DATA, else ./duet-data).</summary>
    public static Option<string> DataOption { get; } = new("--data")
    {
        Description = $"The controller's data directory; its management socket is DIR/{ManagementHost.SocketFileName}; defaults to ${DataEnvironmentVariable}, else {DefaultDataDirectory}",
        HelpName = "DIR",
        Recursive = true,
        DefaultValueFactory = _ => DefaultDataDir(),
    };

    /// <summary>--json: print the contract's records as JSON ({"ok":true} when a verb has no result).</summary>
    public static Option<bool> JsonOption { get; } = new("--json")
    {
        Description = "Print JSON for machines: the records the controller returns, {\"ok\":true}, or {\"error\":\"...\"}",
    };

    static readonly Lazy<RootCommand> rootCommand = new(BuildRootCommand, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The whole command tree, built once (System.CommandLine symbols are not meant to be shared between trees).</summary>
    public static RootCommand RootCommand => rootCommand.Value;

    /// <summary>The absolute data directory chosen by --data, $DUET_DATA or the default.</summary>
    public static string ResolveDataDir(ParseResult parseResult) =>
        Path.GetFullPath(parseResult.GetValue(DataOption) is { Length: > 0 } dir ? dir : DefaultDataDir());

    public static Task<int> Main(string[] args) => RunAsync(args, Console.Out, Console.Error);

    /// <summary>Runs the CLI with the given streams (tests pass StringWriters). Progress bars are
    /// drawn only when <paramref name="output"/> is the real, unredirected console.</summary>
    public static async Task<int> RunAsync(string[] args, TextWriter output, TextWriter error, CancellationToken ct = default)
    {
        var parseResult = RootCommand.Parse(args);
        if (parseResult.Action is ParseErrorAction)
        {
            foreach (var e in parseResult.Errors) await error.WriteLineAsync($"duet: {e.Message}").ConfigureAwait(false);
            var command = string.Join(' ', parseResult.CommandResult.Command is RootCommand ? ["duet"] : CommandPath(parseResult.CommandResult));
            await error.WriteLineAsync($"Run '{command} --help' for usage.").ConfigureAwait(false);
            return ExitUsage;
        }
        var configuration = new InvocationConfiguration { Output = output, Error = error };
        return await parseResult.InvokeAsync(configuration, ct).ConfigureAwait(false);
    }

    static partial void AddServerCommands(RootCommand root);

    static partial void AddShelfCommands(RootCommand root);

    static partial void AddAdapterCommands(RootCommand root);

    static string DefaultDataDir() =>
        Environment.GetEnvironmentVariable(DataEnvironmentVariable) is { Length: > 0 } env ? env : DefaultDataDirectory;

    static IEnumerable<string> CommandPath(SymbolResult? result)
    {
        var names = new List<string>();
        for (; result is not null; result = result.Parent)
            if (result is CommandResult c) names.Add(c.Command is RootCommand ? "duet" : c.Command.Name);
        names.Reverse();
        return names;
    }

    static RootCommand BuildRootCommand()
    {
        var root = new RootCommand("duet: a software-defined dual-controller RAID array");
        root.Options.Add(DataOption);
        root.Subcommands.Add(StatusCommand());
        root.Subcommands.Add(ArrayCommand());
        root.Subcommands.Add(VolumeCommand());
        root.Subcommands.Add(DriveCommand());
        root.Subcommands.Add(SpareCommand());
        root.Subcommands.Add(ScrubCommand());
        AddServerCommands(root);
        AddAdapterCommands(root);
        AddShelfCommands(root);
        return root;
    }

    static ManagementJsonContext Json => ManagementJsonContext.Indented;

    static Command StatusCommand()
    {
        var status = new Command("status", "Show arrays (members, spares, rebuild and scrub progress), volumes and free drives");
        SetCall(status, Json.StatusInfo, (_, client, ct) => client.StatusAsync(ct), Output.Status);
        return status;
    }

    static Command ArrayCommand()
    {
        var array = new Command("array", "Create, delete and list RAID arrays");

        var name = new Argument<string>("NAME") { Description = "Name of the new array" };
        var level = new Option<int>("--level")
        {
            Description = "RAID level: 0, 1, 5, 6 or 10",
            Required = true,
        };
        level.AcceptOnlyFromAmong("0", "1", "5", "6", "10");
        var drives = new Option<string[]>("--drives")
        {
            Description = "Member drives in slot order, comma-separated: d0,d1,d2,d3",
            HelpName = "D0,D1,...",
            Required = true,
            AllowMultipleArgumentsPerToken = true,
            CustomParser = ParseDriveList,
        };
        // int? rather than a default value so help shows "64k", not the parsed 64.
        var chunk = new Option<int?>("--chunk")
        {
            Description = "Stripe unit per member, a power of two from 4k to 1M (default: 64k)",
            HelpName = "SIZE",
            CustomParser = ParseChunkKiB,
        };
        var rebuildRate = new Option<int>("--rebuild-rate")
        {
            Description = "Rebuild rate limit in MiB/s; 0 means unlimited",
            HelpName = "MiBps",
            DefaultValueFactory = _ => 0,
        };
        rebuildRate.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<int>() < 0) r.AddError("--rebuild-rate must be 0 (unlimited) or a positive number of MiB/s");
        });
        var owner = new Option<string?>("--owner") { Description = "The controller that serves the array: A or B (default: the one asked, A)" };
        owner.AcceptOnlyFromAmong("A", "B");
        var create = new Command("create", "Create an array from free drives") { name, level, drives, chunk, rebuildRate, owner };
        SetCall(create, Json.ArrayInfo,
            (pr, client, ct) => client.CreateArrayAsync(new CreateArrayRequest(
                pr.GetRequiredValue(name), pr.GetValue(level), pr.GetRequiredValue(drives), pr.GetValue(chunk) ?? DefaultChunkKiB, pr.GetValue(rebuildRate), pr.GetValue(owner)), ct),
            Output.ArrayCreated);

        var moveName = new Argument<string>("NAME") { Description = "The array to move" };
        var to = new Option<string>("--to") { Description = "The controller that will serve it: A or B", Required = true };
        to.AcceptOnlyFromAmong("A", "B");
        var move = new Command("move", "Hand an array to the other controller of the pair (no data is lost; its volumes stay reachable on both)") { moveName, to };
        SetCall(move, Json.ArrayInfo, (pr, client, ct) => client.MoveArrayAsync(pr.GetRequiredValue(moveName), new MoveArrayRequest(pr.GetRequiredValue(to)), ct),
            (o, a) => o.Writer.WriteLine($"array {a.Name} is now served by controller {a.Owner}"));

        var preferName = new Argument<string>("NAME") { Description = "The array" };
        var preferOwner = new Option<string>("--owner") { Description = "The controller the array belongs on when both run: A, B, or none (it stays wherever it is served)", Required = true };
        preferOwner.AcceptOnlyFromAmong("A", "B", "none");
        var prefer = new Command("prefer", "Set the controller an array belongs on (its preferred owner, kept in its superblock): with `duet up --failback auto` "
            + "the controller serving it moves it there once the pair has been healthy for the settle time, e.g. after a takeover; `duet array move` also sets it") { preferName, preferOwner };
        SetCall(prefer, Json.ArrayInfo, (pr, client, ct) => client.PreferArrayAsync(pr.GetRequiredValue(preferName), new PreferArrayRequest(pr.GetRequiredValue(preferOwner)), ct),
            Output.Preferred);

        var deleteName = new Argument<string>("NAME") { Description = "The array to delete (it must have no volumes)" };
        var delete = new Command("delete", "Delete an array; its drives become free") { deleteName };
        SetCall(delete, (pr, client, ct) => client.DeleteArrayAsync(pr.GetRequiredValue(deleteName), ct),
            pr => $"deleted array {pr.GetRequiredValue(deleteName)}");

        var list = new Command("list", "List arrays");
        SetCall(list, Json.IReadOnlyListArrayInfo, (_, client, ct) => client.ListArraysAsync(ct), Output.Arrays);

        var badName = new Argument<string>("NAME") { Description = "The array whose bad-block list to show" };
        var badBlocks = new Command("bad-blocks", "List the array's bad blocks: data a power cut (or rot) destroyed beyond what redundancy could rebuild; " +
            "reads of them fail with a medium error until a host writes them again") { badName };
        SetCall(badBlocks, Json.BadBlockReport, (pr, client, ct) => client.BadBlocksAsync(pr.GetRequiredValue(badName), ct), Output.BadBlocks);

        array.Subcommands.Add(create);
        array.Subcommands.Add(delete);
        array.Subcommands.Add(prefer);
        array.Subcommands.Add(list);
        array.Subcommands.Add(move);
        array.Subcommands.Add(badBlocks);
        return array;
    }

    static Command VolumeCommand()
    {
        var volume = new Command("volume", "Create, delete and list volumes");

        var name = new Argument<string>("NAME") { Description = "Name of the new volume" };
        var array = new Option<string>("--array") { Description = "The array to carve it from", HelpName = "ARRAY", Required = true };
        var size = SizeOption("--size", "Size, e.g. 512M or 1G; 0 or omitted takes the rest of the array", required: false);
        var lun = new Option<int?>("--lun")
        {
            Description = "The volume's iSCSI LUN, 0 to 254, kept for its life (both controllers serve it there); omitted: the lowest free LUN",
            HelpName = "N",
        };
        var create = new Command("create", "Create a volume on an array") { name, array, size, lun };
        SetCall(create, Json.VolumeInfo,
            (pr, client, ct) => client.CreateVolumeAsync(new CreateVolumeRequest(pr.GetRequiredValue(name), pr.GetRequiredValue(array), pr.GetValue(size), pr.GetValue(lun)), ct),
            Output.VolumeCreated);

        var deleteName = new Argument<string>("NAME") { Description = "The volume to delete" };
        var delete = new Command("delete", "Delete a volume (its data is gone)") { deleteName };
        SetCall(delete, (pr, client, ct) => client.DeleteVolumeAsync(pr.GetRequiredValue(deleteName), ct),
            pr => $"deleted volume {pr.GetRequiredValue(deleteName)}");

        var list = new Command("list", "List volumes");
        SetCall(list, Json.IReadOnlyListVolumeInfo, (_, client, ct) => client.ListVolumesAsync(ct), Output.Volumes);

        volume.Subcommands.Add(create);
        volume.Subcommands.Add(delete);
        volume.Subcommands.Add(list);
        return volume;
    }

    static Command DriveCommand()
    {
        var drive = new Command("drive", "List, add, fail and replace drives");

        var list = new Command("list", "List drives with their role and state");
        SetCall(list, Json.IReadOnlyListDriveInfo, (_, client, ct) => client.ListDrivesAsync(ct), Output.Drives);

        var addName = new Argument<string>("NAME") { Description = "Name of the new drive" };
        var size = SizeOption("--size", "Size of the new (sparse) drive, e.g. 1G", required: true);
        var add = new Command("add", "Add a new empty drive to the shelf") { addName, size };
        SetCall(add, Json.DriveInfo,
            (pr, client, ct) => client.AddDriveAsync(new AddDriveRequest(pr.GetRequiredValue(addName), pr.GetValue(size)), ct),
            Output.DriveAdded);

        var failName = new Argument<string>("NAME") { Description = "The member drive to fail" };
        var fail = new Command("fail", "Mark a member drive failed: its array runs degraded and rebuilds onto a spare if it has one") { failName };
        SetCall(fail, (pr, client, ct) => client.FailDriveAsync(pr.GetRequiredValue(failName), ct),
            pr => $"failed drive {pr.GetRequiredValue(failName)} (see 'duet status' for the array's state)");

        var replaceName = new Argument<string>("NAME") { Description = "The member drive to replace" };
        var with = new Option<string>("--with") { Description = "A free drive that takes its slot", HelpName = "NEW", Required = true };
        var replace = new Command("replace", "Rebuild a member onto a free drive, which then takes its slot") { replaceName, with };
        SetCall(replace,
            (pr, client, ct) => client.ReplaceDriveAsync(pr.GetRequiredValue(replaceName), new ReplaceDriveRequest(pr.GetRequiredValue(with)), ct),
            pr => $"replacing drive {pr.GetRequiredValue(replaceName)} with {pr.GetRequiredValue(with)} (see 'duet status' for rebuild progress)");

        drive.Subcommands.Add(list);
        drive.Subcommands.Add(add);
        drive.Subcommands.Add(fail);
        drive.Subcommands.Add(replace);
        return drive;
    }

    static Command SpareCommand()
    {
        var spare = new Command("spare", "Manage hot spares");
        var driveName = new Argument<string>("DRIVE") { Description = "A free drive" };
        var array = new Option<string>("--array") { Description = "The array it stands by for", HelpName = "ARRAY", Required = true };
        var add = new Command("add", "Make a free drive a hot spare of an array (a degraded array starts rebuilding onto it at once)") { driveName, array };
        SetCall(add,
            (pr, client, ct) => client.AddSpareAsync(new AddSpareRequest(pr.GetRequiredValue(driveName), pr.GetRequiredValue(array)), ct),
            pr => $"added {pr.GetRequiredValue(driveName)} as a hot spare of {pr.GetRequiredValue(array)}");
        spare.Subcommands.Add(add);
        return spare;
    }

    static Command ScrubCommand()
    {
        var scrub = new Command("scrub", "Check arrays for checksum and parity errors");
        var array = new Argument<string>("ARRAY") { Description = "The array to scrub" };
        var noRepair = new Option<bool>("--no-repair") { Description = "Only report problems; do not rewrite bad blocks" };
        var start = new Command("start", "Start a scrub in the background ('duet status' shows progress and findings)") { array, noRepair };
        SetCall(start,
            (pr, client, ct) => client.StartScrubAsync(pr.GetRequiredValue(array), new ScrubRequest(Repair: !pr.GetValue(noRepair)), ct),
            pr => $"started scrub of {pr.GetRequiredValue(array)} ({(pr.GetValue(noRepair) ? "report only" : "repairing what it finds")}; see 'duet status')");
        scrub.Subcommands.Add(start);
        return scrub;
    }

    static Option<long> SizeOption(string name, string description, bool required) => new(name)
    {
        Description = description,
        HelpName = "SIZE",
        Required = required,
        CustomParser = r =>
        {
            var text = r.Tokens.Count == 1 ? r.Tokens[0].Value : "";
            if (Units.TryParseSize(text, out var bytes)) return bytes;
            r.AddError($"{name} '{text}' is not a size; write a number with an optional unit, e.g. 512M, 1G, 64k");
            return 0;
        },
    };

    static string[] ParseDriveList(ArgumentResult r)
    {
        var names = r.Tokens.SelectMany(t => t.Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)).ToArray();
        if (names.Length == 0) r.AddError("--drives needs drive names, e.g. --drives d0,d1,d2,d3");
        return names;
    }

    static int? ParseChunkKiB(ArgumentResult r)
    {
        var text = r.Tokens.Count == 1 ? r.Tokens[0].Value : "";
        if (!Units.TryParseSize(text, out var bytes) || bytes == 0)
        {
            r.AddError($"--chunk '{text}' is not a size; write it with a unit, e.g. 64k");
            return 0;
        }
        if (bytes % 1024 != 0 || bytes / 1024 > int.MaxValue)
        {
            r.AddError($"--chunk {text} is not a whole number of KiB; write it with a unit, e.g. 64k");
            return 0;
        }
        return (int)(bytes / 1024);
    }

    // A verb with a result: print it for people, or as the record itself with --json.
    static void SetCall<T>(Command command, JsonTypeInfo<T> json, Func<ParseResult, PairClient, CancellationToken, Task<T>> call, Action<Output, T> human)
    {
        command.Options.Add(JsonOption);
        command.SetAction((pr, ct) => CallAsync(pr, ct, async (output, client) =>
        {
            var result = await call(pr, client, ct).ConfigureAwait(false);
            if (output.Json) output.WriteJson(result, json);
            else human(output, result);
        }));
    }

    // A verb without a result: one line for people, {"ok":true} with --json.
    static void SetCall(Command command, Func<ParseResult, PairClient, CancellationToken, Task> call, Func<ParseResult, string> done)
    {
        command.Options.Add(JsonOption);
        command.SetAction((pr, ct) => CallAsync(pr, ct, async (output, client) =>
        {
            await call(pr, client, ct).ConfigureAwait(false);
            if (output.Json) output.WriteJson(new OkResponse(true), Json.OkResponse);
            else output.Writer.WriteLine(done(pr));
        }));
    }

    static async Task<int> CallAsync(ParseResult pr, CancellationToken ct, Func<Output, PairClient, Task> body)
    {
        var output = Output.For(pr, pr.GetValue(JsonOption));
        try
        {
            using var client = PairClient.ForDataDirectory(ResolveDataDir(pr));
            await body(output, client).ConfigureAwait(false);
            return ExitOk;
        }
        catch (ManagementException e)
        {
            return output.Fail(e.Message);
        }
        catch (ControllerUnavailableException e)
        {
            return output.Fail(e.Message);
        }
        catch (HttpRequestException e)
        {
            return output.Fail(e.Message);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            output.Fail("interrupted");
            return ExitInterrupted;
        }
        catch (OperationCanceledException)
        {
            return output.Fail("the controller did not answer in time");
        }
    }
}
