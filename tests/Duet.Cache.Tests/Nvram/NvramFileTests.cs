using Duet.Cache.Nvram;

namespace Duet.Cache.Tests.Nvram;

/// <summary>Create, open, the header and its damage, the pair's layout check.</summary>
public sealed class NvramFileTests : IDisposable
{
    readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void A_created_file_opens_again_with_its_header_and_counts_every_open()
    {
        var path = _dir.File("a.nvram");
        var layout = NvramLayout.For(16L << 20);
        using (var created = NvramFile.Create(path, layout, "A", Sample.Pair))
        {
            Assert.Equal(1UL, created.Generation);
            Assert.Equal(0UL, created.Epoch);
            Assert.Equal(layout.TotalBytes, new FileInfo(path).Length);
        }
        using (var opened = NvramFile.Open(path))
        {
            Assert.Equal(layout, opened.Layout);
            Assert.Equal("A", opened.Owner);
            Assert.Equal(Sample.Pair, opened.PairId);
            Assert.Equal(2UL, opened.Generation);
            Assert.Equal(1, opened.Own.Number);
            Assert.Equal(2, opened.Peer.Number);
            Assert.Empty(opened.Own.ReplayOrder());
            Assert.Empty(opened.Peer.ReplayOrder());
        }
        using var again = NvramFile.Open(path);
        Assert.Equal(3UL, again.Generation);
    }

    [Fact]
    public void The_epoch_is_persisted_when_set()
    {
        var path = _dir.File("a.nvram");
        using (var nvram = NvramFile.Create(path, Sample.Small, "B", Sample.Pair))
            nvram.Epoch = 42;
        using var reopened = NvramFile.Open(path);
        Assert.Equal(42UL, reopened.Epoch);
    }

    [Fact]
    public void Open_or_create_creates_once_then_opens_the_same_file()
    {
        var path = _dir.File("a.nvram");
        using (var first = NvramFile.OpenOrCreate(path, Sample.Small, "A", Sample.Pair))
        {
            Assert.Equal(1UL, first.Generation);
            first.Own.Write(0, Sample.Descriptor(0, 1), Sample.Sectors(32, 1));
        }
        using var second = NvramFile.OpenOrCreate(path, Sample.Small, "A", Sample.Pair);
        Assert.Equal(2UL, second.Generation);
        Assert.Single(second.Own.ReplayOrder());
    }

    [Fact]
    public void Open_or_create_refuses_a_file_of_another_layout_owner_or_pair()
    {
        var path = _dir.File("a.nvram");
        NvramFile.Create(path, Sample.Small, "A", Sample.Pair).Dispose();

        Assert.Contains("layout", Assert.Throws<NvramException>(() => NvramFile.OpenOrCreate(path, NvramLayout.For(2L << 20), "A", Sample.Pair)).Message);
        Assert.Contains("belongs to controller 'A', not 'B'", Assert.Throws<NvramException>(() => NvramFile.OpenOrCreate(path, Sample.Small, "B", Sample.Pair)).Message);
        Assert.Contains("belongs to pair", Assert.Throws<NvramException>(() => NvramFile.OpenOrCreate(path, Sample.Small, "A", Guid.NewGuid())).Message);
    }

    [Fact]
    public void Create_refuses_an_existing_file_and_open_refuses_a_missing_one()
    {
        var path = _dir.File("a.nvram");
        NvramFile.Create(path, Sample.Small, "A", Sample.Pair).Dispose();
        Assert.Contains("already exists", Assert.Throws<NvramException>(() => NvramFile.Create(path, Sample.Small, "A", Sample.Pair)).Message);
        Assert.Contains("no such file", Assert.Throws<NvramException>(() => NvramFile.Open(_dir.File("missing.nvram"))).Message);
    }

    [Fact]
    public void A_second_open_while_the_file_is_in_use_is_refused()
    {
        var path = _dir.File("a.nvram");
        using var first = NvramFile.Create(path, Sample.Small, "A", Sample.Pair);
        var e = Assert.Throws<NvramException>(() => NvramFile.Open(path));
        Assert.Contains("another controller process", e.Message);
    }

