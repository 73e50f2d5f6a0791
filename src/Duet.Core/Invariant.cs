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

    /// <summary>An assertion with an interpolated message: the message is formatted only when the condition
    /// is false (these asserts sit on the write path, where a string per call was most of a write's garbage).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Assert([DoesNotReturnIf(false)] bool condition,
        [InterpolatedStringHandlerArgument(nameof(condition))] ref MessageHandler message)
    {
        if (!condition) Fail(message.ToStringAndClear());
    }

    [DoesNotReturn, MethodImpl(MethodImplOptions.NoInlining)]
    public static void Fail(string? expression) =>
        throw new InvariantViolationException($"invariant violated: {expression}");

    /// <summary>Builds an assertion's message only when its condition failed.</summary>
    [InterpolatedStringHandler]
    public ref struct MessageHandler
    {
        DefaultInterpolatedStringHandler _inner;
        readonly bool _build;

        public MessageHandler(int literalLength, int formattedCount, bool condition, out bool shouldAppend)
        {
            _build = shouldAppend = !condition;
            _inner = _build ? new DefaultInterpolatedStringHandler(literalLength, formattedCount) : default;
        }

        public void AppendLiteral(string value) => _inner.AppendLiteral(value);
        public void AppendFormatted<T>(T value) => _inner.AppendFormatted(value);
        public void AppendFormatted<T>(T value, string? format) => _inner.AppendFormatted(value, format);
        public void AppendFormatted(string? value) => _inner.AppendFormatted(value);

        public string ToStringAndClear() => _build ? _inner.ToStringAndClear() : "";
    }
}

public sealed class InvariantViolationException(string message) : Exception(message);
