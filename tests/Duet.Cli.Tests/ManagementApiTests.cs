using System.Net;
using System.Text;
using System.Text.Json;
using Duet.Host.Management;
using Duet.Raid.Management;

namespace Duet.Cli.Tests;

[Trait("Area", "Cli")]
public sealed class ManagementApiTests : IAsyncLifetime
{
    Controller controller = null!;
    HttpClient http = null!;

    public async Task InitializeAsync()
    {
        controller = await Controller.StartAsync(new InMemoryArrayService().WithDrives(6, 1L << 30));
        http = controller.RawHttp();
    }

    public async Task DisposeAsync()
    {
        http.Dispose();
        await controller.DisposeAsync();
    }

    async Task<(HttpStatusCode Status, string Body)> Send(HttpMethod method, string path, string? json = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (json is not null) request.Content = new StringContent(json, Encoding.UTF8, "application/json");
        using var response = await http.SendAsync(request);
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    static string Error(string body) => JsonSerializer.Deserialize(body, ManagementJsonContext.Default.ErrorResponse)!.Error;

    [Theory]
    [InlineData("{not json")]
    [InlineData("{\"name\": \"r0\", \"level\": 5, \"drives\": [\"d0\", \"d1\", \"d2\"]")]
    [InlineData("[1, 2, 3]")]
    public async Task MalformedJsonIs400WithAClearMessage(string body)
    {
        var (status, text) = await Send(HttpMethod.Post, "v1/arrays", body);

        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.StartsWith("malformed JSON in the request body (CreateArrayRequest): ", Error(text));
        Assert.Empty(controller.Service.Status().Arrays);
    }

    [Fact]
    public async Task AMissingRequiredFieldIs400NamingIt()
    {
        var (status, text) = await Send(HttpMethod.Post, "v1/arrays", "{\"level\": 5, \"drives\": [\"d0\", \"d1\", \"d2\"]}");

        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("'name'", Error(text));
        Assert.Empty(controller.Service.Status().Arrays);
    }

    [Fact]
    public async Task AnUnknownFieldIs400()
    {
        var (status, text) = await Send(HttpMethod.Post, "v1/drives", "{\"name\": \"d9\", \"sizeBytes\": 4096, \"colour\": \"red\"}");

        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("colour", Error(text));
    }

    [Fact]
    public async Task AnEmptyBodyIs400ExceptForScrubWhoseBodyIsOptional()
    {
        var (status, text) = await Send(HttpMethod.Post, "v1/volumes", "");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("POST /v1/volumes needs a JSON body (CreateVolumeRequest)", Error(text));

        await controller.Service.CreateArrayAsync(new CreateArrayRequest("r0", 5, ["d0", "d1", "d2"]));
        var (scrub, _) = await Send(HttpMethod.Post, "v1/arrays/r0/scrub");
        Assert.Equal(HttpStatusCode.NoContent, scrub);
        Assert.True(controller.Service.LastScrub?.Repair);
    }

    [Fact]
    public async Task RefusalsMapToTheirStatusCodes()
    {
        var invalid = await Send(HttpMethod.Post, "v1/arrays", "{\"name\": \"r0\", \"level\": 4, \"drives\": [\"d0\", \"d1\", \"d2\"]}");
        Assert.Equal(HttpStatusCode.BadRequest, invalid.Status);
        Assert.Equal("RAID level 4 is not supported; use 0, 1, 5, 6 or 10", Error(invalid.Body));

        var notFound = await Send(HttpMethod.Delete, "v1/volumes/nope");
        Assert.Equal(HttpStatusCode.NotFound, notFound.Status);
        Assert.Equal("no volume named nope", Error(notFound.Body));

        var created = await Send(HttpMethod.Post, "v1/arrays", "{\"name\": \"r0\", \"level\": 5, \"drives\": [\"d0\", \"d1\", \"d2\"]}");
        Assert.Equal(HttpStatusCode.Created, created.Status);
        Assert.Equal("r0", JsonSerializer.Deserialize(created.Body, ManagementJsonContext.Default.ArrayInfo)!.Name);

        var conflict = await Send(HttpMethod.Post, "v1/arrays", "{\"name\": \"r0\", \"level\": 5, \"drives\": [\"d3\", \"d4\", \"d5\"]}");
        Assert.Equal(HttpStatusCode.Conflict, conflict.Status);
        Assert.Equal("an array named r0 already exists", Error(conflict.Body));
    }

    [Fact]
    public async Task AnUnknownRouteIs404WithAnErrorBody()
    {
        var (status, text) = await Send(HttpMethod.Get, "v1/nothing");

        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Equal("no such management route: GET /v1/nothing", Error(text));
    }

    [Fact]
    public async Task ListsAndStatusAreCamelCaseJson()
    {
        await controller.Service.CreateArrayAsync(new CreateArrayRequest("r0", 5, ["d0", "d1", "d2"]));

        var status = await Send(HttpMethod.Get, "v1/status");
        Assert.Equal(HttpStatusCode.OK, status.Status);
        using (var doc = JsonDocument.Parse(status.Body))
        {
            Assert.Equal("r0", doc.RootElement.GetProperty("arrays")[0].GetProperty("name").GetString());
            Assert.Equal(6, doc.RootElement.GetProperty("drives").GetArrayLength());
        }

        var drives = await Send(HttpMethod.Get, "v1/drives");
        Assert.Equal(6, JsonSerializer.Deserialize(drives.Body, ManagementJsonContext.Default.IReadOnlyListDriveInfo)!.Count);
        var volumes = await Send(HttpMethod.Get, "v1/volumes");
        Assert.Equal("[]", volumes.Body);
    }

    [Fact]
    public async Task TheClientRaisesTheServersKindAndMessage()
    {
        using var client = new ManagementClient(controller.SocketPath);

        var e = await Assert.ThrowsAsync<ManagementException>(() => client.FailDriveAsync("d42"));
        Assert.Equal(ManagementErrorKind.NotFound, e.Kind);
        Assert.Equal("no drive named d42", e.Message);

        await client.CreateArrayAsync(new CreateArrayRequest("r0", 1, ["d0", "d1"]));
        var conflict = await Assert.ThrowsAsync<ManagementException>(() => client.AddSpareAsync(new AddSpareRequest("d1", "r0")));
        Assert.Equal(ManagementErrorKind.Conflict, conflict.Kind);

        var invalid = await Assert.ThrowsAsync<ManagementException>(() => client.CreateVolumeAsync(new CreateVolumeRequest("v", "r0", 1000)));
        Assert.Equal(ManagementErrorKind.Invalid, invalid.Kind);
    }

    [Fact]
    public async Task NamesAreEscapedInThePath()
    {
        using var client = new ManagementClient(controller.SocketPath);

        var e = await Assert.ThrowsAsync<ManagementException>(() => client.DeleteArrayAsync("a/b c"));

        Assert.Equal("no array named a/b c", e.Message);
    }
}
