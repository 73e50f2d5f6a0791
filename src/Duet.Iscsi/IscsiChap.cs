using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace Duet.Iscsi;

/// <summary>CHAP with MD5 (RFC 1994, algorithm 5) as iSCSI carries it: CHAP_R = MD5(CHAP_I || secret
/// || CHAP_C); binary values are "0x" hex or "0b" base64.</summary>
public static class IscsiChap
{
    public const string Md5Algorithm = "5";
    public const int ChallengeBytes = 16;

    public static byte[] Response(byte identifier, string secret, ReadOnlySpan<byte> challenge)
    {
        int secretBytes = Encoding.UTF8.GetByteCount(secret);
        byte[] input = new byte[1 + secretBytes + challenge.Length];
        input[0] = identifier;
        Encoding.UTF8.GetBytes(secret, input.AsSpan(1));
        challenge.CopyTo(input.AsSpan(1 + secretBytes));
        return MD5.HashData(input);
    }

    public static string Encode(ReadOnlySpan<byte> value) => "0x" + Convert.ToHexStringLower(value);

    /// <summary>Decodes "0x..." (hex) or "0b..." (base64); null if neither or malformed.</summary>
    public static byte[]? Decode(string value)
    {
        if (value.Length < 3 || value.Length > 2048) return null;
        try
        {
            if (value.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            {
                var hex = value.AsSpan(2);
                if (hex.Length % 2 == 1) return Convert.FromHexString("0" + hex.ToString());
                return Convert.FromHexString(hex);
            }
            if (value.StartsWith("0b", StringComparison.OrdinalIgnoreCase)) return Convert.FromBase64String(value[2..]);
        }
        catch (FormatException)
        {
        }
        return null;
    }

    public static bool TryParseIdentifier(string value, out byte identifier)
    {
        identifier = 0;
        if (!IscsiNegotiator.TryNumber(value, out long id) || id > 255) return false;
        identifier = (byte)id;
        return true;
    }

    public static string FormatIdentifier(byte identifier) => identifier.ToString(CultureInfo.InvariantCulture);
}
