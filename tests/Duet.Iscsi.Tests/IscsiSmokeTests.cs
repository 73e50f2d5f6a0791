using Xunit.Abstractions;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI")]
public sealed class IscsiSmokeTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Libiscsi_tools_talk_to_the_transport_over_the_test_device()
    {
        await using var fixture = await IscsiServerFixture.StartAsync();
        int port = fixture.EndPoint.Port;
        var ls = await IscsiProcess.RunAsync(output, "iscsi-ls", $"-s iscsi://127.0.0.1:{port}");
        Assert.Contains(IscsiServerFixture.Target, ls.Stdout);
        await IscsiProcess.RunAsync(output, "iscsi-inq", $"iscsi://127.0.0.1:{port}/{IscsiServerFixture.Target}/0");
    }
}
