using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Duet.Core;
using Duet.HostProtocol;
using Microsoft.Extensions.Logging;

namespace Duet.Adapter;

/// <summary>
/// The primary adapter's end of the AW-1 checkpoint channel: a Unix domain socket a backup adapter
/// connects to (one at a time). <see cref="BeforeAsync"/> returns once the backup acknowledged the
/// checkpoint (or at once when no backup is connected: the write is then unprotected, and logged);
/// <see cref="AfterAsync"/> returns once the frame is in the socket. A backup that connects is sent
/// the hello and then every write still unfinished, so it starts with the primary's whole table.
/// </summary>
public sealed class CheckpointPrimary : IAsyncDisposable
{
    /// <summary>Writes checkpointed and not finished at a time: a quarter of what a controller
    /// remembers (<c>CommandHandshakeOptions.FinishedRememberedMax</c>), so that a backup's re-send
    /// meets the controllers' record of a write that ran, not a forgotten one.</summary>
    public const int MaxUnfinished = 1024;

    readonly SemaphoreSlim _slots = new(MaxUnfinished, MaxUnfinished);
    readonly string _path;
    readonly CheckpointHello _hello;
    readonly ILogger _logger;
    readonly CheckpointTable _table = new();
    readonly AsyncGate _gate = new(1, 1); // orders table changes and frames
    readonly CancellationTokenSource _disposed = new();
    Socket? _listener;
    Backup? _backup;
    Task _accepting = Task.CompletedTask, _beating = Task.CompletedTask;
    long _unprotected;

    sealed class Backup(Socket socket)
    {
        public readonly Socket Socket = socket;
        public readonly NetworkStream Stream = new(socket, ownsSocket: true);
        public readonly Dictionary<ulong, TaskCompletionSource> Acks = [];
        public readonly TaskCompletionSource Lost = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <param name="time">The heartbeat's clock.</param>
    public CheckpointPrimary(string path, CheckpointHello hello, ILogger logger, TimeProvider? time = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(hello);
        _path = path;
        _hello = hello;
        _logger = logger;
        _time = time ?? TimeProvider.System;
    }

    readonly TimeProvider _time;

    public string Path => _path;

    /// <summary>Whether a backup holds the checkpoints now.</summary>
    public bool HasBackup => Volatile.Read(ref _backup) is not null;

    /// <summary>Writes sent to the pair while no backup held their checkpoint.</summary>
    public long Unprotected => Interlocked.Read(ref _unprotected);

    /// <summary>Writes with a "before" and no "after" yet.</summary>
    public int Unfinished { get { lock (_table) return _table.Count; } }

    /// <summary>Fires when a backup has the whole table (tests, status).</summary>
    public event Action? BackupJoined;

