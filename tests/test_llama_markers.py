"""A model's markers reach the reply parser even when they are control tokens (as
llama-server's "preserved tokens"): the engine renders the tokens a request asks it to
preserve, and leaves every other control token unrendered."""

from __future__ import annotations

from typing import Any

import pytest

from impetus_cli.runtime.types import SamplingParams

pytest.importorskip("llama_cpp")


def _reply(engine: Any, **sampling: Any) -> str:
    marker = engine.tokenize("<|im_start|>", special=True)[-1]
    prompt = engine.tokenize("hello world")
    params = SamplingParams(max_tokens=3, temperature=0, logit_bias={marker: 100.0}, **sampling)
    return "".join(chunk.text for chunk in engine.generate(prompt, params))


def test_a_preserved_control_token_is_rendered(tiny_gguf_engine: Any) -> None:
    assert _reply(tiny_gguf_engine, preserve=("<|im_start|>",)) == "<|im_start|>" * 3


def test_other_control_tokens_stay_unrendered(tiny_gguf_engine: Any) -> None:
    assert _reply(tiny_gguf_engine) == ""
    assert _reply(tiny_gguf_engine, preserve=("<|im_end|>",)) == ""
