"""ttc-run serve driven by the real `openai` Python package (and plain HTTP where a client
would not go): run by crates/ttc-cli/tests/server.rs against a server it started.

    python3 openai_client.py features|load|cancel|busy BASE_URL API_KEY
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI


def metrics(base, key):
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {key}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def post_raw(base, path, body, key):
    req = urllib.request.Request(
        base + path,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        r = urllib.request.urlopen(req, timeout=120)
        return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def expect_status(exc_type, status, code, fn):
    try:
        fn()
    except exc_type as e:
        assert e.status_code == status, (e.status_code, e)
        body = e.body if isinstance(e.body, dict) else {}
        assert body.get("code") == code or body.get("error", {}).get("code") == code, e.body
        return
    raise AssertionError(f"expected {exc_type.__name__}")


def features(base, key):
    c = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    models = c.models.list()
    assert len(models.data) == 1, models
    model = models.data[0].id

    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=32,
        temperature=0,
        seed=1,
    )
    text = r.choices[0].message.content
    assert text and r.choices[0].finish_reason in ("stop", "length"), r
    assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0, r.usage
    ttc = r.usage.model_extra["ttc"]
    assert ttc["kind"]["kind"] == "open-ended" and ttc["chosen"] == "greedy", ttc
    assert "answer is" not in text.lower(), text

    # The same request streamed: the same text, piece by piece (the first run left its blocks
    # in the prefix cache; the streamed run and the next one both start from them).
    pieces = []
    for chunk in c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=32,
        temperature=0,
        seed=1,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    again = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        max_tokens=32,
        temperature=0,
        seed=1,
    ).choices[0].message.content
    assert len(pieces) > 3 and "".join(pieces) == again, (pieces, again)

    r = c.completions.create(model=model, prompt="Once upon a time, there was a", max_tokens=8, temperature=0)
    assert r.choices[0].text and r.object == "text_completion", r
    assert r.usage.model_extra["ttc"]["kind"]["kind"] == "open-ended", r.usage

    # n = 4: four choices from one prefill.
    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=16,
        n=4,
    )
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2, 3], r
    assert r.usage.model_extra["ttc"]["chosen"] == "sample@4"
    # Streamed with n = 4: every chunk says its choice.
    seen = set()
    for chunk in c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name a fruit."}], max_tokens=16, n=4, stream=True
    ):
        for ch in chunk.choices:
            seen.add(ch.index)
    assert seen == {0, 1, 2, 3}, seen

    # The ttc extension: a forced majority vote of 4, with its candidates.
    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        max_tokens=48,
        extra_body={"ttc": {"method": "majority", "n": 4}},
    )
    ttc = r.usage.model_extra["ttc"]
    assert ttc["chosen"] == "majority@4" and len(ttc["candidates"]) == 4, ttc
    assert ttc["predicted"]["latency_s"] > 0 and ttc["tokens_generated"] == r.usage.completion_tokens, ttc
    # Auto on a question with a final answer: the kind decision and a menu choice.
    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 4 + 4?"}],
        max_tokens=48,
        extra_body={"ttc": {"method": "auto", "lambda_latency": 0.01}},
    )
    ttc = r.usage.model_extra["ttc"]
    assert ttc["kind"]["kind"] == "final-answer" and ttc["predicted"]["accuracy"] is not None, ttc

    # Log-probabilities of a plain answer, one per token.
    r = c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
    )
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens and all(t.logprob <= 0 for t in lp), lp

    # Errors, in OpenAI's shape.
    bad = OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    expect_status(openai.AuthenticationError, 401, "invalid_api_key", lambda: bad.models.list())
    msgs = [{"role": "user", "content": "hi"}]
    expect_status(openai.BadRequestError, 400, "invalid_value", lambda: c.chat.completions.create(model=model, messages=msgs, n=0))
    expect_status(openai.BadRequestError, 400, "invalid_value", lambda: c.chat.completions.create(model=model, messages=msgs, n=100000))
    expect_status(openai.BadRequestError, 400, "invalid_request", lambda: c.chat.completions.create(model=model, messages=msgs, max_tokens=-1))
    expect_status(
        openai.BadRequestError, 400, "invalid_value",
        lambda: c.chat.completions.create(model=model, messages=msgs, extra_body={"ttc": {"method": "nope"}}),
    )
    expect_status(
        openai.BadRequestError, 400, "context_length_exceeded",
        lambda: c.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 3000}]),
    )
    status, _, body = post_raw(base, "/v1/chat/completions", b"{not json", key)
    assert status == 400 and body["error"]["type"] == "invalid_request_error", body
    status, _, body = post_raw(base, "/v1/chat/completions", json.dumps({"messages": "hi"}).encode(), key)
    assert status == 400, body
    status, _, body = post_raw(base, "/v1/chat/completions", json.dumps({"messages": msgs, "temperature": "hot"}).encode(), key)
    assert status == 400, body
    # /health needs no key.
    assert urllib.request.urlopen(base + "/health", timeout=10).status == 200
    print("features ok")


def load(base, key):
    c = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    questions = ["What is 2 + 2?", "Name a color.", "What is 3 + 5?", "Say hello."]
    errors, done = [], []

    def client(i):
        try:
            for j, q in enumerate(questions):
                r = c.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": q}],
                    max_tokens=24,
                    n=2 if (i + j) % 2 else 1,
                )
                assert r.choices and r.choices[0].message.content is not None
                done.append((i, j))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(done) == 32, len(done)
    m = metrics(base, key)
    assert m["ttc_kv_blocks_live"] == 0 and m["ttc_running_requests"] == 0, m
    assert m["ttc_queue_length"] == 0 and m["ttc_decoding_sessions"] == 0, m
    print("load ok: 32 answered, KV pool back at its baseline")


def cancel(base, key):
    c = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    stream = c.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
        max_tokens=500,
        temperature=0.8,
        stream=True,
    )
    got = 0
    for chunk in stream:
        got += 1
        if got == 5:
            break
    stream.close()
    closed = time.monotonic()
    while True:
        m = metrics(base, key)
        if m["ttc_kv_blocks_live"] == 0 and m["ttc_running_requests"] == 0:
            break
        assert time.monotonic() - closed < 1.0, f"blocks still held a second after the client left: {m}"
        time.sleep(0.02)
    print(f"cancel ok: blocks back {time.monotonic() - closed:.3f} s after the client left")


def busy(base, key):
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 200}
    ).encode()
    results = []

    def one():
        results.append(post_raw(base, "/v1/chat/completions", body, key))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(300)
    statuses = sorted(r[0] for r in results)
    assert 200 in statuses and 429 in statuses, statuses
    for status, headers, body in results:
        if status == 429:
            assert headers.get("retry-after") == "1", headers
            assert body["error"]["code"] == "server_busy", body
    print(f"busy ok: {statuses}")


if __name__ == "__main__":
    what, base, key = sys.argv[1], sys.argv[2], sys.argv[3]
    {"features": features, "load": load, "cancel": cancel, "busy": busy}[what](base, key)
