using System.Text.Json;
using System.Text.Json.Serialization;
using Duet.Raid.Management;
using DriveInfo = Duet.Raid.Management.DriveInfo; // not System.IO.DriveInfo (implicit usings)

namespace Duet.Host.Management;

/// <summary>The body of every refused request: <c>{"error": "message"}</c>. The HTTP status
/// carries the kind (400 Invalid, 404 NotFound, 409 Conflict).</summary>
public sealed record ErrorResponse(string Error);

/// <summary>What the CLI prints with --json for a verb that has no result.</summary>
public sealed record OkResponse(bool Ok);

// One source-generated context serves the server, the client and the CLI's --json, so all
// three agree on the wire shape. Strict on input: a missing constructor parameter, a null
// where the contract has no '?', or an unknown property is a 400 with the serializer's
// message, not a half-filled request reaching the array manager.
[JsonSourceGenerationOptions(
    JsonSerializerDefaults.Web,
    RespectNullableAnnotations = true,
    RespectRequiredConstructorParameters = true,
    UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    NumberHandling = JsonNumberHandling.AllowReadingFromString | JsonNumberHandling.AllowNamedFloatingPointLiterals)]
[JsonSerializable(typeof(StatusInfo))]
[JsonSerializable(typeof(ArrayInfo))]
[JsonSerializable(typeof(VolumeInfo))]
[JsonSerializable(typeof(DriveInfo))]
[JsonSerializable(typeof(IReadOnlyList<ArrayInfo>))]
[JsonSerializable(typeof(IReadOnlyList<VolumeInfo>))]
[JsonSerializable(typeof(IReadOnlyList<DriveInfo>))]
[JsonSerializable(typeof(CreateArrayRequest))]
[JsonSerializable(typeof(CreateVolumeRequest))]
[JsonSerializable(typeof(AddDriveRequest))]
[JsonSerializable(typeof(AddSpareRequest))]
[JsonSerializable(typeof(ReplaceDriveRequest))]
[JsonSerializable(typeof(ScrubRequest))]
[JsonSerializable(typeof(MoveArrayRequest))]
[JsonSerializable(typeof(PreferArrayRequest))]
[JsonSerializable(typeof(BadBlockReport))]
[JsonSerializable(typeof(PowerFailRequest))]
[JsonSerializable(typeof(PowerFailReport))]
[JsonSerializable(typeof(IReadOnlyList<PowerFailReport>))]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(OkResponse))]
public sealed partial class ManagementJsonContext : JsonSerializerContext
{
    /// <summary>The same contract, indented, for people reading --json output.</summary>
    public static ManagementJsonContext Indented => indented ??= CreateIndented();

    static ManagementJsonContext? indented;

    static ManagementJsonContext CreateIndented()
    {
        JsonSerializerContext defaults = Default;
        return new ManagementJsonContext(new JsonSerializerOptions(defaults.Options) { WriteIndented = true });
    }
}
