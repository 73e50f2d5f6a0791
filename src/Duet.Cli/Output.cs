using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Duet.Host.Management;
using Duet.Raid.Management;
using Spectre.Console;
using DriveInfo = Duet.Raid.Management.DriveInfo; // not System.IO.DriveInfo (implicit usings)

namespace Duet.Cli;

// What the management verbs print. Human output is plain aligned text that greps well;
// the one concession to terminals is a coloured progress bar in front of rebuild and scrub
// lines, drawn by Spectre.Console only when stdout is the real, unredirected console.
sealed class Output(TextWriter writer, TextWriter error, bool json, bool isTerminal)
{
    public TextWriter Writer { get; } = writer;
    public bool Json { get; } = json;
    public bool IsTerminal { get; } = isTerminal;

    public static Output For(ParseResult pr, bool json)
    {
        var configuration = pr.InvocationConfiguration;
        var isTerminal = ReferenceEquals(configuration.Output, Console.Out)
            && !Console.IsOutputRedirected
            && AnsiConsole.Profile.Capabilities.Ansi;
        return new Output(configuration.Output, configuration.Error, json, isTerminal);
    }

    public void WriteJson<T>(T value, JsonTypeInfo<T> info) => Writer.WriteLine(JsonSerializer.Serialize(value, info));

    /// <summary>Reports a failure ("duet: message" on stderr, or {"error": ...} on stdout with --json).</summary>
    public int Fail(string message)
    {
        if (Json) WriteJson(new ErrorResponse(message), ManagementJsonContext.Indented.ErrorResponse);
        else error.WriteLine($"duet: {message}");
        return Program.ExitFailed;
    }

    public static void Status(Output o, StatusInfo status)
    {
        var w = o.Writer;
        if (status.Arrays.Count == 0) w.WriteLine("no arrays");
        foreach (var array in status.Arrays)
        {
            o.Array(array);
            w.WriteLine();
        }

        if (status.Volumes.Count == 0) w.WriteLine("volumes: none");
        else
        {
            w.WriteLine("volumes:");
            VolumeTable(w, "  ", status.Volumes);
        }

        var free = status.Drives.Where(d => d.Role == "free").ToList();
        w.WriteLine(free.Count == 0 ? "free drives: none" : $"free drives: {string.Join(", ", free.Select(DriveSummary))}");
        var foreign = status.Drives.Where(d => d.Role == "foreign").ToList();
        if (foreign.Count > 0) w.WriteLine($"foreign drives (superblock of an unknown array): {string.Join(", ", foreign.Select(DriveSummary))}");
        foreach (var c in new[] { status.Controller, status.PeerController })
            if (c is not null) Controller(w, c);
    }

    /// <summary>A controller of the pair: its link, its mirror, its cache and its link counters (MR-6, ICL-5).</summary>
    static void Controller(TextWriter w, ControllerInfo c)
    {
        w.WriteLine();
        w.WriteLine($"controller {c.Name}: link to {c.Peer} {(c.LinkUp ? "up" : "down")}, mirror {c.Mirror} ({c.MirrorMethod})" +
                    (c.MirrorDownReason is { } why && c.Mirror != "healthy" ? $": {why}" : ""));
        if (c.Mirror != "healthy") w.WriteLine("  error-recovery mode: writes go through to the drives before they are acknowledged");
        w.WriteLine($"  cache: {c.DirtyElements} of {c.CacheElements} elements dirty; hits {c.CacheHits}, misses {c.CacheMisses}; destaged {c.DestagedElements}; written through {c.WriteThroughs}");
        long writes = Math.Max(1, c.MirroredWrites);
        w.WriteLine($"  mirror: {c.MirroredWrites} writes mirrored ({c.Batches} batches, {c.SmallWrites} small, {c.LargeWrites} large); " +
                    $"{c.Doorbells} doorbells rung, {c.LinkMessageBytes + c.LinkDataBytes} link bytes sent ({(double)c.Doorbells / writes:0.##} doorbells per write)");
        w.WriteLine($"  forwarded: {c.ForwardedRequests} requests to {c.Peer}, {c.ForwardedServed} served for {c.Peer}; refused link transfers {c.RefusedTransfers}");
        if (c.InvariantViolations > 0)
            w.WriteLine($"  INVARIANT VIOLATIONS: {c.InvariantViolations} (the controller's own state was found wrong; the latest: {c.LastInvariantViolation}); see its log, event 7080");
        if (c.Failback is { } f)
            w.WriteLine($"  failback {f.Mode} (settle {f.SettleMs / 1000:0.#} s): {f.State}" +
                        (f.Pending.Count > 0 ? $" [{string.Join(", ", f.Pending)} to {c.Peer}]" : "") +
                        (f.Waiting is { } wait ? $": {wait}" : "") + (f.State == "settling" && f.DueInMs is { } due ? $"; moves in {due / 1000:0.0} s" : "") +
                        $"; {f.FailBacks} moved back" + (f.LastError is { } err ? $"; last attempt: {err}" : ""));
    }

