#!/usr/bin/env bash
# Starts libvirtd (and virtlogd) by hand, without systemd, for the real-QEMU test:
# qemu runs as root with no security driver, domains use software emulation (type qemu).
# Idempotent. Exits non-zero, with the reason, where libvirtd cannot run here.
#
#   scripts/libvirtd.sh start | stop | status
set -euo pipefail
LOG=/tmp/compute-agent-libvirtd.log

running() { virsh -c qemu:///system version >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if running; then echo "libvirtd: already running"; exit 0; fi
    command -v libvirtd >/dev/null || { echo "libvirtd: not installed" >&2; exit 1; }
    command -v qemu-system-x86_64 >/dev/null || { echo "libvirtd: qemu-system-x86_64 not installed" >&2; exit 1; }
    mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /var/lib/libvirt/images /var/cache/libvirt /run/libvirt
    id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home libvirt-qemu
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    conf=/etc/libvirt/qemu.conf
    if ! grep -q '^# compute-agent test settings' "$conf" 2>/dev/null; then
      printf '\n# compute-agent test settings\nuser = "root"\ngroup = "root"\nsecurity_driver = "none"\ndynamic_ownership = 0\n' >> "$conf"
    fi
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d >>"$LOG" 2>&1
    for _ in $(seq 1 60); do
      if running; then echo "libvirtd: ready"; exit 0; fi
      sleep 0.5
    done
    echo "libvirtd: did not answer within 30 s (log: $LOG)" >&2
    exit 1
    ;;
  stop)
    pkill -x libvirtd 2>/dev/null || true
    pkill -x virtlogd 2>/dev/null || true
    echo "libvirtd: stopped"
    ;;
  status)
    if running; then echo "libvirtd: running"; else echo "libvirtd: not running"; exit 1; fi
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
