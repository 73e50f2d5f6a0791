using System.Buffers.Binary;
using Duet.Core;

namespace Duet.Cache.Nvram;

public enum ElementState
{
    /// <summary>The valid bit is clear: nothing to replay.</summary>
    Empty,
    /// <summary>Valid, and the CRC over descriptor and valid sectors checks.</summary>
    Valid,
    /// <summary>Marked valid but fails its check (torn or damaged): never replayed.</summary>
    Damaged,
}

/// <summary>An element that was marked valid but failed its check, and why.</summary>
public readonly record struct SkippedElement(int Element, string Reason);

/// <summary>
/// One NVRAM region: <see cref="ElementCount"/> elements of 16 KiB and a descriptor per
/// element. Update order is what makes a crash safe: the data first, a memory barrier, the
/// descriptor fields, a barrier, the CRC last. The CRC covers the fields and the valid
/// sectors' data, so an update cut anywhere — or torn by a power cut, where the page cache
/// reaches the disk in any order — leaves either the old element (when the torn bytes were
/// not part of it), or an element that fails its CRC and is skipped, reported, never
/// replayed. Overwriting a valid element in place therefore risks the old contents; a cache
/// that must keep them writes the new data to another element and invalidates the old one.
///
/// Not synchronised: the caller serialises operations on one element; different elements
/// may be used from different threads.
/// </summary>
public sealed unsafe class NvramRegion
{
    readonly NvramFile _file;
    readonly byte* _descriptors;
    readonly byte* _data;
    readonly byte* _log;
    readonly byte* _tags;

    internal NvramRegion(NvramFile file, int number, byte* descriptors, byte* data, byte* log, byte* tags)
    {
        Invariant.Assert(number is 1 or 2);
        _file = file;
        _descriptors = descriptors;
        _data = data;
        _log = log;
        _tags = tags;
        Number = number;
        ElementCount = file.Layout.ElementCount;
        RegionBytes = file.Layout.RegionBytes;
        Invariant.Assert((long)ElementCount * ElementBytes == RegionBytes);
    }

    /// <summary>1 (own write-back cache) or 2 (mirror of the peer's region 1).</summary>
    public int Number { get; }
    public int ElementCount { get; }
    public int ElementBytes => NvramLayout.ElementBytesFixed;
    public long RegionBytes { get; }

    /// <summary>The element's 16 KiB in the mapping. Valid until the file is disposed.</summary>
    public Span<byte> Data(int element)
    {
        CheckElement(element);
        _file.ThrowIfDisposed();
        return new Span<byte>(_data + (long)element * ElementBytes, ElementBytes);
    }

    /// <summary>The element's 16 KiB as <see cref="Memory{T}"/>, for asynchronous I/O straight out of
    /// (or into) the mapping. Valid while the file is open.</summary>
    public Memory<byte> Memory(int element)
    {
        CheckElement(element);
        _file.ThrowIfDisposed();
        _memory ??= new MappedMemory(_data, checked((int)RegionBytes));
        return _memory.Memory.Slice(element * ElementBytes, ElementBytes);
    }

    MappedMemory? _memory;

