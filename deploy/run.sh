#!/usr/bin/env bash
# Runs Runnel locally: builds it, starts a Kafka broker (unless KAFKA_BROKERS names one) and the four
# services as processes, writes a demo load, and shows a query result from the store and a forecast
# from the analyzer. The services keep running until `deploy/run.sh stop`.
#
#   deploy/run.sh          build, start and demo
#   deploy/run.sh stop     stop the services and the broker this script started
#
# Logs, pids and the store's data live in the git-ignored .cache/run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=$ROOT/.cache/run
BIN=$ROOT/target/debug
SERVICES=(store analyzer processor collector)
START_TIMEOUT=60

die() { echo "run.sh: $*" >&2; exit 1; }

# True while the pid file of $1 names a live process.
alive() { [[ -f $RUN/$1.pid ]] && kill -0 "$(<"$RUN/$1.pid")" 2>/dev/null; }

stop() {
  # Collectors first, stores last: upstream stops before downstream, so nothing is left in flight.
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    local name=${SERVICES[i]}
    if alive "$name"; then
      kill -TERM "$(<"$RUN/$name.pid")"
      for _ in $(seq 1 300); do alive "$name" || break; sleep 0.1; done
      alive "$name" && { echo "run.sh: $name did not stop in 30 s; killing it" >&2; kill -KILL "$(<"$RUN/$name.pid")"; }
      echo "$name stopped"
    fi
    rm -f "$RUN/$name.pid"
  done
  if [[ -f $RUN/broker-started ]]; then
    "$ROOT/deploy/kafka.sh" stop
    rm -f "$RUN/broker-started"
  fi
}

# Polls "$@" until it succeeds and prints something, for at most $START_TIMEOUT seconds.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 $((START_TIMEOUT * 2))); do
    if out=$("$@" 2>/dev/null) && [[ -n $out && $out != "no windows stored yet" ]]; then
      echo "$out"
      return 0
    fi
    sleep 0.5
  done
  die "timed out waiting for $what; logs are in $RUN/logs"
}

up() {
  for name in "${SERVICES[@]}"; do
    alive "$name" && die "$name is already running; run deploy/run.sh stop first"
  done
  for port in 50051 50052 50053; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port 127.0.0.1:$port is taken by another process"
  done

  echo "==> building"
  (cd "$ROOT" && cargo build --workspace --bins)

  mkdir -p "$RUN/logs"
  if [[ -z ${KAFKA_BROKERS:-} ]]; then
    echo "==> starting Kafka"
    "$ROOT/deploy/kafka.sh" status >/dev/null 2>&1 || touch "$RUN/broker-started"
    "$ROOT/deploy/kafka.sh" start >/dev/null
    KAFKA_BROKERS=$("$ROOT/deploy/kafka.sh" brokers)
  fi
  export KAFKA_BROKERS
  export RUNNEL_STORE__STORAGE__PATH=$RUN/store

  echo "==> starting the services (Kafka at $KAFKA_BROKERS)"
  for name in "${SERVICES[@]}"; do
    local args=()
    [[ -f $ROOT/deploy/local/$name.toml ]] && args=(--config "$ROOT/deploy/local/$name.toml")
    "$BIN/$name" "${args[@]}" >"$RUN/logs/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
  done
  for port in 50051 50052 50053; do
    for _ in $(seq 1 $((START_TIMEOUT * 10))); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      for name in "${SERVICES[@]}"; do
        alive "$name" || { tail -n 20 "$RUN/logs/$name.log" >&2; die "$name exited during startup"; }
      done
      sleep 0.1
    done
  done

  echo "==> writing demo load"
  "$BIN/runnel" demo --hosts 4 --span 5m

  echo "==> the store: the latest windows of demo_temperature{host=\"host-0\"}"
  wait_for "the store to hold windows" "$BIN/runnel" range demo_temperature --tag host=host-0 --last 8
  echo
  echo "==> the analyzer: where demo_temperature{host=\"host-0\"} is heading"
  wait_for "a forecast" "$BIN/runnel" forecast demo_temperature --tag host=host-0 --horizon 5m
  echo
  echo "Runnel is running: collector 127.0.0.1:50051 (HTTP 127.0.0.1:8086), store 127.0.0.1:50052, analyzer 127.0.0.1:50053."
  echo "Try: target/debug/runnel series | target/debug/runnel watch | target/debug/runnel --help"
  echo "Stop it with: deploy/run.sh stop   (logs: $RUN/logs)"
}

case ${1:-up} in
  up) up ;;
  stop) stop ;;
  *) echo "usage: deploy/run.sh [up|stop]" >&2; exit 64 ;;
esac
