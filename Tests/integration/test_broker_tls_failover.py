"""TLS to a real RabbitMQ listening with certificates this test makes with openssl, and
failover between two RabbitMQ nodes named in one transport_url."""
import re
import signal
import subprocess
import time
import uuid

import oslo_messaging
import pytest
from oslo_config import cfg

from brokers import RabbitNode
from conftest import AGENT, CTL, RABBIT_PASSWORD, RABBIT_USER, Agent, rpc_client, wait_state


@pytest.fixture(scope="module")
def node():
    n = RabbitNode().start()
    yield n
    n.stop()


def tls_agent(tmp_path, node, **ssl):
    opts = {"ssl": "true", "ssl_ca_file": node.certs / "ca.pem", **ssl}
    return Agent(tmp_path, extra_default=f"transport_url = rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@localhost:{node.tls_port}/",
                 sections={"libvirt": {"connection_uri": "test:///default"}, "oslo_messaging_rabbit": opts})


def ping_with_ctl(agent):
    """computectl reads the agent's config, TLS options included."""
    p = subprocess.run([str(CTL), "ping", "--config-file", str(agent.conf), "--timeout", "10"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def secrets_absent(text, node):
    assert RABBIT_PASSWORD not in text
    for key in ("client.key", "server.key", "ca.key"):
        body = [l for l in (node.certs / key).read_text().splitlines() if l and not l.startswith("-----")]
        assert not any(l in text for l in body), f"{key} contents reached the log"


def test_tls_with_ca_verification(tmp_path, node):
    a = tls_agent(tmp_path, node).start()
    try:
        assert f"broker=localhost:{node.tls_port}" in a.text()
        assert '"pong": true' in ping_with_ctl(a)
        conns = node.ctl("list_connections", "client_properties", "ssl", "ssl_protocol").stdout
        agent_conns = [l for l in conns.splitlines() if a.host in l]
        assert len(agent_conns) == 2 and all(re.search(r"\ttrue\ttlsv1\.[23]$", l) for l in agent_conns), conns
        secrets_absent(a.text(), node)
    finally:
        a.stop()


def test_tls_with_the_wrong_ca_fails_clearly_retries_and_stops_at_once(tmp_path, node):
    a = tls_agent(tmp_path, node, ssl_ca_file=node.certs / "other-ca.pem")
    a.start(wait_for="certificate verify failed")
    try:
        deadline = time.time() + 10
        while time.time() < deadline and "attempt=2" not in a.text():
            time.sleep(0.1)
        assert re.search(r"certificate verify failed: the broker's certificate is not signed by a CA in \S+/other-ca.pem", a.text())
        assert "attempt=2" in a.text(), "a TLS failure must be retried with backoff"
        started = time.time()
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(10) == 0
        assert time.time() - started < 1.0
        secrets_absent(a.text(), node)
    finally:
        a.stop()


def test_mutual_tls_with_a_client_certificate(tmp_path, node):
    a = tls_agent(tmp_path, node, ssl_cert_file=node.certs / "client.pem", ssl_key_file=node.certs / "client.key").start()
    try:
        assert '"pong": true' in ping_with_ctl(a)
        subjects = node.ctl("list_connections", "client_properties", "peer_cert_subject").stdout
        assert sum(1 for l in subjects.splitlines() if a.host in l and "CN=compute-agent" in l) == 2, subjects
        secrets_absent(a.text(), node)
    finally:
        a.stop()
    # A client certificate from a CA the broker does not trust is refused by the broker.
    (tmp_path / "b").mkdir()
    b = tls_agent(tmp_path / "b", node, ssl_cert_file=node.certs / "stranger.pem", ssl_key_file=node.certs / "stranger.key")
    b.start(wait_for="broker connection failed")
    try:
        assert re.search(r"does it accept the client certificate \S+/stranger.pem\?", b.text()), b.text()[-1500:]
        assert "consuming" not in b.text()
    finally:
        b.stop()


def test_unsupported_tls_options_are_refused_clearly(tmp_path, node):
    for opts, message in [({"ssl_enforce_fips_mode": "true"}, "FIPS mode cannot be enforced by the agent"),
                          ({"ssl_version": "TLSv1"}, "TLSv1 is not offered (insecure"),
                          ({"ssl_ca_file": "/nonexistent/ca.pem"}, "cannot read /nonexistent/ca.pem")]:
        d = tmp_path / uuid.uuid4().hex[:6]
        d.mkdir()
        a = tls_agent(d, node, **opts)
        p = subprocess.run([str(AGENT), "--config-file", str(a.conf)], capture_output=True, text=True, timeout=20)
        assert p.returncode == 2 and message in p.stderr, p.stderr


def test_failover_between_two_nodes_loses_and_repeats_nothing(tmp_path, node, transport):
    """transport_url names the private node first and the suite's broker second; stopping
    the first moves the agent to the second, with every accepted build done exactly once."""
    url = f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{node.port},{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:5672/"
    a = Agent(tmp_path, extra_default=f"transport_url = {url}").start()
    first = oslo_messaging.get_rpc_transport(cfg.CONF, url=f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{node.port}/")
    try:
        assert f"broker=127.0.0.1:{node.port}" in a.text()
        c1 = rpc_client(first, a.host)
        before = [str(uuid.uuid4()) for _ in range(3)]
        for u in before:
            c1.cast({}, "build_and_run_instance", instance={"uuid": u, "name": "vm-" + u[:8], "vcpus": 1, "memory_mb": 64, "root_gb": 1})
        for u in before:
            wait_state(c1, u, "active")
        mark = len(a.text())
        stopped = time.time()
        node.stop_app()
        deadline = time.time() + 30
        while time.time() < deadline and a.text()[mark:].count("reconnected to broker broker=127.0.0.1:5672") < 2:
            time.sleep(0.05)
        resumed = time.time() - stopped
        print(f"failover: both lanes on the second node {resumed:.2f} s after stop_app")
        assert a.text()[mark:].count("reconnected to broker broker=127.0.0.1:5672") == 2, a.text()[mark:]
        c2 = rpc_client(transport, a.host)
        after = [str(uuid.uuid4()) for _ in range(3)]
        for u in after:
            c2.cast({}, "build_and_run_instance", instance={"uuid": u, "name": "vm-" + u[:8], "vcpus": 1, "memory_mb": 64, "root_gb": 1})
        for u in before + after:
            assert wait_state(c2, u, "active")["power_state_name"] == "RUNNING"
        log = a.text()
        for u in before + after:
            runs = [l for l in log.splitlines() if "rpc handled" in l and f"instance_uuid={u}" in l and "build_and_run_instance" in l]
            assert len(runs) == 1, (u, runs)
    finally:
        a.stop()
        first.cleanup()
        node.start_app()


def test_healthz_is_503_while_the_broker_is_stopped_and_200_after_with_the_reconnects_counted(tmp_path, node):
    """/healthz and `computectl health` follow the broker: 503 and exit 1 with the reason while
    it is stopped, 200 and exit 0 once the agent consumes and a heartbeat is confirmed again;
    the connection gauges and reconnect counters say what happened."""
    from test_metrics import curl, free_port, health_ctl, samples, value
    port = free_port()
    url = f"rabbit://{RABBIT_USER}:{RABBIT_PASSWORD}@127.0.0.1:{node.port}/"
    a = Agent(tmp_path, extra_default=f"transport_url = {url}\nservice_down_time = 6\n[metrics]\nlisten = 127.0.0.1:{port}").start()
    base = f"http://127.0.0.1:{port}"

    def wait_health(code, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, body = curl(base + "/healthz")
            if status == code:
                return body
            time.sleep(0.2)
        raise AssertionError(f"/healthz never answered {code}: {status} {body}")
    try:
        wait_health(200)
        node.stop_app()
        try:
            body = wait_health(503)
            assert body.startswith("not consuming: no RPC connection to the broker"), body
            code, out = health_ctl(a)
            assert code == 1 and out == body.strip(), out
            s = samples(curl(base + "/metrics")[1])
            assert value(s, 'compute_agent_broker_connected{lane="rpc"}') == 0
            assert value(s, 'compute_agent_broker_connection_failures_total{lane="rpc"}') >= 1
        finally:
            node.start_app()
        body = wait_health(200, timeout=60)
        assert body.startswith("ok: consuming"), body
        assert health_ctl(a)[0] == 0
        s = samples(curl(base + "/metrics")[1])
        assert value(s, 'compute_agent_broker_connected{lane="rpc"}') == 1
        assert value(s, 'compute_agent_broker_reconnects_total{lane="rpc"}') == 1
        assert value(s, 'compute_agent_broker_reconnects_total{lane="notify"}') == 1
        assert value(s, "compute_agent_heartbeat_age_seconds") < 3
    finally:
        a.stop()
