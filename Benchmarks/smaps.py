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

# First match wins; patterns are substrings of the mapped file's name.
CATEGORIES = [
    ("agent binary", ["compute-agent"]),
    ("agent plugins", ["libcompute_"]),
    ("Swift runtime", ["libswift", "libdispatch", "libBlocksRuntime", "libFoundation", "lib_FoundationICU"]),
    ("libvirt + its own dependencies", ["libvirt", "libxml2", "libgnutls", "libglib", "libgio", "libgobject", "libgmodule",
                                        "libicu", "libpcre2", "libp11-kit", "libssh.", "libcurl-gnutls", "libnl-", "libtasn1",
                                        "libnettle", "libhogweed", "libgmp", "libunistring", "libidn2", "libselinux",
                                        "libmount", "libblkid", "libacl", "libattr", "libyajl", "libjson-c", "libtirpc",
                                        "libdevmapper", "libnuma", "libsasl2", "libapparmor", "libffi", "libsystemd",
                                        "libcap", "libgcrypt", "libgpg-error", "liblzma", "libzstd", "liblz4"]),
    ("OpenSSL (librabbitmq, libcurl, digests)", ["libcrypto", "libssl"]),
    ("libcurl + its dependencies (HTTP for placement/glance)", ["libcurl", "libnghttp2", "librtmp", "libssh2", "libpsl",
                                                                "libgssapi", "libkrb5", "libk5crypto", "libcom_err", "libldap",
                                                                "liblber", "libbrotli", "libkeyutils", "libresolv", "libz."]),
    ("SQLite (instance store)", ["libsqlite3"]),
    ("librabbitmq", ["librabbitmq"]),
    ("C/C++ runtime (libc, libm, libstdc++, ld.so)", ["libc.so", "libm.so", "libstdc++", "libgcc_s", "ld-linux", "libmnl"]),
    ("heap and anonymous", ["[heap]", "[anon]", "[stack"]),
]


def categorise(name):
    for cat, pats in CATEGORIES:
        if any(p in name for p in pats):
            return cat
    return "other (" + name.rsplit("/", 1)[-1] + ")"


def breakdown(pid):
    cur = None
    out = collections.defaultdict(collections.Counter)
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if not parts[0].endswith(":"):
            cur = categorise(parts[5] if len(parts) > 5 else "[anon]")
            continue
        if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
            out[cur][parts[0][:-1]] += int(parts[1]) / 1024
    return {k: dict(v) for k, v in out.items()}


def measure(label, **server):
    s = bench.Server("agent", **server)
    s.start()
    time.sleep(3)
    b = breakdown(s.proc.pid)
    s.stop()
    total = {k: sum(v.get(k, 0) for v in b.values()) for k in ("Rss", "Pss", "Private_Clean", "Private_Dirty")}
    bench.log(f"smaps {label}: RSS {total['Rss']:.1f} MiB")
    return {"categories": b, "total": total}


def main():
    bench.setup_broker_user()
    results = {"libvirt": measure("libvirt plugin, test:///default"),
               "memhv": measure("memhv test hypervisor", plugin_dir=bench.memhv_plugin_dir(), extra="compute_driver = memhv")}
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
