#!/usr/bin/env bash
# Builds the libFuzzer targets (Swift's -sanitize=fuzzer,address) and runs each for a
# bounded time from its seed corpus in Fuzz/corpus/<target> (read only; what the fuzzer
# learns goes to .build-fuzz/corpus-<target>). A crash leaves its input in Fuzz/crashes/
# and fails the script: add the input to the seed corpus and a regression test.
#
#   bash Fuzz/run.sh            every target, 60 s each (what the test suite runs)
#   FUZZ_SECONDS=600 bash Fuzz/run.sh json    one target, longer
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
OUT=.build-fuzz
mkdir -p "$OUT" Fuzz/crashes
targets=("${@:-json oslo ini url elf}")
# shellcheck disable=SC2206
targets=(${targets[*]})

sources() {
  case "$1" in
    json) echo Sources/JSON/*.swift ;;
    oslo) echo Sources/JSON/*.swift Sources/Messaging/OsloMessage.swift Sources/AgentSupport/DedicatedThread.swift ;;
    ini) echo Sources/AgentSupport/IniFile.swift Sources/AgentSupport/ConfigError.swift ;;
    url) echo Sources/Messaging/TransportURL.swift ;;
    elf) echo Sources/PluginHost/ELFCheck.swift ;;
  esac
}

status=0
for t in "${targets[@]}"; do
  flag="FUZZ_$(echo "$t" | tr a-z A-Z)"
  bin="$OUT/fuzz-$t"
  # The decoders' files are compiled as one module with the harness, so imports of the
  # agent's own modules fall away (sed), and nothing else is pulled in.
  work="$OUT/src-$t"
  rm -rf "$work"; mkdir -p "$work"
  for f in $(sources "$t") Fuzz/FuzzTargets.swift; do
    sed -E '/^import (AgentSupport|JSON|Logging|Messaging)$/d' "$f" > "$work/$(basename "$f")"
  done
  swiftc -sanitize=fuzzer,address -parse-as-library -D "$flag" -O -g -o "$bin" "$work"/*.swift 2>&1 | grep -vE "^$|Cannot export local symbol" || true
  [ -x "$bin" ] || { echo "fuzz: $t did not build" >&2; exit 1; }
  mkdir -p "Fuzz/corpus/$t" "$OUT/corpus-$t"
  echo "fuzz: $t for ${SECONDS_EACH} s"
  if ! SWIFT_BACKTRACE=enable=no "$bin" -max_total_time="$SECONDS_EACH" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
       -artifact_prefix="Fuzz/crashes/$t-" -print_final_stats=1 "$OUT/corpus-$t" "Fuzz/corpus/$t" 2>"$OUT/fuzz-$t.log"; then
    echo "fuzz: $t FOUND A CRASH (input in Fuzz/crashes/, log $OUT/fuzz-$t.log):" >&2
    grep -E "ERROR|panic|Fatal|precondition" "$OUT/fuzz-$t.log" | head -5 >&2
    status=1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$OUT/fuzz-$t.log" | sed "s/^/fuzz: $t /"
done
exit $status
