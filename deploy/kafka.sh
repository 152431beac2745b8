#!/usr/bin/env bash
# Runs a real, ephemeral, single-node Apache Kafka 4.4.0 broker (KRaft, combined broker and
# controller) on 127.0.0.1 for development and integration tests, with a second, SASL_SSL listener
# for the tests of Kafka security (its CA and broker certificate made by openssl at every start),
# and, for fault tests, a separate three-node cluster (replication factor 3, min.insync.replicas 2)
# whose nodes can be stopped, killed, paused and restarted one at a time.
#
# The broker is the upstream Kafka code, fetched as jars from Maven Central with the tiny pom in
# deploy/kafka/pom.xml, so there is no tarball to download and no mock to drift from the real thing.
# Everything it needs or writes lives in the git-ignored .cache/kafka at the repository root.
set -euo pipefail

usage() {
  cat <<EOF
usage: deploy/kafka.sh fetch|start|stop|status|brokers|sasl
       deploy/kafka.sh cluster-start|cluster-stop|cluster-status|cluster-brokers
       deploy/kafka.sh node-stop|node-kill|node-start|node-pause|node-resume N

  fetch    download Kafka 4.4.0 and its runtime jars into .cache/kafka/libs (once)
  start    format fresh storage and start the broker; prints its address when it answers
  stop     stop the broker started by start (SIGTERM, then SIGKILL after 30 s)
  status   say whether the broker runs, and where (exit 3 when it does not)
  brokers  print the bootstrap address (host:port) if the broker runs
  sasl     print what a client of the SASL_SSL listener needs, if the broker runs, as lines
           KAFKA_SASL_SSL_BROKERS=host:port, KAFKA_SASL_SSL_CA=<CA certificate, PEM>,
           KAFKA_SASL_SSL_MECHANISMS=PLAIN,SCRAM-SHA-512, KAFKA_SASL_SSL_USERNAME=runnel and
           KAFKA_SASL_SSL_PASSWORD=runnel-secret; the CA is .cache/kafka/run/tls/ca.pem

  The three-node cluster, independent of the single broker (its own ports and folders under
  .cache/kafka/cluster): every node is a combined broker and controller of one static quorum;
  topics default to 3 replicas with min.insync.replicas=2, so one node may be down.

  cluster-start    format fresh storage for three nodes and start them; prints the bootstrap
                   list (127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3) once every node answers
  cluster-stop     stop every node (SIGTERM, then SIGKILL after 30 s); does nothing when stopped
  cluster-status   one line per node; exit 0 when all three run (paused or not), 1 when some,
                   3 when none
  cluster-brokers  print the bootstrap list if the cluster was started and a node runs
  node-stop N      stop node N (1, 2 or 3) with SIGTERM and wait for it to exit
  node-kill N      kill node N with SIGKILL, as a crash would
  node-start N     start node N again on its existing storage; prints its address once it answers
  node-pause N     freeze node N with SIGSTOP, as a long GC pause or a stalled VM would: it keeps
                   its sockets and sessions but answers nothing until node-resume N (SIGCONT)

environment:
  KAFKA_PORT             PLAINTEXT port (default 9092)
  KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT+1)
  KAFKA_SASL_SSL_PORT    SASL_SSL port of the single broker (default KAFKA_PORT+2)
  KAFKA_START_TIMEOUT    seconds to wait for a broker or node to answer (default 90)
  KAFKA_CLUSTER_PORT     the cluster's base port (default 19092): node i listens on
                         base+2(i-1) (PLAINTEXT) and base+2(i-1)+1 (CONTROLLER)
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
# How messages name the broker the variables above describe; use_node points them all at a node.
NAME=kafka

PORT=${KAFKA_PORT:-9092}
CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}
# The single broker's SASL_SSL listener: TLS with a certificate for 127.0.0.1 and localhost signed by
# a CA made at start, and SASL PLAIN or SCRAM-SHA-512 as this one user. Test credentials, nothing else.
SASL_PORT=${KAFKA_SASL_SSL_PORT:-$((PORT + 2))}
SASL_USER=runnel
SASL_PASSWORD=runnel-secret
TLS=$RUN/tls
SASL_FILE=$RUN/sasl_ssl
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=30

CLUSTER=$CACHE/cluster
CLUSTER_BROKERS_FILE=$CLUSTER/brokers
CLUSTER_PORT=${KAFKA_CLUSTER_PORT:-19092}
NODES=(1 2 3)

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

