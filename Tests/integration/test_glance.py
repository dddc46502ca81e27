"""The glance image-fetch plugin against a real Glance v2 (glance-api 33 under gunicorn,
started by scripts/glance.sh): verified streaming downloads, nova's _base cache with
qcow2 overlays, single-flight, and a clear fault for every way a download can fail."""
import hashlib
import json
import os
import pathlib
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest

from conftest import ROOT, Agent, rpc_client

GLANCE_DIR = pathlib.Path(os.environ.get("GLANCE_DIR", "/var/lib/compute-agent-test/glance"))


@pytest.fixture(scope="session")
def glance():
    subprocess.run(["bash", str(ROOT / "scripts" / "glance.sh"), "start"], check=True, capture_output=True)
    return subprocess.run(["bash", str(ROOT / "scripts" / "glance.sh"), "url"], check=True, capture_output=True,
                          text=True).stdout.strip()


def glance_request(glance, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    h = {"Content-Type": "application/json"} if isinstance(body, dict) else {"Content-Type": "application/octet-stream"}
    req = urllib.request.Request(glance + path, data=data, method=method, headers={**h, **(headers or {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read()
        return json.loads(text) if text and r.headers.get("Content-Type", "").startswith("application/json") else text


def upload(glance, data, disk_format="qcow2", upload_data=True, container_format="bare", **props):
    image = glance_request(glance, "POST", "/v2/images", {"name": "img-" + uuid.uuid4().hex[:6], "disk_format": disk_format,
                                                          "container_format": container_format, **props})
    if upload_data:
        glance_request(glance, "PUT", f"/v2/images/{image['id']}/file", data)
    return image["id"]


@pytest.fixture(scope="session")
def qcow2_image(tmp_path_factory):
    """A small real qcow2 image (16 MiB virtual) with some data in it."""
    d = tmp_path_factory.mktemp("img")
    raw = d / "img.raw"
    raw.write_bytes(os.urandom(1 << 20) + b"\0" * (15 << 20))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(d / "img.qcow2")], check=True)
    return (d / "img.qcow2").read_bytes()


def glance_agent(tmp_path, servers):
    return Agent(tmp_path, extra_default="image_fetcher = glance",
                 sections={"libvirt": {"connection_uri": "test:///default"},
                           "glance": {"api_servers": servers, "num_retries": "1", "timeout": "5"}})


def build(client, image_ref, root_gb=1, timeout=60):
    inst = {"uuid": str(uuid.uuid4()), "name": "vm-" + uuid.uuid4().hex[:6], "vcpus": 1, "memory_mb": 64,
            "root_gb": root_gb, "image_ref": image_ref}
    return client.prepare(timeout=timeout).call({}, "build_and_run_instance", instance=inst)


def build_fails(client, image_ref):
    """A build that must fail: the caller gets BuildAbortException, the instance is in
    ERROR with the fault. Returns the fault."""
    import oslo_messaging
    inst = {"uuid": str(uuid.uuid4()), "name": "vm-" + uuid.uuid4().hex[:6], "vcpus": 1, "memory_mb": 64,
            "root_gb": 1, "image_ref": image_ref}
    with pytest.raises(oslo_messaging.RemoteError) as e:
        client.prepare(timeout=60).call({}, "build_and_run_instance", instance=inst)
    assert e.value.exc_type == "BuildAbortException", e.value
    info = client.call({}, "get_instance_info", instance_uuid=inst["uuid"])
    assert info["vm_state"] == "error", info
    return info["fault"]


def file_gets(image_id):
    log = GLANCE_DIR / "access.log"
    return sum(1 for l in log.read_text().splitlines() if f"GET /v2/images/{image_id}/file" in l) if log.exists() else 0


def qemu_info(path):
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)


def test_active_image_is_verified_cached_as_raw_and_overlaid(tmp_path, glance, qcow2_image, transport):
    image_id = upload(glance, qcow2_image)
    a = glance_agent(tmp_path, glance).start()
    try:
        c = rpc_client(transport, a.host)
        info = build(c, image_id)
        assert info["vm_state"] == "active", info
        base = a.state / "instances" / "_base" / hashlib.sha1(image_id.encode()).hexdigest()
        assert base.exists() and qemu_info(base)["format"] == "raw"  # force_raw_images
        disk = qemu_info(a.state / "instances" / info["uuid"] / "disk")
        assert disk["format"] == "qcow2" and disk["backing-filename"] == str(base)
        assert disk["virtual-size"] == 1 << 30
        assert f"fetched {image_id} into {base}" in a.text()
        # A second build of the same image uses the cache: no second download.
        before = file_gets(image_id)
        assert build(c, image_id)["vm_state"] == "active"
        assert file_gets(image_id) == before
        assert f"image {image_id} already cached in {base}" in a.text()
        # A plain http(s) URL goes through the same plugin (Content-MD5 checked).
        assert build(c, f"{glance}/v2/images/{image_id}/file")["vm_state"] == "active"
    finally:
        a.stop()


def test_tampered_image_is_refused_with_a_checksum_fault_and_nothing_cached(tmp_path, glance, qcow2_image, transport):
    image_id = upload(glance, qcow2_image)
    stored = GLANCE_DIR / "images" / image_id
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF  # same length, one byte changed behind Glance's back
    stored.write_bytes(bytes(data))
    a = glance_agent(tmp_path, glance).start()
    try:
        fault = build_fails(rpc_client(transport, a.host), image_id)
        assert "checksum mismatch" in fault and "os_hash_value" in fault, fault
        base_dir = a.state / "instances" / "_base"
        assert not [p.name for p in base_dir.iterdir() if not p.name.endswith(".lock")], list(base_dir.iterdir())
    finally:
        a.stop()


def test_unknown_queued_and_unreachable_images_give_clear_faults(tmp_path, glance, transport):
    a = glance_agent(tmp_path, glance).start()
    try:
        c = rpc_client(transport, a.host)
        assert "not found in the image service (404)" in build_fails(c, str(uuid.uuid4()))
        assert "is queued, not active" in build_fails(c, upload(glance, b"", upload_data=False))
        assert c.call({}, "ping")["pong"] is True
    finally:
        a.stop()
    (tmp_path / "down").mkdir()
    down = glance_agent(tmp_path / "down", "http://127.0.0.1:9").start()
    try:
        c = rpc_client(transport, down.host)
        fault = build_fails(c, str(uuid.uuid4()))
        assert "is unreachable" in fault, fault
        assert c.call({}, "ping")["pong"] is True
    finally:
        down.stop()


def test_concurrent_builds_of_one_image_download_it_once(tmp_path, glance, qcow2_image, transport):
    image_id = upload(glance, qcow2_image)
    a = glance_agent(tmp_path, glance).start()
    try:
        c = rpc_client(transport, a.host)
        results = []
        threads = [threading.Thread(target=lambda: results.append(build(c, image_id))) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert len(results) == 5 and all(r["vm_state"] == "active" for r in results), results
        deadline = time.time() + 5
        while time.time() < deadline and file_gets(image_id) < 1:
            time.sleep(0.1)
        assert file_gets(image_id) == 1, "five builds of one image must download it once"
    finally:
        a.stop()


def test_cache_manager_removes_an_unused_base_past_its_age_and_keeps_the_one_in_use(tmp_path, glance, qcow2_image, transport):
    used, unused = upload(glance, qcow2_image), upload(glance, qcow2_image)
    a = Agent(tmp_path, extra_default="image_fetcher = glance",
              sections={"libvirt": {"connection_uri": "test:///default"}, "glance": {"api_servers": glance},
                        "image_cache": {"manager_interval": "1", "remove_unused_original_minimum_age_seconds": "2"}})
    a.start()
    try:
        c = rpc_client(transport, a.host)
        base_dir = a.state / "instances" / "_base"
        keep = build(c, used)
        gone = build(c, unused)
        assert c.call({}, "terminate_instance", instance_uuid=gone["uuid"])["vm_state"] == "deleted"
        used_base = base_dir / hashlib.sha1(used.encode()).hexdigest()
        unused_base = base_dir / hashlib.sha1(unused.encode()).hexdigest()
        assert used_base.exists() and unused_base.exists()
        os.utime(used_base, (time.time() - 3600, time.time() - 3600))  # old, but in use
        deadline = time.time() + 20
        while time.time() < deadline and unused_base.exists():
            time.sleep(0.2)
        assert not unused_base.exists(), "an unused base past its minimum age must be removed"
        assert not (base_dir / (unused_base.name + ".lock")).exists()
        assert used_base.exists(), "a base an instance uses must be kept"
        assert f"removed={unused_base.name}" in a.text()
        assert c.call({}, "get_instance_info", instance_uuid=keep["uuid"])["vm_state"] == "active"
    finally:
        a.stop()


def test_snapshot_round_trip_through_glance(tmp_path, glance, qcow2_image, transport):
    """snapshot_instance flattens the overlay into a standalone qcow2, creates the Glance
    record (image_type snapshot, instance_uuid, base_image_ref) and uploads it; a new
    instance boots from the snapshot; the source instance stays active."""
    image_id = upload(glance, qcow2_image)
    a = glance_agent(tmp_path, glance).start()
    try:
        c = rpc_client(transport, a.host)
        src = build(c, image_id)
        snap = c.prepare(timeout=60).call({}, "snapshot_instance", instance_uuid=src["uuid"], image_name="snap-" + src["uuid"][:6])
        snap_id = snap["image_ref"]
        record = glance_request(glance, "GET", f"/v2/images/{snap_id}")
        assert record["status"] == "active" and record["disk_format"] == "qcow2" and record["image_type"] == "snapshot"
        assert record["instance_uuid"] == src["uuid"] and record["base_image_ref"] == image_id
        assert snap["checksum"] == f"sha512:{record['os_hash_value']}"
        stored = GLANCE_DIR / "images" / snap_id
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(stored)], check=True,
                                         capture_output=True, text=True).stdout)
        assert info["format"] == "qcow2" and "backing-filename" not in info, "the snapshot must stand alone"
        assert c.call({}, "get_instance_info", instance_uuid=src["uuid"])["vm_state"] == "active"
        assert build(c, snap_id)["vm_state"] == "active"
    finally:
        a.stop()


