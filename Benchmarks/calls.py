"""Native call latency against the broker's own floor, with the connection threads'
hand-back wait off and on (`[oslo_messaging_rabbit] handback_wait_us`, agent and
computectl alike), in one run, alternating, plus the CPU each call costs the agent, and a
timeline of one call's syscalls on both sides (strace) so a reader sees the thread hops.

    python3 Benchmarks/calls.py   (after Benchmarks/run.sh has built; or via run.sh)

The floor: `amqp_tool rtt`, one librabbitmq connection publishing to a queue it consumes
itself, one thread, no wake-ups; a call crosses the broker twice. Goal (issue 17): call
p50 ≤ 1.5 × 2 × that floor.

Writes Benchmarks/results/calls.{md,json}."""
import collections
import json
import os
import pathlib
import re
import statistics
import subprocess
import time

import bench

CALLS = int(os.environ.get("CA_BENCH_CALLS", "3000"))
REPS = int(os.environ.get("CA_BENCH_REPS", "3"))
# None: the default; CA_BENCH_HANDBACK_US tries another value for "on".
VARIANTS = [("off", 0), ("on", int(os.environ["CA_BENCH_HANDBACK_US"]) if "CA_BENCH_HANDBACK_US" in os.environ else None)]


def ctl_config(variant_us):
    path = bench.WORK / f"ctl-{variant_us}.conf"
    text = "[DEFAULT]\n"
    if variant_us is not None:
        text += f"[oslo_messaging_rabbit]\nhandback_wait_us = {variant_us}\n"
    path.write_text(text)
    return path


def agent(variant_us):
    extra = "compute_driver = memhv"
    sections = {}
    if variant_us is not None:
        sections["oslo_messaging_rabbit"] = {"handback_wait_us": variant_us}
    s = bench.Server("agent", plugin_dir=bench.memhv_plugin_dir(), extra=extra, sections=sections)
    s.start()
    time.sleep(0.5)
    return s