    [Fact]
    public void Damage_to_both_header_copies_is_a_clear_error()
    {
        var path = _dir.File("a.nvram");
        NvramFile.Create(path, Sample.Small, "A", Sample.Pair).Dispose();
        FlipByte(path, 20);        // total bytes, copy A
        FlipByte(path, 512 + 20);  // total bytes, copy B

        var e = Assert.Throws<NvramException>(() => NvramFile.Open(path));
        Assert.Contains("header damaged", e.Message);
        Assert.Contains("CRC32C mismatch", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Damage_to_one_header_copy_is_survived_and_repaired()
    {
        var path = _dir.File("a.nvram");
        using (var nvram = NvramFile.Create(path, Sample.Small, "A", Sample.Pair)) nvram.Epoch = 9;
        FlipByte(path, 90); // epoch, copy A
        using (var nvram = NvramFile.Open(path))
            Assert.Equal(9UL, nvram.Epoch);
        FlipByte(path, 512 + 90); // copy B: copy A was rewritten whole by the open
        using var again = NvramFile.Open(path);
        Assert.Equal(9UL, again.Epoch);
    }

    [Fact]
    public void A_file_that_is_not_an_nvram_is_named_as_such()
    {
        var path = _dir.File("zeros.nvram");
        File.WriteAllBytes(path, new byte[1 << 20]);
        Assert.Contains("not a Duet NVRAM file", Assert.Throws<NvramException>(() => NvramFile.Open(path)).Message);

        var tiny = _dir.File("tiny.nvram");
        File.WriteAllBytes(tiny, new byte[100]);
        Assert.Contains("too short", Assert.Throws<NvramException>(() => NvramFile.Open(tiny)).Message);
    }

    [Fact]
    public void A_truncated_file_is_refused()
    {
        var path = _dir.File("a.nvram");
        NvramFile.Create(path, NvramLayout.For(2L << 20), "A", Sample.Pair).Dispose();
        using (var stream = new FileStream(path, FileMode.Open)) stream.SetLength(1L << 20);
        var e = Assert.Throws<NvramException>(() => NvramFile.Open(path));
        Assert.Contains("the file is 1048576 bytes but its header says 2097152", e.Message);
    }

    [Fact]
    public void A_header_of_another_format_version_is_refused_by_name()
    {
        var path = _dir.File("a.nvram");
        NvramFile.Create(path, Sample.Small, "A", Sample.Pair).Dispose();
        // Version 2 had no host tag tables after the write logs, version 3 no partial-parity pool: their layouts are not this one.
        foreach (var copy in new[] { 0, 512 }) RewriteHeaderCopy(path, copy, h => h[8] = 2);
        Assert.Contains("format version 2; this build reads version 4", Assert.Throws<NvramException>(() => NvramFile.Open(path)).Message);
        foreach (var copy in new[] { 0, 512 }) RewriteHeaderCopy(path, copy, h => h[8] = 3);
        Assert.Contains("format version 3; this build reads version 4", Assert.Throws<NvramException>(() => NvramFile.Open(path)).Message);
    }

    [Fact]
    public void A_header_naming_a_region_over_512_MiB_is_refused()
    {
        var path = _dir.File("a.nvram");
        NvramFile.Create(path, Sample.Small, "A", Sample.Pair).Dispose();
        // Element count 32769 (512 MiB + 16 KiB per region), CRC recomputed: a well-formed lie.
        foreach (var copy in new[] { 0, 512 }) RewriteHeaderCopy(path, copy, h => BitConverter.TryWriteBytes(h.AsSpan(28), 32769));
        var e = Assert.Throws<NvramException>(() => NvramFile.Open(path));
        Assert.Contains("impossible layout", e.Message);
    }

    [Fact]
    [Trait("Claim", "CC-1")]
    public void A_pair_with_different_layouts_refuses_to_form_and_says_why()
    {
        Assert.Null(NvramFile.CompatibilityProblem(NvramLayout.For(256L << 20), NvramLayout.For(256L << 20)));

        var problem = NvramFile.CompatibilityProblem(NvramLayout.For(16L << 20), NvramLayout.For(256L << 20));
        Assert.NotNull(problem);
        Assert.Contains("size 16 MiB vs 256 MiB", problem);
        Assert.Contains("element count 462 vs 8012", problem);
        Assert.Contains("same NVRAM layout", problem);

        // Same size, different element count: still refused.
        Assert.NotNull(NvramFile.CompatibilityProblem(NvramLayout.For(16L << 20), NvramLayout.Of(16L << 20, 100)));
    }

    [Fact]
    public void Bad_owner_names_are_refused_at_create()
    {
        Assert.Throws<ArgumentException>(() => NvramFile.Create(_dir.File("x"), Sample.Small, "", Sample.Pair));
        Assert.Throws<ArgumentException>(() => NvramFile.Create(_dir.File("y"), Sample.Small, "controller A", Sample.Pair));
        Assert.Throws<ArgumentException>(() => NvramFile.Create(_dir.File("z"), Sample.Small, new string('A', 16), Sample.Pair));
    }

    [Fact]
    public void A_disposed_file_refuses_further_use()
    {
        var nvram = NvramFile.Create(_dir.File("a.nvram"), Sample.Small, "A", Sample.Pair);
        var own = nvram.Own;
        nvram.Dispose();
        Assert.Throws<ObjectDisposedException>(() => own.Data(0));
        Assert.Throws<ObjectDisposedException>(() => own.ReplayOrder());
        Assert.Throws<ObjectDisposedException>(() => nvram.Epoch = 1);
    }

    static void FlipByte(string path, long offset)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        stream.Position = offset;
        int b = stream.ReadByte();
        stream.Position = offset;
        stream.WriteByte((byte)(b ^ 0x40));
    }

    /// <summary>Edits one 512-byte header copy and recomputes its CRC (bytes 508..511).</summary>
    static void RewriteHeaderCopy(string path, int copyOffset, Action<byte[]> edit)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        var copy = new byte[512];
        stream.Position = copyOffset;
        stream.ReadExactly(copy);
        edit(copy);
        BitConverter.TryWriteBytes(copy.AsSpan(508), Duet.Core.Crc32C.Compute(copy.AsSpan(0, 508)));
        stream.Position = copyOffset;
        stream.Write(copy);
    }
}
