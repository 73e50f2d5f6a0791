using System.Buffers.Binary;
using System.Diagnostics.Metrics;
using System.Text;

namespace Duet.Nbd.Tests;

[Trait("Area", "Nbd")]
public class NbdServerTests
{
    private static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [Fact]
    public async Task GoDescribesTheExportWithSizeFlagsBlockSizesNameAndDescription()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.ConnectAsync(f.EndPoint);
        Assert.Equal(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes, client.ServerFlags);
        var replies = await client.OptionListAsync(NbdOption.Go,
            NbdTestClient.ExportData("vol", NbdInfo.Name, NbdInfo.Description, NbdInfo.BlockSize));
        Assert.Equal(NbdOptionReply.Ack, replies[^1].Header.Type);
        var infos = replies.Where(r => r.Header.Type == NbdOptionReply.Info)
            .ToDictionary(r => (NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(r.Data), r => r.Data[2..]);
        Assert.Equal((ulong)(16 << 20), BinaryPrimitives.ReadUInt64BigEndian(infos[NbdInfo.Export]));
        var flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(infos[NbdInfo.Export].AsSpan(8));
        Assert.Equal(NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua
                     | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.CanMultiConn, flags);
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32BigEndian(infos[NbdInfo.BlockSize]));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(infos[NbdInfo.BlockSize].AsSpan(4)));
        Assert.Equal(32u << 20, BinaryPrimitives.ReadUInt32BigEndian(infos[NbdInfo.BlockSize].AsSpan(8)));
        Assert.Equal("vol", Encoding.UTF8.GetString(infos[NbdInfo.Name]));
        Assert.Contains("16 MiB", Encoding.UTF8.GetString(infos[NbdInfo.Description]));
        // Now in transmission: a request works.
        Assert.Equal(NbdError.None, (await client.RequestAsync(NbdCommand.Flush, 0, 0)).Error);
    }

    [Fact]
    public async Task InfoLeavesNegotiationOpenAndListNamesEveryVolume()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.ConnectAsync(f.EndPoint);
        var info = await client.OptionListAsync(NbdOption.Info, NbdTestClient.ExportData("ro"));
        var export = info.Single(r => r.Header.Type == NbdOptionReply.Info && r.Data[1] == 0);
        Assert.True(((NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(export.Data.AsSpan(10))).HasFlag(NbdTransmissionFlags.ReadOnly));

        var list = await client.OptionListAsync(NbdOption.List, []);
        Assert.Equal(NbdOptionReply.Ack, list[^1].Header.Type);
        var names = list.Where(r => r.Header.Type == NbdOptionReply.Server)
            .Select(r => Encoding.UTF8.GetString(r.Data, 4, (int)BinaryPrimitives.ReadUInt32BigEndian(r.Data))).ToArray();
        Assert.Equal(["vol", "ro"], names);

        var contexts = await client.OptionListAsync(NbdOption.ListMetaContext, NbdTestClient.MetaContextData("vol"));
        Assert.Equal(NbdOptionReply.ErrInvalid, contexts[^1].Header.Type); // structured replies first
        Assert.Equal(NbdOptionReply.Ack, (await client.OptionAsync(NbdOption.StructuredReply, [])).Header.Type);
        contexts = await client.OptionListAsync(NbdOption.ListMetaContext, NbdTestClient.MetaContextData("vol"));
        Assert.Equal("base:allocation", Encoding.UTF8.GetString(Assert.Single(contexts, r => r.Header.Type == NbdOptionReply.MetaContext).Data[4..]));
        contexts = await client.OptionListAsync(NbdOption.ListMetaContext, NbdTestClient.MetaContextData("vol", "base:"));
        Assert.Single(contexts, r => r.Header.Type == NbdOptionReply.MetaContext);
        contexts = await client.OptionListAsync(NbdOption.ListMetaContext, NbdTestClient.MetaContextData("vol", "x-other:thing"));
        Assert.Equal(NbdOptionReply.Ack, Assert.Single(contexts).Header.Type);

        Assert.Equal(NbdOptionReply.ErrUnsupported, (await client.OptionAsync(NbdOption.StartTls, [])).Header.Type);
        Assert.Equal(NbdOptionReply.Ack, (await client.OptionAsync(NbdOption.Abort, [])).Header.Type);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task ExportNameEntersTransmissionWithLegacyPaddingUnlessNoZeroes()
    {
        await using var f = await ServerFixture.StartAsync();
        foreach (var noZeroes in new[] { false, true })
        {
            var flags = NbdClientFlags.FixedNewstyle | (noZeroes ? NbdClientFlags.NoZeroes : 0);
            await using var client = await NbdTestClient.ConnectAsync(f.EndPoint, flags);
            await client.SendOptionAsync(NbdOption.ExportName, "vol"u8.ToArray());
            var reply = await client.ReadExactAsync(noZeroes ? 10 : 134);
            Assert.Equal((ulong)(16 << 20), BinaryPrimitives.ReadUInt64BigEndian(reply));
            Assert.All(reply[10..], b => Assert.Equal(0, b));
            var data = Pattern(8192, 1);
            Assert.Equal(NbdError.None, (await client.WriteAsync(0, data)).Error);
            Assert.Equal(data, (await client.ReadAsync(0, 8192)).Data);
        }
    }

    [Fact]
    public async Task SimpleRepliesCarryReadDataWhenStructuredRepliesAreNotNegotiated()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol", structured: false);
        var data = Pattern(1 << 20, 2);
        Assert.Equal(NbdError.None, (await client.WriteAsync(4096, data)).Error);
        var read = await client.ReadAsync(4096, 1 << 20);
        Assert.Empty(read.ChunkTypes);
        Assert.Equal(data, read.Data);
        Assert.Equal(data, f.Volume.Contents.Slice(4096, 1 << 20).ToArray());
    }

    [Fact]
    public async Task StructuredRepliesUseOffsetDataForReadsAndNoneForOtherCommands()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        Assert.True(client.TransmissionFlags.HasFlag(NbdTransmissionFlags.SendDf));
        var data = Pattern(128 * 1024, 3);
        var write = await client.WriteAsync(0, data, NbdCommandFlags.Fua);
        Assert.Equal([NbdReplyType.None], write.ChunkTypes);
        Assert.Equal(1, f.Volume.FuaWriteCount);
        var read = await client.RequestAsync(NbdCommand.Read, 0, (uint)data.Length, NbdCommandFlags.DontFragment);
        Assert.Equal([NbdReplyType.OffsetData], read.ChunkTypes);
        Assert.Equal(data, read.Data);
        int flushes = f.Volume.FlushCount;
        Assert.Equal(NbdError.None, (await client.RequestAsync(NbdCommand.Flush, 0, 0)).Error);
        Assert.Equal(flushes + 1, f.Volume.FlushCount);
    }

    [Fact]
    public async Task PipelinedRequestsAreAllAnsweredWithTheirOwnCookies()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        const int depth = 32;
        var blocks = Enumerable.Range(0, depth).Select(i => Pattern(4096 * (1 + i % 4), 100 + i)).ToArray();
        var cookies = new HashSet<ulong>();
        for (int i = 0; i < depth; i++)
            cookies.Add(await client.SendRequestAsync(NbdCommand.Write, (ulong)i * 65536, (uint)blocks[i].Length, NbdCommandFlags.None, blocks[i]));
        for (int i = 0; i < depth; i++)
        {
            var reply = await client.ReadReplyAsync();
            Assert.Equal(NbdError.None, reply.Error);
            Assert.True(cookies.Remove(reply.Cookie));
        }
        var readCookies = new Dictionary<ulong, int>();
        for (int i = 0; i < depth; i++)
            readCookies[await client.SendRequestAsync(NbdCommand.Read, (ulong)i * 65536, (uint)blocks[i].Length)] = i;
        for (int i = 0; i < depth; i++)
        {
            var reply = await client.ReadReplyAsync();
            Assert.True(readCookies.Remove(reply.Cookie, out int index));
            Assert.Equal(blocks[index], reply.Data);
        }
    }

    [Fact]
    public async Task BlockStatusReportsWrittenZeroedAndTrimmedExtents()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        Assert.Equal(1u, client.MetaContextId);
        await client.WriteAsync(0, Pattern(8192, 4));                                       // [0, 8K) data
        await client.RequestAsync(NbdCommand.WriteZeroes, 8192, 4096, NbdCommandFlags.NoHole); // [8K, 12K) zero
        await client.WriteAsync(16384, Pattern(8192, 5));                                   // [16K, 24K) data
        Assert.Equal(NbdError.None, (await client.RequestAsync(NbdCommand.Trim, 20480, 4096)).Error); // [20K, 24K) hole

        var status = await client.RequestAsync(NbdCommand.BlockStatus, 0, 32768);
        Assert.Equal([NbdReplyType.BlockStatus], status.ChunkTypes);
        const uint hz = (uint)(NbdAllocationState.Hole | NbdAllocationState.Zero);
        Assert.Equal(
            [new(8192, 0), new(4096, (uint)NbdAllocationState.Zero), new(4096, hz), new(4096, 0), new(12288, hz)],
            status.Extents);

        var one = await client.RequestAsync(NbdCommand.BlockStatus, 4096, 1024 * 1024, NbdCommandFlags.ReqOne);
        Assert.Equal([new NbdBlockDescriptor(4096, 0)], one.Extents);
        Assert.Equal(new byte[4096], (await client.ReadAsync(20480, 4096)).Data);
    }

    [Fact]
    public async Task VolumeErrorsAreMappedToNbdErrorsWithAMessageAndTheConnectionContinues()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        f.Volume.ReadFault = (offset, _) => offset == 8192 ? new Duet.Core.BlockIoException(Duet.Core.BlockErrorKind.Medium, "unreadable block", 16) : null;
        var failed = await client.ReadAsync(8192, 4096);
        Assert.Equal(NbdError.Io, failed.Error);
        Assert.Equal([NbdReplyType.Error], failed.ChunkTypes);
        Assert.Equal("unreadable block", failed.Message);
        Assert.True(f.Logger.Has(31));
        Assert.Equal(NbdError.None, (await client.ReadAsync(0, 4096)).Error);
    }

    [Theory]
    [InlineData(Duet.Core.BlockErrorKind.Io, NbdCommand.Read, NbdError.Io)]
    [InlineData(Duet.Core.BlockErrorKind.Medium, NbdCommand.Read, NbdError.Io)]
    [InlineData(Duet.Core.BlockErrorKind.Unavailable, NbdCommand.Write, NbdError.Io)]
    [InlineData(Duet.Core.BlockErrorKind.OutOfRange, NbdCommand.Read, NbdError.Inval)]
    [InlineData(Duet.Core.BlockErrorKind.OutOfRange, NbdCommand.Write, NbdError.NoSpc)]
    [InlineData(Duet.Core.BlockErrorKind.OutOfRange, NbdCommand.WriteZeroes, NbdError.NoSpc)]
    [InlineData(Duet.Core.BlockErrorKind.Invalid, NbdCommand.Trim, NbdError.Inval)]
    [InlineData(Duet.Core.BlockErrorKind.ReadOnly, NbdCommand.Write, NbdError.Perm)]
    public void BlockErrorKindsMapToTheDocumentedNbdErrors(Duet.Core.BlockErrorKind kind, NbdCommand command, NbdError expected) =>
        Assert.Equal(expected, NbdErrors.FromBlockError(kind, command));

    [Fact]
    public async Task DisconnectClosesAfterAnsweringInFlightRequests()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        var cookie = await client.SendRequestAsync(NbdCommand.Write, 0, 4096, NbdCommandFlags.None, Pattern(4096, 6));
        await client.DisconnectAsync();
        Assert.Equal(cookie, (await client.ReadReplyAsync()).Cookie);
        Assert.True(await client.IsClosedByServerAsync());
    }

    [Fact]
    public async Task WritesThatCompleteTogetherAreAllAnsweredAndADisconnectRightAfterStillAnswersThem()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        // The volume holds every write, then one thread completes them all in turn (as a mirrored batch
        // acknowledges its writes): their replies are queued together and flushed behind that thread's work.
        foreach (int round in new[] { 0, 1 })
        {
            var gate = new TaskCompletionSource();
            f.Volume.WriteGate = gate;
            int n = round == 0 ? 24 : 8;
            var cookies = new HashSet<ulong>();
            for (int i = 0; i < n; i++)
                cookies.Add(await client.SendRequestAsync(NbdCommand.Write, (ulong)((round * 32 + i) * 4096), 4096, NbdCommandFlags.None, Pattern(4096, 100 + round * 32 + i)));
            if (round == 1) await client.DisconnectAsync();
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (f.Volume.WritesAtGate < n && DateTime.UtcNow < deadline) await Task.Delay(5);
            Assert.Equal(n, f.Volume.WritesAtGate);
            f.Volume.WriteGate = null;
            gate.SetResult(); // continuations in line: this thread completes all n writes
            for (int i = 0; i < n; i++)
            {
                var reply = await client.ReadReplyAsync();
                Assert.Equal(NbdError.None, reply.Error);
                Assert.True(cookies.Remove(reply.Cookie));
            }
            Assert.Empty(cookies);
        }
        Assert.True(await client.IsClosedByServerAsync());
        for (int i = 0; i < 24; i++) Assert.Equal(Pattern(4096, 100 + i), f.Volume.Contents.Slice(i * 4096, 4096).ToArray());
        for (int i = 0; i < 8; i++) Assert.Equal(Pattern(4096, 132 + i), f.Volume.Contents.Slice((32 + i) * 4096, 4096).ToArray());
    }

    [Fact]
    public async Task TheRequestLoopReadsOnItsOwnThreadAndComesBackToItAfterWaitingForASlot()
    {
        await using var f = await ServerFixture.StartAsync(maxInFlight: 4);
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        for (int i = 0; i < 8; i++) Assert.Equal(NbdError.None, (await client.WriteAsync((ulong)(i * 4096), Pattern(4096, i))).Error);
        var (reads, sleeps, switches) = f.Server.ReaderThreadReads; // the one connection's
        Assert.True(reads >= 8, $"{reads} reads on the connection's own thread");
        Assert.True(sleeps >= 1, $"{sleeps} of them slept in poll first"); // most do; one that finds its bytes there already does not
        Assert.True(switches >= 1); // it moved there at the start (once more if a negotiation write waited)

        // Four writes held by the volume take every slot: the reader waits for one, then reads on from the pool.
        var gate = new TaskCompletionSource();
        f.Volume.WriteGate = gate;
        var cookies = new HashSet<ulong>();
        for (int i = 0; i < 12; i++)
            cookies.Add(await client.SendRequestAsync(NbdCommand.Write, (ulong)((16 + i) * 4096), 4096, NbdCommandFlags.None, Pattern(4096, 16 + i)));
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (f.Volume.WritesAtGate < 4 && DateTime.UtcNow < deadline) await Task.Delay(5);
        Assert.Equal(4, f.Volume.WritesAtGate);
        f.Volume.WriteGate = null;
        gate.SetResult();
        for (int i = 0; i < 12; i++)
        {
            var reply = await client.ReadReplyAsync();
            Assert.Equal(NbdError.None, reply.Error);
            Assert.True(cookies.Remove(reply.Cookie));
        }
        for (int i = 0; i < 8; i++) Assert.Equal(Pattern(4096, i), f.Volume.Contents.Slice(i * 4096, 4096).ToArray());
        for (int i = 0; i < 12; i++) Assert.Equal(Pattern(4096, 16 + i), f.Volume.Contents.Slice((16 + i) * 4096, 4096).ToArray());
        // The reader came back to its own thread after the wait for a slot, and reads there again.
        var before = f.Server.ReaderThreadReads;
        Assert.True(before.Switches >= 2, $"{before.Switches} moves onto the reader's thread");
        var read = await client.ReadAsync(16 * 4096UL, 4096);
        Assert.Equal(Pattern(4096, 16), read.Data);
        // (The read that took this request was counted when it started; the one after it comes once the request is
        // handed out, which may be after the reply reached us.)
        for (int i = 0; i < 5000 && f.Server.ReaderThreadReads.Reads <= before.Reads; i++) await Task.Delay(2);
        Assert.True(f.Server.ReaderThreadReads.Reads > before.Reads, "the reader did not read on its own thread again");
    }

    [Fact]
    public async Task StopClosesConnectionsAndTheListener()
    {
        var f = await ServerFixture.StartAsync();
        var endPoint = f.EndPoint;
        await using var client = await NbdTestClient.OpenAsync(endPoint, "vol");
        await f.Server.StopAsync();
        Assert.True(await client.IsClosedByServerAsync());
        await Assert.ThrowsAnyAsync<System.Net.Sockets.SocketException>(() => NbdTestClient.ConnectRawAsync(endPoint));
        await f.Server.StopAsync(); // idempotent
        Assert.True(f.Logger.Has(2));
    }

    [Fact]
    public async Task MetricsCountRequestsBytesAndErrors()
    {
        var seen = new System.Collections.Concurrent.ConcurrentDictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Duet.Nbd") l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string key = instrument.Name;
            foreach (var tag in tags) key += $"|{tag.Key}={tag.Value}";
            seen.AddOrUpdate(key, value, (_, v) => v + value);
        });
        listener.Start();

        await using var f = await ServerFixture.StartAsync();
        await using (var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol"))
        {
            await client.WriteAsync(0, Pattern(8192, 7));
            await client.ReadAsync(0, 4096);
            await client.ReadAsync(f.Volume.SizeBytes > 0 ? (ulong)f.Volume.SizeBytes : 0, 4096); // out of range
        }
        Assert.True(seen.GetValueOrDefault("duet.nbd.requests|command=write") >= 1);
        Assert.True(seen.GetValueOrDefault("duet.nbd.requests|command=read") >= 2);
        Assert.True(seen.GetValueOrDefault("duet.nbd.bytes_written") >= 8192);
        Assert.True(seen.GetValueOrDefault("duet.nbd.bytes_read") >= 4096);
        Assert.True(seen.GetValueOrDefault("duet.nbd.errors|command=read|error=EINVAL") >= 1);
    }

    [Fact]
    public async Task ManyClientsAtOnceEachSeeTheirOwnWrites()
    {
        await using var f = await ServerFixture.StartAsync();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(async i =>
        {
            await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol", structured: i % 2 == 0);
            var data = Pattern(65536, 200 + i);
            ulong offset = (ulong)i * 65536;
            Assert.Equal(NbdError.None, (await client.WriteAsync(offset, data)).Error);
            Assert.Equal(data, (await client.ReadAsync(offset, 65536)).Data);
        }));
    }
}
