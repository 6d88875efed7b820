# Sourced by the server benchmarks: `wait_up PORT` returns once http://127.0.0.1:PORT/health
# answers, or fails after two minutes.
wait_up() {
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "server on port $1 did not come up" >&2
    return 1
}
