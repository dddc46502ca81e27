"""A rack on one broker: N agents (the real release binary, each its own host, state_path
and memhv test hypervisor, default intervals: report_state every 10 s, capabilities every
60 s) and, in the same run on the same broker, N minimal oslo.messaging compute services
that heartbeat the same way (rack_anchor.py, the anchor). For each group:

- time from launch until every member consumes its compute.<host> queue;
- a steady minute with the group alone on the broker (the agents also get builds spread
  over them): heartbeats received vs expected, the worst gap between two heartbeats of a
  host (late = more than 1 s over report_interval), the broker's CPU seconds and RSS over
  that minute (from /proc of beam.smp), the members' RSS and PSS (smaps_rollup);
- then both groups together through one broker restart (`rabbitmqctl stop_app` /
  `start_app`): time from start_app until every member of each group consumes again,
  with the spread (first to last).

    python3 Benchmarks/rack.py [--count 200]   (after Benchmarks/run.sh has built; or via run.sh)

Writes Benchmarks/results/rack.{md,json}. The broker's file-descriptor limit bounds the
count: each agent holds two connections (RPC and heartbeat lane) and each anchor one; the
script reads the limit from /proc and says how many agents it allows."""
import argparse
import json
import os
import pathlib
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pika

import bench

ROOT = bench.ROOT
REPORT_INTERVAL = 10.0
RESTART_HOLDS = (0, 5)


def beam_pid():
    """The broker's Erlang VM: its pid file, else the beam.smp that is not a rabbitmqctl
    (a CLI command runs its own beam.smp naming rabbit@localhost too)."""
    pidfile = pathlib.Path("/var/lib/rabbitmq/mnesia/rabbit@localhost.pid")
    if pidfile.exists() and pidfile.read_text().strip().isdigit():
        return int(pidfile.read_text().strip())
    for pid in subprocess.run(["pgrep", "beam.smp"], capture_output=True, text=True).stdout.split():
        if b"rabbitmqcli" not in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise RuntimeError("no RabbitMQ broker process found")


def proc_cpu(pid):
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem(pid):
    """(RSS MiB, PSS MiB) of a process."""
    rss = pss = 0.0
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def fd_limit(pid):
    for line in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


class HeartbeatListener:
    """Consumes the `conductor` queue (report_state casts) and timestamps each by host."""

    def __init__(self):
        self.beats = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.ready = threading.Event()
        self.thread.start()
        self.ready.wait(10)

    def run(self):
        params = pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials(bench.USER, bench.PASSWORD))
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.exchange_declare("nova", "topic", durable=False, auto_delete=False)
        ch.queue_declare("conductor", durable=False, auto_delete=False)
        ch.queue_bind("conductor", "nova", "conductor")
        ch.queue_purge("conductor")

        def on(ch_, method, props, body):
            now = time.monotonic()
            try:
                inner = json.loads(json.loads(body)["oslo.message"])
                if inner.get("method") == "report_state":
                    self.beats.setdefault(inner["args"]["service"]["host"], []).append(now)
            except (ValueError, KeyError, TypeError):
                pass

        ch.basic_consume("conductor", on, auto_ack=True)
        self.ready.set()
        while not self.stop.is_set():
            conn.process_data_events(time_limit=0.2)
        conn.close()


class ConsumerProbe:
    """A connection for passive declares of compute.<host> (its consumer count); a
    declare of a missing queue closes the channel, so a new one is opened."""

    def __init__(self):
        params = pika.ConnectionParameters("127.0.0.1", 5672, "/", pika.PlainCredentials(bench.USER, bench.PASSWORD),
                                           connection_attempts=100, retry_delay=0.05)
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


def wait_all(hosts, t0, timeout, label):
    """Seconds from t0 until every host consumes; also the time each group of 10 % made it."""
    done_at = {}
    deadline = time.monotonic() + timeout
    probe = None
    while time.monotonic() < deadline:
        try:
            probe = probe or ConsumerProbe()
            pending = [h for h in hosts if h not in done_at]
            for h in pending:
                try:
                    if probe.ch.queue_declare(f"compute.{h}", passive=True).method.consumer_count >= 1:
                        done_at[h] = time.monotonic() - t0
                except pika.exceptions.ChannelClosedByBroker:
                    probe.ch = probe.conn.channel()
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError, pika.exceptions.ChannelWrongStateError):
            if probe:
                probe.close()
            probe = None
            time.sleep(0.05)
            continue
        if len(done_at) == len(hosts):
            break
        time.sleep(0.05)
    if probe:
        probe.close()
    if len(done_at) < len(hosts):
        raise RuntimeError(f"{label}: only {len(done_at)} of {len(hosts)} consuming after {timeout} s")
    times = sorted(done_at.values())
    return {"all_s": times[-1], "first_s": times[0], "median_s": statistics.median(times), "spread_s": times[-1] - times[0]}


