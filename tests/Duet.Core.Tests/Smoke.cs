namespace Duet.Core.Tests; public class Smoke { [Fact] public void Crc32CMatchesCheckValue() => Assert.Equal(0xE3069283u, Duet.Core.Crc32C.Compute("123456789"u8)); }
