#!/usr/bin/env python3
"""Protocol tests of `tokenwise serve` with the official `openai` Python client.

Starts the server on a free loopback port with SmolLM2, runs each check, stops the
server (SIGTERM) and exits non-zero if anything failed. Every call has a timeout, so
the script ends by itself.

    python3 tests/server/test_openai.py [path/to/tokenwise]
"""

import json
import os
import sys
import time
import urllib.request

import jsonschema
import openai
from openai import OpenAI

from serve import start_server, stop_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check(name, fn, failures):
    t0 = time.time()
    try:
        fn()
        print(f"ok   {name} ({time.time() - t0:.1f}s)")
    except Exception as e:  # report every failure, then exit non-zero
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/tokenwise")
    proc, base = start_server(binary)
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=120, max_retries=0)
    failures = []

    def models():
        ids = [m.id for m in client.models.list().data]
        assert ids == ["smollm2"], ids

    def completion():
        r = client.completions.create(model="smollm2", prompt="The capital of France is",
                                      max_tokens=8, temperature=0, logprobs=2)
        c = r.choices[0]
        assert c.finish_reason == "length", c.finish_reason
        assert len(c.logprobs.tokens) == 8
        assert "".join(c.logprobs.tokens) == c.text
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
        assert r.usage.completion_tokens == 8
        assert r.usage.total_tokens == r.usage.prompt_tokens + 8

    def chat():
        r = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is 2+2?"}],
            max_tokens=16, temperature=0, logprobs=True, top_logprobs=3)
        c = r.choices[0]
        assert c.message.role == "assistant" and c.message.content
        assert c.logprobs.content, "no logprobs"
        for e in c.logprobs.content:
            assert e.logprob <= 0 and len(e.top_logprobs) == 3
            # tokenwise's extension fields ride along.
            assert e.model_extra["entropy"] >= 0
        assert r.usage.prompt_tokens > 0

    def streaming():
        stream = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24, temperature=0, stream=True, logprobs=True,
            stream_options={"include_usage": True})
        text, tokens, finish, usage = "", 0, None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                if c.logprobs and c.logprobs.content:
                    tokens += len(c.logprobs.content)
                finish = c.finish_reason or finish
        assert text and finish in ("stop", "length"), (text, finish)
        assert usage and usage.completion_tokens == tokens, (usage, tokens)
        # The same request without streaming gives the same text (greedy).
        r = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24, temperature=0)
        assert r.choices[0].message.content == text

    def n_choices():
        r = client.completions.create(model="smollm2", prompt="Once upon a time", n=3,
                                      max_tokens=12, temperature=1.0, seed=11)
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert len({c.text for c in r.choices}) > 1, [c.text for c in r.choices]
        stream = client.completions.create(model="smollm2", prompt="Once upon a time", n=3,
                                           max_tokens=12, temperature=1.0, seed=11,
                                           stream=True)
        texts = ["", "", ""]
        for chunk in stream:
            for c in chunk.choices:
                texts[c.index] += c.text
        assert texts == [c.text for c in r.choices], texts

    def stop_sequences():
        free = client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=12,
                                         temperature=0).choices[0].text
        stop = free.strip()[:1]
        r = client.completions.create(model="smollm2", prompt="1, 2, 3, 4,", max_tokens=12,
                                      temperature=0, stop=[stop])
        assert r.choices[0].finish_reason == "stop"
        assert stop not in r.choices[0].text

    def tokenwise_extension():
        r = client.completions.create(
            model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0,
            extra_body={"tokenwise": {"kv_policy": "h2o", "kv_budget": 16}})
        assert r.choices[0].text
        assert r.model_extra["tokenwise"][0]["kv_bytes"] > 0

    def json_schema_output():
        schema = {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "year": {"type": "integer"},
                "genres": {"type": "array", "items": {"type": "string", "maxLength": 12},
                           "maxItems": 2},
            },
            "required": ["name", "year", "genres"],
            "additionalProperties": False,
        }
        for mode in ("mask", "awrs"):
            for temperature in (0, 0.8):
                r = client.chat.completions.create(
                    model="smollm2",
                    messages=[{"role": "user", "content": "Describe a famous film as JSON."}],
                    max_tokens=256, temperature=temperature, seed=3,
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "film", "schema": schema}},
                    extra_body={"tokenwise": {"constraint": mode}})
                text = r.choices[0].message.content
                # The grammar ends the output once the object is complete.
                assert r.choices[0].finish_reason == "stop", (mode, temperature, text)
                jsonschema.validate(json.loads(text), schema)
        # json_object bounds nothing but the syntax: a small model may loop inside a
        # string until max_tokens, so parse only a finished object.
        r = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Give me a JSON object."}],
            max_tokens=60, temperature=0, response_format={"type": "json_object"})
        text = r.choices[0].message.content
        assert text.startswith("{"), text
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict), text

    def errors():
        cases = [
            dict(prompt="x", max_tokens=0),
            dict(prompt="x", max_tokens=-1),
            dict(prompt="word " * 600),
            dict(prompt="x", extra_body={"tokenwise": {"kv_policy": "nope"}}),
            dict(prompt="x", extra_body={"tokenwise": {"speculative": "warp"}}),
            dict(prompt="x", n=0),
        ]
        for kw in cases:
            try:
                client.completions.create(model="smollm2", **kw)
            except openai.BadRequestError as e:
                assert e.status_code == 400
                assert e.body and e.body.get("message"), e.body
            else:
                raise AssertionError(f"no error for {kw}")
        # Malformed JSON and invalid UTF-8, straight over HTTP.
        for raw in (b"{bad json", b'{"prompt": "\xff"}'):
            req = urllib.request.Request(f"{base}/v1/completions", data=raw,
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=30)
            except urllib.error.HTTPError as e:
                assert e.code == 400, e.code
                assert json.loads(e.read())["error"]["message"]
            else:
                raise AssertionError("malformed body accepted")

    for name, fn in [("models", models), ("completion", completion), ("chat", chat),
                     ("streaming", streaming), ("n>1", n_choices),
                     ("stop sequences", stop_sequences),
                     ("tokenwise extension", tokenwise_extension),
                     ("json schema output", json_schema_output), ("errors", errors)]:
        check(name, fn, failures)

    if not stop_server(proc):
        failures.append("clean shutdown on SIGTERM")
    if failures:
        raise SystemExit(f"{len(failures)} failed: {', '.join(failures)}")
    print("all protocol checks passed")


if __name__ == "__main__":
    main()
