#!/usr/bin/env python3
"""PERSISTENT RESERVE IN/OUT through libiscsi (the initiator of libiscsi-bin's tools), for the interop
tests: libiscsi-bin has no PR command-line tool, so this drives libiscsi.so.7 through ctypes.

  libiscsi_pr.py PORTAL TARGET INITIATOR register-reserve KEY TYPE [aptpl]   # one I_T nexus: REGISTER, then RESERVE
  libiscsi_pr.py PORTAL TARGET INITIATOR keys                        # prints "generation G keys K1 K2 ..."
  libiscsi_pr.py PORTAL TARGET INITIATOR reservation                 # prints "reservation KEY TYPE" or "reservation none"
  libiscsi_pr.py PORTAL TARGET INITIATOR write                       # WRITE(10) of LBA 0: prints "status S"

PORTAL is HOST:PORT, or HOST:PORT/LUN (default LUN 0). Unit attentions are taken first (TEST UNIT
READY until GOOD, at most 8 times). Keys are hex. Exit 0 when every command answered GOOD (write:
whatever its status), 1 otherwise, with the reason on stderr.
"""
import ctypes
import struct
import sys

lib = ctypes.CDLL("libiscsi.so.7")
lib.iscsi_create_context.restype = ctypes.c_void_p
lib.iscsi_create_context.argtypes = [ctypes.c_char_p]
lib.iscsi_set_targetname.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.iscsi_set_session_type.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.iscsi_full_connect_sync.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
lib.iscsi_get_error.restype = ctypes.c_char_p
lib.iscsi_get_error.argtypes = [ctypes.c_void_p]
lib.scsi_create_task.restype = ctypes.c_void_p
lib.scsi_create_task.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
lib.iscsi_scsi_command_sync.restype = ctypes.c_void_p
lib.iscsi_scsi_command_sync.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
lib.iscsi_persistent_reserve_in_sync.restype = ctypes.c_void_p
lib.iscsi_persistent_reserve_in_sync.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.scsi_datain_unmarshall.restype = ctypes.c_void_p
lib.scsi_datain_unmarshall.argtypes = [ctypes.c_void_p]
lib.scsi_task_get_status.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
lib.scsi_free_scsi_task.argtypes = [ctypes.c_void_p]
lib.iscsi_logout_sync.argtypes = [ctypes.c_void_p]
lib.iscsi_destroy_context.argtypes = [ctypes.c_void_p]

SESSION_NORMAL = 2
XFER_NONE, XFER_READ, XFER_WRITE = 0, 1, 2
GOOD, CHECK_CONDITION = 0, 2


class IscsiData(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("data", ctypes.c_char_p)]


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


def status_of(task):
    sense = ctypes.create_string_buffer(64)
    status = lib.scsi_task_get_status(task, sense)
    key, ascq = struct.unpack_from("<ii", sense.raw, 4)
    return status, key, ascq >> 8, ascq & 0xFF


LUN = 0


def command(ctx, cdb, direction=XFER_NONE, data=b"", expected=0):
    task = lib.scsi_create_task(len(cdb), bytes(cdb), direction, expected or len(data))
    payload = IscsiData(len(data), data) if data else None
    done = lib.iscsi_scsi_command_sync(ctx, LUN, task, ctypes.byref(payload) if payload else None)
    if not done:
        fail("command failed: %s" % lib.iscsi_get_error(ctx).decode())
    result = status_of(done)
    lib.scsi_free_scsi_task(done)
    return result


def pr_out(ctx, action, type_, key, service_key, aptpl=False):
    cdb = bytes([0x5F, action, type_, 0, 0, 0, 0, 0, 24, 0])
    params = struct.pack(">QQ", key, service_key) + bytes([0, 0, 0, 0, 1 if aptpl else 0, 0, 0, 0])
    status = command(ctx, cdb, XFER_WRITE, params)
    if status[0] != GOOD:
        fail("PERSISTENT RESERVE OUT %d: status %d sense %x/%02x/%02x" % ((action,) + status))


def pr_in(ctx, action):
    task = lib.iscsi_persistent_reserve_in_sync(ctx, LUN, action, 1024)
    if not task:
        fail("PERSISTENT RESERVE IN: %s" % lib.iscsi_get_error(ctx).decode())
    status = status_of(task)
    if status[0] != GOOD:
        fail("PERSISTENT RESERVE IN %d: status %d sense %x/%02x/%02x" % ((action,) + status))
    return task


def main():
    global LUN
    portal, target, initiator, what = sys.argv[1:5]
    portal, _, lun = portal.partition("/")
    LUN = int(lun or "0")
    ctx = lib.iscsi_create_context(initiator.encode())
    lib.iscsi_set_targetname(ctx, target.encode())
    lib.iscsi_set_session_type(ctx, SESSION_NORMAL)
    if lib.iscsi_full_connect_sync(ctx, portal.encode(), LUN) != 0:
        fail("login to %s failed: %s" % (portal, lib.iscsi_get_error(ctx).decode()))
    for _ in range(8):
        status = command(ctx, bytes(6))
        if status[0] == GOOD:
            break
        print("TEST UNIT READY: sense %x/%02x/%02x" % status[1:], file=sys.stderr)
    if what == "register-reserve":
        key, type_ = int(sys.argv[5], 16), int(sys.argv[6])
        aptpl = len(sys.argv) > 7 and sys.argv[7] == "aptpl"
        pr_out(ctx, 0, 0, 0, key, aptpl)  # REGISTER
        pr_out(ctx, 1, type_, key, 0)  # RESERVE
        print("registered and reserved %x type %d" % (key, type_))
    elif what == "keys":
        task = pr_in(ctx, 0)
        keys = ctypes.cast(lib.scsi_datain_unmarshall(task), ctypes.POINTER(ctypes.c_ubyte))
        generation, _, count = struct.unpack("<IIi", bytes(keys[0:12]))
        values = struct.unpack("<%dQ" % count, bytes(keys[16:16 + 8 * count]))
        print("generation %d keys %s" % (generation, " ".join("%x" % k for k in values)))
    elif what == "reservation":
        task = pr_in(ctx, 1)
        r = ctypes.cast(lib.scsi_datain_unmarshall(task), ctypes.POINTER(ctypes.c_ubyte))
        # libiscsi's struct scsi_persistent_reserve_in_read_reservation: u32 generation, u32 (unused),
        # int reserved (1 when the additional length says a reservation follows), u64 key, scope, type.
        _, _, reserved = struct.unpack("<IIi", bytes(r[0:12]))
        if reserved == 0:
            print("reservation none")
        else:
            key, = struct.unpack("<Q", bytes(r[16:24]))
            print("reservation %x %d" % (key, r[25]))
    elif what == "write":
        cdb = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0])
        status = command(ctx, cdb, XFER_WRITE, bytes(512))
        print("status %d" % status[0])
    else:
        fail("unknown command " + what)
    lib.iscsi_logout_sync(ctx)
    lib.iscsi_destroy_context(ctx)


main()
