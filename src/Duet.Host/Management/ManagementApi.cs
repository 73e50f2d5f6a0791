using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Duet.Raid.Management;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Duet.Host.Management;

// The management API: IArrayService over HTTP/1.1 on a Unix domain socket in the data
// directory (DATA_DIR/duet.sock), which is what the `duet` CLI talks to. A Unix socket
// rather than a TCP port because management is local and privileged: the file's mode
// (0600) is the access control, and two controllers on one machine cannot collide on it.
//
//   GET    /v1/status                  -> StatusInfo
//   GET    /v1/arrays                  -> ArrayInfo[]
//   POST   /v1/arrays                  CreateArrayRequest  -> 201 ArrayInfo
//   DELETE /v1/arrays/{name}           -> 204
//   POST   /v1/arrays/{name}/scrub     ScrubRequest (body optional) -> 204
//   POST   /v1/arrays/{name}/move      MoveArrayRequest -> 200 ArrayInfo (as the new owner serves it)
//   GET    /v1/arrays/{name}/bad-blocks -> BadBlockReport (AW-5: the array's bad-block list)
//   GET    /v1/volumes                 -> VolumeInfo[]
//   POST   /v1/volumes                 CreateVolumeRequest -> 201 VolumeInfo
//   DELETE /v1/volumes/{name}          -> 204
//   GET    /v1/drives                  -> DriveInfo[]
//   POST   /v1/drives                  AddDriveRequest     -> 201 DriveInfo
//   POST   /v1/drives/{name}/fail      -> 204
//   POST   /v1/drives/{name}/replace   ReplaceDriveRequest -> 204
//   POST   /v1/spares                  AddSpareRequest     -> 204
//   POST   /v1/power-fail              PowerFailRequest (body optional: the pair) -> 200 PowerFailReport,
//                                      once the controller's power-fail window ended (AW-6); it then stops
//
// Refusals: ManagementException Invalid/NotFound/Conflict -> 400/404/409, malformed or
// incomplete JSON -> 400, unknown route -> 404, all with {"error": "message"}. Anything
// else is a bug in the controller: 500 with the exception's message, logged with its stack.

/// <summary>Kestrel serving <see cref="IArrayService"/> on a Unix domain socket.</summary>
public sealed class ManagementHost : IAsyncDisposable
{
    public const string SocketFileName = "duet.sock";

    // sun_path is 108 bytes on Linux including the terminating NUL.
    const int MaxSocketPathBytes = 107;
    const int MaxBodyBytes = 1 << 20;

    readonly WebApplication app;
    int disposed;

    ManagementHost(WebApplication app, string socketPath)
    {
        this.app = app;
        SocketPath = socketPath;
    }

    public string SocketPath { get; }

    public static string SocketPathFor(string dataDirectory) => Path.Combine(Path.GetFullPath(dataDirectory), SocketFileName);

