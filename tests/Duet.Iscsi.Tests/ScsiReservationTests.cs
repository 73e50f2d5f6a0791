using System.Buffers.Binary;
using System.Text;
using Duet.Iscsi.Scsi;
using static Duet.Iscsi.Tests.ScsiHarness;

namespace Duet.Iscsi.Tests;

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiReservationTests
{
    const ulong KeyA = 0xAAAA_0000_0000_0001, KeyB = 0xBBBB_0000_0000_0002;
    static readonly ItNexus C = new("iqn.2026-01.test:host-c", 0x23d000000003, 1, 1);

    static ScsiResult Register(ScsiHarness h, ItNexus n, ulong key, ulong newKey, byte flags = 0) =>
        h.Run(Cdb.PrOut(0), Cdb.PrOutParams(key, newKey, flags), n);
    static ScsiResult RegisterIgnore(ScsiHarness h, ItNexus n, ulong newKey) => h.Run(Cdb.PrOut(6), Cdb.PrOutParams(0, newKey), n);
    static ScsiResult Reserve(ScsiHarness h, ItNexus n, ulong key, PrType type) => h.Run(Cdb.PrOut(1, (byte)type), Cdb.PrOutParams(key, 0), n);
    static ScsiResult ReleasePr(ScsiHarness h, ItNexus n, ulong key, PrType type) => h.Run(Cdb.PrOut(2, (byte)type), Cdb.PrOutParams(key, 0), n);
    static ScsiResult Clear(ScsiHarness h, ItNexus n, ulong key) => h.Run(Cdb.PrOut(3), Cdb.PrOutParams(key, 0), n);
    static ScsiResult Preempt(ScsiHarness h, ItNexus n, ulong key, ulong victim, PrType type, bool abort = false) =>
        h.Run(Cdb.PrOut((byte)(abort ? 5 : 4), (byte)type), Cdb.PrOutParams(key, victim), n);

    static (uint Generation, ulong[] Keys) ReadKeys(ScsiHarness h, ItNexus? n = null)
    {
        var r = h.Run(Cdb.PrIn(0), nexus: n);
        Good(r);
        var d = r.DataIn.Span;
        int len = (int)BinaryPrimitives.ReadUInt32BigEndian(d[4..]);
        var keys = new ulong[len / 8];
        for (int i = 0; i < keys.Length; i++) keys[i] = BinaryPrimitives.ReadUInt64BigEndian(d[(8 + 8 * i)..]);
        return (BinaryPrimitives.ReadUInt32BigEndian(d), keys);
    }

    static (ulong Key, PrType Type)? ReadReservation(ScsiHarness h)
    {
        var r = h.Run(Cdb.PrIn(1));
        Good(r);
        var d = r.DataIn.Span;
        if (BinaryPrimitives.ReadUInt32BigEndian(d[4..]) == 0) return null;
        Assert.Equal(24, d.Length);
        return (BinaryPrimitives.ReadUInt64BigEndian(d[8..]), (PrType)(d[21] & 0x0F));
    }

    [Fact]
    public void RegisterReadKeysAndGeneration()
    {
        var h = Ready();
        Assert.Equal(0u, ReadKeys(h).Generation);
        Assert.Empty(ReadKeys(h).Keys);
        h.ClearAttentions(C);
        Good(Register(h, A, 0, KeyA));
        Good(RegisterIgnore(h, B, KeyB));
        var (gen, keys) = ReadKeys(h);
        Assert.Equal(2u, gen);
        Assert.Equal(new[] { KeyA, KeyB }, keys);
        Conflict(Register(h, A, 0x1234, 0x5678));       // wrong key
        Conflict(Register(h, C, 0x1234, 0x5678));       // unregistered with a nonzero key
        Good(Register(h, C, 0, 0));                     // unregistered, nothing to register: no change
        Assert.Equal(2u, ReadKeys(h).Generation);
        Good(Register(h, A, KeyA, 0xA2));               // change the key
        Good(RegisterIgnore(h, B, 0xB2));               // and ignoring the old one
        Assert.Equal(new[] { 0xA2ul, 0xB2ul }, ReadKeys(h).Keys);
        Good(Register(h, B, 0xB2, 0));                  // unregister
        Assert.Equal(5u, ReadKeys(h).Generation);
        Assert.Equal(new[] { 0xA2ul }, ReadKeys(h).Keys);
        // Truncation: the header still tells the full length.
        var r = h.Run(Cdb.PrIn(0, alloc: 8));
        Assert.Equal(8, r.DataIn.Length);
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(r.DataIn.Span[4..]));
    }

    [Fact]
    public void ParameterListErrors()
    {
        var h = Ready();
        CheckCondition(h.Run(Cdb.PrOut(0, length: 20), new byte[20]), 5, 0x1A, 0);
        CheckCondition(h.Run(Cdb.PrOut(0, length: 28), new byte[28]), 5, 0x1A, 0);
        var r = Register(h, A, 0, KeyA, flags: 0x08);  // SPEC_I_PT
        InvalidParameter(r);
        Assert.Equal((false, 20, 3), FieldPointer(r));
        InvalidParameter(Register(h, A, 0, KeyA, flags: 0x04)); // ALL_TG_PT
        var withIds = new byte[40];
        Cdb.PrOutParams(0, KeyA, flags: 0x08).CopyTo(withIds, 0);
        InvalidParameter(h.Run(Cdb.PrOut(0, length: 40), withIds)); // a SPEC_I_PT list: the bit, not the length, is what is refused
        Good(Register(h, A, 0, KeyA));
        InvalidField(h.Run(Cdb.PrOut(1, 0x13), Cdb.PrOutParams(KeyA, 0))); // scope 1
        InvalidField(h.Run(Cdb.PrOut(1, 0x02), Cdb.PrOutParams(KeyA, 0))); // type 2: obsolete
        InvalidField(h.Run(Cdb.PrOut(1, 0x00), Cdb.PrOutParams(KeyA, 0)));
        InvalidField(h.Run(Cdb.PrOut(8), Cdb.PrOutParams(KeyA, 0)));       // no such service action
        CheckCondition(h.Run(Cdb.PrOut(0), new byte[10]), 5, 0x0E, 0x03);   // Data-Out shorter than the list
    }

    [Fact]
    public void ReserveAndReleaseRules()
    {
        var h = Ready();
        Conflict(Reserve(h, A, KeyA, PrType.WriteExclusive));   // not registered
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Conflict(Reserve(h, A, KeyB, PrType.WriteExclusive));   // wrong key
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive));
        uint gen = ReadKeys(h).Generation;
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive));       // again, same type: GOOD
        Conflict(Reserve(h, A, KeyA, PrType.ExclusiveAccess));  // the holder cannot change the type this way
        Conflict(Reserve(h, B, KeyB, PrType.WriteExclusive));   // another nexus
        Assert.Equal((KeyA, PrType.WriteExclusive), ReadReservation(h));
        Good(ReleasePr(h, B, KeyB, PrType.WriteExclusive));     // not the holder: GOOD, nothing released
        Assert.NotNull(ReadReservation(h));
        CheckCondition(ReleasePr(h, A, KeyA, PrType.ExclusiveAccess), 5, 0x26, 0x04); // INVALID RELEASE OF PERSISTENT RESERVATION
        Good(ReleasePr(h, A, KeyA, PrType.WriteExclusive));
        Assert.Null(ReadReservation(h));
        Assert.Equal(gen, ReadKeys(h).Generation);              // RESERVE and RELEASE do not bump PRgeneration
        Good(ReleasePr(h, A, KeyA, PrType.WriteExclusive));     // nothing reserved: GOOD
    }

    public static TheoryData<PrType, bool, bool, bool, bool> AccessMatrix => new()
    {
        // type, registered B may read, write, unregistered B may read, write (SPC-4 table 62 / SBC-3 table 13)
        { PrType.WriteExclusive, true, false, true, false },
        { PrType.ExclusiveAccess, false, false, false, false },
        { PrType.WriteExclusiveRegistrantsOnly, true, true, true, false },
        { PrType.ExclusiveAccessRegistrantsOnly, true, true, false, false },
        { PrType.WriteExclusiveAllRegistrants, true, true, true, false },
        { PrType.ExclusiveAccessAllRegistrants, true, true, false, false },
    };

    [Theory]
    [MemberData(nameof(AccessMatrix))]
    public void ConflictMatrix(PrType type, bool regRead, bool regWrite, bool unregRead, bool unregWrite)
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, A, KeyA, type));
        Assert.Equal((PersistentReservationIsAllRegistrants(type) ? 0 : KeyA, type), ReadReservation(h));
        Good(h.Run(Cdb.Read10(0, 1), nexus: A));
        Good(h.Run(Cdb.Write10(0, 1), new byte[512], nexus: A));
        ExpectAccess(h, regRead, regWrite);
        Good(Register(h, B, KeyB, 0));
        ExpectAccess(h, unregRead, unregWrite);
        // Always allowed, whatever the type.
        Good(h.Run(Cdb.Inquiry(), nexus: B));
        Good(h.Run(Cdb.ReportLuns(), nexus: B));
        Good(h.Run(Cdb.TestUnitReady(), nexus: B));
        Good(h.Run(Cdb.ReadCapacity10(), nexus: B));
        Good(h.Run(Cdb.ReadCapacity16(), nexus: B));
        Good(h.Run(Cdb.PrIn(0), nexus: B));
        Good(h.Run(Cdb.MaintenanceIn(0x0A, 1024), nexus: B));
        // MODE SENSE/SELECT and SYNCHRONIZE CACHE are write-class: conflict for an unregistered nexus.
        Conflict(h.Run(Cdb.ModeSense6(0x3F), nexus: B));
        Conflict(h.Run(Cdb.SyncCache10(), nexus: B));
        // SPC-2 RESERVE/RELEASE conflict whenever registrations exist.
        Conflict(h.Run(Cdb.Reserve6(), nexus: B));
        Conflict(h.Run(Cdb.Release6(), nexus: A));
        // Another LUN is not affected.
        Good(h.Run(Cdb.Write10(0, 1), new byte[512], nexus: B, lun: 1));
        Good(ReleasePr(h, A, KeyA, type));
        Good(h.Run(Cdb.Write10(0, 1), new byte[512], nexus: B));
    }

    static bool PersistentReservationIsAllRegistrants(PrType t) => t is PrType.WriteExclusiveAllRegistrants or PrType.ExclusiveAccessAllRegistrants;

    static void ExpectAccess(ScsiHarness h, bool read, bool write)
    {
        var readCommands = new[] { Cdb.Read10(0, 1), Cdb.Read16(0, 1), Cdb.Rw10(0x2F, 0, 1), Cdb.Rw10(0x34, 0, 1), Cdb.GetLbaStatus(0) };
        foreach (var c in readCommands)
        {
            var r = h.Run(c, nexus: B);
            if (read) Good(r); else Conflict(r);
        }
        var writeCommands = new (byte[] Cdb, byte[] Data)[]
        {
            (Cdb.Write10(0, 1), new byte[512]), (Cdb.Write16(0, 1), new byte[512]), (Cdb.WriteSame10(0, 1), new byte[512]),
            (Cdb.Unmap(24), Cdb.UnmapList((8, 1))), (Cdb.Rw10(0x2E, 0, 1), new byte[512]),
        };
        foreach (var (c, data) in writeCommands)
        {
            var r = h.Run(c, data, nexus: B);
            if (write) Good(r); else Conflict(r);
        }
    }

    [Fact]
    public void UnregisteringTheHolderReleasesRegistrantsOnly_AllRegistrantsStaysUntilTheLast()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, A, KeyA, PrType.WriteExclusiveRegistrantsOnly));
        Good(Register(h, A, KeyA, 0));
        Assert.Null(ReadReservation(h));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x04); // RESERVATIONS RELEASED
        Good(Register(h, A, 0, KeyA));
        Good(Reserve(h, A, KeyA, PrType.ExclusiveAccessAllRegistrants));
        Good(Register(h, A, KeyA, 0));
        Assert.Equal((0ul, PrType.ExclusiveAccessAllRegistrants), ReadReservation(h));
        Good(ReleasePr(h, B, KeyB, PrType.ExclusiveAccessAllRegistrants)); // B holds it too
        Assert.Null(ReadReservation(h));
    }

    [Fact]
    public void ReleasingAnAllRegistrantsOrRegistrantsOnlyReservationTellsTheOthers()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, A, KeyA, PrType.ExclusiveAccessRegistrantsOnly));
        Good(ReleasePr(h, A, KeyA, PrType.ExclusiveAccessRegistrantsOnly));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x04);
        Good(h.Run(Cdb.TestUnitReady(), nexus: A));
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive));
        Good(ReleasePr(h, A, KeyA, PrType.WriteExclusive));
        Good(h.Run(Cdb.TestUnitReady(), nexus: B));                         // WE/EA: no unit attention
    }

    [Fact]
    public void ClearRemovesEverythingAndTellsTheOthers()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, B, KeyB, PrType.ExclusiveAccess));
        h.ClearAttentions(C);
        Conflict(Clear(h, C, 0));
        Good(Clear(h, A, KeyA));
        Assert.Empty(ReadKeys(h).Keys);
        Assert.Null(ReadReservation(h));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x03); // RESERVATIONS PREEMPTED
        Good(h.Run(Cdb.TestUnitReady(), nexus: A));
    }

    [Fact]
    public void PreemptTakesTheReservationAndRemovesTheVictim()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, B, KeyB, PrType.WriteExclusive));
        uint gen = ReadKeys(h).Generation;
        var aborted = new List<(ulong, ItNexus)>();
        h.Device.PreemptedAndAborted += (lun, nexuses) => aborted.AddRange(nexuses.Select(n => (lun, n)));
        Conflict(Preempt(h, A, 0x999, KeyB, PrType.ExclusiveAccess));      // wrong own key
        Good(Preempt(h, A, KeyA, KeyB, PrType.ExclusiveAccess, abort: true));
        Assert.Equal([(0ul, B)], aborted);
        Assert.Equal(gen + 1, ReadKeys(h).Generation);
        Assert.Equal(new[] { KeyA }, ReadKeys(h).Keys);
        Assert.Equal((KeyA, PrType.ExclusiveAccess), ReadReservation(h));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x05); // REGISTRATIONS PREEMPTED
        Conflict(h.Run(Cdb.Read10(0, 1), nexus: B));
    }

    [Fact]
    public void PreemptWithoutReservationRemovesRegistrations_ZeroKeyIsInvalid_UnknownKeyConflicts()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        h.ClearAttentions(C);
        Good(Register(h, C, 0, KeyB));                                       // two nexuses share a key
        Conflict(Preempt(h, A, KeyA, 0x777, PrType.WriteExclusive));
        InvalidParameter(Preempt(h, A, KeyA, 0, PrType.WriteExclusive));
        Good(Preempt(h, A, KeyA, KeyB, PrType.WriteExclusive));
        Assert.Equal(new[] { KeyA }, ReadKeys(h).Keys);
        Assert.Null(ReadReservation(h));                                    // no reservation was created
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: C), 6, 0x2A, 0x05);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x05);
        Good(h.Run(Cdb.TestUnitReady(), nexus: A));
    }

    [Fact]
    public void PreemptOfAllRegistrantsWithZeroKeyRemovesEveryOtherRegistration()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, B, KeyB, PrType.WriteExclusiveAllRegistrants));
        Good(Preempt(h, A, KeyA, 0, PrType.WriteExclusive));
        Assert.Equal(new[] { KeyA }, ReadKeys(h).Keys);
        Assert.Equal((KeyA, PrType.WriteExclusive), ReadReservation(h));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x05);
    }

    [Fact]
    public void PreemptingOwnReservationChangesItsType()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive));
        Good(Preempt(h, A, KeyA, KeyA, PrType.ExclusiveAccessRegistrantsOnly));
        Assert.Equal((KeyA, PrType.ExclusiveAccessRegistrantsOnly), ReadReservation(h));
        Assert.Equal(new[] { KeyA, KeyB }, ReadKeys(h).Keys);
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x2A, 0x04); // type changed: RESERVATIONS RELEASED
    }

    [Fact]
    public void ReportCapabilitiesAndFullStatus()
    {
        var h = Ready();
        var caps = h.Run(Cdb.PrIn(2)).DataIn.Span;
        Assert.Equal(8, BinaryPrimitives.ReadUInt16BigEndian(caps));
        Assert.Equal(0, caps[2] & 0x0C);                 // SIP_C, ATP_C: not supported
        Assert.Equal(1, caps[2] & 0x01);                 // PTPL_C
        Assert.Equal(0x80, caps[3] & 0x80);              // TMV
        Assert.Equal(0xEA01, BinaryPrimitives.ReadUInt16BigEndian(caps[4..]));
        Good(Register(h, A, 0, KeyA));
        Good(Register(h, B, 0, KeyB));
        Good(Reserve(h, B, KeyB, PrType.ExclusiveAccess));
        var full = h.Run(Cdb.PrIn(3)).DataIn.ToArray();
        int total = (int)BinaryPrimitives.ReadUInt32BigEndian(full.AsSpan(4));
        Assert.Equal(full.Length - 8, total);
        var entries = new List<(ulong Key, bool Holder, int Type, int Port, string Id)>();
        for (int at = 8; at < full.Length;)
        {
            int idLen = (int)BinaryPrimitives.ReadUInt32BigEndian(full.AsSpan(at + 20));
            var id = full.AsSpan(at + 24, idLen);
            Assert.Equal(0x45, id[0]);                   // iSCSI, initiator port format
            entries.Add((BinaryPrimitives.ReadUInt64BigEndian(full.AsSpan(at)), (full[at + 12] & 1) != 0, full[at + 13] & 0xF,
                BinaryPrimitives.ReadUInt16BigEndian(full.AsSpan(at + 18)), Encoding.UTF8.GetString(id[4..]).TrimEnd('\0')));
            at += 24 + idLen;
        }
        Assert.Equal((KeyA, false, 0, 1, "iqn.2026-01.test:host-a,i,0x23d000000001"), entries[0]);
        Assert.Equal((KeyB, true, 3, 2, "iqn.2026-01.test:host-b,i,0x23d000000002"), entries[1]);
    }

    [Fact]
    public void RegisterAndMoveHandsTheReservationToAnotherNexus()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Reserve(h, A, KeyA, PrType.ExclusiveAccess));
        var name = Encoding.UTF8.GetBytes("iqn.2026-01.test:host-b,i,0x23d000000002");
        int idLength = (name.Length + 1 + 3) & ~3;
        var list = new byte[24 + 4 + idLength];
        BinaryPrimitives.WriteUInt64BigEndian(list, KeyA);
        BinaryPrimitives.WriteUInt64BigEndian(list.AsSpan(8), KeyB);
        list[17] = 0x02;                                   // UNREG
        BinaryPrimitives.WriteUInt16BigEndian(list.AsSpan(18), 2); // relative target port 2
        BinaryPrimitives.WriteUInt32BigEndian(list.AsSpan(20), (uint)(4 + idLength));
        list[24] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(list.AsSpan(26), (ushort)idLength);
        name.CopyTo(list, 28);
        Good(h.Run(Cdb.PrOut(7, (byte)PrType.ExclusiveAccess, (uint)list.Length), list));
        Assert.Equal(new[] { KeyB }, ReadKeys(h).Keys);
        Assert.Equal((KeyB, PrType.ExclusiveAccess), ReadReservation(h));
        Good(h.Run(Cdb.Read10(0, 1), nexus: B));
        Conflict(h.Run(Cdb.Read10(0, 1), nexus: A));
        Conflict(h.Run(Cdb.PrOut(7, (byte)PrType.ExclusiveAccess, (uint)list.Length), list)); // A is no longer registered
    }

    [Fact]
    public void StateGoesThroughTheStoreAndSurvivesAnotherDevice()
    {
        // A failover: the peer's device server starts from the mirrored store and enforces the same reservation.
        var h = Ready();
        int saves = 0;
        h.Store.Changed += (_, _) => saves++;
        Good(Register(h, A, 0, KeyA));
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive));
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive)); // no change: not saved again
        Assert.Equal(2, saves);
        var snapshot = h.Store.Load("vol0")!;
        Assert.Equal(PrType.WriteExclusive, snapshot.Type);
        Assert.Equal(KeyA, snapshot.Registrations[snapshot.HolderIndex].Key);

        var peer = new ScsiHarness(store: h.Store);
        peer.ClearAttentions(A);
        peer.ClearAttentions(B);
        Assert.Equal((KeyA, PrType.WriteExclusive), ReadReservation(peer));
        Conflict(peer.Run(Cdb.Write10(0, 1), new byte[512], nexus: B));
        Good(peer.Run(Cdb.Write10(0, 1), new byte[512], nexus: A));

        // A snapshot arriving from elsewhere (the peer's mirror) replaces the running state; the registrant
        // whose registration went (a CLEAR there) hears RESERVATIONS PREEMPTED, once.
        _ = h.Store.SaveAsync("vol0", PrSnapshot.Empty);
        CheckCondition(h.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x03);
        CheckCondition(peer.Run(Cdb.TestUnitReady()), 6, 0x2A, 0x03);
        Good(h.Run(Cdb.TestUnitReady()));
        Assert.Null(ReadReservation(h));
        Assert.Null(ReadReservation(peer));

        // A disposed device no longer follows the store.
        Good(Register(peer, A, 0, KeyA));
        h.Device.Dispose();
        Good(Reserve(peer, A, KeyA, PrType.ExclusiveAccess));
        Assert.Null(ReadReservation(h));
        Assert.Equal((KeyA, PrType.ExclusiveAccess), ReadReservation(peer));
    }

    [Fact]
    public void ColdResetClearsReservationsUnlessAptpl_WarmResetKeepsThem()
    {
        var h = Ready();
        Good(Register(h, A, 0, KeyA));
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive));
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.TargetWarmReset, 0));
        h.ClearAttentions(A);
        Assert.NotNull(ReadReservation(h));
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.LogicalUnitReset, 0));
        h.ClearAttentions(A);
        Assert.NotNull(ReadReservation(h));
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.TargetColdReset, 0));
        h.ClearAttentions(A);
        Assert.Null(ReadReservation(h));
        Assert.Empty(ReadKeys(h).Keys);
        Assert.Empty(h.Store.Load("vol0")!.Registrations);

        Good(Register(h, A, 0, KeyA, flags: 0x01)); // APTPL
        Good(Reserve(h, A, KeyA, PrType.WriteExclusive));
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.TargetColdReset, 0));
        h.ClearAttentions(A);
        Assert.Equal((KeyA, PrType.WriteExclusive), ReadReservation(h));
        Assert.True(h.Store.Load("vol0")!.Aptpl);
    }

    [Fact]
    public void Spc2ReserveAndRelease()
    {
        var h = Ready();
        Good(h.Run(Cdb.Reserve6()));
        Good(h.Run(Cdb.Reserve6()));                           // again by the holder
        Conflict(h.Run(Cdb.Reserve6(), nexus: B));
        Conflict(h.Run(Cdb.Reserve10(), nexus: B));
        Good(h.Run(Cdb.Release6(), nexus: B));                 // someone else's: a no-op
        Good(h.Run(Cdb.ModeSense6(0x3F)));
        Conflict(h.Run(Cdb.ModeSense6(0x3F), nexus: B));
        Conflict(h.Run(Cdb.Read10(0, 1), nexus: B));
        Conflict(h.Run(Cdb.PrOut(0), Cdb.PrOutParams(0, KeyB), nexus: B));
        Good(h.Run(Cdb.PrIn(0), nexus: B));                    // PERSISTENT RESERVE IN is always allowed
        Good(h.Run(Cdb.Inquiry(), nexus: B));
        Good(h.Run(Cdb.ReportLuns(), nexus: B));
        Good(h.Run(Cdb.RequestSense(), nexus: B));
        Good(h.Run(Cdb.Read10(0, 1), nexus: B, lun: 1));       // other LUN
        Good(h.Run(Cdb.Release10()));
        Good(h.Run(Cdb.Reserve10(), nexus: B));
        Good(h.Run(Cdb.Release6(), nexus: B));
        Good(h.Run(Cdb.Read10(0, 1)));
        // A registration makes RESERVE/RELEASE conflict (SPC-4 5.12.3).
        Good(Register(h, B, 0, KeyB));
        Conflict(h.Run(Cdb.Reserve6()));
        Conflict(h.Run(Cdb.Release6()));
        var bad = Cdb.Reserve6();
        bad[1] = 0x10; // third party
        InvalidField(h.Run(bad));
    }

    [Fact]
    public void Spc2ReservationGoesWithResetsAndNexusLoss()
    {
        var h = Ready();
        Good(h.Run(Cdb.Reserve6()));
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.LogicalUnitReset, 0));
        CheckCondition(h.Run(Cdb.TestUnitReady(), nexus: B), 6, 0x29, 0);
        Good(h.Run(Cdb.Reserve6(), nexus: B));
        h.Device.NexusLost(B);
        h.ClearAttentions(A);
        Good(h.Run(Cdb.Reserve6()));
        Assert.Equal(0, h.Tmf(A, TaskManagementFunction.TargetWarmReset, 0));
        h.ClearAttentions(B);
        Good(h.Run(Cdb.Reserve6(), nexus: B));
        Assert.Equal(2, h.Tmf(A, TaskManagementFunction.LogicalUnitReset, 9));
    }
}

