using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Duet.Raid.Parity;

namespace Duet.Bench;

/// <summary>
/// Single-thread parity throughput, Duet's kernels beside Intel ISA-L's on the same
/// 64-byte-aligned native buffers in the same run. Prints <c>key value</c> lines; GB/s is
/// 1e9 DATA bytes per second (parity bytes are not counted), 64 KiB per member, the
/// geometry and units of /work/shared/bench/peers/bench_parity.sh.
/// </summary>
public static class ParityBench
{
    const int ChunkBytes = 64 * 1024;
    const int BigCopyBytes = 256 * 1024 * 1024;

    public static int Run(TextWriter output, TextWriter log, double secondsPerFigure)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        if (!(secondsPerFigure > 0)) throw new ArgumentOutOfRangeException(nameof(secondsPerFigure), "must be > 0");

        using var isal = IsaL.TryLoad(log);
        output.WriteLine($"isal.available {(isal is null ? 0 : 1)}");
        log.WriteLine($"parity kernel: {Parity.KernelName}; {secondsPerFigure.ToString(CultureInfo.InvariantCulture)} s per figure");

        int failures = 0;
        failures += RunXor(output, log, isal, 4, secondsPerFigure);
        failures += RunPQ(output, log, isal, 4, secondsPerFigure);
        failures += RunPQ(output, log, isal, 8, secondsPerFigure);
        RunMemcpy(output, "memcpy_gbps", ChunkBytes, secondsPerFigure);
        RunMemcpy(output, "memcpy_256m_gbps", BigCopyBytes, secondsPerFigure);
        return failures == 0 ? 0 : 1;
    }

    static unsafe int RunXor(TextWriter output, TextWriter log, IsaL? isal, int dataCount, double seconds)
    {
        using var buffers = new NativeBuffers(dataCount + 1, ChunkBytes);
        var sources = buffers.Memories(0, dataCount);
        var parity = buffers.Span(dataCount);
        string key = $"xor.{dataCount}+1";
        long dataBytes = (long)dataCount * ChunkBytes;

        Parity.Xor(sources, parity);
        var expected = parity.ToArray();
        ScalarParity.Xor(sources, parity);
        if (!parity.SequenceEqual(expected)) return Mismatch(log, key, "duet vs scalar");

        Print(output, $"{key}.duet_gbps", Measure(() => Parity.Xor(sources, buffers.Span(dataCount)), dataBytes, seconds));

        if (isal is not null)
        {
            parity.Clear();
            int rc = isal.XorGen(dataCount + 1, ChunkBytes, buffers.Pointers);
            if (rc != 0 || !parity.SequenceEqual(expected)) return Mismatch(log, key, $"isal xor_gen (rc {rc}) vs duet");
            Print(output, $"{key}.isal_gbps", Measure(() => isal.XorGen(dataCount + 1, ChunkBytes, buffers.Pointers), dataBytes, seconds));
        }
        return 0;
    }

    static unsafe int RunPQ(TextWriter output, TextWriter log, IsaL? isal, int dataCount, double seconds)
    {
        using var buffers = new NativeBuffers(dataCount + 2, ChunkBytes);
        var data = buffers.Memories(0, dataCount);
        string key = $"pq.{dataCount}+2";
        long dataBytes = (long)dataCount * ChunkBytes;

        Parity.GenPQ(data, buffers.Span(dataCount), buffers.Span(dataCount + 1));
        var expectedP = buffers.Span(dataCount).ToArray();
        var expectedQ = buffers.Span(dataCount + 1).ToArray();
        ScalarParity.GenPQ(data, buffers.Span(dataCount), buffers.Span(dataCount + 1));
        if (!buffers.Span(dataCount).SequenceEqual(expectedP) || !buffers.Span(dataCount + 1).SequenceEqual(expectedQ))
            return Mismatch(log, key, "duet vs scalar");

        Print(output, $"{key}.duet_gbps",
            Measure(() => Parity.GenPQ(data, buffers.Span(dataCount), buffers.Span(dataCount + 1)), dataBytes, seconds));

        if (isal is not null)
        {
            buffers.Span(dataCount).Clear();
            buffers.Span(dataCount + 1).Clear();
            int rc = isal.PqGen(dataCount + 2, ChunkBytes, buffers.Pointers);
            if (rc != 0 || !buffers.Span(dataCount).SequenceEqual(expectedP) || !buffers.Span(dataCount + 1).SequenceEqual(expectedQ))
                return Mismatch(log, key, $"isal pq_gen (rc {rc}) vs duet");
            Print(output, $"{key}.isal_gbps", Measure(() => isal.PqGen(dataCount + 2, ChunkBytes, buffers.Pointers), dataBytes, seconds));
        }
        return 0;
    }

    static unsafe void RunMemcpy(TextWriter output, string key, int bytes, double seconds)
    {
        using var buffers = new NativeBuffers(2, bytes);
        byte* src = buffers.Pointers[0];
        byte* dst = buffers.Pointers[1];
        Print(output, key, Measure(() => NativeMemory.Copy(src, dst, (nuint)bytes), bytes, seconds));
    }

    static int Mismatch(TextWriter log, string key, string what)
    {
        log.WriteLine($"{key}: MISMATCH {what}; figure skipped");
        return 1;
    }

    static void Print(TextWriter output, string key, double gbps) =>
        output.WriteLine($"{key} {gbps.ToString("F2", CultureInfo.InvariantCulture)}");

    /// <summary>Warm up, then run batches (doubling while short) until the time is spent; GB/s of data.</summary>
    static double Measure(Action body, long bytesPerCall, double seconds)
    {
        // Warm up for a quarter of the budget (at least 50 calls), so the JIT has tiered
        // up the facade and the figure is the steady state, not the first few calls.
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < 50 || watch.Elapsed.TotalSeconds < seconds / 4; i++) body();
        long calls = 0, batch = 1;
        watch.Restart();
        double elapsed;
        while (true)
        {
            for (long i = 0; i < batch; i++) body();
            calls += batch;
            elapsed = watch.Elapsed.TotalSeconds;
            if (elapsed >= seconds) break;
            if (elapsed < seconds / 8) batch *= 2;
        }
        return calls * (double)bytesPerCall / elapsed / 1e9;
    }

    /// <summary>Members of equal size, each 64-byte aligned native memory, filled with pseudo-random bytes.</summary>
    sealed unsafe class NativeBuffers : IDisposable
    {
        readonly int bytes;
        readonly Manager[] managers;
        public byte** Pointers { get; }

        public NativeBuffers(int count, int bytes)
        {
            this.bytes = bytes;
            Pointers = (byte**)NativeMemory.AllocZeroed((nuint)count, (nuint)sizeof(byte*));
            managers = new Manager[count];
            ulong x = 0x9E3779B97F4A7C15ul;
            for (int m = 0; m < count; m++)
            {
                byte* p = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
                Pointers[m] = p;
                managers[m] = new Manager(p, bytes);
                ulong* w = (ulong*)p;
                for (int i = 0; i < bytes / 8; i++)
                {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17; // xorshift64: page-touching fill
                    w[i] = x;
                }
            }
        }

        public Span<byte> Span(int member) => new(Pointers[member], bytes);

        public ReadOnlyMemory<byte>[] Memories(int first, int count)
        {
            var result = new ReadOnlyMemory<byte>[count];
            for (int i = 0; i < count; i++) result[i] = managers[first + i].Memory;
            return result;
        }

        public void Dispose()
        {
            if (Pointers == null) return;
            for (int m = 0; m < managers.Length; m++) NativeMemory.AlignedFree(Pointers[m]);
            NativeMemory.Free(Pointers);
        }

        sealed class Manager(byte* pointer, int length) : MemoryManager<byte>
        {
            public override Span<byte> GetSpan() => new(pointer, length);
            public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);
            public override void Unpin() { }
            protected override void Dispose(bool disposing) { }
        }
    }

    /// <summary>ISA-L's raid functions, bound at run time so a missing library is a skipped figure, not a crash.</summary>
    sealed unsafe class IsaL : IDisposable
    {
        readonly nint library;
        readonly delegate* unmanaged<int, int, void**, int> xorGen;
        readonly delegate* unmanaged<int, int, void**, int> pqGen;

        IsaL(nint library, nint xorGen, nint pqGen)
        {
            this.library = library;
            this.xorGen = (delegate* unmanaged<int, int, void**, int>)xorGen;
            this.pqGen = (delegate* unmanaged<int, int, void**, int>)pqGen;
        }

        public static IsaL? TryLoad(TextWriter log)
        {
            if (!NativeLibrary.TryLoad("libisal.so.2", out var library))
            {
                log.WriteLine("libisal.so.2 not loadable; ISA-L figures skipped");
                return null;
            }
            if (!NativeLibrary.TryGetExport(library, "xor_gen", out var xorGen) ||
                !NativeLibrary.TryGetExport(library, "pq_gen", out var pqGen))
            {
                log.WriteLine("libisal.so.2 lacks xor_gen/pq_gen; ISA-L figures skipped");
                NativeLibrary.Free(library);
                return null;
            }
            return new IsaL(library, xorGen, pqGen);
        }

        /// <summary>vects pointers: the sources, then the parity last.</summary>
        public int XorGen(int vects, int length, byte** array) => xorGen(vects, length, (void**)array);

        /// <summary>vects pointers: the data, then P, then Q.</summary>
        public int PqGen(int vects, int length, byte** array) => pqGen(vects, length, (void**)array);

        public void Dispose() => NativeLibrary.Free(library);
    }
}