    public static void ArrayCreated(Output o, ArrayInfo array)
    {
        o.Writer.WriteLine($"created array {array.Name}");
        o.Array(array);
    }

    public static void Arrays(Output o, IReadOnlyList<ArrayInfo> arrays)
    {
        if (arrays.Count == 0)
        {
            o.Writer.WriteLine("no arrays");
            return;
        }
        Table(o.Writer, "", ["NAME", "LEVEL", "CAPACITY", "FREE", "STATE", "OWNER", "PREFERRED", "MEMBERS", "SPARES"], arrays.Select(a => new[]
        {
            a.Name, $"RAID {a.Level}", Size(a.CapacityBytes), Size(a.FreeBytes), a.State, a.Owner, a.PreferredOwner,
            string.Join(",", a.Members.Select(m => m.Drive ?? "-")), a.Spares.Count == 0 ? "-" : string.Join(",", a.Spares),
        }));
        foreach (var a in arrays.Where(a => a.Failback is not null)) o.Writer.WriteLine($"{a.Name}: failback to {a.PreferredOwner}: {a.Failback}");
    }

    /// <summary>`duet array prefer`: the array's preferred owner, and what the failback does about it.</summary>
    public static void Preferred(Output o, ArrayInfo a)
    {
        o.Writer.WriteLine(a.PreferredOwner == "none"
            ? $"array {a.Name} has no preferred owner: it stays where it is served (controller {a.Owner}) until moved"
            : $"array {a.Name} prefers controller {a.PreferredOwner} (served by {a.Owner})");
        if (a.Failback is { } f) o.Writer.WriteLine($"failback to {a.PreferredOwner}: {f}");
    }

    /// <summary>`duet array bad-blocks`: one line per listed block, with the LBAs a host is told (AW-5).</summary>
    public static void BadBlocks(Output o, BadBlockReport report)
    {
        var w = o.Writer;
        if (report.Blocks.Count == 0)
        {
            w.WriteLine($"array {report.Array}: no bad blocks");
            return;
        }
        w.WriteLine($"array {report.Array}: {report.Blocks.Count} bad block{(report.Blocks.Count == 1 ? "" : "s")} (the list holds at most {report.Capacity}); " +
                    "reads of a bad sector fail with a medium error until a host writes it again");
        Table(w, "  ", ["ARRAY BLOCK", "ARRAY LBA", "SECTORS", "VOLUME", "VOLUME LBA", "FOUND BY"], report.Blocks.Select(b => new[]
        {
            b.ArrayBlock.ToString(CultureInfo.InvariantCulture), b.ArrayLba.ToString(CultureInfo.InvariantCulture), SectorRanges(b.BadSectors),
            b.Volume ?? "-", b.VolumeLba?.ToString(CultureInfo.InvariantCulture) ?? "-", b.FoundBy,
        }));
    }

    /// <summary>"0-7", "4-7", "0,2-3".</summary>
    static string SectorRanges(IReadOnlyList<int> sectors)
    {
        var parts = new List<string>();
        int i = 0;
        while (i < sectors.Count)
        {
            int j = i;
            while (j + 1 < sectors.Count && sectors[j + 1] == sectors[j] + 1) j++;
            parts.Add(i == j ? sectors[i].ToString(CultureInfo.InvariantCulture) : $"{sectors[i]}-{sectors[j]}");
            i = j + 1;
        }
        return string.Join(",", parts);
    }

    public static void VolumeCreated(Output o, VolumeInfo volume) =>
        o.Writer.WriteLine($"created volume {volume.Name}: {Size(volume.SizeBytes)} on array {volume.Array} at offset {Size(volume.OffsetBytes)}" +
                           (volume.Lun is { } lun ? $", iSCSI LUN {lun}" : ""));

    public static void Volumes(Output o, IReadOnlyList<VolumeInfo> volumes)
    {
        if (volumes.Count == 0) o.Writer.WriteLine("no volumes");
        else VolumeTable(o.Writer, "", volumes);
    }

    public static void DriveAdded(Output o, DriveInfo drive) =>
        o.Writer.WriteLine($"added drive {drive.Name}: {Size(drive.SizeBytes)}, {drive.Role}, {drive.State}");

    public static void Drives(Output o, IReadOnlyList<DriveInfo> drives)
    {
        if (drives.Count == 0)
        {
            o.Writer.WriteLine("no drives");
            return;
        }
        Table(o.Writer, "", ["NAME", "SIZE", "ROLE", "ARRAY", "SLOT", "STATE"], drives.Select(d => new[]
        {
            d.Name, Size(d.SizeBytes), d.Role, d.Array ?? "-", d.Slot?.ToString(CultureInfo.InvariantCulture) ?? "-", d.State,
        }));
    }