    public void Start()
    {
        if (File.Exists(_path)) File.Delete(_path); // a dead primary's socket
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(_path));
            listener.Listen(4);
        }
        catch (SocketException e)
        {
            listener.Dispose();
            throw new IOException($"checkpoint socket {_path}: {e.Message}", e);
        }
        _listener = listener;
        _accepting = AcceptAsync(listener);
        _beating = HeartbeatAsync();
    }

    async Task AcceptAsync(Socket listener)
    {
        while (!_disposed.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync(_disposed.Token);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
            {
                return;
            }
            if (HasBackup)
            {
                CheckpointLog.SecondBackupRefused(_logger, _path);
                socket.Dispose();
                continue;
            }
            var backup = new Backup(socket);
            await _gate.WaitAsync();
            try
            {
                CheckpointBefore[] unfinished;
                lock (_table) unfinished = [.. _table.Unfinished()];
                await backup.Stream.WriteAsync(CheckpointWire.Encode(_hello));
                foreach (var w in unfinished) await backup.Stream.WriteAsync(CheckpointWire.Encode(w));
                Volatile.Write(ref _backup, backup);
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                await backup.Stream.DisposeAsync();
                continue;
            }
            finally
            {
                _gate.Release();
            }
            CheckpointLog.BackupJoined(_logger, _path, unfinished: Unfinished);
            BackupJoined?.Invoke();
            _ = ReadAcksAsync(backup);
        }
    }

    async Task ReadAcksAsync(Backup backup)
    {
        var input = PipeReader.Create(backup.Stream, new StreamPipeReaderOptions(leaveOpen: true));
        string reason = "closed";
        try
        {
            while (true)
            {
                var result = await input.ReadAsync(_disposed.Token);
                var reader = new SequenceReader<byte>(result.Buffer);
                while (true)
                {
                    var status = CheckpointWire.TryRead(ref reader, out var message, out var error);
                    if (status == OperationStatus.NeedMoreData) break;
                    if (status == OperationStatus.InvalidData || message is not CheckpointAck ack) throw new InvalidDataException(error ?? $"a {message!.GetType().Name} from the backup");
                    TaskCompletionSource? waiter;
                    lock (backup.Acks) backup.Acks.Remove(ack.Tag, out waiter);
                    waiter?.TrySetResult();
                }
                input.AdvanceTo(reader.Position, result.Buffer.End);
                if (result.IsCompleted) break;
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException or InvalidDataException)
        {
            reason = e.Message;
        }
        finally
        {
            await input.CompleteAsync();
        }
        await LoseAsync(backup, reason);
    }

    async Task LoseAsync(Backup backup, string reason)
    {
        if (Interlocked.CompareExchange(ref _backup, null, backup) != backup) return;
        TaskCompletionSource[] waiting;
        lock (backup.Acks)
        {
            waiting = [.. backup.Acks.Values];
            backup.Acks.Clear();
        }
        foreach (var w in waiting) w.TrySetResult();
        backup.Lost.TrySetResult();
        await backup.Stream.DisposeAsync();
        if (!_disposed.IsCancellationRequested) CheckpointLog.BackupLost(_logger, _path, reason);
    }

    /// <summary>Records the write and returns once the backup holds it (at once without a backup).</summary>
    public async Task BeforeAsync(CheckpointBefore write, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(write);
        Task? acked = null;
        await _slots.WaitAsync(cancellationToken);
        try
        {
            await _gate.WaitAsync(cancellationToken);
        }
        catch
        {
            _slots.Release();
            throw;
        }
        try
        {
            try
            {
                lock (_table) _table.Before(write);
            }
            catch
            {
                _slots.Release();
                throw;
            }
            var backup = Volatile.Read(ref _backup);
            if (backup is not null)
            {
                var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                lock (backup.Acks) backup.Acks[write.Tag] = waiter;
                if (await TrySendAsync(backup, CheckpointWire.Encode(write))) acked = waiter.Task;
            }
        }
        finally
        {
            _gate.Release();
        }
        if (acked is null)
        {
            if (Interlocked.Increment(ref _unprotected) == 1) CheckpointLog.NoBackup(_logger, _path);
            return;
        }
        await acked; // completes on the ack, or when the backup is lost
    }

    /// <summary>Tests: an "after" for which this answers true is not sent (a primary that died before it reached the backup).</summary>
    internal Func<CheckpointAfter, bool>? DropAfterForTests { get; set; }

    /// <summary>The pair answered the write: the backup forgets it.</summary>
    public async Task AfterAsync(ulong tag, HostStatus status)
    {
        await _gate.WaitAsync();
        try
        {
            bool held;
            lock (_table) held = _table.After(tag);
            if (held) _slots.Release();
            if (DropAfterForTests?.Invoke(new CheckpointAfter(tag, status)) == true) return;
            if (Volatile.Read(ref _backup) is { } backup) await TrySendAsync(backup, CheckpointWire.Encode(new CheckpointAfter(tag, status)));
        }
        finally
        {
            _gate.Release();
        }
    }

    async Task HeartbeatAsync()
    {
        var beat = CheckpointWire.Encode(CheckpointHeartbeat.Instance);
        while (!_disposed.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(CheckpointWire.HeartbeatInterval, _time, _disposed.Token);
                await _gate.WaitAsync(_disposed.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            try
            {
                if (Volatile.Read(ref _backup) is { } backup) await TrySendAsync(backup, beat);
            }
            finally
            {
                _gate.Release();
            }
        }
    }

    /// <summary>Under the gate. False (and the backup dropped) when the socket fails.</summary>
    async ValueTask<bool> TrySendAsync(Backup backup, byte[] frame)
    {
        try
        {
            await backup.Stream.WriteAsync(frame);
            return true;
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            _ = LoseAsync(backup, e.Message);
            return false;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_disposed.IsCancellationRequested) return;
        _disposed.Cancel();
        _listener?.Dispose();
        // Before the backup hears of it: once it has, it takes over and binds the path itself.
        try { File.Delete(_path); } catch (IOException) { }
        if (Volatile.Read(ref _backup) is { } backup) await LoseAsync(backup, "stopping");
        await _accepting;
        await _beating;
    }
}

/// <summary>
/// The backup adapter's end of the AW-1 checkpoint channel: connects to the primary, applies every
/// frame to its <see cref="CheckpointTable"/>, acknowledges each "before" once it holds it, and
/// returns the <see cref="TakeoverPlan"/> when the primary is gone — its connection closed, or no
/// frame for <see cref="CheckpointWire.DeadAfter"/> (then the primary's process is killed first, so a
/// hung primary cannot wake up and write beside the backup).
/// </summary>
public sealed class CheckpointBackup : IAsyncDisposable
{
    readonly Socket _socket;
    readonly NetworkStream _stream;
    readonly ILogger _logger;
    readonly CheckpointTable _table = new();

    readonly TimeProvider _time;

    CheckpointBackup(Socket socket, ILogger logger, TimeProvider time)
    {
        _time = time;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _logger = logger;
    }

    public CheckpointHello Hello => _table.Hello!;

    /// <summary>Writes the backup holds with no "after" yet.</summary>
    public int Unfinished { get { lock (_table) return _table.Count; } }

    /// <summary>Connects (retrying while the primary is not listening yet, up to <paramref name="timeout"/>) and reads the hello.</summary>
    /// <param name="time">The clock of the connect deadline and of the primary's silence (<see cref="CheckpointWire.DeadAfter"/>).</param>
    public static async Task<CheckpointBackup> ConnectAsync(string path, TimeSpan timeout, ILogger logger, CancellationToken cancellationToken = default,
        TimeProvider? time = null)
    {
        time ??= TimeProvider.System;
        long start = time.GetTimestamp();
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken);
                var backup = new CheckpointBackup(socket, logger, time);
                await backup.ReadHelloAsync(cancellationToken);
                return backup;
            }
            catch (Exception e) when (e is SocketException or IOException or InvalidDataException)
            {
                socket.Dispose();
                if (time.GetElapsedTime(start) > timeout) throw new IOException($"no primary adapter on checkpoint socket {path}: {e.Message}", e);
                await Task.Delay(TimeSpan.FromMilliseconds(50), time, cancellationToken);
            }
        }
    }

    async Task ReadHelloAsync(CancellationToken cancellationToken)
    {
        var header = new byte[CheckpointWire.HeaderBytes + CheckpointWire.HelloBytes];
        await _stream.ReadExactlyAsync(header, cancellationToken);
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(header));
        if (CheckpointWire.TryRead(ref reader, out var message, out var error) != OperationStatus.Done || message is not CheckpointHello)
            throw new InvalidDataException($"the checkpoint channel did not open with a hello ({error})");
        lock (_table) _table.Apply(message);
        await _stream.WriteAsync(CheckpointWire.Encode(new CheckpointAck(0)), cancellationToken);
    }

    /// <summary>Holds the checkpoints until the primary is gone; then returns what to take over.</summary>
    public async Task<TakeoverPlan> WatchAsync(CancellationToken cancellationToken = default)
    {
        var input = PipeReader.Create(_stream, new StreamPipeReaderOptions(leaveOpen: true));
        string reason = "closed the checkpoint channel";
        try
        {
            while (true)
            {
                ReadResult result;
                using (var deadline = new CancellationTokenSource(CheckpointWire.DeadAfter, _time))
                using (var silence = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, deadline.Token))
                {
                    try
                    {
                        result = await input.ReadAsync(silence.Token);
                    }
                    catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                    {
                        reason = $"sent nothing for {CheckpointWire.DeadAfter.TotalMilliseconds} ms";
                        KillPrimary();
                        break;
                    }
                }
                var reader = new SequenceReader<byte>(result.Buffer);
                var acks = new List<byte[]>();
                while (true)
                {
                    var status = CheckpointWire.TryRead(ref reader, out var message, out var error);
                    if (status == OperationStatus.NeedMoreData) break;
                    if (status == OperationStatus.InvalidData) throw new InvalidDataException(error);
                    CheckpointAck? ack;
                    lock (_table) ack = _table.Apply(message!);
                    if (ack is not null) acks.Add(CheckpointWire.Encode(ack));
                }
                input.AdvanceTo(reader.Position, result.Buffer.End);
                foreach (var a in acks) await _stream.WriteAsync(a, cancellationToken);
                if (result.IsCompleted) break;
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidDataException)
        {
            reason = e.Message;
        }
        finally
        {
            await input.CompleteAsync();
        }
        TakeoverPlan plan;
        lock (_table) plan = _table.Takeover();
        CheckpointLog.PrimaryGone(_logger, Hello.ProcessId, reason, plan.Unfinished.Count);
        return plan;
    }

    void KillPrimary()
    {
        int pid = Hello.ProcessId;
        if (pid <= 0 || pid == Environment.ProcessId) return; // in-process tests
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(pid);
            process.Kill();
            process.WaitForExit(1000);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // already gone
        }
    }

    public async ValueTask DisposeAsync() => await _stream.DisposeAsync();
}

static partial class CheckpointLog
{
    [LoggerMessage(20, LogLevel.Information, "checkpoint socket {Path}: a backup adapter joined ({Unfinished} unfinished writes sent to it)")]
    public static partial void BackupJoined(ILogger logger, string path, int unfinished);

    [LoggerMessage(21, LogLevel.Warning, "checkpoint socket {Path}: lost the backup adapter ({Reason}); writes go unprotected until one joins")]
    public static partial void BackupLost(ILogger logger, string path, string reason);

    [LoggerMessage(22, LogLevel.Warning, "checkpoint socket {Path}: no backup adapter holds the checkpoints; writes go unprotected until one joins")]
    public static partial void NoBackup(ILogger logger, string path);

    [LoggerMessage(23, LogLevel.Information, "checkpoint socket {Path}: refused a second backup adapter")]
    public static partial void SecondBackupRefused(ILogger logger, string path);

    [LoggerMessage(24, LogLevel.Warning, "the primary adapter (pid {Pid}) is gone: {Reason}; taking over with {Unfinished} unfinished writes")]
    public static partial void PrimaryGone(ILogger logger, int pid, string reason, int unfinished);
}
