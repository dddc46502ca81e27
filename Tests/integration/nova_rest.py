"""REST helpers for the nova 34 control plane of scripts/nova-control-plane.sh (no
keystone: nova-api takes `X-Auth-Token: admin:admin`, placement `admin`), shared by the
drop-in tests and Benchmarks/nova.py."""
import json
import time
import urllib.error
import urllib.request

API = "http://127.0.0.1:8774/v2.1"
PLACEMENT = "http://127.0.0.1:8778"
GLANCE = "http://127.0.0.1:9292"
HDR = {"X-Auth-Token": "admin:admin", "Content-Type": "application/json", "X-OpenStack-Nova-API-Version": "2.100"}


def req(method, path, body=None, base=API, headers=HDR):
    """One REST request: (status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def placement(path):
    return req("GET", path, base=PLACEMENT, headers={"X-Auth-Token": "admin", "OpenStack-API-Version": "placement 1.39"})


def upload_image(data, disk_format="raw", name="tiny"):
    """A public image in the control plane's glance with `data` as its file; its id."""
    body = json.dumps({"name": name, "disk_format": disk_format, "container_format": "bare", "visibility": "public"}).encode()
    r = urllib.request.Request(f"{GLANCE}/v2/images", data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        iid = json.loads(resp.read())["id"]
    r = urllib.request.Request(f"{GLANCE}/v2/images/{iid}/file", data=data, method="PUT",
                               headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(r, timeout=60).read()
    return iid


def wait(pred, timeout=60, every=0.2):
    """`pred()`'s first true value within `timeout` seconds, polled every `every`; else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None
