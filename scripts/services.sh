#!/usr/bin/env bash
# Local etcd, Kafka (KRaft) and PostgreSQL for DMTP's tests, demo and benchmarks: real servers on 127.0.0.1,
# non-default ports, state under .dmtp/ (git ignores it), logs under .dmtp/logs/.
#
#   scripts/services.sh up [etcd|kafka|postgres ...] [--etcd-members N] [--started-file F]
#   scripts/services.sh down [etcd|kafka|postgres ...]
#   scripts/services.sh status
#   scripts/services.sh env          # prints ETCD_ENDPOINTS=…, KAFKA_BROKERS=…, DATABASE_URL=…
#
# `up` is idempotent: a service already running (by its pid file) is left alone. A service the user points at
# (ETCD_ENDPOINTS, KAFKA_BROKERS, DATABASE_URL set in the environment) is used as it is and never started here.
# `--started-file F` appends the names of the services this call really started, so a caller (npm test) stops
# exactly those and nothing it did not start.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DMTP_STATE_DIR:-$ROOT/.dmtp}"
RUN="$STATE/run"
LOGS="$STATE/logs"
CACHE="${DMTP_CACHE_DIR:-$HOME/.cache/dmtp}"

ETCD_CLIENT_PORT_BASE="${DMTP_ETCD_PORT:-23790}"
ETCD_PEER_PORT_BASE="${DMTP_ETCD_PEER_PORT:-23800}"
# Raised from etcd's default of 128 because the coordinator group-commits many transactions' records in one txn.
ETCD_MAX_TXN_OPS="${DMTP_ETCD_MAX_TXN_OPS:-4096}"
KAFKA_VERSION="3.9.1"
KAFKA_PORT="${DMTP_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${DMTP_KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP="${DMTP_KAFKA_HEAP:--Xms256m -Xmx768m}"
PG_PORT="${DMTP_PG_PORT:-25432}"

mkdir -p "$RUN" "$LOGS"

die() { echo "services: $*" >&2; exit 1; }
say() { echo "services: $*" >&2; }

