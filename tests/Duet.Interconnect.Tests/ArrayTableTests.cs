using System.Buffers;
using Duet.Interconnect.Wire;
using FsCheck;
using FsCheck.Fluent;
using static Duet.Interconnect.Tests.TestBytes;

namespace Duet.Interconnect.Tests;

[Trait("Claim", "MR-5")]
public class ArrayTableTests
{
    [Fact]
    public void Maps_arrays_to_volume_numbers_both_ways()
    {
        var t = new ArrayTable();
        Assert.True(t.TryAdd(0xAAAA, 1, out var v0));
        Assert.True(t.TryAdd(0xAAAA, 2, out var v1));
        Assert.Equal(0, v0);
        Assert.Equal(1, v1);
        Assert.True(t.TryGetVolume(0xAAAA, 2, out var v));
        Assert.Equal(1, v);
        Assert.True(t.TryGetArray(0, out var key));
        Assert.Equal(new ArrayKey(0xAAAA, 1), key);
        Assert.False(t.TryGetArray(2, out _));
        Assert.False(t.TryGetVolume(0xBBBB, 1, out _));
    }

    [Fact]
    public void Every_change_bumps_the_version_and_a_repeat_changes_nothing()
    {
        var t = new ArrayTable();
        Assert.Equal(0UL, t.Version);
        t.TryAdd(1, 1, out _);
        Assert.Equal(1UL, t.Version);
        Assert.False(t.TryAdd(1, 1, out _));
        Assert.Equal(1UL, t.Version);
        Assert.True(t.Remove(1, 1));
        Assert.Equal(2UL, t.Version);
        Assert.False(t.Remove(1, 1));
        Assert.Equal(2UL, t.Version);
    }

    [Fact]
    public void Holds_256_arrays_and_reuses_freed_volume_numbers()
    {
        var t = new ArrayTable();
        for (int i = 0; i < 256; i++) Assert.True(t.TryAdd((ulong)i, 0, out var v) && v == i);
        Assert.False(t.TryAdd(999, 0, out _));
        Assert.True(t.Remove(17, 0));
        Assert.True(t.TryAdd(999, 0, out var reused));
        Assert.Equal(17, reused);
        Assert.True(t.TryGetArray(255, out var last));
        Assert.Equal(new ArrayKey(255, 0), last);
    }

    [Fact]
    public void The_peer_applies_a_newer_snapshot_and_ignores_a_stale_one()
    {
        var a = new ArrayTable();
        a.TryAdd(0x1111, 3, out _);
        a.TryAdd(0x2222, 4, out _);
        a.Remove(0x1111, 3);
        a.TryAdd(0x3333, 5, out _);
        var b = new ArrayTable();
        Assert.True(b.Apply(Transmit(a.Snapshot())));
        Assert.Equal(a.Entries(), b.Entries());
        Assert.Equal(a.Version, b.Version);
        Assert.False(b.Apply(new ArrayTableUpdate(a.Version, [])));
        Assert.False(b.Apply(new ArrayTableUpdate(a.Version - 1, [])));
        Assert.Equal(a.Entries(), b.Entries());
        Assert.True(b.TryGetVolume(0x3333, 5, out var v) && a.TryGetVolume(0x3333, 5, out var w) && v == w);
    }

    static ArrayTableUpdate Transmit(ArrayTableUpdate update)
    {
        var bytes = new byte[DuetFrame.EncodedBytes(update)];
        update.Encode(bytes);
        var reader = new SequenceReader<byte>(Split(bytes, 3, 9, 20));
        Assert.Equal(OperationStatus.Done, ArrayTableUpdate.TryDecode(ref reader, out var back, out var error));
        Assert.Equal(WireError.None, error);
        return back!;
    }

    [Fact]
    public void Update_has_the_documented_layout()
    {
        var u = new ArrayTableUpdate(0x0102030405060708, [new ArrayTableEntry(7, 0x1112131415161718, 9)]);
        var b = new byte[DuetFrame.EncodedBytes(u)];
        Assert.Equal(36, u.Encode(b));
        Assert.Equal("0106" + "0000" + "00000024" + "0102030405060708" + "0001" + "000000000000" + "1112131415161718" + "09" + "07" + "0000", ToHex(b));
    }

    [Theory]
    [InlineData("0106 0000 00000024 0000000000000001 0001 000000000000 0000000000000001 01 07 0001", WireError.NonZeroReserved)]
    [InlineData("0106 0000 00000024 0000000000000001 0001 000000000001 0000000000000001 01 07 0000", WireError.NonZeroReserved)]
    [InlineData("0106 0000 00000024 0000000000000001 0002 000000000000 0000000000000001 01 07 0000", WireError.BadLength)]
    [InlineData("0106 0000 00000018 0000000000000001 0101 000000000000", WireError.TooManyEntries)]
    [InlineData("0106 0000 00000030 0000000000000001 0002 000000000000 0000000000000001 01 07 0000 0000000000000002 01 07 0000", WireError.DuplicateEntry)]
    [InlineData("0106 0000 00000030 0000000000000001 0002 000000000000 0000000000000001 01 07 0000 0000000000000001 01 08 0000", WireError.DuplicateEntry)]
    public void Update_decode_rejects(string hex, WireError expected)
    {
        Assert.Equal(OperationStatus.InvalidData, ArrayTableUpdate.TryDecode(Hex(hex), out _, out _, out var error));
        Assert.Equal(expected, error);
    }

    [Fact]
    public void Full_table_round_trips() =>
        Prop.ForAll(Gen.Choose(0, 256).ToArbitrary(), n =>
        {
            var t = new ArrayTable();
            for (int i = 0; i < n; i++) t.TryAdd((ulong)i * 0x9E3779B97F4A7C15UL, (byte)(i * 7), out _);
            var back = Transmit(t.Snapshot());
            return back == t.Snapshot() && back.Entries.Count == n;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(30));
}
