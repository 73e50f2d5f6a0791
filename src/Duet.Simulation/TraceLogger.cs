using Microsoft.Extensions.Logging;

namespace Duet.Simulation;

/// <summary>Controller logs (information and above) become trace lines, tagged with the controller.</summary>
sealed class TraceLoggerFactory(SimTrace trace, string node) : ILoggerFactory
{
    public ILogger CreateLogger(string categoryName) => new TraceLogger(trace, node, categoryName[(categoryName.LastIndexOf('.') + 1)..]);
    public void AddProvider(ILoggerProvider provider) { }
    public void Dispose() { }

    sealed class TraceLogger(SimTrace trace, string node, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel)) trace.Add($"{node} {category}: {formatter(state, exception)}");
        }
    }
}