# Writes $CONFIG and $LOG_CONFIG for the broker on $PORT and $CONTROLLER_PORT: node id $1,
# $2 replicas for topics and internal topics, min.insync.replicas $3, and the quorum lines $4;
# with "sasl_ssl" as $5, also the SASL_SSL listener on $SASL_PORT with the key and certificates
# that make_tls wrote.
write_config() {
  local node_id=$1 replicas=$2 min_isr=$3 quorum=$4 sasl=${5:-}
  local listeners="PLAINTEXT://127.0.0.1:$PORT" advertised="PLAINTEXT://127.0.0.1:$PORT"
  local map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ $sasl == sasl_ssl ]]; then
    # Before CONTROLLER, whose port use_node reads from the end of the line.
    listeners+=",SASL_SSL://127.0.0.1:$SASL_PORT"
    advertised+=",SASL_SSL://127.0.0.1:$SASL_PORT"
    map+=",SASL_SSL:SASL_SSL"
  fi
  cat >"$CONFIG" <<EOF
# Written by deploy/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=$node_id
listeners=$listeners,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=$advertised
listener.security.protocol.map=$map
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
$quorum
log.dirs=$DATA
num.partitions=1
default.replication.factor=$replicas
min.insync.replicas=$min_isr
# Tests create their topics explicitly, so a typo fails instead of making a topic.
auto.create.topics.enable=false
# Internal topics are replicated like the rest: a single broker must keep them on one replica.
offsets.topic.replication.factor=$replicas
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
# Consumer groups in tests should not wait 3 s for more members that never come.
group.initial.rebalance.delay.ms=0
EOF
  if [[ $sasl == sasl_ssl ]]; then
    # Brokers and controllers keep talking PLAINTEXT among themselves; only clients use SASL_SSL.
    # PLAIN's users are the JAAS config's user_NAME entries; SCRAM's credentials live in the KRaft
    # metadata, written by 'StorageTool format --add-scram'. The keystore is one PEM file (an
    # unencrypted PKCS#8 key, then the certificate chain), so no password is needed.
    cat >>"$CONFIG" <<EOF
# The SASL_SSL listener for the tests of Kafka security.
listener.name.sasl_ssl.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS/broker.pem
listener.name.sasl_ssl.ssl.client.auth=none
EOF
  fi
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

