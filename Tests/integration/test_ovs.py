"""The ovs network plugin against a real Open vSwitch (Debian's openvswitch-switch, started
by scripts/ovs.sh without systemd, userspace `netdev` datapath since these machines have no
OVS kernel module): the port and its external_ids verified with ovs-vsctl, unplug leaves
nothing, restart removes only orphan ports the agent made."""
import json
import subprocess
import time
import uuid

import pytest

from conftest import ROOT, Agent, rpc_client


@pytest.fixture(scope="module")
def ovs():
    subprocess.run(["bash", str(ROOT / "scripts" / "ovs.sh"), "start"], check=True, capture_output=True)


def vsctl(*args):
    return subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True)


@pytest.fixture
def bridge(ovs):
    name = "cabi" + uuid.uuid4().hex[:8]
    yield name
    vsctl("--if-exists", "del-br", name)


def ovs_vif(port=None, mtu=1400):
    port = port or str(uuid.uuid4())
    return {"id": port, "address": "52:54:00:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3]), "type": "ovs",
            "network": {"id": "net", "bridge": "unused", "meta": {"mtu": mtu}, "subnets": []}}


def ovs_agent(tmp_path, bridge):
    return Agent(tmp_path, extra_default="network_plugin = ovs",
                 sections={"libvirt": {"connection_uri": "test:///default"},
                           "ovs": {"integration_bridge": bridge, "datapath_type": "netdev"}})


def test_port_gets_neutrons_external_ids_and_unplug_removes_it(tmp_path, bridge, transport):
    a = ovs_agent(tmp_path, bridge).start()
    try:
        c = rpc_client(transport, a.host)
        v = ovs_vif()
        tap = "tap" + v["id"][:11]
        inst = {"uuid": str(uuid.uuid4()), "name": "vm-ovs", "vcpus": 1, "memory_mb": 64, "vifs": [v]}
        assert c.call({}, "build_and_run_instance", instance=inst)["vm_state"] == "active"
        assert vsctl("get", "Bridge", bridge, "datapath_type").stdout.strip() == "netdev"
        assert tap in vsctl("list-ports", bridge).stdout.split()
        ids = vsctl("get", "Interface", tap, "external_ids").stdout
        for want in [f'iface-id="{v["id"]}"', f'attached-mac="{v["address"]}"', "iface-status=active", f'vm-uuid="{inst["uuid"]}"']:
            assert want in ids, ids
        assert vsctl("get", "Interface", tap, "mtu_request").stdout.strip() == "1400"
        info = c.call({}, "get_instance_info", instance_uuid=inst["uuid"])
        assert info["vm_state"] == "active"
        assert c.call({}, "terminate_instance", instance_uuid=inst["uuid"])["vm_state"] == "deleted"
        assert tap not in vsctl("list-ports", bridge).stdout.split()
        assert subprocess.run(["ip", "link", "show", tap], capture_output=True).returncode != 0, "the tap must go too"
    finally:
        a.stop()


def test_restart_removes_only_the_agents_orphan_ports(tmp_path, bridge, transport):
    vsctl("add-br", bridge, "--", "set", "Bridge", bridge, "datapath_type=netdev")
    orphan, foreign = "tap" + uuid.uuid4().hex[:11], "tap" + uuid.uuid4().hex[:11]
    for name, ids in [(orphan, [f"external-ids:compute-agent={uuid.uuid4()}"]), (foreign, ["external-ids:iface-id=other"])]:
        subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
        assert vsctl("add-port", bridge, name, "--", "set", "Interface", name, *ids).returncode == 0
    a = ovs_agent(tmp_path, bridge).start()
    try:
        deadline = time.time() + 10
        while time.time() < deadline and orphan in vsctl("list-ports", bridge).stdout.split():
            time.sleep(0.1)
        ports = vsctl("list-ports", bridge).stdout.split()
        assert orphan not in ports and foreign in ports, ports
    finally:
        a.stop()
        for n in (orphan, foreign):
            subprocess.run(["ip", "link", "del", n], capture_output=True)


def test_ovs_plugin_refuses_a_bridge_vif_with_a_clear_fault(tmp_path, bridge, transport):
    import oslo_messaging
    a = ovs_agent(tmp_path, bridge).start()
    try:
        c = rpc_client(transport, a.host)
        v = {**ovs_vif(), "type": "bridge"}
        with pytest.raises(oslo_messaging.RemoteError) as e:
            c.call({}, "build_and_run_instance", instance={"uuid": str(uuid.uuid4()), "name": "vm-x", "vcpus": 1,
                                                           "memory_mb": 64, "vifs": [v]})
        assert "the ovs plugin plugs type 'ovs'" in e.value.value
        assert c.call({}, "ping")["pong"] is True
    finally:
        a.stop()
