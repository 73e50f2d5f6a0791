# A second process acting as controller B of a shared-memory ICL pair, written only from the
# documented window layout (docs/internals/interconnect.md): it makes its own window (a copy
# of A's header, owner "B", its own pid and nonce), does the session handshake, posts one message into A's command queue, rings A's doorbell
# (futex wake), and waits for A's reply in its own reply queue. Prints the reply message.
import ctypes, mmap, os, struct, sys, time

directory, pair = sys.argv[1], sys.argv[2]
a_path = os.path.join(directory, f"duet-icl-{pair}-A")
b_path = os.path.join(directory, f"duet-icl-{pair}-B")

fa = open(a_path, "r+b")
a = mmap.mmap(fa.fileno(), 0)
assert a[0:8] == b"DUETICL1" and struct.unpack_from("<I", a, 24)[0] == 1
total = struct.unpack_from("<Q", a, 16)[0]

def lane(w, i):
    entries, entries_off, msg_bytes, msg_off, data_bytes, data_off = struct.unpack_from("<6Q", w, 64 + 48 * i)
    return dict(entries=entries, entries_off=entries_off, msg_bytes=msg_bytes, msg_off=msg_off, control=384 + 384 * i)

# Our window: same sizes as A's, header copied, owner name "B", ready set last.
tmp = b_path + ".tmp"
with open(tmp, "wb") as f:
    f.truncate(total)
fb = open(tmp, "r+b")
b = mmap.mmap(fb.fileno(), 0)
b[0:256] = a[0:256]
b[24:28] = b"\0\0\0\0"
b[32:64] = b"B".ljust(32, b"\0")
# Our identity: process id (160), a fresh nonzero session nonce (168), start time 0 = not recorded (176).
nonce = struct.unpack("<q", os.urandom(8))[0] or 1
struct.pack_into("<Iiqq", b, 160, os.getpid(), 0, nonce, 0)
# The handshake: we accept A's session (A's nonce into our accepted word, 280) ...
struct.pack_into("<q", b, 280, struct.unpack_from("<q", a, 168)[0])
struct.pack_into("<I", b, 24, 1)
os.rename(tmp, b_path)

# ... and post only once A has accepted ours (A writes our nonce into its accepted word).
deadline = time.time() + 20
while struct.unpack_from("<q", a, 280)[0] != nonce:
    if time.time() > deadline:
        print("not accepted"); sys.exit(3)
    time.sleep(0.001)

if len(sys.argv) > 3 and sys.argv[3] == "hold":
    # Paired, and now just alive until killed (the liveness test).
    print("paired"); sys.stdout.flush()
    while True:
        time.sleep(1)

# Post one message-only transfer into A's command queue (lane 0).
cmd = lane(a, 0)
head = struct.unpack_from("<q", a, cmd["control"] + 0)[0]
msg_head = struct.unpack_from("<q", a, cmd["control"] + 128)[0]
data_head = struct.unpack_from("<q", a, cmd["control"] + 256)[0]
message = f"hello from pid {os.getpid()}".encode()
start = msg_head % cmd["msg_bytes"]
assert start + len(message) <= cmd["msg_bytes"]
a[cmd["msg_off"] + start: cmd["msg_off"] + start + len(message)] = message
entry = struct.pack("<BBHIQqqIIqqQ", 1, 0, 0, len(message), 77, msg_head, data_head, 0, 0, 0, head, 0)
slot = cmd["entries_off"] + (head % cmd["entries"]) * 64
a[slot:slot + 64] = entry
struct.pack_into("<q", a, cmd["control"] + 128, msg_head + len(message))
struct.pack_into("<q", a, cmd["control"] + 0, head + 1)
# Ring: doorbell += 1, wake += 1, FUTEX_WAKE (shared, not private) on the wake word.
struct.pack_into("<q", a, 256, struct.unpack_from("<q", a, 256)[0] + 1)
struct.pack_into("<I", a, 264, (struct.unpack_from("<I", a, 264)[0] + 1) & 0xFFFFFFFF)
wake_word = ctypes.c_int.from_buffer(a, 264)
libc = ctypes.CDLL(None, use_errno=True)
if os.uname().machine in ("x86_64", "aarch64"):
    nr = 202 if os.uname().machine == "x86_64" else 98
    libc.syscall(ctypes.c_long(nr), ctypes.byref(wake_word), ctypes.c_int(1), ctypes.c_int(0x7FFFFFFF), None, None, ctypes.c_int(0))
del wake_word

# Wait for A's reply in our reply queue (lane 1).
rep = lane(b, 1)
deadline = time.time() + 20
while struct.unpack_from("<q", b, rep["control"] + 0)[0] == 0:
    if time.time() > deadline:
        print("no reply"); sys.exit(2)
    time.sleep(0.001)
signal, flags, _, mlen, epoch, mpos = struct.unpack_from("<BBHIQq", b, rep["entries_off"])
start = mpos % rep["msg_bytes"]
reply = bytes(b[rep["msg_off"] + start: rep["msg_off"] + start + mlen])
print(f"signal={signal} epoch={epoch} reply={reply.decode()}")
sys.stdout.flush()
