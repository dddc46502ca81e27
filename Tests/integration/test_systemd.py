"""The agent under systemd's protocols, with sockets the test binds itself: the sd_notify
sequence on start, reload and stop; the watchdog withheld while the message loop is
wedged; SIGHUP applying what can change live; a second SIGTERM exiting at once."""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import RABBIT_PASSWORD, memhv_agent, new_instance, rpc_client
from test_crash_recovery import queue_depth


class NotifySocket:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []  # (time, {key: value})

    def collect(self, seconds, until=None):
        end = time.time() + seconds
        while time.time() < end:
            try:
                raw = self.sock.recv(65536).decode()
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in raw.split("\n") if "=" in line)
            self.messages.append((time.time(), fields))
            if until and until(fields):
                return fields
        return None

    def keys(self, ignore=("WATCHDOG", "STATUS")):
        """The sequence of notification kinds, without the periodic ones."""
        out = []
        for _, f in self.messages:
            out += [k for k in f if k not in ignore and k != "MONOTONIC_USEC"]
        return out


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.sock.close()


def test_notify_sequence_on_start_reload_and_stop(tmp_path, test_plugin_dir, notify):
    a = memhv_agent(tmp_path, test_plugin_dir)
    a.start(env={"NOTIFY_SOCKET": notify.path})
    ready = notify.collect(10, until=lambda f: "READY" in f)
    assert ready and ready["READY"] == "1" and "connected to rabbit://" in ready["STATUS"]
    assert "***" in ready["STATUS"], "the status line must not carry the broker password"
    assert "consuming" in a.text(), "READY=1 came before the agent consumed"
    status = notify.collect(8, until=lambda f: "instances" in f.get("STATUS", ""))
    assert re.match(r"connected to rabbit://\S+, 0 instances, (last heartbeat confirmed \d+ s ago|no heartbeat confirmed yet)", status["STATUS"])

    a.proc.send_signal(signal.SIGHUP)
    notify.collect(3, until=lambda f: f.get("STATUS") == "configuration reloaded")
    reloading = [f for _, f in notify.messages if "RELOADING" in f]
    assert reloading and int(reloading[0]["MONOTONIC_USEC"]) > 0
    # MONOTONIC_USEC is CLOCK_MONOTONIC, which systemd compares with its own.
    assert abs(int(reloading[0]["MONOTONIC_USEC"]) / 1e6 - time.monotonic()) < 5

    a.proc.send_signal(signal.SIGTERM)
    notify.collect(5, until=lambda f: "STOPPING" in f)
    assert a.proc.wait(20) == 0
    assert notify.keys() == ["READY", "RELOADING", "READY", "STOPPING"]


