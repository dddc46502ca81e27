"""The agent against the real nova-compute 34 (its fake driver), in the nova-compute slot
of the same real nova 34 control plane (scripts/nova-control-plane.sh: nova-api,
nova-conductor, nova-scheduler, placement 16, glance 33, MariaDB), one after the other in
one run on this machine:

- start: exec → the service is `up` in `GET /os-services` (what `openstack compute
  service list` shows), → a consumer on `compute.<host>`, → the host in
  `GET /os-hypervisors`;
- server create → ACTIVE: `POST /servers` (`--nic none`, a 1 MiB raw image from glance)
  until `GET /servers/<id>` shows ACTIVE with no task state (polled every 20 ms), N times
  one after the other (each server deleted before the next), median and spread;
- RSS and PSS of the compute service (the process and its children) after the boots;
- SIGTERM → the process has exited.

The agent runs the release binary with the libvirt plugin on `test:///default` and the
glance image plugin (it downloads the image and makes a qcow2 overlay: real work the fake
driver does not do). nova-compute runs with the kit's nova.conf (fake.SmallFakeDriver).

    python3 Benchmarks/nova.py [--boots 20]   (after Benchmarks/run.sh has built; or via run.sh)

Writes Benchmarks/results/nova.{md,json}."""
import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import pika

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = ROOT / ".build" / "release"
PLANE = ROOT / "scripts" / "nova-control-plane.sh"
NOVA_VENV = pathlib.Path(os.environ.get("NOVA_VENV", "/var/lib/compute-agent-test/nova-venv"))
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
from nova_rest import GLANCE, req, upload_image, wait  # noqa: E402  (the drop-in tests' REST helpers)

def consumers(queue):
    """Consumers on a queue of the control plane's vhost (0 when it does not exist)."""
    params = pika.ConnectionParameters("127.0.0.1", virtual_host="novapeer", credentials=pika.PlainCredentials("guest", "guest"))
    with pika.BlockingConnection(params) as c:
        ch = c.channel()
        try:
            return ch.queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0


def tree(pid):
    """The process and all its descendants."""
    children = {}
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory(pid):
    """(RSS MiB, PSS MiB) summed over the process tree."""
    rss = pss = 0.0
    for p in tree(pid):
        try:
            for line in pathlib.Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError:
            pass
    return rss, pss


def largest_mappings(pid, n=12):
    """The `n` mapped files (or [heap]/[anon]) holding most of the process's RSS:
    [(name, RSS MiB, PSS MiB)], to show where the compute service's memory is."""
    per = {}
    cur = None
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps").read_text().splitlines():
            parts = line.split()
            if not parts[0].endswith(":"):
                cur = parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else "[anon]"
                continue
            if parts[0] in ("Rss:", "Pss:"):
                r = per.setdefault(cur, [0.0, 0.0])
                r[0 if parts[0] == "Rss:" else 1] += int(parts[1]) / 1024
    except OSError:
        return []
    return sorted(((k, v[0], v[1]) for k, v in per.items()), key=lambda x: -x[1])[:n]


def service(host):
    code, b = req("GET", "/os-services?binary=nova-compute")
    return next((s for s in b["services"] if s["host"] == host), None) if code == 200 else None