def calls(s, variant_us, n, prefix=()):
    out = subprocess.run([*prefix, str(bench.CTL), "bench-calls", "--config-file", str(ctl_config(variant_us)),
                          "--transport-url", bench.URL, "--host", s.host, "--count", str(n)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure():
    rows = collections.defaultdict(list)
    for rep in range(REPS):
        rows["floor_traversal_ms"].append(bench.broker_floor())
        for name, us in VARIANTS:
            bench.log(f"rep {rep + 1}/{REPS}: {CALLS} sequential native calls, hand-back wait {name}")
            s = agent(us)
            try:
                calls(s, us, 200)
                cpu0 = s.cpu_seconds()
                r = calls(s, us, CALLS)
                cpu = s.cpu_seconds() - cpu0
            finally:
                s.stop()
            rows[f"{name}_p50_ms"].append(r["p50_ms"])
            rows[f"{name}_p99_ms"].append(r["p99_ms"])
            rows[f"{name}_agent_cpu_us_per_call"].append(cpu / CALLS * 1e6)
    return {k: statistics.median(v) for k, v in rows.items()}, dict(rows)


SYSCALLS = "poll,ppoll,read,write,sendto,recvfrom,futex,sched_yield"
LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


def parse_trace(path, who, names):
    """(time, thread, what) per syscall; a blocking call shows where it starts and where it
    returns (`… returns`: the thread woke up)."""
    events = []
    for line in pathlib.Path(path).read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if not m:
            continue
        tid, ts, text = m.groups()
        r = RESUMED.match(text)
        call, what = (r.group(1), f"{r.group(1)} returns{r.group(2)}") if r else (text.split("(", 1)[0], text)
        if call == "sched_yield" or "EAGAIN" in what or "ETIMEDOUT" in what:
            continue
        events.append((float(ts), f"{who}/{names.get(tid, tid)}", what[:90]))
    return events


def thread_names(pid):
    names = {}
    for t in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            names[t.name] = (t / "comm").read_text().strip()
        except OSError:
            pass
    return names


def is_publish(what):
    """The last frame of a publish (its body: librabbitmq sends method and header frames
    with MSG_MORE, then the body)."""
    m = re.match(r'^sendto\(\d+, "[^"]*"(?:\.\.\.)?, (\d+), MSG_NOSIGNAL,', what)
    return bool(m) and int(m.group(1)) >= 100


def timeline(variant_us):
    """One call's syscalls, both sides, in time order: from computectl's second-to-last
    request publish of 30 calls under strace to its last one."""
    s = agent(variant_us)
    traces = bench.WORK / f"trace-{variant_us}"
    traces.mkdir()
    try:
        names = thread_names(s.proc.pid)
        st = subprocess.Popen(["strace", "-f", "-ttt", "-s", "0", "-e", f"trace={SYSCALLS}", "-o", str(traces / "agent"),
                               "-p", str(s.proc.pid)], stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        calls(s, variant_us, 30, prefix=("strace", "-f", "-ttt", "-s", "0", "-e", f"trace={SYSCALLS}",
                                         "-o", str(traces / "ctl")))
        time.sleep(0.3)
        st.terminate()
        st.wait()
    finally:
        s.stop()
    ctl = parse_trace(traces / "ctl", "ctl", {})
    starts = [e[0] for e in ctl if is_publish(e[2])]
    if len(starts) < 3:
        return []
    t1, t2 = starts[-2], starts[-1]
    ev = sorted(e for e in parse_trace(traces / "agent", "agent", names) + ctl if t1 <= e[0] < t2)
    return ev


def main():
    bench.setup_broker_user()
    med, raw = measure()
    goal = 1.5 * 2 * med["floor_traversal_ms"]
    lines = ["# Native call latency: hand-back wait off and on, against the broker floor", "",
             f"`python3 Benchmarks/calls.py` on {time.strftime('%Y-%m-%d')}: {REPS} reps × {CALLS} sequential calls "
             "(`computectl bench-calls`, method `ping`) to an agent on memhv, the release build; medians of the reps, "
             "[min–max]. Off and on alternate within each rep; the floor is measured in each rep too.", "",
             "| | hand-back wait off (`handback_wait_us = 0`) | on ("
             + (f"`handback_wait_us = {VARIANTS[1][1]}`" if VARIANTS[1][1] is not None else "the default, 200 µs")
             + ") | on / off |", "|---|---|---|---|"]

    def cell(k):
        v = raw[k]
        return f"{med[k]:.3f} [{min(v):.3f}–{max(v):.3f}]"

    for label, key in (("call p50, ms", "p50_ms"), ("call p99, ms", "p99_ms"),
                       ("agent CPU per call, µs", "agent_cpu_us_per_call")):
        lines.append(f"| {label} | {cell('off_' + key)} | {cell('on_' + key)} | {med['on_' + key] / med['off_' + key]:.2f} |")
    lines += ["", f"Broker floor: one traversal {cell('floor_traversal_ms')} ms; a call crosses twice, so the floor of a "
              f"call is {2 * med['floor_traversal_ms']:.3f} ms and the goal (≤ 1.5 × that) {goal:.3f} ms: "
              f"**{'met' if med['on_p50_ms'] <= goal else 'missed'}** with the wait on "
              f"({med['on_p50_ms'] / (2 * med['floor_traversal_ms']):.2f} × the floor; off: "
              f"{med['off_p50_ms'] / (2 * med['floor_traversal_ms']):.2f} ×).", ""]
    results = {"medians": med, "raw": raw, "goal_ms": goal}
    for name, us in VARIANTS:
        ev = timeline(us)
        results[f"timeline_{name}"] = ev
        lines += [f"## One call's syscalls, hand-back wait {name} (strace, both processes)", "",
                  "strace slows every syscall, so the gaps are larger than without it; what counts is the sequence: "
                  "which thread wakes which. `amqp-rpc` is the agent's RPC connection thread, the other agent threads "
                  "are the Swift pool; `ctl` is computectl. Polls that timed out, EAGAIN reads and `sched_yield` "
                  "turns are left out.", "", "```"]
        if ev:
            t0 = ev[0][0]
            for ts, who, what in ev:
                lines.append(f"{(ts - t0) * 1e6:8.0f} µs  {who:28} {what}")
        else:
            lines.append("(no trace: strace found no reply write)")
        lines += ["```", ""]
    bench.write_results("calls", lines, results)


if __name__ == "__main__":
    main()