def wait_all_listed(groups, t0, timeout):
    """For every group: seconds from t0 until each member's compute.<host> has a consumer,
    seen by polling `rabbitmqctl list_queues` (one call sees both groups at once, so they
    share its resolution; each call is timed and the midpoint used)."""
    seen = {g.kind: {} for g in groups}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(len(seen[g.kind]) < len(g.hosts) for g in groups):
        before = time.monotonic()
        p = subprocess.run(bench.RABBITMQCTL + ["list_queues", "name", "consumers"], capture_output=True, text=True)
        at = (before + time.monotonic()) / 2 - t0
        consuming = {l.split("\t")[0] for l in p.stdout.splitlines() if l.count("\t") == 1 and l.split("\t")[1].strip() not in ("0", "")}
        for g in groups:
            for h in g.hosts:
                if h not in seen[g.kind] and f"compute.{h}" in consuming:
                    seen[g.kind][h] = at
        time.sleep(0.05)
    out = {}
    for g in groups:
        times = sorted(seen[g.kind].values())
        if len(times) < len(g.hosts):
            raise RuntimeError(f"{g.kind}: only {len(times)} of {len(g.hosts)} consuming after {timeout} s")
        out[g.kind] = {"all_s": times[-1], "first_s": times[0], "median_s": statistics.median(times),
                       "spread_s": times[-1] - times[0]}
    return out


def reconnect_times(groups, since_wall):
    """Seconds from `since_wall` (wall clock) until each member's last connection was
    made, from the broker's own `connected_at` (ms) of every connection — exact, unlike
    polling. Agents name their connections `compute-agent:<lane>:<host>`; oslo.messaging
    names the anchors' `rack_anchor.py:<pid>:<uuid>`."""
    p = subprocess.run(bench.RABBITMQCTL + ["list_connections", "client_properties", "connected_at", "--formatter", "json"],
                       capture_output=True, text=True, check=True)
    rows = json.loads(p.stdout)
    by_pid = {}
    for g in groups:
        for proc, h in zip(g.procs, g.hosts):
            by_pid[proc.pid] = (g.kind, h)
    latest = {g.kind: {} for g in groups}
    for row in rows:
        props = {k: v for k, _, v in row["client_properties"]} if isinstance(row["client_properties"], list) else row["client_properties"]
        name = str(props.get("connection_name", ""))
        at = row["connected_at"] / 1000 - since_wall
        if name.startswith("compute-agent:"):
            key = ("agent", name.split(":", 2)[2])
        else:
            parts = name.split(":")
            key = by_pid.get(int(parts[1])) if len(parts) >= 3 and parts[1].isdigit() else None
        if key and key[0] in latest:
            latest[key[0]][key[1]] = max(at, latest[key[0]].get(key[1], at))
    out = {}
    for g in groups:
        times = sorted(latest[g.kind].get(h) for h in g.hosts if h in latest[g.kind])
        if len(times) < len(g.hosts):
            raise RuntimeError(f"{g.kind}: the broker lists connections of only {len(times)} of {len(g.hosts)} members")
        out[g.kind] = {"all_s": times[-1], "first_s": times[0], "median_s": statistics.median(times),
                       "p90_s": times[int(len(times) * 0.9) - 1], "spread_s": times[-1] - times[0]}
    return out


