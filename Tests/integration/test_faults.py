"""Faults an operator meets: durable/quorum queue settings shared with real oslo.messaging
services on one vhost, SIGTERM while the broker cannot be reached, a second agent on the
same state_path or host, a broker refusal that no retry can fix, and replies or messages
too large for the broker."""
import json
import pathlib
import sys
import signal
import socket
import subprocess
import threading
import time
import uuid

import kombu
import oslo_messaging
import pytest

from conftest import AGENT, RABBIT_PASSWORD, RABBIT_USER, URL, Agent, rpc_client
from test_systemd import NotifySocket

CTL = ["rabbitmqctl", "-n", "rabbit@localhost", "-q"]


@pytest.fixture
def vhost():
    name = "ca-" + uuid.uuid4().hex[:8]
    subprocess.run(CTL + ["add_vhost", name], check=True, capture_output=True)
    subprocess.run(CTL + ["set_permissions", "-p", name, RABBIT_USER, ".*", ".*", ".*"], check=True, capture_output=True)
    yield name
    subprocess.run(CTL + ["delete_vhost", name], capture_output=True)


def declared(vhost, kind):
    """{name: (durable, arguments)} of the exchanges or queues of a vhost."""
    cols = ["name", "durable", "arguments"]
    out = subprocess.run(CTL + [f"list_{kind}", "-p", vhost] + cols + ["--formatter", "json"],
                         capture_output=True, text=True, check=True).stdout
    def args(a):  # rabbitmqctl's JSON gives a table as [[key, type, value], ...]
        return {k: v for k, _, v in a} if isinstance(a, list) else dict(a)
    return {e["name"]: (e["durable"], args(e["arguments"])) for e in json.loads(out or "[]")}


@pytest.mark.parametrize("option", ["amqp_durable_queues", "rabbit_quorum_queue"])
def test_agent_shares_a_vhost_with_oslo_services_under_durable_settings(tmp_path, vhost, option):
    """A real oslo.messaging conductor, notification listener and client declare 'nova' and
    their queues first, with the option on; the agent must declare the same way on both of
    its connections, or the broker refuses it (406) and nothing flows."""
    url = URL.rstrip("/") + "/" + vhost
    a = Agent(tmp_path, extra_default=f"transport_url = {url}",
              sections={"libvirt": {"connection_uri": "test:///default"}, "oslo_messaging_rabbit": {option: "true"}})
    peer = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name("oslo_peer.py")), url, a.host,
                             f"{option}=true"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert peer.stdout.readline().strip() == "peer ready"
        a.start()
        seen = json.loads(peer.stdout.readline())
        assert "error" not in seen, seen
        assert len(seen["beats"]) >= 2 and seen["beats"][1] == seen["beats"][0] + 1, (seen, a.text()[-2000:])
        assert seen["ping"] is True
        assert "compute.instance.create.end" in seen["events"], seen
        assert "server closed channel: 406" not in a.text() and "PRECONDITION_FAILED" not in a.text()
        exchanges, queues = declared(vhost, "exchanges"), declared(vhost, "queues")
        assert exchanges["nova"][0] is True
        for q in ("compute", f"compute.{a.host}", "conductor", "notifications.info"):
            assert queues[q][0] is True, (q, queues[q])
            if option == "rabbit_quorum_queue":
                assert queues[q][1].get("x-queue-type") == "quorum", (q, queues[q])
    finally:
        a.stop()
        peer.wait(30)