# Starts the broker of $CONFIG in the background with at most $1 of heap and records its pid.
launch() {
  # setsid: the broker gets its own session, so it outlives the shell (and job) that started it;
  # 8>&- 9>&- keep it from inheriting, and so holding forever, this script's locks.
  setsid java "-Xmx$1" -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG_CONFIG" -Dkafka.logs.dir="$LOGS" \
    -cp "$LIBS/*" kafka.Kafka "$CONFIG" >"$LOGS/server.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$PID_FILE"
}

# Waits until the broker answers a real request, failing early if the JVM dies.
wait_ready() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
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

# Writes a fresh CA ($TLS/ca.pem) and a broker certificate for 127.0.0.1 and localhost that it
# signs, with the broker's key, into the keystore $TLS/broker.pem.
make_tls() {
  command -v openssl >/dev/null || die "openssl not found: install it (apt-get install -y openssl)"
  mkdir -p "$TLS"
  (
    cd "$TLS"
    # -nodes: keys unencrypted, in PKCS#8 ("BEGIN PRIVATE KEY"), the form Kafka's PEM keystore reads.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 365 \
      -subj "/CN=Runnel test CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=localhost"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
      -extfile broker.ext -out broker.crt
    cat broker.key broker.crt ca.pem >broker.pem
    rm -f ca.key broker.csr broker.ext ca.srl
  ) >"$LOGS/tls.log" 2>&1 || { cat "$LOGS/tls.log" >&2; die "making the SASL_SSL listener's certificates in $TLS failed"; }
}

start() {
  if running; then
    echo "kafka already running (pid $(<"$PID_FILE"))" >&2
    if [[ ! -f $BROKERS_FILE ]]; then
      # An earlier start was interrupted while waiting: wait for its broker, on its own port,
      # rather than report one that may not be up yet.
      PORT=$(sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\).*|\1|p' "$CONFIG")
      wait_ready "$(<"$PID_FILE")"
      echo "127.0.0.1:$PORT" >"$BROKERS_FILE"
    fi
    cat "$BROKERS_FILE"
    return 0
  fi
  local port
  for port in "$PORT" "$CONTROLLER_PORT" "$SASL_PORT"; do
    if port_open "$port"; then die "port 127.0.0.1:$port is taken by another process"; fi
  done
  fetch
  # Ephemeral by design: every start gets empty storage, a new cluster id and a new CA.
  rm -rf "$DATA" "$RUN"
  mkdir -p "$DATA" "$LOGS" "$RUN"
  make_tls
  write_config 1 1 1 "# A dynamic (KIP-853) quorum of one, set up by 'StorageTool format --standalone'.
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT" sasl_ssl
  printf '%s\n' "KAFKA_SASL_SSL_BROKERS=127.0.0.1:$SASL_PORT" "KAFKA_SASL_SSL_CA=$TLS/ca.pem" \
    "KAFKA_SASL_SSL_MECHANISMS=PLAIN,SCRAM-SHA-512" "KAFKA_SASL_SSL_USERNAME=$SASL_USER" \
    "KAFKA_SASL_SSL_PASSWORD=$SASL_PASSWORD" >"$SASL_FILE"
  local cluster_id
  cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid)
  kafka_tool kafka.tools.StorageTool format --standalone \
    --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]" \
    --cluster-id "$cluster_id" --config "$CONFIG" >"$LOGS/format.log" 2>&1 ||
    { cat "$LOGS/format.log" >&2; die "formatting KRaft storage in $DATA failed"; }

  local started=$SECONDS
  launch 1g
  wait_ready "$(<"$PID_FILE")"
  echo "127.0.0.1:$PORT" >"$BROKERS_FILE"
  echo "kafka started in $((SECONDS - started))s (pid $(<"$PID_FILE")), log $LOGS/server.log" >&2
  cat "$BROKERS_FILE"
}

# True while process $1 exists and is not a zombie: a killed broker whose parent has gone may linger
# as one until something reaps it, and a zombie holds no ports, files or locks.
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # The state follows the command name, which is in parentheses and may itself hold spaces.
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# True when process $1 is stopped by SIGSTOP.
paused() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} == T ]]
}

# Sends SIGTERM to the processes $@, waits up to STOP_TIMEOUT for them all, then SIGKILLs the rest.
halt() {
  local pid deadline=$((SECONDS + STOP_TIMEOUT))
  kill -TERM "$@" 2>/dev/null || true
  # A paused broker (node-pause) would hold the SIGTERM until it is resumed.
  kill -CONT "$@" 2>/dev/null || true
  for pid in "$@"; do
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.5; done
    if alive "$pid"; then
      echo "$NAME did not exit within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL" >&2
      kill_wait "$pid"
    fi
  done
}

# Sends SIGKILL to process $1 and waits for the kernel to end it.
kill_wait() {
  local pid=$1 deadline=$((SECONDS + 10))
  kill -KILL "$pid" 2>/dev/null || true
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  if alive "$pid"; then die "$NAME (pid $pid) still exists 10 s after SIGKILL"; fi
}

# Ends the current broker with $1 (halt: SIGTERM, then SIGKILL; kill_wait: SIGKILL) and says $2.
end_with() {
  if ! running; then
    rm -f "$PID_FILE" "$BROKERS_FILE"
    echo "$NAME not running"
    return 0
  fi
  "$1" "$(<"$PID_FILE")"
  rm -f "$PID_FILE" "$BROKERS_FILE"
  echo "$NAME $2"
}

stop() { end_with halt stopped; }

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

sasl() {
  brokers >/dev/null
  # A broker started by an older kafka.sh has no SASL_SSL listener.
  [[ -f $SASL_FILE ]] ||
    die "kafka runs without a SASL_SSL listener; restart it: deploy/kafka.sh stop; deploy/kafka.sh start"
  cat "$SASL_FILE"
}

# ---------------------------------------------------------------------------------------------
# The three-node cluster. Each node has the single broker's layout (data, logs, run) under
# .cache/kafka/cluster/node$i, and use_node points the variables every function above works on at
# it, so that writing its configuration, launching, waiting, stopping and reporting are shared.

# Points DATA, LOGS, RUN, CONFIG, PORT, ... at cluster node $1.
use_node() {
  [[ $1 =~ ^[123]$ ]] || die "no cluster node '$1': nodes are 1, 2 and 3"
  NAME="kafka node $1"
  DATA=$CLUSTER/node$1/data
  LOGS=$CLUSTER/node$1/logs
  RUN=$CLUSTER/node$1/run
  PID_FILE=$RUN/kafka.pid
  BROKERS_FILE=$RUN/brokers
  CONFIG=$RUN/server.properties
  LOG_CONFIG=$RUN/log4j2.properties
  if [[ -f $CONFIG ]]; then
    # A formatted node keeps the ports it was formatted with, whatever KAFKA_CLUSTER_PORT says now:
    # its peers know it by them.
    PORT=$(sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:||p' "$CONFIG")
    CONTROLLER_PORT=$(sed -n 's|^listeners=.*CONTROLLER://127.0.0.1:||p' "$CONFIG")
  else
    PORT=$((CLUSTER_PORT + 2 * ($1 - 1)))
    CONTROLLER_PORT=$((PORT + 1))
  fi
}

# How many cluster nodes run; with "awake", only those not paused.
nodes_running() {
  local i n=0
  for i in "${NODES[@]}"; do
    use_node "$i"
    if running && { [[ ${1:-} != awake ]] || ! paused "$(<"$PID_FILE")"; }; then n=$((n + 1)); fi
  done
  echo "$n"
}

cluster_start() {
  if [[ $(nodes_running awake) == "${#NODES[@]}" && -f $CLUSTER_BROKERS_FILE ]]; then
    echo "kafka cluster already running" >&2
    cat "$CLUSTER_BROKERS_FILE"
    return 0
  fi
  if [[ $(nodes_running) != 0 ]]; then
    # A cluster left half up (a node killed or paused by a test that then crashed, an interrupted
    # start) is not the healthy cluster the caller expects.
    echo "kafka cluster partly running or paused; stopping it to start afresh" >&2
    cluster_stop >/dev/null
  fi
  # Ephemeral by design, as the single broker: every start gets empty storage and a new cluster id,
  # and the ports come from KAFKA_CLUSTER_PORT, not from an earlier start's configuration.
  rm -rf "$CLUSTER"/node* "$CLUSTER_BROKERS_FILE"
  local i port voters="" bootstrap=""
  for i in "${NODES[@]}"; do
    use_node "$i"
    for port in "$PORT" "$CONTROLLER_PORT"; do
      if port_open "$port"; then die "port 127.0.0.1:$port is taken by another process"; fi
    done
    # A static quorum (controller.quorum.voters): every node knows every controller from the start,
    # so formatting needs neither --standalone nor --initial-controllers.
    voters+="${voters:+,}$i@127.0.0.1:$CONTROLLER_PORT"
    bootstrap+="${bootstrap:+,}127.0.0.1:$PORT"
  done
  # fetch writes the shared jars, so it runs under the single broker's lock.
  (lock && fetch)
  for i in "${NODES[@]}"; do
    use_node "$i"
    mkdir -p "$DATA" "$LOGS" "$RUN"
    write_config "$i" 3 2 "# A static quorum of the three nodes, each a broker and a controller.
controller.quorum.voters=$voters"
  done
  local cluster_id
  cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid)
  # Formatting is one JVM per node: run them side by side, each node with the same cluster id.
  local pids=()
  for i in "${NODES[@]}"; do
    use_node "$i"
    kafka_tool kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$CONFIG" \
      >"$LOGS/format.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[i]}"; then
      use_node "${NODES[i]}"
      cat "$LOGS/format.log" >&2
      die "formatting KRaft storage in $DATA failed"
    fi
  done

  # A node that does not come up takes the others down with it (wait_ready stops it and exits).
  trap 'cluster_stop >/dev/null' EXIT
  local started=$SECONDS
  for i in "${NODES[@]}"; do
    use_node "$i"
    launch 512m
  done
  # A node finishes starting only once a majority of controllers elected a leader, so all three
  # are launched before waiting for any.
  for i in "${NODES[@]}"; do
    use_node "$i"
    wait_ready "$(<"$PID_FILE")"
    echo "127.0.0.1:$PORT" >"$BROKERS_FILE"
  done
  trap - EXIT
  echo "$bootstrap" >"$CLUSTER_BROKERS_FILE"
  echo "kafka cluster started in $((SECONDS - started))s, logs in $CLUSTER/node*/logs" >&2
  cat "$CLUSTER_BROKERS_FILE"
}

