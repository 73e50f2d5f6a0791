using Duet.Cache;
using Duet.Cache.Nvram;

// Usage: Duet.Cache.Crasher <nvram-path> <element-count> <epoch>
// Opens an existing NVRAM file, sets its epoch, writes elements 0..count-1 of region 1 and
// the same elements of region 2 (each with all 32 sectors valid and a pattern that
// NvramKillTests recomputes), records count finished host commands in its host tag table and
// stores count entries in its copy of the peer's (HostTag below), prints "written", then blocks
// until it is killed. It never
// flushes: after kill -9 the bytes must be in the file because the mapping is shared.
if (args.Length != 3 || !int.TryParse(args[1], out int count) || !ulong.TryParse(args[2], out ulong epoch))
{
    Console.Error.WriteLine("usage: Duet.Cache.Crasher <nvram-path> <element-count> <epoch>");
    return 2;
}

var nvram = NvramFile.Open(args[0]);
nvram.Epoch = epoch;
var sectors = new byte[NvramLayout.ElementBytesFixed];
foreach (var region in new[] { nvram.Own, nvram.Peer })
{
    for (int e = 0; e < count; e++)
    {
        for (int i = 0; i < sectors.Length; i++) sectors[i] = Pattern(region.Number, e, i);
        var descriptor = new ElementDescriptor(ArraySerial: 0xD0E7, ArrayNumber: 1, ArrayLba: 32L * e,
            BlockCount: 32, ValidMask: uint.MaxValue, Sequence: (ulong)(1000 - e), Dirty: true);
        region.Write(e, descriptor, sectors);
    }
}
var tags = new HostTagTable(nvram);
for (int i = 0; i < count; i++)
{
    var (key, digest, status) = HostTag(i);
    tags.Record(key, digest, status);
    tags.StoreMirrored(new HostTagEntry(key with { HostId = key.HostId + 1 }, digest, status, 100UL + (ulong)i));
}
Console.Out.WriteLine("written");
Console.Out.Flush();
new ManualResetEventSlim(false).Wait(); // until SIGKILL
GC.KeepAlive(nvram);
return 0;

// The same formulas are in tests/Duet.Cache.Tests/NvramKillTests.cs.
static (HostTagKey, uint, byte) HostTag(int i) => (new HostTagKey((byte)(i % 2), 0xD0E7_0000UL, (0x0001UL << 48) + (ulong)i + 1), 0xC0FFEE00u + (uint)i, (byte)(i % 3));

static byte Pattern(int region, int element, int index) => (byte)(region * 101 + element * 31 + index * 7 + (index >> 9));