# The pid file's process runs, and is ours: a pid file that outlived a reboot may name an unrelated process
# (which must be neither trusted as a running service nor killed). Our services all name $STATE in their
# command line (data dir or config).
alive() {
  [ -f "$1" ] || return 1
  local pid
  pid="$(cat "$1")"
  kill -0 "$pid" 2>/dev/null || return 1
  [ -r "/proc/$pid/cmdline" ] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for DESCRIPTION SECONDS LOGFILE PIDFILE -- CHECK...: polls CHECK until it succeeds, the process dies, or time runs out.
wait_for() {
  local what="$1" secs="$2" log="$3" pidf="$4"; shift 5
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$pidf" ] && ! alive "$pidf"; then
      die "$what exited during start-up; last lines of $log:
$(tail -n 15 "$log" 2>/dev/null)"
    fi
    [ $SECONDS -lt $deadline ] || die "$what did not become healthy within ${secs}s; see $log"
    sleep 0.2
  done
}

etcd_members() { cat "$RUN/etcd.members" 2>/dev/null || echo 1; }

etcd_endpoints() {
  local n="${1:-$(etcd_members)}" eps=() i
  for ((i = 0; i < n; i++)); do eps+=("http://127.0.0.1:$((ETCD_CLIENT_PORT_BASE + i))"); done
  (IFS=,; echo "${eps[*]}")
}

# Records a service in the started-file the moment its process is spawned, not once it is healthy: a run
# interrupted (or timed out) while waiting for it must still stop it.
mark_started() {
  if [ -n "${started_file:-}" ] && ! grep -qx "$1" "$started_file" 2>/dev/null; then echo "$1" >>"$started_file"; fi
  return 0
}

start_etcd_member() {
  local i="$1" n="$2" cluster="$3"
  local name="dmtp$i" cport=$((ETCD_CLIENT_PORT_BASE + i)) pport=$((ETCD_PEER_PORT_BASE + i))
  local pidf="$RUN/etcd$i.pid" log="$LOGS/etcd$i.log"
  if alive "$pidf"; then return 0; fi
  port_open "$cport" && die "port $cport (etcd member $i) is taken by another process; free it or set DMTP_ETCD_PORT"
  port_open "$pport" && die "port $pport (etcd member $i peer) is taken by another process; free it or set DMTP_ETCD_PEER_PORT"
  local state=new
  [ -d "$STATE/etcd/$name/member" ] && state=existing
  mkdir -p "$STATE/etcd"
  nohup etcd --name "$name" --data-dir "$STATE/etcd/$name" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$cluster" --initial-cluster-state "$state" --initial-cluster-token dmtp-local \
    --max-txn-ops "$ETCD_MAX_TXN_OPS" --heartbeat-interval 100 --election-timeout 1000 \
    --auto-compaction-mode revision --auto-compaction-retention 10000 \
    >>"$log" 2>&1 &
  echo $! >"$pidf"
  mark_started etcd
}

up_etcd() {
  local n="$1"
  command -v etcd >/dev/null || die "etcd not found: install Debian's etcd-server (apt-get install -y etcd-server), or set ETCD_ENDPOINTS to use an existing etcd"
  command -v etcdctl >/dev/null || die "etcdctl not found (it checks etcd's health): install Debian's etcd-client (apt-get install -y etcd-client)"
  if [ -f "$RUN/etcd.members" ] && [ "$(etcd_members)" != "$n" ]; then
    local running=0 i
    for ((i = 0; i < 5; i++)); do alive "$RUN/etcd$i.pid" && running=1; done
    [ $running = 1 ] && die "etcd is running with $(etcd_members) member(s); run 'scripts/services.sh down etcd' before asking for $n"
    rm -rf "$STATE/etcd" # a cluster of another size cannot reuse the old members' data
  fi
  echo "$n" >"$RUN/etcd.members"
  local cluster=() i all_alive=1
  for ((i = 0; i < n; i++)); do
    cluster+=("dmtp$i=http://127.0.0.1:$((ETCD_PEER_PORT_BASE + i))")
    alive "$RUN/etcd$i.pid" || all_alive=0
  done
  if [ $all_alive = 1 ]; then say "etcd already running ($(etcd_endpoints "$n"))"; return 1; fi
  local joined
  joined=$(IFS=,; echo "${cluster[*]}")
  for ((i = 0; i < n; i++)); do start_etcd_member "$i" "$n" "$joined"; done
  for ((i = 0; i < n; i++)); do
    wait_for "etcd member $i" 30 "$LOGS/etcd$i.log" "$RUN/etcd$i.pid" -- \
      etcdctl --endpoints "http://127.0.0.1:$((ETCD_CLIENT_PORT_BASE + i))" --command-timeout=2s endpoint health
  done
  say "etcd up: $(etcd_endpoints "$n") (logs: $LOGS/etcd*.log)"
}

kafka_libs() { echo "$CACHE/kafka-$KAFKA_VERSION/libs"; }

fetch_kafka() {
  local libs
  libs="$(kafka_libs)"
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "Maven (mvn) not found: it fetches Kafka's jars; apt-get install -y maven, or set KAFKA_BROKERS to use an existing Kafka"
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $libs (once)"
  mkdir -p "$libs"
  if ! mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >"$LOGS/kafka-fetch.log" 2>&1; then
    die "could not fetch Kafka's jars with Maven; see $LOGS/kafka-fetch.log"
  fi
  ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1 || die "Maven finished but no kafka_2.13 jar is in $libs; see $LOGS/kafka-fetch.log"
  touch "$libs/.complete"
}

java_bin() {
  if [ -n "${JAVA_HOME:-}" ]; then
    [ -x "$JAVA_HOME/bin/java" ] || die "JAVA_HOME=$JAVA_HOME has no bin/java: point JAVA_HOME at a Java 17 JDK, or unset it"
    echo "$JAVA_HOME/bin/java"
  else
    command -v java >/dev/null || die "java not found: Kafka needs Java 17 (apt-get install -y openjdk-17-jre-headless), or set KAFKA_BROKERS"
    command -v java
  fi
}

up_kafka() {
  local pidf="$RUN/kafka.pid" log="$LOGS/kafka.log"
  if alive "$pidf"; then say "kafka already running (127.0.0.1:$KAFKA_PORT)"; return 1; fi
  local java
  java="$(java_bin)" || exit 1 # java_bin has said what is wrong
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT (Kafka) is taken by another process; free it or set DMTP_KAFKA_PORT"
  port_open "$KAFKA_CONTROLLER_PORT" && die "port $KAFKA_CONTROLLER_PORT (Kafka controller) is taken; free it or set DMTP_KAFKA_CONTROLLER_PORT"
  fetch_kafka
  local dir="$STATE/kafka" libs
  libs="$(kafka_libs)"
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
log.retention.hours=24
EOF
  cat >"$dir/log4j.properties" <<EOF
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
EOF
  if [ ! -f "$dir/data/meta.properties" ]; then
    # A fixed cluster id: 16 bytes ("dmtp-local-kafka") in URL-safe base64, as StorageTool wants.
    "$java" -cp "$libs/*" -Dlog4j.configuration="file:$dir/log4j.properties" kafka.tools.StorageTool format \
      -t ZG10cC1sb2NhbC1rYWZrYQ -c "$dir/server.properties" >>"$log" 2>&1 ||
      die "formatting Kafka's storage failed; see $log"
  fi
  : >"$dir/started.marker"
  # shellcheck disable=SC2086
  nohup "$java" $KAFKA_HEAP -XX:+UseG1GC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$dir/log4j.properties" -Dkafka.logs.dir="$LOGS" \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties" >>"$log" 2>&1 &
  echo $! >"$pidf"
  mark_started kafka
  local mark
  mark=$(wc -l <"$log")
  wait_for "kafka" 90 "$log" "$pidf" -- bash -c "tail -n +$((mark + 1)) '$log' | grep -q 'Kafka Server started'"
  wait_for "kafka port" 10 "$log" "$pidf" -- port_open_cmd "$KAFKA_PORT"
  say "kafka up: 127.0.0.1:$KAFKA_PORT (log: $log)"
}

port_open_cmd() { port_open "$1"; }

pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

# PostgreSQL refuses to run as root; as root we run it as the 'postgres' user the Debian package creates.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

up_postgres() {
  local bin dir="$STATE/pg" log="$LOGS/postgres.log"
  bin="$(pg_bindir)" || die "PostgreSQL server not found: install Debian's postgresql (apt-get install -y postgresql), or set DATABASE_URL"
  if [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    say "postgres already running (127.0.0.1:$PG_PORT)"; return 1
  fi
  port_open "$PG_PORT" && die "port $PG_PORT (PostgreSQL) is taken by another process; free it or set DMTP_PG_PORT"
  mkdir -p "$dir"
  touch "$log"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir" "$log"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >>"$log" 2>&1 ||
      die "initdb failed; see $log"
    cat >>"$dir/data/postgresql.conf" <<EOF
# DMTP local settings
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir'
max_connections = 300
# The transaction adapters use PREPARE TRANSACTION: one slot per in-flight branch.
max_prepared_transactions = 300
shared_buffers = 128MB
EOF
    printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$dir/data/pg_hba.conf"
  fi
  mark_started postgres
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$log" -o "-p $PG_PORT" -w -t 60 start >/dev/null 2>&1 ||
    die "PostgreSQL did not start; last lines of $log:
$(tail -n 15 "$log")"
  head -1 "$dir/data/postmaster.pid" >"$RUN/postgres.pid"
  say "postgres up: postgres://postgres@127.0.0.1:$PG_PORT/postgres (log: $log)"
}

stop_pid() {
  local name="$1" pidf="$2" secs="$3"
  alive "$pidf" || { rm -f "$pidf"; return 0; }
  local pid
  pid=$(cat "$pidf")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + secs))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop within ${secs}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidf"
}