    /// <summary>Binds <paramref name="socketPath"/> (removing a stale socket file left by a
    /// dead controller) and starts serving. Refuses if another process is listening there.</summary>
    /// <param name="powerFail">AW-6: runs the controller's power-fail window and returns its report (null: the
    /// route answers 404: nothing here has such a window).</param>
    public static async Task<ManagementHost> StartAsync(IArrayService service, string socketPath, ILoggerFactory loggerFactory, CancellationToken ct,
        Func<PowerFailRequest, CancellationToken, Task<PowerFailReport>>? powerFail = null)
    {
        ArgumentNullException.ThrowIfNull(service);
        ArgumentNullException.ThrowIfNull(loggerFactory);
        socketPath = Path.GetFullPath(socketPath);
        if (System.Text.Encoding.UTF8.GetByteCount(socketPath) > MaxSocketPathBytes)
            throw new IOException($"management socket path {socketPath} is longer than the {MaxSocketPathBytes} bytes a Unix socket allows; use a shorter data directory");
        Directory.CreateDirectory(Path.GetDirectoryName(socketPath)!);
        await RemoveStaleSocketAsync(socketPath, ct);

        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = "Duet.Host.Management" });
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = MaxBodyBytes;
            k.ListenUnixSocket(socketPath);
        });
        builder.Services.AddRoutingCore();
        builder.Services.AddSingleton(loggerFactory);
        // The controller process owns Ctrl+C and SIGTERM; this host stops when disposed.
        builder.Services.AddSingleton<IHostLifetime, EmbeddedLifetime>();
        var app = builder.Build();

        var log = loggerFactory.CreateLogger<ManagementHost>();
        MapRoutes(app, service, log, powerFail);
        await app.StartAsync(ct);
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(socketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        Log.Listening(log, socketPath);
        return new ManagementHost(app, socketPath);
    }

    public ValueTask DisposeAsync() => new(StopAsync(Timeout.InfiniteTimeSpan));

    /// <summary>Stops serving: requests in flight get up to <paramref name="grace"/> to finish, then their
    /// connections are cut. Idempotent.</summary>
    public async Task StopAsync(TimeSpan grace)
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        try
        {
            using var cut = grace == Timeout.InfiniteTimeSpan ? new CancellationTokenSource() : new CancellationTokenSource(grace);
            try { await app.StopAsync(cut.Token); }
            catch (OperationCanceledException) { } // the grace ran out: the rest was cut
        }
        finally
        {
            await app.DisposeAsync();
            File.Delete(SocketPath);
        }
    }

    static async Task RemoveStaleSocketAsync(string socketPath, CancellationToken ct)
    {
        if (!File.Exists(socketPath)) return;
        using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            try
            {
                await probe.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                throw new IOException($"another Duet controller is already serving {socketPath}; stop it first (or use a different data directory)");
            }
            catch (SocketException)
            {
                // Nobody listening: the file is left over from a controller that died.
            }
        }
        File.Delete(socketPath);
    }

    static void MapRoutes(WebApplication app, IArrayService service, ILogger log, Func<PowerFailRequest, CancellationToken, Task<PowerFailReport>>? powerFail)
    {
        var json = ManagementJsonContext.Default;

        app.MapGet("/v1/status", Handle(log, ctx => WriteAsync(ctx, StatusCodes.Status200OK, service.Status(), json.StatusInfo)));
        app.MapGet("/v1/arrays", Handle(log, ctx => WriteAsync(ctx, StatusCodes.Status200OK, service.Status().Arrays, json.IReadOnlyListArrayInfo)));
        app.MapGet("/v1/volumes", Handle(log, ctx => WriteAsync(ctx, StatusCodes.Status200OK, service.Status().Volumes, json.IReadOnlyListVolumeInfo)));
        app.MapGet("/v1/drives", Handle(log, ctx => WriteAsync(ctx, StatusCodes.Status200OK, service.Status().Drives, json.IReadOnlyListDriveInfo)));

        app.MapPost("/v1/arrays", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.CreateArrayRequest, whenEmpty: null);
            var array = await service.CreateArrayAsync(request, ctx.RequestAborted);
            await WriteAsync(ctx, StatusCodes.Status201Created, array, json.ArrayInfo);
        }));
        app.MapDelete("/v1/arrays/{name}", Handle(log, async ctx =>
        {
            await service.DeleteArrayAsync(Route(ctx, "name"), ctx.RequestAborted);
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
        }));
        app.MapPost("/v1/arrays/{name}/scrub", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.ScrubRequest, whenEmpty: new ScrubRequest());
            await service.StartScrubAsync(Route(ctx, "name"), request, ctx.RequestAborted);
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
        }));

        app.MapPost("/v1/arrays/{name}/move", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.MoveArrayRequest, whenEmpty: null);
            var array = await service.MoveArrayAsync(Route(ctx, "name"), request, ctx.RequestAborted);
            await WriteAsync(ctx, StatusCodes.Status200OK, array, json.ArrayInfo);
        }));

        app.MapPost("/v1/arrays/{name}/prefer", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.PreferArrayRequest, whenEmpty: null);
            var array = await service.PreferArrayAsync(Route(ctx, "name"), request, ctx.RequestAborted);
            await WriteAsync(ctx, StatusCodes.Status200OK, array, json.ArrayInfo);
        }));

        app.MapGet("/v1/arrays/{name}/bad-blocks", Handle(log, async ctx =>
        {
            var report = await service.BadBlocksAsync(Route(ctx, "name"), ctx.RequestAborted);
            await WriteAsync(ctx, StatusCodes.Status200OK, report, json.BadBlockReport);
        }));

        app.MapPost("/v1/volumes", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.CreateVolumeRequest, whenEmpty: null);
            var volume = await service.CreateVolumeAsync(request, ctx.RequestAborted);
            await WriteAsync(ctx, StatusCodes.Status201Created, volume, json.VolumeInfo);
        }));
        app.MapDelete("/v1/volumes/{name}", Handle(log, async ctx =>
        {
            await service.DeleteVolumeAsync(Route(ctx, "name"), ctx.RequestAborted);
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
        }));

        app.MapPost("/v1/drives", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.AddDriveRequest, whenEmpty: null);
            var drive = await service.AddDriveAsync(request, ctx.RequestAborted);
            await WriteAsync(ctx, StatusCodes.Status201Created, drive, json.DriveInfo);
        }));
        app.MapPost("/v1/drives/{name}/fail", Handle(log, async ctx =>
        {
            await service.FailDriveAsync(Route(ctx, "name"), ctx.RequestAborted);
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
        }));
        app.MapPost("/v1/drives/{name}/replace", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.ReplaceDriveRequest, whenEmpty: null);
            await service.ReplaceDriveAsync(Route(ctx, "name"), request, ctx.RequestAborted);
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
        }));

        app.MapPost("/v1/spares", Handle(log, async ctx =>
        {
            var request = await ReadBodyAsync(ctx, json.AddSpareRequest, whenEmpty: null);
            await service.AddSpareAsync(request, ctx.RequestAborted);
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
        }));

        app.MapPost("/v1/power-fail", Handle(log, async ctx =>
        {
            if (powerFail is null) throw new ManagementException(ManagementErrorKind.NotFound, "this server has no power-fail window (it is not a controller of a pair)");
            var request = await ReadBodyAsync(ctx, json.PowerFailRequest, whenEmpty: new PowerFailRequest());
            // Not cancelled by the client going away: the window, once begun, runs to its end.
            var report = await powerFail(request, CancellationToken.None);
            await WriteAsync(ctx, StatusCodes.Status200OK, report, json.PowerFailReport);
        }));

        app.MapFallback(Handle(log, ctx => throw new ManagementException(ManagementErrorKind.NotFound,
            $"no such management route: {ctx.Request.Method} {ctx.Request.Path}")));
    }

    static RequestDelegate Handle(ILogger log, Func<HttpContext, Task> handler) => async ctx =>
    {
        try
        {
            await handler(ctx);
        }
        catch (ManagementException e)
        {
            Log.Refused(log, ctx.Request.Method, ctx.Request.Path, e.Kind, e.Message);
            await WriteErrorAsync(ctx, StatusFor(e.Kind), e.Message);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            // The client went away; there is nobody to answer.
        }
        catch (Exception e)
        {
            Log.Failed(log, ctx.Request.Method, ctx.Request.Path, e);
            await WriteErrorAsync(ctx, StatusCodes.Status500InternalServerError, $"internal error in the controller: {e.Message}");
        }
    };

    public static int StatusFor(ManagementErrorKind kind) => kind switch
    {
        ManagementErrorKind.Invalid => StatusCodes.Status400BadRequest,
        ManagementErrorKind.NotFound => StatusCodes.Status404NotFound,
        ManagementErrorKind.Conflict => StatusCodes.Status409Conflict,
        _ => StatusCodes.Status400BadRequest,
    };

    // Kestrel decodes every escape in the path except %2F (so that it cannot split a
    // segment); a name is one segment, so a slash in it is decoded here.
    static string Route(HttpContext ctx, string key) =>
        (ctx.Request.RouteValues[key] as string)?.Replace("%2F", "/", StringComparison.OrdinalIgnoreCase)
            ?? throw new ManagementException(ManagementErrorKind.Invalid, $"missing {key} in the path");

    // Buffers the (small) body so an empty one can be told apart from a malformed one.
    static async Task<T> ReadBodyAsync<T>(HttpContext ctx, JsonTypeInfo<T> info, T? whenEmpty) where T : class
    {
        using var buffer = new MemoryStream();
        try
        {
            await ctx.Request.Body.CopyToAsync(buffer, ctx.RequestAborted);
        }
        catch (BadHttpRequestException e)
        {
            throw new ManagementException(ManagementErrorKind.Invalid, $"could not read the request body: {e.Message}");
        }
        if (buffer.Length == 0)
        {
            return whenEmpty ?? throw new ManagementException(ManagementErrorKind.Invalid,
                $"{ctx.Request.Method} {ctx.Request.Path} needs a JSON body ({typeof(T).Name})");
        }
        try
        {
            return JsonSerializer.Deserialize(buffer.GetBuffer().AsSpan(0, (int)buffer.Length), info)
                ?? throw new ManagementException(ManagementErrorKind.Invalid, $"the request body must be a JSON object ({typeof(T).Name}), not null");
        }
        catch (JsonException e)
        {
            throw new ManagementException(ManagementErrorKind.Invalid, $"malformed JSON in the request body ({typeof(T).Name}): {e.Message}");
        }
    }

    static Task WriteAsync<T>(HttpContext ctx, int status, T value, JsonTypeInfo<T> info)
    {
        ctx.Response.StatusCode = status;
        return ctx.Response.WriteAsJsonAsync(value, info, contentType: null, ctx.RequestAborted);
    }

    static async Task WriteErrorAsync(HttpContext ctx, int status, string message)
    {
        if (ctx.Response.HasStarted) return;
        ctx.Response.Clear();
        await WriteAsync(ctx, status, new ErrorResponse(message), ManagementJsonContext.Default.ErrorResponse);
    }

    sealed class EmbeddedLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}

static partial class Log
{
    [LoggerMessage(EventId = 100, Level = LogLevel.Information, Message = "Management API listening on {SocketPath}")]
    public static partial void Listening(ILogger logger, string socketPath);

    [LoggerMessage(EventId = 101, Level = LogLevel.Debug, Message = "Refused {Method} {Path}: {Kind}: {Reason}")]
    public static partial void Refused(ILogger logger, string method, PathString path, ManagementErrorKind kind, string reason);

    [LoggerMessage(EventId = 102, Level = LogLevel.Error, Message = "Management request {Method} {Path} failed")]
    public static partial void Failed(ILogger logger, string method, PathString path, Exception exception);
}
