#!/usr/bin/env bash
# Builds `ttc-run` with `--features cuda`, on a machine with or without a GPU, once per GPU
# generation asked for: candle compiles its CUDA kernels for one compute capability per build
# (PTX for most kernels, machine code for its quantized-matmul library), so each generation
# gets its own binary.
#
# Usage: scripts/cuda/build.sh [CAP ...]      (default: 90 80; 90 = H100/H200, 80 = A100,
#                                             and an sm_80 binary also runs on sm_86 cards)
# Writes target/cuda-sm<CAP>/release/ttc-run and prints how long each build took.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
caps=("$@")
[[ ${#caps[@]} -gt 0 ]] || caps=(90 80)

cargo fetch --quiet
cuda_home="$(scripts/cuda/install-toolkit.sh)"
export CUDA_HOME="$cuda_home" CUDA_PATH="$cuda_home"
export PATH="$cuda_home/bin:$PATH"
# The driver stub for linking (the real libcuda.so.1 comes with the GPU's driver).
export LIBRARY_PATH="$cuda_home/lib64/stubs:$cuda_home/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$cuda_home/lib64/stubs -L native=$cuda_home/lib64"

for cap in "${caps[@]}"; do
    start=$(date +%s)
    CUDA_COMPUTE_CAP="$cap" CARGO_TARGET_DIR="$root/target/cuda-sm$cap" \
        cargo build --release --locked -p ttc-cli --features cuda
    bin="$root/target/cuda-sm$cap/release/ttc-run"
    echo "sm_$cap: $bin built in $(($(date +%s) - start)) s ($(du -h "$bin" | cut -f1))"
done