down_etcd() {
  local i
  for ((i = 0; i < 5; i++)); do stop_pid "etcd member $i" "$RUN/etcd$i.pid" 10; done
  say "etcd down"
}
down_kafka() { stop_pid kafka "$RUN/kafka.pid" 30; say "kafka down"; }
down_postgres() {
  local bin dir="$STATE/pg"
  if bin="$(pg_bindir)" && [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || stop_pid postgres "$RUN/postgres.pid" 10
  fi
  rm -f "$RUN/postgres.pid"
  say "postgres down"
}

# Shell-quoted: the output is meant for eval, and a URL of the user's may hold characters the shell would read.
print_env() {
  printf 'ETCD_ENDPOINTS=%q\n' "${ETCD_ENDPOINTS:-$(etcd_endpoints)}"
  printf 'KAFKA_BROKERS=%q\n' "${KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}"
  printf 'DATABASE_URL=%q\n' "${DATABASE_URL:-postgres://postgres@127.0.0.1:$PG_PORT/postgres}"
}

status() {
  local i n
  n=$(etcd_members)
  for ((i = 0; i < n; i++)); do
    if alive "$RUN/etcd$i.pid"; then echo "etcd$i     running pid $(cat "$RUN/etcd$i.pid") 127.0.0.1:$((ETCD_CLIENT_PORT_BASE + i))"; else echo "etcd$i     stopped"; fi
  done
  if alive "$RUN/kafka.pid"; then echo "kafka     running pid $(cat "$RUN/kafka.pid") 127.0.0.1:$KAFKA_PORT"; else echo "kafka     stopped"; fi
  if alive "$RUN/postgres.pid"; then echo "postgres  running pid $(cat "$RUN/postgres.pid") 127.0.0.1:$PG_PORT"; else echo "postgres  stopped"; fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
members=1
started_file=""
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --etcd-members) [ $# -ge 2 ] || die "--etcd-members needs a value"; members="$2"; shift 2 ;;
    --etcd-members=*) members="${1#*=}"; shift ;;
    --started-file) [ $# -ge 2 ] || die "--started-file needs a value"; started_file="$2"; shift 2 ;;
    --started-file=*) started_file="${1#*=}"; shift ;;
    etcd | kafka | postgres) names+=("$1"); shift ;;
    *) die "unknown argument '$1' (usage: services.sh up|down|status|env [etcd|kafka|postgres] [--etcd-members N])" ;;
  esac
