"""The cost curve: the agent's periodic tasks and memory at 100, 1,000, 10,000 and 50,000
instances on the host (memhv holding them in memory, the agent's store seeded with the
matching records; bench.scale does one count), as a table and a plot, so that a reader
sees how they grow. Also exec → consuming at each count (nova-compute walks every
instance before it consumes; the agent consumes first and reconciles after).

    python3 Benchmarks/scale.py [--counts 100,1000,10000,50000]   (after Benchmarks/run.sh has built)

Writes Benchmarks/results/scale.{md,json,png} (the PNG is drawn by gnuplot, which
scripts/install-deps.sh installs)."""
import argparse
import json
import subprocess
import time

import bench


def plot(rows, png):
    data = "\n".join(f"{r['n']} {r['sync_ms']} {r['audit_ms']} {r['rss_mib']} {r['startup_s'] * 1000}" for r in rows)
    script = f"""
set terminal png size 900,420 font ",10"
set output "{png}"
set multiplot layout 1,2 title "compute-agent: cost per instance count (memhv, release build)"
set logscale xy
set xlabel "instances on the host"
set grid
set key top left
set ylabel "milliseconds"
plot "-" using 1:2 with linespoints title "sync_power_states" noenhanced, "-" using 1:3 with linespoints title "resource audit", "-" using 1:5 with linespoints title "exec → consuming", x/1000 with lines dt 2 title "1 µs × N (linear)"
{data}
e
{data}
e
{data}
e
set ylabel "MiB (both axes linear: a straight line is linear growth)"
unset logscale xy
set xrange [0:*]
set xtics rotate by -30
set yrange [0:*]
plot "-" using 1:4 with linespoints title "RSS"
{data}
e
unset multiplot
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="100,1000,10000,50000")
    ap.add_argument("--replot", action="store_true", help="draw scale.png again from results/scale.json")
    args = ap.parse_args()
    if args.replot:
        out = bench.ROOT / "Benchmarks" / "results"
        plot(json.loads((out / "scale.json").read_text()), out / "scale.png")
        return
    bench.setup_broker_user()
    rows = []
    for n in [int(c) for c in args.counts.split(",")]:
        r = bench.scale(n)
        r["n"] = n
        rows.append(r)
        bench.log(f"scale {n}: sync {r['sync_ms']:.1f} ms, audit {r['audit_ms']:.1f} ms, RSS {r['rss_mib']:.1f} MiB, "
                  f"start-up {r['startup_s']:.3f} s")
    out = bench.ROOT / "Benchmarks" / "results"
    png = out / "scale.png"
    plot(rows, png)
    first = rows[0]
    lines = ["# Cost curve: periodic tasks and memory by instance count", "",
             f"`python3 Benchmarks/scale.py --counts {args.counts}` on {time.strftime('%Y-%m-%d')} (release build, memhv holding the",
             "instances in memory, the store seeded with matching records; medians of the agent's own `periodic task done`",
             "timings; RSS after the tasks ran). Plot: `scale.png`.", "",
             "| instances | sync_power_states ms | resource audit ms | build capabilities ms | RSS MiB | peak MiB | exec → consuming s | µs per instance (sync) | KiB per instance over the smallest |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_kib = (r["rss_mib"] - first["rss_mib"]) * 1024 / (r["n"] - first["n"]) if r["n"] != first["n"] else 0
        lines.append(f"| {r['n']:,} | {r['sync_ms']:.1f} | {r['audit_ms']:.1f} | {r['caps_ms']:.1f} | {r['rss_mib']:.1f} | "
                     f"{r['hwm_mib']:.1f} | {r['startup_s']:.3f} | {r['sync_ms'] * 1000 / r['n']:.2f} | {per_kib:.2f} |")
    lines.append("")
    (out / "scale.md").write_text("\n".join(lines))
    (out / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
