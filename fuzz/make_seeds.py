#!/usr/bin/env python3
"""Writes the binary seed corpora of fuzz/ (lock_file, journal, libvirt_params).

The text corpora (config, handoff, protocol) are plain files written by
hand. Run from anywhere: python3 fuzz/make_seeds.py. It rewrites the files
it owns (named seed-*) and leaves every other file in the corpora alone.
Each layout follows the fuzz target's comment and its ByteReader (integers
big-endian, strings as a length byte then the bytes).
"""
import os
import re
import sqlite3
import struct
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def u64(v):
    return struct.pack(">Q", v & 0xFFFFFFFFFFFFFFFF)


def u32(v):
    return struct.pack(">I", v)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    assert len(b) < 256
    return bytes([len(b)]) + b


# ---------------------------------------------------------------- lock_file
# backends/posixfd/lock_file.h: header, exclusive record, conflict tokens,
# then (from 1024) a state file name line and fdinfo lines. Native
# (little-endian) integers, as the backend writes them.
LOCK_BASE = 0x4C4B << 32
UUID = "6f1c2e9a-1b2c-4d3e-8f90-0123456789ab"


def field(text, size):
    b = text.encode()[: size - 1]
    return b + b"\0" * (size - len(b))


def record(mode, token, pid, start, uuid, name, host, continues=0):
    r = struct.pack("<IIQQQ", 0x52484B4C, mode, token, pid, start)
    r += field(uuid, 40) + field(name, 136) + field(host, 72) + struct.pack("<Q", continues)
    return r + b"\0" * (512 - len(r))


def state_file(token, kind, path, offset, rec, conflicts, text=""):
    head = b"LKPOSIX1" + struct.pack("<QIIQ", token, kind, len(path), offset)
    data = head + rec + struct.pack("<QQQ", *conflicts)
    data += b"\0" * (1024 - len(data))
    return data + text.encode()


def fdinfo(*locks):
    lines = ["pos:\t0", "flags:\t02100002", "mnt_id:\t29", "ino:\t1234"]
    for i, (kind, start, end) in enumerate(locks, 1):
        lines.append("lock:\t%d: OFDLCK ADVISORY  %s -1 fe:00:1234 %d %s" % (i, kind, start, end))
    lines.append("lock:\t9: POSIX  ADVISORY  WRITE 77 fe:00:1234 0 EOF")
    return "\n".join(lines) + "\n"


def lock_file_seeds():
    name = "default:" + "3fa9" * 16
    ex = record(3, 17, 4242, 123456, UUID, "vm1", "h1")
    write("lock_file", "exclusive-disk", state_file(
        17, 1, "/img/a.qcow2", 0, ex, (17, 17, 17),
        name + "\n" + fdinfo(("WRITE", LOCK_BASE, LOCK_BASE + 2))))
    sr = record(1, 5, 4243, 99, UUID, "reader", "h1", continues=4)
    write("lock_file", "shared-read-lease", state_file(
        5, 2, "/leases/l", 1 << 20, sr, (5, 3, 5),
        "LS:lease1\n" + fdinfo(("READ", LOCK_BASE + 1, LOCK_BASE + 1),
                               ("WRITE", LOCK_BASE + 16, LOCK_BASE + 16))))
    write("lock_file", "stale-conflicts", state_file(9, 1, "", 0, b"\0" * 512, (8, 1, 2)))
    full = record(2, 1, 1, 0, "u" * 45, "n" * 200, "h" * 80)
    write("lock_file", "full-fields", state_file(1, 1, "p" * 30, 0, full, (1, 0, 0),
                                                 "bad name:\nlock:\t1: OFDLCK ADVISORY  READ -1 x 5 3\n"))
    write("lock_file", "bad-mode", state_file(2, 1, "", 0, record(7, 2, 1, 0, UUID, "x", "h"), (2, 2, 2)))
    write("lock_file", "uninitialised", b"\0" * 40)
    write("lock_file", "eof-lock", state_file(3, 1, "", 0, ex, (3, 0, 0), "a:b\n" + fdinfo(("WRITE", 0, "EOF"))))


