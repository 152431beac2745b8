#!/usr/bin/env bash
# Runs a real, ephemeral, single-node Apache Kafka 4.4.0 broker (KRaft, combined broker and
# controller) on 127.0.0.1 for development and integration tests.
#
# The broker is the upstream Kafka code, fetched as jars from Maven Central with the tiny pom in
# deploy/kafka/pom.xml, so there is no tarball to download and no mock to drift from the real thing.
# Everything it needs or writes lives in the git-ignored .cache/kafka at the repository root.
set -euo pipefail

usage() {
  cat <<EOF
usage: deploy/kafka.sh fetch|start|stop|status|brokers

  fetch    download Kafka 4.4.0 and its runtime jars into .cache/kafka/libs (once)
  start    format fresh storage and start the broker; prints its address when it answers
  stop     stop the broker started by start (SIGTERM, then SIGKILL after 30 s)
  status   say whether the broker runs, and where (exit 3 when it does not)
  brokers  print the bootstrap address (host:port) if the broker runs

environment:
  KAFKA_PORT             PLAINTEXT port (default 9092)
  KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT+1)
  KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 90)
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POM=$ROOT/deploy/kafka/pom.xml
CACHE=$ROOT/.cache/kafka
LIBS=$CACHE/libs
DATA=$CACHE/data
LOGS=$CACHE/logs
RUN=$CACHE/run
PID_FILE=$RUN/kafka.pid
BROKERS_FILE=$RUN/brokers
CONFIG=$RUN/server.properties
LOG_CONFIG=$RUN/log4j2.properties

PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=30

die() { echo "kafka.sh: $*" >&2; exit 1; }

# Runs a Kafka command-line class (StorageTool, BrokerApiVersionsCommand, ...) quietly.
kafka_tool() {
  java -Xmx256m -Dlog4j2.configurationFile="$LOG_CONFIG" -Drunnel.log.level=WARN \
    -cp "$LIBS/*" "$@"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when the pid file names a live broker that this script started; the command line check
# guards against a stale pid file whose number the kernel gave to another process since.
running() {
  [[ -f $PID_FILE ]] || return 1
  local pid; pid=$(<"$PID_FILE")
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $CONFIG"
}

fetch() {
  # The marker holds the pom's hash, so editing the pom (say, a new Kafka version) refetches.
  local stamp; stamp=$(sha256sum "$POM" | cut -d' ' -f1)
  if [[ -f $LIBS/.fetched && $(<"$LIBS/.fetched") == "$stamp" ]]; then return 0; fi
  command -v mvn >/dev/null || die "mvn not found: install Maven 3 (apt-get install -y maven)"
  command -v java >/dev/null || die "java not found: install a JDK 17 or newer"
  echo "fetching Kafka 4.4.0 jars from Maven Central into $LIBS" >&2
  rm -rf "$LIBS"
  mkdir -p "$LIBS" "$LOGS"
  # The plugin is named in full so that Maven 3.8 does not fall back to its 2013 default (2.8).
  if ! mvn -B -q -Dstyle.color=never -f "$POM" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$LOGS/fetch.log" 2>&1; then
    # Maven's first error names the cause (unreachable repository, missing artifact, ...).
    grep -m 1 -o '\[ERROR\] .*' "$LOGS/fetch.log" >&2 || true
    die "could not download Kafka 4.4.0 and its dependencies from Maven Central; full Maven output in $LOGS/fetch.log"
  fi
  echo "$stamp" >"$LIBS/.fetched"
}

write_config() {
  cat >"$CONFIG" <<EOF
# Written by deploy/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# A dynamic (KIP-853) quorum of one, set up by 'StorageTool format --standalone'.
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
log.dirs=$DATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
# Tests create their topics explicitly, so a typo fails instead of making a topic.
auto.create.topics.enable=false
# One broker: every internal topic must live with a single replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumer groups in tests should not wait 3 s for more members that never come.
group.initial.rebalance.delay.ms=0
EOF
  # Console output goes to stderr; start redirects the broker's into logs/server.log.
  cat >"$LOG_CONFIG" <<'EOF'
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:runnel.log.level:-INFO}
rootLogger.appenderRef.console.ref = STDERR
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

# Waits until the broker answers a real request, failing early if the JVM dies.
wait_ready() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$LOGS/server.log" >&2
      rm -f "$PID_FILE"
      die "broker exited during startup; log above, full log in $LOGS/server.log"
    fi
    if port_open "$PORT" && grep -q 'Kafka Server started' "$LOGS/server.log" &&
      kafka_tool org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "127.0.0.1:$PORT" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  tail -n 40 "$LOGS/server.log" >&2
  # A half-started broker would make the next start report success, so take it down.
  stop >/dev/null
  die "broker did not answer on 127.0.0.1:$PORT within ${START_TIMEOUT}s and was stopped; log above, full log in $LOGS/server.log"
}