class Group:
    def __init__(self, kind, count, plugin_dir=None):
        self.kind, self.count = kind, count
        self.hosts = [f"rack-{kind}-{i:03d}-{uuid.uuid4().hex[:4]}" for i in range(count)]
        self.procs = []
        self.plugin_dir = plugin_dir

    def argv(self, i, host):
        if self.kind == "agent":
            d = bench.WORK / host
            d.mkdir()
            conf = d / "agent.conf"
            conf.write_text(f"[DEFAULT]\nhost = {host}\ntransport_url = {bench.URL}\nstate_path = {d}/state\n"
                            f"plugin_dir = {self.plugin_dir}\ncompute_driver = memhv\nnotification_driver = noop\n"
                            f"\n[memhv]\nvcpus = 8\nmemory_mb = 16384\n")
            return [str(bench.AGENT), "--config-file", str(conf)]
        return [sys.executable, str(ROOT / "Benchmarks" / "rack_anchor.py"), bench.URL, host]

    def launch(self):
        t0 = time.monotonic()
        for i, h in enumerate(self.hosts):
            log = open(bench.WORK / f"{h}.log", "ab")
            self.procs.append(subprocess.Popen(self.argv(i, h), stdout=log, stderr=subprocess.STDOUT))
        return t0

    def memory(self):
        rss, pss = zip(*(proc_mem(p.pid) for p in self.procs))
        return {"rss_mib_median": statistics.median(rss), "pss_mib_median": statistics.median(pss),
                "pss_mib_total": sum(pss)}

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def steady_minute(group, listener, beam, builds=False):
    """60 s with the group alone: heartbeats, broker CPU/RSS, builds spread over agents."""
    time.sleep(REPORT_INTERVAL + 2)  # every member has beaten at least once
    t0 = time.monotonic()
    cpu0 = proc_cpu(beam)
    built = [0]
    stop = threading.Event()

    def build_load():
        clients = {}
        while not stop.is_set():
            h = random.choice(group.hosts)
            c = clients.setdefault(h, bench.rpc_client(h))
            c.cast({}, "build_and_run_instance", instance={"uuid": str(uuid.uuid4()), "name": "vm", "vcpus": 1, "memory_mb": 64})
            built[0] += 1
            stop.wait(0.5)

    loader = threading.Thread(target=build_load, daemon=True) if builds else None
    if loader:
        loader.start()
    rss_samples = []
    while time.monotonic() - t0 < 60:
        rss_samples.append(proc_mem(beam)[0])
        time.sleep(5)
    stop.set()
    cpu = proc_cpu(beam) - cpu0
    t1 = time.monotonic()
    received = late = 0
    worst = 0.0
    for h in group.hosts:
        beats = [b for b in listener.beats.get(h, []) if t0 - REPORT_INTERVAL <= b <= t1]
        window = [b for b in beats if t0 <= b <= t1]
        received += len(window)
        for a, b in zip(beats, beats[1:]):
            gap = b - a
            worst = max(worst, abs(gap - REPORT_INTERVAL))
            if gap > REPORT_INTERVAL + 1:
                late += 1
    expected = len(group.hosts) * 60 / REPORT_INTERVAL
    return {"heartbeats_received": received, "heartbeats_expected": expected, "late_beyond_1s": late,
            "worst_deviation_s": worst, "broker_cpu_s_per_min": cpu, "broker_rss_mib": max(rss_samples),
            "builds_cast": built[0], **group.memory()}


