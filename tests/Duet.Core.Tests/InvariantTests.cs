using Duet.Core;

namespace Duet.Core.Tests;

public sealed class InvariantTests
{
    sealed class Counted
    {
        public int Formatted;
        public override string ToString() { Formatted++; return "counted"; }
    }

    [Fact]
    public void An_interpolated_message_is_formatted_only_when_the_assertion_fails()
    {
        var value = new Counted();
        for (int i = 0; i < 3; i++) Invariant.Assert(i >= 0, $"i {i} is {value}");
        Assert.Equal(0, value.Formatted);

        var e = Assert.Throws<InvariantViolationException>(() => Invariant.Assert(value.Formatted > 0, $"element {7} is {value}"));
        Assert.Equal(1, value.Formatted);
        Assert.Equal("invariant violated: element 7 is counted", e.Message);
    }

    [Fact]
    public void A_plain_assertion_names_its_expression()
    {
        int pins = 0;
        var e = Assert.Throws<InvariantViolationException>(() => Invariant.Assert(pins > 0));
        Assert.Equal("invariant violated: pins > 0", e.Message);
    }
}
