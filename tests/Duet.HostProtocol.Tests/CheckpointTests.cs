using System.Buffers;
using Duet.Adapter;

namespace Duet.HostProtocol.Tests;

/// <summary>The AW-1 checkpoint channel's codec and the pure checkpoint table (no sockets).</summary>
[Trait("Claim", "AW-1")]
public class CheckpointTests
{
    static byte[] Pattern(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed * 13 + i))];

    static readonly ICheckpointMessage[] Samples =
    [
        new CheckpointHello(0x0102030405060708, 3, 4242),
        new CheckpointBefore(0x0003_0000_0000_0009, "vol0", 1 << 20, Fua: true, Pattern(4096, 1)),
        new CheckpointBefore(7, "é", 0, Fua: false, Pattern(65536, 2)),
        new CheckpointAfter(9, HostStatus.MediumError),
        CheckpointHeartbeat.Instance,
        new CheckpointAck(0x0003_0000_0000_0009),
    ];

    static ICheckpointMessage? ReadOne(ReadOnlySequence<byte> bytes, out OperationStatus status, out long consumed, out string? error)
    {
        var reader = new SequenceReader<byte>(bytes);
        status = CheckpointWire.TryRead(ref reader, out var message, out error);
        consumed = reader.Consumed;
        return message;
    }

    [Fact]
    public void Every_message_round_trips_whole_and_in_any_segmentation()
    {
        foreach (var m in Samples)
        {
            var frame = CheckpointWire.Encode(m);
            Assert.Equal(m, ReadOne(new ReadOnlySequence<byte>(frame), out var status, out long consumed, out _));
            Assert.Equal((OperationStatus.Done, frame.Length), (status, consumed));
            // Short by one byte: nothing consumed.
            Assert.Null(ReadOne(new ReadOnlySequence<byte>(frame, 0, frame.Length - 1), out status, out consumed, out _));
            Assert.Equal((OperationStatus.NeedMoreData, 0L), (status, consumed));
        }
        // All of them back to back, one byte per segment.
        var all = Samples.SelectMany(CheckpointWire.Encode).ToArray();
        var reader = new SequenceReader<byte>(OneBytePerSegment(all));
        foreach (var m in Samples)
        {
            Assert.Equal(OperationStatus.Done, CheckpointWire.TryRead(ref reader, out var back, out _));
            Assert.Equal(m, back);
        }
        Assert.True(reader.End);
    }

    [Fact]
    public void Frames_have_their_fields_where_the_doc_says()
    {
        var largest = new CheckpointBefore(8, new string('v', 255), 0, Fua: false, Pattern(HostWire.PayloadBytesMax, 3));
        var frame = CheckpointWire.Encode(largest);
        Assert.Equal(CheckpointWire.HeaderBytes + CheckpointWire.BodyBytesMax, frame.Length);
        Assert.Equal(largest, ReadOne(new ReadOnlySequence<byte>(frame), out _, out _, out _));

        var before = CheckpointWire.Encode(new CheckpointBefore(5, "v", 512, Fua: true, new byte[] { 0xAB, 0xCD }));
        Assert.Equal(Convert.FromHexString("4441434B 02 000000 0000001B 0000000000000005 0000000000000200 00000002 01 01 0000 76 ABCD".Replace(" ", "", StringComparison.Ordinal)), before);
        var after = CheckpointWire.Encode(new CheckpointAfter(5, HostStatus.IoError));
        Assert.Equal(Convert.FromHexString("4441434B 03 000000 0000000C 0000000000000005 00000001".Replace(" ", "", StringComparison.Ordinal)), after);
    }

    [Theory]
    [InlineData("4441434C 04 000000 00000000", "bad magic")]
    [InlineData("4441434B 06 000000 00000000", "unknown kind")]
    [InlineData("4441434B 04 000100 00000000", "reserved")]
    [InlineData("4441434B 04 000000 00000001 00", "body of 1")]
    [InlineData("4441434B 03 000000 0000000B 0000000000000005 000001", "body of 11")]
    [InlineData("4441434B 02 000000 0000001B 0000000000000005 0000000000000200 00000002 02 01 0000 76 ABCD", "flags")]
    [InlineData("4441434B 02 000000 0000001B 0000000000000005 0000000000000200 00000003 01 01 0000 76 ABCD", "write")]
    [InlineData("4441434B 02 000000 0000001B 0000000000000005 0000000000000200 00000002 01 01 0000 FF ABCD", "UTF-8")]
    [InlineData("4441434B 01 000000 00000010 0000000000000001 0003 0001 00000005", "hello")]
    public void Malformed_frames_break_the_channel(string hex, string why)
    {
        var bytes = Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));
        Assert.Null(ReadOne(new ReadOnlySequence<byte>(bytes), out var status, out _, out var error));
        Assert.Equal(OperationStatus.InvalidData, status);
        Assert.Contains(why, error, StringComparison.Ordinal);
    }

    [Fact]
    public void The_table_holds_every_write_without_an_after_in_checkpoint_order_and_acks_each_before()
    {
        var table = new CheckpointTable();
        Assert.Throws<InvalidDataException>(() => table.Apply(new CheckpointBefore(1, "v", 0, false, Pattern(512, 1))));
        Assert.Equal(new CheckpointAck(0), table.Apply(new CheckpointHello(0x77, 2, 100)));
        Assert.Throws<InvalidDataException>(() => table.Apply(new CheckpointHello(0x77, 2, 100)));

        var tags = new HostTagSource(((ulong)2 << 48) + 1);
        var writes = Enumerable.Range(0, 4).Select(i => new CheckpointBefore(tags.Next(), "v", i * 4096L, i == 2, Pattern(4096, (byte)i))).ToArray();
        // Tags need not arrive in order (the primary draws them concurrently); the table keeps arrival order.
        foreach (var w in new[] { writes[1], writes[0], writes[3], writes[2] })
            Assert.Equal(new CheckpointAck(w.Tag), table.Apply(w));
        Assert.Throws<InvalidDataException>(() => table.Apply(writes[0])); // a tag checkpointed twice
        Assert.Null(table.Apply(CheckpointHeartbeat.Instance));
        Assert.Null(table.Apply(new CheckpointAfter(writes[0].Tag, HostStatus.Ok)));
        Assert.Null(table.Apply(new CheckpointAfter(writes[3].Tag, HostStatus.IoError)));
        Assert.Null(table.Apply(new CheckpointAfter(12345, HostStatus.Ok)));
        Assert.Equal(1, table.UnknownAfters);
        Assert.Throws<InvalidDataException>(() => table.Apply(new CheckpointAck(1))); // acks go the other way

        var plan = table.Takeover();
        Assert.Equal(0x77UL, plan.HostId);
        Assert.Equal(3, plan.Generation); // the backup's tags are above every tag of generation 2
        Assert.Equal([writes[1], writes[2]], plan.Unfinished);
        Assert.True(HostTagSource.ForGeneration(plan.Generation).Next() > writes.Max(w => w.Tag));
    }

    static ReadOnlySequence<byte> OneBytePerSegment(byte[] bytes)
    {
        var first = new Segment(bytes.AsMemory(0, 1), 0);
        var last = first;
        for (int i = 1; i < bytes.Length; i++) last = last.Append(bytes.AsMemory(i, 1));
        return new ReadOnlySequence<byte>(first, 0, last, 1);
    }

    sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
