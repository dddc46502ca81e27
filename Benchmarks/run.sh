#!/usr/bin/env bash
# Runs every benchmark scenario against compute-agent and the oslo.messaging anchor, side by
# side on one loopback RabbitMQ, and writes Benchmarks/results/latest.{md,json}.
#
#   bash Benchmarks/run.sh              (CA_BENCH_REPS=N for more repetitions; default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/rabbitmq.sh start
echo "== release build"
swift build -c release 2>&1 | tail -2
mkdir -p .build/bench
gcc -O2 -Wall -o .build/bench/amqp_tool Benchmarks/amqp_tool.c -lrabbitmq
gcc -O2 -Wall -shared -fPIC -o .build/bench/libcompute_hypervisor_memhv.so -ISources/PluginABI/include \
    Tests/integration/plugins/memhv.c -lpthread
export CA_BENCH_TOOL=$PWD/.build/bench/amqp_tool CA_BENCH_MEMHV=$PWD/.build/bench/libcompute_hypervisor_memhv.so
python3 Benchmarks/bench.py
echo "== images (glance plugin vs curl; cached second build)"
bash scripts/glance.sh start
python3 Benchmarks/images.py
echo "== VIF plugs (linuxbridge plugin vs ip commands)"
python3 Benchmarks/vifs.py
echo "== metrics endpoint cost (drain and idle RSS with [metrics] listen on vs off)"
python3 Benchmarks/metrics.py
echo "== the cost curve: periodic tasks and memory at 100 … 50,000 instances (PNG plot)"
python3 Benchmarks/scale.py
echo "== native call latency against the broker floor, hand-back wait off and on, with a syscall timeline"
python3 Benchmarks/calls.py
echo "== where an idle agent's memory is (smaps by mapping)"
python3 Benchmarks/smaps.py
echo "== a rack on one broker (CA_BENCH_RACK agents, default 200, vs as many oslo.messaging anchors)"
python3 Benchmarks/rack.py
echo "== the agent vs nova-compute 34 (fake driver) under the real nova 34 control plane"
python3 Benchmarks/nova.py
