"""Every action of the state table, from every state nova allows it in and from one it
refuses, driven by the real oslo.messaging client against the agent on the memhv test
hypervisor (a C plugin of our ABI whose domains live in a file)."""
import pathlib
import re
import threading
import time
import uuid

import oslo_messaging
import pytest

from conftest import edit_domains, make_image, memhv_agent, new_instance, rpc_client, wait_state


@pytest.fixture(scope="module")
def env(tmp_path_factory, test_plugin_dir, transport):
    tmp = tmp_path_factory.mktemp("lifecycle")
    a = memhv_agent(tmp, test_plugin_dir, extra_default="sync_power_state_interval = 1\nupdate_resources_interval = 1").start()
    image, checksum = make_image(tmp / "image.raw")
    yield {"agent": a, "client": rpc_client(transport, a.host), "image": image, "checksum": checksum, "tmp": tmp}
    a.stop()


def build(env, **over):
    inst = new_instance(image_ref=env["image"], image_checksum=env["checksum"], **over)
    info = env["client"].call({}, "build_and_run_instance", instance=inst)
    assert info["vm_state"] == "active", info
    return inst["uuid"]


# How to bring a fresh instance into each vm_state.
SETUP = {
    "active": [],
    "stopped": [("stop_instance", {})],
    "paused": [("pause_instance", {})],
    "suspended": [("suspend_instance", {})],
    "rescued": [("rescue_instance", {})],
    "resized": [("resize_instance", {"flavor": {"vcpus": 2, "memory_mb": 128, "root_gb": 1}})],
    "soft-delete": [("soft_delete_instance", {})],
}


def bring(env, state):
    u = build(env)
    for method, kw in SETUP[state]:
        env["client"].call({}, method, instance_uuid=u, **kw)
    assert env["client"].call({}, "get_instance_info", instance_uuid=u)["vm_state"] == state
    return u


# (method, kwargs, allowed from -> expected vm_state, one state it is refused in)
ACTIONS = [
    ("stop_instance", {}, {"active": "stopped"}, "paused"),
    ("start_instance", {}, {"stopped": "active"}, "active"),
    ("reboot_instance", {"reboot_type": "SOFT"}, {"active": "active"}, "stopped"),
    ("reboot_instance", {"reboot_type": "HARD"},
     {"active": "active", "stopped": "active", "paused": "active", "suspended": "active"}, "rescued"),
    ("pause_instance", {}, {"active": "paused"}, "suspended"),
    ("unpause_instance", {}, {"paused": "active"}, "active"),
    ("suspend_instance", {}, {"active": "suspended"}, "paused"),
    ("resume_instance", {}, {"suspended": "active"}, "stopped"),
    ("rescue_instance", {}, {"active": "rescued", "stopped": "rescued"}, "paused"),
    ("unrescue_instance", {}, {"rescued": "active"}, "active"),
    ("snapshot_instance", {"image_name": "snap"},
     {"active": "active", "stopped": "stopped", "paused": "paused", "suspended": "suspended"}, "rescued"),
    ("rebuild_instance", {}, {"active": "active", "stopped": "stopped"}, "paused"),
    ("resize_instance", {"flavor": {"vcpus": 2, "memory_mb": 96, "root_gb": 1}},
     {"active": "resized", "stopped": "resized"}, "suspended"),
    ("confirm_resize", {}, {"resized": "active"}, "active"),
    ("revert_resize", {}, {"resized": "active"}, "stopped"),
    ("soft_delete_instance", {}, {"active": "soft-delete", "stopped": "soft-delete", "paused": "soft-delete"}, "soft-delete"),
    ("restore_instance", {}, {"soft-delete": "active"}, "active"),
    ("terminate_instance", {}, {s: "deleted" for s in SETUP}, None),
]


