#!/usr/bin/env bash
# The test command: checks that OpenSSL's headers and Prometheus are installed (as root, installs them),
# validates the deployment files,
# starts a Kafka broker unless KAFKA_BROKERS names one (and exports its SASL_SSL listener as
# KAFKA_SASL_SSL_BROKERS and KAFKA_SASL_SSL_CA for the Kafka security tests; with a broker of your own,
# set those two as well), installs an S3-compatible server for the store's S3 test (moto, from PyPI,
# into .cache/s3-venv) unless RUNNEL_MOTO_SERVER names one, prepares the benchmark's peer engines
# (bench/peers/setup.sh), and runs every test of the workspace. The
# broker it started is stopped at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# rdkafka builds librdkafka with TLS against the system OpenSSL; without its headers the build fails
# minutes in, in a C configure script.
if ! pkg-config --exists openssl 2>/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "==> installing OpenSSL's headers (libssl-dev, pkg-config) from Debian's packages"
    apt-get install -y -qq libssl-dev pkg-config >/dev/null
  else
    echo "test.sh: OpenSSL's headers were not found (pkg-config --exists openssl); install them:" >&2
    echo "  sudo apt-get install -y libssl-dev pkg-config" >&2
    exit 1
  fi
fi

# A real Prometheus server scrapes the services in the ops test, and promtool checks the deployment's
# Prometheus configuration: both from Debian's prometheus package.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "==> installing Prometheus (Debian's prometheus package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "test.sh: prometheus and promtool were not found; install them:" >&2
    echo "  sudo apt-get install -y --no-install-recommends prometheus" >&2
    exit 1
  fi
fi

echo "==> checking docker-compose.yml and deploy/prometheus/prometheus.yml"
deploy/check-compose.sh
promtool check config deploy/prometheus/prometheus.yml

if [[ -z ${KAFKA_BROKERS:-} ]]; then
  if ! deploy/kafka.sh status >/dev/null 2>&1; then
    trap 'deploy/kafka.sh stop' EXIT
  fi
  echo "==> starting Kafka"
  deploy/kafka.sh start >/dev/null
  KAFKA_BROKERS=$(deploy/kafka.sh brokers)
  export KAFKA_BROKERS
  sasl=$(deploy/kafka.sh sasl)
  KAFKA_SASL_SSL_BROKERS=$(sed -n 's/^KAFKA_SASL_SSL_BROKERS=//p' <<<"$sasl")
  KAFKA_SASL_SSL_CA=$(sed -n 's/^KAFKA_SASL_SSL_CA=//p' <<<"$sasl")
  export KAFKA_SASL_SSL_BROKERS KAFKA_SASL_SSL_CA
fi

MOTO_VERSION=5.2.5
if [[ -z ${RUNNEL_MOTO_SERVER:-} ]]; then
  venv=$ROOT/.cache/s3-venv
  if ! "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    echo "==> installing moto $MOTO_VERSION (an S3-compatible server for the tests) into .cache/s3-venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  fi
  export RUNNEL_MOTO_SERVER=$venv/bin/moto_server
fi

# The benchmark suite's short mode runs as a test (bench/tests/suite.rs), its peer engines included:
# Kafka Streams built with Maven, Quix Streams from PyPI (skipped when already there).
bench/peers/setup.sh

echo "==> cargo test (Kafka at $KAFKA_BROKERS)"
cargo test --workspace --locked "$@"
