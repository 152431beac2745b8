#!/usr/bin/env bash
# The test command: validates the deployment files, starts a Kafka broker unless KAFKA_BROKERS names
# one, and runs every test of the workspace against it. The broker it started is stopped at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

echo "==> checking docker-compose.yml"
deploy/check-compose.sh

if [[ -z ${KAFKA_BROKERS:-} ]]; then
  if ! deploy/kafka.sh status >/dev/null 2>&1; then
    trap 'deploy/kafka.sh stop' EXIT
  fi
  echo "==> starting Kafka"
  deploy/kafka.sh start >/dev/null
  KAFKA_BROKERS=$(deploy/kafka.sh brokers)
  export KAFKA_BROKERS
fi

echo "==> cargo test (Kafka at $KAFKA_BROKERS)"
cargo test --workspace --locked "$@"
