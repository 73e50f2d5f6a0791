using System.Buffers.Binary;

namespace Duet.Nbd.Tests;

/// <summary>Bad input over a raw socket: each case gets the protocol's answer and a log line,
/// and afterwards a second client is served normally.</summary>
[Trait("Area", "Nbd")]
public class NbdBadInputTests
{
    [Fact]
    public async Task BadOptionMagicClosesTheConnectionAndIsLogged()
    {
        await using var f = await ServerFixture.StartAsync();
        await using (var client = await NbdTestClient.ConnectAsync(f.EndPoint))
        {
            var bytes = new byte[NbdWire.OptionHeaderBytes];
            NbdCodec.WriteOptionHeader(bytes, NbdOption.Go, 0);
            bytes[0] ^= 0xff;
            await client.SendRawAsync(bytes);
            Assert.True(await client.IsClosedByServerAsync());
        }
        Assert.True(f.Logger.Has(12), f.Logger.ToString());
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task UnknownClientFlagsCloseTheConnection()
    {
        await using var f = await ServerFixture.StartAsync();
        await using (var client = await NbdTestClient.ConnectAsync(f.EndPoint, (NbdClientFlags)0x80))
            Assert.True(await client.IsClosedByServerAsync());
        Assert.True(f.Logger.Has(13));
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task GoForAnUnknownExportGetsErrUnknownAndNegotiationContinues()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.ConnectAsync(f.EndPoint);
        var replies = await client.OptionListAsync(NbdOption.Go, NbdTestClient.ExportData("nope"));
        Assert.Equal(NbdOptionReply.ErrUnknown, Assert.Single(replies).Header.Type);
        Assert.True(f.Logger.Has(14));
        var go = await client.OptionListAsync(NbdOption.Go, NbdTestClient.ExportData("vol"));
        Assert.Equal(NbdOptionReply.Ack, go[^1].Header.Type);
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task ExportNameForAnUnknownExportClosesTheConnection()
    {
        await using var f = await ServerFixture.StartAsync();
        await using (var client = await NbdTestClient.ConnectAsync(f.EndPoint))
        {
            await client.SendOptionAsync(NbdOption.ExportName, "nope"u8.ToArray());
            Assert.True(await client.IsClosedByServerAsync());
        }
        Assert.True(f.Logger.Has(14));
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task MalformedAndUnknownOptionsGetErrorRepliesWithoutClosing()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.ConnectAsync(f.EndPoint);
        Assert.Equal(NbdOptionReply.ErrInvalid, (await client.OptionAsync(NbdOption.Go, [0, 0, 0, 9, 1])).Header.Type);
        Assert.Equal(NbdOptionReply.ErrInvalid, (await client.OptionAsync(NbdOption.List, [1])).Header.Type);
        Assert.Equal(NbdOptionReply.ErrUnsupported, (await client.OptionAsync((NbdOption)0x4242, [1, 2, 3])).Header.Type);
        Assert.Equal(NbdOptionReply.ErrTooBig, (await client.OptionAsync(NbdOption.Info, new byte[200_000])).Header.Type);
        Assert.Equal(NbdOptionReply.ErrInvalid, (await client.OptionAsync(NbdOption.SetMetaContext, NbdTestClient.MetaContextData("vol", "base:allocation"))).Header.Type);
        Assert.True(f.Logger.Has(15));
        Assert.True(f.Logger.Has(20));
        var go = await client.OptionListAsync(NbdOption.Go, NbdTestClient.ExportData("vol"));
        Assert.Equal(NbdOptionReply.Ack, go[^1].Header.Type);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task OutOfRangeRequestsGetEinvalOrEnospcAndTheConnectionContinues(bool structured)
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol", structured);
        ulong size = client.ExportSize;
        var read = await client.ReadAsync(size - 4096, 8192);
        Assert.Equal(NbdError.Inval, read.Error);
        if (structured) Assert.Contains("beyond the export size", read.Message);
        Assert.Equal(NbdError.NoSpc, (await client.WriteAsync(size, new byte[4096])).Error);
        Assert.Equal(NbdError.NoSpc, (await client.RequestAsync(NbdCommand.WriteZeroes, size - 512, 1024)).Error);
        Assert.Equal(NbdError.Inval, (await client.RequestAsync(NbdCommand.Trim, ulong.MaxValue - 511, 512)).Error);
        Assert.Equal(NbdError.Inval, (await client.ReadAsync(100, 512)).Error);   // misaligned
        Assert.Equal(NbdError.Inval, (await client.ReadAsync(0, 0)).Error);       // zero length
        Assert.True(f.Logger.Has(30));
        Assert.Equal(NbdError.None, (await client.ReadAsync(0, 4096)).Error);
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task OversizedReadAndWriteGetEinvalAndTheWritePayloadIsSkipped()
    {
        await using var f = await ServerFixture.StartAsync(maxPayloadBytes: 64 * 1024);
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        Assert.Equal(NbdError.Inval, (await client.ReadAsync(0, 128 * 1024)).Error);
        var big = new byte[128 * 1024];
        Array.Fill(big, (byte)0x5a);
        var reply = await client.WriteAsync(0, big);
        Assert.Equal(NbdError.Inval, reply.Error);
        Assert.Contains("maximum payload", reply.Message);
        Assert.Equal(0, f.Volume.Contents[0]);
        // The payload was consumed: the next request on the same connection lines up.
        Assert.Equal(NbdError.None, (await client.WriteAsync(0, new byte[4096])).Error);
        Assert.Equal(NbdError.None, (await client.ReadAsync(0, 64 * 1024)).Error);
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task UnknownCommandsAndBadFlagsGetEinval()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        Assert.Equal(NbdError.Inval, (await client.RequestAsync((NbdCommand)42, 0, 512)).Error);
        Assert.Equal(NbdError.Inval, (await client.RequestAsync(NbdCommand.Cache, 0, 512)).Error);
        Assert.Equal(NbdError.Inval, (await client.RequestAsync(NbdCommand.Read, 0, 512, NbdCommandFlags.ReqOne)).Error);
        Assert.Equal(NbdError.Inval, (await client.RequestAsync(NbdCommand.WriteZeroes, 0, 512, NbdCommandFlags.FastZero)).Error);
        Assert.Equal(NbdError.Inval, (await client.RequestAsync(NbdCommand.Flush, 0, 512)).Error);
        Assert.Equal(NbdError.None, (await client.ReadAsync(0, 512)).Error);
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task BlockStatusWithoutAMetaContextGetsEinval()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol", structured: true, blockStatus: false);
        Assert.Equal(NbdError.Inval, (await client.RequestAsync(NbdCommand.BlockStatus, 0, 4096)).Error);
    }

    [Fact]
    public async Task WritesToAReadOnlyVolumeGetEperm()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var client = await NbdTestClient.OpenAsync(f.EndPoint, "ro");
        Assert.True(client.TransmissionFlags.HasFlag(NbdTransmissionFlags.ReadOnly));
        var reply = await client.WriteAsync(0, new byte[4096]);
        Assert.Equal(NbdError.Perm, reply.Error);
        Assert.Equal(NbdError.Perm, (await client.RequestAsync(NbdCommand.Trim, 0, 4096)).Error);
        Assert.Equal(NbdError.Perm, (await client.RequestAsync(NbdCommand.WriteZeroes, 0, 4096)).Error);
        Assert.Equal(NbdError.None, (await client.ReadAsync(0, 4096)).Error);
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task BadRequestMagicCutsOnlyThatConnection()
    {
        await using var f = await ServerFixture.StartAsync();
        await using var bystander = await NbdTestClient.OpenAsync(f.EndPoint, "vol");
        await using (var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol"))
        {
            var bytes = new byte[NbdWire.RequestBytes];
            NbdCodec.WriteRequest(bytes, new NbdRequest(NbdCommandFlags.None, NbdCommand.Read, 1, 0, 512));
            BinaryPrimitives.WriteUInt32BigEndian(bytes, 0xdeadbeef);
            await client.SendRawAsync(bytes);
            Assert.True(await client.IsClosedByServerAsync());
        }
        Assert.True(f.Logger.Has(12));
        Assert.Equal(NbdError.None, (await bystander.ReadAsync(0, 4096)).Error);
        await f.AssertStillServesAsync();
    }

    [Fact]
    public async Task TruncatedWritePayloadEndsOnlyThatConnection()
    {
        await using var f = await ServerFixture.StartAsync();
        await using (var client = await NbdTestClient.OpenAsync(f.EndPoint, "vol"))
        {
            var bytes = new byte[NbdWire.RequestBytes + 100];
            NbdCodec.WriteRequest(bytes, new NbdRequest(NbdCommandFlags.None, NbdCommand.Write, 1, 0, 4096));
            await client.SendRawAsync(bytes);
        }
        await f.AssertStillServesAsync();
        Assert.Equal(0, f.Volume.Contents[0]);
    }
}
