using Duet.Cache.Nvram;

namespace Duet.Cache.Tests.Nvram;

/// <summary>The layout arithmetic, by hand-computed numbers, and the limits it refuses.</summary>
[Trait("Claim", "CC-1")]
public sealed class NvramLayoutTests
{
    [Theory]
    //          total MiB, elements, table bytes, table 2,   region 1,   region bytes, region 2,   used
    [InlineData(1L,         9,        4096L,       8192L,     12288L,     147456L,      159744L,    1032192L)]
    [InlineData(16L,        462,      32768L,      36864L,    69632L,     7569408L,     7639040L,   16760832L)]
    [InlineData(256L,       8012,     516096L,     520192L,   1036288L,   131268608L,   132304896L, 268423168L)]
    [InlineData(1024L,      32492,    2080768L,    2084864L,  4165632L,   532348928L,   536514560L, 1073713152L)]
    public void Layout_for_a_size_fits_as_many_whole_elements_as_the_file_holds(
        long totalMiB, int elements, long tableBytes, long table2, long region1, long regionBytes, long region2, long used)
    {
        var layout = NvramLayout.For(totalMiB << 20);

        Assert.Equal(totalMiB << 20, layout.TotalBytes);
        Assert.Equal(16384, layout.ElementBytes);
        Assert.Equal(elements, layout.ElementCount);
        Assert.Equal(tableBytes, layout.DescriptorTableBytes);
        Assert.Equal(4096L, layout.DescriptorTable1Offset);
        Assert.Equal(table2, layout.DescriptorTable2Offset);
        Assert.Equal(region1, layout.Region1Offset);
        Assert.Equal(regionBytes, layout.RegionBytes);
        Assert.Equal(region2, layout.Region2Offset);
        Assert.Equal(used, layout.UsedBytes);
        // After region 2: the two write logs (512 x 64 B), then the two host tag tables (4096 x 64 B).
        Assert.Equal(region2 + regionBytes, layout.Log1Offset);
        Assert.Equal(layout.Log1Offset + 32768, layout.Log2Offset);
        Assert.Equal(layout.Log2Offset + 32768, layout.Tags1Offset);
        Assert.Equal(layout.Tags1Offset + 262144, layout.Tags2Offset);
        // Then the partial-parity pool: half the element count (32..1024) of 64-byte descriptors, padded
        // to 4 KiB, and as many 4 KiB blocks.
        Assert.Equal(Math.Clamp(elements / 2, 32, 1024), layout.PpSlots);
        Assert.Equal(layout.Tags2Offset + 262144, layout.PpDescriptorsOffset);
        Assert.Equal(layout.PpDescriptorsOffset + (layout.PpSlots * 64 + 4095) / 4096 * 4096, layout.PpBlocksOffset);
        Assert.Equal(layout.PpBlocksOffset + layout.PpSlots * 4096L, layout.UsedBytes);
        // One more element per region would not fit.
        Assert.NotNull(NvramLayout.Problem(layout.TotalBytes, layout.ElementCount + 1));
    }

    [Theory]
    [InlineData(1L << 20)]
    [InlineData(16L << 20)]
    [InlineData(NvramLayout.DefaultTotalBytes)]
    [InlineData((1L << 30) - 4096)]
    [InlineData(1L << 30)]
    public void Every_layout_keeps_its_relationships(long totalBytes)
    {
        var layout = NvramLayout.For(totalBytes);

        Assert.Equal(0, layout.ElementBytes % 512);
        Assert.True(layout.RegionBytes <= 512L << 20);
        Assert.Equal(layout.RegionBytes, (long)layout.ElementCount * layout.ElementBytes);
        Assert.All(new[] { layout.DescriptorTable1Offset, layout.DescriptorTable2Offset, layout.Region1Offset, layout.Region2Offset, layout.TotalBytes },
            offset => Assert.Equal(0, offset % 4096));
        Assert.True(layout.DescriptorTableBytes >= layout.ElementCount * 64L);
        Assert.True(layout.DescriptorTable2Offset >= layout.DescriptorTable1Offset + layout.ElementCount * 64L);
        Assert.True(layout.Region1Offset >= layout.DescriptorTable2Offset + layout.ElementCount * 64L);
        Assert.Equal(layout.Region1Offset + layout.RegionBytes, layout.Region2Offset);
        Assert.True(layout.UsedBytes <= layout.TotalBytes);
        // The last element's MR-3 descriptor (offset / 512) fits 20 bits.
        Assert.True((layout.RegionBytes - layout.ElementBytes) / 512 < 1 << 20);
    }

    [Theory]
    [InlineData((1L << 30) + 4096)]
    [InlineData(2L << 30)]
    public void Sizes_over_one_GiB_are_refused(long totalBytes)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => NvramLayout.For(totalBytes));
        Assert.Contains("over the maximum of 1 GiB", e.Message);
    }

    [Fact]
    public void Sizes_under_the_minimum_or_not_page_multiples_are_refused()
    {
        Assert.Contains("under the minimum", Assert.Throws<ArgumentOutOfRangeException>(() => NvramLayout.For(64 << 10)).Message);
        Assert.Contains("not a multiple of 4096", Assert.Throws<ArgumentOutOfRangeException>(() => NvramLayout.For((16L << 20) + 512)).Message);
    }

    [Fact]
    public void A_region_over_512_MiB_is_refused_because_20_bit_offsets_cannot_address_it()
    {
        // 32769 elements of 16 KiB = 512 MiB + 16 KiB.
        var problem = NvramLayout.Problem(1L << 30, 32769);
        Assert.NotNull(problem);
        Assert.Contains("over the 512 MiB", problem);
        Assert.Throws<ArgumentOutOfRangeException>(() => NvramLayout.Of(1L << 30, 32769));
    }

    [Fact]
    public void An_explicit_element_count_may_be_smaller_than_what_fits()
    {
        var layout = NvramLayout.Of(16L << 20, 100);
        Assert.Equal(100, layout.ElementCount);
        Assert.Equal(100L * 16384, layout.RegionBytes);
        Assert.NotEqual(NvramLayout.For(16L << 20), layout);
    }

    [Fact]
    public void Equal_sizes_give_equal_layouts_and_describe_names_the_offsets()
    {
        Assert.Equal(NvramLayout.For(NvramLayout.DefaultTotalBytes), NvramLayout.For(256L << 20));
        var text = NvramLayout.For(16L << 20).Describe();
        Assert.Contains("NVRAM 16 MiB", text);
        Assert.Contains("462 elements", text);
        Assert.Contains("host tag tables of 4096 x 64 B at 0xe91000 and 0xed1000", text);
        Assert.Contains("partial-parity pool of 231 x (64 B + 4 KiB) at 0xf11000", text);
        Assert.Contains("0x11000", text); // region 1
    }
}
