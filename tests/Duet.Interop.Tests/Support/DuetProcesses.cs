using System.Diagnostics;

namespace Duet.Interop.Tests.Support;

/// <summary>What the process tests need to start `duet` and find its controllers.</summary>
public static class DuetProcesses
{
    public static string Dotnet => Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    public static string DuetDll => Path.Combine(AppContext.BaseDirectory, "duet.dll");

    /// <summary>The pid of controller <paramref name="name"/> that `duet up` runs on <paramref name="dataDir"/>.</summary>
    public static int ControllerPid(string dataDir, string name)
    {
        foreach (var p in Process.GetProcessesByName("dotnet"))
        {
            try
            {
                var cmd = File.ReadAllText($"/proc/{p.Id}/cmdline").Replace('\0', ' ');
                if (cmd.Contains($"controller --name {name} --data {dataDir}", StringComparison.Ordinal)) return p.Id;
            }
            catch (IOException) { }
        }
        throw new InvalidOperationException($"no process of controller {name} for {dataDir}");
    }
}
