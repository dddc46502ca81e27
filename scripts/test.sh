#!/usr/bin/env bash
# Runs the whole test suite on real parts: installs what is missing, starts a loopback
# RabbitMQ (and libvirtd for the real-QEMU test where it can run), builds, runs the Swift
# unit tests (plain, under ASan and under TSan), fuzzes each decoder for a bounded time,
# then the integration tests (real oslo.messaging, real libvirt, real broker).
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
echo "== Swift unit tests under AddressSanitizer, then ThreadSanitizer (own build folders)"
swift test --sanitize=address --scratch-path .build-asan 2>&1 | grep -E '✘|ERROR: AddressSanitizer|Test run with' | tail -5
swift test --sanitize=thread --scratch-path .build-tsan 2>&1 | grep -E '✘|WARNING: ThreadSanitizer|Test run with' | tail -5
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzzing every decoder of outside bytes (${FUZZ_SECONDS:-45} s each; Fuzz/run.sh)"
  FUZZ_SECONDS=${FUZZ_SECONDS:-45} bash Fuzz/run.sh
fi
echo "== integration tests (real RabbitMQ, libvirt, oslo.messaging)"
cd Tests/integration
python3 -m pytest -p no:warnings -p no:cacheprovider -q -rs "$@"
