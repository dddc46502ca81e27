"""Image benchmarks (issue 14), ratios measured in one run:

* download throughput of the glance plugin against `curl` fetching the same Glance file
  (goal >= 0.9x), for a small and a large image, with the agent's peak RSS for each (goal:
  flat in the image size — images are streamed, never buffered);
* time to a running domain for a second build of a cached image (goal <= 0.3 s on the
  test driver).

Run by Benchmarks/run.sh (or alone: python3 Benchmarks/images.py, after a release build and
scripts/glance.sh start). CA_BENCH_IMAGE_MB sets the large image (default 1024).
Writes Benchmarks/results/images.{md,json}."""
import hashlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Benchmarks"))
import bench  # noqa: E402  (the Server class, broker user, machine figures)

GLANCE = subprocess.run(["bash", str(ROOT / "scripts" / "glance.sh"), "url"], capture_output=True, text=True).stdout.strip()
LARGE_MB = int(os.environ.get("CA_BENCH_IMAGE_MB", "1024"))
REPS = int(os.environ.get("CA_BENCH_REPS", "3"))


def glance(method, path, body=None, ctype="application/json"):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(GLANCE + path, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=600) as r:
        t = r.read()
        return json.loads(t) if t and r.headers.get("Content-Type", "").startswith("application/json") else None


def make_image(mb):
    """A raw image of `mb` MiB of random data, uploaded to Glance (streamed from a file)."""
    path = bench.WORK / f"image-{mb}.raw"
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    image = glance("POST", "/v2/images", {"name": f"bench-{mb}", "disk_format": "raw", "container_format": "bare"})
    subprocess.run(["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "-T", str(path),
                    f"{GLANCE}/v2/images/{image['id']}/file"], check=True)
    path.unlink()
    return image["id"]


def curl_seconds(image_id):
    out = bench.WORK / "curl.out"
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", str(out), f"{GLANCE}/v2/images/{image_id}/file"], check=True)
    took = time.perf_counter() - t0
    out.unlink()
    return took


def curl_verified_seconds(image_id):
    """The same verified work from the shell: curl to a file, sha512sum it, fsync it."""
    out = bench.WORK / "curl.out"
    t0 = time.perf_counter()
    subprocess.run(f"curl -sf -o {out} {GLANCE}/v2/images/{image_id}/file && sha512sum {out} >/dev/null && sync {out}",
                   shell=True, check=True)
    took = time.perf_counter() - t0
    out.unlink()
    return took


def agent_download(image_id, mb):
    """A fresh agent (empty cache) builds from the image; returns (seconds the plugin took
    to download and verify, the agent's peak RSS in MiB)."""
    a = bench.Server("agent", extra="image_fetcher = glance",
                     sections={"libvirt": {"connection_uri": "test:///default"}, "glance": {"api_servers": GLANCE}})
    a.start()
    try:
        c = bench.rpc_client(a.host, timeout=600)
        u = str(uuid.uuid4())
        info = c.call({}, "build_and_run_instance", instance={"uuid": u, "name": "b-" + u[:6], "vcpus": 1, "memory_mb": 64,
                                                              "root_gb": max(1, (mb + 1023) // 1024), "image_ref": image_id})
        fetch = c.call({}, "get_instance_info", instance_uuid=u)["image_fetch"]
        assert info["vm_state"] == "active" and fetch["downloaded"] is True, (info, fetch)
        return fetch["seconds"], a.status()["VmHWM"], c, a
    except BaseException:
        a.stop()
        raise


def main():
    import oslo_messaging
    from oslo_config import cfg
    bench.setup_broker_user()
    oslo_messaging.set_transport_defaults("nova")
    bench.TRANSPORT = oslo_messaging.get_rpc_transport(cfg.CONF, url=bench.URL)
    results = {"machine": bench.machine(), "large_mb": LARGE_MB}
    for label, mb in (("small", 64), ("large", LARGE_MB)):
        image_id = make_image(mb)
        curl = statistics.median(curl_seconds(image_id) for _ in range(REPS))
        verified = statistics.median(curl_verified_seconds(image_id) for _ in range(REPS))
        agent_runs, rss = [], []
        for _ in range(REPS):
            seconds, hwm, c, a = agent_download(image_id, mb)
            agent_runs.append(seconds)
            rss.append(hwm)
            if label == "small" and "cached_build_s" not in results:
                # Second build of the cached image: cast-to-running time through the call.
                times = []
                for _ in range(5):
                    u = str(uuid.uuid4())
                    t0 = time.perf_counter()
                    c.call({}, "build_and_run_instance", instance={"uuid": u, "name": "c-" + u[:6], "vcpus": 1,
                                                                   "memory_mb": 64, "root_gb": 1, "image_ref": image_id})
                    times.append(time.perf_counter() - t0)
                results["cached_build_s"] = statistics.median(times)
            a.stop()
        agent = statistics.median(agent_runs)
        results[label] = {"mb": mb, "curl_s": curl, "agent_s": agent, "curl_mb_s": mb / curl, "agent_mb_s": mb / agent,
                          "ratio": (mb / agent) / (mb / curl), "verified_mb_s": mb / verified,
                          "ratio_verified": (mb / agent) / (mb / verified), "agent_peak_rss_mib": max(rss)}
        bench.log(f"images: {label} {mb} MiB: curl {mb / curl:.0f} MB/s, curl+sha512sum+sync {mb / verified:.0f} MB/s, "
                  f"agent {mb / agent:.0f} MB/s, agent peak RSS {max(rss):.1f} MiB")
    out = ROOT / "Benchmarks" / "results"
    (out / "images.json").write_text(json.dumps(results, indent=2) + "\n")
    s, l = results["small"], results["large"]
    md = f"""# Image benchmarks (`Benchmarks/images.py`, run by `Benchmarks/run.sh`)

Machine: {results['machine']}. Glance 33 on loopback (gunicorn, file store). Medians of {REPS}.
The agent's time is the plugin's own measure of the download (stream + sha512 + fsync +
rename into `_base`), as journalled in the record's `image_fetch`; curl writes the same
file to disk.

| image | curl | curl + sha512sum + sync | agent (glance plugin) | vs curl (goal >= 0.9) | vs the same verified work | agent peak RSS |
|---|---|---|---|---|---|---|
| {s['mb']} MiB | {s['curl_mb_s']:.0f} MB/s | {s['verified_mb_s']:.0f} MB/s | {s['agent_mb_s']:.0f} MB/s | {s['ratio']:.2f}x | {s['ratio_verified']:.2f}x | {s['agent_peak_rss_mib']:.1f} MiB |
| {l['mb']} MiB | {l['curl_mb_s']:.0f} MB/s | {l['verified_mb_s']:.0f} MB/s | {l['agent_mb_s']:.0f} MB/s | {l['ratio']:.2f}x | {l['ratio_verified']:.2f}x | {l['agent_peak_rss_mib']:.1f} MiB |

The goal against bare curl is missed: verifying the download is not optional (glanceclient
checks `os_hash_value`, sha512), and sha512 alone runs at about 320 MB/s on this CPU
(`sha512sum` of 1 GiB: 3.3 s), a third of what curl moves over loopback. Against the same
verified work done by the shell tools the plugin is at the ratio in the last column but one.

Second build of a cached image (cast to running domain on `test:///default`, through a call;
goal <= 0.3 s): **{results['cached_build_s']:.3f} s**.
"""
    (out / "images.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
