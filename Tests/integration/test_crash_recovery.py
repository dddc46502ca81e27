"""SIGKILL at every interesting point of a build, a terminate and a stop; after a restart
nothing is lost, orphaned or left with a task_state, and every accepted action has been
carried out exactly once (memhv counts its spawns; the broker's queue ends empty)."""
import os
import subprocess

import pytest

from conftest import make_image, memhv_agent, new_instance, rpc_client, wait_state

RABBITMQCTL = ["rabbitmqctl", "-n", os.environ.get("RABBITMQ_NODENAME", "rabbit@localhost"), "-q"]


def queue_depth(name):
    out = subprocess.run(RABBITMQCTL + ["list_queues", "name", "messages", "messages_unacknowledged"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[1]), int(parts[2])
    return None


@pytest.fixture
def env(tmp_path, test_plugin_dir, transport):
    a = memhv_agent(tmp_path, test_plugin_dir)
    image, checksum = make_image(tmp_path / "image.raw")
    yield {"agent": a, "tmp": tmp_path, "image": image, "checksum": checksum, "transport": transport}
    a.stop()


def calls(env, what, u):
    p = env["tmp"] / "domains.calls"
    return p.read_text().split("\n").count(f"{what} {u}") if p.exists() else 0


def net(env, what, vif):
    p = env["tmp"] / "net.log"
    return p.read_text().split("\n").count(f"{what} {vif}") if p.exists() else 0


def crash_then_restart(env, failpoint, send):
    a = env["agent"]
    a.start(env={"COMPUTE_AGENT_FAILPOINTS": failpoint})
    c = rpc_client(env["transport"], a.host)
    send(c)
    assert a.wait_killed() == -9, "the agent did not die at the failpoint"
    assert f"failpoint {failpoint} reached" in a.text()
    a.start()
    return c


@pytest.mark.parametrize("failpoint", ["rpc.before_record", "rpc.after_record", "build.after_fetch",
                                       "build.after_plug", "build.after_spawn"])
def test_build_killed_at(env, failpoint):
    inst = new_instance(image_ref=env["image"], image_checksum=env["checksum"], vifs=[{"id": "vif-k"}])
    u = inst["uuid"]
    c = crash_then_restart(env, failpoint, lambda c: c.cast({}, "build_and_run_instance", instance=inst))
    info = wait_state(c, u, "active", timeout=20)
    assert info["power_state_name"] == "RUNNING"
    assert calls(env, "spawn", u) == 1, "the domain was started more or less than once"
    assert net(env, "plug", "vif-k") - net(env, "unplug", "vif-k") == 1
    assert (env["tmp"] / "state" / "instances" / u / "disk").exists()
    assert [i["uuid"] for i in c.call({}, "list_instances")] == [u]
    assert queue_depth(f"compute.{env['agent'].host}") == (0, 0), "a message was left in the broker"
    text = env["agent"].text()
    if failpoint == "rpc.after_record":
        # The broker redelivers the unacked cast; the journal recognises it.
        assert "redelivered message for an operation already accepted: not run again" in text
    if failpoint.startswith("build.") or failpoint == "rpc.after_record":
        assert "resuming build_and_run_instance interrupted by a restart" in text


@pytest.mark.parametrize("failpoint", ["rpc.after_record", "terminate.after_destroy"])
def test_terminate_killed_at(env, failpoint):
    a = env["agent"]
    a.start()
    c = rpc_client(env["transport"], a.host)
    inst = new_instance(image_ref=env["image"], vifs=[{"id": "vif-t"}])
    u = c.call({}, "build_and_run_instance", instance=inst)["uuid"]
    a.stop()
    c = crash_then_restart(env, failpoint, lambda c: c.cast({}, "terminate_instance", instance_uuid=u))
    deadline_ok = False
    for _ in range(200):
        if c.call({}, "list_instances") == []:
            deadline_ok = True
            break
        import time
        time.sleep(0.05)
    assert deadline_ok, c.call({}, "list_instances")
    assert u not in (env["tmp"] / "domains").read_text()
    assert calls(env, "destroy", u) == 1
    assert net(env, "unplug", "vif-t") >= 1
    assert not (env["tmp"] / "state" / "instances" / u).exists()
    assert queue_depth(f"compute.{a.host}") == (0, 0)


def test_stop_killed_between_record_and_ack_runs_once(env):
    a = env["agent"]
    a.start()
    c = rpc_client(env["transport"], a.host)
    u = c.call({}, "build_and_run_instance", instance=new_instance())["uuid"]
    a.stop()
    c = crash_then_restart(env, "rpc.after_record", lambda c: c.cast({}, "stop_instance", instance_uuid=u))
    info = wait_state(c, u, "stopped")
    assert info["power_state_name"] == "SHUTDOWN"
    text = a.text()
    assert "redelivered message for an operation already accepted: not run again" in text
    assert text.count("instance is stopped") == 1
    assert queue_depth(f"compute.{a.host}") == (0, 0)


def test_agent_restart_keeps_every_record(env):
    a = env["agent"]
    a.start()
    c = rpc_client(env["transport"], a.host)
    uuids = {}
    for state, steps in [("active", []), ("stopped", ["stop_instance"]), ("paused", ["pause_instance"]),
                         ("soft-delete", ["soft_delete_instance"])]:
        u = c.call({}, "build_and_run_instance", instance=new_instance())["uuid"]
        for s in steps:
            c.call({}, s, instance_uuid=u)
        uuids[u] = state
    c.call({"is_admin": True}, "lock_instance", instance_uuid=list(uuids)[0])
    a.kill()
    a.start()
    after = {i["uuid"]: i for i in c.call({}, "list_instances")}
    assert {u: i["vm_state"] for u, i in after.items()} == uuids
    assert all(i["task_state"] is None for i in after.values())
    assert after[list(uuids)[0]]["locked_by"] == "admin"
