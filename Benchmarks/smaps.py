"""Where an idle agent's resident memory is: /proc/<pid>/smaps of the release binary 3 s
after start-up, summed by what each mapping is, with the libvirt plugin on
`test:///default` and with the C test hypervisor (memhv). Shows which part the agent's own
code and heap are and which part is libraries it maps (Swift runtime, libvirt and its
dependencies, OpenSSL, SQLite, …), and how much of each is private to the process.

    python3 Benchmarks/smaps.py   (after Benchmarks/run.sh has built; or via run.sh)

It also builds and measures the library floor (`Benchmarks/floor/`): a Swift program that
maps what the agent must map at idle (the Swift runtime with a task and Dispatch, SQLite in
WAL mode, librabbitmq with OpenSSL logged in and consuming, the hypervisor plugin or a
test:///default libvirt connection) and does nothing else, so the agent's own share is the
difference measured in the same run.

Writes Benchmarks/results/smaps.{md,json}."""
import collections
import os
import pathlib
import subprocess
import time

import bench

# First match wins; patterns are substrings of the mapped file's name. Libraries the agent
# maps only with the libvirt plugin (not with memhv) are put in one group of their own.
CATEGORIES = [
    ("agent binary", ["compute-agent"]),
    ("floor program binary", ["library-floor"]),
    ("agent plugins", ["libcompute_"]),
    ("Swift runtime", ["libswift", "libdispatch", "libBlocksRuntime", "libFoundation", "lib_FoundationICU"]),
    ("OpenSSL (librabbitmq, libcurl, digests)", ["libcrypto", "libssl"]),
    ("SQLite (instance store)", ["libsqlite3"]),
    ("librabbitmq", ["librabbitmq"]),
    ("libsystemd + its dependencies (journald, sd_notify)", ["libsystemd", "libcap.", "libgcrypt", "libgpg-error",
                                                             "liblzma", "libzstd", "liblz4"]),
    ("C/C++ runtime (libc, libm, libstdc++, ld.so)", ["libc.so", "libm.so", "libstdc++", "libgcc_s", "ld-linux", "libmnl"]),
    ("heap and anonymous", ["[heap]", "[anon]", "[stack"]),
]
LIBVIRT_ONLY = "libvirt and what only it loads (the libvirt plugin, the floor's connection)"
OTHER_LIBS = "libcurl + its HTTP/TLS dependencies (placement, glance)"


def categorise(name, libvirt_only=frozenset()):
    if name in libvirt_only:
        return LIBVIRT_ONLY
    for cat, pats in CATEGORIES:
        if any(p in name for p in pats):
            return cat
    if ".so" in name:
        return OTHER_LIBS
    return "other (" + name.rsplit("/", 1)[-1] + ")"


def mapped_files(pid):
    return {l.split()[5] for l in open(f"/proc/{pid}/maps") if len(l.split()) > 5}


def breakdown(pid, libvirt_only=frozenset()):
    cur = None
    out = collections.defaultdict(collections.Counter)
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if not parts[0].endswith(":"):
            cur = categorise(parts[5] if len(parts) > 5 else "[anon]", libvirt_only)
            continue
        if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
            out[cur][parts[0][:-1]] += int(parts[1]) / 1024
    return {k: dict(v) for k, v in out.items()}


def measure(label, baseline=None, **server):
    """`baseline`: the files an agent with memhv maps; what else this one maps is the
    libvirt plugin's own share."""
    s = bench.Server("agent", **server)
    s.start()
    time.sleep(3)
    files = mapped_files(s.proc.pid)
    b = breakdown(s.proc.pid, frozenset(files - baseline) if baseline is not None else frozenset())
    s.stop()
    total = {k: sum(v.get(k, 0) for v in b.values()) for k in ("Rss", "Pss", "Private_Clean", "Private_Dirty")}
    bench.log(f"smaps {label}: RSS {total['Rss']:.1f} MiB")
    return {"categories": b, "total": total, "files": sorted(files)}


def build_floor(with_libvirt):
    """Builds the library floor (Benchmarks/floor/), with or without a libvirt connection."""
    src = bench.ROOT / "Benchmarks" / "floor"
    name = "library-floor-libvirt" if with_libvirt else "library-floor"
    work = bench.WORK / name
    work.mkdir(exist_ok=True)
    obj = work / "library_floor.o"
    subprocess.run(["gcc", "-O2", "-Wall", "-c", *(["-DWITH_LIBVIRT"] if with_libvirt else []),
                    "-o", str(obj), str(src / "library_floor.c")], check=True)
    subprocess.run(["swiftc", "-O", "-parse-as-library", "-o", str(work / name), str(src / "library_floor.swift"),
                    str(obj), "-lsqlite3", "-lrabbitmq", *(["-lvirt"] if with_libvirt else [])], check=True)
    return work / name


