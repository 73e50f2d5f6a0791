using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Duet.Raid.Management;
using DriveInfo = Duet.Raid.Management.DriveInfo; // not System.IO.DriveInfo (implicit usings)

namespace Duet.Host.Management;

/// <summary>No controller answers on the management socket: it does not exist, or nothing
/// listens on it any more. The message says which and how to start one.</summary>
public sealed class ControllerUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The management API from the client side (what the `duet` CLI uses): one typed method per
/// <see cref="IArrayService"/> call. A refusal comes back as the server's
/// <see cref="ManagementException"/> (kind from the HTTP status, message from the body).
/// </summary>
public sealed class ManagementClient : IDisposable
{
    readonly HttpClient http;

    public ManagementClient(string socketPath, TimeSpan? timeout = null)
    {
        SocketPath = Path.GetFullPath(socketPath);
        DataDirectory = Path.GetDirectoryName(SocketPath) ?? SocketPath;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = ConnectAsync,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
        };
        http = new HttpClient(handler, disposeHandler: true)
        {
            // Host name is only for the Host header; the socket path decides where we connect.
            BaseAddress = new Uri("http://duet/"),
            // Array creation and scrubs may do real work before answering; Ctrl+C still cancels.
            Timeout = timeout ?? TimeSpan.FromMinutes(10),
        };
    }

    public static ManagementClient ForDataDirectory(string dataDirectory, TimeSpan? timeout = null) =>
        new(ManagementHost.SocketPathFor(dataDirectory), timeout);

    public string SocketPath { get; }

    public string DataDirectory { get; }

    public Task<StatusInfo> StatusAsync(CancellationToken ct = default) =>
        GetAsync("v1/status", Json.StatusInfo, ct);

    public Task<IReadOnlyList<ArrayInfo>> ListArraysAsync(CancellationToken ct = default) =>
        GetAsync("v1/arrays", Json.IReadOnlyListArrayInfo, ct);

    public Task<IReadOnlyList<VolumeInfo>> ListVolumesAsync(CancellationToken ct = default) =>
        GetAsync("v1/volumes", Json.IReadOnlyListVolumeInfo, ct);

    public Task<IReadOnlyList<DriveInfo>> ListDrivesAsync(CancellationToken ct = default) =>
        GetAsync("v1/drives", Json.IReadOnlyListDriveInfo, ct);

    public Task<ArrayInfo> CreateArrayAsync(CreateArrayRequest request, CancellationToken ct = default) =>
        PostAsync("v1/arrays", request, Json.CreateArrayRequest, Json.ArrayInfo, ct);

    public Task DeleteArrayAsync(string name, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Delete, $"v1/arrays/{Segment(name)}", null, ct);

    public Task<VolumeInfo> CreateVolumeAsync(CreateVolumeRequest request, CancellationToken ct = default) =>
        PostAsync("v1/volumes", request, Json.CreateVolumeRequest, Json.VolumeInfo, ct);

    public Task DeleteVolumeAsync(string name, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Delete, $"v1/volumes/{Segment(name)}", null, ct);

    public Task<DriveInfo> AddDriveAsync(AddDriveRequest request, CancellationToken ct = default) =>
        PostAsync("v1/drives", request, Json.AddDriveRequest, Json.DriveInfo, ct);

    public Task AddSpareAsync(AddSpareRequest request, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Post, "v1/spares", JsonContent.Create(request, Json.AddSpareRequest), ct);

    public Task FailDriveAsync(string drive, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Post, $"v1/drives/{Segment(drive)}/fail", null, ct);

    public Task ReplaceDriveAsync(string drive, ReplaceDriveRequest request, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Post, $"v1/drives/{Segment(drive)}/replace", JsonContent.Create(request, Json.ReplaceDriveRequest), ct);

    public Task StartScrubAsync(string array, ScrubRequest request, CancellationToken ct = default) =>
        SendAsync(HttpMethod.Post, $"v1/arrays/{Segment(array)}/scrub", JsonContent.Create(request, Json.ScrubRequest), ct);

    public Task<ArrayInfo> MoveArrayAsync(string array, MoveArrayRequest request, CancellationToken ct = default) =>
        PostAsync($"v1/arrays/{Segment(array)}/move", request, Json.MoveArrayRequest, Json.ArrayInfo, ct);

    public Task<ArrayInfo> PreferArrayAsync(string array, PreferArrayRequest request, CancellationToken ct = default) =>
        PostAsync($"v1/arrays/{Segment(array)}/prefer", request, Json.PreferArrayRequest, Json.ArrayInfo, ct);

    public Task<BadBlockReport> BadBlocksAsync(string array, CancellationToken ct = default) =>
        GetAsync($"v1/arrays/{Segment(array)}/bad-blocks", Json.BadBlockReport, ct);

    /// <summary>AW-6: runs the controller's power-fail window; answers with its report once the window ended.</summary>
    public Task<PowerFailReport> PowerFailAsync(PowerFailRequest request, CancellationToken ct = default) =>
        PostAsync("v1/power-fail", request, Json.PowerFailRequest, Json.PowerFailReport, ct);

    public void Dispose() => http.Dispose();

    static ManagementJsonContext Json => ManagementJsonContext.Default;

    static string Segment(string name)
    {
        if (string.IsNullOrEmpty(name)) throw new ManagementException(ManagementErrorKind.Invalid, "a name must not be empty");
        return Uri.EscapeDataString(name);
    }

    async Task<T> GetAsync<T>(string path, JsonTypeInfo<T> result, CancellationToken ct)
    {
        using var response = await SendCoreAsync(HttpMethod.Get, path, null, ct);
        return await ReadAsync(response, result, ct);
    }

    async Task<TResult> PostAsync<TRequest, TResult>(string path, TRequest request, JsonTypeInfo<TRequest> body, JsonTypeInfo<TResult> result, CancellationToken ct)
    {
        using var response = await SendCoreAsync(HttpMethod.Post, path, JsonContent.Create(request, body), ct);
        return await ReadAsync(response, result, ct);
    }

    async Task SendAsync(HttpMethod method, string path, HttpContent? content, CancellationToken ct)
    {
        using var response = await SendCoreAsync(method, path, content, ct);
    }

    static async Task<T> ReadAsync<T>(HttpResponseMessage response, JsonTypeInfo<T> info, CancellationToken ct)
    {
        try
        {
            return await response.Content.ReadFromJsonAsync(info, ct)
                ?? throw new HttpRequestException($"the controller answered {response.RequestMessage?.RequestUri?.AbsolutePath} with null");
        }
        catch (JsonException e)
        {
            throw new HttpRequestException($"the controller's answer to {response.RequestMessage?.RequestUri?.AbsolutePath} is not the expected {typeof(T).Name}: {e.Message}", e);
        }
    }

    // Sends, and turns every non-2xx answer into an exception: 400/404/409 into the server's
    // ManagementException, anything else into HttpRequestException with the server's message.
    async Task<HttpResponseMessage> SendCoreAsync(HttpMethod method, string path, HttpContent? content, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(method, path) { Content = content };
        HttpResponseMessage response;
        try
        {
            response = await http.SendAsync(request, ct);
        }
        catch (HttpRequestException e) when (FindUnavailable(e) is { } unavailable)
        {
            throw unavailable;
        }
        if (response.IsSuccessStatusCode) return response;

        using (response)
        {
            var message = await ReadErrorAsync(response, ct);
            ManagementErrorKind? kind = response.StatusCode switch
            {
                HttpStatusCode.BadRequest => ManagementErrorKind.Invalid,
                HttpStatusCode.NotFound => ManagementErrorKind.NotFound,
                HttpStatusCode.Conflict => ManagementErrorKind.Conflict,
                _ => null,
            };
            if (kind is { } k) throw new ManagementException(k, message);
            throw new HttpRequestException($"the controller failed ({(int)response.StatusCode} {response.ReasonPhrase}): {message}", null, response.StatusCode);
        }
    }

    static async Task<string> ReadErrorAsync(HttpResponseMessage response, CancellationToken ct)
    {
        var text = await response.Content.ReadAsStringAsync(ct);
        try
        {
            if (JsonSerializer.Deserialize(text, Json.ErrorResponse) is { Error: { Length: > 0 } error }) return error;
        }
        catch (JsonException)
        {
            // Not our error shape (a proxy, or a route the server does not know); show it raw.
        }
        return text.Length > 0 ? text : $"HTTP {(int)response.StatusCode} {response.ReasonPhrase}";
    }

    static ControllerUnavailableException? FindUnavailable(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
            if (e is ControllerUnavailableException u) return u;
        return null;
    }

    async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), ct);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            var why = !File.Exists(SocketPath) ? $"socket {SocketPath} not found"
                : e.SocketErrorCode == SocketError.AccessDenied ? $"permission denied on socket {SocketPath}"
                : $"nothing is listening on socket {SocketPath}";
            throw new ControllerUnavailableException(
                $"no Duet controller is running with data directory {DataDirectory} ({why}); start one with ./duet up", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
