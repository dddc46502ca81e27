"""The libvirt plugin's ABI-1.1 operations on libvirt's own test driver (test:///default):
rescue, unrescue, snapshot (through the file plugin's upload side), resize, console
output and diagnostics."""
import hashlib
import pathlib

import pytest

from conftest import Agent, make_image, new_instance, rpc_client


@pytest.fixture(scope="module")
def env(tmp_path_factory, transport):
    tmp = tmp_path_factory.mktemp("libvirt-actions")
    a = Agent(tmp, sections={"libvirt": {"connection_uri": "test:///default"}, "file": {"upload_dir": tmp / "images"}}).start()
    image, checksum = make_image(tmp / "image.raw")
    yield {"agent": a, "client": rpc_client(transport, a.host), "image": image, "checksum": checksum, "tmp": tmp}
    a.stop()


def test_rescue_and_unrescue(env):
    c = env["client"]
    u = c.call({}, "build_and_run_instance", instance=new_instance(image_ref=env["image"]))["uuid"]
    r = c.call({}, "rescue_instance", instance_uuid=u)
    assert r["vm_state"] == "rescued" and r["power_state_name"] == "RUNNING"
    rescue_disk = env["tmp"] / "state" / "instances" / u / "disk.rescue"
    assert rescue_disk.exists()
    r = c.call({}, "unrescue_instance", instance_uuid=u)
    assert r["vm_state"] == "active" and r["power_state_name"] == "RUNNING"
    assert not rescue_disk.exists()


def test_snapshot_copies_the_disk_into_the_image_store(env):
    c = env["client"]
    u = c.call({}, "build_and_run_instance", instance=new_instance(image_ref=env["image"], image_checksum=env["checksum"]))["uuid"]
    r = c.call({}, "snapshot_instance", instance_uuid=u, image_id="snap1", image_name="s")
    stored = pathlib.Path(r["image_ref"][len("file://"):])
    assert stored == env["tmp"] / "images" / "snap1"
    assert "sha256:" + hashlib.sha256(stored.read_bytes()).hexdigest() == env["checksum"] == r["checksum"]
    # The domain runs again after the consistent (paused) copy.
    assert r["instance"]["power_state_name"] == "RUNNING" and r["instance"]["vm_state"] == "active"


def test_resize_confirm_and_diagnostics(env):
    c = env["client"]
    u = c.call({}, "build_and_run_instance", instance=new_instance(vcpus=1, memory_mb=64))["uuid"]
    r = c.call({}, "resize_instance", instance_uuid=u, flavor={"vcpus": 2, "memory_mb": 128, "root_gb": 1})
    assert r["vm_state"] == "resized" and r["power_state_name"] == "RUNNING"
    d = c.call({}, "get_diagnostics", instance_uuid=u)
    assert d["driver"] == "libvirt" and d["num_cpus"] == 2 and d["memory_mb"] == 128 and d["state"] == "running"
    assert c.call({}, "confirm_resize", instance_uuid=u)["vm_state"] == "active"
    # The test driver has no console log: the output is empty, not an error.
    assert c.call({}, "get_console_output", instance_uuid=u) == ""
