using System.Text;

namespace Duet.Simulation;

/// <summary>
/// The event trace of a run: a running 64-bit FNV-1a hash of every event (two runs of one
/// seed must end with the same hash) and, when asked for, the lines themselves.
/// </summary>
public sealed class SimTrace(bool keepLines)
{
    const ulong Offset = 14695981039346656037UL, Prime = 1099511628211UL;
    readonly List<string>? _lines = keepLines ? [] : null;
    ulong _hash = Offset;

    public ulong Hash => _hash;
    public long Count { get; private set; }
    public IReadOnlyList<string> Lines => _lines ?? (IReadOnlyList<string>)[];
    /// <summary>Virtual time shown on each kept line (set by the simulation).</summary>
    public Func<TimeSpan>? Clock { get; set; }

    public void Add(string line)
    {
        Count++;
        foreach (char c in line)
        {
            _hash ^= c;
            _hash *= Prime;
        }
        _hash ^= '\n';
        _hash *= Prime;
        if (_lines is not null)
        {
            var t = Clock?.Invoke() ?? TimeSpan.Zero;
            _lines.Add(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{t.TotalMilliseconds,12:F3} ms  {line}"));
        }
    }

    public override string ToString()
    {
        var sb = new StringBuilder();
        foreach (var l in Lines) sb.AppendLine(l);
        return sb.ToString();
    }
}
