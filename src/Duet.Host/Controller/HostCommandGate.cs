using Duet.Core;

namespace Duet.Host.Controller;

/// <summary>
/// The host commands in flight at one controller (AW-6). Every request that reaches a volume of the
/// controller's catalog — from its NBD or iSCSI clients, from a command of Duet's host protocol, or
/// forwarded by the peer for an array served here — enters here and leaves once it is answered. A
/// power-fail window closes the gate: from then on a request is not started (it fails at once with
/// <see cref="BlockErrorKind.Unavailable"/>: nothing of it was done), and the window waits for the
/// ones already in flight to finish or fail.
///
///   open:    Enter() ─ in flight + 1 ─ ... ─ Exit(ok) ─ in flight - 1
///   Close(): no Enter() succeeds again; each Exit() from now on is an in-flight command that
///            finished (ok) or failed; WhenIdleAsync() completes when none is left.
/// </summary>
public sealed class HostCommandGate(string controller)
{
    readonly Lock _lock = new();
    int _inFlight;
    bool _closed;
    int _inFlightAtClose, _finished, _failed;
    long _refused;
    TaskCompletionSource? _idle;

    public int InFlight { get { lock (_lock) return _inFlight; } }
    public bool IsClosed { get { lock (_lock) return _closed; } }
    /// <summary>Requests that arrived after the gate closed: none of them was started.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>Admits a request, or throws Unavailable once the gate is closed.</summary>
    public void Enter()
    {
        lock (_lock)
        {
            if (!_closed)
            {
                _inFlight++;
                return;
            }
        }
        Interlocked.Increment(ref _refused);
        throw new BlockIoException(BlockErrorKind.Unavailable, $"controller {controller} is powering down: the request was not started");
    }

    /// <summary>An admitted request was answered: <paramref name="ok"/> if it succeeded.</summary>
    public void Exit(bool ok)
    {
        TaskCompletionSource? idle = null;
        lock (_lock)
        {
            Invariant.Assert(_inFlight > 0, "a host command left the gate more often than it entered");
            _inFlight--;
            if (_closed)
            {
                if (ok) _finished++;
                else _failed++;
                Invariant.Assert(_finished + _failed <= _inFlightAtClose, "a host command admitted after the gate closed");
            }
            if (_inFlight == 0)
            {
                idle = _idle;
                _idle = null;
            }
        }
        idle?.TrySetResult();
    }

    /// <summary>Closes the gate for good; returns how many commands are in flight.</summary>
    public int Close()
    {
        lock (_lock)
        {
            if (!_closed)
            {
                _closed = true;
                _inFlightAtClose = _inFlight;
            }
            return _inFlightAtClose;
        }
    }

    /// <summary>Completes when no admitted command is in flight.</summary>
    public Task WhenIdleAsync()
    {
        lock (_lock)
        {
            if (_inFlight == 0) return Task.CompletedTask;
            _idle ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idle.Task;
        }
    }

    /// <summary>Since the gate closed: commands in flight then that finished, that failed, and that are still running.</summary>
    public (int InFlightAtClose, int Finished, int Failed, int Unfinished) Outcomes()
    {
        lock (_lock)
        {
            Invariant.Assert(_closed);
            Invariant.Assert(_finished + _failed + _inFlight == _inFlightAtClose);
            return (_inFlightAtClose, _finished, _failed, _inFlight);
        }
    }
}
