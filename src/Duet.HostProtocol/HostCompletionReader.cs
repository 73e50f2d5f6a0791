using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Duet.Core;

namespace Duet.HostProtocol;

/// <summary>The host side's receive loop: completion frames from one unit connection.</summary>
static class HostCompletionReader
{
    /// <summary>
    /// Hands every completion read from <paramref name="stream"/> to <paramref name="deliver"/> (a
    /// frame that decoded with a recoverable error as <see cref="HostStatus.ProtocolError"/>) until the
    /// unit closes the connection, the framing is lost, the transport fails or <paramref name="ct"/>
    /// fires. Returns why it stopped: null for an orderly end of stream.
    /// </summary>
    public static Task<string?> ReceiveAsync(Stream stream, Action<HostCompletion> deliver, CancellationToken ct) =>
        ReceiveAsync(stream, null, deliver, ct);

    /// <summary>As above; with <paramref name="thread"/>, the loop runs on the connection's own reader thread and reads
    /// through its stream, which sleeps in the socket there (a completion is then taken with one wake-up, not the
    /// socket engine's epoll thread's and a pool worker's). <paramref name="deliver"/> must not block.</summary>
    public static async Task<string?> ReceiveAsync(Stream stream, ConnectionReader? thread, Action<HostCompletion> deliver, CancellationToken ct)
    {
        var input = PipeReader.Create(thread?.Stream ?? stream, new StreamPipeReaderOptions(leaveOpen: true));
        try
        {
            while (true)
            {
                if (thread is not null) await thread.SwitchTo(); // at once when it is there
                var result = await input.ReadAsync(ct);
                var buffer = result.Buffer;
                var reader = new SequenceReader<byte>(buffer);
                string? broken = null;
                while (true)
                {
                    var status = HostCodec.TryReadCompletion(ref reader, HostWire.PayloadBytesMax, out var completion, out var error);
                    if (status == OperationStatus.NeedMoreData) break;
                    if (status == OperationStatus.InvalidData && error.LosesFraming())
                    {
                        broken = $"malformed completion ({error})";
                        break;
                    }
                    if (completion is not null) deliver(status == OperationStatus.Done ? completion : completion with { Status = HostStatus.ProtocolError });
                }
                input.AdvanceTo(reader.Position, buffer.End);
                if (broken is not null) return broken;
                if (result.IsCompleted) return null;
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            return e.Message;
        }
        finally
        {
            await input.CompleteAsync();
        }
    }
}