# ------------------------------------------------------------------ journal
# fuzz/journal_fuzzer.cc: byte 0 picks the mode; rows mode: a row count,
# then per row a table byte (odd: locks) and per column a kind byte
# (0/1: pool value by index byte, 2: u64, 3: text, 4: blob, 5: real).
def pool(i):
    return bytes([0, i])


def owner_row(uuid=0, name=0, pid=1, start=0, host=0, policy=0):
    return bytes([0]) + pool(uuid) + pool(name) + pool(pid) + pool(start) + pool(host) + pool(policy)


def lock_row(uuid=0, backend=0, lockspace=0, name=0, kind=0, path=0, offset=0, mode=2, token=1,
             btoken=1, state=0):
    cols = [uuid, backend, lockspace, name, kind, path, offset, mode, token, btoken, state]
    return bytes([1]) + b"".join(pool(c) for c in cols)


def rows(*rs):
    return bytes([0, len(rs)]) + b"".join(rs)


def journal_schema():
    """The journal's schema, read from core/journal.cc (kCreateSql), so the
    seeds always carry the schema latchd writes."""
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core",
                            "journal.cc")).read()
    body = src[src.index("kCreateSql[] ="):]
    body = body[:body.index(";\n")]
    return "".join(bytes(m, "utf-8").decode("unicode_escape")
                   for m in re.findall(r'"((?:[^"\\]|\\.)*)"', body))


CREATE = journal_schema()


def journal_file(boot, owners, locks):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "j.db")
        db = sqlite3.connect(path)
        db.executescript(CREATE)
        db.execute("INSERT INTO meta VALUES ('schema', 'latchkey-journal-1'), ('boot_id', ?)", (boot,))
        db.executemany("INSERT INTO owners VALUES (?,?,?,?,?,?)", owners)
        db.executemany("INSERT INTO locks VALUES (?,?,?,?,?,?,?,?,?,?,?)", locks)
        db.commit()
        db.close()
        with open(path, "rb") as f:
            return f.read()


