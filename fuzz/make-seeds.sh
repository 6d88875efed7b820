#!/usr/bin/env bash
# Writes the seed corpora under fuzz/corpus/ (generated, not committed) with the write_seeds
# binary that `cargo fuzz build` builds beside the targets.
set -euo pipefail
cd "$(dirname "$0")"
RUSTC_BOOTSTRAP=1 cargo fuzz build --release >/dev/null
"target/$(rustc -vV | sed -n 's/^host: //p')/release/write_seeds" corpus
