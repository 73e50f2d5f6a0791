using Duet.Interconnect.Wire;

namespace Duet.Interconnect.Tests;

[Trait("Claim", "MR-4")]
public class MirrorPathChooserTests
{
    static SgElement E(uint descriptor, uint blocks) => new(descriptor * 512, blocks * 512);

    static MirrorPathDecision Choose(IReadOnlyList<SgElement> elements, bool errorRecovery = false, bool peerInitialised = true, ulong lba = 0x1000) =>
        MirrorPathChooser.Choose(elements, errorRecovery, peerInitialised, lba);

    [Fact]
    public void One_element_of_512_bytes_goes_small() =>
        Assert.Equal(MirrorPath.Small, Choose([E(0x31234, 1)]).Path);

    [Fact]
    public void Two_full_elements_32_KiB_go_small() =>
        Assert.Equal(MirrorPath.Small, Choose([E(0x10000, 32), E(0x1FFE0, 32)]).Path);

    [Fact]
    public void Three_elements_go_large_even_when_tiny()
    {
        var d = Choose([E(0, 1), E(1, 1), E(2, 1)]);
        Assert.Equal(MirrorPath.Large, d.Path);
        Assert.Contains("3 S/G elements", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Error_recovery_mode_goes_large()
    {
        var d = Choose([E(0, 8)], errorRecovery: true);
        Assert.Equal(MirrorPath.Large, d.Path);
        Assert.Contains("error-recovery", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void An_uninitialised_peer_goes_large()
    {
        var d = Choose([E(0, 8)], peerInitialised: false);
        Assert.Equal(MirrorPath.Large, d.Path);
        Assert.Contains("array table", d.Reason, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0x0FFFFu, 0x10000u, MirrorPath.Large)]
    [InlineData(0x10000u, 0x1FFFFu, MirrorPath.Small)]
    [InlineData(0xF0000u, 0xFFFE0u, MirrorPath.Small)]
    [InlineData(0x00000u, 0xF0000u, MirrorPath.Large)]
    public void Descriptors_must_share_their_upper_four_bits(uint d1, uint d2, MirrorPath expected)
    {
        var d = Choose([E(d1, 1), E(d2, 1)]);
        Assert.Equal(expected, d.Path);
        if (expected == MirrorPath.Large) Assert.Contains("upper four bits", d.Reason, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0xFFFF_FFFFUL, MirrorPath.Small)]
    [InlineData(0x1_0000_0000UL, MirrorPath.Large)]
    [InlineData(0UL, MirrorPath.Small)]
    [InlineData(ulong.MaxValue, MirrorPath.Large)]
    public void The_starting_LBA_must_fit_32_bits(ulong lba, MirrorPath expected) =>
        Assert.Equal(expected, Choose([E(0, 8)], lba: lba).Path);

    [Theory]
    [InlineData(0xFFFFFu, 1u, MirrorPath.Small)]
    [InlineData(0x100000u, 1u, MirrorPath.Large)]
    [InlineData(0u, 32u, MirrorPath.Small)]
    [InlineData(0u, 33u, MirrorPath.Large)]
    public void Elements_the_12_bytes_cannot_say_go_large(uint descriptor, uint blocks, MirrorPath expected) =>
        Assert.Equal(expected, Choose([E(descriptor, blocks)]).Path);

    [Fact]
    public void Unaligned_elements_go_large()
    {
        Assert.Equal(MirrorPath.Large, Choose([new SgElement(100, 512)]).Path);
        Assert.Equal(MirrorPath.Large, Choose([new SgElement(0, 700)]).Path);
    }

    [Fact]
    public void Figure_7_tests_run_in_order_the_element_count_first()
    {
        // Everything is wrong: the reason names the first test of the figure.
        var d = MirrorPathChooser.Choose([E(0, 1), E(0x10000, 1), E(0x20000, 1)], errorRecovery: true, peerInitialised: false, lba: ulong.MaxValue);
        Assert.Contains("S/G elements", d.Reason, StringComparison.Ordinal);
        d = MirrorPathChooser.Choose([E(0, 1), E(0x10000, 1)], errorRecovery: true, peerInitialised: false, lba: ulong.MaxValue);
        Assert.Contains("error-recovery", d.Reason, StringComparison.Ordinal);
        d = MirrorPathChooser.Choose([E(0, 1), E(0x10000, 1)], errorRecovery: false, peerInitialised: false, lba: ulong.MaxValue);
        Assert.Contains("not initialised", d.Reason, StringComparison.Ordinal);
        d = MirrorPathChooser.Choose([E(0, 1), E(0x10000, 1)], errorRecovery: false, peerInitialised: true, lba: ulong.MaxValue);
        Assert.Contains("upper four bits", d.Reason, StringComparison.Ordinal);
        d = MirrorPathChooser.Choose([E(0, 1), E(0x1, 1)], errorRecovery: false, peerInitialised: true, lba: ulong.MaxValue);
        Assert.Contains("32 bits", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void A_small_decision_can_always_be_encoded()
    {
        var elements = new[] { E(0x5FFF0, 16), E(0x50010, 32) };
        Assert.Equal(MirrorPath.Small, Choose(elements, lba: 77).Path);
        var m = SmallWriteMirrorMessage.Create(0xA0, elements[0].NvramOffset, 16, elements[1].NvramOffset, 32, 1, 77);
        Assert.Equal(elements, m.Elements);
    }

    [Fact]
    public void No_elements_is_a_caller_error() =>
        Assert.Throws<ArgumentException>(() => Choose([]));
}
