#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, through the libfuzzer-sys crate) of the parsers that take
# outside input: from_json with a schema, the DDL schema parser, checkpoint log files and Spark
# option strings. Works on the stable toolchain: no cargo-fuzz, no nightly.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   fuzz each target SECONDS (default 60) starting from
#                                           its committed seed corpus fuzz/corpus/TARGET; exit
#                                           non-zero on the first crash, leak or timeout
#   scripts/fuzz.sh --replay FILE TARGET    run TARGET once on FILE (e.g. a crash artifact)
#
# Targets: from_json ddl_schema checkpoint_log spark_options (fuzz/fuzz_targets/*.rs).
# New inputs found while fuzzing go to a scratch corpus, not to the committed one; crash
# artifacts are written to $FLUMEN_FUZZ_ARTIFACTS (default: target dir/fuzz-artifacts) and
# their path is printed. A crash found becomes a regression test: add the input to
# fuzz/regressions/TARGET/, which every run replays first.
#
# Environment: CARGO_TARGET_DIR (shared with the test build: only Flumen's own crates are
# rebuilt, instrumented, see scripts/fuzz-rustc.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ALL_TARGETS=(from_json ddl_schema checkpoint_log spark_options)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ARTIFACTS="${FLUMEN_FUZZ_ARTIFACTS:-$TARGET_DIR/fuzz-artifacts}"

# --workspace (with only the fuzz binaries as targets) resolves dependency features over the
# whole workspace, as `cargo test --workspace` does, so the dependencies built for the tests
# are reused; `-p flumen-fuzz` would resolve them for this package alone and build DataFusion
# again (measured: ~29 min of a clean CI run on 2 busy cores).
build() {
    RUSTC_WORKSPACE_WRAPPER="$ROOT/scripts/fuzz-rustc.sh" \
        cargo build --quiet --workspace "${@/#/--bin=}"
}

binary() { echo "$TARGET_DIR/debug/$1"; }

known_target() {
    local t
    for t in "${ALL_TARGETS[@]}"; do [[ "$t" == "$1" ]] && return 0; done
    echo "fuzz.sh: unknown target '$1' (targets: ${ALL_TARGETS[*]})" >&2
    exit 2
}

if [[ "${1:-}" == "--replay" ]]; then
    [[ $# -eq 3 ]] || { echo "usage: $0 --replay FILE TARGET" >&2; exit 2; }
    known_target "$3"
    build "$3"
    exec "$(binary "$3")" "$2"
fi

SECONDS_PER_TARGET="${1:-60}"
[[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do known_target "$t"; done

build "${TARGETS[@]}"
mkdir -p "$ARTIFACTS"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

for target in "${TARGETS[@]}"; do
    seeds="$ROOT/fuzz/corpus/$target"
    [[ -d "$seeds" ]] || { echo "fuzz.sh: no seed corpus at $seeds" >&2; exit 1; }
    # Regressions first: every input that once crashed must now pass.
    regressions="$ROOT/fuzz/regressions/$target"
    if compgen -G "$regressions/*" >/dev/null; then
        "$(binary "$target")" "$regressions"/* >"$SCRATCH/$target.replay.log" 2>&1 \
            || { tail -n 40 "$SCRATCH/$target.replay.log" >&2; echo "fuzz.sh: a regression input of $target fails again" >&2; exit 1; }
    fi
    mkdir -p "$SCRATCH/$target"
    log="$SCRATCH/$target.log"
    echo "fuzz.sh: $target for ${SECONDS_PER_TARGET}s (seeds: $(find "$seeds" -type f | wc -l))" >&2
    # -rss_limit_mb: DataFusion's allocations are legitimately large; -timeout: one input may
    # take at most 10 s (a hang is a finding too).
    if ! "$(binary "$target")" "$SCRATCH/$target" "$seeds" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 -max_len=8192 \
        -print_final_stats=1 \
        -artifact_prefix="$ARTIFACTS/$target-" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz.sh: $target found a failing input; artifacts in $ARTIFACTS:" >&2
        printf '%s\n' "$ARTIFACTS/$target-"* >&2
        exit 1
    fi
    # One summary line per target: executions, speed, coverage, corpus size.
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    speed="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | sed 's/cov: //')"
    corpus="$(find "$SCRATCH/$target" -type f | wc -l)"
    printf '{"fuzz_target":"%s","seconds":%s,"executions":%s,"exec_per_sec":%s,"coverage_edges":%s,"new_corpus_inputs":%s,"crashes":0}\n' \
        "$target" "$SECONDS_PER_TARGET" "${runs:-0}" "${speed:-0}" "${cov:-0}" "$corpus"
done