def floor_programs():
    """RSS of the floors named in the issue, measured now: a C program holding a
    test:///default libvirt connection, and Swift programs at three import levels."""
    out = {}
    work = bench.WORK / "floors"
    work.mkdir()
    c = work / "virt.c"
    c.write_text('#include <libvirt/libvirt.h>\n#include <unistd.h>\nint main(void){virConnectPtr c=virConnectOpen("test:///default");'
                 'if(!c)return 1;sleep(3);return 0;}\n')
    subprocess.run(["gcc", "-O2", "-o", str(work / "virt"), str(c), "-lvirt"], check=True)
    progs = {"c_libvirt_test_connection": [str(work / "virt")]}
    for name, imp in [("swift_stdlib", ""), ("swift_foundation_essentials", "import FoundationEssentials\n"),
                      ("swift_foundation", "import Foundation\n")]:
        src = work / f"{name}.swift"
        use = "_ = Date()\n" if imp else ""
        src.write_text(f"{imp}#if canImport(Glibc)\nimport Glibc\n#endif\n{use}sleep(3)\n")
        subprocess.run(["swiftc", "-O", "-o", str(work / name), str(src)], check=True, capture_output=True)
        progs[name] = [str(work / name)]
    for name, argv in progs.items():
        p = subprocess.Popen(argv)
        time.sleep(1.5)
        out[name] = proc_mem(p.pid)[0]
        p.wait()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=int(os.environ.get("CA_BENCH_RACK", "200")))
    args = ap.parse_args()
    bench.setup_broker_user()
    bench.TRANSPORT = bench.oslo_messaging.get_rpc_transport(bench.cfg.CONF, url=bench.URL)
    beam = beam_pid()
    limit = fd_limit(beam)
    # RabbitMQ keeps ~10 % of its descriptors for itself; an agent holds 2 connections.
    allows = int(limit * 0.9 / 2)
    bench.log(f"rack: broker pid {beam}, open-file limit {limit}: about {allows} agents fit")
    if args.count > allows:
        raise SystemExit(f"{args.count} agents need more descriptors than the broker's limit {limit} allows; raise it "
                         f"(ulimit -n before starting RabbitMQ, or LimitNOFILE= in its systemd unit)")
    results = {"count": args.count, "broker_fd_limit": limit, "agents_allowed_by_fd_limit": allows, "machine": bench.machine()}
    listener = HeartbeatListener()
    plugins = bench.memhv_plugin_dir()

    agents = Group("agent", args.count, plugins)
    bench.log(f"rack: launching {args.count} agents")
    t0 = agents.launch()
    results["agent_launch"] = wait_all(agents.hosts, t0, 300, "agents")
    bench.log(f"rack: agents consuming after {results['agent_launch']['all_s']:.2f} s; steady minute")
    results["agent_steady"] = steady_minute(agents, listener, beam, builds=True)

    anchors = Group("anchor", args.count)
    bench.log(f"rack: launching {args.count} oslo.messaging anchors")
    # The anchors' steady minute must be the anchors alone on the broker: pause the agents.
    for p in agents.procs:
        p.send_signal(19)  # SIGSTOP
    t0 = anchors.launch()
    results["anchor_launch"] = wait_all(anchors.hosts, t0, 900, "anchors")
    bench.log(f"rack: anchors consuming after {results['anchor_launch']['all_s']:.2f} s; steady minute")
    results["anchor_steady"] = steady_minute(anchors, listener, beam)
    for p in agents.procs:
        p.send_signal(18)  # SIGCONT
    time.sleep(REPORT_INTERVAL)

    listener.stop.set()
    # Two restarts with both groups connected: at once (stop_app then start_app), and with
    # the broker held down 5 s (a slower restart: whoever retries on a fixed schedule
    # may just miss it).
    for hold in RESTART_HOLDS:
        bench.log(f"rack: broker restart (held down {hold} s) with both groups connected")
        key = "" if hold == 0 else f"_held_{hold}s"
        stopping = time.monotonic()
        subprocess.run(bench.RABBITMQCTL + ["stop_app"], check=True, capture_output=True)
        stopped = time.monotonic()
        time.sleep(hold)
        starting = time.monotonic()
        subprocess.run(bench.RABBITMQCTL + ["start_app"], check=True, capture_output=True)
        started = time.monotonic()
        started_wall = time.time()
        # Times count from stop_app's start; one list_queues poll sees both groups.
        listed = wait_all_listed([agents, anchors], stopping, 300)
        results["agent_restart" + key], results["anchor_restart" + key] = listed["agent"], listed["anchor"]
        # Exact: the broker's connected_at of every member's connections, from start_app's return.
        exact = reconnect_times([agents, anchors], started_wall)
        results["agent_reconnect" + key], results["anchor_reconnect" + key] = exact["agent"], exact["anchor"]
        results["broker_stop_app_s" + key] = stopped - stopping
        results["broker_start_app_s" + key] = started - starting
        results["start_app_issued_after_s" + key] = starting - stopping
        bench.log(f"rack: all reconnected {exact['agent']['all_s']:.3f} s (agents) / {exact['anchor']['all_s']:.3f} s "
                  "(anchors) after start_app returned")
        time.sleep(REPORT_INTERVAL)
    results["floors_rss_mib"] = floor_programs()
    agents.stop()
    anchors.stop()
    write(results)


