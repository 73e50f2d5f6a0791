namespace Duet.Core;

/// <summary>
/// The sizes every layer agrees on. Volumes expose 512-byte logical blocks (what hosts
/// address); RAID, checksums and drives work in 4 KiB physical blocks (512e).
/// </summary>
public static class Units
{
    public const int SectorBytes = 512;
    public const int BlockBytes = 4096;
    public const int SectorsPerBlock = BlockBytes / SectorBytes;
    public const int SectorShift = 9;
    public const int BlockShift = 12;

    static Units()
    {
        Invariant.Assert(1 << SectorShift == SectorBytes);
        Invariant.Assert(1 << BlockShift == BlockBytes);
        Invariant.Assert(BlockBytes % SectorBytes == 0);
    }

    public static long KiB(long n) => n << 10;
    public static long MiB(long n) => n << 20;
    public static long GiB(long n) => n << 30;

    /// <summary>Parses sizes such as 512, 4k, 64KiB, 256M, 1G, 1GiB (binary units).</summary>
    public static bool TryParseSize(string text, out long bytes)
    {
        bytes = 0;
        var s = text.Trim().ToLowerInvariant();
        if (s.EndsWith("ib", StringComparison.Ordinal)) s = s[..^2];
        else if (s.EndsWith('b')) s = s[..^1];
        long mul = 1;
        if (s.Length > 0)
        {
            switch (s[^1])
            {
                case 'k': mul = 1L << 10; s = s[..^1]; break;
                case 'm': mul = 1L << 20; s = s[..^1]; break;
                case 'g': mul = 1L << 30; s = s[..^1]; break;
                case 't': mul = 1L << 40; s = s[..^1]; break;
            }
        }
        if (!long.TryParse(s, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n)) return false;
        if (n < 0 || n > long.MaxValue / mul) return false;
        bytes = n * mul;
        return true;
    }

    public static string FormatSize(long bytes)
    {
        string[] names = ["B", "KiB", "MiB", "GiB", "TiB"];
        int i = 0;
        double v = bytes;
        while (v >= 1024 && i < names.Length - 1 && bytes % (1L << (10 * (i + 1))) == 0) { v /= 1024; i++; }
        return $"{v:0.##} {names[i]}";
    }
}