class SilentBroker:
    """Accepts TCP connections and never says a word: the agent is stuck mid-handshake."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.listener.close()
        for c in self.conns:
            c.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("state", ["connection_refused", "mid_handshake", "login_refused"])
def test_sigterm_ends_the_agent_at_once_while_the_broker_cannot_be_reached(tmp_path, state):
    silent = SilentBroker() if state == "mid_handshake" else None
    if state == "connection_refused":
        url, wait = f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{closed_port()}/", "broker connection failed"
    elif state == "mid_handshake":
        url, wait = f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{silent.port}/", "connecting to"
    else:
        url, wait = f"rabbit://{RABBIT_USER}:wrong-password@127.0.0.1:5672/", "ACCESS_REFUSED"
    notify = NotifySocket(tmp_path / "notify.sock")
    a = Agent(tmp_path, extra_default=f"transport_url = {url}")
    try:
        a.start(wait_for=wait, env={"NOTIFY_SOCKET": notify.path})
        if state == "mid_handshake":
            deadline = time.time() + 5
            while time.time() < deadline and not silent.conns:
                time.sleep(0.02)
            assert silent.conns, "the agent never opened a connection"
            time.sleep(0.3)
        started = time.time()
        a.proc.send_signal(signal.SIGTERM)
        code = a.proc.wait(10)
        took = time.time() - started
        notify.collect(0.3)
        print(f"SIGTERM while {state}: exited {code} in {took:.3f} s")
        assert code == 0, a.text()
        assert took < 1.0, f"SIGTERM took {took:.2f} s while {state}"
        assert "STOPPING" in notify.keys(), notify.messages
        assert RABBIT_PASSWORD not in a.text() and "wrong-password" not in a.text()
    finally:
        a.stop()
        notify.sock.close()
        if silent:
            silent.close()


def test_second_agent_on_the_same_state_path_is_refused_naming_the_pid(tmp_path, transport):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Agent(tmp_path / "a").start()
    try:
        second = Agent(tmp_path / "b")
        second.conf.write_text(second.conf.read_text().replace(str(second.state), str(first.state)))
        p = subprocess.run([str(AGENT), "--config-file", str(second.conf)], capture_output=True, text=True, timeout=20)
        assert p.returncode == 1
        assert f"is in use by another compute-agent (PID {first.proc.pid})" in p.stderr, p.stderr
        assert rpc_client(transport, first.host).call({}, "ping")["pong"] is True
    finally:
        first.stop()


def test_second_agent_with_the_same_host_is_refused_or_warned(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first = Agent(tmp_path / "a").start()
    try:
        warned = Agent(tmp_path / "c", host=first.host, extra_default="host_conflict = warn").start()
        assert f"queue 'compute.{first.host}' already has 1 consumer(s)" in warned.text()
        assert "host_conflict = warn" in warned.text()
        warned.stop()
        second = Agent(tmp_path / "b", host=first.host)
        second.start(wait_for="broker connection failed")
        code = second.proc.wait(60)
        assert code == 1, second.text()
        assert f"queue 'compute.{first.host}' already has 1 consumer(s): another agent with host = {first.host} is running" in second.text()
        assert "the broker refused the agent" in second.text()
    finally:
        first.stop()


def test_broker_refusal_that_retrying_cannot_fix_ends_the_agent(tmp_path):
    """control_exchange = amq.direct: the broker answers 406 to a topic declare, for ever."""
    a = Agent(tmp_path, extra_default="control_exchange = amq.direct")
    a.start(wait_for="connecting to")
    code = a.proc.wait(20)
    assert code == 1
    assert "server closed channel: 406" in a.text() and "retrying cannot help" in a.text()


def publish_call(host, reply_q, msg_id="m1", method="ping"):
    inner = {"method": method, "args": {}, "_msg_id": msg_id, "_reply_q": reply_q, "_unique_id": uuid.uuid4().hex}
    with kombu.Connection(URL.replace("rabbit:", "amqp:", 1)) as conn:
        conn.Producer().publish(json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode(),
                                exchange=kombu.Exchange("nova", type="topic", durable=False),
                                routing_key=f"compute.{host}", content_type="application/json")


def test_bad_or_huge_replies_do_not_cost_other_callers_their_answers(tmp_path, transport):
    a = Agent(tmp_path, extra_default="rpc_max_reply_bytes = 65536\nrpc_max_message_bytes = 262144").start()
    try:
        c = rpc_client(transport, a.host)
        publish_call(a.host, "r" * 300)
        # An innocent call right behind it is answered at once.
        assert c.call({}, "ping")["pong"] is True
        with pytest.raises(oslo_messaging.RemoteError) as e:
            c.call({}, "ping", arg="x" * 100_000)
        assert e.value.exc_type == "ReplyTooLarge" and "over max_reply_bytes (65536)" in e.value.value
        with pytest.raises(oslo_messaging.RemoteError) as e:
            c.call({}, "ping", arg="x" * 400_000)
        assert e.value.exc_type == "MessageTooLarge" and "over max_message_bytes (262144)" in e.value.value
        results = []
        threads = [threading.Thread(target=lambda: results.append(c.call({}, "ping")["pong"])) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert results == [True] * 8
        log = a.text()
        assert "dropped call: its _reply_q is 300 bytes, over AMQP's 255" in log
        assert "reconnected to broker" not in log and "dropped duplicate message" not in log
    finally:
        a.stop()


def queue_messages(queue, vhost="/"):
    out = subprocess.run(CTL + ["list_queues", "-p", vhost, "name", "messages"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return int(parts[1])
    return None


@pytest.fixture
def small_disk(tmp_path):
    d = tmp_path / "small-disk"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], check=True)
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def fill(path):
    """Writes zeros into `path` until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * 65536
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 512)
                f.flush()
        except OSError:
            pass


