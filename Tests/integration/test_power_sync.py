"""The records follow the hypervisor: sync_power_states applies nova's rules with one
list call, hypervisor lifecycle events are acted on at once, and a domain the agent
does not know is reported, never destroyed."""
import re
import time
import uuid

import pytest

from conftest import edit_domains, memhv_agent, new_instance, rpc_client, wait_state


@pytest.fixture
def env(tmp_path, test_plugin_dir, transport):
    a = memhv_agent(tmp_path, test_plugin_dir, extra_default="sync_power_state_interval = 1").start()
    yield {"agent": a, "client": rpc_client(transport, a.host), "domains": tmp_path / "domains"}
    a.stop()


def set_power(env, u, power):
    """Changes a domain's power state behind the agent's back, as a guest shutting down would."""
    edit_domains(env["domains"], lambda t: re.sub(rf"^({u}) \d+ ", rf"\g<1> {power} ", t, flags=re.M))


def test_instance_that_stopped_by_itself_goes_to_stopped(env):
    c = env["client"]
    u = c.call({}, "build_and_run_instance", instance=new_instance())["uuid"]
    set_power(env, u, 4)
    info = wait_state(c, u, "stopped", timeout=10)
    assert info["power_state_name"] == "SHUTDOWN"
    assert re.search(rf"instance shut down by itself .*instance_uuid={u}", env["agent"].text())


def test_stopped_instance_found_running_is_stopped_again(env):
    c = env["client"]
    u = c.call({}, "build_and_run_instance", instance=new_instance())["uuid"]
    c.call({}, "stop_instance", instance_uuid=u)
    set_power(env, u, 1)
    deadline = time.time() + 10
    while time.time() < deadline:
        if f"{u} 4 " in env["domains"].read_text():
            break
        time.sleep(0.1)
    assert f"{u} 4 " in env["domains"].read_text(), "the sync did not power the instance off again"
    assert c.call({}, "get_instance_info", instance_uuid=u)["vm_state"] == "stopped"


def test_unknown_domain_is_reported_not_destroyed(env):
    c = env["client"]
    stray = str(uuid.uuid4())
    edit_domains(env["domains"], lambda t: t + f"{stray} 1 1 64 hand-made\n")
    deadline = time.time() + 10
    while time.time() < deadline and c.call({}, "get_host_capabilities")["unmanaged_domains"] == 0:
        time.sleep(0.1)
    assert c.call({}, "get_host_capabilities")["unmanaged_domains"] == 1
    assert stray in env["domains"].read_text()
    assert re.search(rf"does not manage; left untouched .*domain_uuid={stray}", env["agent"].text())


def test_hard_reboot_recreates_a_vanished_domain(env):
    c = env["client"]
    u = c.call({}, "build_and_run_instance", instance=new_instance())["uuid"]
    p = env["domains"]
    edit_domains(p, lambda t: "".join(l for l in t.splitlines(True) if not l.startswith(u)))
    assert "vanished" in wait_state(c, u, "error", timeout=10)["fault"]
    r = c.call({}, "reboot_instance", instance_uuid=u, reboot_type="HARD")
    assert r["vm_state"] == "active" and r["power_state_name"] == "RUNNING" and r["fault"] is None
    assert u in p.read_text()


def test_soft_deleted_instances_are_reclaimed_after_the_interval(tmp_path, test_plugin_dir, transport):
    a = memhv_agent(tmp_path, test_plugin_dir, extra_default="reclaim_instance_interval = 1").start()
    try:
        c = rpc_client(transport, a.host)
        keep = c.call({}, "build_and_run_instance", instance=new_instance())["uuid"]
        u = c.call({}, "build_and_run_instance", instance=new_instance())["uuid"]
        c.call({}, "soft_delete_instance", instance_uuid=u)
        deadline = time.time() + 15
        while time.time() < deadline and any(i["uuid"] == u for i in c.call({}, "list_instances")):
            time.sleep(0.2)
        assert [i["uuid"] for i in c.call({}, "list_instances")] == [keep]
        assert u not in (tmp_path / "domains").read_text()
        assert re.search(rf"reclaiming soft-deleted instance .*instance_uuid={u}", a.text())
    finally:
        a.stop()
