namespace Duet.Cache.Nvram;

/// <summary>
/// An NVRAM file that cannot be used as asked: missing, damaged, in use, or not the one the
/// caller expected. The message names the file and says what is wrong, for the operator.
/// </summary>
public sealed class NvramException : Exception
{
    public NvramException(string message) : base(message) { }
    public NvramException(string message, Exception inner) : base(message, inner) { }
}
