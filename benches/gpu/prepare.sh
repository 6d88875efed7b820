#!/usr/bin/env bash
# Builds what benches/gpu/run.sh needs on the GPU machine and packs it into .gpu-carry/ (kept
# out of git), under the 64 MiB a device call carries: ttc-run built with CUDA for sm_90
# (scripts/cuda/build.sh; 74 MB stripped, 10 MB in xz) and the CPU tool that writes the
# random-weight GGUFs (the 1 GB files are written there, not carried).
#
# Then, from the agent's device tool: run `bash benches/gpu/run.sh` with carry [".gpu-carry"].
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cap="${CUDA_COMPUTE_CAP:-90}"
scripts/cuda/build.sh "$cap"
cargo build --release --locked -p ttc-benches --bin write-shaped-gguf
mkdir -p .gpu-carry
for bin in "target/cuda-sm$cap/release/ttc-run" target/release/write-shaped-gguf; do
    name="$(basename "$bin")"
    strip -o ".gpu-carry/$name" "$bin"
    xz -T0 -6 -f ".gpu-carry/$name"
done
git rev-parse HEAD >.gpu-carry/commit
du -ch .gpu-carry/* | tail -n1
