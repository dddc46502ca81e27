"""The real oslo.messaging RPCClient drives the running agent, and real oslo.messaging
servers receive what the agent publishes."""
import threading
import time
import uuid

import oslo_messaging
import pytest

from conftest import new_instance, wait_state


def test_ping_call(client, agent):
    r = client.call({}, "ping", arg={"x": 1})
    assert r["pong"] is True and r["host"] == agent.host and r["echo"] == {"x": 1}


def test_version_1_0_is_served_explicitly_too(client):
    assert client.prepare(version="1.1").call({}, "ping")["pong"] is True
    assert client.prepare(version="1.0").call({}, "ping")["pong"] is True


def test_unknown_method_raises_no_such_method(client):
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "no_such_method")
    assert e.value.exc_type == "NoSuchMethod"
    assert "Endpoint does not support RPC method no_such_method" in e.value.value


def test_incompatible_version_raises_unsupported_version(client):
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.prepare(version="2.0").call({}, "ping")
    assert e.value.exc_type == "UnsupportedVersion"
    assert "Endpoint does not support RPC version 2.0. Attempted method: ping" in e.value.value
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.prepare(version="1.2").call({}, "ping")
    assert e.value.exc_type == "UnsupportedVersion"


def test_call_timeout_to_a_host_without_agent(transport):
    c = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", server="nobody-" + uuid.uuid4().hex[:6]), timeout=1)
    started = time.time()
    with pytest.raises(oslo_messaging.MessagingTimeout):
        c.call({}, "ping")
    assert time.time() - started < 5


def test_call_with_call_monitor_timeout(client):
    assert client.prepare(call_monitor_timeout=2, timeout=10).call({}, "ping")["pong"] is True


def test_full_lifecycle_through_casts(client, agent):
    inst = new_instance()
    u = inst["uuid"]
    client.cast({}, "build_and_run_instance", instance=inst)
    info = wait_state(client, u, "active")
    assert info["power_state_name"] == "RUNNING"
    assert any(i["uuid"] == u for i in client.call({}, "list_instances"))

    steps = [("pause_instance", "paused", "PAUSED"), ("unpause_instance", "active", "RUNNING"),
             ("suspend_instance", "suspended", "SUSPENDED"), ("resume_instance", "active", "RUNNING"),
             ("stop_instance", "stopped", "SHUTDOWN"), ("start_instance", "active", "RUNNING")]
    for method, vm_state, power in steps:
        client.cast({}, method, instance_uuid=u)
        assert wait_state(client, u, vm_state)["power_state_name"] == power, method
    client.cast({}, "reboot_instance", instance_uuid=u, reboot_type="SOFT")
    client.cast({}, "reboot_instance", instance_uuid=u, reboot_type="HARD")
    assert wait_state(client, u, "active")["power_state_name"] == "RUNNING"

    client.cast({}, "terminate_instance", instance_uuid=u)
    deadline = time.time() + 10
    while time.time() < deadline:
        if not any(i["uuid"] == u for i in client.call({}, "list_instances")):
            break
        time.sleep(0.05)
    else:
        pytest.fail("instance still listed after terminate")
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "get_instance_info", instance_uuid=u)
    assert e.value.exc_type == "InstanceNotFound"


def test_actions_as_calls_return_the_instance(client):
    inst = new_instance()
    r = client.call({}, "build_and_run_instance", instance=inst)
    assert r["vm_state"] == "active"
    assert client.call({}, "pause_instance", instance={"uuid": inst["uuid"]})["vm_state"] == "paused"
    assert client.call({}, "terminate_instance", instance_uuid=inst["uuid"])["vm_state"] == "deleted"


def test_action_in_wrong_state_reaches_python_with_class_and_message(client):
    inst = new_instance()
    client.call({}, "build_and_run_instance", instance=inst)
    client.call({}, "stop_instance", instance_uuid=inst["uuid"])
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "pause_instance", instance_uuid=inst["uuid"])
    assert e.value.exc_type == "InstanceInvalidState"
    assert e.value.value == f"Cannot 'pause_instance' instance {inst['uuid']} while it is in vm_state stopped"
    # The refusal changed nothing.
    assert client.call({}, "get_instance_info", instance_uuid=inst["uuid"])["vm_state"] == "stopped"
    client.call({}, "terminate_instance", instance_uuid=inst["uuid"])


