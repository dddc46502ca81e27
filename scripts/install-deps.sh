#!/usr/bin/env bash
# Installs everything ComputeAgent needs to build, run its demo and run its tests on a
# Debian 12 machine, as root. Idempotent: a second run installs nothing and exits 0.
#
#   scripts/install-deps.sh            Debian packages + Python packages
#   SKIP_QEMU=1 scripts/install-deps.sh   without the QEMU system emulator (smaller)
set -euo pipefail

DEB_PACKAGES=(
  pkg-config gcc make
  librabbitmq-dev        # AMQP 0-9-1 client (rabbitmq-c) used by the Messaging module
  libvirt-dev            # the libvirt hypervisor plugin
  libsqlite3-dev         # the crash-safe instance store (InstanceStore module)
  libcurl4-openssl-dev   # HTTP (placement, the glance plugin): headers to build; libcurl is dlopen'ed at the first request
  libssl-dev             # libcrypto digests (sha512/md5/sha256) for the image plugins
  curl                   # scripts/glance.sh health checks
  cpio syslinux syslinux-common mtools dosfstools fdisk xz-utils   # scripts/build-guest.sh
  libmnl-dev             # rtnetlink for the linuxbridge network plugin (no ip/brctl)
  dnsmasq-base           # DHCP on bridges the linuxbridge plugin serves
  openvswitch-switch     # the ovs network plugin's tests (scripts/ovs.sh, no systemd)
  rabbitmq-server        # the broker tests and the demo run on loopback
  libvirt-daemon         # libvirtd, for the real-QEMU test where it can run
  libvirt-daemon-driver-qemu
  libvirt-clients        # virsh, for looking at domains by hand
  qemu-utils             # qemu-img: blank qcow2 disks for tests
  patchelf dpkg-dev      # packaging: the bundled Swift runtime's rpath, dpkg-deb
  iproute2 procps psmisc iputils-ping
  prometheus             # promtool: the metrics tests validate the exposition with it
  gnuplot-nox            # Benchmarks/scale.py draws the cost curve (PNG)
  sqlite3                # the nova control plane's scripts (scripts/nova-control-plane.sh)
  mariadb-server mariadb-client   # its databases (the kit's private server, DB=mariadb)
)
if [ "${SKIP_QEMU:-0}" != 1 ]; then
  DEB_PACKAGES+=(qemu-system-x86)
fi

PY_PACKAGES=(
  "oslo.messaging==18.3.1"   # the reference client for the interoperability tests
  "pytest"
  "pika==1.3.2"              # raw AMQP publishing for the hostile-message corpus test
)

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: run as root (apt-get needs it)" >&2
    exit 1
  fi
}

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  need_root
  echo "install-deps: installing Debian packages: ${missing[*]}"
  # Package scripts must not start system services (there is no systemd here, and the
  # project starts its own loopback broker): a policy-rc.d that refuses every start.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: Debian packages already installed"
fi

py_missing=0
python3 - <<'PY' || py_missing=1
import importlib.metadata as m, sys
want = {"oslo.messaging": "18.3.1", "pytest": None, "pika": "1.3.2"}
for name, ver in want.items():
    try:
        have = m.version(name)
    except m.PackageNotFoundError:
        sys.exit(1)
    if ver and have != ver:
        sys.exit(1)
PY
if [ "$py_missing" = 1 ]; then
  echo "install-deps: installing Python packages: ${PY_PACKAGES[*]}"
  python3 -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
else
  echo "install-deps: Python packages already installed"
fi
echo "install-deps: done"
