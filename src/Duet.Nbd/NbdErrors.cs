using Duet.Core;

namespace Duet.Nbd;

public static class NbdErrors
{
    /// <summary>A volume's typed failure as the NBD error the spec asks for (docs/internals/nbd.md):
    /// out-of-range writes are ENOSPC, other out-of-range requests EINVAL.</summary>
    public static NbdError FromBlockError(BlockErrorKind kind, NbdCommand command) => kind switch
    {
        BlockErrorKind.Io => NbdError.Io,
        BlockErrorKind.Medium => NbdError.Io,
        BlockErrorKind.Unavailable => NbdError.Io,
        BlockErrorKind.OutOfRange => command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpc : NbdError.Inval,
        BlockErrorKind.Invalid => NbdError.Inval,
        BlockErrorKind.ReadOnly => NbdError.Perm,
        _ => NbdError.Io,
    };
}
