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
    public static void Fail(string? expression) => throw Violation($"invariant violated: {expression}");

    /// <summary>
    /// Counts a violation and tells <see cref="Violated"/>, then returns the exception to throw. Every violation
    /// goes through here, so none is silent even when whoever awaits it is gone: a fire-and-forget task that ends
    /// on one leaves an unobserved task and nothing else (the host-tag pump of 2026-12-07 died that way, and every
    /// host command waited out a time limit for as long as the process ran).
    /// </summary>
    public static InvariantViolationException Violation(string message)
    {
        Interlocked.Increment(ref s_violations);
        Volatile.Write(ref s_last, message);
        if (t_violations++ == 0) t_first = message;
        try { Violated?.Invoke(message); }
        catch { /* a failing listener must not hide the violation */ }
        return new InvariantViolationException(message);
    }

    static long s_violations;
    static string? s_last;
    [ThreadStatic] static long t_violations;
    [ThreadStatic] static string? t_first;

    /// <summary>Violations in this process so far, caught or not.</summary>
    public static long Violations => Interlocked.Read(ref s_violations);
    /// <summary>The latest violation's message, or null.</summary>
    public static string? LastViolation => Volatile.Read(ref s_last);
    /// <summary>Violations on this thread so far, and the first one's message (the simulator runs a seed on one thread).</summary>
    public static (long Count, string? First) ViolationsOnThisThread => (t_violations, t_first);
    /// <summary>Starts this thread's count again (the simulator, before a seed).</summary>
    public static void ResetThisThread() => (t_violations, t_first) = (0, null);

    /// <summary>Told each violation's message before it is thrown (a controller process logs it as critical).</summary>
    public static event Action<string>? Violated;

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
