"""Accuracy and latency on held-out questions: what a llama-server user runs for a vote against
`ttc-run serve`'s default, one question at a time.

    python3 benches/accuracy_vs_llama_server.py BASE_URL --server llama|ttc QUESTIONS.jsonl \
        [--n 4] [--max-tokens 256] [--limit K]

llama-server: `--n` concurrent requests of the same prompt (the question and the answer-format
instruction; the prompt is in every slot's cache after the first), T = 0.8 with ttc's other
sampling defaults, and a majority vote over the last number of each reply, counted here, as a
llama-server user must. ttc: one request with the question as typed and nothing else: the
allocator decides whether and how to vote (it adds the same instruction for a question with a
final answer). Both answers are read the same way: the last number of the text. Prints one JSON
line: questions, accuracy, mean and p50/p90 latency, mean completion tokens, and per suite (the id
before its last '-').
"""

import argparse
import json
import re
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict

from openai import OpenAI

from serve_load import INSTRUCTION, percentile

SAMPLING = {"temperature": 0.8, "top_p": 0.95}
# llama-server reads these beyond OpenAI's fields; they are ttc's defaults.
LLAMA_EXTRA = {"top_k": 40, "min_p": 0.05}


def last_number(text):
    m = re.findall(r"-?\d+(?:\.\d+)?", (text or "").replace(",", ""))
    if not m:
        return None
    x = m[-1]
    return x[:-2] if x.endswith(".0") else x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("questions")
    ap.add_argument("--server", choices=["ttc", "llama"], required=True)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    client = OpenAI(base_url=a.base + "/v1", api_key="none", max_retries=0, timeout=600)
    with open(a.questions) as f:
        qs = [json.loads(line) for line in f if line.strip()][: a.limit]

    def one_sample(q, seed, out, k):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"{q}\n{INSTRUCTION}"}],
            max_tokens=a.max_tokens, seed=seed, extra_body=LLAMA_EXTRA, **SAMPLING,
        )
        out[k] = (r.choices[0].message.content, r.usage.completion_tokens)

    rows = []
    for i, item in enumerate(qs):
        t0 = time.perf_counter()
        if a.server == "llama":
            out = [None] * a.n
            threads = [
                threading.Thread(target=one_sample, args=(item["question"], 1000 * i + k, out, k))
                for k in range(a.n)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            votes = Counter(v for v in (last_number(text) for text, _ in out) if v is not None)
            answer = votes.most_common(1)[0][0] if votes else None
            tokens = sum(n for _, n in out)
        else:
            r = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": item["question"]}],
                max_tokens=a.max_tokens, seed=i, **SAMPLING,
            )
            answer = last_number(r.choices[0].message.content)
            tokens = r.usage.completion_tokens
        dt = time.perf_counter() - t0
        rows.append({"suite": item["id"].rsplit("-", 1)[0], "correct": answer == item["answer"],
                     "latency_s": dt, "tokens": tokens})
        print(f"\r{a.server}: {i + 1}/{len(qs)} questions", end="", flush=True, file=sys.stderr)
    print(file=sys.stderr)

    def summary(rs):
        lat = [r["latency_s"] for r in rs]
        return {
            "questions": len(rs),
            "accuracy": sum(r["correct"] for r in rs) / len(rs),
            "mean_latency_s": statistics.mean(lat),
            "p50_latency_s": percentile(lat, 50),
            "p90_latency_s": percentile(lat, 90),
            "mean_tokens": statistics.mean(r["tokens"] for r in rs),
        }

    suites = defaultdict(list)
    for r in rows:
        suites[r["suite"]].append(r)
    print(json.dumps({"server": a.server, "n": a.n if a.server == "llama" else None,
                      **summary(rows), "suites": {s: summary(rs) for s, rs in sorted(suites.items())}}))


if __name__ == "__main__":
    main()
