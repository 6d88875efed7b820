#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) on stable Rust: cargo-fuzz needs nightly
# flags, which RUSTC_BOOTSTRAP=1 allows on the machine's one toolchain (no nightly can be
# fetched here). Installs cargo-fuzz if it is missing. A crash fails the run and leaves its
# input under fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(gguf_model chat_template dataset_line)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz@0.13.1
export RUSTC_BOOTSTRAP=1
[ -d corpus ] || ./make-seeds.sh
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t"
    # -rss_limit_mb: an input that makes a parser allocate beyond 2 GiB is a finding.
    cargo fuzz run --release "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        2>&1 | grep -E "stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY|panicked|Done" || true
    if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
        echo "fuzz target $t found a failing input: fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
