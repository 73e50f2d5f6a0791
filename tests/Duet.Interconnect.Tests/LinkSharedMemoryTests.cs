using System.Diagnostics;
using System.IO.MemoryMappedFiles;
using Duet.Interconnect.Link;
using Xunit.Abstractions;

namespace Duet.Interconnect.Tests;

/// <summary>The contract over shared memory: two separately created mappings of each window file.</summary>
public sealed class LinkSharedMemoryTests(ITestOutputHelper output) : LinkContractTests
{
    readonly string _dir = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();

    protected override async Task<(IclLink A, IclLink B)> OpenCoreAsync(IclWindowOptions options)
    {
        string pair = "t" + Guid.NewGuid().ToString("N")[..12];
        var a = SharedMemoryIclTransport.Open(pair, "A", "B", options, directory: _dir);
        var b = SharedMemoryIclTransport.Open(pair, "B", "A", options, directory: _dir);
        await LinkTestUtil.Until(() => a.IsUp && b.IsUp);
        return (a, b);
    }

    protected override TimeSpan ShortPostTimeout => TimeSpan.FromMilliseconds(300);

    protected override Task LetTimeoutPassAsync(Task post, TimeSpan timeout) => Task.CompletedTask;

    [Fact]
    [Trait("Claim", "ICL-1")]
    public async Task The_window_files_hold_the_documented_layout_seen_through_a_third_mapping()
    {
        var (a, b) = await OpenAsync(Small);
        var sa = (SharedMemoryIclLink)a;
        Assert.True(File.Exists(sa.WindowPath));
        Assert.Equal(sa.PeerWindowPath, ((SharedMemoryIclLink)b).WindowPath);
        var rb = new Recorder();
        b.Start(rb.Handle);
        for (int i = 0; i < 3; i++) await a.PostAsync(IclSignal.MessageWithData, 1, new byte[5], new byte[7]);
        await rb.WaitForAsync(3);

        // B's window, mapped again here: the header, and the counters A (producer) and B (consumer) wrote.
        using var fs = new FileStream(sa.PeerWindowPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var mmf = MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
        using var view = mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        var bytes = new byte[fs.Length];
        view.ReadArray(0, bytes, 0, bytes.Length);
        var layout = WindowLayout.ReadHeader(bytes, out var reason);
        Assert.NotNull(layout);
        Assert.Equal(WindowLayout.From(Small), layout);
        Assert.Equal("B", WindowLayout.ReadOwner(bytes));
        Assert.Equal(3, BitConverter.ToInt64(bytes, WindowLayout.DoorbellOffset));
        int control = layout!.Commands.Control;
        Assert.Equal(3, BitConverter.ToInt64(bytes, control + WindowLayout.EntryHead));
        Assert.Equal(3, BitConverter.ToInt64(bytes, control + WindowLayout.EntryTail));
        Assert.Equal(15, BitConverter.ToInt64(bytes, control + WindowLayout.MessageHead));
        Assert.Equal(21, BitConverter.ToInt64(bytes, control + WindowLayout.DataTail));
        Assert.Equal((byte)IclSignal.MessageWithData, bytes[layout.Commands.EntriesOffset + 2 * WindowLayout.EntryBytes]);
    }

    [Fact]
    [Trait("Claim", "ICL-1")]
    [Trait("Claim", "ICL-2")]
    public async Task A_second_process_speaks_to_the_window_from_the_documented_layout_alone()
    {
        var script = Path.Combine(AppContext.BaseDirectory, "LinkCrossProcessPeer.py");
        if (!File.Exists("/usr/bin/python3") || !Directory.Exists("/dev/shm"))
        {
            output.WriteLine("python3 or /dev/shm missing: cross-process check not run");
            return;
        }
        string pair = "x" + Guid.NewGuid().ToString("N")[..12];
        var a = SharedMemoryIclTransport.Open(pair, "A", "B", Small, directory: "/dev/shm");
        await using var _a = a;
        var got = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        a.Start(async t =>
        {
            var text = System.Text.Encoding.UTF8.GetString(t.Message.Span);
            await LinkTestUtil.Until(() => a.IsUp); // the peer's window appeared just before its doorbell
            await a.PostAsync(IclSignal.Reply, t.Epoch + 1, System.Text.Encoding.UTF8.GetBytes("ack:" + text), default);
            got.TrySetResult(text);
        });
        var psi = new ProcessStartInfo("/usr/bin/python3", [script, "/dev/shm", pair]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var peer = Process.Start(psi)!;
        var stdout = peer.StandardOutput.ReadToEndAsync();
        var stderr = peer.StandardError.ReadToEndAsync();
        await peer.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        output.WriteLine(await stdout + await stderr);
        Assert.Equal(0, peer.ExitCode);
        var text = await got.Task.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.StartsWith("hello from pid ", text);
        Assert.Contains($"signal=4 epoch=78 reply=ack:{text}", await stdout);
        Assert.Equal(1, a.Counters.DoorbellsTaken);
        Assert.Equal(1, a.Counters.Received[IclSignal.Message].Transfers);
        Assert.Equal(1, a.Counters.Sent[IclSignal.Reply].Transfers);
        File.Delete(SharedMemoryIclTransport.WindowPath("/dev/shm", pair, "B"));
    }

    [Fact]
    public async Task A_disposed_peer_is_noticed_and_a_post_waiting_for_space_fails_at_once()
    {
        var slow = Small with { PostTimeout = TimeSpan.FromMinutes(5) };
        var (a, b) = await OpenAsync(slow);
        var changes = new List<bool>();
        a.UpChanged += up => { lock (changes) changes.Add(up); };
        // B takes nothing: fill its command queue, then one more post has to wait for space.
        for (int i = 0; i < slow.QueueEntries; i++) await a.PostAsync(IclSignal.Message, 1, new byte[8], default);
        var waiting = a.PostAsync(IclSignal.Message, 1, new byte[8], default).AsTask();
        Assert.False(waiting.IsCompleted);
        await b.DisposeAsync();
        // Well within the 5 minute PostTimeout: the waiting post fails because the link went down.
        await Assert.ThrowsAsync<IclLinkDownException>(() => waiting.WaitAsync(TimeSpan.FromSeconds(30)));
        await LinkTestUtil.Until(() => !a.IsUp);
        await LinkTestUtil.Until(() => { lock (changes) return changes.Count > 0; });
        lock (changes) Assert.Equal([false], changes);
        await Assert.ThrowsAsync<IclLinkDownException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default).AsTask());
    }

