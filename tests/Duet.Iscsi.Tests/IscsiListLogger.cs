using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Duet.Iscsi.Tests;

/// <summary>Keeps every log line so tests can require that bad input was logged.</summary>
public sealed class IscsiListLogger : ILogger
{
    public sealed record Entry(LogLevel Level, EventId EventId, string Message, Exception? Exception);

    public ConcurrentQueue<Entry> Entries { get; } = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
        Entries.Enqueue(new Entry(logLevel, eventId, formatter(state, exception), exception));

    public bool Has(int eventId) => Entries.Any(e => e.EventId.Id == eventId);

    public override string ToString() => string.Join("\n", Entries.Select(e => $"{e.Level} {e.EventId.Id} {e.Message} {e.Exception?.Message}"));
}
