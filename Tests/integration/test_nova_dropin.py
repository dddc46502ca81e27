"""Drop-in for nova-compute: a real, unmodified nova 34 control plane (nova-api,
nova-conductor, nova-scheduler, placement 16, glance 33; scripts/nova-control-plane.sh)
with the agent in the nova-compute slot (`control_plane = nova`, started with nova's own
nova.conf first and the agent's file after it). Everything is checked through nova's REST
API, placement's REST API and nova's databases — the checklist of
../shared/reference/nova-dropin.md §8: registration and heartbeat, hypervisor and
provider, boot → ACTIVE on the agent's host with its allocation, stop/start/reboot
(soft, hard)/pause/unpause/suspend/resume with the right power states, instance actions
and events, console output, delete with the allocation released, a failing build in
ERROR with its fault, and a restart (SIGTERM, then SIGKILL) that keeps the service, the
node, the provider and the instances — and beyond it: resize/cold migration within a
host, rescheduling, shelve, backup, evacuation between two agents, a crash between two
steps of a resize, and the openstack CLI (docs/nova-dropin.md lists every check)."""
import json
import re
import os
import pathlib
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest

from conftest import BUILD, ROOT, Agent, edit_domains
from nova_rest import GLANCE, placement, req, upload_image, wait
from test_libvirt_qemu import libvirtd_reason
from test_real_guest import tiny_guest  # noqa: F401  (the session's guest build)



@pytest.fixture(scope="module")
def plane():
    """The control plane, with fresh databases, for this module."""
    script = ROOT / "scripts" / "nova-control-plane.sh"
    p = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    d = pathlib.Path(subprocess.run(["bash", str(script), "dir"], capture_output=True, text=True, check=True).stdout.strip())
    yield d
    subprocess.run(["bash", str(script), "stop"], capture_output=True, text=True, timeout=120)



def db(name, sql, *args):
    """Rows of one query on the control plane's MariaDB (`nova_api`, `nova` = cell1);
    `?` takes the quoted `args`. Numbers come back as int, NULL as None."""
    for a in args:
        sql = sql.replace("?", "'" + str(a).replace("\\", "\\\\").replace("'", "''") + "'", 1)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "nova-control-plane.sh"), "sql", name, sql],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    conv = lambda v: None if v == "NULL" else int(v) if v.lstrip("-").isdigit() else v
    return [tuple(conv(v) for v in line.split("\t")) for line in p.stdout.splitlines()]


def nova_agent(tmp_path, plane, plugin_dir=BUILD, hypervisor="libvirt", extra="", section=None):
    """The agent in the nova-compute slot: nova's files, then its own. `hypervisor`
    libvirt is libvirt's test:///default (its domains live in the agent's process);
    memhv (the C test plugin) keeps its domains in a file, so they outlive a restart as
    a real hypervisor's do."""
    a = Agent(tmp_path)
    a.pre_configs = [plane / "nova.conf", plane / "nova-services.conf"]
    # memhv has more memory and vCPUs than libvirt's test host, so the scheduler's weighers put
    # a server there first when both are enabled (the reschedule test relies on it).
    section = section or ("[libvirt]\nconnection_uri = test:///default\n" if hypervisor == "libvirt"
                          else f"[memhv]\nstate_file = {tmp_path / 'domains'}\nmemory_mb = 65536\nvcpus = 64\n")
    a.conf.write_text(f"""[DEFAULT]
control_plane = nova
host = {a.host}
state_path = {a.state}
plugin_dir = {plugin_dir}
compute_driver = {hypervisor}
image_fetcher = glance
report_interval = 2
periodic_interval = 5
update_resources_interval = 10
{extra}
{section}

[glance]
api_servers = {GLANCE}
cache_dir = {a.state}/_base
""")
    return a


def server(sid):
    code, b = req("GET", f"/servers/{sid}")
    return None if code == 404 else b["server"]


def settle(sid, status, timeout=60):
    s = wait(lambda: (lambda v: v if v and v["status"] in (status, "ERROR") and v["OS-EXT-STS:task_state"] is None else None)(server(sid)),
             timeout=timeout)
    assert s, f"server {sid} did not settle in {status}: {server(sid)}"
    return s


def act(sid, body, status):
    code, resp = req("POST", f"/servers/{sid}/action", body)
    assert code == 202, (code, resp)
    s = settle(sid, status)
    assert s["status"] == status, s.get("fault")
    return s


def boot(name, image, flavor):
    code, b = req("POST", "/servers", {"server": {"name": name, "imageRef": image, "flavorRef": flavor, "networks": "none"}})
    assert code == 202, b
    return b["server"]["id"]


@pytest.fixture(scope="module")
def flavor(plane):
    code, b = req("POST", "/flavors", {"flavor": {"name": "tiny", "ram": 256, "vcpus": 1, "disk": 1}})
    assert code == 200, b
    return b["flavor"]["id"]


@pytest.fixture(scope="module")
def bigger(plane):
    code, b = req("POST", "/flavors", {"flavor": {"name": "tiny-bigger", "ram": 512, "vcpus": 2, "disk": 1}})
    assert code == 200, b
    return b["flavor"]["id"]


@pytest.fixture(scope="module")
def image(plane):
    return upload_image(b"\0" * 1048576)


def mapped(plane, a):
    # The scheduler maps a new host into cell1 every few seconds (discover_hosts).
    assert wait(lambda: db("nova_api", "select 1 from host_mappings where host=?", a.host), timeout=60), \
        "the agent's host was never mapped into cell1"
    return a


@pytest.fixture(scope="module")
def agent(tmp_path_factory, plane):
    # Shelved servers stay on this host until unshelved (the memhv agent below offloads
    # them at once, nova's default).
    a = nova_agent(tmp_path_factory.mktemp("nova-agent"), plane, extra="shelved_offload_time = -1").start()
    try:
        mapped(plane, a)
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def memhv_agent(tmp_path_factory, plane, test_plugin_dir, agent):
    """A second compute host whose guests outlive the agent (memhv); the first one is
    disabled meanwhile so the scheduler places on this one."""
    a = nova_agent(tmp_path_factory.mktemp("nova-memhv"), plane, plugin_dir=test_plugin_dir, hypervisor="memhv",
                   extra="sync_power_state_interval = 1").start()
    try:
        mapped(plane, a)
        svc = [s for s in req("GET", "/os-services?binary=nova-compute")[1]["services"] if s["host"] == agent.host][0]
        assert req("PUT", f"/os-services/{svc['id']}", {"status": "disabled", "disabled_reason": "restart test"})[0] == 200
        # nova-api told the disabled agent (set_host_enabled): its provider carries the
        # trait the scheduler excludes.
        node = (agent.state / "nova-compute-node-uuid").read_text().strip()
        assert wait(lambda: "COMPUTE_STATUS_DISABLED" in placement(f"/resource_providers/{node}/traits")[1]["traits"], timeout=20)
        yield a
        req("PUT", f"/os-services/{svc['id']}", {"status": "enabled"})
    finally:
        a.stop()