    [Fact]
    public async Task A_re_created_peer_pairs_again_and_transfers_flow_both_ways_without_leftovers()
    {
        string pair = "t" + Guid.NewGuid().ToString("N")[..12];
        await using var a = SharedMemoryIclTransport.Open(pair, "A", "B", Small, directory: _dir);
        var b1 = SharedMemoryIclTransport.Open(pair, "B", "A", Small, directory: _dir);
        await LinkTestUtil.Until(() => a.IsUp && b1.IsUp);
        // Neither end takes anything in B1's session: A's posts die with B1's window, and B1's post
        // left in A's window is dropped before the next session begins.
        for (int i = 0; i < 3; i++) await a.PostAsync(IclSignal.Message, 1, new byte[] { 1 }, default);
        await b1.PostAsync(IclSignal.Message, 1, new byte[] { 0xB1 }, default);
        Assert.Equal(1, a.PendingTransfers);
        await b1.DisposeAsync();
        await LinkTestUtil.Until(() => !a.IsUp);

        await using var b2 = SharedMemoryIclTransport.Open(pair, "B", "A", Small, directory: _dir);
        var rb = new Recorder();
        b2.Start(rb.Handle);
        await LinkTestUtil.Until(() => a.IsUp && b2.IsUp);
        Assert.Equal(2, a.Sessions);
        var ra = new Recorder();
        a.Start(ra.Handle);
        for (int i = 0; i < 2 * Small.QueueEntries; i++)
            await a.PostAsync(IclSignal.MessageWithData, 2, new byte[] { (byte)i }, LinkTestUtil.Bytes(1000, i));
        await b2.PostAsync(IclSignal.Message, 2, new byte[] { 0xB2 }, default);
        await rb.WaitForAsync(2 * Small.QueueEntries);
        await ra.WaitForAsync(1);
        Assert.All(rb.Items, r => Assert.Equal(2UL, r.Epoch)); // nothing of B1's session reached B2
        Assert.Equal(Enumerable.Range(0, 2 * Small.QueueEntries).Select(i => (byte)i), rb.Items.Select(r => r.Message[0]));
        Assert.Equal([0xB2], ra.Items.Select(r => r.Message[0]));
        Assert.Equal(1, a.Counters.TransfersDropped);
    }

