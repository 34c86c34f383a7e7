"""A corpus of malformed and adversarial requests: never a 5xx, every error in the OpenAI shape,
and the server still answers a normal request afterwards."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.test_server_openai import client, raw_post

HAND = json.loads((Path(__file__).parent / "data" / "malformed_requests.json").read_text())
VALID = {"model": "fake", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}


def fuzzed() -> list[tuple[str, bytes]]:
    """Deterministic mutations of a valid request: flipped bytes, cuts, bad UTF-8, nesting."""
    rng = random.Random(1234)
    valid = json.dumps(VALID).encode()
    cases = []
    for i in range(20):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append((f"flipped bytes #{i}", bytes(data)))
    for i in range(10):
        cases.append((f"truncated #{i}", valid[: rng.randrange(1, len(valid) - 1)]))
    for bad in (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"):
        cases.append((f"invalid utf-8 {bad!r}", valid.replace(b"hello", bad)))
    for depth in (100, 1000, 100_000):
        cases.append((f"nested arrays {depth}", b"[" * depth + b"]" * depth))
        nested = {"model": "fake", "messages": [{"role": "user", "content": "x"}], "extra": None}
        cases.append(
            (
                f"nested objects {depth}",
                json.dumps(nested).encode()[:-1]
                + b', "deep": '
                + b'{"a":' * depth
                + b"1"
                + b"}" * depth
                + b"}",
            )
        )
    keys = ("model", "temperature", "stop", "messages", "tools", "max_tokens", "typical_p")
    for key in (*keys, "n_probs", "dry_multiplier", "dry_base", "dry_sequence_breakers"):
        for value in (None, [], {}, "", -1, 1e400 if False else 1.7e308, True):
            cases.append((f"{key}={value!r}", json.dumps({**VALID, key: value}).encode()))
    cases.append(
        (
            "oversized content",
            json.dumps(
                {**VALID, "messages": [{"role": "user", "content": "word " * 400_000}]}
            ).encode(),
        )
    )
    cases.append(("oversized stop", json.dumps({**VALID, "stop": ["x" * 100_000]}).encode()))
    cases.append(
        (
            "many messages",
            json.dumps({**VALID, "messages": [{"role": "user", "content": "x"}] * 20_000}).encode(),
        )
    )
    return cases


CASES = [
    (c["name"], c["raw"].encode() if "raw" in c else json.dumps(c["json"]).encode()) for c in HAND
] + fuzzed()


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 100


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_malformed_requests_never_crash_the_server(fake_server: str, path: str) -> None:
    failures = []
    for name, body in CASES:
        status, _, raw = raw_post(fake_server, path, body)
        if status >= 500:
            failures.append(f"{name}: {status} {raw[:200]!r}")
        elif status >= 400:
            try:
                error = json.loads(raw)["error"]
                assert isinstance(error["message"], str) and error["message"]
                assert {"message", "type", "param", "code"} <= set(error)
            except (ValueError, KeyError, TypeError, AssertionError):
                failures.append(
                    f"{name}: {status} body not in the OpenAI error shape: {raw[:200]!r}"
                )
    assert failures == []
    reply = client(fake_server).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "x"}]
    )
    assert reply.choices[0].message.content == "ok"


def test_a_body_over_32_mb_is_413(fake_server: str) -> None:
    status, _, raw = raw_post(
        fake_server, "/v1/chat/completions", b"{" + b" " * (33 * 1024 * 1024) + b"}"
    )
    assert status == 413 and json.loads(raw)["error"]["message"].startswith(
        "Request body too large"
    )
