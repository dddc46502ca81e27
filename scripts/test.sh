#!/usr/bin/env bash
# Runs the whole test suite on real parts: installs what is missing, starts a loopback
# RabbitMQ (and libvirtd for the real-QEMU test where it can run), builds, runs the Swift
# unit tests, then the integration tests (real oslo.messaging, real libvirt, real broker).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/rabbitmq.sh start
if ! bash scripts/libvirtd.sh start; then
  echo "test: libvirtd could not be started here; the real-QEMU test will be skipped with the reason"
fi

echo "== build"
swift build 2>&1 | tail -3
echo "== Swift unit tests"
swift test 2>&1 | grep -vE '^(Test Case|◇|↳)' | tail -15
echo "== integration tests (real RabbitMQ, libvirt, oslo.messaging)"
cd Tests/integration
python3 -m pytest -p no:warnings -p no:cacheprovider -q -rs "$@"
