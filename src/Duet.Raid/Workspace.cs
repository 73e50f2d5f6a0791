using System.Buffers;
using Duet.Core;
using Duet.Raid.Parity;

namespace Duet.Raid;

/// <summary>
/// The rows [RowLo, RowLo+RowCount) of one stripe on every member, as read (and checked) or
/// as reconstructed. Buffers are rented and returned on Dispose.
/// Row state: Unknown (not read), Ok (read and matched its tag, or reconstructed), Bad
/// (unreadable: member missing, medium error, or checksum mismatch).
/// </summary>
internal sealed class Workspace : IDisposable
{
    public const byte Unknown = 0, Ok = 1, Bad = 2;

    public readonly ArrayGeometry Geometry;
    public readonly long Stripe;
    public readonly int RowLo, RowCount;
    public readonly byte[]?[] Buffers;
    public readonly byte[][] State;
    /// <summary>Rows found Bad by a read (as opposed to a missing member): candidates for repair.</summary>
    public readonly bool[][] FoundBad;
    /// <summary>Blocks <see cref="SolveRow"/> recomputed (their content did not come from their member).</summary>
    public readonly bool[][] Reconstructed;
    /// <summary>Reconstructed blocks of a member that cannot be read whose content was nonetheless vouched for
    /// (a torn block's tag told which parity to trust, <see cref="RaidArray"/>'s blind settle): not lost.</summary>
    public readonly bool[][] Vouched;

    /// <summary>Blocks that were read whole but failed their tag, as read (before any reconstruction
    /// overwrote the buffer): what a recovery write may keep of a torn block.</summary>
    Dictionary<(int Member, int Row), byte[]>? _asRead;

    public Workspace(ArrayGeometry geometry, long stripe, int rowLo, int rowCount)
    {
        Invariant.Assert(rowLo >= 0 && rowCount > 0 && rowLo + rowCount <= geometry.ChunkBlocks);
        Geometry = geometry;
        Stripe = stripe;
        RowLo = rowLo;
        RowCount = rowCount;
        Buffers = new byte[]?[geometry.MemberCount];
        State = new byte[geometry.MemberCount][];
        FoundBad = new bool[geometry.MemberCount][];
        Reconstructed = new bool[geometry.MemberCount][];
        Vouched = new bool[geometry.MemberCount][];
        for (int m = 0; m < geometry.MemberCount; m++)
        {
            State[m] = new byte[rowCount];
            FoundBad[m] = new bool[rowCount];
            Reconstructed[m] = new bool[rowCount];
            Vouched[m] = new bool[rowCount];
        }
    }

    public byte[] Buffer(int member) =>
        Buffers[member] ??= BlockBuffers.Rent(RowCount * Units.BlockBytes);

    public Memory<byte> Rows(int member, int rowLo, int rowCount) =>
        Buffer(member).AsMemory((rowLo - RowLo) * Units.BlockBytes, rowCount * Units.BlockBytes);

    public Span<byte> Block(int member, int row) =>
        Buffer(member).AsSpan((row - RowLo) * Units.BlockBytes, Units.BlockBytes);

    /// <summary>Keeps a copy of a block just read that failed its tag.</summary>
    public void KeepAsRead(int member, int row)
    {
        var copy = Block(member, row).ToArray();
        // Members may be read at once (a scrub or a settle): each keeps its own rows, in one dictionary.
        lock (_asReadLock)
        {
            _asRead ??= [];
            _asRead[(member, row)] = copy;
        }
    }

    readonly Lock _asReadLock = new();

    /// <summary>A block's content as read, if it was read whole and failed its tag.</summary>
    public byte[]? AsRead(int member, int row)
    {
        lock (_asReadLock) return _asRead?.GetValueOrDefault((member, row));
    }

    public byte RowState(int member, int row) => State[member][row - RowLo];

    public void SetState(int member, int row, byte state) => State[member][row - RowLo] = state;