def write(r):
    out = bench.ROOT / "Benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "rack.json").write_text(json.dumps(r, indent=2))
    a, b = r["agent_steady"], r["anchor_steady"]
    m = r["machine"]
    ra, rb = r["agent_restart"], r["anchor_restart"]
    xa, xb = r["agent_reconnect"], r["anchor_reconnect"]
    ya, yb = r["agent_reconnect_held_5s"], r["anchor_reconnect_held_5s"]
    md = f"""# A rack on one broker ({r['count']} agents vs {r['count']} oslo.messaging anchors)

Run `{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}` by `Benchmarks/rack.py` on {m['cores']} cores ({m['cpu']}),
RabbitMQ {m['rabbitmq']}, {m['swift']}. Agents: the release binary with the memhv test hypervisor,
default intervals (report_state 10 s, capabilities 60 s). Anchors: `rack_anchor.py` (oslo.messaging
{m['oslo.messaging']}, an RPC server + the same casts). Broker open-file limit {r['broker_fd_limit']}: about
{r['agents_allowed_by_fd_limit']} agents (2 connections each); raise it with `ulimit -n` before starting
RabbitMQ (or `LimitNOFILE=` in its unit).

| measure | agents | anchors | ratio |
|---|---|---|---|
| launch → all consuming (s) | {r['agent_launch']['all_s']:.2f} | {r['anchor_launch']['all_s']:.2f} | {r['agent_launch']['all_s'] / r['anchor_launch']['all_s']:.2f} |
| heartbeats received / expected in a steady minute | {a['heartbeats_received']} / {a['heartbeats_expected']:.0f} | {b['heartbeats_received']} / {b['heartbeats_expected']:.0f} | |
| heartbeats late beyond 1 s | {a['late_beyond_1s']} | {b['late_beyond_1s']} | |
| worst deviation from the 10 s period (s) | {a['worst_deviation_s']:.3f} | {b['worst_deviation_s']:.3f} | |
| broker CPU over the steady minute (s) | {a['broker_cpu_s_per_min']:.2f} | {b['broker_cpu_s_per_min']:.2f} | {a['broker_cpu_s_per_min'] / b['broker_cpu_s_per_min']:.2f} |
| broker RSS (MiB, max) | {a['broker_rss_mib']:.0f} | {b['broker_rss_mib']:.0f} | |
| member RSS (MiB, median) | {a['rss_mib_median']:.1f} | {b['rss_mib_median']:.1f} | {a['rss_mib_median'] / b['rss_mib_median']:.2f} |
| member PSS (MiB, median) | {a['pss_mib_median']:.1f} | {b['pss_mib_median']:.1f} | {a['pss_mib_median'] / b['pss_mib_median']:.2f} |
| PSS of the whole group (MiB) | {a['pss_mib_total']:.0f} | {b['pss_mib_total']:.0f} | |
| after the broker restart: all consuming again (s from stop_app) | {ra['all_s']:.2f} | {rb['all_s']:.2f} | {ra['all_s'] / rb['all_s']:.2f} |
| … first / median / spread (s) | {ra['first_s']:.2f} / {ra['median_s']:.2f} / {ra['spread_s']:.2f} | {rb['first_s']:.2f} / {rb['median_s']:.2f} / {rb['spread_s']:.2f} | |
| after the broker restart: every connection of every member made again (s from start_app's return, the broker's `connected_at`) | {xa['all_s']:.3f} | {xb['all_s']:.3f} | |
| … first / median / p90 / spread (s) | {xa['first_s']:.3f} / {xa['median_s']:.3f} / {xa['p90_s']:.3f} / {xa['spread_s']:.3f} | {xb['first_s']:.3f} / {xb['median_s']:.3f} / {xb['p90_s']:.3f} / {xb['spread_s']:.3f} | |
| the same, broker held down 5 s between stop_app and start_app | {ya['all_s']:.3f} | {yb['all_s']:.3f} | |
| … first / median / p90 / spread (s) | {ya['first_s']:.3f} / {ya['median_s']:.3f} / {ya['p90_s']:.3f} / {ya['spread_s']:.3f} | {yb['first_s']:.3f} / {yb['median_s']:.3f} / {yb['p90_s']:.3f} / {yb['spread_s']:.3f} | |

Builds cast over the agents during their steady minute: {a['builds_cast']}. The restart:
`stop_app` took {r['broker_stop_app_s']:.1f} s, `start_app` was issued {r['start_app_issued_after_s']:.1f} s after
stop_app began and took {r['broker_start_app_s']:.1f} s; from its return, `rabbitmqctl list_queues name
consumers` is polled (each poll sees both groups; a poll takes ~0.5 s under the reconnect storm,
which is the resolution of these figures).
The exact rows come from the broker's `connected_at` of each connection (ms), counted from
`start_app`'s return: no polling resolution.
A negative time: the connection was made while `start_app` was still running (the
listener opens before the command returns).
Goals: 0 late heartbeats ({'met' if a['late_beyond_1s'] == 0 else 'MISSED'}); back after a restart no later than the
anchor (exact rows): at once **{'met' if xa['all_s'] <= xb['all_s'] else 'MISSED'}**
({xa['all_s'] - xb['all_s']:+.3f} s), held down 5 s **{'met' if ya['all_s'] <= yb['all_s'] else 'MISSED'}**
({ya['all_s'] - yb['all_s']:+.3f} s).

Floors measured in the same run (RSS, MiB): """ + ", ".join(f"{k} {v:.1f}" for k, v in r["floors_rss_mib"].items()) + "\n"
    (out / "rack.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
