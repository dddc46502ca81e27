"""Where an idle agent's resident memory is: /proc/<pid>/smaps of the release binary 3 s
after start-up, summed by what each mapping is, with the libvirt plugin on
`test:///default` and with the C test hypervisor (memhv). Shows which part the agent's own
code and heap are and which part is libraries it maps (Swift runtime, libvirt and its
dependencies, OpenSSL, SQLite, …), and how much of each is private to the process.

    python3 Benchmarks/smaps.py   (after Benchmarks/run.sh has built; or via run.sh)

Writes Benchmarks/results/smaps.{md,json}."""
import collections
import json
import pathlib
import time

import bench

# First match wins; patterns are substrings of the mapped file's name. Libraries the agent
# maps only with the libvirt plugin (not with memhv) are put in one group of their own.
CATEGORIES = [
    ("agent binary", ["compute-agent"]),
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
LIBVIRT_ONLY = "libvirt plugin: libvirt + what only it loads"
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


def main():
    bench.setup_broker_user()
    memhv = measure("memhv test hypervisor", plugin_dir=bench.memhv_plugin_dir(), extra="compute_driver = memhv", sections={})
    baseline = {f for f in memhv["files"] if "libcompute_" not in f}
    results = {"libvirt": measure("libvirt plugin, test:///default", baseline=baseline), "memhv": memhv}
    lines = ["# Where an idle agent's memory is (smaps by mapping)", "",
             f"`python3 Benchmarks/smaps.py` on {time.strftime('%Y-%m-%d')}: the release binary 3 s after start-up.",
             "RSS = resident pages mapped by the agent; PSS = shared pages divided among the processes mapping them;",
             "private = pages no other process maps (clean: file pages; dirty: written, e.g. relocations, heap).", ""]
    for key, title in (("libvirt", "libvirt plugin on test:///default"), ("memhv", "memhv (C test hypervisor)")):
        r = results[key]
        lines += [f"## {title}: RSS {r['total']['Rss']:.1f} MiB, PSS {r['total']['Pss']:.1f} MiB", "",
                  "| mapping | RSS MiB | PSS MiB | private clean | private dirty |", "|---|---|---|---|---|"]
        for cat, v in sorted(r["categories"].items(), key=lambda kv: -kv[1].get("Rss", 0)):
            if v.get("Rss", 0) >= 0.05:
                lines.append(f"| {cat} | {v.get('Rss', 0):.2f} | {v.get('Pss', 0):.2f} | {v.get('Private_Clean', 0):.2f} | "
                             f"{v.get('Private_Dirty', 0):.2f} |")
        lines.append("")
    out = bench.ROOT / "Benchmarks" / "results"
    (out / "smaps.md").write_text("\n".join(lines))
    (out / "smaps.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