    /// <summary>A MemoryManager over the mapped region (no copy, nothing to pin: the mapping does not move).</summary>
    sealed class MappedMemory(byte* pointer, int length) : System.Buffers.MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(pointer, length);
        public override System.Buffers.MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
    }

    /// <summary>Byte offset of the element within the region; /512 is the MR-2/MR-3 descriptor.</summary>
    public long OffsetOf(int element)
    {
        CheckElement(element);
        return (long)element * ElementBytes;
    }

    /// <summary>The element that starts at <paramref name="offsetWithinRegion"/>; anything else is refused.</summary>
    public int ElementAt(long offsetWithinRegion)
    {
        var (element, sector) = Locate(offsetWithinRegion);
        if (sector != 0)
            throw new ArgumentException($"offset 0x{offsetWithinRegion:x} in region {Number} is sector {sector} of element {element}, not the start of an element", nameof(offsetWithinRegion));
        return element;
    }

    /// <summary>The element and sector that a 512-byte aligned offset within the region falls in.</summary>
    public (int Element, int Sector) Locate(long offsetWithinRegion)
    {
        if (offsetWithinRegion < 0 || offsetWithinRegion >= RegionBytes)
            throw new ArgumentOutOfRangeException(nameof(offsetWithinRegion), offsetWithinRegion,
                $"offset 0x{offsetWithinRegion:x} is outside region {Number} (0x0..0x{RegionBytes:x})");
        if (offsetWithinRegion % NvramLayout.SectorBytes != 0)
            throw new ArgumentException($"offset 0x{offsetWithinRegion:x} in region {Number} is not a multiple of {NvramLayout.SectorBytes}", nameof(offsetWithinRegion));
        return ((int)(offsetWithinRegion / ElementBytes), (int)(offsetWithinRegion % ElementBytes / NvramLayout.SectorBytes));
    }

    public ElementState StateOf(int element) => Examine(element, out _, out _);

    /// <summary>The descriptor if the element is valid and checks.</summary>
    public bool TryRead(int element, out ElementDescriptor descriptor) => Examine(element, out descriptor, out _) == ElementState.Valid;

    /// <summary>The descriptor of a valid element, its fields only: the CRC over its data is not checked. For an
    /// element this process stored itself and nothing else writes (the mirror's base of a with-base image):
    /// a torn one could only come from a crash, and a crash restarts the reader, which replays with the check.</summary>
    public bool TryReadFields(int element, out ElementDescriptor descriptor)
    {
        CheckElement(element);
        _file.ThrowIfDisposed();
        descriptor = default;
        var slot = Slot(element);
        if (!DescriptorCodec.IsValid(slot)) return false;
        descriptor = DescriptorCodec.DecodeFields(slot);
        return true;
    }

    /// <summary>The element's descriptor; an empty or damaged element is an <see cref="NvramException"/>.</summary>
    public ElementDescriptor Read(int element) => Examine(element, out var descriptor, out var problem) switch
    {
        ElementState.Valid => descriptor,
        ElementState.Empty => throw new NvramException($"NVRAM {_file.Path}: region {Number} element {element} is empty"),
        _ => throw new NvramException($"NVRAM {_file.Path}: region {Number} element {element} is damaged: {problem}"),
    };

    /// <summary>
    /// Stores an element: copies the valid sectors of <paramref name="sectors"/> (the element's
    /// first <c>BlockCount</c> sectors; invalid ones are not copied) into the element, then the
    /// descriptor, CRC last.
    /// </summary>
    public void Write(int element, in ElementDescriptor d, ReadOnlySpan<byte> sectors)
    {
        AssertStorable(element, d);
        Invariant.Assert(sectors.Length == d.BlockCount * NvramLayout.SectorBytes);
        var data = Data(element);
        uint mask = d.ValidMask;
        while (mask != 0)
        {
            int sector = System.Numerics.BitOperations.TrailingZeroCount(mask);
            mask &= mask - 1;
            int offset = sector * NvramLayout.SectorBytes;
            sectors.Slice(offset, NvramLayout.SectorBytes).CopyTo(data.Slice(offset, NvramLayout.SectorBytes));
        }
        Commit(element, d, data);
    }

    /// <summary>
    /// Stores the descriptor of an element whose data is already in place (the ICL receiver
    /// moves data straight into <see cref="Data"/>); the CRC is computed over the data there.
    /// </summary>
    public void WriteDescriptorOnly(int element, in ElementDescriptor d)
    {
        AssertStorable(element, d);
        Commit(element, d, Data(element));
    }

    /// <summary>Clears the element's valid bit (one byte store), then the rest of its descriptor.</summary>
    public void Invalidate(int element)
    {
        CheckElement(element);
        _file.ThrowIfDisposed();
        var slot = Slot(element);
        Volatile.Write(ref slot[0], 0);
        Interlocked.MemoryBarrier();
        slot[1..].Clear();
    }

    /// <summary>
    /// Marks a valid element clean (its data is on the drives). The descriptor is rewritten
    /// with a new CRC; a cut in between leaves an element that fails its CRC, which is harmless
    /// because clean data is on the drives.
    /// </summary>
    public void SetClean(int element) => SetDirty(element, false);

    public void SetDirty(int element, bool dirty)
    {
        var state = Examine(element, out var descriptor, out var problem);
        if (state == ElementState.Damaged)
            throw new NvramException($"NVRAM {_file.Path}: region {Number} element {element} is damaged ({problem}); cannot change its flags");
        Invariant.Assert(state == ElementState.Valid);
        if (descriptor.Dirty == dirty) return;
        Commit(element, descriptor with { Dirty = dirty }, Data(element));
    }

    /// <summary>Every valid element whose check passes, in sequence order (ties by element).</summary>
    public IReadOnlyList<(int Element, ElementDescriptor Descriptor)> ReplayOrder() => ReplayOrder(out _);

    /// <summary>
    /// As <see cref="ReplayOrder()"/>; <paramref name="skipped"/> lists the elements marked valid
    /// that failed their check (torn or damaged), which are never returned.
    /// </summary>
    public IReadOnlyList<(int Element, ElementDescriptor Descriptor)> ReplayOrder(out IReadOnlyList<SkippedElement> skipped)
    {
        var replay = new List<(int Element, ElementDescriptor Descriptor)>();
        var damaged = new List<SkippedElement>();
        for (int e = 0; e < ElementCount; e++)
        {
            switch (Examine(e, out var descriptor, out var problem))
            {
                case ElementState.Valid: replay.Add((e, descriptor)); break;
                case ElementState.Damaged: damaged.Add(new SkippedElement(e, problem!)); break;
            }
        }
        replay.Sort((x, y) => x.Descriptor.Sequence != y.Descriptor.Sequence
            ? x.Descriptor.Sequence.CompareTo(y.Descriptor.Sequence)
            : x.Element.CompareTo(y.Element));
        skipped = damaged;
        return replay;
    }

    /// <summary>Invalidates every element: valid bits first, then the whole table. The write log is
    /// <see cref="WriteLog"/>'s to clear.</summary>
    public void Clear()
    {
        _file.ThrowIfDisposed();
        for (int e = 0; e < ElementCount; e++) Volatile.Write(ref Slot(e)[0], 0);
        Interlocked.MemoryBarrier();
        new Span<byte>(_descriptors, ElementCount * NvramLayout.DescriptorBytes).Clear();
    }

    /// <summary>The 64 bytes of write-log record <paramref name="slot"/> of this region's log (AW-4;
    /// <see cref="WriteLogRecord"/> encodes them).</summary>
    public Span<byte> LogRecord(int slot)
    {
        _file.ThrowIfDisposed();
        if ((uint)slot >= NvramLayout.LogSlots) throw new ArgumentOutOfRangeException(nameof(slot), slot, $"write-log slots are 0..{NvramLayout.LogSlots - 1}");
        return new Span<byte>(_log + (long)slot * NvramLayout.LogRecordBytes, NvramLayout.LogRecordBytes);
    }

    /// <summary>The 64 bytes of entry <paramref name="slot"/> of this region's table of finished host
    /// commands (<see cref="HostTagEntry"/> encodes them).</summary>
    public Span<byte> TagEntry(int slot)
    {
        _file.ThrowIfDisposed();
        if ((uint)slot >= NvramLayout.TagSlots) throw new ArgumentOutOfRangeException(nameof(slot), slot, $"host tag slots are 0..{NvramLayout.TagSlots - 1}");
        return new Span<byte>(_tags + (long)slot * NvramLayout.TagEntryBytes, NvramLayout.TagEntryBytes);
    }

    public override string ToString() => $"NVRAM region {Number} ({ElementCount} elements)";

    Span<byte> Slot(int element) => new(_descriptors + (long)element * NvramLayout.DescriptorBytes, NvramLayout.DescriptorBytes);

    void CheckElement(int element)
    {
        if ((uint)element >= (uint)ElementCount)
            throw new ArgumentOutOfRangeException(nameof(element), element, $"region {Number} has elements 0..{ElementCount - 1}");
    }

    void AssertStorable(int element, in ElementDescriptor d)
    {
        CheckElement(element);
        if (d.Problem() is { } problem) Invariant.Fail($"descriptor for region {Number} element {element}: {problem}");
    }

    /// <summary>Fields, barrier, CRC last. The barrier before orders the caller's data stores too.</summary>
    void Commit(int element, in ElementDescriptor d, ReadOnlySpan<byte> data)
    {
        _file.ThrowIfDisposed();
        Span<byte> fields = stackalloc byte[NvramLayout.DescriptorBytes];
        DescriptorCodec.EncodeFields(fields, d, element, Number);
        uint crc = DescriptorCodec.ComputeCrc(fields, d.ValidMask, data);
        var slot = Slot(element);
        Interlocked.MemoryBarrier();
        fields[..DescriptorCodec.CrcOffset].CopyTo(slot);
        Interlocked.MemoryBarrier();
        Volatile.Write(ref System.Runtime.CompilerServices.Unsafe.As<byte, uint>(ref slot[DescriptorCodec.CrcOffset]),
            BitConverter.IsLittleEndian ? crc : BinaryPrimitives.ReverseEndianness(crc));
        Interlocked.MemoryBarrier();
    }

    ElementState Examine(int element, out ElementDescriptor descriptor, out string? problem)
    {
        CheckElement(element);
        _file.ThrowIfDisposed();
        var slot = Slot(element);
        descriptor = default;
        problem = null;
        if (!DescriptorCodec.IsValid(slot)) return ElementState.Empty;
        problem = DescriptorCodec.Check(slot, Data(element), element, Number);
        if (problem is not null) return ElementState.Damaged;
        descriptor = DescriptorCodec.DecodeFields(slot);
        return ElementState.Valid;
    }
}
