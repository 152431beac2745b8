#!/usr/bin/env bash
# The fuzz command: runs every fuzz target of the collector's parsers (fuzz/fuzz_targets) with
# cargo-fuzz on the nightly toolchain, each for a bounded time, and fails if any finds a crash (a panic,
# or an error outside the target's allowlist). Findings land in fuzz/artifacts/<target>/.
#
#   deploy/fuzz.sh            # each target for 60 s
#   deploy/fuzz.sh 300        # each for 5 minutes
#   deploy/fuzz.sh 30 otlp    # one target
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"

SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
  TARGETS=(line_protocol remote_write otlp)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

for target in "${TARGETS[@]}"; do
  echo "==> fuzzing $target for ${SECONDS_EACH}s"
  mkdir -p "corpus/$target" "seeds/$target"
  # New inputs go to corpus/ (git-ignored); seeds/ holds the committed starting points. No sanitizer:
  # the code under test has no unsafe, and rdkafka's C build would need instrumenting too.
  cargo +nightly fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10
done
echo "==> no findings in ${#TARGETS[@]} target(s), ${SECONDS_EACH}s each"
