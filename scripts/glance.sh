#!/usr/bin/env bash
# Installs (once, in its own venv) and starts, stops or checks a real Glance v2 (glance-api
# 33 under gunicorn, sqlite, file store, no keystone) on 127.0.0.1:${GLANCE_PORT:-19292}, for
# the tests and the demo. Idempotent: `start` on a running, healthy Glance only checks it.
#
#   scripts/glance.sh start | stop | status | url
set -euo pipefail

PORT=${GLANCE_PORT:-19292}
VENV=${GLANCE_VENV:-/var/lib/compute-agent-test/glance-venv}
DIR=${GLANCE_DIR:-/var/lib/compute-agent-test/glance}
URL="http://127.0.0.1:$PORT"

healthy() { curl -sf --max-time 2 "$URL/healthcheck" >/dev/null 2>&1; }

install_venv() {
  if [ -x "$VENV/bin/gunicorn" ] && "$VENV/bin/python" -c 'import glance, importlib.metadata as m; assert m.version("glance") == "33.0.0"' 2>/dev/null; then
    return
  fi
  echo "glance: installing glance 33.0.0 and gunicorn into $VENV (about 20 s)"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check glance==33.0.0 gunicorn
}

configure() {
  mkdir -p "$DIR"/{images,staging,tasks}
  local paste
  paste=$(find "$VENV" -name glance-api-paste.ini -path '*etc/glance*' | head -1)
  [ -n "$paste" ] || { echo "glance: glance-api-paste.ini not found in $VENV" >&2; exit 1; }
  cp "$paste" "$DIR/glance-api-paste.ini"
  cat > "$DIR/glance-api.conf" <<CONF
[DEFAULT]
bind_host = 127.0.0.1
bind_port = $PORT
workers = 1
log_file = $DIR/glance-api.log
enabled_backends = fs:file
[database]
connection = sqlite:///$DIR/glance.sqlite
[paste_deploy]
flavor =
config_file = $DIR/glance-api-paste.ini
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $DIR/images
[os_glance_staging_store]
filesystem_store_datadir = $DIR/staging
[os_glance_tasks_store]
filesystem_store_datadir = $DIR/tasks
[oslo_policy]
enforce_new_defaults = false
CONF
  "$VENV/bin/glance-manage" --config-file "$DIR/glance-api.conf" db_sync >/dev/null 2>&1
}

case "${1:-}" in
  start)
    if healthy; then echo "glance: already running at $URL"; exit 0; fi
    command -v curl >/dev/null || { echo "glance: curl missing (run scripts/install-deps.sh)" >&2; exit 1; }
    install_venv
    configure
    echo "glance: starting at $URL (data and access log in $DIR)"
    # The whole background subshell gets the log as its output (not only gunicorn): a
    # caller that reads this script's output to its end must not wait for Glance to exit.
    (cd "$DIR" && OS_GLANCE_CONFIG_DIR="$DIR" exec nohup "$VENV/bin/gunicorn" -b "127.0.0.1:$PORT" -w 1 --threads 8 \
        --timeout 600 --access-logfile "$DIR/access.log" --pid "$DIR/gunicorn.pid" \
        glance.wsgi.api:application) >"$DIR/gunicorn.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
      if healthy; then echo "glance: ready"; exit 0; fi
      sleep 0.5
    done
    echo "glance: did not become healthy in 30 s; last log lines:" >&2
    tail -20 "$DIR/gunicorn.log" >&2 || true
    exit 1
    ;;
  install) install_venv ;;
  stop)
    if [ -f "$DIR/gunicorn.pid" ] && kill "$(cat "$DIR/gunicorn.pid")" 2>/dev/null; then
      echo "glance: stopped"
    else
      echo "glance: not running"
    fi
    ;;
  status)
    if healthy; then echo "glance: running at $URL"; else echo "glance: not running"; exit 1; fi
    ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|status|url|install" >&2; exit 2 ;;
esac