def test_full_disk_keeps_the_cast_with_the_broker_until_it_can_be_recorded(tmp_path, small_disk, transport):
    """ENOSPC on the journal: the build is not acked (so not lost), STATUS says why, and once
    space returns it runs exactly once."""
    notify = NotifySocket(tmp_path / "notify.sock")
    a = Agent(tmp_path)
    a.conf.write_text(a.conf.read_text().replace(f"state_path = {a.state}", f"state_path = {small_disk}/state"))
    try:
        a.start(env={"NOTIFY_SOCKET": notify.path})
        c = rpc_client(transport, a.host)
        assert c.call({}, "ping")["pong"] is True
        fill(small_disk / "filler")
        # root_gb 0: the 8 MiB file system has no whole GB for a claim.
        inst = {"uuid": str(uuid.uuid4()), "name": "vm-full", "vcpus": 1, "memory_mb": 64, "root_gb": 0}
        c.cast({}, "build_and_run_instance", instance=inst)
        deadline = time.time() + 15
        while time.time() < deadline and "could not record the action; it stays with the broker" not in a.text():
            time.sleep(0.1)
        assert "could not record the action; it stays with the broker" in a.text(), a.text()[-3000:]
        assert "the instance journal cannot be written" in a.text()
        status = notify.collect(12, until=lambda f: "JOURNAL NOT WRITABLE" in f.get("STATUS", ""))
        assert status and "casts stay with the broker" in status["STATUS"], notify.messages[-3:]
        # The message is still the broker's (ready or delivered-unacked), not lost.
        assert queue_messages(f"compute.{a.host}") == 1
        with pytest.raises(oslo_messaging.RemoteError) as e:
            c.call({}, "get_instance_info", instance_uuid=inst["uuid"])
        assert e.value.exc_type == "InstanceNotFound"

        (small_disk / "filler").unlink()
        from conftest import wait_state
        info = wait_state(c, inst["uuid"], "active", timeout=60)
        assert info["power_state_name"] == "RUNNING"
        assert "the instance journal is writable again" in a.text()
        time.sleep(1)
        assert a.text().count(f"instance_uuid={inst['uuid']}") >= 1
        handled = [l for l in a.text().splitlines() if "rpc handled" in l and inst["uuid"] in l and "build_and_run_instance" in l]
        assert len(handled) == 1, handled
        assert queue_messages(f"compute.{a.host}") == 0
        status = notify.collect(12, until=lambda f: f.get("STATUS", "").startswith("connected"))
        assert status and "JOURNAL" not in status["STATUS"]
    finally:
        a.stop()
        notify.sock.close()


def test_sigterm_is_not_held_by_a_hung_plugin_call(tmp_path, test_plugin_dir, transport):
    """A plugin call that hangs past plugin_call_timeout is abandoned (its action fails and is
    recorded); the thread still stuck in the plugin must not hold up the exit."""
    from conftest import memhv_agent, new_instance
    a = memhv_agent(tmp_path, test_plugin_dir, memhv={"spawn_sleep_ms": 60000}, extra_default="plugin_call_timeout = 1").start()
    try:
        c = rpc_client(transport, a.host)
        inst = new_instance(name="slow-spawn-hung")  # memhv sleeps in spawn for names like this
        with pytest.raises(oslo_messaging.RemoteError):
            c.call({}, "build_and_run_instance", instance=inst)
        started = time.time()
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(10) == 0
        took = time.time() - started
        print(f"SIGTERM with a hung plugin call: exited in {took:.3f} s")
        assert took < 1.0, took
    finally:
        a.stop()


def test_computectl_timeout_covers_the_connection(tmp_path):
    """--timeout bounds the whole command: a closed port or a refused login ends it."""
    from conftest import CTL
    for url in [f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{closed_port()}/",
                f"rabbit://{RABBIT_USER}:wrong@127.0.0.1:5672/"]:
        started = time.time()
        p = subprocess.run([str(CTL), "ping", "--transport-url", url, "--host", "x", "--timeout", "3"],
                           capture_output=True, text=True, timeout=30)
        took = time.time() - started
        assert p.returncode != 0 and took < 5, (took, p.stderr)
        assert "cannot reach the broker" in p.stderr + p.stdout
        assert RABBIT_PASSWORD not in p.stderr + p.stdout and "wrong@" not in p.stderr + p.stdout


def test_a_call_nobody_answers_ends_with_the_timeout_it_was_given(tmp_path):
    """Call deadlines are kept by one sweeper thread per client (PendingCalls), not by a
    timer task per call: a call nobody serves still ends with its timeout, named."""
    from conftest import CTL
    host = f"nobody-{uuid.uuid4().hex[:8]}"
    started = time.time()
    p = subprocess.run([str(CTL), "ping", "--transport-url", URL, "--host", host, "--timeout", "2"],
                       capture_output=True, text=True, timeout=60)
    took = time.time() - started
    assert p.returncode != 0, p.stdout
    assert "timed out after 2.0 s waiting for a reply to ping" in p.stderr + p.stdout, p.stderr
    assert 1.9 <= took < 15, took


