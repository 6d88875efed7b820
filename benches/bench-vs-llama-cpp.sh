#!/usr/bin/env bash
# ttc-run against llama.cpp on the same GGUF and thread count, measured in one sitting and
# printed as ratios (this machine is noisy: only side-by-side figures mean anything):
#   pp$P      prefill tokens/s            (llama-bench -p P)
#   tg$G      single-stream decode t/s    (llama-bench -n G: no prompt, G forward passes)
#   W$W agg   aggregate decode t/s of W sequences sharing a P-token prompt
#             (llama-batched-bench -npp P -ntg G -npl W -pps)
# Like for like: both sides count token rows of decode forward passes per second of those
# passes, sampling excluded (llama.cpp's benches do not sample; ttc's `forward_tok_s`), and
# ttc's tg runs after a 1-token prompt, as llama-bench's starts from an empty context.
#
# Usage: LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin benches/bench-vs-llama-cpp.sh [MODEL.gguf] [THREADS] [P] [G] [W]
#
# llama.cpp is not part of ttc: build it yourself, e.g. from the llama-cpp-python source
# package's vendor/llama.cpp (cmake -DGGML_NATIVE=ON ...; on VMs that expose AMX flags without
# granting AMX, use -DGGML_NATIVE=OFF with the AVX2/AVX-512 options and AMX off).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to the folder holding llama-bench and llama-batched-bench}"
MODEL=${1:-$(cargo run -q --release -p ttc-cli -- fetch 2>/dev/null | head -1)}
THREADS=${2:-2}
P=${3:-128}
G=${4:-128}
W=${5:-16}
REPS=${REPS:-3}
cargo build -q --release -p ttc-cli
TTC=target/release/ttc-run

# Alternate the two engines rep by rep, so that a slow minute of this machine hits both.
ttc_runs=()
ttc_tg_runs=()
llama_runs=()
batched_runs=()
for _ in $(seq "$REPS"); do
  ttc_runs+=("$("$TTC" bench --model "$MODEL" --threads "$THREADS" --widths "1,$W" --prompt-len "$P" --gen-len "$G" --reps 1 --json)")
  ttc_tg_runs+=("$("$TTC" bench --model "$MODEL" --threads "$THREADS" --widths 1 --prompt-len 1 --gen-len "$((G + 1))" --reps 1 --json)")
  llama_runs+=("$("$LLAMA_CPP_BIN/llama-bench" -m "$MODEL" -t "$THREADS" -p "$P" -n "$G" -r 1 -o json 2>/dev/null)")
  batched_runs+=("$("$LLAMA_CPP_BIN/llama-batched-bench" -m "$MODEL" -t "$THREADS" -npp "$P" -ntg "$G" -npl "$W" -pps --output-format jsonl 2>/dev/null | grep '^{')")
done

python3 - "$P" "$G" "$W" "$THREADS" "$MODEL" "${#ttc_runs[@]}" "${ttc_runs[@]}" "${ttc_tg_runs[@]}" "${llama_runs[@]}" "${batched_runs[@]}" <<'PY'
import json, statistics, sys
P, G, W, T, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
runs = [json.loads(r) for r in sys.argv[7:]]
ttc, ttc_tg_runs, llama, batched = runs[:n], runs[n:2 * n], runs[2 * n:3 * n], runs[3 * n:]
med = statistics.median
ttc_pp = med(next(r["prefill_tok_s"] for r in t if r["width"] == 1) for t in ttc)
# G + 1 generated tokens after a 1-token prompt: G decode forward passes, like llama-bench -n G.
ttc_tg = med(t[0]["forward_tok_s"] for t in ttc_tg_runs)
ttc_w = med(next(r["forward_tok_s"] for r in t if r["width"] == W) for t in ttc)
l_pp = med(next(r["avg_ts"] for r in l if r["n_prompt"] > 0 and r["n_gen"] == 0) for l in llama)
l_tg = med(next(r["avg_ts"] for r in l if r["n_gen"] > 0 and r["n_prompt"] == 0) for l in llama)
l_w = med(b["speed_tg"] for b in batched)
print(f"model: {model}  threads: {T}  (median of {n} alternating runs; decode: forward passes, sampling excluded)")
print("| test      | ttc-run t/s | llama.cpp t/s | ttc / llama.cpp |")
print("| --------- | ----------: | ------------: | --------------: |")
for name, a, b in [(f"pp{P}", ttc_pp, l_pp), (f"tg{G}", ttc_tg, l_tg), (f"W{W} agg", ttc_w, l_w)]:
    print(f"| {name:9} | {a:11.1f} | {b:13.1f} | {a / b:15.2f} |")
PY