    /// <summary>
    /// Recomputes every Bad block of one row from the Ok ones, if no more than the parity count
    /// are Bad. Returns false (changing nothing) if the row has too many erasures.
    /// Unknown blocks must have been read first.
    /// </summary>
    public bool SolveRow(int row)
    {
        var g = Geometry;
        int n = g.MemberCount;
        int p = g.PMember(Stripe), q = g.QMember(Stripe);
        Span<int> erasedData = stackalloc int[n];
        int erasedCount = 0, erasedDataCount = 0;
        bool pErased = false, qErased = false;
        for (int m = 0; m < n; m++)
        {
            Invariant.Assert(RowState(m, row) != Unknown);
            if (RowState(m, row) != Bad) continue;
            erasedCount++;
            if (m == p) pErased = true;
            else if (m == q) qErased = true;
            else erasedData[erasedDataCount++] = g.RoleOf(Stripe, m).DataIndex;
        }
        if (erasedCount == 0) return true;
        if (erasedCount > g.ParityMembers) return false;

        int k = g.DataMembers;
        var zero = new byte[Units.BlockBytes];
        ReadOnlyMemory<byte>[] data = new ReadOnlyMemory<byte>[k];
        for (int i = 0; i < k; i++)
        {
            int m = g.DataMember(Stripe, i);
            data[i] = RowState(m, row) == Bad ? zero : Buffer(m).AsMemory((row - RowLo) * Units.BlockBytes, Units.BlockBytes);
        }
        // Partial sums over the surviving data: pp = Σ D_i, qq = Σ g^i D_i (erased terms are zero).
        var pp = new byte[Units.BlockBytes];
        var qq = new byte[Units.BlockBytes];
        if (g.ParityMembers == 2) Parity.Parity.GenPQ(data, pp, qq);
        else Parity.Parity.Xor(data, pp);

        if (erasedDataCount == 1)
        {
            int x = erasedData[0];
            var dx = Block(g.DataMember(Stripe, x), row);
            if (!pErased)
            {
                // D_x = P + Σ_{i≠x} D_i
                Block(p, row).CopyTo(dx);
                Parity.Parity.XorInto(pp, dx);
            }
            else
            {
                // D_x = g^-x (Q + Σ_{i≠x} g^i D_i)
                Invariant.Assert(!qErased && q >= 0);
                Parity.Parity.XorInto(Block(q, row), qq);
                Parity.Parity.MulInto(Gf256.Pow2(-x), qq, dx);
            }
            data[x] = dx.ToArray();
        }
        else if (erasedDataCount == 2)
        {
            Invariant.Assert(!pErased && !qErased);
            int x = erasedData[0], y = erasedData[1];
            // pxy = D_x + D_y, qxy = g^x D_x + g^y D_y  =>  D_x = (qxy + g^y pxy) / (g^x + g^y), D_y = pxy + D_x
            Parity.Parity.XorInto(Block(p, row), pp);
            Parity.Parity.XorInto(Block(q, row), qq);
            Parity.Parity.MulXorInto(Gf256.Pow2(y), pp, qq);
            var dx = Block(g.DataMember(Stripe, x), row);
            var dy = Block(g.DataMember(Stripe, y), row);
            Parity.Parity.MulInto(Gf256.Inv((byte)(Gf256.Pow2(x) ^ Gf256.Pow2(y))), qq, dx);
            pp.CopyTo(dy);
            Parity.Parity.XorInto(dx, dy);
            data[x] = dx.ToArray();
            data[y] = dy.ToArray();
        }
        if (pErased || qErased)
        {
            var pn = new byte[Units.BlockBytes];
            var qn = new byte[Units.BlockBytes];
            if (g.ParityMembers == 2) Parity.Parity.GenPQ(data, pn, qn);
            else Parity.Parity.Xor(data, pn);
            if (pErased) pn.CopyTo(Block(p, row));
            if (qErased) qn.CopyTo(Block(q, row));
        }
        for (int m = 0; m < n; m++)
            if (RowState(m, row) == Bad)
            {
                SetState(m, row, Ok);
                Reconstructed[m][row - RowLo] = true;
            }
        return true;
    }

    public void Dispose()
    {
        for (int m = 0; m < Buffers.Length; m++)
        {
            if (Buffers[m] is { } b) BlockBuffers.Return(b);
            Buffers[m] = null;
        }
    }
}
