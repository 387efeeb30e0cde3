#!/usr/bin/env bash
# Installs, starts and stops a single-node Apache Kafka (KRaft, broker and controller in one
# process) on 127.0.0.1 for local runs and tests. The jars come from Maven Central through
# pom.xml; everything else lives under the cache folder, which git ignores.
#
#   kafka.sh install   download the pinned jars once (a second run reuses them)
#   kafka.sh start     install if needed, format storage, start, wait until it responds
#   kafka.sh stop      stop the broker this script started, by its PID
#   kafka.sh status    say whether it runs
#   kafka.sh bootstrap print the bootstrap address
#
# If KAFKA_BOOTSTRAP_SERVERS is set, that cluster is used: install and start do nothing.
# HERALD_KAFKA_PORT (19092) and HERALD_KAFKA_CONTROLLER_PORT (19093) choose other ports,
# HERALD_KAFKA_HEAP (512m) the heap size, HERALD_KAFKA_HOME (.cache/kafka) the folder.
# HERALD_KAFKA_KEEP_DATA=1 starts on the storage of the last run instead of an empty one, as a
# broker coming back after an outage does.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${HERALD_KAFKA_HOME:-$repo/.cache/kafka}
port=${HERALD_KAFKA_PORT:-19092}
controller_port=${HERALD_KAFKA_CONTROLLER_PORT:-19093}
heap=${HERALD_KAFKA_HEAP:-512m}
start_timeout_s=${HERALD_KAFKA_START_TIMEOUT_S:-120}
libs=$cache/libs
data=$cache/data
pid_file=$cache/kafka.pid
# The port of the broker this script started, so status and bootstrap report where it listens
# whatever the calling shell sets.
port_file=$cache/kafka.port

log() { echo "kafka.sh: $*" >&2; }

external() { [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; }

install() {
  if external; then
    log "KAFKA_BOOTSTRAP_SERVERS is set ($KAFKA_BOOTSTRAP_SERVERS): using that cluster, installing nothing"
    return
  fi
  local stamp=$libs/.installed-$(sha256sum "$here/pom.xml" | cut -c1-16)
  if [[ -f $stamp ]]; then
    return
  fi
  command -v java >/dev/null || { log "java not found: install a Java 17+ runtime"; exit 1; }
  command -v mvn >/dev/null || { log "mvn not found: install Maven"; exit 1; }
  log "downloading the Kafka jars pinned in deploy/local/pom.xml into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs"
  touch "$stamp"
}

running_pid() {
  [[ -f $pid_file ]] || return 1
  local pid
  pid=$(cat "$pid_file")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

ready() { python3 "$here/kafka_ready.py" "127.0.0.1:$port"; }

write_properties() {
  cat >"$cache/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
PROPERTIES
}

start() {
  if external; then
    log "KAFKA_BOOTSTRAP_SERVERS is set: using $KAFKA_BOOTSTRAP_SERVERS, starting nothing"
    return
  fi
  if pid=$(running_pid); then
    log "already running (PID $pid) on 127.0.0.1:$(running_port)"
    return
  fi
  if ready; then
    log "another broker already answers on 127.0.0.1:$port; stop it, or choose other ports with HERALD_KAFKA_PORT and HERALD_KAFKA_CONTROLLER_PORT"
    exit 1
  fi
  install
  mkdir -p "$cache/logs"
  write_properties
  # Fresh storage on every start: local runs and tests want an empty cluster, not last run's topics.
  if [[ ${HERALD_KAFKA_KEEP_DATA:-0} != 1 || ! -f $data/meta.properties ]]; then
    rm -rf "$data"
    local cluster_id
    cluster_id=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)
    java -cp "$libs/*" -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$cache/logs" \
      kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$cache/server.properties" >"$cache/logs/format.log"
  fi
  nohup java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -cp "$libs/*" \
    -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$cache/logs" \
    kafka.Kafka "$cache/server.properties" >"$cache/logs/stdout.log" 2>&1 &
  echo $! >"$pid_file"
  echo "$port" >"$port_file"
  log "started (PID $!), waiting until it answers on 127.0.0.1:$port"
  local deadline=$((SECONDS + start_timeout_s))
  until ready; do
    if ! running_pid >/dev/null; then
      log "the broker exited during start-up; last lines of $cache/logs:"
      tail -n 30 "$cache/logs/server.log" "$cache/logs/stdout.log" >&2 || true
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "no answer within ${start_timeout_s}s; see $cache/logs/server.log"
      exit 1
    fi
    sleep 0.5
  done
  log "ready on 127.0.0.1:$port"
}

stop() {
  # Stops the broker this script started, even when KAFKA_BOOTSTRAP_SERVERS names another cluster.
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pid_file"
    return
  fi
  kill "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      log "PID $pid did not stop within 30s, killing it"
      kill -9 "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pid_file" "$port_file"
  log "stopped (PID $pid)"
}

status() {
  if external; then
    echo "external cluster: $KAFKA_BOOTSTRAP_SERVERS"
  elif pid=$(running_pid); then
    echo "running (PID $pid) on 127.0.0.1:$(running_port)"
  else
    echo "not running"
    return 1
  fi
}

# Prints the port of the running broker, or the configured one when none runs.
running_port() {
  if running_pid >/dev/null && [[ -f $port_file ]]; then cat "$port_file"; else echo "$port"; fi
}

bootstrap() {
  if external; then echo "$KAFKA_BOOTSTRAP_SERVERS"; else echo "127.0.0.1:$(running_port)"; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  bootstrap) bootstrap ;;
  *) echo "usage: $0 install|start|stop|status|bootstrap" >&2; exit 2 ;;
esac
