using System.Runtime.InteropServices;

namespace Duet.Cache.Nvram;

/// <summary>
/// msync(2) on a byte range of the mapping. MemoryMappedViewAccessor.Flush syncs the whole
/// view; header updates want just their page. Linux only; elsewhere callers fall back to the
/// whole-view flush.
/// </summary>
internal static partial class Msync
{
    const int MsSyncLinux = 4;

    [LibraryImport("libc", EntryPoint = "msync", SetLastError = true)]
    private static partial int NativeMsync(nint address, nuint length, int flags);

    public static bool Supported => OperatingSystem.IsLinux();

    /// <summary>Syncs [address, address + length), widened to whole pages.</summary>
    public static void Range(nint mappingBase, long offset, long length)
    {
        long page = Environment.SystemPageSize;
        long start = offset / page * page;
        long end = offset + length;
        if (NativeMsync(mappingBase + (nint)start, (nuint)(end - start), MsSyncLinux) != 0)
            throw new IOException($"msync failed: errno {Marshal.GetLastPInvokeError()}");
    }
}