def measure(name, host, argv, cwd, plane_dir, image, flavor, boots):
    """One compute service through start, N boots, memory and SIGTERM."""
    print(f"== {name}: starting ({host})", flush=True)
    log = open(pathlib.Path(cwd) / f"{name}.out", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    up = wait(lambda: (lambda s: s and s["state"] == "up")(service(host)), timeout=120, every=0.02)
    t_up = time.monotonic() - t0
    assert up, f"{name} never came up in the service list"
    assert wait(lambda: consumers(f"compute.{host}") > 0, timeout=120, every=0.02), f"{name} never consumed compute.{host}"
    t_consuming = time.monotonic() - t0
    assert wait(lambda: any(h["hypervisor_hostname"] == host for h in req("GET", "/os-hypervisors")[1]["hypervisors"]),
                timeout=120, every=0.02), f"{name}: no hypervisor"
    t_hypervisor = time.monotonic() - t0
    print(f"   up {t_up:.2f} s, consuming {t_consuming:.2f} s, hypervisor listed {t_hypervisor:.2f} s", flush=True)
    # The scheduler maps a new host into cell1 every few seconds; boots wait for that.
    sql = f"select 1 from host_mappings where host='{host}'"
    assert wait(lambda: subprocess.run(["bash", str(PLANE), "sql", "nova_api", sql], capture_output=True, text=True).stdout.strip(),
                timeout=60, every=0.2), f"{name}: host never mapped"
    creates, deletes = [], []
    for i in range(boots):
        t = time.monotonic()
        code, b = req("POST", "/servers", {"server": {"name": f"bench-{name}-{i}", "imageRef": image, "flavorRef": flavor,
                                                      "networks": "none"}})
        assert code == 202, b
        sid = b["server"]["id"]

        def active():
            s = req("GET", f"/servers/{sid}")[1]["server"]
            if s["status"] == "ERROR":
                raise SystemExit(f"{name}: server {sid} ERROR: {s.get('fault')}")
            return s["status"] == "ACTIVE" and s["OS-EXT-STS:task_state"] is None and s["OS-EXT-SRV-ATTR:host"] == host
        assert wait(active, timeout=120, every=0.02), f"{name}: {sid} never ACTIVE"
        creates.append(time.monotonic() - t)
        t = time.monotonic()
        assert req("DELETE", f"/servers/{sid}")[0] == 204
        assert wait(lambda: req("GET", f"/servers/{sid}")[0] == 404, timeout=120, every=0.02), f"{name}: {sid} never deleted"
        deletes.append(time.monotonic() - t)
    time.sleep(2)
    rss, pss = memory(proc.pid)
    largest = largest_mappings(proc.pid)
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    t_exit = time.monotonic() - t
    log.close()
    # Leave the next run alone: the scheduler must not pick this (now stopped) service.
    s = service(host)
    req("PUT", f"/os-services/{s['id']}", {"status": "disabled", "disabled_reason": "benchmark done"})
    r = {"start_to_up_s": t_up, "start_to_consuming_s": t_consuming, "start_to_hypervisor_s": t_hypervisor,
         "create_to_active_s": creates, "delete_s": deletes, "rss_mib": rss, "pss_mib": pss, "sigterm_to_exit_s": t_exit,
         "exit_code": proc.returncode, "largest_mappings": largest}
    print(f"   create→ACTIVE median {statistics.median(creates):.3f} s, RSS {rss:.1f} MiB, PSS {pss:.1f} MiB, "
          f"SIGTERM→exit {t_exit:.3f} s", flush=True)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=int(os.environ.get("CA_BENCH_NOVA_BOOTS", "20")))
    args = ap.parse_args()
    print("== the nova 34 control plane (fresh databases)", flush=True)
    subprocess.run(["bash", str(PLANE), "start"], check=True)
    plane = pathlib.Path(subprocess.run(["bash", str(PLANE), "dir"], capture_output=True, text=True, check=True).stdout.strip())
    try:
        image = upload_image(b"\0" * 1048576, name="bench-tiny")
        code, b = req("POST", "/flavors", {"flavor": {"name": "bench", "ram": 256, "vcpus": 1, "disk": 1}})
        assert code == 200, b
        flavor = b["flavor"]["id"]
        work = pathlib.Path(tempfile.mkdtemp(prefix="nova-bench-"))
        conf = work / "agent.conf"
        conf.write_text(f"""[DEFAULT]
control_plane = nova
host = agent-bench
state_path = {work / 'state'}
plugin_dir = {RELEASE}
compute_driver = libvirt
image_fetcher = glance

[libvirt]
connection_uri = test:///default

[glance]
api_servers = {GLANCE}
cache_dir = {work / 'state' / '_base'}
""")
        results = {}
        # nova.conf first, the agent's own file after it, as an operator runs it.
        results["agent"] = measure("agent", "agent-bench",
                                   [str(RELEASE / "compute-agent"), "--config-file", "nova.conf", "--config-file",
                                    "nova-services.conf", "--config-file", str(conf)], plane, plane, image, flavor, args.boots)
        # Like for like with nova's fake driver: the agent on the C test hypervisor (memhv,
        # built by Benchmarks/run.sh), which loads no hypervisor library either.
        memhv_dir = work / "plugins-memhv"
        memhv_dir.mkdir()
        shutil.copy(os.environ["CA_BENCH_MEMHV"], memhv_dir / "libcompute_hypervisor_memhv.so")
        for name in ["libcompute_image_glance.so", "libcompute_network_noop.so"]:
            shutil.copy(RELEASE / name, memhv_dir / name)
        memhv_conf = work / "agent-memhv.conf"
        memhv_conf.write_text(conf.read_text().replace("host = agent-bench", "host = agent-memhv-bench")
                              .replace(f"plugin_dir = {RELEASE}", f"plugin_dir = {memhv_dir}")
                              .replace("compute_driver = libvirt", "compute_driver = memhv")
                              .replace("[libvirt]\nconnection_uri = test:///default\n", "")
                              .replace(f"state_path = {work / 'state'}", f"state_path = {work / 'state-memhv'}"))
        results["agent-memhv"] = measure("agent (memhv)", "agent-memhv-bench",
                                         [str(RELEASE / "compute-agent"), "--config-file", "nova.conf", "--config-file",
                                          "nova-services.conf", "--config-file", str(memhv_conf)], plane, plane, image, flavor,
                                         args.boots)
        results["nova-compute"] = measure("nova-compute", "peer-host",
                                          [str(NOVA_VENV / "bin" / "nova-compute"), "--config-file", "nova.conf",
                                           "--config-file", "nova-services.conf"], plane, plane, image, flavor, args.boots)
    finally:
        subprocess.run(["bash", str(PLANE), "stop"], capture_output=True)
    report(results, args.boots)