def measure_floor(label, binary, baseline=None, plugin=None):
    env = dict(os.environ, CA_FLOOR_USER=bench.USER, CA_FLOOR_PASSWORD=bench.PASSWORD,
               CA_FLOOR_DB=str(binary.parent / "floor.sqlite"), CA_FLOOR_PLUGIN=plugin or "")
    p = subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"library floor ({label}) did not start: exit {p.wait()}")
        time.sleep(3)
        files = mapped_files(p.pid)
        b = breakdown(p.pid, frozenset(files - baseline) if baseline is not None else frozenset())
    finally:
        p.kill()
        p.wait()
    total = {k: sum(v.get(k, 0) for v in b.values()) for k in ("Rss", "Pss", "Private_Clean", "Private_Dirty")}
    bench.log(f"smaps {label}: RSS {total['Rss']:.1f} MiB")
    return {"categories": b, "total": total, "files": sorted(files)}


def main():
    bench.setup_broker_user()
    memhv = measure("memhv test hypervisor", plugin_dir=bench.memhv_plugin_dir(), extra="compute_driver = memhv", sections={})
    baseline = {f for f in memhv["files"] if "libcompute_" not in f}
    results = {"libvirt": measure("libvirt plugin, test:///default", baseline=baseline), "memhv": memhv}
    floor_memhv = measure_floor("library floor, memhv", build_floor(False), plugin=os.environ["CA_BENCH_MEMHV"])
    floor_baseline = {f for f in floor_memhv["files"] if "libcompute_" not in f}
    results["floor_libvirt"] = measure_floor("library floor, libvirt test:///default", build_floor(True),
                                             baseline=floor_baseline)
    results["floor_memhv"] = floor_memhv
    lines = ["# Where an idle agent's memory is (smaps by mapping)", "",
             f"`python3 Benchmarks/smaps.py` on {time.strftime('%Y-%m-%d')}: the release binary 3 s after start-up.",
             "RSS = resident pages mapped by the agent; PSS = shared pages divided among the processes mapping them;",
             "private = pages no other process maps (clean: file pages; dirty: written, e.g. relocations, heap).", ""]
    lines += ["## The agent against its library floor", "",
              "The library floor (`Benchmarks/floor/`) is a Swift program that maps what the agent must map at idle",
              "and does nothing else: the Swift runtime with a task and a Dispatch semaphore, SQLite writing in WAL mode,",
              "librabbitmq (with OpenSSL) logged in and consuming, and the memhv plugin or a test:///default libvirt",
              "connection. What the agent holds above it is its own code, data and Swift plugins.", "",
              "| | agent RSS | floor RSS | agent − floor | agent PSS | floor PSS |", "|---|---|---|---|---|---|"]
    for key, title in (("libvirt", "libvirt on test:///default"), ("memhv", "memhv")):
        a, f = results[key]["total"], results["floor_" + key]["total"]
        lines.append(f"| {title} | {a['Rss']:.1f} MiB | {f['Rss']:.1f} MiB | {a['Rss'] - f['Rss']:.1f} MiB | "
                     f"{a['Pss']:.1f} MiB | {f['Pss']:.1f} MiB |")
    lines.append("")
    for key, title in (("libvirt", "libvirt plugin on test:///default"), ("memhv", "memhv (C test hypervisor)"),
                       ("floor_libvirt", "library floor with a test:///default connection"),
                       ("floor_memhv", "library floor with memhv")):
        r = results[key]
        lines += [f"## {title}: RSS {r['total']['Rss']:.1f} MiB, PSS {r['total']['Pss']:.1f} MiB", "",
                  "| mapping | RSS MiB | PSS MiB | private clean | private dirty |", "|---|---|---|---|---|"]
        for cat, v in sorted(r["categories"].items(), key=lambda kv: -kv[1].get("Rss", 0)):
            if v.get("Rss", 0) >= 0.05:
                lines.append(f"| {cat} | {v.get('Rss', 0):.2f} | {v.get('Pss', 0):.2f} | {v.get('Private_Clean', 0):.2f} | "
                             f"{v.get('Private_Dirty', 0):.2f} |")
        lines.append("")
    bench.write_results("smaps", lines, results)


if __name__ == "__main__":
    main()
