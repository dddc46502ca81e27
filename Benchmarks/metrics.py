"""What the metrics endpoint costs: the 20,000-cast drain with `[metrics] listen` set vs
unset (goal: at most 3 % slower), idle resident memory with and without the endpoint
(goal: at most 2 MiB added), and the time and size of one scrape. Metrics on and off run
alternately in one run on the same broker, CA_BENCH_REPS times (default 5); medians.
Writes Benchmarks/results/metrics.{md,json}.

Run through Benchmarks/run.sh (it builds and starts the broker), or after it:
    CA_BENCH_TOOL=.build/bench/amqp_tool CA_BENCH_MEMHV=.build/bench/libcompute_hypervisor_memhv.so \\
        python3 Benchmarks/metrics.py"""
import json
import os
import socket
import statistics
import subprocess
import time

import bench

REPS = int(os.environ.get("CA_BENCH_METRICS_REPS", "8"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def idle_rss(with_metrics):
    """VmRSS after 5 s idle (heartbeats every 10 s, periodic tasks at their defaults); with
    the endpoint, after a first scrape too (what a Prometheus-scraped agent holds)."""
    port = free_port()
    extra = f"[metrics]\nlisten = 127.0.0.1:{port}\n" if with_metrics else ""
    s = bench.Server("agent", extra=extra)
    s.start()
    scrape = None
    if with_metrics:
        t0 = time.perf_counter()
        body = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True, check=True).stdout
        scrape = (time.perf_counter() - t0, len(body))
    time.sleep(5)
    if with_metrics:
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/metrics"], check=True)
        time.sleep(0.5)
    mem = s.status()
    s.stop()
    return mem["VmRSS"], mem["RssAnon"], scrape


def main():
    bench.setup_broker_user()
    bench.TRANSPORT = bench.oslo_messaging.get_rpc_transport(bench.cfg.CONF, url=bench.URL)
    r = {"drain_off": [], "drain_on": [], "cpu_us_off": [], "cpu_us_on": [], "rss_off": [], "rss_on": [], "anon_off": [], "anon_on": [],
         "scrape_s": [], "scrape_bytes": []}
    for rep in range(REPS):
        for on in ([False, True] if rep % 2 == 0 else [True, False]):
            tag = "on" if on else "off"
            bench.log(f"metrics rep {rep + 1}/{REPS}: drain with metrics {tag}")
            rate, mem = bench.drain("agent", extra=f"[metrics]\nlisten = 127.0.0.1:{free_port()}\n" if on else "")
            r[f"drain_{tag}"].append(rate)
            r[f"cpu_us_{tag}"].append(mem["drain_cpu_s"] / (bench.DRAIN_N + 1) * 1e6)
            rss, anon, scrape = idle_rss(on)
            r[f"rss_{tag}"].append(rss)
            r[f"anon_{tag}"].append(anon)
            if scrape:
                r["scrape_s"].append(scrape[0])
                r["scrape_bytes"].append(scrape[1])
    med = {k: statistics.median(v) for k, v in r.items()}
    slower = 1 - med["drain_on"] / med["drain_off"]
    cpu_more = med["cpu_us_on"] / med["cpu_us_off"] - 1
    added = med["rss_on"] - med["rss_off"]
    out = {"machine": bench.machine(), "reps": REPS, "samples": r, "medians": med,
           "drain_slowdown": slower, "drain_cpu_added": cpu_more, "idle_rss_added_mib": added}
    results = bench.ROOT / "Benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(out, indent=2))
    m = out["machine"]
    md = f"""# Metrics endpoint cost

Run `{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}` by `Benchmarks/metrics.py` (via `Benchmarks/run.sh`) on
{m['cores']} cores ({m['cpu']}), RabbitMQ {m['rabbitmq']}, {m['swift']}. Release build, `test:///default` libvirt
plugin, {REPS} alternating repetitions each; medians (min–max).

| measure | metrics off | metrics on | result | goal |
|---|---|---|---|---|
| drain of {bench.DRAIN_N:,} casts + 1 call (msg/s) | {med['drain_off']:,.0f} ({min(r['drain_off']):,.0f}–{max(r['drain_off']):,.0f}) | {med['drain_on']:,.0f} ({min(r['drain_on']):,.0f}–{max(r['drain_on']):,.0f}) | {abs(slower) * 100:.1f} % {'slower' if slower > 0 else 'faster'} | ≤ 3 % slower: {'met' if slower <= 0.03 else 'MISSED'} |
| agent CPU per drained message (µs) | {med['cpu_us_off']:.1f} ({min(r['cpu_us_off']):.1f}–{max(r['cpu_us_off']):.1f}) | {med['cpu_us_on']:.1f} ({min(r['cpu_us_on']):.1f}–{max(r['cpu_us_on']):.1f}) | {cpu_more * 100:+.1f} % | (the agent's own cost, less noisy than the rate) |
| idle RSS (MiB) | {med['rss_off']:.1f} | {med['rss_on']:.1f} | {added:+.2f} MiB | ≤ 2 MiB: {'met' if added <= 2 else 'MISSED'} |
| idle anonymous RSS (MiB) | {med['anon_off']:.1f} | {med['anon_on']:.1f} | {med['anon_on'] - med['anon_off']:+.2f} MiB | |
| one scrape of a fresh agent | | {med['scrape_s'] * 1000:.1f} ms, {med['scrape_bytes'] / 1024:.1f} KiB | | |

The drain rate is noisy on 2 cores shared with the broker: compare the ranges, not only the medians.
"""
    (results / "metrics.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
