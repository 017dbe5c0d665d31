#!/usr/bin/env bash
# RUSTC_WORKSPACE_WRAPPER used by scripts/fuzz.sh: compiles Flumen's own crates with libFuzzer's
# coverage instrumentation (the flags cargo-fuzz uses, all stable rustc codegen options) and
# leaves every other crate alone. Cargo hashes the workspace wrapper into the workspace crates'
# artifact names, so instrumented and plain builds live side by side in one target dir and
# the dependencies (DataFusion, librdkafka) are shared with the test build.
set -euo pipefail
rustc="$1"
shift
case " $* " in
    *" --crate-name flumen_engine "* | *" --crate-name flumen_kafka "* | *" --crate-name flumen_fuzz "* | \
        *" --crate-name from_json "* | *" --crate-name ddl_schema "* | *" --crate-name checkpoint_log "* | \
        *" --crate-name spark_options "*)
        exec "$rustc" "$@" --cfg fuzzing \
            -Cpasses=sancov-module \
            -Cllvm-args=-sanitizer-coverage-level=4 \
            -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
            -Cllvm-args=-sanitizer-coverage-pc-table \
            -Cllvm-args=-sanitizer-coverage-trace-compares
        ;;
esac
exec "$rustc" "$@"
