#!/usr/bin/env bash
# The benchmark command: builds the suite in release, starts a Kafka broker unless KAFKA_BROKERS names
# one, and runs `runnel-bench` with the given arguments, which writes its section of BENCHMARKS.md.
#
#   deploy/bench.sh suite                          # the standard suite: pipeline, peers, scaling
#   deploy/bench.sh suite --short                  # the same, small (what the test command runs)
#   deploy/bench.sh processor                      # the standard processor benchmark
#   deploy/bench.sh processor --points 200000 --rounds 1   # a short run
#   deploy/bench.sh store                          # store ingest, Parquet encoding, query latency
#   deploy/bench.sh analyzer                       # model updates, aggregates per CPU second, NAB score
#   deploy/bench.sh collector                      # ingest per protocol beside a bare producer
#   deploy/bench.sh pipeline                       # the four services as processes under the load generator
#   deploy/bench.sh load --rate 50000 --duration 1m   # the load generator alone, against a running collector
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ ${1:-} == suite || ${1:-} == peers ]]; then
  # Kafka Streams (Maven) and Quix Streams (PyPI), the peer engines.
  bench/peers/setup.sh
fi

if [[ ${1:-} == store && ! -x target/bench-venv/bin/python ]]; then
  # The Parquet encoding baseline is pyarrow, in a virtualenv of its own under target/.
  echo "==> preparing target/bench-venv with pyarrow"
  python3 -m venv target/bench-venv
  target/bench-venv/bin/pip install --quiet pyarrow
fi

echo "==> building the benchmark suite and the services (release)"
# The services too: the pipeline benchmark runs their binaries, from beside runnel-bench.
cargo build --release --locked -p bench -p collector -p processor -p store -p analyzer

if [[ -z ${KAFKA_BROKERS:-} ]]; then
  if ! deploy/kafka.sh status >/dev/null 2>&1; then
    trap 'deploy/kafka.sh stop' EXIT
  fi
  deploy/kafka.sh start >/dev/null
  KAFKA_BROKERS=$(deploy/kafka.sh brokers)
  export KAFKA_BROKERS
fi

echo "==> runnel-bench $* (Kafka at $KAFKA_BROKERS)"
target/release/runnel-bench "$@"