def test_download_progress_is_visible_while_it_runs_and_its_figures_are_journalled(tmp_path, qcow2_image, transport):
    """A slow image source (a real HTTP server that trickles the image over ~3 s): while the
    build downloads, get_instance_info shows how far it got; afterwards the record keeps the
    download's bytes, seconds and rate."""
    import http.server
    import socketserver

    data = qcow2_image

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-MD5", hashlib.md5(data).hexdigest())
            self.end_headers()
            step = max(1, len(data) // 30)
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(0.1)

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/image.qcow2"
    a = glance_agent(tmp_path, "http://127.0.0.1:9")
    a.start()
    try:
        c = rpc_client(transport, a.host)
        u = str(uuid.uuid4())
        c.cast({}, "build_and_run_instance", instance={"uuid": u, "name": "vm-slow", "vcpus": 1, "memory_mb": 64,
                                                       "root_gb": 1, "image_ref": url})
        seen = []
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                info = c.call({}, "get_instance_info", instance_uuid=u)
            except Exception:
                time.sleep(0.1)
                continue
            if info.get("image_download"):
                seen.append(info["image_download"]["bytes"])
            if info["vm_state"] != "building":
                break
            time.sleep(0.2)
        assert info["vm_state"] == "active", info
        assert seen and 0 < min(seen) < len(data), f"no progress seen while downloading: {seen}"
        assert info["image_fetch"]["bytes"] == len(data) and info["image_fetch"]["downloaded"] is True
        assert info["image_fetch"]["seconds"] > 1
        assert "image_download" not in info
    finally:
        a.stop()
        server.shutdown()