start() {
  if running; then
    echo "kafka already running (pid $(<"$PID_FILE"))" >&2
    if [[ ! -f $BROKERS_FILE ]]; then
      # An earlier start was interrupted while waiting: wait for its broker, on its own port,
      # rather than report one that may not be up yet.
      PORT=$(sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:||p' "$CONFIG")
      wait_ready "$(<"$PID_FILE")"
      echo "127.0.0.1:$PORT" >"$BROKERS_FILE"
    fi
    cat "$BROKERS_FILE"
    return 0
  fi
  local port
  for port in "$PORT" "$CONTROLLER_PORT"; do
    if port_open "$port"; then die "port 127.0.0.1:$port is taken by another process"; fi
  done
  fetch
  # Ephemeral by design: every start gets empty storage and a new cluster id.
  rm -rf "$DATA" "$RUN"
  mkdir -p "$DATA" "$LOGS" "$RUN"
  write_config
  local cluster_id
  cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid)
  kafka_tool kafka.tools.StorageTool format --standalone \
    --cluster-id "$cluster_id" --config "$CONFIG" >"$LOGS/format.log" 2>&1 ||
    { cat "$LOGS/format.log" >&2; die "formatting KRaft storage in $DATA failed"; }

  # setsid: the broker gets its own session, so it outlives the shell (and job) that started it;
  # 9>&- keeps it from inheriting, and so holding forever, this script's lock.
  local started=$SECONDS
  setsid java -Xmx1g -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG_CONFIG" -Dkafka.logs.dir="$LOGS" \
    -cp "$LIBS/*" kafka.Kafka "$CONFIG" >"$LOGS/server.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PID_FILE"
  wait_ready $!
  echo "127.0.0.1:$PORT" >"$BROKERS_FILE"
  echo "kafka started in $((SECONDS - started))s (pid $(<"$PID_FILE")), log $LOGS/server.log" >&2
  cat "$BROKERS_FILE"
}

stop() {
  if ! running; then
    rm -f "$PID_FILE" "$BROKERS_FILE"
    echo "kafka not running"
    return 0
  fi
  local pid; pid=$(<"$PID_FILE")
  kill -TERM "$pid"
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka did not exit within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE" "$BROKERS_FILE"
  echo "kafka stopped"
}

status() {
  if running && [[ -f $BROKERS_FILE ]]; then
    echo "kafka running (pid $(<"$PID_FILE")) on $(<"$BROKERS_FILE")"
  elif running; then
    echo "kafka starting (pid $(<"$PID_FILE")), not answering yet"
  else
    echo "kafka not running"
    return 3 # as LSB init scripts do, so callers can test it
  fi
}

brokers() {
  if running && [[ -f $BROKERS_FILE ]]; then
    cat "$BROKERS_FILE"
  else
    die "kafka not running; start it with deploy/kafka.sh start"
  fi
}

# Serialise fetch, start and stop, so that two callers (say, parallel CI steps) cannot both
# format the storage or both launch a broker.
lock() { mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock 9; }

case ${1:-} in
  fetch) lock; fetch ;;
  start) lock; start ;;
  stop) lock; stop ;;
  status) status ;;
  brokers) brokers ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 64 ;;
esac