done
[ ${#names[@]} -eq 0 ] && names=(etcd kafka postgres)
[[ "$members" =~ ^[135]$ ]] || die "--etcd-members must be 1, 3 or 5"

# The first host:port of an endpoint list or URL (http://h:p,... | h:p,... | postgres://u@h:p/db).
first_hostport() {
  local v="${1%%,*}"
  v="${v#*://}"
  v="${v#*@}"
  printf '%s' "${v%%/*}"
}

# An endpoint given in the environment is used as it is, once it answers (a TCP connect within 2 s): a shell
# that eval'd `env` earlier must not run every later test or demo against services that are down. One equal to
# this script's own local endpoint (what `env` prints) is not "given": it is started as the default is.
given() {
  local name="$1" var="$2" value="$3" own="$4" hp
  [ -n "$value" ] && [ "$value" != "$own" ] || return 1
  hp="$(first_hostport "$value")"
  if ! timeout 2 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:}" 2>/dev/null; then
    die "$name at $value (from $var) does not answer: start it, or unset $var to let this script start a local one"
  fi
  say "using $name at $value"
}

case "$cmd" in
  up)
    for s in "${names[@]}"; do
      case "$s" in
        etcd) if given etcd ETCD_ENDPOINTS "${ETCD_ENDPOINTS:-}" "$(etcd_endpoints)"; then continue; fi ;;
        kafka) if given kafka KAFKA_BROKERS "${KAFKA_BROKERS:-}" "127.0.0.1:$KAFKA_PORT"; then continue; fi ;;
        postgres)
          if given postgres DATABASE_URL "${DATABASE_URL:-}" "postgres://postgres@127.0.0.1:$PG_PORT/postgres"; then
            continue
          fi
          ;;
      esac
      rc=0
      case "$s" in
        etcd) up_etcd "$members" || rc=$? ;;
        kafka) up_kafka || rc=$? ;;
        postgres) up_postgres || rc=$? ;;
      esac
      # rc 0: started now (recorded by mark_started when spawned); rc 1: was already running (left alone)
      [ $rc = 0 ] || [ $rc = 1 ] || exit "$rc"
    done
    ;;
  down)
    for s in "${names[@]}"; do "down_$s"; done
    ;;
  status) status ;;
  env) print_env ;;
  *) die "usage: services.sh up|down|status|env [etcd|kafka|postgres ...] [--etcd-members N] [--started-file F]" ;;
esac
