#!/usr/bin/env bash
# Prefill (pp) and decode (tg) tokens/s of ttc-run and of llama.cpp on the same GGUF and thread
# count, measured in one sitting and printed as ratios (this machine is noisy: only
# side-by-side figures mean anything).
#
# Usage: LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin benches/bench-vs-llama-cpp.sh [MODEL.gguf] [THREADS] [P] [G]
#
# llama.cpp is not part of ttc: build it yourself, e.g. from the llama-cpp-python source
# package's vendor/llama.cpp (cmake -DGGML_NATIVE=ON ...; on VMs that expose AMX flags without
# granting AMX, use -DGGML_NATIVE=OFF with the AVX2/AVX-512 options and AMX off).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to the folder holding llama-bench}"
MODEL=${1:-$(cargo run -q --release -p ttc-cli -- fetch 2>/dev/null | head -1)}
THREADS=${2:-2}
P=${3:-128}
G=${4:-128}
cargo build -q --release -p ttc-cli
TTC=target/release/ttc-run

ttc_json=$("$TTC" bench --model "$MODEL" --threads "$THREADS" --widths 1 --prompt-len "$P" --gen-len "$G" --reps 3 --json)
llama_json=$("$LLAMA_CPP_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -p "$P" -n "$G" -r 3 -o json 2>/dev/null)

python3 - "$ttc_json" "$llama_json" "$P" "$G" "$THREADS" "$MODEL" <<'PY'
import json, sys
ttc, llama, P, G, T, model = json.loads(sys.argv[1])[0], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
pp = next(r["avg_ts"] for r in llama if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r["avg_ts"] for r in llama if r["n_gen"] > 0 and r["n_prompt"] == 0)
print(f"model: {model}  threads: {T}")
print(f"| test  | ttc-run t/s | llama.cpp t/s | ttc / llama.cpp |")
print(f"| ----- | ----------: | ------------: | --------------: |")
print(f"| pp{P} | {ttc['prefill_tok_s']:11.1f} | {pp:13.1f} | {ttc['prefill_tok_s']/pp:15.2f} |")
print(f"| tg{G} | {ttc['decode_tok_s']:11.1f} | {tg:13.1f} | {ttc['decode_tok_s']/tg:15.2f} |")
PY