def journal_seeds():
    write("journal", "rows-disk", rows(owner_row(), lock_row()))
    write("journal", "rows-lease", rows(owner_row(), lock_row(lockspace=1, name=1, kind=1, mode=0, state=1)))
    write("journal", "rows-intents", rows(owner_row(uuid=1), lock_row(uuid=1, state=1),
                                          lock_row(uuid=1, backend=1, state=2, mode=1)))
    write("journal", "rows-bad-owner", rows(owner_row(pid=3), lock_row()))
    write("journal", "rows-orphan-lock", rows(lock_row(uuid=2)))
    write("journal", "rows-bad-values", rows(owner_row(name=2, host=2, policy=3),
                                             lock_row(kind=2, mode=3, state=3, name=4)))
    # Wrong SQLite types: text where an integer belongs, a real, a blob uuid.
    wrong = bytes([0]) + bytes([4]) + s(UUID) + pool(0) + bytes([3]) + s("12") + pool(0) + pool(0) + pool(0)
    real = bytes([1]) + pool(0) + pool(0) + pool(0) + pool(0) + bytes([5]) + u64(0x3FF0000000000000) + \
        pool(0) + pool(0) + pool(2) + pool(1) + pool(1) + pool(0)
    write("journal", "rows-wrong-types", rows(owner_row(), wrong, real))
    owners = [(UUID, "vm1", 4242, 0, "h1", "terminate/5000")]
    locks = [(UUID, "posixfd", "default", "a" * 64, 1, "/img/a.qcow2", 0, 3, 17, b"", 1),
             (UUID, "posixfd", "LS", "lease1", 2, "", 0, 1, 4, b"t", 1)]
    good = journal_file("fuzz-boot-id", owners, locks)
    write("journal", "file-this-boot", b"\x0f" + good)
    write("journal", "file-other-boot", b"\x0f" + journal_file("another-boot", owners, locks))
    write("journal", "file-truncated", b"\x0f" + good[: len(good) // 2])
    write("journal", "file-not-sqlite", b"\x0fthis is not a database\n")
    write("journal", "file-empty", b"\x0f")


# ----------------------------------------------------------- libvirt_params
# fuzz/libvirt_params_fuzzer.cc, read in its order.
def param(key, ptype, value):
    return bytes([key, ptype]) + value


def uuid_param():
    return param(0, 7, bytes([33]))          # kUuids[0]


def name_param(name="vm1"):
    return param(1, 0, bytes([0]) + s(name))  # a fuzzed string


def pid_param():
    return param(2, 4, bytes([0]))            # getpid()


def domain(*extra):
    ps = [uuid_param(), name_param(), pid_param()] + list(extra)
    return bytes([len(ps)]) + b"".join(ps) + bytes([0])  # object type: domain


def resource(kind, name_pick, params=(), flags=0, name=None):
    out = bytes([kind])
    out += bytes([name_pick]) if name is None else bytes([200]) + s(name)
    return out + bytes([len(params)]) + b"".join(params) + bytes([flags])


def calls(*cs):
    return bytes([len(cs) - 1]) + b"".join(cs)


REGISTER = bytes([0, 200, 0])         # register-only, no state, default policy
ACQUIRE = bytes([1, 100, 0])          # daemon acquire with a state string
ACQUIRE_RESTART = bytes([1, 200, 2])  # <on_lockfailure>restart
RELEASE = bytes([2])
RELEASE_NOSTATE = bytes([3])
INQUIRE = bytes([4])


def conf(lines=(), raw=None):
    c = 0x80 if raw is not None else 0
    out = bytes([c, len(lines)]) + bytes(lines)
    if raw is not None:
        out += s(raw)
    return out


def libvirt_seeds():
    disk = resource(0, 0)
    write("libvirt_params", "disk-lifecycle",
          conf() + bytes([0]) + domain() + bytes([1]) + disk + calls(REGISTER, ACQUIRE, INQUIRE, RELEASE))
    lease = resource(120, 2, [param(5, 0, bytes([0]) + s("/leases/l")), param(7, 1, bytes([0]) + s("LS")),
                             param(6, 5, bytes([200]) + u64(1 << 20))])
    ro = resource(0, 1, flags=1)
    shared = resource(0, 3, flags=2)
    write("libvirt_params", "lease-ro-shared",
          conf([4, 8]) + bytes([0]) + domain() + bytes([3]) + lease + ro + shared +
          calls(REGISTER, ACQUIRE, RELEASE_NOSTATE, RELEASE))
    write("libvirt_params", "held-elsewhere",
          conf() + bytes([0x10]) + domain() + bytes([1]) + disk + calls(REGISTER))
    write("libvirt_params", "acquire-refused",
          conf() + bytes([0x02]) + domain() + bytes([1]) + disk + calls(ACQUIRE, RELEASE))
    write("libvirt_params", "unknown-owner",
          conf() + bytes([0x01]) + domain() + bytes([1]) + disk + calls(INQUIRE, RELEASE))
    write("libvirt_params", "restart-policy",
          conf([9]) + bytes([0]) + domain() + bytes([1]) + disk + calls(ACQUIRE_RESTART, REGISTER))
    write("libvirt_params", "no-uuid",
          conf() + bytes([0]) + bytes([2]) + name_param() + pid_param() + bytes([0]) + bytes([0]) + calls(INQUIRE))
    write("libvirt_params", "bad-config", conf(raw="sockett = 1"))
    write("libvirt_params", "require-lease",
          conf([2]) + bytes([0]) + domain() + bytes([1]) + disk + calls(REGISTER))
    write("libvirt_params", "injected-locks",
          conf() + bytes([0x80, 1, 0]) + s('{"x":1}') + domain() + bytes([1]) + disk +
          calls(REGISTER, ACQUIRE, RELEASE))
    write("libvirt_params", "bad-resource-type",
          conf() + bytes([0]) + domain() + bytes([1]) + resource(251, 0) + calls(ACQUIRE))


lock_file_seeds()
journal_seeds()
libvirt_seeds()