def test_watchdog_is_withheld_while_the_message_loop_is_wedged(tmp_path, test_plugin_dir, notify, transport):
    # One handler slot; a build whose plugin call takes 6 s holds it while a ping waits.
    a = memhv_agent(tmp_path, test_plugin_dir, memhv={"spawn_sleep_ms": 6000},
                    extra_default="[oslo_messaging_rabbit]\nrabbit_qos_prefetch_count = 1\n[DEFAULT]")
    a.start(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    notify.collect(3)
    beats = [t for t, f in notify.messages if f.get("WATCHDOG") == "1"]
    assert len(beats) >= 4, "WATCHDOG=1 should come every 0.5 s"
    c = rpc_client(transport, a.host)
    c.cast({}, "build_and_run_instance", instance=new_instance(name="slow-spawn-wd"))
    time.sleep(0.3)
    c.cast({}, "ping")
    start = time.time()
    notify.collect(4)
    during = [t for t, f in notify.messages if f.get("WATCHDOG") == "1" and start + 1.6 < t < start + 4]
    assert during == [], "WATCHDOG=1 was sent while the message loop was wedged"
    assert "withholding WATCHDOG=1: the message loop is wedged" in a.text()
    notify.collect(5)
    assert [t for t, f in notify.messages if f.get("WATCHDOG") == "1" and t > start + 6.5], \
        "WATCHDOG=1 did not come back once the loop moved again"
    a.stop()


def test_second_sigterm_exits_at_once_and_unstarted_messages_stay(tmp_path, test_plugin_dir, transport):
    a = memhv_agent(tmp_path, test_plugin_dir, memhv={"spawn_sleep_ms": 20000},
                    extra_default="[oslo_messaging_rabbit]\nrabbit_qos_prefetch_count = 1\n[DEFAULT]").start()
    c = rpc_client(transport, a.host)
    c.cast({}, "build_and_run_instance", instance=new_instance(name="slow-spawn-term"))
    time.sleep(0.5)
    c.cast({}, "ping")
    time.sleep(0.5)
    a.proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    assert a.proc.poll() is None, "the first SIGTERM must let the running build finish"
    started = time.time()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(5) == 0
    assert time.time() - started < 2
    assert "second SIGTERM: exiting at once" in a.text()
    # The ping that never started went back to the broker.
    assert queue_depth(f"compute.{a.host}")[0] == 1


def test_graceful_shutdown_timeout_bounds_the_wait(tmp_path, test_plugin_dir, transport):
    a = memhv_agent(tmp_path, test_plugin_dir, memhv={"spawn_sleep_ms": 20000},
                    extra_default="graceful_shutdown_timeout = 2").start()
    c = rpc_client(transport, a.host)
    c.cast({}, "build_and_run_instance", instance=new_instance(name="slow-spawn-grace"))
    time.sleep(0.5)
    started = time.time()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(10) == 0
    assert 1.5 < time.time() - started < 5
    assert "graceful shutdown did not finish within 2 s" in a.text()


def test_sighup_applies_live_options_and_names_the_others(tmp_path, test_plugin_dir):
    a = memhv_agent(tmp_path, test_plugin_dir, extra_default="update_resources_interval = 1").start()
    time.sleep(1.5)
    assert "DEBUG" not in a.text()
    text = a.conf.read_text().replace("[DEFAULT]\n", "[DEFAULT]\ndebug = true\nmax_concurrent_builds = 3\n", 1)
    a.conf.write_text(text)
    a.proc.send_signal(signal.SIGHUP)
    time.sleep(2.5)
    log = a.text()
    assert re.search(r"configuration reloaded applied=debug .*needs_restart=max_concurrent_builds", log), log[-2000:]
    assert "changed options that need a restart to take effect: max_concurrent_builds" in log
    assert "DEBUG" in log.split("configuration reloaded")[1], "debug logging did not start"
    # A broken file changes nothing and says why.
    a.conf.write_text(text.replace("report_interval = 1\n", "report_interval = soon\n"))
    a.proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert re.search(r"reload refused, the running configuration stays: .*report_interval: expected a decimal number", a.text())
    assert a.proc.poll() is None
    a.stop()


class Relay:
    """A plain TCP relay from a loopback port to the real broker, which the test starts
    late: until then the agent's connection attempts are refused."""

    def __init__(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None

    def start(self):
        import threading
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", 5672))
            for a, b in ((client, broker), (broker, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        if self.listener:
            self.listener.close()


def test_ready_only_once_the_broker_is_reachable(tmp_path, test_plugin_dir, notify, transport):
    relay = Relay()
    a = memhv_agent(tmp_path, test_plugin_dir)
    a.conf.write_text(a.conf.read_text().replace("@127.0.0.1:5672/", f"@127.0.0.1:{relay.port}/"))
    try:
        a.start(wait_for="broker connection failed", env={"NOTIFY_SOCKET": notify.path})
        status = notify.collect(12, until=lambda f: re.search(r"attempt [3-9]", f.get("STATUS", "")))
        assert status, notify.messages
        assert "READY" not in notify.keys(), "READY=1 before the broker was reachable"
        assert any(re.match(r"reconnecting to broker rabbit://\S+ \(attempt \d+\); 0 instances", f.get("STATUS", ""))
                   or re.match(r"reconnecting to broker \(attempt \d+ in [\d.]+ s\)", f.get("STATUS", ""))
                   for _, f in notify.messages), notify.messages
        assert not any(RABBIT_PASSWORD in f.get("STATUS", "") for _, f in notify.messages)
        assert a.proc.poll() is None, "the agent gave up instead of retrying"

        relay.start()
        ready = notify.collect(30, until=lambda f: "READY" in f)
        assert ready and "connected to rabbit://" in ready["STATUS"], notify.messages
        assert rpc_client(transport, a.host).call({}, "ping")["pong"] is True
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(20) == 0
    finally:
        a.stop()
        relay.close()
