"""A tiny real guest (Debian's cloud kernel + a busybox initramfs, built by
scripts/build-guest.sh from Debian packages) uploaded to a real Glance, fetched by the
glance plugin into the _base cache, and booted by the agent through the libvirt plugin
under real QEMU (TCG, virt_type = qemu): it prints its ready marker on the serial console,
which the test reads."""
import pathlib
import subprocess
import time

import pytest

from conftest import ROOT, Agent, rpc_client
from test_glance import glance, upload  # noqa: F401  (the session Glance fixture)
from test_libvirt_qemu import libvirtd_reason

GUEST_DIR = pathlib.Path("/var/lib/compute-agent-test/guest")


@pytest.fixture(scope="session")
def tiny_guest():
    subprocess.run(["bash", str(ROOT / "scripts" / "build-guest.sh"), str(GUEST_DIR)], check=True, capture_output=True)
    return GUEST_DIR


def test_tiny_guest_from_glance_boots_under_qemu_and_prints_its_marker(tmp_path, glance, tiny_guest, transport):  # noqa: F811
    reason = libvirtd_reason()
    assert reason is None, reason  # libvirtd runs on these machines: a skip would hide a broken install
    image_id = upload(glance, (tiny_guest / "disk.qcow2").read_bytes())
    a = Agent(tmp_path, extra_default="image_fetcher = glance",
              sections={"libvirt": {"connection_uri": "qemu:///system", "virt_type": "qemu", "shutdown_timeout": "5"},
                        "glance": {"api_servers": glance}})
    a.start(timeout=60)
    try:
        c = rpc_client(transport, a.host, timeout=120)
        started = time.time()
        u = __import__("uuid").uuid4()
        inst = {"uuid": str(u), "name": "tinyguest-" + u.hex[:6], "vcpus": 1, "memory_mb": 128, "root_gb": 1, "image_ref": image_id}
        info = c.call({}, "build_and_run_instance", instance=inst)
        assert info["vm_state"] == "active" and info["power_state_name"] == "RUNNING", info
        console = a.state / "instances" / inst["uuid"] / "console.log"
        marker = None
        deadline = started + 60
        while time.time() < deadline:
            text = console.read_text(errors="replace") if console.exists() else ""
            if "TINYGUEST-READY" in text:
                marker = next(l for l in text.splitlines() if "TINYGUEST-READY" in l)
                break
            time.sleep(0.25)
        elapsed = time.time() - started
        print(f"tiny guest: build call to marker {elapsed:.1f} s: {marker}")
        assert marker, f"no TINYGUEST-READY within 60 s; console:\n{console.read_text(errors='replace')[-2000:] if console.exists() else '(none)'}"
        out = c.call({}, "get_console_output", instance_uuid=inst["uuid"])
        assert "TINYGUEST-READY" in out
        assert c.call({}, "terminate_instance", instance_uuid=inst["uuid"])["vm_state"] == "deleted"
    finally:
        a.stop()


def test_three_part_image_boots_its_kernel_and_ramdisk_directly(tmp_path, glance, tiny_guest, transport):  # noqa: F811
    """A root image whose record carries kernel_id and ramdisk_id (nova's AKI/ARI/AMI):
    kernel and ramdisk are cached in _base like any image, the domain boots them directly
    with os_command_line, and the guest prints its marker."""
    import hashlib
    assert libvirtd_reason() is None
    kernel = upload(glance, (tiny_guest / "vmlinuz").read_bytes(), disk_format="aki", container_format="aki")
    ramdisk = upload(glance, (tiny_guest / "initrd.img").read_bytes(), disk_format="ari", container_format="ari")
    blank = tmp_path / "root.raw"
    blank.write_bytes(b"\0" * (4 << 20))
    root = upload(glance, blank.read_bytes(), disk_format="ami", container_format="ami", kernel_id=kernel, ramdisk_id=ramdisk,
                  os_command_line="console=ttyS0 quiet panic=-1")
    a = Agent(tmp_path, extra_default="image_fetcher = glance",
              sections={"libvirt": {"connection_uri": "qemu:///system", "virt_type": "qemu", "shutdown_timeout": "5"},
                        "glance": {"api_servers": glance}})
    a.start(timeout=60)
    u = __import__("uuid").uuid4()
    try:
        c = rpc_client(transport, a.host, timeout=120)
        started = time.time()
        info = c.call({}, "build_and_run_instance", instance={"uuid": str(u), "name": "aki-" + u.hex[:6], "vcpus": 1,
                                                              "memory_mb": 128, "root_gb": 1, "image_ref": root})
        assert info["vm_state"] == "active", info
        base = a.state / "instances" / "_base"
        for part in (kernel, ramdisk, root):
            assert (base / hashlib.sha1(part.encode()).hexdigest()).exists()
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", str(u)], capture_output=True, text=True).stdout
        assert f"<kernel>{base / hashlib.sha1(kernel.encode()).hexdigest()}</kernel>" in xml
        assert "<cmdline>console=ttyS0 quiet panic=-1</cmdline>" in xml
        console = a.state / "instances" / str(u) / "console.log"
        marker = None
        while time.time() < started + 60 and not marker:
            text = console.read_text(errors="replace") if console.exists() else ""
            marker = next((l for l in text.splitlines() if "TINYGUEST-READY" in l), None)
            time.sleep(0.25)
        print(f"three-part image: marker {time.time() - started:.1f} s after the build call")
        assert marker
        c.call({}, "terminate_instance", instance_uuid=str(u))
    finally:
        a.stop()
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", str(u)], capture_output=True)
        subprocess.run(["virsh", "-c", "qemu:///system", "undefine", str(u)], capture_output=True)