    [Fact]
    public async Task A_killed_peer_process_is_noticed_though_its_window_file_stays()
    {
        var script = Path.Combine(AppContext.BaseDirectory, "LinkCrossProcessPeer.py");
        if (!File.Exists("/usr/bin/python3") || !Directory.Exists("/dev/shm"))
        {
            output.WriteLine("python3 or /dev/shm missing: cross-process check not run");
            return;
        }
        string pair = "x" + Guid.NewGuid().ToString("N")[..12];
        await using var a = SharedMemoryIclTransport.Open(pair, "A", "B", Small, directory: "/dev/shm");
        a.Start(_ => ValueTask.CompletedTask);
        var psi = new ProcessStartInfo("/usr/bin/python3", [script, "/dev/shm", pair, "hold"]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var peer = Process.Start(psi)!;
        var peerWindow = SharedMemoryIclTransport.WindowPath("/dev/shm", pair, "B");
        try
        {
            await LinkTestUtil.Until(() => a.IsUp, 30);
            peer.Kill();
            await peer.WaitForExitAsync();
            await LinkTestUtil.Until(() => !a.IsUp, 30);
            Assert.True(File.Exists(peerWindow)); // noticed by the owner's pid, not by the file
            await Assert.ThrowsAsync<IclLinkDownException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default).AsTask());
            // A restarted B (here in this process) replaces the stale window and pairs.
            await using var b2 = SharedMemoryIclTransport.Open(pair, "B", "A", Small, directory: "/dev/shm");
            var rb = new Recorder();
            b2.Start(rb.Handle);
            await LinkTestUtil.Until(() => a.IsUp && b2.IsUp, 30);
            await a.PostAsync(IclSignal.Message, 3, new byte[] { 42 }, default);
            await rb.WaitForAsync(1);
            Assert.Equal(42, rb.Items.Single().Message[0]);
        }
        finally
        {
            if (!peer.HasExited) peer.Kill();
            File.Delete(peerWindow);
        }
    }

    /// <summary>FO-7: the proof a takeover may skip the lease wait on. Not while the peer process runs, nor while it is
    /// only stopped (a hang); once it is killed, yes; not while the peer's window names a live process (a later
    /// controller process, which may come to hold a lease); yes again once that one is gone too.</summary>
    [Fact]
    [Trait("Claim", "FO-7")]
    public async Task The_link_proves_a_killed_peer_process_gone_only_while_no_live_process_holds_its_window()
    {
        var script = Path.Combine(AppContext.BaseDirectory, "LinkCrossProcessPeer.py");
        if (!File.Exists("/usr/bin/python3") || !Directory.Exists("/dev/shm") || !File.Exists("/bin/sleep"))
        {
            output.WriteLine("python3, sleep or /dev/shm missing: cross-process check not run");
            return;
        }
        string pair = "x" + Guid.NewGuid().ToString("N")[..12];
        await using var a = SharedMemoryIclTransport.Open(pair, "A", "B", Small, directory: "/dev/shm");
        a.Start(_ => ValueTask.CompletedTask);
        Assert.False(a.PeerProcessGone); // never paired
        var psi = new ProcessStartInfo("/usr/bin/python3", [script, "/dev/shm", pair, "hold"]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var peer = Process.Start(psi)!;
        using var later = Process.Start(new ProcessStartInfo("/bin/sleep", ["60"]))!;
        var peerWindow = SharedMemoryIclTransport.WindowPath("/dev/shm", pair, "B");
        try
        {
            await LinkTestUtil.Until(() => a.IsUp, 30);
            Assert.False(a.PeerProcessGone);
            Signal(peer.Id, "STOP");
            await Task.Delay(3 * SharedMemoryIclLink.ProbeInterval);
            Assert.False(a.PeerProcessGone); // stopped is not gone
            Signal(peer.Id, "CONT");
            peer.Kill();
            await peer.WaitForExitAsync();
            await LinkTestUtil.Until(() => a.PeerProcessGone, 30);

            // The window now names a live process (its session nonce is the dead one's, so this end does not pair
            // with it): a later controller process may hold a lease, so nothing is proven.
            using (var f = new FileStream(peerWindow, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete))
            {
                var identity = new byte[12];
                BitConverter.TryWriteBytes(identity.AsSpan(0, 4), later.Id);
                f.Position = WindowLayout.OwnerPidOffset;
                f.Write(identity, 0, 4);
                BitConverter.TryWriteBytes(identity.AsSpan(4, 8), StartTime(later.Id));
                f.Position = WindowLayout.OwnerStartOffset;
                f.Write(identity, 4, 8);
            }
            Assert.False(a.PeerProcessGone);
            later.Kill();
            await later.WaitForExitAsync();
            Assert.True(a.PeerProcessGone);
            File.Delete(peerWindow);
            Assert.True(a.PeerProcessGone); // no window at all
        }
        finally
        {
            if (!peer.HasExited) peer.Kill();
            if (!later.HasExited) later.Kill();
            File.Delete(peerWindow);
        }

        static void Signal(int pid, string signal)
        {
            using var kill = Process.Start(new ProcessStartInfo("/bin/kill", [$"-{signal}", pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]))!;
            kill.WaitForExit();
            Assert.Equal(0, kill.ExitCode);
        }

        // Field 22 of /proc/{pid}/stat, counted after the command name's closing parenthesis.
        static long StartTime(int pid)
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[19], System.Globalization.CultureInfo.InvariantCulture);
        }
    }

    [Fact]
    public async Task Disposing_removes_the_own_window_file()
    {
        string pair = "t" + Guid.NewGuid().ToString("N")[..12];
        var a = SharedMemoryIclTransport.Open(pair, "A", "B", Small, directory: _dir);
        Assert.False(a.IsUp); // no peer yet
        await Assert.ThrowsAsync<IclLinkDownException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default).AsTask());
        var path = a.WindowPath;
        Assert.True(File.Exists(path));
        await a.DisposeAsync();
        Assert.False(File.Exists(path));
    }

    [Fact]
    [Trait("Claim", "ICL-4")]
    public async Task Space_is_announced_to_the_producer_only_while_it_waits_for_some()
    {
        var (a, b) = await OpenAsync(Small);
        var rb = new Recorder();
        b.Start(rb.Handle);
        // Room to spare all the way: B frees every transfer it takes and tells A nothing.
        for (int i = 0; i < 4 * Small.QueueEntries; i++)
        {
            await a.PostAsync(IclSignal.MessageWithData, 1, BitConverter.GetBytes(i), new byte[100]);
            await rb.WaitForAsync(i + 1);
        }
        Assert.Equal(0, b.Counters.SpaceNotificationsSent);

        // A full queue: the post that waits says so, and B's next release wakes it.
        var (c, d) = await OpenAsync(Small);
        var rd = new Recorder(blocked: true);
        d.Start(rd.Handle);
        for (int i = 0; i < Small.QueueEntries; i++) await c.PostAsync(IclSignal.Message, 1, BitConverter.GetBytes(i), default);
        var waiting = c.PostAsync(IclSignal.Message, 1, BitConverter.GetBytes(Small.QueueEntries), default).AsTask();
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);
        rd.Release();
        await waiting.WaitAsync(TimeSpan.FromSeconds(20));
        await rd.WaitForAsync(Small.QueueEntries + 1);
        Assert.InRange(d.Counters.SpaceNotificationsSent, 1, Small.QueueEntries + 1);
        Assert.Equal(Enumerable.Range(0, Small.QueueEntries + 1), rd.Items.Select(x => BitConverter.ToInt32(x.Message)));
        Assert.Equal(0, c.Counters.PostTimeouts);
    }

    [Fact]
    [Trait("Claim", "ICL-2")]
    public async Task A_handler_that_does_not_wait_runs_on_the_link_thread_and_one_that_waits_keeps_the_order()
    {
        var (a, b) = await OpenAsync(Small);
        var threads = new List<string?>();
        bool waitSome = false;
        var rb = new Recorder
        {
            OnReceived = async r =>
            {
                int i = BitConverter.ToInt32(r.Message);
                lock (threads) threads.Add(Thread.CurrentThread.Name);
                if (Volatile.Read(ref waitSome) && i % 3 == 1) await Task.Delay(1); // every third handler waits: the rest follow it, in order
            },
        };
        b.Start(rb.Handle);
        // One at a time, handlers that do not wait: the doorbell's thread takes them itself (the pump on the
        // thread pool is idle; only the first few may race its first looks).
        const int alone = 20;
        for (int i = 0; i < alone; i++)
        {
            await a.PostAsync(IclSignal.Message, 1, BitConverter.GetBytes(i), default);
            await rb.WaitForAsync(i + 1);
        }
        lock (threads) Assert.True(threads.Count(t => t == "icl-B") >= alone / 2, string.Join(", ", threads));

        // Then a stream in which some handlers wait: the pump carries on from them, and the order holds.
        Volatile.Write(ref waitSome, true);
        const int n = 60;
        for (int i = alone; i < alone + n; i++) await a.PostAsync(IclSignal.Message, 1, BitConverter.GetBytes(i), default);
        await rb.WaitForAsync(alone + n);
        Assert.Equal(Enumerable.Range(0, alone + n), rb.Items.Select(x => BitConverter.ToInt32(x.Message)));
    }

    [Fact]
    public async Task A_handler_may_dispose_its_own_link_while_it_runs_on_the_link_thread()
    {
        var (a, b) = await OpenAsync(Small);
        var disposed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        b.Start(async t =>
        {
            await b.DisposeAsync();
            disposed.TrySetResult();
        });
        await a.PostAsync(IclSignal.Message, 1, new byte[8], default);
        await disposed.Task.WaitAsync(TimeSpan.FromSeconds(20));
        await LinkTestUtil.Until(() => !a.IsUp);
        Assert.False(File.Exists(((SharedMemoryIclLink)b).WindowPath));
        await Assert.ThrowsAsync<IclLinkDownException>(() => a.PostAsync(IclSignal.Message, 1, new byte[1], default).AsTask());
    }

    [Fact]
    [Trait("Claim", "ICL-2")]
    public async Task Round_trip_latency_of_a_small_transfer_and_its_reply()
    {
        var (a, b) = await OpenAsync(IclWindowOptions.Default);
        var figure = await LinkLatency.MeasureAsync(a, b, 5000);
        output.WriteLine($"shm: {figure} (futex: {SharedMemoryIclLink.FutexAvailable})");
        Console.WriteLine($"LATENCY shm: {figure} (futex: {SharedMemoryIclLink.FutexAvailable})");
    }
}

/// <summary>Informal round-trip figures (printed, not asserted).</summary>
public static class LinkLatency
{
    public static async Task<string> MeasureAsync(IIclLink a, IIclLink b, int rounds)
    {
        var reply = new SemaphoreSlim(0);
        b.Start(async t =>
        {
            if (t.Signal != IclSignal.Reply) await b.PostAsync(IclSignal.Reply, t.Epoch, t.Message, default);
        });
        a.Start(t => { reply.Release(); return ValueTask.CompletedTask; });
        var message = new byte[64];
        var samples = new double[rounds];
        for (int i = -500; i < rounds; i++) // 500 warm-up rounds
        {
            long start = Stopwatch.GetTimestamp();
            await a.PostAsync(IclSignal.Message, 1, message, default);
            await reply.WaitAsync(TimeSpan.FromSeconds(10));
            if (i >= 0) samples[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }
        Array.Sort(samples);
        return $"64 B message + reply round trip over {rounds} rounds: median {samples[rounds / 2]:F1} us, p99 {samples[rounds * 99 / 100]:F1} us, mean {samples.Average():F1} us";
    }
}
