using System.Buffers.Binary;
using System.Collections.Concurrent;
using Duet.Iscsi.Scsi;

namespace Duet.Iscsi.Tests;

/// <summary>
/// A test-only SCSI device for transport tests: one LUN of memory with TEST UNIT READY, INQUIRY,
/// READ CAPACITY(10), READ(10), WRITE(10) and REPORT LUNS; anything else is CHECK CONDITION.
/// Real-client tests use the real ScsiDevice instead.
/// </summary>
public sealed class IscsiTestDevice(long sizeBytes = 16 << 20) : IScsiDevice
{
    public const int BlockBytes = 512;
    private readonly byte[] _data = new byte[sizeBytes];

    public IReadOnlyList<ulong> Luns { get; } = [0];
    public ConcurrentQueue<ScsiCommand> Commands { get; } = new();
    public ConcurrentQueue<(TaskManagementFunction Function, ulong Lun)> TaskManagement { get; } = new();
    public ConcurrentQueue<ItNexus> LostNexuses { get; } = new();

    /// <summary>When set, commands wait for it before running (abort tests).</summary>
    public TaskCompletionSource? Gate { get; set; }

    public byte[] Contents => _data;

    public async ValueTask<ScsiResult> ExecuteAsync(ScsiCommand command, CancellationToken cancellationToken)
    {
        Commands.Enqueue(command);
        if (Gate is { } gate) await gate.Task.WaitAsync(cancellationToken);
        var cdb = command.Cdb.Span;
        if (command.Lun != 0) return Check(0x05, 0x25, 0);
        switch (cdb[0])
        {
            case 0x00:
                return ScsiResult.Good(default, 0);
            case 0x12:
            {
                int allocation = BinaryPrimitives.ReadUInt16BigEndian(cdb[3..]);
                var inquiry = new byte[36];
                inquiry[2] = 6;
                inquiry[3] = 2;
                inquiry[4] = 31;
                "DUET    "u8.CopyTo(inquiry.AsSpan(8));
                "TEST DEVICE     "u8.CopyTo(inquiry.AsSpan(16));
                "0001"u8.CopyTo(inquiry.AsSpan(32));
                return ScsiResult.Good(inquiry, Math.Min(allocation, inquiry.Length));
            }
            case 0x25:
            {
                var capacity = new byte[8];
                BinaryPrimitives.WriteUInt32BigEndian(capacity, (uint)(_data.Length / BlockBytes - 1));
                BinaryPrimitives.WriteUInt32BigEndian(capacity.AsSpan(4), BlockBytes);
                return ScsiResult.Good(capacity, 8);
            }
            case 0x28:
            case 0x2a:
            {
                long lba = BinaryPrimitives.ReadUInt32BigEndian(cdb[2..]);
                int blocks = BinaryPrimitives.ReadUInt16BigEndian(cdb[7..]);
                int bytes = blocks * BlockBytes;
                if ((lba + blocks) * BlockBytes > _data.Length) return Check(0x05, 0x21, 0);
                if (cdb[0] == 0x28) return ScsiResult.Good(_data.AsMemory((int)(lba * BlockBytes), bytes), bytes);
                int n = Math.Min(bytes, command.DataOut.Length);
                command.DataOut.Span[..n].CopyTo(_data.AsSpan((int)(lba * BlockBytes)));
                return ScsiResult.Good(default, bytes);
            }
            case 0xa0:
            {
                var luns = new byte[16];
                luns[3] = 8;
                return ScsiResult.Good(luns, 16);
            }
            default:
                return Check(0x05, 0x20, 0);
        }
    }

    public ValueTask<byte> TaskManagementAsync(ItNexus nexus, TaskManagementFunction function, ulong lun, CancellationToken cancellationToken)
    {
        TaskManagement.Enqueue((function, lun));
        return ValueTask.FromResult((byte)0);
    }

    public void NexusLost(ItNexus nexus) => LostNexuses.Enqueue(nexus);

    public static ScsiResult Check(byte key, byte asc, byte ascq)
    {
        var sense = new byte[18];
        sense[0] = 0x70;
        sense[2] = key;
        sense[7] = 10;
        sense[12] = asc;
        sense[13] = ascq;
        return new ScsiResult(ScsiStatus.CheckCondition, default, sense, 0);
    }
}
