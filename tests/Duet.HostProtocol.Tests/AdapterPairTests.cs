using System.Net;
using Duet.Adapter;
using Microsoft.Extensions.Logging.Abstractions;
using RawNbd = Duet.HostProtocol.Tests.HostAdapterTests.RawNbd;

namespace Duet.HostProtocol.Tests;

/// <summary>
/// AW-1 in process: a primary and a backup <see cref="HostAdapter"/> over one checkpoint socket, in
/// front of an in-process pair (<see cref="TcpPair"/>). The primary "dies" by being disposed: its
/// checkpoint channel closes first, with no "after" for what it still had in flight, as on a crash.
/// Real processes and kill -9 are in Duet.Interop.Tests' AdapterProcessTests.
/// </summary>
[Trait("Claim", "AW-1")]
public sealed class AdapterPairTests : IDisposable
{
    readonly string _socket = Path.Combine(Path.GetTempPath(), $"duet-pair-test-{Guid.NewGuid():N}.ckpt");

    public void Dispose()
    {
        if (File.Exists(_socket)) File.Delete(_socket);
    }

    static byte[] Pattern(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed * 31 + i))];

    async Task<(HostAdapter Primary, HostAdapter Backup)> StartPairAsync(TcpPair tcp)
    {
        HostAdapterOptions Options(AdapterRole role, IPEndPoint endpoint) => new()
        {
            Endpoint = endpoint, Units = [tcp.A[0].LocalEndPoint, tcp.B[0].LocalEndPoint],
            Pair = new AdapterPairOptions { Role = role, CheckpointSocket = _socket, ConnectTimeout = TimeSpan.FromSeconds(10) },
        };
        var primary = new HostAdapter(Options(AdapterRole.Primary, new IPEndPoint(IPAddress.Loopback, 0)), NullLoggerFactory.Instance);
        await primary.StartAsync();
        var backup = new HostAdapter(Options(AdapterRole.Backup, primary.LocalEndPoint), NullLoggerFactory.Instance);
        await backup.StartAsync();
        await tcp.Pair.UntilAsync(() => primary.Checkpoints!.HasBackup, "the backup to join");
        Assert.Equal(primary.HostId, backup.HostId); // one host to the pair
        return (primary, backup);
    }

    static async Task TookOverAsync(HostAdapter backup) => await backup.TookOver.WaitAsync(TimeSpan.FromSeconds(20));

    [Fact]
    public async Task Backup_completes_a_write_the_primary_died_with_under_its_tag_and_the_pair_runs_it_once()
    {
        await using var tcp = await TcpPair.StartAsync();
        var (primary, backup) = await StartPairAsync(tcp);
        await using var _ = backup;
        var endpoint = primary.LocalEndPoint;
        var w1 = Pattern(8192, 1);
        using (var client = await RawNbd.ConnectAsync(endpoint, TestPair.VolumeName))
        {
            Assert.Equal(0u, await client.WriteAsync(1, 65536, Pattern(4096, 9)));
            await tcp.Pair.UntilAsync(() => backup.BackupHolds == 0, "the backup to forget the finished write");

            // W1 reaches both controllers and hangs in A (the primary controller).
            tcp.Pair.HoldA = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            await client.SendWriteAsync(2, 0, w1);
            await tcp.Pair.UntilAsync(() => backup.BackupHolds == 1 && tcp.Pair.A.Counters.ExecutedAsPrimary == 2, "W1 checkpointed and running at A");
            long executed = tcp.Pair.A.Counters.ExecutedAsPrimary; // W1's run has started (it waits in Execute)
            long duplicates = tcp.Pair.A.Counters.Duplicates;

            // The primary dies with W1 unfinished. The backup takes over the endpoint and re-sends
            // W1 under its own tag: A merges it with the copy it runs.
            var dying = primary.DisposeAsync().AsTask();
            await tcp.Pair.UntilAsync(() => tcp.Pair.A.Counters.Duplicates > duplicates, "the re-sent W1 to meet the queued one");
            Assert.False(backup.TookOver.IsCompleted); // it serves only once W1 has its answer
            tcp.Pair.HoldA.SetResult();
            await TookOverAsync(backup);
            await dying;
            Assert.Equal(1, backup.Reissued);
            Assert.Equal(executed, tcp.Pair.A.Counters.ExecutedAsPrimary); // run once
            Assert.Equal(0, tcp.Pair.B.Counters.ExecutedAfterTakeover);
            Assert.Equal(AdapterRole.Primary, backup.Role);
            Assert.Equal(1, backup.Generation);
        }

        // The client reconnects to the same endpoint: the backup serves it.
        Assert.Equal(endpoint, backup.LocalEndPoint);
        using var again = await RawNbd.ConnectAsync(endpoint, TestPair.VolumeName);
        Assert.Equal(0u, await again.ReadAsync(3, 0, w1.Length, out var back));
        Assert.Equal(w1, back);
        var w2 = Pattern(4096, 2);
        Assert.Equal(0u, await again.WriteAsync(4, 4096, w2));
        Assert.Equal(0u, await again.ReadAsync(5, 4096, 4096, out back));
        Assert.Equal(w2, back);
    }

    [Fact]
    public async Task A_resent_write_whose_after_was_lost_never_clobbers_a_later_acknowledged_write_over_it()
    {
        await using var tcp = await TcpPair.StartAsync();
        var (primary, backup) = await StartPairAsync(tcp);
        await using var _ = backup;
        var endpoint = primary.LocalEndPoint;
        int dropped = 0;
        primary.Checkpoints!.DropAfterForTests = _ => Interlocked.Exchange(ref dropped, 1) == 0;
        var (w1, w2) = (Pattern(4096, 1), Pattern(4096, 2));
        using (var client = await RawNbd.ConnectAsync(endpoint, TestPair.VolumeName))
        {
            // W1 completes at the pair, but its "after" never reaches the backup: unfinished there.
            Assert.Equal(0u, await client.WriteAsync(1, 0, w1));
            // W2 over the same blocks, acknowledged to the client.
            Assert.Equal(0u, await client.WriteAsync(2, 0, w2));
            await tcp.Pair.UntilAsync(() => backup.BackupHolds == 1, "only W1 left unfinished at the backup");
        }
        long executed = tcp.Pair.A.Counters.ExecutedAsPrimary;
        Assert.Equal(2, executed);

        // The primary dies. The backup re-sends W1 under W1's tag: the pair answers it from memory
        // (A from its completion, B from the status its "completed" carried) and runs nothing.
        await primary.DisposeAsync();
        await TookOverAsync(backup);
        Assert.Equal(1, backup.Reissued);
        Assert.Equal(executed, tcp.Pair.A.Counters.ExecutedAsPrimary);
        Assert.Equal(0, tcp.Pair.B.Counters.ExecutedAfterTakeover);
        Assert.True(tcp.Pair.A.Counters.Duplicates + tcp.Pair.B.Counters.Duplicates >= 1);

        using var again = await RawNbd.ConnectAsync(endpoint, TestPair.VolumeName);
        Assert.Equal(0u, await again.ReadAsync(3, 0, 4096, out var back));
        Assert.Equal(w2, back); // not W1
    }

    [Fact]
    public async Task A_backup_that_joins_late_gets_every_unfinished_write_and_a_pair_stopped_backup_first_does_not_fail_over()
    {
        await using var tcp = await TcpPair.StartAsync();
        var (primary, backup) = await StartPairAsync(tcp);
        await using var _ = primary;
        tcp.Pair.HoldA = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var client = await RawNbd.ConnectAsync(primary.LocalEndPoint, TestPair.VolumeName);
        await client.SendWriteAsync(1, 0, Pattern(4096, 1));
        await tcp.Pair.UntilAsync(() => backup.BackupHolds == 1, "W1 at the backup");

        // The backup goes away: the primary carries on unprotected, then a new backup joins and is
        // sent the write still unfinished.
        await backup.DisposeAsync();
        await tcp.Pair.UntilAsync(() => !primary.Checkpoints!.HasBackup, "the primary to notice");
        Assert.False(backup.TookOver.IsCompleted && !backup.TookOver.IsCanceled);
        await using var second = new HostAdapter(new HostAdapterOptions
        {
            Endpoint = primary.LocalEndPoint, Units = [tcp.A[0].LocalEndPoint, tcp.B[0].LocalEndPoint],
            Pair = new AdapterPairOptions { Role = AdapterRole.Backup, CheckpointSocket = _socket },
        }, NullLoggerFactory.Instance);
        await second.StartAsync();
        await tcp.Pair.UntilAsync(() => second.BackupHolds == 1, "the new backup to hold W1");
        tcp.Pair.HoldA.SetResult();
        Assert.Equal((1UL, 0u), await client.ReadReplyAsync());
        await tcp.Pair.UntilAsync(() => second.BackupHolds == 0, "the new backup to forget W1");
        Assert.Equal(0, primary.Checkpoints!.Unfinished);
    }
}
