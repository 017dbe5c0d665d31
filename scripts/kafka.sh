#!/usr/bin/env bash
# Run a real Apache Kafka 4.x broker (KRaft, one node acting as broker and
# controller) on loopback, for Flumen's tests and CI.
#
#   scripts/kafka.sh start [PORT]  fetch Kafka with Maven (once, cached), format
#                                  a fresh KRaft log dir, start the broker, wait
#                                  until it answers a Kafka Metadata request and
#                                  print ONLY its bootstrap address (127.0.0.1:PORT)
#                                  on stdout; everything else goes to stderr:
#                                      BOOT=$(scripts/kafka.sh start)
#                                  Without PORT: 29092 if free, else another free
#                                  port. Idempotent: if our broker already runs
#                                  (on PORT, when given), prints its address.
#   scripts/kafka.sh stop          stop it (TERM, then KILL after a timeout) and
#                                  remove the run dir. Idempotent.
#   scripts/kafka.sh status        print whether it runs; exit 0 if it does, 1 if not.
#   scripts/kafka.sh kill          crash it: SIGKILL, no controlled shutdown; the run
#                                  dir (config, data, logs) is kept for `restart`.
#                                  If it does not run, says so and exits 0.
#   scripts/kafka.sh restart       start it again from the kept run dir: same
#                                  server.properties (same ports), same data (no
#                                  re-format; Kafka recovers its logs after a crash,
#                                  within FLUMEN_KAFKA_START_TIMEOUT), wait until it
#                                  answers and print its bootstrap address on stdout,
#                                  as `start`. A broker still running is killed
#                                  (SIGKILL) first. Fails if the run dir has no config.
#                                  (`start` always begins afresh: it removes a
#                                  leftover run dir, data included.)
#
# Needs only Java 17+ and Maven (Maven Central); no Kafka download, no Python.
# The broker's jars are org.apache.kafka:kafka_2.13 with all its runtime
# dependencies, plus the log4j2 SLF4J binding (kafka_2.13's pom names none, so
# without it the broker logs nothing), copied by `mvn dependency:copy-dependencies`
# from a generated pom into the cache dir.
#
# Environment:
#   FLUMEN_KAFKA_VERSION        Kafka version (default: 4.4.0)
#   FLUMEN_KAFKA_HOME           jar cache (default: $HOME/.cache/flumen-kafka)
#   FLUMEN_KAFKA_RUN            run dir: config, data, logs, pid (default: /tmp/flumen-kafka-run)
#   FLUMEN_KAFKA_START_TIMEOUT  seconds to wait for readiness (default: 90)
#   FLUMEN_KAFKA_STOP_TIMEOUT   seconds between TERM and KILL (default: 30)
#   FLUMEN_KAFKA_HEAP_OPTS      JVM heap flags (default: -Xms128m -Xmx512m)
#   FLUMEN_KAFKA_JAVA           java binary (default: $JAVA_HOME/bin/java, else java)
#   MVN                         maven binary (default: mvn); MAVEN_OPTS is honoured,
#                               e.g. MAVEN_OPTS=-Dmaven.repo.local=DIR
#
# One broker per run dir: `stop`, `status`, `kill` and `restart` read the pid file there.
set -euo pipefail

KAFKA_VERSION="${FLUMEN_KAFKA_VERSION:-4.4.0}"
CACHE_DIR="${FLUMEN_KAFKA_HOME:-${HOME:?HOME is not set}/.cache/flumen-kafka}"
RUN_DIR="${FLUMEN_KAFKA_RUN:-/tmp/flumen-kafka-run}"
START_TIMEOUT="${FLUMEN_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${FLUMEN_KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${FLUMEN_KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
MVN="${MVN:-mvn}"
DEFAULT_PORT=29092
# Pinned so that Maven does not have to look up the newest plugin version.
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

LIB_DIR="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"
PID_FILE="$RUN_DIR/kafka.pid"
ADDR_FILE="$RUN_DIR/bootstrap"
MARKER="$RUN_DIR/.flumen-kafka-run"
LOG_FILE="$RUN_DIR/logs/server.log"
OUT_FILE="$RUN_DIR/logs/stdout.log"

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() {
    echo "usage: $0 start [PORT] | stop | status | kill | restart" >&2
    exit 2
}

