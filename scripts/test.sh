#!/usr/bin/env bash
# Runs every test: unit tests, end-to-end tests against a real Kafka broker (started here unless
# one is running or KAFKA_BOOTSTRAP_SERVERS names one), and the Python publishing example.
# Needs Rust, Java 17+, Maven and Python 3; installs Kafka and the Python packages itself.
set -euo pipefail
cd "$(dirname "$0")/.."

started_kafka=0
stop_kafka() { if [[ $started_kafka == 1 ]]; then deploy/local/kafka.sh stop; fi; }
trap stop_kafka EXIT

if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
  deploy/local/kafka.sh start
  started_kafka=1
fi
export KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-$(deploy/local/kafka.sh bootstrap)}

# The publishing example's test runs Python with confluent-kafka.
HERALD_PYTHON=$(scripts/python-env.sh)
export HERALD_PYTHON

# Binaries first: the end-to-end tests start `herald` as a child process.
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"; stop_kafka' EXIT
# A failing test must not end the script before the summary: its status is kept for the end.
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?

# A short load-test run that checks the harness's own accounting: nothing missing, no
# unexplained duplicates, every signature valid. Long runs stay out of CI.
target/debug/herald-loadtest loadtest/scenarios/ci-smoke.toml --out out/loadtest-ci || status=$?

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
