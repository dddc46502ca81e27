#!/usr/bin/env bash
# Starts, stops or checks Open vSwitch (ovsdb-server + ovs-vswitchd) by hand, without
# systemd, on the default socket (/var/run/openvswitch/db.sock, where ovs-vsctl and
# libvirt look). These machines have no OVS kernel datapath: bridges must use
# datapath_type=netdev (userspace). Idempotent.
#
#   scripts/ovs.sh start | stop | status
set -euo pipefail
RUN=/var/run/openvswitch
DB=${OVS_DBDIR:-/var/lib/compute-agent-test/ovs}/conf.db
export OVS_RUNDIR=$RUN OVS_LOGDIR=${OVS_DBDIR:-/var/lib/compute-agent-test/ovs}

running() { ovs-vsctl --timeout=2 show >/dev/null 2>&1 && [ -f "$RUN/ovs-vswitchd.pid" ] && kill -0 "$(cat "$RUN/ovs-vswitchd.pid")" 2>/dev/null; }

case "${1:-}" in
  start)
    if running; then echo "ovs: already running"; exit 0; fi
    command -v ovs-vswitchd >/dev/null || { echo "ovs: not installed (run scripts/install-deps.sh)" >&2; exit 1; }
    mkdir -p "$RUN" "$(dirname "$DB")"
    [ -f "$DB" ] || ovsdb-tool create "$DB" /usr/share/openvswitch/vswitch.ovsschema
    if ! [ -f "$RUN/ovsdb-server.pid" ] || ! kill -0 "$(cat "$RUN/ovsdb-server.pid")" 2>/dev/null; then
      ovsdb-server "$DB" --remote=punix:$RUN/db.sock --pidfile=$RUN/ovsdb-server.pid --detach \
        --log-file="$OVS_LOGDIR/ovsdb-server.log"
    fi
    ovs-vsctl --no-wait init
    ovs-vswitchd unix:$RUN/db.sock --pidfile=$RUN/ovs-vswitchd.pid --detach --log-file="$OVS_LOGDIR/ovs-vswitchd.log"
    for _ in $(seq 1 50); do running && { echo "ovs: ready"; exit 0; }; sleep 0.1; done
    echo "ovs: did not start" >&2; exit 1
    ;;
  stop)
    for d in ovs-vswitchd ovsdb-server; do
      [ -f "$RUN/$d.pid" ] && kill "$(cat "$RUN/$d.pid")" 2>/dev/null || true
    done
    echo "ovs: stopped"
    ;;
  status) if running; then echo "ovs: running"; else echo "ovs: not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
