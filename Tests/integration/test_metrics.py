"""The Prometheus endpoint and the health check, scraped with curl while a real workload
runs through the real agent: builds, a failing build, a call refused by the instance's
state, an unknown method, a plugin call that hangs past plugin_call_timeout. Counters must
move exactly as the events happened, the exposition must pass Prometheus's own
`promtool check metrics`, and no label may carry an instance UUID or a request id.
(The broker-restart half — /healthz 503 while the broker is stopped, 200 after, the
reconnect counters — is in test_broker_tls_failover.py, on its private broker node.)"""
import re
import socket
import subprocess
import time

import oslo_messaging
import pytest

from conftest import CTL, Agent, memhv_agent, new_instance, rpc_client, wait_state

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def curl(url):
    """(status, body) of one GET with curl."""
    p = subprocess.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=20)
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body


def samples(text):
    """{'name{labels}': value} of an exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def value(s, key):
    assert key in s, f"{key} missing from the scrape: {sorted(k for k in s if k.split('{')[0] == key.split('{')[0])}"
    return s[key]


def health_ctl(agent):
    p = subprocess.run([str(CTL), "health", "--config-file", str(agent.conf)], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout.strip()


def test_counters_move_as_the_workload_happens_and_promtool_accepts_the_exposition(tmp_path, test_plugin_dir, transport):
    port = free_port()
    a = memhv_agent(tmp_path, test_plugin_dir, memhv={"spawn_sleep_ms": 4000},
                    extra_default=f"plugin_call_timeout = 1\nservice_down_time = 20\n[metrics]\nlisten = 127.0.0.1:{port}").start()
    base = f"http://127.0.0.1:{port}"
    try:
        c = rpc_client(transport, a.host)
        built = [new_instance() for _ in range(3)]
        for inst in built:
            assert c.call({}, "build_and_run_instance", instance=inst)["vm_state"] == "active"
        with pytest.raises(oslo_messaging.RemoteError):
            c.call({}, "build_and_run_instance", instance=new_instance(name="fail-spawn-1"))
        # memhv sleeps 4 s in spawn for this name; plugin_call_timeout is 1 s.
        with pytest.raises(oslo_messaging.RemoteError) as hung:
            c.call({}, "build_and_run_instance", instance=new_instance(name="slow-spawn-hung"))
        assert "plugin_call_timeout" in hung.value.value
        with pytest.raises(oslo_messaging.RemoteError) as refused:
            c.call({}, "start_instance", instance_uuid=built[0]["uuid"])
        assert refused.value.exc_type == "InstanceInvalidState"
        with pytest.raises(oslo_messaging.RemoteError):
            c.call({}, "no_such_method_" + built[0]["uuid"])
        c.cast({}, "stop_instance", instance_uuid=built[1]["uuid"])
        wait_state(c, built[1]["uuid"], "stopped")
        time.sleep(1.5)  # a heartbeat and a periodic pass after the workload

        status, text = curl(base + "/metrics")
        assert status == 200
        s = samples(text)
        rpc = 'compute_agent_rpc_messages_total{method="%s",kind="%s",outcome="%s"}'
        assert value(s, rpc % ("build_and_run_instance", "call", "ok")) == 3
        assert value(s, rpc % ("build_and_run_instance", "call", "error")) == 2
        assert value(s, rpc % ("start_instance", "call", "refused")) == 1
        assert value(s, rpc % ("unknown", "call", "error")) == 1
        assert value(s, rpc % ("stop_instance", "cast", "ok")) == 1
        assert value(s, 'compute_agent_rpc_handling_seconds_count{method="build_and_run_instance"}') == 5
        assert value(s, 'compute_agent_plugin_call_timeouts_total{kind="hypervisor",function="spawn"}') == 1
        assert value(s, 'compute_agent_plugin_call_errors_total{kind="hypervisor",function="spawn"}') == 1
        assert value(s, 'compute_agent_plugin_call_duration_seconds_count{kind="hypervisor",function="spawn"}') == 5
        assert value(s, 'compute_agent_instances{vm_state="active"}') == 2
        assert value(s, 'compute_agent_instances{vm_state="stopped"}') == 1
        assert value(s, 'compute_agent_instances_by_power_state{power_state="SHUTDOWN"}') >= 1
        assert value(s, "compute_agent_builds_in_progress") == 0
        assert value(s, 'compute_agent_broker_connected{lane="rpc"}') == 1
        assert value(s, 'compute_agent_broker_connected{lane="notify"}') == 1
        assert value(s, 'compute_agent_broker_reconnects_total{lane="rpc"}') == 0
        assert value(s, "compute_agent_heartbeat_age_seconds") < 3
        assert value(s, "compute_agent_heartbeat_send_seconds_count") >= 2
        assert value(s, "compute_agent_rpc_unacked_messages") == 0
        assert time.time() - value(s, 'compute_agent_periodic_task_last_run_timestamp_seconds{task="report_state"}') < 3
        assert value(s, 'compute_agent_periodic_task_failures_total{task="report_state"}') == 0
        assert value(s, "process_resident_memory_bytes") > 4 << 20
        assert value(s, "process_open_fds") > 3
        assert abs(value(s, "process_start_time_seconds") - time.time()) < 120
        assert any(k.startswith("compute_agent_build_info{") for k in s)
        # Bounded labels: no instance UUID or request id anywhere in a series name.
        assert not [k for k in s if UUID_RE.search(k)], [k for k in s if UUID_RE.search(k)]
        # Prometheus's own linter accepts it.
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr

        status, body = curl(base + "/healthz")
        assert status == 200 and body.startswith("ok: consuming, last heartbeat confirmed"), body
        assert health_ctl(a)[0] == 0
        assert curl(base + "/nope")[0] == 404
        head = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", base + "/metrics"],
                              capture_output=True, text=True, timeout=20)
        assert head.stdout == "405"
    finally:
        a.stop()


def test_a_taken_port_is_logged_and_the_agent_serves_on_with_its_health_socket(tmp_path, transport):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        a = Agent(tmp_path, extra_default=f"service_down_time = 20\n[metrics]\nlisten = 127.0.0.1:{port}").start()
        try:
            assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in a.text()
            assert rpc_client(transport, a.host).call({}, "ping")["pong"] is True
            time.sleep(1.2)
            code, out = health_ctl(a)
            assert code == 0 and out.startswith("ok: consuming"), out
        finally:
            a.stop()
        code, out = health_ctl(a)
        assert code == 1 and "does not answer" in out, out
    finally:
        blocker.close()


def test_ipv6_listen_serves_metrics(tmp_path):
    port = free_port()
    a = Agent(tmp_path, extra_default=f"[metrics]\nlisten = [::1]:{port}").start()
    try:
        status, text = curl(f"http://[::1]:{port}/metrics")
        assert status == 200 and "process_resident_memory_bytes" in text
    finally:
        a.stop()


@pytest.mark.parametrize("listen", ["localhost:9178", "9178", "127.0.0.1:0", "127.0.0.1:99999", "[::1]9178"])
def test_a_bad_listen_address_is_a_config_error_with_file_and_line(tmp_path, listen):
    from conftest import AGENT
    conf = tmp_path / "bad.conf"
    conf.write_text(f"[DEFAULT]\nhost = h\n[metrics]\nlisten = {listen}\n")
    p = subprocess.run([str(AGENT), "--config-file", str(conf)], capture_output=True, text=True, timeout=20)
    assert p.returncode == 2 and f"{conf}:4: [metrics] listen: '{listen}' is not host:port" in p.stderr, p.stderr


def test_every_scraped_metric_is_documented_and_the_shipped_prometheus_files_pass_promtool(tmp_path, transport):
    from conftest import ROOT
    port = free_port()
    a = Agent(tmp_path, extra_default=f"[metrics]\nlisten = 127.0.0.1:{port}").start()
    try:
        # One message and the first periodic passes make every family appear.
        assert rpc_client(transport, a.host).call({}, "ping")["pong"] is True
        time.sleep(1.2)
        text = curl(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        a.stop()
    docs = (ROOT / "docs" / "metrics.md").read_text()
    names = {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE ")}
    assert len(names) > 20, names
    assert not [n for n in names if f"`{n}`" not in docs and f"`{n}` /" not in docs and f"/ `{n}`" not in docs], \
        [n for n in names if f"`{n}`" not in docs]
    prom = ROOT / "packaging" / "prometheus"
    for args in (["check", "rules", str(prom / "compute-agent-alerts.yml")], ["check", "config", str(prom / "scrape-config.yml")]):
        p = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
    # The alert rules name only metrics the agent exports (or Prometheus' own `up`).
    rules = (prom / "compute-agent-alerts.yml").read_text()
    used = set(re.findall(r"\b((?:compute_agent|process)_[a-z_]+)", rules))
    assert used and used <= names, used - names
