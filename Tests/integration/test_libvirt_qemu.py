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


def test_real_qemu_lifecycle_event_and_console(qemu_agent, transport, tmp_path):
    """A guest that stops behind the agent's back (virsh destroy) is seen through libvirt's
    lifecycle event, long before the 600 s power-state sync; the console log is readable."""
    client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", server=qemu_agent.host), timeout=60)
    image = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True, capture_output=True)
    u = client.call({}, "build_and_run_instance", instance=new_instance(memory_mb=64, image_ref=f"file://{image}"))["uuid"]
    assert isinstance(client.call({}, "get_console_output", instance_uuid=u), str)
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", u], check=True, capture_output=True)
    info = wait_state(client, u, "stopped", timeout=20)
    assert info["power_state_name"] == "SHUTDOWN"
    assert "instance shut down by itself (after a hypervisor event)" in qemu_agent.text()
    assert client.call({}, "start_instance", instance_uuid=u)["vm_state"] == "active"
    client.call({}, "terminate_instance", instance_uuid=u)


def test_real_qemu_build_survives_sigkill_after_the_domain_started(tmp_path, transport):
    """libvirtd keeps the domain while the agent dies; the restarted agent finishes the
    build from its journal instead of starting a second domain."""
    reason = libvirtd_reason()
    if reason:
        pytest.skip(reason)
    from conftest import Agent
    a = Agent(tmp_path, sections={"libvirt": {"connection_uri": "qemu:///system", "virt_type": "qemu", "shutdown_timeout": "1"}})
    a.start(timeout=60, env={"COMPUTE_AGENT_FAILPOINTS": "build.after_spawn"})
    client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="compute", server=a.host), timeout=60)
    image = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True, capture_output=True)
    inst = new_instance(memory_mb=64, image_ref=f"file://{image}")
    client.cast({}, "build_and_run_instance", instance=inst)
    assert a.wait_killed(60) == -9
    assert subprocess.run(["virsh", "-c", "qemu:///system", "domstate", inst["uuid"]],
                          capture_output=True, text=True).stdout.strip() == "running"
    a.start(timeout=60)
    try:
        info = wait_state(client, inst["uuid"], "active", timeout=30)
        assert info["power_state_name"] == "RUNNING"
        assert "build interrupted after the domain started: finishing it" in a.text()
    finally:
        client.call({}, "terminate_instance", instance_uuid=inst["uuid"])
        a.stop()
