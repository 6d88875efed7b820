#!/usr/bin/env bash
# Held-out accuracy and latency, one sitting: llama-server with N samples of each question and a
# majority vote over the last number (benches/accuracy_vs_llama_server.py), then `ttc-run serve`
# answering each question with its default (the allocator). One server at a time, same GGUF and
# threads. One JSON line per server.
#
#   LLAMA_SERVER=/path/to/llama-server benches/bench-accuracy-vs-llama-server.sh MODEL.gguf [THREADS] [QUESTIONS] [N]
set -euo pipefail
MODEL=${1:?usage: $0 MODEL.gguf [THREADS] [QUESTIONS] [N]}
THREADS=${2:-2}
COUNT=${3:-60}
N=${4:-4}
LLAMA_SERVER=${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}
TTC=${TTC:-target/release/ttc-run}
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=18183
QUESTIONS=$(mktemp --suffix .jsonl)
trap 'rm -f "$QUESTIONS"' EXIT
# The built-in suites' test split: questions no calibration saw.
cargo run --release -q -p ttc-e2e --example write_dataset -- builtin:mixed test "$COUNT" >"$QUESTIONS"

. "$HERE/wait_up.sh"

"$LLAMA_SERVER" -m "$MODEL" -t "$THREADS" --port $PORT -np "$N" -c $((N * 1024)) >/tmp/llama-server.log 2>&1 &
PID=$!
wait_up $PORT
python3 "$HERE/accuracy_vs_llama_server.py" "http://127.0.0.1:$PORT" "$QUESTIONS" --server llama --n "$N"
kill $PID
wait $PID 2>/dev/null || true

"$TTC" serve --model "$MODEL" -t "$THREADS" --port $PORT >/tmp/ttc-serve.log 2>&1 &
PID=$!
wait_up $PORT
python3 "$HERE/accuracy_vs_llama_server.py" "http://127.0.0.1:$PORT" "$QUESTIONS" --server ttc
kill $PID
wait $PID 2>/dev/null || true
