"""The agent's instance notifications, as a real oslo.messaging notification listener
receives them."""
import queue
import time

import oslo_messaging
import pytest
from oslo_config import cfg

from conftest import URL, memhv_agent, new_instance, rpc_client


class Collector:
    def __init__(self):
        self.q = queue.Queue()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.q.put(("INFO", publisher_id, event_type, payload, metadata))

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self.q.put(("ERROR", publisher_id, event_type, payload, metadata))

    def events(self, uuid_, count, timeout=15):
        out, deadline = [], time.time() + timeout
        while len(out) < count and time.time() < deadline:
            try:
                n = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if n[3].get("instance_id") == uuid_:
                out.append(n)
        return out


@pytest.fixture
def listener(tmp_path, test_plugin_dir, transport):
    topic = "ntest_" + tmp_path.name[-8:].replace("-", "_")
    a = memhv_agent(tmp_path, test_plugin_dir, extra_default=f"notification_topic = {topic}").start()
    t = oslo_messaging.get_notification_transport(cfg.CONF, url=URL)
    col = Collector()
    lis = oslo_messaging.get_notification_listener(t, [oslo_messaging.Target(topic=topic)], [col], executor="threading")
    lis.start()
    yield a, col
    lis.stop()
    lis.wait()
    a.stop()


def test_build_and_delete_sequence(listener, transport):
    agent, col = listener
    c = rpc_client(transport, agent.host)
    inst = new_instance(vcpus=2, memory_mb=128, root_gb=1)
    c.call({"project_id": "p1", "user_id": "u1"}, "build_and_run_instance", instance=inst)
    c.call({}, "stop_instance", instance_uuid=inst["uuid"])
    c.call({}, "terminate_instance", instance_uuid=inst["uuid"])
    got = col.events(inst["uuid"], 6)
    assert [(p, e) for p, _, e, _, _ in got] == [
        ("INFO", "compute.instance.create.start"), ("INFO", "compute.instance.create.end"),
        ("INFO", "compute.instance.power_off.start"), ("INFO", "compute.instance.power_off.end"),
        ("INFO", "compute.instance.delete.start"), ("INFO", "compute.instance.delete.end"),
    ]
    _, publisher, _, end, metadata = got[1]
    assert publisher == f"compute.{agent.host}"
    assert end["state"] == "active" and end["host"] == agent.host and end["vcpus"] == 2 and end["memory_mb"] == 128
    assert end["tenant_id"] == "p1" and end["user_id"] == "u1" and end["launched_at"]
    assert got[0][3]["state"] == "building" and got[0][3]["state_description"] == "spawning"
    assert got[5][3]["state"] == "deleted"
    assert metadata["message_id"] and metadata["timestamp"]


def test_failed_build_sends_an_error_notification(listener, transport):
    agent, col = listener
    c = rpc_client(transport, agent.host)
    inst = new_instance(name="fail-spawn-n")
    with pytest.raises(oslo_messaging.RemoteError):
        c.call({}, "build_and_run_instance", instance=inst)
    got = col.events(inst["uuid"], 2)
    assert [(p, e) for p, _, e, _, _ in got] == [("INFO", "compute.instance.create.start"),
                                                  ("ERROR", "compute.instance.create.error")]
    assert got[1][3]["state"] == "error" and "failed to start" in got[1][3]["message"]


def test_noop_driver_sends_nothing(tmp_path, test_plugin_dir, transport):
    topic = "ntest_noop_" + tmp_path.name[-6:]
    a = memhv_agent(tmp_path, test_plugin_dir,
                    extra_default=f"notification_topic = {topic}\nnotification_driver = noop").start()
    t = oslo_messaging.get_notification_transport(cfg.CONF, url=URL)
    col = Collector()
    lis = oslo_messaging.get_notification_listener(t, [oslo_messaging.Target(topic=topic)], [col], executor="threading")
    lis.start()
    try:
        inst = new_instance()
        rpc_client(transport, a.host).call({}, "build_and_run_instance", instance=inst)
        assert col.events(inst["uuid"], 1, timeout=2) == []
    finally:
        lis.stop()
        lis.wait()
        a.stop()
