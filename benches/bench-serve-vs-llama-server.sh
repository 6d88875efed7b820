#!/usr/bin/env bash
# ttc-run serve against llama-server on the same GGUF, threads and concurrency, one sitting:
# closed-loop load (benches/serve_load.py) at concurrency 1, 4 and 8, for the n=4 majority
# workload and the plain-completion workload. One JSON line per (server, workload, C).
#
#   LLAMA_SERVER=/path/to/llama-server benches/bench-serve-vs-llama-server.sh MODEL.gguf [THREADS] [REQUESTS]
set -euo pipefail
MODEL=${1:?usage: $0 MODEL.gguf [THREADS] [REQUESTS]}
THREADS=${2:-2}
REQUESTS=${3:-16}
LLAMA_SERVER=${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}
TTC=${TTC:-target/release/ttc-run}
HERE=$(cd "$(dirname "$0")" && pwd)
PORT_TTC=18181
PORT_LLAMA=18182

. "$HERE/wait_up.sh"

for C in 1 4 8; do
    "$TTC" serve --model "$MODEL" -t "$THREADS" --port $PORT_TTC --max-running "$C" >/tmp/ttc-serve.log 2>&1 &
    TTC_PID=$!
    # -np slots = the concurrency; the n=4 workload sends 4 requests per client.
    "$LLAMA_SERVER" -m "$MODEL" -t "$THREADS" --port $PORT_LLAMA -np $((4 * C)) -c $((4 * C * 1024)) \
        >/tmp/llama-server.log 2>&1 &
    LLAMA_PID=$!
    wait_up $PORT_TTC
    wait_up $PORT_LLAMA
    for W in n4 plain; do
        python3 "$HERE/serve_load.py" "http://127.0.0.1:$PORT_LLAMA" --server llama --workload $W --concurrency "$C" --requests "$REQUESTS"
        python3 "$HERE/serve_load.py" "http://127.0.0.1:$PORT_TTC" --server ttc --workload $W --concurrency "$C" --requests "$REQUESTS"
    done
    kill $TTC_PID $LLAMA_PID
    wait $TTC_PID $LLAMA_PID 2>/dev/null || true
done