@pytest.mark.parametrize("method,kw,allowed,refused", ACTIONS, ids=[f"{a[0]}-{a[1].get('reboot_type', '')}" for a in ACTIONS])
def test_action_in_every_allowed_state_and_one_refused(env, method, kw, allowed, refused):
    c = env["client"]
    for start, expected in allowed.items():
        u = bring(env, start)
        r = c.call({}, method, instance_uuid=u, **kw)
        info = r.get("instance", r) if method == "snapshot_instance" else r
        assert info["vm_state"] == expected and info["task_state"] is None, (start, info)
        if expected != "deleted":
            assert c.call({}, "get_instance_info", instance_uuid=u)["vm_state"] == expected
        else:
            with pytest.raises(oslo_messaging.RemoteError) as e:
                c.call({}, "get_instance_info", instance_uuid=u)
            assert e.value.exc_type == "InstanceNotFound"
    if refused:
        u = bring(env, refused)
        with pytest.raises(oslo_messaging.RemoteError) as e:
            c.call({}, method, instance_uuid=u, **kw)
        assert e.value.exc_type == "InstanceInvalidState"
        assert f"while it is in vm_state {refused}" in e.value.value
        # A refused action changes nothing.
        assert c.call({}, "get_instance_info", instance_uuid=u)["vm_state"] == refused


def test_snapshot_is_stored_through_the_image_plugin_and_can_boot_an_instance(env):
    c = env["client"]
    u = build(env)
    r = c.call({}, "snapshot_instance", instance_uuid=u, image_id="snap-" + u[:8], image_name="nightly")
    path = pathlib.Path(r["image_ref"][len("file://"):])
    assert path.read_text() == f"memhv snapshot of {u}\n"
    assert r["checksum"].startswith("sha256:") and r["size"] == path.stat().st_size
    # The snapshot is an image the file fetcher accepts.
    inst = new_instance(image_ref=r["image_ref"], image_checksum=r["checksum"])
    assert c.call({}, "build_and_run_instance", instance=inst)["vm_state"] == "active"


def test_resize_holds_both_flavors_until_confirmed_and_revert_restores_the_old(env):
    c = env["client"]
    u = build(env, vcpus=1, memory_mb=64)
    before = c.call({}, "get_host_capabilities")["vcpus_used"]
    r = c.call({}, "resize_instance", instance_uuid=u, flavor={"vcpus": 3, "memory_mb": 256, "root_gb": 1})
    assert r["vcpus"] == 3 and r["old_flavor"]["vcpus"] == 1
    assert c.call({}, "get_host_capabilities")["vcpus_used"] == before + 3
    r = c.call({}, "revert_resize", instance_uuid=u)
    assert r["vcpus"] == 1 and r["old_flavor"] is None and r["vm_state"] == "active"
    assert c.call({}, "get_host_capabilities")["vcpus_used"] == before
    domains = (env["tmp"] / "domains").read_text()
    assert re.search(rf"^{u} 1 1 64 ", domains, re.M), domains


def test_resize_cannot_shrink_the_disk(env):
    u = build(env, root_gb=1)
    with pytest.raises(oslo_messaging.RemoteError) as e:
        env["client"].call({}, "resize_instance", instance_uuid=u, flavor={"vcpus": 1, "memory_mb": 64, "root_gb": 0})
    assert e.value.exc_type == "ResizeError"


def test_rebuild_from_error_recreates_the_domain(env):
    c = env["client"]
    u = build(env)
    # The domain disappears behind the agent's back: the sync puts the instance in ERROR.
    domains = env["tmp"] / "domains"
    edit_domains(domains, lambda t: "".join(l for l in t.splitlines(True) if not l.startswith(u)))
    info = wait_state(c, u, "error")
    assert "vanished" in info["fault"]
    assert c.call({}, "rebuild_instance", instance_uuid=u)["vm_state"] == "active"
    assert u in domains.read_text()


def test_soft_reboot_falls_back_to_hard_when_the_guest_ignores_it(env):
    c = env["client"]
    u = build(env, name="no-soft-reboot-1")
    assert c.call({}, "reboot_instance", instance_uuid=u, reboot_type="SOFT")["vm_state"] == "active"
    assert re.search(rf"soft reboot did not complete .*rebooting hard.*instance_uuid={u}", env["agent"].text())


