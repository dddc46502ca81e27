#!/usr/bin/env bash
# A real, unmodified nova 34 control plane (nova-api, nova-conductor, nova-scheduler,
# placement 16, glance 33 and the neutron stub, no keystone) on this machine, for the
# drop-in tests (control_plane = nova). It runs the scripts of
# ../shared/reference/nova-control-plane (docs: ../shared/reference/nova-dropin.md §1) from a
# writable copy, with fresh databases on every start, and leaves the nova-compute slot to
# the agent (COMPUTE=0). The databases (nova API, cell0, cell1, placement) live in the kit's
# private MariaDB server (DB=mariadb: mariadbd without systemd, 127.0.0.1:13306, datadir in
# the working folder), as the drop-in issue asks: sqlite locks up as soon as several
# servers are created at once. NOVA_CP_DB=sqlite selects the kit's sqlite files instead.
#
#   scripts/nova-control-plane.sh install   venvs only (idempotent: nova 34 + placement 16)
#   scripts/nova-control-plane.sh start     install, fresh copy + databases, start (≈ 80 s)
#   scripts/nova-control-plane.sh stop      stop every service it started
#   scripts/nova-control-plane.sh dir       print the working folder
#   scripts/nova-control-plane.sh sql DB 'SQL'   one statement on nova_api|nova|nova_cell0|placement
#                                           (tab-separated, no header)
#   scripts/nova-control-plane.sh openstack ARGS...   the openstack CLI (python-openstackclient
#                                           10.5.0 in nova's venv) against this plane, without
#                                           keystone: e.g. `openstack compute service list`
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_DIR:-$ROOT/../shared}
[ -d "$SHARED/reference/nova-control-plane" ] || SHARED=/work/shared
REF="$SHARED/reference/nova-control-plane"
BASE=/var/lib/compute-agent-test
export NOVA_VENV=${NOVA_VENV:-$BASE/nova-venv}
export GLANCE_VENV=${GLANCE_VENV:-$BASE/glance-venv}
DIR=${NOVA_CP_DIR:-$BASE/nova-cp}
export DB=${NOVA_CP_DB:-mariadb}
export PYTHONWARNINGS=ignore

install() {
  if ! [ -x "$NOVA_VENV/bin/nova-conductor" ] || ! "$NOVA_VENV/bin/python" -c \
      'import importlib.metadata as m; assert m.version("nova") == "34.0.0" and m.version("openstack-placement") == "16.0.0"' 2>/dev/null; then
    echo "nova-control-plane: installing nova 34.0.0 and placement 16.0.0 into $NOVA_VENV (about 1 min)"
    mkdir -p "$BASE"
    python3 -m venv "$NOVA_VENV"
    "$NOVA_VENV/bin/pip" install -q --disable-pip-version-check nova==34.0.0 openstack-placement==16.0.0
  fi
  if ! "$NOVA_VENV/bin/python" -c 'import importlib.metadata as m; assert m.version("python-openstackclient") == "10.5.0"' 2>/dev/null; then
    echo "nova-control-plane: installing python-openstackclient 10.5.0 into $NOVA_VENV"
    "$NOVA_VENV/bin/pip" install -q --disable-pip-version-check python-openstackclient==10.5.0
  fi
  # glance 33 comes from scripts/glance.sh's venv (the same release).
  GLANCE_PORT=${GLANCE_PORT:-19292} bash "$ROOT/scripts/glance.sh" install
  command -v sqlite3 >/dev/null || { echo "nova-control-plane: sqlite3 missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
  if [ "$DB" = mariadb ]; then
    # mariadb-server (scripts/install-deps.sh) and PyMySQL in nova's venv
    (cd "$REF" && NOVA_VENV="$NOVA_VENV" sh mariadb.sh install)
  fi
}

case "${1:-}" in
  install) install ;;
  start)
    install
    [ -d "$REF" ] || { echo "nova-control-plane: $REF not found (set SHARED_DIR)" >&2; exit 1; }
    if [ -d "$DIR" ] && [ -x "$DIR/stop_all.sh" ]; then (cd "$DIR" && sh stop_all.sh >/dev/null 2>&1) || true; fi
    rm -rf "$DIR"
    cp -r "$REF" "$DIR"
    chmod -R u+w "$DIR"
    # Resize onto the same host is allowed (one compute host is enough to drive a resize).
    sed -i 's/^\[DEFAULT\]$/[DEFAULT]\nallow_resize_to_same_host = true/' "$DIR/nova.conf"
    cd "$DIR"
    echo "nova-control-plane: fresh databases in $DIR"
    sh setup.sh > log-setup.txt 2>&1 || { tail -30 log-setup.txt; exit 1; }
    COMPUTE=0 sh start_all.sh > log-start.txt 2>&1 || { tail -30 log-start.txt; exit 1; }
    echo "nova-control-plane: nova-api on http://127.0.0.1:8774/v2.1, placement on :8778, glance on :9292 (vhost novapeer)"
    ;;
  stop)
    if [ -x "$DIR/stop_all.sh" ]; then cd "$DIR" && sh stop_all.sh; fi ;;
  dir) echo "$DIR" ;;
  sql)
    shift
    cd "$DIR"
    if [ "$DB" = mariadb ]; then sh mariadb.sh sql "$@"; else sqlite3 -separator "$(printf '\t')" "db/$1.sqlite" "$2"; fi ;;
  openstack)
    shift
    # No keystone: admin_token auth sends the token the plane's no-auth shim reads as user
    # admin, project admin; it uses one endpoint for every service, so the image and
    # identity endpoints are overridden (the identity one is the neutron stub's fake
    # keystone v3 document). OS_AUTH_TYPE=none does not work (os-services answers 403).
    OS_AUTH_TYPE=admin_token OS_ENDPOINT=http://127.0.0.1:8774/v2.1 OS_TOKEN=admin:admin \
      OS_IMAGE_ENDPOINT_OVERRIDE=http://127.0.0.1:9292 OS_IDENTITY_ENDPOINT_OVERRIDE=http://127.0.0.1:9696/identity/v3 \
      OS_COMPUTE_API_VERSION=${OS_COMPUTE_API_VERSION:-2.100} exec "$NOVA_VENV/bin/openstack" "$@" ;;
  *) echo "usage: $0 install|start|stop|dir|sql DB SQL|openstack ARGS..." >&2; exit 2 ;;
esac
