using Duet.Cache.Nvram;

namespace Duet.Cache.Tests.Nvram;

/// <summary>A private temporary directory for NVRAM files, removed afterwards.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "duet-nvram-" + Guid.NewGuid().ToString("N"));

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); }
        catch (IOException) { }
    }
}

internal static class Sample
{
    public static readonly Guid Pair = new("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");

    /// <summary>1 MiB: 9 elements per region, the smallest layout.</summary>
    public static NvramLayout Small => NvramLayout.For(NvramLayout.MinTotalBytes);

    public static ElementDescriptor Descriptor(int element, ulong sequence, uint mask = uint.MaxValue, int blockCount = 32, bool dirty = true) =>
        new(ArraySerial: 0xA11CE, ArrayNumber: 3, ArrayLba: 32L * (1000 + element), BlockCount: blockCount,
            ValidMask: mask, Sequence: sequence, Dirty: dirty);

    public static byte[] Sectors(int blockCount, int seed)
    {
        var data = new byte[blockCount * NvramLayout.SectorBytes];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>The valid sectors of <paramref name="sectors"/> equal those of the element.</summary>
    public static bool ValidSectorsEqual(ReadOnlySpan<byte> element, ReadOnlySpan<byte> sectors, uint mask)
    {
        for (int s = 0; s < 32; s++)
        {
            if ((mask >> s & 1) == 0) continue;
            if (!element.Slice(s * 512, 512).SequenceEqual(sectors.Slice(s * 512, 512))) return false;
        }
        return true;
    }
}
