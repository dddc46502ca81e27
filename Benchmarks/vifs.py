"""Network plug benchmark (issue 15), ratio measured in one run: plug + unplug of 200 VIFs
through the linuxbridge plugin (the real path: builds and terminates through the agent, 4
instances × 50 VIFs on test:///default) against the same kernel work done by `ip` commands
(os-vif's way: a tap, enslave, MTU, up, then delete — one `ip` process per step), and the
agent's RSS before and after. Writes Benchmarks/results/vifs.{md,json}."""
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Benchmarks"))
import bench  # noqa: E402

N, PER = 200, 50


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def with_ip(bridge):
    taps = [f"cbip{i:04d}" for i in range(N)]
    t0 = time.perf_counter()
    for t in taps:
        ip("tuntap", "add", "dev", t, "mode", "tap")
        ip("link", "set", t, "master", bridge)
        ip("link", "set", t, "mtu", "1450")
        ip("link", "set", t, "up")
    for t in taps:
        ip("link", "del", t)
    return time.perf_counter() - t0


def with_agent(bridge):
    import oslo_messaging
    from oslo_config import cfg
    lb = bench.WORK / "lb"
    lb.mkdir(exist_ok=True)
    a = bench.Server("agent", extra="network_plugin = linuxbridge",
                     sections={"libvirt": {"connection_uri": "test:///default"}, "linuxbridge": {"state_dir": str(lb)}})
    a.start()
    try:
        c = bench.rpc_client(a.host, timeout=120)
        before = a.status()["VmRSS"]
        uuids = []
        t0 = time.perf_counter()
        for n in range(N // PER):
            vifs = [{"id": str(uuid.uuid4()), "address": "52:54:00:%02x:%02x:%02x" % (n, i // 256, i % 256), "type": "bridge",
                     "network": {"id": "n", "bridge": bridge, "meta": {"mtu": 1450}, "subnets": []}} for i in range(PER)]
            u = str(uuid.uuid4())
            c.call({}, "build_and_run_instance", instance={"uuid": u, "name": f"v{n}", "vcpus": 1, "memory_mb": 64, "vifs": vifs})
            uuids.append(u)
        for u in uuids:
            c.call({}, "terminate_instance", instance_uuid=u)
        took = time.perf_counter() - t0
        return took, before, a.status()["VmRSS"]
    finally:
        a.stop()


def main():
    import oslo_messaging
    from oslo_config import cfg
    bench.setup_broker_user()
    oslo_messaging.set_transport_defaults("nova")
    bench.TRANSPORT = oslo_messaging.get_rpc_transport(cfg.CONF, url=bench.URL)
    bridge = "cbbench" + uuid.uuid4().hex[:4]
    ip("link", "add", bridge, "type", "bridge")
    try:
        anchor = min(with_ip(bridge) for _ in range(2))
        agent, rss0, rss1 = min((with_agent(bridge) for _ in range(2)), key=lambda r: r[0])
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    r = {"machine": bench.machine(), "vifs": N, "ip_commands_s": anchor, "agent_s": agent, "ratio": anchor / agent,
         "agent_rss_before_mib": rss0, "agent_rss_after_mib": rss1}
    out = ROOT / "Benchmarks" / "results"
    (out / "vifs.json").write_text(json.dumps(r, indent=2) + "\n")
    md = f"""# VIF plug benchmark (`Benchmarks/vifs.py`, run by `Benchmarks/run.sh`)

Machine: {r['machine']}. Best of 2.

| work for {N} VIFs (tap, enslave, MTU, up; then delete) | seconds |
|---|---|
| `ip` commands (one process per step, os-vif's way) | {anchor:.3f} |
| the agent: 4 builds × 50 VIFs + 4 terminates, linuxbridge plugin over rtnetlink, test:///default | {agent:.3f} |
| **ratio** (goal >= 10×) | **{anchor / agent:.1f}×** |

Agent RSS before / after the 200 plugs and unplugs: {rss0:.1f} / {rss1:.1f} MiB.
The agent's figure includes everything a build and a terminate do (journal writes, the
hypervisor plugin), not only the plugs.
"""
    (out / "vifs.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