def report(results, boots):
    a, n, m = results["agent"], results["nova-compute"], results["agent-memhv"]
    med = statistics.median

    def spread(v):
        return f"{med(v):.3f} [{min(v):.3f}–{max(v):.3f}]"
    rows = [
        ("server create → ACTIVE (s, median [min–max])", spread(a["create_to_active_s"]), spread(n["create_to_active_s"]),
         med(a["create_to_active_s"]) / med(n["create_to_active_s"]), "≤ 1 (no slower)", med(a["create_to_active_s"]) <= med(n["create_to_active_s"])),
        ("delete → gone (s, median)", f"{med(a['delete_s']):.3f}", f"{med(n['delete_s']):.3f}",
         med(a["delete_s"]) / med(n["delete_s"]), "", None),
        ("RSS of the compute service (MiB)", f"{a['rss_mib']:.1f}", f"{n['rss_mib']:.1f}", a["rss_mib"] / n["rss_mib"], "≤ 0.2",
         a["rss_mib"] <= n["rss_mib"] / 5),
        ("PSS of the compute service (MiB)", f"{a['pss_mib']:.1f}", f"{n['pss_mib']:.1f}", a["pss_mib"] / n["pss_mib"], "", None),
        ("RSS, like for like: the agent on memhv, the C test hypervisor (MiB)", f"{m['rss_mib']:.1f}", f"{n['rss_mib']:.1f}",
         m["rss_mib"] / n["rss_mib"], "≤ 0.2", m["rss_mib"] <= n["rss_mib"] / 5),
        ("server create → ACTIVE, the agent on memhv (s, median)", f"{med(m['create_to_active_s']):.3f}",
         f"{med(n['create_to_active_s']):.3f}", med(m["create_to_active_s"]) / med(n["create_to_active_s"]), "", None),
        ("start → `up` in the service list (s)", f"{a['start_to_up_s']:.3f}", f"{n['start_to_up_s']:.3f}",
         a["start_to_up_s"] / n["start_to_up_s"], "≤ 0.1 (10× faster)", a["start_to_up_s"] <= n["start_to_up_s"] / 10),
        ("start → consuming compute.<host> (s)", f"{a['start_to_consuming_s']:.3f}", f"{n['start_to_consuming_s']:.3f}",
         a["start_to_consuming_s"] / n["start_to_consuming_s"], "", None),
        ("start → listed in os-hypervisors (s)", f"{a['start_to_hypervisor_s']:.3f}", f"{n['start_to_hypervisor_s']:.3f}",
         a["start_to_hypervisor_s"] / n["start_to_hypervisor_s"], "", None),
        ("SIGTERM → exit (s)", f"{a['sigterm_to_exit_s']:.3f}", f"{n['sigterm_to_exit_s']:.3f}",
         a["sigterm_to_exit_s"] / max(n["sigterm_to_exit_s"], 1e-9), "", None),
    ]
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"# The agent vs nova-compute 34 (fake driver) under the same nova 34 control plane",
             "", f"`python3 Benchmarks/nova.py --boots {boots}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu}),"
             " nova 34.0.0 / placement 16.0.0 / glance 33.0.0 on MariaDB, RabbitMQ on loopback. The agent: release build,"
             " libvirt plugin on test:///default, glance image plugin (downloads and overlays the image); nova-compute:"
             " fake.SmallFakeDriver (does nothing on the host). Servers one after the other, each deleted before the next."
             " The agent is measured twice: with the libvirt plugin (which maps libvirt and its libraries) and, like for"
             " like with the fake driver, with memhv, the C test hypervisor (no hypervisor library).",
             "", "| metric | agent | nova-compute | ratio agent/nova | goal | met |", "|---|---|---|---|---|---|"]
    for name, av, nv, ratio, goal, met in rows:
        lines.append(f"| {name} | {av} | {nv} | {ratio:.3f} | {goal} | {'' if met is None else ('yes' if met else 'no')} |")
    lines.append("")
    lines.append(f"Exit codes after SIGTERM: agent {a['exit_code']}, nova-compute {n['exit_code']}.")
    lines.append("")
    lines.append("`listed in os-hypervisors` waits for nova-scheduler's periodic discover_hosts to map the new host into"
                 " the cell (nova-api skips unmapped hosts), so it moves with that period rather than with the service.")
    for label, r in (("agent", a), ("agent on memhv", m), ("nova-compute", n)):
        if r.get("largest_mappings"):
            lines += ["", f"Where the {label}'s RSS is (main process, the largest mappings by RSS; PSS shares pages"
                      " with other processes mapping them):", "", "| mapping | RSS MiB | PSS MiB |", "|---|---|---|"]
            lines += [f"| {name} | {rss:.2f} | {pss:.2f} |" for name, rss, pss in r["largest_mappings"]]
    out = ROOT / "Benchmarks" / "results"
    (out / "nova.md").write_text("\n".join(lines) + "\n")
    (out / "nova.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
