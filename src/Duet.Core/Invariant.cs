using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Duet.Core;

/// <summary>
/// Assertions that stay on in Release. Validate at the edge with typed errors; assert inside.
/// A failed invariant means Duet's own state is wrong, so the operation stops at once
/// with <see cref="InvariantViolationException"/> rather than carrying on with bad data.
/// </summary>
public static class Invariant
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Assert([DoesNotReturnIf(false)] bool condition,
        [CallerArgumentExpression(nameof(condition))] string? expression = null)
    {
        if (!condition) Fail(expression);
    }

    [DoesNotReturn, MethodImpl(MethodImplOptions.NoInlining)]
    public static void Fail(string? expression) =>
        throw new InvariantViolationException($"invariant violated: {expression}");
}

public sealed class InvariantViolationException(string message) : Exception(message);
