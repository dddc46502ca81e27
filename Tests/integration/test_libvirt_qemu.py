"""One real QEMU domain (type qemu: software emulation, a blank qcow2 disk, 64 MiB) driven
through the agent and the libvirt plugin on qemu:///system. Skipped, with the reason,
only where libvirtd cannot run (scripts/libvirtd.sh start failed)."""
import subprocess
import time

import oslo_messaging
import pytest

from conftest import new_instance, wait_state


def libvirtd_reason():
    p = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True)
    if p.returncode != 0:
        return "libvirtd is not running here (scripts/libvirtd.sh start failed): " + p.stderr.strip()
    return None


@pytest.fixture(scope="module")
def qemu_agent(tmp_path_factory):
    reason = libvirtd_reason()
    if reason:
        pytest.skip(reason)
    from conftest import Agent
    a = Agent(tmp_path_factory.mktemp("qemu"),
              sections={"libvirt": {"connection_uri": "qemu:///system", "virt_type": "qemu", "shutdown_timeout": "1"}})
    a.start(timeout=60)
    yield a
    a.stop()


def test_real_qemu_domain_start_pause_resume_destroy(qemu_agent, transport, tmp_path):
    client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", server=qemu_agent.host), timeout=60)
    image = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True, capture_output=True)
    inst = new_instance(memory_mb=64, image_ref=f"file://{image}")
    u = inst["uuid"]
    info = client.call({}, "build_and_run_instance", instance=inst)
    assert info["vm_state"] == "active" and info["power_state_name"] == "RUNNING"
    dom = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", u], capture_output=True, text=True).stdout.strip()
    assert dom == "running"
    assert client.call({}, "pause_instance", instance_uuid=u)["power_state_name"] == "PAUSED"
    assert subprocess.run(["virsh", "-c", "qemu:///system", "domstate", u], capture_output=True, text=True).stdout.strip() == "paused"
    assert client.call({}, "unpause_instance", instance_uuid=u)["power_state_name"] == "RUNNING"
    assert client.call({}, "terminate_instance", instance_uuid=u)["vm_state"] == "deleted"
    p = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", u], capture_output=True, text=True)
    assert p.returncode != 0, "domain still defined after terminate"
    caps = client.call({}, "get_host_capabilities")
    assert caps["hypervisor_type"] == "QEMU"