[Trait("Claim", "ISCSI-SCSI")]
public class ScsiReservationStoreTests
{
    /// <summary>A store that delivers its change events late (as a mirror to the peer might).</summary>
    sealed class LateStore : IReservationStore
    {
        readonly InMemoryReservationStore _inner = new();
        public readonly List<(string, PrSnapshot)> Pending = [];
        public event Action<string, PrSnapshot>? Changed;
        public PrSnapshot? Load(string volumeName) => _inner.Load(volumeName);
        public ValueTask SaveAsync(string volumeName, PrSnapshot snapshot)
        {
            _ = _inner.SaveAsync(volumeName, snapshot);
            lock (Pending) Pending.Add((volumeName, snapshot));
            return ValueTask.CompletedTask;
        }
        public void DeliverFirst()
        {
            (string, PrSnapshot) first;
            lock (Pending) { first = Pending[0]; Pending.RemoveAt(0); }
            Changed?.Invoke(first.Item1, first.Item2);
        }
    }

    [Fact]
    public async Task LateEchoesOfOwnSavesDoNotRollTheStateBack_SavesArriveInOrder()
    {
        var store = new LateStore();
        var volume = new MemoryBlockVolume("vol0", 64 * 512);
        var device = new ScsiDevice(new VolumeList(volume), store);
        async Task<ScsiResult> Run(byte[] cdb, byte[]? data, ItNexus n) =>
            await device.ExecuteAsync(new ScsiCommand { Nexus = n, Lun = 0, Cdb = cdb, DataOut = data ?? [] }, default);
        var nexuses = Enumerable.Range(0, 16).Select(i => new ItNexus($"iqn.test:{i}", (ulong)i, 1, 1)).ToArray();
        foreach (var n in nexuses) await Run(Cdb.TestUnitReady(), null, n);
        await Task.WhenAll(nexuses.Select((n, i) => Task.Run(() => Run(Cdb.PrOut(6), Cdb.PrOutParams(0, (ulong)i + 1), n))));
        Assert.Equal(16, store.Load("vol0")!.Registrations.Count);   // the last save holds every registration
        Assert.Equal(16u, store.Load("vol0")!.Generation);
        store.DeliverFirst();                                        // the echo of the first save, late
        var keys = await Run(Cdb.PrIn(0), null, nexuses[0]);
        Assert.Equal(16u * 8, BinaryPrimitives.ReadUInt32BigEndian(keys.DataIn.Span[4..]));
    }
}
