#!/usr/bin/env bash
# Validates docker-compose.yml (or the file given) without a Docker engine.
#
# The validator is Debian's docker-compose 1.29 (the Python v1), whose `config` loads the file,
# resolves anchors and checks it against the Compose schema entirely offline. Its schema predates
# a few newer keys, so the compose file stays within what it knows (no top-level `name:`).
# On top of the schema it checks the one promise the file makes about scaling: no service has a
# fixed container name or host port, so `docker compose up --scale SERVICE=N` works for all.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FILE=${1:-$ROOT/docker-compose.yml}

die() { echo "check-compose.sh: $*" >&2; exit 1; }

[[ -f $FILE ]] || die "no such file: $FILE"

if ! command -v docker-compose >/dev/null; then
  # CI runs as root on Debian; elsewhere, say what to install rather than try sudo.
  [[ $(id -u) == 0 ]] || die "docker-compose not found; install it: sudo apt-get install -y --no-install-recommends docker-compose"
  echo "check-compose.sh: installing Debian's docker-compose (v1) to validate $FILE" >&2
  # --no-install-recommends: the package recommends docker.io, a whole engine we do not want.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi

# `config` prints the resolved file, or the schema error and a non-zero status.
if ! rendered=$(docker-compose -f "$FILE" config 2>&1); then
  echo "$rendered" >&2
  die "$FILE is not a valid Compose file"
fi

# Ports come out normalised as [IP:][HOST:]CONTAINER[/PROTO]; a HOST part pins the service to one
# replica, and so does a container_name.
if pinned=$(grep -nE '^ *container_name:|^ *- ([0-9.]+:)?[0-9]+(-[0-9]+)?:[0-9]+' <<<"$rendered"); then
  echo "$pinned" >&2
  die "$FILE gives a service a fixed container name or host port (above, in the resolved file), so it cannot be scaled"
fi

echo "$FILE: valid"

# The files the compose file mounts into its OpenTelemetry collector and Grafana; Debian's python3-yaml
# came with docker-compose.
/usr/bin/python3 "$ROOT/deploy/check-observability.py"
