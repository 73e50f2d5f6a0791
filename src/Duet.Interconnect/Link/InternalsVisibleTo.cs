using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("Duet.Interconnect.Tests")]
