"""Logging to journald natively (the native journal protocol, which the agent speaks
itself in Sources/SystemdProtocol): the test binds its own unix datagram socket, and the
agent runs in a mount namespace where that socket is /run/systemd/journal/socket. The
test decodes the protocol as journald does, including the binary-safe length-prefixed
form for values with a newline and the sealed memfd for entries too big for a datagram."""
import os
import socket
import struct
import subprocess
import time
import uuid

import oslo_messaging
import pytest

from conftest import AGENT, make_image, memhv_agent, new_instance, rpc_client


def decode(datagram):
    """One journal entry: NAME=value lines, or NAME\\n<le64 length><value>\\n."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = nl + 1
        else:
            name = line
            (length,) = struct.unpack_from("<Q", datagram, nl + 1)
            start = nl + 1 + 8
            value = datagram[start:start + length]
            assert datagram[start + length:start + length + 1] == b"\n"
            i = start + length + 1
        fields[name.decode()] = value.decode()
    return fields


class Journal:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.entries = []
        self.raw = []

    def collect(self, seconds, until=None):
        end = time.time() + seconds
        while time.time() < end:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            self.raw.append(data)
            e = decode(data)
            self.entries.append(e)
            if until and until(e):
                return e
        return None


@pytest.fixture
def journal_agent(tmp_path, test_plugin_dir):
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here (needs root): {probe.stderr.strip()}")
    j = Journal(tmp_path / "journal.sock")
    a = memhv_agent(tmp_path, test_plugin_dir)
    script = ("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && touch /run/systemd/journal/socket"
              f" && mount --bind {tmp_path / 'journal.sock'} /run/systemd/journal/socket && exec \"$@\"")
    a.logf = open(a.log, "ab")
    a.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                               str(AGENT), "--config-file", str(a.conf), "--log-target", "journald"],
                              stdout=a.logf, stderr=subprocess.STDOUT)
    assert j.collect(20, until=lambda e: e.get("MESSAGE") == "consuming"), f"no 'consuming' entry: {a.text()}"
    yield a, j
    a.stop()
    j.sock.close()


def test_a_build_tells_its_story_in_journal_fields(journal_agent, transport, tmp_path):
    a, j = journal_agent
    c = rpc_client(transport, a.host)
    image, checksum = make_image(tmp_path / "img.raw")
    inst = new_instance(image_ref=image, image_checksum=checksum)
    u = inst["uuid"]
    c.call({"request_id": "req-journal-1"}, "build_and_run_instance", instance=inst)
    j.collect(3, until=lambda e: e.get("RPC_METHOD") == "build_and_run_instance" and e["MESSAGE"] == "rpc handled")
    story = [e for e in j.entries if e.get("INSTANCE_UUID") == u]
    messages = [e["MESSAGE"] for e in story]
    assert "building instance" in messages and "instance is active" in messages and "rpc handled" in messages
    handled = next(e for e in story if e["MESSAGE"] == "rpc handled")
    assert handled["RPC_METHOD"] == "build_and_run_instance" and handled["REQUEST_ID"] == "req-journal-1"
    assert handled["KIND"] == "call" and float(handled["DURATION_MS"]) > 0
    # Lines logged deep in the compute manager carry the request as well.
    for e in story:
        if e["MESSAGE"] in ("building instance", "instance is active"):
            assert e["REQUEST_ID"] == "req-journal-1" and e["RPC_METHOD"] == "build_and_run_instance", e
    for e in story:
        assert e["SYSLOG_IDENTIFIER"] == "compute-agent" and e["HOST"] == a.host
        assert e["PRIORITY"] in "234567" and e["CODE_FILE"].endswith(".swift") and int(e["CODE_LINE"]) > 0
        assert e["CODE_FUNC"]
    # The image plugin logs through the host table: same handler, PLUGIN set.
    fetched = [e for e in j.entries if e.get("PLUGIN") == "file" and e["MESSAGE"].startswith("fetched ")]
    assert fetched and fetched[0]["PRIORITY"] == "6"
    # The broker password never reaches the journal.
    assert not any(b"Sekr3tPw42x" in d for d in j.raw)


def test_a_multi_line_message_uses_the_binary_safe_form(journal_agent, transport):
    a, j = journal_agent
    c = rpc_client(transport, a.host)
    with pytest.raises(oslo_messaging.RemoteError):
        c.call({}, "get_instance_info", instance_uuid="line one\nline two")
    e = j.collect(3, until=lambda e: "line two" in e.get("MESSAGE", ""))
    assert e is not None
    assert e["MESSAGE"] == "rpc failed: Invalid input received: 'instance_uuid' must be a UUID, got 'line one\nline two'"
    assert e["PRIORITY"] == "4" and e["RPC_METHOD"] == "get_instance_info"
    raw = next(d for d in j.raw if b"line two" in d)
    assert b"\nMESSAGE\n" in raw or raw.startswith(b"MESSAGE\n"), "a value with a newline must be length-prefixed"


def test_an_entry_too_big_for_a_datagram_goes_in_a_sealed_memfd(tmp_path):
    """The agent speaks the native journal protocol itself (Sources/SystemdProtocol, not
    libsystemd). An entry larger than a datagram may be (here 600 kB) goes, as libsystemd
    sends it, in a sealed memfd passed with SCM_RIGHTS; journald refuses unsealed ones.
    The protocol code is built as a library and driven from a process in a mount
    namespace whose /run/systemd/journal/socket is the test's socket."""
    import array
    import fcntl
    import pathlib
    import sys
    src = pathlib.Path(__file__).resolve().parents[2] / "Sources" / "SystemdProtocol"
    lib = tmp_path / "libsystemd_protocol.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), "-I", str(src / "include"),
                    str(src / "systemd_protocol.c")], check=True)
    j = Journal(tmp_path / "journal.sock")
    sender = f"""
import ctypes, sys
lib = ctypes.CDLL({str(lib)!r})
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
fields = [b"MESSAGE=" + b"x" * 600000, b"PRIORITY=6", b"TWO_LINES=a\\nb"]
bufs = [ctypes.create_string_buffer(f, len(f)) for f in fields]
arr = (iovec * len(fields))(*[iovec(ctypes.cast(b, ctypes.c_void_p), len(f)) for b, f in zip(bufs, fields)])
sys.exit(-lib.ca_journal_sendv(arr, len(fields)))
"""
    script = ("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && touch /run/systemd/journal/socket"
              f" && mount --bind {tmp_path / 'journal.sock'} /run/systemd/journal/socket && exec \"$@\"")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable, "-c", sender],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.returncode, p.stderr)
    j.sock.settimeout(5)
    data, ancdata, _, _ = j.sock.recvmsg(1 << 16, socket.CMSG_SPACE(4))
    assert data == b"", "the entry should come in the memfd, not the datagram"
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:4])
    assert len(fds) == 1, ancdata
    fd = fds[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_WRITE, fcntl.F_SEAL_SEAL):
            assert seals & seal, seals
        os.lseek(fd, 0, os.SEEK_SET)
        blob = b""
        while chunk := os.read(fd, 1 << 20):
            blob += chunk
    finally:
        os.close(fd)
    e = decode(blob)
    assert e["MESSAGE"] == "x" * 600000 and e["PRIORITY"] == "6" and e["TWO_LINES"] == "a\nb"
    j.sock.close()