cluster_stop() {
  local i pids=()
  for i in "${NODES[@]}"; do
    use_node "$i"
    if running; then pids+=("$(<"$PID_FILE")"); fi
  done
  if ((${#pids[@]} > 0)); then
    # All at once: stopped one by one, the last nodes would wait for a controller majority that
    # has already gone.
    NAME="a kafka cluster node"
    halt "${pids[@]}"
  fi
  for i in "${NODES[@]}"; do
    use_node "$i"
    rm -f "$PID_FILE" "$BROKERS_FILE"
  done
  rm -f "$CLUSTER_BROKERS_FILE"
  if ((${#pids[@]} > 0)); then echo "kafka cluster stopped"; else echo "kafka cluster not running"; fi
}

cluster_status() {
  local i up=0
  for i in "${NODES[@]}"; do
    use_node "$i"
    if running && paused "$(<"$PID_FILE")"; then
      echo "$NAME paused (pid $(<"$PID_FILE"))"
      up=$((up + 1))
    elif running && [[ -f $BROKERS_FILE ]]; then
      echo "$NAME running (pid $(<"$PID_FILE")) on $(<"$BROKERS_FILE")"
      up=$((up + 1))
    elif running; then
      echo "$NAME starting (pid $(<"$PID_FILE")), not answering yet"
      up=$((up + 1))
    else
      echo "$NAME not running"
    fi
  done
  if ((up == 0)); then return 3; elif ((up < ${#NODES[@]})); then return 1; fi
}

cluster_brokers() {
  if [[ -f $CLUSTER_BROKERS_FILE && $(nodes_running) != 0 ]]; then
    cat "$CLUSTER_BROKERS_FILE"
  else
    die "kafka cluster not running; start it with deploy/kafka.sh cluster-start"
  fi
}

node_stop() {
  use_node "$1"
  stop
}

node_kill() {
  use_node "$1"
  end_with kill_wait killed
}

node_start() {
  use_node "$1"
  [[ -f $CONFIG && -f $DATA/meta.properties ]] ||
    die "$NAME has no storage; start the cluster with deploy/kafka.sh cluster-start"
  # Alone, a node waits a minute for a controller majority and then gives up.
  [[ $(nodes_running) != 0 ]] ||
    die "no node of the kafka cluster runs; node-start rejoins a running cluster, start it with deploy/kafka.sh cluster-start"
  if running; then
    echo "$NAME already running (pid $(<"$PID_FILE"))" >&2
    if [[ ! -f $BROKERS_FILE ]]; then
      # An earlier node-start was interrupted while waiting: wait for the node it launched.
      wait_ready "$(<"$PID_FILE")"
      echo "127.0.0.1:$PORT" >"$BROKERS_FILE"
    fi
  else
    local port
    for port in "$PORT" "$CONTROLLER_PORT"; do
      if port_open "$port"; then die "port 127.0.0.1:$port is taken by another process"; fi
    done
    # Keep the log of the run that was stopped or killed; wait_ready looks for the start line of
    # this run in a fresh one.
    if [[ -f $LOGS/server.log ]]; then mv "$LOGS/server.log" "$LOGS/server.log.1"; fi
    rm -f "$BROKERS_FILE"
    local started=$SECONDS
    launch 512m
    wait_ready "$(<"$PID_FILE")"
    echo "127.0.0.1:$PORT" >"$BROKERS_FILE"
    echo "$NAME started in $((SECONDS - started))s (pid $(<"$PID_FILE")), log $LOGS/server.log" >&2
  fi
  cat "$BROKERS_FILE"
}

node_pause() {
  use_node "$1"
  running || die "$NAME not running"
  kill -STOP "$(<"$PID_FILE")"
  echo "$NAME paused"
}

node_resume() {
  use_node "$1"
  running || die "$NAME not running"
  kill -CONT "$(<"$PID_FILE")"
  echo "$NAME resumed"
}

# Serialises the cluster's commands among themselves; the single broker's lock stays free, so the
# two can start and stop independently.
cluster_lock() { mkdir -p "$CLUSTER"; exec 8>"$CLUSTER/.lock"; flock 8; }

# Serialise fetch, start and stop, so that two callers (say, parallel CI steps) cannot both
# format the storage or both launch a broker.
lock() { mkdir -p "$CACHE"; exec 9>"$CACHE/.lock"; flock 9; }

case ${1:-} in
  fetch) lock; fetch ;;
  start) lock; start ;;
  stop) lock; stop ;;
  status) status ;;
  brokers) brokers ;;
  sasl) sasl ;;
  cluster-start) cluster_lock; cluster_start ;;
  cluster-stop) cluster_lock; cluster_stop ;;
  cluster-status) cluster_status ;;
  cluster-brokers) cluster_brokers ;;
  node-stop | node-kill | node-start | node-pause | node-resume)
    [[ $# == 2 ]] || { usage >&2; exit 64; }
    cluster_lock
    "${1//-/_}" "$2"
    ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 64 ;;
esac