def test_registers_as_nova_compute_and_stays_up_with_its_provider(plane, agent):
    svcs = wait(lambda: [s for s in req("GET", "/os-services?binary=nova-compute")[1]["services"]
                         if s["host"] == agent.host and s["state"] == "up"], timeout=30)
    assert svcs and svcs[0]["status"] == "enabled" and svcs[0]["zone"] == "nova", svcs
    hyps = req("GET", "/os-hypervisors/detail")[1]["hypervisors"]
    mine = [h for h in hyps if h["service"]["host"] == agent.host]
    assert len(mine) == 1 and mine[0]["hypervisor_hostname"] == agent.host and mine[0]["state"] == "up"
    node = mine[0]["id"]
    assert node == (agent.state / "nova-compute-node-uuid").read_text().strip()
    assert mine[0]["uptime"] and "load average" in mine[0]["uptime"]
    # Placement: the provider is the node, with the host's inventory and the traits the
    # scheduler requires.
    code, rp = placement(f"/resource_providers/{node}")
    assert code == 200 and rp["name"] == agent.host
    inv = placement(f"/resource_providers/{node}/inventories")[1]["inventories"]
    assert set(inv) == {"VCPU", "MEMORY_MB", "DISK_GB"}
    assert inv["VCPU"]["total"] == 16 and inv["MEMORY_MB"]["reserved"] == 512 and inv["VCPU"]["allocation_ratio"] == 4.0
    traits = placement(f"/resource_providers/{node}/traits")[1]["traits"]
    assert {"COMPUTE_NODE", "OWNER_NOVA"} <= set(traits)
    # The heartbeat (Service.save through the conductor) moves report_count every 2 s.
    q = "select report_count, version from services where host=? and `binary`='nova-compute' and deleted=0"
    (before, version), = db("nova", q, agent.host)
    time.sleep(4.5)
    (after, _), = db("nova", q, agent.host)
    assert version == 74 and after >= before + 2, (before, after)
    # nova's options the agent does not use were named, not refused.
    assert "[oslo_concurrency]: section not used by compute-agent (control_plane = nova), ignored" in agent.text()


def test_a_server_lives_its_whole_life_through_the_nova_api(plane, agent, flavor, image):
    sid = boot("vm1", image, flavor)
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE", s.get("fault")
    assert s["OS-EXT-SRV-ATTR:host"] == agent.host and s["OS-EXT-SRV-ATTR:hypervisor_hostname"] == agent.host
    assert s["OS-EXT-STS:power_state"] == 1
    node = (agent.state / "nova-compute-node-uuid").read_text().strip()
    alloc = placement(f"/allocations/{sid}")[1]["allocations"]
    assert list(alloc) == [node] and alloc[node]["resources"] == {"VCPU": 1, "MEMORY_MB": 256, "DISK_GB": 1}
    # The agent runs the guest: its own API would show the same instance.
    assert f"instance_uuid={sid}" in agent.text()

    assert act(sid, {"os-stop": None}, "SHUTOFF")["OS-EXT-STS:power_state"] == 4
    assert act(sid, {"os-start": None}, "ACTIVE")["OS-EXT-STS:power_state"] == 1
    act(sid, {"reboot": {"type": "SOFT"}}, "ACTIVE")
    act(sid, {"reboot": {"type": "HARD"}}, "ACTIVE")
    assert act(sid, {"pause": None}, "PAUSED")["OS-EXT-STS:power_state"] == 3
    assert act(sid, {"unpause": None}, "ACTIVE")["OS-EXT-STS:power_state"] == 1
    assert act(sid, {"suspend": None}, "SUSPENDED")["OS-EXT-STS:power_state"] == 7
    assert act(sid, {"resume": None}, "ACTIVE")["OS-EXT-STS:power_state"] == 1
    code, out = req("POST", f"/servers/{sid}/action", {"os-getConsoleOutput": {"length": 5}})
    assert code == 200 and isinstance(out["output"], str)

    # Every step is an instance action whose compute event succeeded (an API request the
    # control plane's database refused and req() repeated may leave an action without events).
    actions = req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"]
    succeeded = []
    for a in actions:
        detail = req("GET", f"/servers/{sid}/os-instance-actions/{a['request_id']}")[1]["instanceAction"]
        events = {e["event"]: e["result"] for e in detail["events"]}
        assert all(r == "Success" for r in events.values()), (a["action"], events)
        if events:
            succeeded.append(a["action"])
    assert sorted(succeeded) == sorted(["create", "stop", "start", "reboot", "reboot", "pause", "unpause", "suspend", "resume"]), succeeded
    create = [a for a in actions if a["action"] == "create"][0]
    detail = req("GET", f"/servers/{sid}/os-instance-actions/{create['request_id']}")[1]["instanceAction"]
    assert [e["event"] for e in detail["events"]] == ["compute__do_build_and_run_instance"]

    code, _ = req("DELETE", f"/servers/{sid}")
    assert code == 204
    assert wait(lambda: server(sid) is None, timeout=60), "the server never went away"
    assert placement(f"/allocations/{sid}")[1]["allocations"] == {}, "the allocation leaked"
    assert wait(lambda: f"instance_uuid={sid}" in agent.text() and "terminate_instance" in agent.text(), timeout=5)


