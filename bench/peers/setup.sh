#!/usr/bin/env bash
# Prepares the peer engines of `runnel-bench peers`: builds the Kafka Streams application with Maven
# (bench/peers/kstreams/target/runnel-kstreams-peer.jar) and makes Quix Streams' virtualenv from its
# pinned requirements (bench/peers/quix/.venv). Each step is skipped when its output is newer than
# its inputs, so a second run costs nothing.
set -euo pipefail

PEERS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

jar=$PEERS/kstreams/target/runnel-kstreams-peer.jar
if [[ ! -f $jar || -n $(find "$PEERS/kstreams/pom.xml" "$PEERS/kstreams/src" -newer "$jar" -print -quit) ]]; then
  echo "==> building the Kafka Streams peer (Maven)"
  (cd "$PEERS/kstreams" && mvn -q -B package -DskipTests)
fi

venv=$PEERS/quix/.venv
stamp=$venv/.installed
if [[ ! -f $stamp || $PEERS/quix/requirements.txt -nt $stamp ]]; then
  echo "==> installing Quix Streams into bench/peers/quix/.venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$PEERS/quix/requirements.txt"
  touch "$stamp"
fi
