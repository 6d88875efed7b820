#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit that `--features cuda` builds with, without a GPU and without
# root: NVIDIA's own wheels from PyPI (compiler, headers, runtime, cuBLAS, cuRAND, NVRTC),
# unpacked into one CUDA_HOME-shaped folder. CUDA 13.0 because it is what the H200 machines
# this project benchmarks on run (driver 580, nvcc 13.0, cuBLAS 13 in their Python image).
#
# The driver library (libcuda.so.1) comes with the GPU's driver, not with the toolkit; for
# linking on a machine without one, NVIDIA's toolkit ships a stub (lib64/stubs/libcuda.so)
# that the wheels leave out, so this writes the same kind of stub: every driver entry point
# cudarc binds, each returning CUDA_ERROR_STUB_LIBRARY (34). The binary records the SONAME
# libcuda.so.1 and the real driver is loaded at run time; the stub is never shipped.
#
# Usage: scripts/cuda/install-toolkit.sh [DIR]   (default: ${TTC_CUDA_HOME:-~/.cache/ttc/cuda-13.0})
# Prints the folder to export as CUDA_HOME.
set -euo pipefail

dir="${1:-${TTC_CUDA_HOME:-$HOME/.cache/ttc/cuda-13.0}}"
if [[ -x "$dir/bin/nvcc" && -e "$dir/lib64/stubs/libcuda.so" ]]; then
    echo "$dir"
    exit 0
fi
python="${PYTHON:-python3}"
wheels="$dir/.wheels"
mkdir -p "$wheels"

# The versions of the 13.0 release, pinned so that every build compiles with the same nvcc.
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 >&2

unpacked="$dir/.unpacked"
rm -rf "$unpacked"
mkdir -p "$unpacked"
for w in "$wheels"/*.whl; do
    "$python" -m zipfile -e "$w" "$unpacked" >&2
done
# Every wheel puts its part under nvidia/cu13/{bin,include,lib,nvvm}: merge them.
cp -a "$unpacked"/nvidia/cu13/. "$dir"/
rm -rf "$unpacked"
chmod +x "$dir"/bin/* "$dir"/nvvm/bin/* 2>/dev/null || true

# The linker looks for libX.so; the wheels hold only the versioned names. Build systems look
# in lib64 (the toolkit's own layout), the wheels write lib.
for lib in "$dir"/lib/lib*.so.*; do
    base="${lib##*/}"
    ln -sf "$base" "$dir/lib/${base%%.so.*}.so"
done
ln -sfn lib "$dir/lib64"
mkdir -p "$dir/lib/stubs"

# The driver stub: cudarc's bindings name every entry point it may call.
cudarc_src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -type d -name 'index.crates.io-*' \
    -exec sh -c 'ls -d "$1"/cudarc-0.19.* 2>/dev/null' _ {} \; | sort -V | tail -n1)"
if [[ -z "$cudarc_src" ]]; then
    echo "cudarc's source is not in the cargo registry: run 'cargo fetch' first" >&2
    exit 1
fi
stub_c="$dir/lib64/stubs/libcuda_stub.c"
{
    echo "/* Link-time stand-in for the CUDA driver (libcuda.so.1); see install-toolkit.sh. */"
    grep -o 'load::<_F>("cu[A-Za-z0-9_]*")' "$cudarc_src/src/driver/sys/mod.rs" |
        sed 's/.*("\(.*\)")/\1/' | sort -u |
        while read -r f; do echo "int $f(void) { return 34; }"; done
} >"$stub_c"
gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$dir/lib64/stubs/libcuda.so" "$stub_c"

"$dir/bin/nvcc" --version >&2
echo "$dir"