def test_terminate_of_unknown_instance_succeeds(client):
    r = client.call({}, "terminate_instance", instance_uuid=str(uuid.uuid4()))
    assert r["vm_state"] == "deleted"


def test_wrong_argument_types_give_invalid_input(client):
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "build_and_run_instance", instance=new_instance(vcpus="two"))
    assert e.value.exc_type == "InvalidInput" and "'vcpus' must be an integer" in e.value.value
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "get_instance_info", instance_uuid=42)
    assert e.value.exc_type == "InvalidInput"
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.call({}, "reboot_instance", instance_uuid=str(uuid.uuid4()), reboot_type="SIDEWAYS")
    assert e.value.exc_type == "InvalidInput"


def test_host_capabilities(client):
    caps = client.call({}, "get_host_capabilities")
    for key in ["vcpus", "vcpus_used", "memory_mb", "memory_mb_used", "memory_mb_free", "local_gb", "local_gb_used",
                "local_gb_free", "hypervisor_type", "hypervisor_version", "cpu_info", "num_instances", "plugins"]:
        assert key in caps, key
    assert caps["hypervisor_type"] == "TEST"
    assert {p["name"] for p in caps["plugins"]} == {"libvirt", "file", "noop"}


def test_fanout_cast_reaches_the_agent(transport, agent):
    c = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", fanout=True))
    c.cast({}, "ping", arg="fanout-hello")
    deadline = time.time() + 5
    while time.time() < deadline and "fanout" not in agent.text():
        time.sleep(0.05)
    # The fanout queue is per agent process; its name appears in the "consuming" line.
    assert "compute_fanout_" in agent.text()


class Collector:
    def __init__(self):
        self.got = []
        self.event = threading.Event()


def run_listener(transport, topic, endpoint, fanout_host="listener"):
    server = oslo_messaging.get_rpc_server(transport, oslo_messaging.Target(topic=topic, server=fanout_host),
                                           [endpoint], executor="threading")
    server.start()
    return server


def test_scheduler_fanout_listener_receives_capabilities(transport, agent):
    got = Collector()

    class Scheduler:
        def update_service_capabilities(self, ctxt, service_name, host, capabilities):
            if host == agent.host:
                got.got.append((service_name, capabilities))
                got.event.set()

    server = run_listener(transport, "scheduler", Scheduler(), fanout_host="sched-" + uuid.uuid4().hex[:6])
    try:
        assert got.event.wait(10), "no update_service_capabilities within 10 s"
    finally:
        server.stop()
        server.wait()
    service_name, caps = got.got[0]
    assert service_name == "compute"
    assert caps["host"] == agent.host and caps["hypervisor_type"] == "TEST" and "num_instances" in caps


def test_conductor_listener_receives_heartbeats(transport, agent):
    got = Collector()

    class Conductor:
        def report_state(self, ctxt, service):
            if service["host"] == agent.host:
                got.got.append(service)
                if len(got.got) >= 2:
                    got.event.set()

    server = run_listener(transport, "conductor", Conductor(), fanout_host="cond-" + uuid.uuid4().hex[:6])
    try:
        assert got.event.wait(10), f"fewer than 2 heartbeats within 10 s: {got.got}"
    finally:
        server.stop()
        server.wait()
    a, b = got.got[0], got.got[1]
    assert a["binary"] == "compute-agent" and a["topic"] == "compute" and a["disabled"] is False
    assert b["report_count"] == a["report_count"] + 1
    assert {"uptime", "version"} <= set(a)


def test_password_never_logged(agent):
    from conftest import RABBIT_PASSWORD
    assert RABBIT_PASSWORD not in agent.text()
    assert "***@127.0.0.1" in agent.text()