def test_locked_instance_refuses_everyone_but_admin(env):
    c = env["client"]
    u = build(env)
    assert c.call({}, "lock_instance", instance_uuid=u)["locked"] is True
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "stop_instance", instance_uuid=u)
    assert e.value.exc_type == "InstanceIsLocked" and f"Instance {u} is locked" in e.value.value
    with pytest.raises(oslo_messaging.RemoteError):
        c.call({"is_admin": False}, "terminate_instance", instance_uuid=u)
    # snapshot is not lock-checked, as in nova
    c.call({}, "snapshot_instance", instance_uuid=u)
    assert c.call({"is_admin": True}, "stop_instance", instance_uuid=u)["vm_state"] == "stopped"
    c.call({}, "unlock_instance", instance_uuid=u)
    assert c.call({}, "start_instance", instance_uuid=u)["vm_state"] == "active"
    # Locked by an admin: only an admin unlocks.
    assert c.call({"is_admin": True}, "lock_instance", instance_uuid=u)["locked_by"] == "admin"
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "unlock_instance", instance_uuid=u)
    assert e.value.exc_type == "InstanceIsLocked"
    assert c.call({"is_admin": True}, "unlock_instance", instance_uuid=u)["locked"] is False


def test_casts_for_one_instance_run_in_order_none_dropped(env):
    c = env["client"]
    inst = new_instance()
    u = inst["uuid"]
    c.cast({}, "build_and_run_instance", instance=inst)
    for m in ["pause_instance", "unpause_instance", "stop_instance", "start_instance", "suspend_instance"]:
        c.cast({}, m, instance_uuid=u)
    info = wait_state(c, u, "suspended")
    assert info["power_state_name"] == "SUSPENDED"
    text = env["agent"].text()
    order = re.findall(rf"rpc handled .*instance_uuid={u} kind=cast method=(\w+)", text)
    assert order == ["build_and_run_instance", "pause_instance", "unpause_instance", "stop_instance",
                     "start_instance", "suspend_instance"], order


def test_console_output_and_diagnostics(env):
    c = env["client"]
    u = build(env)
    assert c.call({}, "get_console_output", instance_uuid=u) == f"boot {u}\nline 2\nlogin: \n"
    assert c.call({}, "get_console_output", instance_uuid=u, tail_length=1) == "login: \n"
    with pytest.raises(oslo_messaging.RemoteError) as e:
        c.call({}, "get_console_output", instance_uuid=u, tail_length="many")
    assert e.value.exc_type == "InvalidInput"
    d = c.call({}, "get_diagnostics", instance_uuid=u)
    assert d["driver"] == "memhv" and d["num_cpus"] == 1 and d["power_state"] == 1


def test_terminate_is_idempotent_for_vanished_and_never_built_instances(env):
    c = env["client"]
    never = str(uuid.uuid4())
    assert c.call({}, "terminate_instance", instance_uuid=never)["vm_state"] == "deleted"
    u = build(env)
    assert c.call({}, "terminate_instance", instance_uuid=u)["vm_state"] == "deleted"
    assert c.call({}, "terminate_instance", instance_uuid=u)["vm_state"] == "deleted"
    assert not (env["tmp"] / "state" / "instances" / u).exists()


def test_builds_are_bounded_without_blocking_other_messages(tmp_path, test_plugin_dir, transport):
    a = memhv_agent(tmp_path, test_plugin_dir, extra_default="max_concurrent_builds = 2",
                    memhv={"spawn_sleep_ms": 3000}).start()
    c = rpc_client(transport, a.host, timeout=30)
    uuids = []
    for i in range(4):
        inst = new_instance(name=f"slow-spawn-{i}")
        uuids.append(inst["uuid"])
        c.cast({}, "build_and_run_instance", instance=inst)
    time.sleep(1.0)
    started = time.time()
    assert c.call({}, "ping")["pong"] is True  # answered while builds wait
    assert time.time() - started < 1.0
    assert a.text().count("building instance") == 2, "more than max_concurrent_builds builds ran at once"
    for u in uuids:
        wait_state(c, u, "active", timeout=30)
    assert a.text().count("building instance") == 4
    a.stop()