    void Array(ArrayInfo a)
    {
        var w = Writer;
        w.WriteLine($"array {a.Name}: RAID {a.Level}, {a.State}, {Size(a.CapacityBytes)} ({Size(a.FreeBytes)} free), chunk {a.ChunkKiB} KiB, generation {a.Generation}, uuid {a.Uuid}");
        Table(w, "  ", ["SLOT", "DRIVE", "STATE"], a.Members.Select(m => new[]
        {
            m.Slot.ToString(CultureInfo.InvariantCulture), m.Drive ?? "-", m.State,
        }));
        w.WriteLine($"  spares: {(a.Spares.Count == 0 ? "none" : string.Join(", ", a.Spares))}");
        w.WriteLine($"  served by {a.Owner}; preferred owner {a.PreferredOwner}");
        if (a.Failback is { } failback) w.WriteLine($"  failback to {a.PreferredOwner}: {failback}");
        if (a.BadBlocks > 0) w.WriteLine($"  bad blocks: {a.BadBlocks} (reads of them fail until a host writes them again; see 'duet array bad-blocks {a.Name}')");
        if (a.Rebuild is { } rebuild) Progress("  ", "rebuild", rebuild);
        if (a.Scrub is { } scrub)
        {
            var counts = $"{scrub.StripesChecked} stripes checked, {scrub.ChecksumErrors} checksum errors, {scrub.ParityMismatches} parity mismatches, {scrub.Repaired} repaired, {scrub.Unrepairable} unrepairable" +
                         (scrub.Listed > 0 ? $" ({scrub.Listed} put on the bad-block list)" : "");
            if (scrub.Running)
            {
                Progress("  ", "scrub", scrub.Progress);
                w.WriteLine($"    {counts} so far");
            }
            else w.WriteLine($"  scrub finished: {counts}");
            foreach (var finding in scrub.Findings) w.WriteLine($"    {finding}");
        }
    }

    // "rebuild 42.0% (430 MiB of 1 GiB) onto d8 at 95.2 MiB/s", after a bar on a terminal.
    void Progress(string indent, string what, ProgressInfo p)
    {
        var fraction = double.IsFinite(p.Fraction) ? Math.Clamp(p.Fraction, 0, 1) : 0;
        var text = string.Create(CultureInfo.InvariantCulture, $"{what} {fraction * 100:0.0}% ({Size(p.DoneBytes)} of {Size(p.TotalBytes)})");
        if (p.TargetDrive is { } target) text += $" onto {target}";
        if (double.IsFinite(p.RateMiBps) && p.RateMiBps > 0) text += string.Create(CultureInfo.InvariantCulture, $" at {p.RateMiBps:0.0} MiB/s");
        if (!IsTerminal)
        {
            Writer.WriteLine(indent + text);
            return;
        }
        const int width = 20; // leaves room for the text on an 80-column terminal
        var filled = (int)Math.Round(fraction * width);
        Writer.Flush();
        AnsiConsole.MarkupLine($"{indent}[green]{new string('━', filled)}[/][grey]{new string('━', width - filled)}[/] {Markup.Escape(text)}");
    }

    static void VolumeTable(TextWriter w, string indent, IReadOnlyList<VolumeInfo> volumes)
    {
        Table(w, indent, ["NAME", "ARRAY", "SIZE", "OFFSET", "LUN"], volumes.Select(v => new[]
        {
            v.Name, v.Array, Size(v.SizeBytes), Size(v.OffsetBytes), v.Lun?.ToString(CultureInfo.InvariantCulture) ?? "-",
        }));
        foreach (var v in volumes.Where(v => v.LunWarning is not null)) w.WriteLine($"{indent}warning: volume {v.Name}: {v.LunWarning}");
    }

    static string DriveSummary(DriveInfo d) => d.State == "ok" ? $"{d.Name} ({Size(d.SizeBytes)})" : $"{d.Name} ({Size(d.SizeBytes)}, {d.State})";

    static void Table(TextWriter w, string indent, string[] headers, IEnumerable<string[]> rows)
    {
        var all = new List<string[]> { headers };
        all.AddRange(rows);
        var widths = new int[headers.Length];
        foreach (var row in all)
            for (int i = 0; i < row.Length; i++) widths[i] = Math.Max(widths[i], row[i].Length);
        foreach (var row in all)
        {
            var cells = row.Select((cell, i) => i == row.Length - 1 ? cell : cell.PadRight(widths[i]));
            w.WriteLine(indent + string.Join("  ", cells));
        }
    }

    /// <summary>Rounded binary size for people: 1 GiB, 1.5 GiB, 430 MiB, 4 KiB, 0 B.</summary>
    public static string Size(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double v = bytes;
        int unit = 0;
        while (Math.Abs(v) >= 1024 && unit < units.Length - 1)
        {
            v /= 1024;
            unit++;
        }
        var format = unit == 0 || Math.Abs(v) >= 100 ? "0" : Math.Abs(v) >= 10 ? "0.#" : "0.##";
        return $"{v.ToString(format, CultureInfo.InvariantCulture)} {units[unit]}";
    }
}