def openstack(*args):
    """The openstack CLI against the plane, as docs/nova-dropin.md gives it (no keystone);
    `-f json` output decoded."""
    p = subprocess.run(["bash", str(ROOT / "scripts" / "nova-control-plane.sh"), "openstack", *args],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"openstack {' '.join(args)}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
    return json.loads(p.stdout) if "json" in args else p.stdout


def test_the_openstack_cli_drives_the_agent_without_keystone(plane, agent, flavor, bigger, image):
    """`scripts/nova-control-plane.sh openstack …` (python-openstackclient, admin_token auth
    against the no-auth plane): the service and hypervisor lists show the agent, and a
    server is created with --wait, resized and confirmed, stopped and deleted."""
    services = openstack("compute", "service", "list", "--service", "nova-compute", "-f", "json")
    assert any(s["Host"] == agent.host and s["State"] == "up" and s["Status"] == "enabled" for s in services), services
    hypervisors = openstack("hypervisor", "list", "-f", "json")
    assert any(h["Hypervisor Hostname"] == agent.host for h in hypervisors), hypervisors
    s = openstack("server", "create", "--flavor", "tiny", "--image", image, "--nic", "none", "--wait", "vm-cli", "-f", "json")
    sid = s["id"]
    assert s["status"] == "ACTIVE" and s["OS-EXT-SRV-ATTR:host"] == agent.host, s
    openstack("server", "resize", "--flavor", "tiny-bigger", "--wait", sid)
    assert server(sid)["status"] == "VERIFY_RESIZE"
    openstack("server", "resize", "confirm", sid)
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["flavor"]["original_name"] == "tiny-bigger", s.get("fault")
    openstack("server", "stop", sid)
    assert settle(sid, "SHUTOFF")["status"] == "SHUTOFF"
    openstack("server", "delete", "--wait", sid)
    assert server(sid) is None


def test_five_servers_created_at_once_all_become_active_and_all_go_away(plane, agent, flavor, image):
    """Five `server create` requests in flight together (the control plane's databases
    and the agent's handlers both see them concurrently)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(5) as pool:
        sids = list(pool.map(lambda i: boot(f"vm-many-{i}", image, flavor), range(5)))
    node = (agent.state / "nova-compute-node-uuid").read_text().strip()
    for sid in sids:
        s = settle(sid, "ACTIVE", timeout=120)
        assert s["status"] == "ACTIVE" and s["OS-EXT-SRV-ATTR:host"] == agent.host, s.get("fault")
        assert list(placement(f"/allocations/{sid}")[1]["allocations"]) == [node]
    usages = placement(f"/resource_providers/{node}/usages")[1]["usages"]
    assert usages["VCPU"] >= 5 and usages["MEMORY_MB"] >= 5 * 256, usages
    with ThreadPoolExecutor(5) as pool:
        assert list(pool.map(lambda sid: req("DELETE", f"/servers/{sid}")[0], sids)) == [204] * 5
    for sid in sids:
        assert wait(lambda: server(sid) is None, timeout=60), f"{sid} never went away"
        assert placement(f"/allocations/{sid}")[1]["allocations"] == {}, f"the allocation of {sid} leaked"


def test_a_failing_build_ends_in_error_with_its_fault_and_no_allocation(plane, agent, flavor):
    # An image whose stored bytes no longer match glance's checksum: the image plugin
    # must refuse it, and nova must hear why.
    bad = upload_image(os.urandom(65536), name="corrupted")
    (plane / "state" / "images" / bad).write_bytes(os.urandom(65536))
    sid = boot("vm-bad", bad, flavor)
    s = settle(sid, "ERROR")
    assert s["status"] == "ERROR" and s["fault"]["code"] == 500, s
    assert "checksum" in s["fault"]["message"].lower(), s["fault"]
    assert placement(f"/allocations/{sid}")[1]["allocations"] == {}, "a failed build kept its allocation"
    actions = req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"]
    results = lambda: [e["result"] for e in req("GET", f"/servers/{sid}/os-instance-actions/{actions[0]['request_id']}")[1]["instanceAction"]["events"]]
    assert wait(lambda: results() == ["Error"], timeout=20), results()
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_rescue_unrescue_and_a_snapshot_into_the_image_nova_made(plane, agent, flavor, image):
    sid = boot("vm-rescue", image, flavor)
    assert settle(sid, "ACTIVE")["status"] == "ACTIVE"
    code, b = req("POST", f"/servers/{sid}/action", {"rescue": None})
    assert code == 200, b
    assert settle(sid, "RESCUE")["status"] == "RESCUE"
    act(sid, {"unrescue": None}, "ACTIVE")
    code, b = req("POST", f"/servers/{sid}/action", {"createImage": {"name": "snap-of-vm-rescue"}})
    assert code == 202, b
    snap = b["image_id"]
    assert settle(sid, "ACTIVE")["status"] == "ACTIVE"
    with urllib.request.urlopen(f"{GLANCE}/v2/images/{snap}", timeout=30) as r:
        record = json.loads(r.read())
    assert record["status"] == "active" and record["disk_format"] == "qcow2" and record["size"] > 0, record
    actions = {a["action"] for a in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"]}
    assert {"rescue", "unrescue", "createImage"} <= actions, actions
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_rebuild_onto_another_image_running_and_stopped(plane, agent, flavor, image):
    other = upload_image(b"\1" * 1048576, name="tiny-2")
    sid = boot("vm-rebuild", image, flavor)
    assert settle(sid, "ACTIVE")["status"] == "ACTIVE"
    code, b = req("POST", f"/servers/{sid}/action", {"rebuild": {"imageRef": other}})
    assert code == 202, b
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["image"]["id"] == other and s["OS-EXT-STS:power_state"] == 1, s.get("fault")
    # The agent fetched the new image from glance for the new disk.
    assert f"fetched {other} into" in agent.text()
    # A stopped server is rebuilt and stays stopped (nova stops it again).
    act(sid, {"os-stop": None}, "SHUTOFF")
    assert req("POST", f"/servers/{sid}/action", {"rebuild": {"imageRef": image}})[0] == 202
    s = settle(sid, "SHUTOFF")
    assert s["status"] == "SHUTOFF" and s["image"]["id"] == image and s["OS-EXT-STS:power_state"] == 4, s.get("fault")
    actions = req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"]
    for a in [a for a in actions if a["action"] == "rebuild"]:
        # the conductor's rebuild_server event, then the compute's (finished just after the
        # last save, as in nova)
        events = lambda: {e["event"]: e["result"] for e in
                          req("GET", f"/servers/{sid}/os-instance-actions/{a['request_id']}")[1]["instanceAction"]["events"]}
        assert wait(lambda: events().get("compute_rebuild_instance") == "Success" and set(events().values()) == {"Success"},
                    timeout=20), events()
    assert len([a for a in actions if a["action"] == "rebuild"]) == 2
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_an_action_the_dialect_does_not_run_fails_cleanly_instead_of_hanging(plane, agent, flavor, image):
    sid = boot("vm-crashdump", image, flavor)
    assert settle(sid, "ACTIVE")["status"] == "ACTIVE"
    code, b = req("POST", f"/servers/{sid}/action", {"trigger_crash_dump": None})
    assert code == 202, b
    assert wait(lambda: [e for a in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"]
                         if a["action"] == "trigger_crash_dump"
                         for e in req("GET", f"/servers/{sid}/os-instance-actions/{a['request_id']}")[1]["instanceAction"]["events"]
                         if e["result"] == "Error" and e["event"] == "compute_trigger_crash_dump"], timeout=30)
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["OS-EXT-STS:task_state"] is None, s
    # injectNetworkInfo: nothing to do, as with nova's libvirt driver, and no fault for it.
    faults = lambda: db("nova", "select count(*) from instance_faults where instance_uuid=?", sid)[0][0]
    before = faults()
    assert req("POST", f"/servers/{sid}/action", {"injectNetworkInfo": None})[0] == 202
    assert wait(lambda: "inject_network_info: nothing to inject" in agent.text(), timeout=20)
    assert faults() == before and server(sid)["status"] == "ACTIVE"
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_backups_are_snapshots_in_glance_rotated_to_the_newest(plane, agent, flavor, image):
    """createBackup: a snapshot into the backup image nova-api made (task image_backup →
    image_pending_upload → image_uploading → none), then nova's rotation: of the
    server's backups of that type, the newest `rotation` stay in glance."""
    sid = boot("vm-backup", image, flavor)
    assert settle(sid, "ACTIVE")["status"] == "ACTIVE"
    made = []
    for i in range(3):
        time.sleep(1.1)  # glance's created_at, which the rotation sorts by, has 1 s steps
        code, b = req("POST", f"/servers/{sid}/action", {"createBackup": {"name": f"{sid}-b{i}", "backup_type": "daily", "rotation": 2}})
        assert code == 202, b
        made.append(b["image_id"])
        assert act_settled(sid)
    # The rotation runs after the server's final save.
    backups = lambda: req("GET", f"/v2/images?instance_uuid={sid}&image_type=backup", base=GLANCE, headers={})[1]["images"]
    assert wait(lambda: sorted(i["id"] for i in backups()) == sorted(made[1:]), timeout=20), (made, backups())
    kept = backups()
    assert all(i["status"] == "active" and i["size"] > 0 and i["backup_type"] == "daily" for i in kept), kept
    assert req("GET", f"/v2/images/{made[0]}", base=GLANCE, headers={})[0] == 404
    actions = [a for a in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"] if a["action"] == "createBackup"]
    assert len(actions) == 3
    for a in actions:
        events = req("GET", f"/servers/{sid}/os-instance-actions/{a['request_id']}")[1]["instanceAction"]["events"]
        assert [(e["event"], e["result"]) for e in events] == [("compute_backup_instance", "Success")], events
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)
    for i in kept:
        req("DELETE", f"/v2/images/{i['id']}", base=GLANCE, headers={})


def act_settled(sid):
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE", s.get("fault")
    return s


def test_a_server_shelved_but_not_offloaded_is_unshelved_by_a_start(plane, agent, flavor, image):
    """shelved_offload_time = -1: shelve powers the guest off and uploads its snapshot, but
    the server stays on the host (SHELVED, its allocation kept); unshelve is then the
    conductor's start_instance, which also deletes the snapshot and the shelve's keys."""
    node = (agent.state / "nova-compute-node-uuid").read_text().strip()
    sid = boot("vm-shelve-kept", image, flavor)
    assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == agent.host
    assert req("POST", f"/servers/{sid}/action", {"shelve": None})[0] == 202
    s = settle(sid, "SHELVED")
    assert s["status"] == "SHELVED" and s["OS-EXT-SRV-ATTR:host"] == agent.host and s["OS-EXT-STS:power_state"] == 4, s.get("fault")
    assert list(placement(f"/allocations/{sid}")[1]["allocations"]) == [node]
    snaps = req("GET", "/v2/images?name=vm-shelve-kept-shelved", base=GLANCE, headers={})[1]["images"]
    assert len(snaps) == 1 and snaps[0]["status"] == "active", snaps
    (meta,) = db("nova", "select value from instance_system_metadata where instance_uuid=? and `key`='shelved_image_id' and deleted=0", sid)
    assert meta == (snaps[0]["id"],)
    assert req("POST", f"/servers/{sid}/action", {"unshelve": None})[0] == 202
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["OS-EXT-STS:power_state"] == 1 and s["OS-EXT-SRV-ATTR:host"] == agent.host
    assert wait(lambda: req("GET", f"/v2/images/{snaps[0]['id']}", base=GLANCE, headers={})[0] == 404, timeout=20)
    assert db("nova", "select `key` from instance_system_metadata where instance_uuid=? and `key` like 'shelved%' and deleted=0", sid) == []
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_shelve_offloads_the_server_and_unshelve_builds_it_from_its_snapshot(plane, memhv_agent, flavor, image):
    """shelve with nova's default shelved_offload_time = 0: the guest is powered off, its
    disk uploaded into the `<name>-shelved` image nova-api made, and it leaves the host
    (domain gone, allocation deleted, SHELVED_OFFLOADED without a host). unshelve builds it
    again from that snapshot on the host the scheduler picks; the snapshot is deleted."""
    a = memhv_agent
    node = (a.state / "nova-compute-node-uuid").read_text().strip()
    sid = boot("vm-shelve", image, flavor)
    assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == a.host
    domains = a.tmp / "domains"
    assert sid in domains.read_text()
    assert req("POST", f"/servers/{sid}/action", {"shelve": None})[0] == 202
    s = settle(sid, "SHELVED_OFFLOADED")
    assert s["status"] == "SHELVED_OFFLOADED" and s["OS-EXT-SRV-ATTR:host"] is None, s.get("fault")
    assert s["OS-EXT-STS:power_state"] == 4
    assert sid not in domains.read_text()
    assert placement(f"/allocations/{sid}")[1]["allocations"] == {}
    snaps = req("GET", "/v2/images?name=vm-shelve-shelved", base=GLANCE, headers={})[1]["images"]
    assert len(snaps) == 1 and snaps[0]["status"] == "active" and snaps[0]["size"] > 0, snaps
    snap = snaps[0]["id"]
    assert req("POST", f"/servers/{sid}/action", {"unshelve": None})[0] == 202
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["OS-EXT-SRV-ATTR:host"] == a.host, s.get("fault")
    assert s["OS-EXT-STS:power_state"] == 1 and s["image"]["id"] == image
    assert re.search(rf"^{sid} 1 ", domains.read_text(), re.M)
    assert snap in a.text(), "the agent did not build from the snapshot"
    assert list(placement(f"/allocations/{sid}")[1]["allocations"]) == [node]
    assert wait(lambda: req("GET", f"/v2/images/{snap}", base=GLANCE, headers={})[0] == 404, timeout=20), \
        "the shelved snapshot is still in glance"
    actions = [x["action"] for x in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"]]
    for action, ev in [("shelve", "compute_shelve_instance"), ("unshelve", "compute_unshelve_instance")]:
        rid = [x for x in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"] if x["action"] == action][0]["request_id"]
        events = req("GET", f"/servers/{sid}/os-instance-actions/{rid}")[1]["instanceAction"]["events"]
        assert (ev, "Success") in [(e["event"], e["result"]) for e in events], (actions, events)
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_a_shelved_server_is_offloaded_after_shelved_offload_time(plane, memhv_agent, flavor, image):
    """shelved_offload_time = N > 0 (nova's _poll_shelved_instances): the server stays
    SHELVED on the host, and a resources pass at least N seconds later offloads it —
    guest and allocation gone, SHELVED_OFFLOADED without a host."""
    a = memhv_agent
    original = a.conf.read_text()
    a.stop()
    a.conf.write_text(original.replace("[DEFAULT]\n", "[DEFAULT]\nshelved_offload_time = 2\n", 1))
    a.start()
    try:
        sid = boot("vm-shelve-later", image, flavor)
        assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == a.host
        assert req("POST", f"/servers/{sid}/action", {"shelve": None})[0] == 202
        s = settle(sid, "SHELVED")
        assert s["status"] == "SHELVED" and s["OS-EXT-SRV-ATTR:host"] == a.host, s.get("fault")
        s = wait(lambda: (lambda v: v if v["status"] == "SHELVED_OFFLOADED" and v["OS-EXT-STS:task_state"] is None else None)(server(sid)),
                 timeout=40)
        assert s and s["OS-EXT-SRV-ATTR:host"] is None, server(sid)
        assert f"nova: offloading shelved server {sid}" in a.text()[a.mark:]
        assert sid not in (a.tmp / "domains").read_text()
        assert placement(f"/allocations/{sid}")[1]["allocations"] == {}
        assert req("DELETE", f"/servers/{sid}")[0] == 204
        assert wait(lambda: server(sid) is None, timeout=60)
    finally:
        a.stop()
        a.conf.write_text(original)
        a.start()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_restart_keeps_the_service_the_node_and_the_instances(plane, memhv_agent, flavor, image, how):
    agent = memhv_agent
    sid = boot(f"vm-restart-{how.lower()}", image, flavor)
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["OS-EXT-SRV-ATTR:host"] == agent.host, s
    q = "select id, report_count from services where host=? and `binary`='nova-compute' and deleted=0"
    (service_id, count), = db("nova", q, agent.host)
    nodes = db("nova", "select id, uuid from compute_nodes where host=? and deleted=0", agent.host)
    if how == "SIGTERM":
        agent.stop()
    else:
        agent.kill()
    agent.start()
    # Same rows (no second service or node), the count goes on, the provider is the same.
    assert wait(lambda: db("nova", q, agent.host)[0][1] > count + 1, timeout=20), "no heartbeat after the restart"
    assert db("nova", q, agent.host)[0][0] == service_id
    assert db("nova", "select id, uuid from compute_nodes where host=? and deleted=0", agent.host) == nodes
    assert "found this host's nova-compute service record" in agent.text()[agent.mark:]
    assert "found this host's compute node record" in agent.text()[agent.mark:]
    svc = [s for s in req("GET", "/os-services?binary=nova-compute")[1]["services"] if s["host"] == agent.host]
    assert len(svc) == 1 and svc[0]["state"] == "up"
    assert server(sid)["status"] == "ACTIVE"
    assert act(sid, {"os-stop": None}, "SHUTOFF")["OS-EXT-STS:power_state"] == 4
    assert act(sid, {"os-start": None}, "ACTIVE")["OS-EXT-STS:power_state"] == 1
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)
    assert placement(f"/allocations/{sid}")[1]["allocations"] == {}


def test_a_queued_cast_and_a_local_delete_while_the_agent_is_down_are_both_honoured(plane, memhv_agent, flavor, image):
    """While the agent is down, a stop waits in compute.<host> and runs when it returns;
    a server nova-api deleted on its own (service forced down) has its guest removed by
    the agent's start-up reconciliation (nova's init_host)."""
    agent = memhv_agent
    kept, gone = boot("vm-kept", image, flavor), boot("vm-gone", image, flavor)
    for sid in (kept, gone):
        assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == agent.host
    domains = agent.tmp / "domains"
    assert gone in domains.read_text() and kept in domains.read_text()
    agent.kill()
    svc = [s for s in req("GET", "/os-services?binary=nova-compute")[1]["services"] if s["host"] == agent.host][0]
    assert req("POST", f"/servers/{kept}/action", {"os-stop": None})[0] == 202
    assert req("PUT", f"/os-services/{svc['id']}", {"forced_down": True})[0] == 200
    assert req("DELETE", f"/servers/{gone}")[0] == 204
    assert wait(lambda: server(gone) is None, timeout=30), "nova-api did not delete locally"
    assert req("PUT", f"/os-services/{svc['id']}", {"forced_down": False})[0] == 200
    agent.start()
    assert settle(kept, "SHUTOFF")["OS-EXT-STS:power_state"] == 4
    assert wait(lambda: gone not in domains.read_text(), timeout=20), "the deleted server's guest still runs"
    # The line follows the removal it reports.
    assert wait(lambda: f"removed instance {gone}: nova no longer places it on this host" in agent.text()[agent.mark:],
                timeout=10), agent.text()[agent.mark:][-3000:]
    assert kept in domains.read_text()
    assert req("DELETE", f"/servers/{kept}")[0] == 204
    assert wait(lambda: server(kept) is None, timeout=60)


def test_a_guest_that_shuts_down_by_itself_is_shutoff_in_nova(plane, memhv_agent, flavor, image):
    """After start-up too, what the power-state sync finds (nova's _sync_power_states) is
    saved to nova: a guest powered off behind the agent's back shows SHUTOFF."""
    agent = memhv_agent
    sid = boot("vm-selfstop", image, flavor)
    assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == agent.host
    edit_domains(agent.tmp / "domains", lambda t: re.sub(rf"^({sid}) \d+ ", r"\g<1> 4 ", t, flags=re.M))
    s = wait(lambda: (lambda v: v if v["status"] == "SHUTOFF" else None)(server(sid)), timeout=30)
    assert s and s["OS-EXT-STS:power_state"] == 4 and s["OS-EXT-STS:task_state"] is None, server(sid)
    assert wait(lambda: f"nova: instance {sid} updated from the host by the power-state sync" in agent.text(), timeout=10)
    assert act(sid, {"os-start": None}, "ACTIVE")["OS-EXT-STS:power_state"] == 1
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_resize_confirm_revert_and_cold_migration_on_one_host_and_a_move_from_another_refused(plane, agent, memhv_agent,
                                                                                                  flavor, bigger, image):
    """nova's whole resize on one host (the plane sets allow_resize_to_same_host):
    prep_resize → resize_instance → finish_resize leave the server VERIFY_RESIZE with the
    new flavor on its guest and in placement, the Migration holding the old one; confirm
    ends the Migration's allocation. A second resize is reverted: guest and allocation get
    the old flavor back. A stopped server cold-migrates within the host (the provider has
    COMPUTE_SAME_HOST_COLD_MIGRATE) and stays stopped. A move from another host is refused
    at prep_resize with nothing left claimed."""
    a = memhv_agent
    node = (a.state / "nova-compute-node-uuid").read_text().strip()
    assert "COMPUTE_SAME_HOST_COLD_MIGRATE" in placement(f"/resource_providers/{node}/traits")[1]["traits"]
    small, large = {"VCPU": 1, "MEMORY_MB": 256, "DISK_GB": 1}, {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 1}

    def guest():  # memhv's domains file: uuid power vcpus memory_mb …
        f = [l.split() for l in (a.tmp / "domains").read_text().splitlines() if l.startswith(sid)][0]
        return int(f[2]), int(f[3])

    def allocation(consumer):
        return {rp: v["resources"] for rp, v in placement(f"/allocations/{consumer}")[1]["allocations"].items()}

    def migration(status):
        # Polled: as in nova, a step may save its Migration just after the instance settles.
        ms = wait(lambda: [m for m in req("GET", f"/os-migrations?instance_uuid={sid}")[1]["migrations"]
                           if m["status"] == status], timeout=20)
        assert ms and len(ms) == 1, req("GET", f"/os-migrations?instance_uuid={sid}")[1]
        return ms[0]

    def events(action):  # the compute's (the conductor adds its own, e.g. cold_migrate)
        acts = [x for x in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"] if x["action"] == action]
        detail = req("GET", f"/servers/{sid}/os-instance-actions/{acts[0]['request_id']}")[1]["instanceAction"]
        return sorted((e["event"], e["result"]) for e in detail["events"] if e["event"].startswith("compute_"))

    def events_become(action, expected):  # an event finishes just after its step's last save, as in nova
        return wait(lambda: events(action) == expected, timeout=20) or events(action)

    sid = boot("vm-resize", image, flavor)
    assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == a.host
    assert guest() == (1, 256)

    # Resize up, then confirm.
    assert req("POST", f"/servers/{sid}/action", {"resize": {"flavorRef": bigger}})[0] == 202
    s = settle(sid, "VERIFY_RESIZE")
    assert s["status"] == "VERIFY_RESIZE" and s["flavor"]["original_name"] == "tiny-bigger", s.get("fault")
    assert s["OS-EXT-SRV-ATTR:host"] == a.host and s["OS-EXT-STS:power_state"] == 1
    assert guest() == (2, 512)
    m = migration("finished")
    assert (m["source_compute"], m["dest_compute"], m["migration_type"]) == (a.host, a.host, "resize")
    assert allocation(sid) == {node: large} and allocation(m["uuid"]) == {node: small}
    assert events_become("resize", [("compute_finish_resize", "Success"), ("compute_prep_resize", "Success"),
                                    ("compute_resize_instance", "Success")]) is True
    assert req("POST", f"/servers/{sid}/action", {"confirmResize": None})[0] == 204
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["flavor"]["original_name"] == "tiny-bigger"
    assert wait(lambda: migration("confirmed"), timeout=20)
    assert allocation(sid) == {node: large} and allocation(m["uuid"]) == {}
    assert events_become("confirmResize", [("compute_confirm_resize", "Success")]) is True
    assert guest() == (2, 512)

    # Resize down, then revert: the old flavor comes back everywhere.
    assert req("POST", f"/servers/{sid}/action", {"resize": {"flavorRef": flavor}})[0] == 202
    s = settle(sid, "VERIFY_RESIZE")
    assert s["status"] == "VERIFY_RESIZE" and s["flavor"]["original_name"] == "tiny" and guest() == (1, 256)
    m = migration("finished")
    assert allocation(sid) == {node: small} and allocation(m["uuid"]) == {node: large}
    assert req("POST", f"/servers/{sid}/action", {"revertResize": None})[0] == 202
    s = settle(sid, "ACTIVE")
    assert s["status"] == "ACTIVE" and s["flavor"]["original_name"] == "tiny-bigger", s.get("fault")
    assert guest() == (2, 512) and s["OS-EXT-STS:power_state"] == 1
    assert migration("reverted")["uuid"] == m["uuid"]
    assert allocation(sid) == {node: large} and allocation(m["uuid"]) == {}
    assert events_become("revertResize", [("compute_finish_revert_resize", "Success"),
                                          ("compute_revert_resize", "Success")]) is True

    # A stopped server cold-migrates within the host and stays stopped.
    act(sid, {"os-stop": None}, "SHUTOFF")
    assert req("POST", f"/servers/{sid}/action", {"migrate": None})[0] == 202
    s = settle(sid, "VERIFY_RESIZE")
    assert s["status"] == "VERIFY_RESIZE" and s["OS-EXT-SRV-ATTR:host"] == a.host, s.get("fault")
    m = migration("finished")
    assert m["migration_type"] == "migration" and allocation(m["uuid"]) == {node: large}
    assert req("POST", f"/servers/{sid}/action", {"confirmResize": None})[0] == 204
    s = settle(sid, "SHUTOFF")
    assert s["status"] == "SHUTOFF" and s["OS-EXT-STS:power_state"] == 4 and allocation(m["uuid"]) == {}

    # A move to another host: the scheduler can only pick the other agent, which refuses
    # at prep_resize; the allocation goes back to the server, the migration ends in error.
    services = {s["host"]: s["id"] for s in req("GET", "/os-services?binary=nova-compute")[1]["services"]}
    assert req("PUT", f"/os-services/{services[agent.host]}", {"status": "enabled"})[0] == 200
    assert req("PUT", f"/os-services/{services[a.host]}", {"status": "disabled", "disabled_reason": "move test"})[0] == 200
    try:
        other = (agent.state / "nova-compute-node-uuid").read_text().strip()
        assert wait(lambda: "COMPUTE_STATUS_DISABLED" in placement(f"/resource_providers/{node}/traits")[1]["traits"], timeout=20)
        assert req("POST", f"/servers/{sid}/action", {"migrate": None})[0] == 202
        m = wait(lambda: (lambda ms: ms[0] if ms else None)(
            [m for m in req("GET", f"/os-migrations?instance_uuid={sid}")[1]["migrations"] if m["status"] == "error"]), timeout=60)
        assert m, req("GET", f"/os-migrations?instance_uuid={sid}")[1]
        s = settle(sid, "SHUTOFF")
        assert s["status"] == "SHUTOFF" and s["OS-EXT-SRV-ATTR:host"] == a.host and s["flavor"]["original_name"] == "tiny-bigger"
        assert allocation(sid) == {node: large} and allocation(m["uuid"]) == {}
        assert other not in allocation(sid)
        acts = [x for x in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"] if x["action"] == "migrate"]
        ev = req("GET", f"/servers/{sid}/os-instance-actions/{acts[0]['request_id']}")[1]["instanceAction"]["events"]
        ev = [e for e in ev if e["event"].startswith("compute_")]
        assert [(e["event"], e["result"], e["host"]) for e in ev] == [("compute_prep_resize", "Error", agent.host)], ev
        assert "only within its own host" in (ev[0].get("traceback") or ""), ev
    finally:
        assert req("PUT", f"/os-services/{services[a.host]}", {"status": "enabled"})[0] == 200
        assert req("PUT", f"/os-services/{services[agent.host]}", {"status": "disabled", "disabled_reason": "restart test"})[0] == 200
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)
    assert allocation(sid) == {}


def test_a_resize_the_hypervisor_fails_ends_in_error_with_its_fault_and_only_the_new_allocation(plane, memhv_agent, flavor, bigger,
                                                                                                  image):
    """finish_resize failing in the plugin, as nova-compute reports it: the server in
    ERROR with the plugin's reason as its fault and its old flavor, the migration in
    error, the old flavor's allocation (the Migration's) deleted; delete frees the rest."""
    a = memhv_agent
    sid = boot("fail-resize-vm", image, flavor)
    assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == a.host
    assert req("POST", f"/servers/{sid}/action", {"resize": {"flavorRef": bigger}})[0] == 202
    s = settle(sid, "ERROR")
    assert s["status"] == "ERROR" and "cannot take the new flavor" in s["fault"]["message"], s.get("fault")
    assert s["flavor"]["original_name"] == "tiny"
    assert wait(lambda: [m["status"] for m in req("GET", f"/os-migrations?instance_uuid={sid}")[1]["migrations"]] == ["error"],
                timeout=20), req("GET", f"/os-migrations?instance_uuid={sid}")[1]
    (m,) = req("GET", f"/os-migrations?instance_uuid={sid}")[1]["migrations"]
    assert placement(f"/allocations/{m['uuid']}")[1]["allocations"] == {}
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)
    assert placement(f"/allocations/{sid}")[1]["allocations"] == {}


def test_a_resize_survives_a_crash_between_its_steps(plane, memhv_agent, flavor, bigger, image):
    """At-least-once across a multi-step flow: the agent dies (failpoint, SIGKILL) just
    after prep_resize cast resize_instance to it, before prep_resize was acknowledged. On
    restart both arrive — the redelivered prep_resize and resize_instance — and the one
    that runs second finds the instance moved on and stops without undoing anything: the
    resize completes once, with the allocations nova expects."""
    a = memhv_agent
    node = (a.state / "nova-compute-node-uuid").read_text().strip()
    sid = boot("vm-resize-crash", image, flavor)
    assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == a.host
    a.stop()
    a.start(env={"COMPUTE_AGENT_FAILPOINTS": "nova.cast.resize_instance"})
    try:
        assert req("POST", f"/servers/{sid}/action", {"resize": {"flavorRef": bigger}})[0] == 202
        assert a.wait_killed(timeout=60) == -signal.SIGKILL
    finally:
        a.start()
    s = settle(sid, "VERIFY_RESIZE")
    assert s["status"] == "VERIFY_RESIZE" and s["flavor"]["original_name"] == "tiny-bigger", s.get("fault")
    assert "failpoint nova.cast.resize_instance reached" in a.text()
    # The duplicate (whichever of the two ran second) may come after the resize finished.
    assert wait(lambda: "the instance has moved on" in a.text()[a.mark:], timeout=30), a.text()[a.mark:][-3000:]
    assert f"of {sid} failed" not in a.text()[a.mark:]
    (m,) = req("GET", f"/os-migrations?instance_uuid={sid}")[1]["migrations"]
    assert m["status"] == "finished", m
    alloc = {rp: v["resources"] for rp, v in placement(f"/allocations/{sid}")[1]["allocations"].items()}
    assert alloc == {node: {"VCPU": 2, "MEMORY_MB": 512, "DISK_GB": 1}}, alloc
    assert list(placement(f"/allocations/{m['uuid']}")[1]["allocations"]) == [node]
    assert req("POST", f"/servers/{sid}/action", {"confirmResize": None})[0] == 204
    assert settle(sid, "ACTIVE")["status"] == "ACTIVE"
    assert placement(f"/allocations/{m['uuid']}")[1]["allocations"] == {}
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_a_build_the_hypervisor_fails_is_rescheduled_to_another_host_and_with_none_left_ends_in_error(
        plane, agent, memhv_agent, flavor, image):
    """nova's reschedule: memhv fails to spawn a "fail-spawn…" guest, so the agent drops
    its record, clears host and node, deletes the allocation and hands the build back to
    the conductor with the scheduler's alternates; the other agent builds it. With no
    other host enabled the conductor ends it in ERROR (nova's "Exhausted all hosts")."""
    services = {s["host"]: s["id"] for s in req("GET", "/os-services?binary=nova-compute")[1]["services"]}
    other = (agent.state / "nova-compute-node-uuid").read_text().strip()
    assert req("PUT", f"/os-services/{services[agent.host]}", {"status": "enabled"})[0] == 200
    try:
        assert wait(lambda: "COMPUTE_STATUS_DISABLED" not in placement(f"/resource_providers/{other}/traits")[1]["traits"], timeout=20)
        sid = boot("fail-spawn-rescheduled", image, flavor)
        s = settle(sid, "ACTIVE", timeout=90)
        assert s["status"] == "ACTIVE" and s["OS-EXT-SRV-ATTR:host"] == agent.host, s.get("fault")
        assert f"nova: build of {sid} failed on this host, rescheduling: " in memhv_agent.text(), \
            [(h["hypervisor_hostname"], h.get("free_ram_mb"), h.get("vcpus")) for h in req("GET", "/os-hypervisors/detail")[1]["hypervisors"]]
        assert "memhv: the domain failed to start" in memhv_agent.text()
        domains = memhv_agent.tmp / "domains"
        assert not domains.exists() or sid not in domains.read_text()
        assert list(placement(f"/allocations/{sid}")[1]["allocations"]) == [other]
        actions = req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"]
        events = req("GET", f"/servers/{sid}/os-instance-actions/{actions[-1]['request_id']}")[1]["instanceAction"]["events"]
        # One build event per host (nova's event_finish updates the first row of a name, so
        # which of the two rows shows the second host's finish is nova's choice).
        builds = sorted(e["host"] for e in events if e["event"] == "compute__do_build_and_run_instance")
        assert builds == sorted([memhv_agent.host, agent.host]), events
        assert req("DELETE", f"/servers/{sid}")[0] == 204
        assert wait(lambda: server(sid) is None, timeout=60)
    finally:
        assert req("PUT", f"/os-services/{services[agent.host]}", {"status": "disabled", "disabled_reason": "restart test"})[0] == 200
    assert wait(lambda: "COMPUTE_STATUS_DISABLED" in placement(f"/resource_providers/{other}/traits")[1]["traits"], timeout=20)
    sid = boot("fail-spawn-alone", image, flavor)
    s = settle(sid, "ERROR", timeout=90)
    assert s["status"] == "ERROR" and "Exhausted all hosts available for retrying build failures" in s["fault"]["message"], s
    assert f"nova: build of {sid} failed on this host, rescheduling: " in memhv_agent.text()
    assert placement(f"/allocations/{sid}")[1]["allocations"] == {}
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)


def test_an_instance_is_evacuated_from_a_dead_host_and_that_host_cleans_up_when_it_returns(plane, agent, memhv_agent,
                                                                                             flavor, image):
    """Evacuation between the two agents: the memhv host dies (SIGKILL, forced down);
    nova-api's evacuate has the conductor rebuild the server on the other agent
    (rebuild_instance with recreate): there with the Migration done, stopped as
    microversion ≥ 2.95 asks, its allocation on both providers. When the memhv host comes
    back, its start-up removes the old guest, releases its part of the allocation and
    completes the migration."""
    a = memhv_agent
    services = {s["host"]: s["id"] for s in req("GET", "/os-services?binary=nova-compute")[1]["services"]}
    here, there = [(x.state / "nova-compute-node-uuid").read_text().strip() for x in (a, agent)]
    domains = a.tmp / "domains"
    sid = boot("vm-evacuate", image, flavor)
    assert settle(sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == a.host
    assert sid in domains.read_text()
    assert req("PUT", f"/os-services/{services[agent.host]}", {"status": "enabled"})[0] == 200
    try:
        assert wait(lambda: "COMPUTE_STATUS_DISABLED" not in placement(f"/resource_providers/{there}/traits")[1]["traits"], timeout=20)
        a.kill()
        assert req("PUT", f"/os-services/{services[a.host]}", {"forced_down": True})[0] == 200
        code, b = req("POST", f"/servers/{sid}/action", {"evacuate": {}})
        assert code in (200, 202), b
        s = settle(sid, "SHUTOFF", timeout=90)
        assert s["status"] == "SHUTOFF" and s["OS-EXT-SRV-ATTR:host"] == agent.host, s.get("fault")
        # As in nova, the Migration is saved done just after the instance settles.
        evacuation = lambda: [m for m in req("GET", f"/os-migrations?instance_uuid={sid}")[1]["migrations"]
                              if m["migration_type"] == "evacuation"]
        assert wait(lambda: [m["status"] for m in evacuation()] == ["done"], timeout=20), evacuation()
        (m,) = evacuation()
        assert (m["status"], m["source_compute"], m["dest_compute"]) == ("done", a.host, agent.host), m
        assert sorted(placement(f"/allocations/{sid}")[1]["allocations"]) == sorted([here, there])
        assert sid in domains.read_text(), "the dead host's guest file should be untouched while it is down"
        rid = [x for x in req("GET", f"/servers/{sid}/os-instance-actions")[1]["instanceActions"] if x["action"] == "evacuate"][0]["request_id"]
        events = lambda: [(e["event"], e["result"], e["host"])
                          for e in req("GET", f"/servers/{sid}/os-instance-actions/{rid}")[1]["instanceAction"]["events"]]
        assert wait(lambda: ("compute_rebuild_instance", "Success", agent.host) in events(), timeout=20), events()
    finally:
        # Back (still forced down: nova-api lets a host up again only once its start-up
        # has completed the evacuations from it).
        a.start()
        completed = wait(lambda: [m["status"] for m in req("GET", f"/os-migrations?instance_uuid={sid}")[1]["migrations"]] == ["completed"],
                         timeout=30)
        r = req("PUT", f"/os-services/{services[a.host]}", {"forced_down": False})
        assert r[0] == 200, r
        assert req("PUT", f"/os-services/{services[agent.host]}", {"status": "disabled", "disabled_reason": "restart test"})[0] == 200
    assert completed, req("GET", f"/os-migrations?instance_uuid={sid}")[1]
    assert wait(lambda: sid not in domains.read_text(), timeout=30), "the old guest still runs on the returned host"
    assert list(placement(f"/allocations/{sid}")[1]["allocations"]) == [there]
    assert wait(lambda: f"nova: instance {sid} was evacuated from this host" in a.text()[a.mark:], timeout=10)
    assert act(sid, {"os-start": None}, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == agent.host
    assert req("DELETE", f"/servers/{sid}")[0] == 204
    assert wait(lambda: server(sid) is None, timeout=60)
    assert placement(f"/allocations/{sid}")[1]["allocations"] == {}


def test_a_real_guest_under_qemu_boots_from_glance_through_the_nova_api(plane, tmp_path, tiny_guest):
    """One real QEMU run (TCG, virt_type = qemu): nova-api schedules the tiny guest onto an
    agent on qemu:///system, the glance plugin fetches the qcow2 image from the control
    plane's glance, and the guest's ready marker shows in `openstack console log show`."""
    reason = libvirtd_reason()
    assert reason is None, reason
    a = nova_agent(tmp_path, plane, section="[libvirt]\nconnection_uri = qemu:///system\nvirt_type = qemu\nshutdown_timeout = 5\n")
    a.start(timeout=60)
    try:
        mapped(plane, a)
        image = upload_image((tiny_guest / "disk.qcow2").read_bytes(), disk_format="qcow2", name="tinyguest")
        code, b = req("POST", "/flavors", {"flavor": {"name": "guest", "ram": 128, "vcpus": 1, "disk": 1}})
        assert code == 200, b
        started = time.time()
        # an admin may name the host: the other agents of this module stay out of it
        code, b = req("POST", "/servers", {"server": {"name": "tinyguest", "imageRef": image, "flavorRef": b["flavor"]["id"],
                                                      "networks": "none", "availability_zone": f"nova:{a.host}"}})
        assert code == 202, b
        sid = b["server"]["id"]
        s = settle(sid, "ACTIVE", timeout=120)
        assert s["status"] == "ACTIVE" and s["OS-EXT-SRV-ATTR:host"] == a.host, s.get("fault")
        virsh = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", sid], capture_output=True, text=True)
        assert virsh.stdout.strip() == "running", virsh

        def console():
            code, out = req("POST", f"/servers/{sid}/action", {"os-getConsoleOutput": {"length": 50}})
            return out["output"] if code == 200 and "TINYGUEST-READY" in out["output"] else None
        out = wait(console, timeout=90, every=0.5)
        print(f"tiny guest through nova: create to ready marker {time.time() - started:.1f} s")
        assert out, req("POST", f"/servers/{sid}/action", {"os-getConsoleOutput": {"length": 30}})
        assert req("DELETE", f"/servers/{sid}")[0] == 204
        assert wait(lambda: server(sid) is None, timeout=60)
        gone = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", sid], capture_output=True, text=True)
        assert gone.returncode != 0, "the domain outlived the server"
    finally:
        a.stop()


def test_sigterm_is_instant_while_the_conductor_does_not_answer(tmp_path):
    """No control plane on the vhost: the registration call waits for a conductor that
    never answers (rpc_response_timeout 60 s); a SIGTERM must not wait for it."""
    a = Agent(tmp_path, extra_default="control_plane = nova\n[placement]\nendpoint = http://127.0.0.1:1\ntoken = admin")
    a.start(wait_for="consuming")
    time.sleep(1.5)
    started = time.time()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(15) == 0
    took = time.time() - started
    print(f"SIGTERM while registering: exited in {took:.3f} s")
    assert took < 2.0, took
