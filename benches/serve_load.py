"""Closed-loop load on an OpenAI-compatible server: `ttc-run serve` or `llama-server`.

    python3 benches/serve_load.py BASE_URL --server ttc|llama --workload n4|plain \
        --concurrency C [--requests R] [--max-tokens T]

Each of C clients sends its next request as soon as its last one is answered, R requests in
all. Workloads: `n4`, a short question answered by a majority vote of 4 samples (ttc: one
request with "ttc": {"method": "majority", "n": 4}; llama-server: 4 concurrent requests and the
vote counted client-side, as a llama-server user must); `plain`, one streamed plain
completion of an everyday prompt. Prints one JSON line: requests/s, generated tokens/s, p50 and
p95 latency, p50 and p95 time to first token (`plain`: the first streamed piece; `n4`: the
voted answer, known only at the end on both servers).
"""

import argparse
import json
import re
import statistics
import threading
import time
from collections import Counter

from openai import OpenAI

QUESTIONS = [
    "What is 7 + 5?", "What is 9 - 4?", "What is 6 times 3?", "What is 20 divided by 5?",
    "Tom has 8 apples and eats 3. How many are left?", "What is 12 + 9?", "What is 4 x 4?",
    "A box has 3 red and 4 blue balls. How many balls are there?", "What is 15 - 6?",
    "What is 10 + 10?", "What is 2 + 7?", "What is 8 x 2?", "What is 30 - 12?",
    "Lily has 2 cats and 3 dogs. How many pets does she have?", "What is 5 + 6?", "What is 9 x 3?",
]
PROMPTS = [
    "Write a short poem about the sea.", "Give me two tips for sleeping better.",
    "Describe a sunset in two sentences.", "Suggest a name for a black cat.",
    "Explain what a rainbow is.", "Write a friendly greeting for a new neighbor.",
    "List three things to pack for a picnic.", "Describe a forest in the morning.",
]
INSTRUCTION = 'End your reply with "The answer is N." where N is the final answer.'


def last_number(text):
    m = re.findall(r"-?\d+(?:\.\d+)?", text or "")
    return m[-1] if m else None


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--server", choices=["ttc", "llama"], required=True)
    ap.add_argument("--workload", choices=["n4", "plain"], required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    client = OpenAI(base_url=a.base + "/v1", api_key="none", max_retries=0, timeout=600)
    lock = threading.Lock()
    next_request = [0]
    lat, ttft, tokens, errors = [], [], [], []

    def one_sample(question):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"{question}\n{INSTRUCTION}"}],
            max_tokens=a.max_tokens, temperature=0.8,
        )
        return r.choices[0].message.content, r.usage.completion_tokens

    def n4(i):
        q = QUESTIONS[i % len(QUESTIONS)]
        if a.server == "ttc":
            r = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": q}], max_tokens=a.max_tokens,
                temperature=0.8, extra_body={"ttc": {"method": "majority", "n": 4}},
            )
            return r.usage.completion_tokens
        out = [None] * 4
        threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, one_sample(q))) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        Counter(last_number(text) for text, _ in out).most_common(1)
        return sum(n for _, n in out)

    def plain(i, t0):
        first = None
        n = 0
        for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=a.max_tokens, temperature=0.8, stream=True,
            stream_options={"include_usage": True},
        ):
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - t0
            if chunk.usage:
                n = chunk.usage.completion_tokens
        return n, first

    def worker():
        while True:
            with lock:
                i = next_request[0]
                if i >= a.requests:
                    return
                next_request[0] += 1
            t0 = time.perf_counter()
            try:
                if a.workload == "n4":
                    n, first = n4(i), None
                else:
                    n, first = plain(i, t0)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                ttft.append(first if first is not None else dt)
                tokens.append(n)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    print(json.dumps({
        "server": a.server, "workload": a.workload, "concurrency": a.concurrency,
        "requests": len(lat), "errors": len(errors), "wall_s": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 3), "tokens_per_s": round(sum(tokens) / wall, 1),
        "p50_latency_s": round(statistics.median(lat), 3) if lat else None,
        "p95_latency_s": round(percentile(lat, 95), 3) if lat else None,
        "p50_ttft_s": round(statistics.median(ttft), 3) if ttft else None,
        "p95_ttft_s": round(percentile(ttft, 95), 3) if ttft else None,
    }))
    if errors:
        print(json.dumps({"first_errors": errors[:3]}))


if __name__ == "__main__":
    main()
