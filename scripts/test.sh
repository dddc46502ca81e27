#!/usr/bin/env bash
# Runs the whole test suite on real parts: installs what is missing, starts a loopback
# RabbitMQ and a real Glance (scripts/glance.sh) (and libvirtd for the real-QEMU test where it can run), builds, runs the Swift
# unit tests (plain, under ASan and under TSan), fuzzes each decoder for a bounded time,
# then the integration tests (real oslo.messaging, real libvirt, real broker).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/rabbitmq.sh start
bash scripts/glance.sh start
if ! bash scripts/libvirtd.sh start; then
  echo "test: libvirtd could not be started here; the real-QEMU test will be skipped with the reason"
fi

echo "== build"
swift build 2>&1 | tail -3
# Runs `swift test` with the given flags; on failure shows the end of its output.
unit_tests() {
  local log
  log=$(mktemp)
  if ! swift test "$@" >"$log" 2>&1; then
    tail -60 "$log"
    echo "test: swift test $* FAILED" >&2
    exit 1
  fi
  grep -E '✘|Test run with|Executed .* tests' "$log" | tail -3 || true
  rm -f "$log"
}
echo "== Swift unit tests"
unit_tests
echo "== Swift unit tests under AddressSanitizer, then ThreadSanitizer (own build folders)"
LSAN_OPTIONS="suppressions=$PWD/Tests/lsan.supp" unit_tests --sanitize=address --scratch-path .build-asan
unit_tests --sanitize=thread --scratch-path .build-tsan
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzzing every decoder of outside bytes (${FUZZ_SECONDS:-45} s each; Fuzz/run.sh)"
  FUZZ_SECONDS=${FUZZ_SECONDS:-45} bash Fuzz/run.sh
fi
echo "== integration tests (real RabbitMQ, libvirt, oslo.messaging)"
cd Tests/integration
python3 -m pytest -p no:warnings -p no:cacheprovider -q -rs "$@"
