#!/usr/bin/env bash
# Runs Herald end to end on the sample events against a local Kafka broker, prints a summary,
# and stops everything it started. Needs Rust, Java 17+, Maven and Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."

started_kafka=0
stop_kafka() { if [[ $started_kafka == 1 ]]; then deploy/local/kafka.sh stop; fi; }
trap stop_kafka EXIT

echo "== Building Herald (the first build takes several minutes)"
cargo build --workspace --bins --quiet

if ! deploy/local/kafka.sh status >/dev/null 2>&1; then
  echo "== Starting Kafka"
  deploy/local/kafka.sh start
  started_kafka=1
fi
export KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-$(deploy/local/kafka.sh bootstrap)}

echo "== Running the demo"
target/debug/herald-demo
