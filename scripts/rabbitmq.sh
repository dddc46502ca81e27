#!/usr/bin/env bash
# Starts, stops or checks a RabbitMQ broker listening on loopback only, without systemd
# (these machines have no systemd as PID 1). Idempotent: `start` on a running broker
# only checks that it answers.
#
#   scripts/rabbitmq.sh start | stop | status
set -euo pipefail

export RABBITMQ_NODENAME=${RABBITMQ_NODENAME:-rabbit@localhost}
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=${RABBITMQ_NODE_PORT:-5672}
export RABBITMQ_DIST_PORT=${RABBITMQ_DIST_PORT:-25672}
export ERL_EPMD_ADDRESS=127.0.0.1
LOG=${RABBITMQ_START_LOG:-/tmp/compute-agent-rabbitmq.log}

answers() {
  timeout 10 rabbitmqctl -n "$RABBITMQ_NODENAME" -q status >/dev/null 2>&1
}

port_open() {
  (exec 3<>/dev/tcp/127.0.0.1/"$RABBITMQ_NODE_PORT") 2>/dev/null
}

case "${1:-}" in
  start)
    if answers && port_open; then
      echo "rabbitmq: already running on 127.0.0.1:$RABBITMQ_NODE_PORT"
      exit 0
    fi
    command -v rabbitmq-server >/dev/null || { echo "rabbitmq: not installed (run scripts/install-deps.sh)" >&2; exit 1; }
    echo "rabbitmq: starting on 127.0.0.1:$RABBITMQ_NODE_PORT (log: $LOG)"
    # rabbitmq-server switches to the rabbitmq user when run as root.
    nohup rabbitmq-server >"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
      if port_open && answers; then
        timeout 60 rabbitmqctl -n "$RABBITMQ_NODENAME" -q await_startup >/dev/null 2>&1 || true
        echo "rabbitmq: ready"
        exit 0
      fi
      sleep 1
    done
    echo "rabbitmq: did not start within 120 s; last log lines:" >&2
    tail -20 "$LOG" >&2 || true
    exit 1
    ;;
  stop)
    if answers; then
      rabbitmqctl -n "$RABBITMQ_NODENAME" -q stop >/dev/null 2>&1 || true
      echo "rabbitmq: stopped"
    else
      echo "rabbitmq: not running"
    fi
    ;;
  status)
    if answers && port_open; then echo "rabbitmq: running"; else echo "rabbitmq: not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