java_bin() {
    if [[ -n "${FLUMEN_KAFKA_JAVA:-}" ]]; then
        echo "$FLUMEN_KAFKA_JAVA"
    elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    else
        echo java
    fi
}

# Kafka 4.x brokers need Java 17 (class file version 61).
check_java() {
    local java="$1" line major
    command -v "$java" >/dev/null 2>&1 || die "no java ('$java'); Kafka $KAFKA_VERSION needs Java 17+"
    line="$("$java" -version 2>&1 | head -n 1)"
    major="$(sed -E -n 's/.*version "([0-9]+)(\.[0-9]+)*.*".*/\1/p' <<<"$line")"
    [[ "$major" == 1 ]] && major="$(sed -E -n 's/.*version "1\.([0-9]+).*/\1/p' <<<"$line")"
    [[ "$major" =~ ^[0-9]+$ ]] || die "cannot read the Java version from: $line"
    ((major >= 17)) || die "Java $major found ($java); Kafka $KAFKA_VERSION needs Java 17+"
}

# Fetch kafka_2.13 and its runtime dependencies into $LIB_DIR, once. The jars are
# put together in a temporary dir and moved in place only when complete, so an
# interrupted fetch is never mistaken for a cache.
fetch_kafka() {
    if [[ -f "$LIB_DIR/.complete" ]]; then
        log "using cached Kafka $KAFKA_VERSION jars in $LIB_DIR"
        return
    fi
    command -v "$MVN" >/dev/null 2>&1 || die "no Maven ('$MVN'); it fetches Kafka from Maven Central"
    local parent work start=$SECONDS
    parent="$(dirname "$LIB_DIR")"
    mkdir -p "$parent"
    work="$(mktemp -d "$parent/fetch.XXXXXX")"
    log "fetching Kafka $KAFKA_VERSION (org.apache.kafka:kafka_2.13) and its dependencies with Maven into $LIB_DIR"
    cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by Flumen's scripts/kafka.sh: the Kafka broker's runtime classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>flumen.local</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    local mvn_log="$work/maven.log"
    if ! "$MVN" -B -q -Dstyle.color=never -f "$work/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$mvn_log" 2>&1; then
        log "Maven could not fetch Kafka $KAFKA_VERSION; command: $MVN -B -q -Dstyle.color=never -f $work/pom.xml $DEPENDENCY_PLUGIN:copy-dependencies -DincludeScope=runtime -DoutputDirectory=$work/libs"
        tail -n 40 "$mvn_log" >&2 || true
        rm -rf "$work"
        exit 1
    fi
    [[ -f "$work/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] \
        || { rm -rf "$work"; die "Maven ran but kafka_2.13-$KAFKA_VERSION.jar is missing"; }

    # kafka_2.13's pom brings log4j-core and slf4j-api but no binding between them:
    # add the log4j2 binding that matches both (same version as log4j-core; the
    # slf4j2 flavour if slf4j-api is 2.x).
    local core log4j_version binding=log4j-slf4j-impl
    core="$(cd "$work/libs" && compgen -G 'log4j-core-*.jar' | head -n 1)" \
        || { rm -rf "$work"; die "no log4j-core among Kafka's dependencies"; }
    log4j_version="${core#log4j-core-}"
    log4j_version="${log4j_version%.jar}"
    compgen -G "$work/libs/slf4j-api-2.*.jar" >/dev/null && binding=log4j-slf4j2-impl
    if ! "$MVN" -B -q -Dstyle.color=never -f "$work/pom.xml" "$DEPENDENCY_PLUGIN:copy" \
        -Dartifact="org.apache.logging.log4j:$binding:$log4j_version" \
        -DoutputDirectory="$work/libs" >>"$mvn_log" 2>&1; then
        log "Maven could not fetch org.apache.logging.log4j:$binding:$log4j_version"
        tail -n 40 "$mvn_log" >&2 || true
        rm -rf "$work"
        exit 1
    fi

    (cd "$work/libs" && printf '%s\n' ./*.jar | sed 's#^\./##') >"$work/libs/.complete"
    # Another start may have fetched the same version meanwhile: keep the first.
    if mv -T "$work/libs" "$LIB_DIR" 2>/dev/null; then
        log "fetched $(wc -l <"$LIB_DIR/.complete") jars in $((SECONDS - start))s"
    else
        [[ -f "$LIB_DIR/.complete" ]] || { rm -rf "$work"; die "cannot move the jars to $LIB_DIR"; }
    fi
    rm -rf "$work"
}

# True if something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp,
# so no nc/ss needed; `timeout` bounds a hanging connect).
port_open() {
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# A free loopback port: $1 if free, else the first free one after it, skipping $2.
free_port() {
    local port="$1" skip="${2:-}" i
    for ((i = 0; i < 500; i++, port++)); do
        ((port < 65536)) || port=20000
        [[ "$port" == "$skip" ]] && continue
        port_open "$port" || { echo "$port"; return; }
    done
    die "no free port found from $1 on"
}

# A real Kafka round trip: send a Metadata v4 request (all topics) on 127.0.0.1:$1
# and check that the answer carries our correlation id and at least one broker.
# The broker is listed only once it is registered and unfenced, i.e. serving.
#   request: size=15, api_key=3, api_version=4, correlation_id="FLUM",
#            client_id=null, topics=null (all), allow_auto_topic_creation=false
#   answer:  size(4) correlation_id(4) throttle_time_ms(4) broker_count(4) ...
metadata_ok() {
    local hex
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    hex="$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "\x00\x00\x00\x0f\x00\x03\x00\x04FLUM\xff\xff\xff\xff\xff\xff\x00" >&3
        head -c 16 <&3 | od -An -tx1 -v | tr -d " \n"
    ' _ "$1" 2>/dev/null)" || return 1
    [[ ${#hex} -eq 32 && "${hex:8:8}" == 464c554d ]] || return 1
    local brokers=$((16#${hex:24:8}))
    ((brokers >= 1 && brokers < 16#80000000))
}

# True if pid $1 is alive and is the broker of this run dir (a stale pid file must
# not make us signal an unrelated process that reused the pid).
is_our_kafka() {
    local pid="$1"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $RUN_DIR/server.properties"
}

running_pid() {
    local pid
    [[ -f "$PID_FILE" ]] || return 1
    pid="$(cat "$PID_FILE" 2>/dev/null)" || return 1
    is_our_kafka "$pid" || return 1
    echo "$pid"
}

kill_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    # A controlled shutdown takes a few seconds; then force.
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

# Remove the run dir, but only one that this script made (it holds our marker),
# so a mistyped FLUMEN_KAFKA_RUN never deletes someone else's files.
remove_run_dir() {
    [[ -e "$RUN_DIR" ]] || return 0
    rmdir "$RUN_DIR" 2>/dev/null && return 0  # an empty dir
    [[ -f "$MARKER" ]] || die "$RUN_DIR was not made by kafka.sh (no $(basename "$MARKER")); not removing it"
    rm -rf "$RUN_DIR"
}

show_logs() {
    local f shown=
    for f in "$OUT_FILE" "$LOG_FILE"; do
        [[ -s "$f" ]] || continue
        echo "--- tail of $f" >&2
        tail -n 40 "$f" >&2 || true
        shown=1
    done
    [[ -n "$shown" ]] || log "(the broker has logged nothing yet)"
}

# A KRaft cluster id: 16 random bytes, base64url without padding; like Kafka's
# Uuid.randomUuid, never one starting with '-' (it would read as an option).
cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ ${#id} -eq 22 && "$id" != -* ]] && { echo "$id"; return; }
    done
}

write_config() {
    local port="$1" cport="$2"
    cat >"$RUN_DIR/server.properties" <<EOF
# Generated by Flumen's scripts/kafka.sh: one KRaft node, broker and controller, on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$RUN_DIR/data
num.partitions=1
auto.create.topics.enable=true
# A single node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer partitions for the internal topics (defaults 50) make the first group
# join and the first transaction much faster on a small machine.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
EOF
    # Quiet logging: warnings and errors, plus start/stop lines, to a file.
    cat >"$RUN_DIR/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $LOG_FILE
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
EOF
}

# Start the broker JVM on the run dir's server.properties (formatted data dir),
# wait until it answers a Metadata request on 127.0.0.1:$2, then print its
# address on stdout. Shared by `start` and `restart`.
#   $1 java binary, $2 broker port, $3 controller port (for the log line),
#   $4 words for the log line after "ready" ("" or " again (kept data)"),
#   $5 $SECONDS when the work began (default: now).
launch_broker() {
    local java="$1" port="$2" cport="$3" what="$4" start="${5:-$SECONDS}"
    local addr="127.0.0.1:$port" pid
    # - stdin from /dev/null and output to a file: the JVM must not hold our stdout,
    #   or `BOOT=$(scripts/kafka.sh start)` would never return.
    # - nohup: survive the hangup when a CI step's shell exits.
    # - append: after a crash, `restart` keeps what the killed broker printed.
    # shellcheck disable=SC2086  # HEAP_OPTS is a list of JVM flags
    nohup "$java" $HEAP_OPTS -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$RUN_DIR/log4j2.properties" \
        -cp "$LIB_DIR/*" kafka.Kafka "$RUN_DIR/server.properties" \
        </dev/null >>"$OUT_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$addr" >"$ADDR_FILE"

    # START_TIMEOUT also bounds a restart after SIGKILL, when Kafka first recovers
    # the logs that were not closed cleanly.
    local deadline=$((SECONDS + START_TIMEOUT))
    until metadata_ok "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the broker exited during startup (run dir $RUN_DIR):"
            show_logs
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "not ready on $addr after ${START_TIMEOUT}s (run dir $RUN_DIR):"
            show_logs
            kill_pid "$pid"
            rm -f "$PID_FILE"
            exit 1
        fi
        sleep 0.3
    done
    log "Kafka $KAFKA_VERSION ready$what on $addr after $((SECONDS - start))s (pid $pid, controller 127.0.0.1:$cport, logs $RUN_DIR/logs)"
    echo "$addr"
}

# True once pid $1 has exited: gone, or a zombie with no thread left running. (A
# JVM's main thread can be a zombie while its other threads still exit and hold
# its files and ports; those close before the last thread is released.)
exited() {
    local status
    status="$(cat "/proc/$1/status" 2>/dev/null)" || return 0
    [[ -n "$status" ]] || return 0
    grep -Eq '^State:[[:space:]]*[ZX]' <<<"$status" && grep -Eq '^Threads:[[:space:]]*1$' <<<"$status"
}

# SIGKILL pid $1 (a crash: no controlled shutdown, no flush) and wait until it is gone.
crash_pid() {
    local pid="$1" i
    kill -KILL "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        exited "$pid" && return 0
        sleep 0.1
    done
    die "pid $pid is still alive 10s after SIGKILL"
}

# The port of listener $1 (PLAINTEXT or CONTROLLER) in the run dir's server.properties.
config_port() {
    sed -E -n "s#^listeners=.*$1://[^,]*:([0-9]+).*#\1#p" "$RUN_DIR/server.properties"
}

cmd_start() {
    local want_port="${1:-}"
    if [[ -n "$want_port" ]]; then
        if ! [[ "$want_port" =~ ^[0-9]+$ ]] || ((10#$want_port < 1 || 10#$want_port > 65535)); then
            die "bad port '$want_port'"
        fi
        want_port=$((10#$want_port))
    fi

    # Already running: idempotent when it is where it was asked to be.
    local pid addr
    if pid="$(running_pid)"; then
        addr="$(cat "$ADDR_FILE" 2>/dev/null || true)"
        if [[ -n "$want_port" && "$addr" != "127.0.0.1:$want_port" ]]; then
            die "already running on ${addr:-?} (pid $pid); run '$0 stop' first"
        fi
        metadata_ok "${addr##*:}" || die "pid $pid runs but ${addr:-?} does not answer; run '$0 stop'"
        log "already running on $addr (pid $pid)"
        echo "$addr"
        return
    fi
    remove_run_dir  # leftovers of a broker that died or was not stopped

    # Something else on an asked-for port would answer the readiness probe
    # instead of our broker: fail before any work.
    if [[ -n "$want_port" ]] && port_open "$want_port"; then
        die "127.0.0.1:$want_port is already in use"
    fi
    local java port cport
    java="$(java_bin)"
    check_java "$java"
    fetch_kafka

    if [[ -n "$want_port" ]]; then
        port="$want_port"
    else
        port="$(free_port "$DEFAULT_PORT")"
    fi
    cport="$(free_port $((port + 1)) "$port")"

    mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
    : >"$MARKER"
    write_config "$port" "$cport"

    local id start=$SECONDS
    id="$(cluster_id)"
    # shellcheck disable=SC2086  # HEAP_OPTS is a list of JVM flags
    if ! "$java" $HEAP_OPTS -Dlog4j2.configurationFile="$RUN_DIR/log4j2.properties" -cp "$LIB_DIR/*" \
        kafka.tools.StorageTool format --standalone -t "$id" -c "$RUN_DIR/server.properties" \
        >"$RUN_DIR/logs/format.log" 2>&1; then
        log "formatting $RUN_DIR/data failed:"
        tail -n 40 "$RUN_DIR/logs/format.log" >&2 || true
        exit 1
    fi

    launch_broker "$java" "$port" "$cport" "" "$start"
}

cmd_stop() {
    local pid
    if pid="$(running_pid)"; then
        kill_pid "$pid"
        kill -0 "$pid" 2>/dev/null && die "pid $pid is still alive"
        log "stopped pid $pid"
    else
        log "not running"
    fi
    remove_run_dir
}

cmd_status() {
    local pid addr
    if pid="$(running_pid)"; then
        addr="$(cat "$ADDR_FILE" 2>/dev/null || echo '?')"
        if metadata_ok "${addr##*:}"; then
            echo "running: Kafka on $addr (pid $pid, run dir $RUN_DIR)"
        else
            echo "running but not answering on $addr (pid $pid, run dir $RUN_DIR)"
        fi
        return 0
    fi
    echo "not running"
    return 1
}

cmd_kill() {
    local pid
    if pid="$(running_pid)"; then
        crash_pid "$pid"
        rm -f "$PID_FILE"
        log "killed pid $pid with SIGKILL; run dir $RUN_DIR kept ('$0 restart' starts it again on the same data)"
    else
        log "not running"
    fi
}

cmd_restart() {
    local config="$RUN_DIR/server.properties"
    [[ -f "$config" && -f "$MARKER" ]] \
        || die "no broker config in $RUN_DIR (no server.properties made by kafka.sh); use '$0 start'"
    [[ -f "$RUN_DIR/data/meta.properties" ]] \
        || die "$RUN_DIR/data is not a formatted KRaft log dir; use '$0 start'"
    local port cport pid
    port="$(config_port PLAINTEXT)"
    cport="$(config_port CONTROLLER)"
    [[ "$port" =~ ^[0-9]+$ && "$cport" =~ ^[0-9]+$ ]] || die "cannot read the listener ports from $config"

    if pid="$(running_pid)"; then
        log "pid $pid still runs; killing it (SIGKILL) first"
        crash_pid "$pid"
    fi
    rm -f "$PID_FILE"
    # The same ports as before: something else there would answer the readiness
    # probe, or make the broker fail to bind.
    local p i
    for p in "$port" "$cport"; do
        for ((i = 0; i < 20; i++)); do
            port_open "$p" || continue 2
            sleep 0.25
        done
        die "127.0.0.1:$p (from $config) is in use by another process"
    done
    local java
    java="$(java_bin)"
    check_java "$java"
    fetch_kafka
    launch_broker "$java" "$port" "$cport" " again (kept data)"
}

case "${1:-}" in
    start)  [[ $# -le 2 ]] || usage; cmd_start "${2:-}" ;;
    stop)   [[ $# -eq 1 ]] || usage; cmd_stop ;;
    status) [[ $# -eq 1 ]] || usage; cmd_status ;;
    kill)   [[ $# -eq 1 ]] || usage; cmd_kill ;;
    restart) [[ $# -eq 1 ]] || usage; cmd_restart ;;
    *)      usage ;;
esac