def test_journal_is_owner_only_and_a_readable_password_file_is_warned_about(tmp_path):
    import os
    import stat
    a = Agent(tmp_path).start()
    try:
        mode = stat.S_IMODE(os.stat(a.state / "compute-agent.sqlite").st_mode)
        assert mode == 0o600, oct(mode)
        assert "holds the broker password and is readable by every user" in a.text()
    finally:
        a.stop()
    os.chmod(a.conf, 0o640)
    (tmp_path / "b").mkdir()
    b = Agent(tmp_path / "b")
    os.chmod(b.conf, 0o640)
    b.start()
    try:
        assert "readable by every user" not in b.text()
    finally:
        b.stop()


def test_status_reports_the_last_confirmed_heartbeat_while_the_broker_refuses_publishes(tmp_path):
    """A memory alarm makes RabbitMQ block publishers: heartbeats are no longer confirmed, and
    STATUS must say how long ago the last confirmed one was instead of reading fresh."""
    import re
    notify = NotifySocket(tmp_path / "notify.sock")
    a = Agent(tmp_path)
    try:
        a.start(env={"NOTIFY_SOCKET": notify.path})
        fresh = notify.collect(12, until=lambda f: "last heartbeat confirmed" in f.get("STATUS", ""))
        assert fresh, notify.messages
        subprocess.run(CTL + ["set_vm_memory_high_watermark", "0"], check=True, capture_output=True)
        try:
            stale = notify.collect(30, until=lambda f: (m := re.search(r"last heartbeat confirmed (\d+) s ago", f.get("STATUS", "")))
                                   and int(m.group(1)) >= 8)
            assert stale, [f.get("STATUS") for _, f in notify.messages[-5:]]
        finally:
            subprocess.run(CTL + ["set_vm_memory_high_watermark", "0.4"], check=True, capture_output=True)
        again = notify.collect(40, until=lambda f: (m := re.search(r"last heartbeat confirmed (\d+) s ago", f.get("STATUS", "")))
                               and int(m.group(1)) <= 2)
        assert again, [f.get("STATUS") for _, f in notify.messages[-5:]]
    finally:
        a.stop()
        notify.sock.close()


def test_an_unreadable_reply_fails_its_call_at_once_with_the_reason():
    """A server that answers a call with a reply our strict JSON parser refuses (here NaN,
    which Python's json writes): the caller hears why at once instead of waiting out its
    timeout, and the agent's clients (the conductor's lane) log the same way."""
    import pika
    from conftest import CTL
    host = f"peer-{uuid.uuid4().hex[:6]}"
    params = pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials(RABBIT_USER, RABBIT_PASSWORD))
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.exchange_declare("nova", exchange_type="topic", durable=False)
    q = f"compute.{host}"
    ch.queue_declare(q, auto_delete=True)
    ch.queue_bind(q, "nova", routing_key=q)
    answered = []

    def serve():
        for method, props, body in ch.consume(q, inactivity_timeout=15):
            if method is None:
                break
            inner = json.loads(json.loads(body)["oslo.message"])
            bad = '{"_msg_id": "%s", "result": NaN, "failure": null}' % inner["_msg_id"]
            ch.basic_publish("", inner["_reply_q"], json.dumps({"oslo.version": "2.0", "oslo.message": bad}).encode())
            ch.basic_ack(method.delivery_tag)
            answered.append(inner["_msg_id"])
            break
        ch.cancel()

    t = threading.Thread(target=serve)
    t.start()
    try:
        started = time.time()
        p = subprocess.run([str(CTL), "ping", "--transport-url", URL, "--host", host, "--timeout", "30"],
                           capture_output=True, text=True, timeout=60)
        took = time.time() - started
    finally:
        t.join(20)
        conn.close()
    assert answered, "the peer never saw the call"
    assert p.returncode != 0 and took < 10, (took, p.stdout, p.stderr)
    out = p.stdout + p.stderr
    assert f"a reply to call {answered[0]} could not be read" in out and "not JSON" in out, out


def test_replies_that_arrive_while_a_publish_waits_for_its_confirm_are_not_lost(tmp_path):
    """The agent's own lanes (the nova dialect's conductor and notify connections) publish
    with confirms and take call replies on the same connection. A reply that arrived while
    a publish waited for its confirm used to be read and dropped, and its call then timed
    out (a delete under nova hung for 60 s). computectl makes thousands of calls while
    confirmed casts stream on the same connection: every call must get its reply."""
    from conftest import CTL
    a = Agent(tmp_path).start()
    try:
        p = subprocess.run([str(CTL), "bench-calls", "--transport-url", URL, "--host", a.host, "--count", "3000",
                            "--concurrency", "4", "--timeout", "5", "--with-confirmed-casts"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        r = json.loads(p.stdout.strip().splitlines()[-1])
        assert r["count"] == 3000 and r["confirmed_casts"] > 1000, r
        assert r["max_ms"] < 5000, r
    finally:
        a.stop()
