"""One MLX generation from sampled tokens to chunks, shared by the serial path (mlx.py) and the
batcher (mlx_batch.py): the sampler and logits processors a request's settings ask for, the
incremental detokenizer, stop strings, logprobs, and the final counters.

Also the handle the batcher works with (``MlxModel``): what generation uses of a loaded model.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.runtime.engines.mlx_pool import PromptPool
from impetus_cli.runtime.types import FinishReason, GenerationChunk, SamplingParams

# Penalty processors look back this many tokens (mlx-lm's default context size is 20).
PENALTY_CONTEXT = 64
# Prompt tokens the incremental decoder starts from (context for leading spaces).
DECODE_CONTEXT = 4


@dataclass(frozen=True)
class MlxModel:
    """What generation uses of a loaded MLX model: the model, the lock that serialises its
    other users (embeddings, the serial path) with the batcher's steps, the prompt caches, the
    end-of-sequence tokens, and the detokenizer."""

    model: Any
    lock: threading.Lock
    pool: PromptPool
    eos: frozenset[int]
    detokenize: Callable[[Sequence[int]], str]
    n_parallel: int


def seed_from(sampling: SamplingParams) -> None:
    """Seed MLX's generator: unseeded requests must not replay the previous seeded one."""
    import mlx.core as mx

    mx.random.seed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4)))


class Decoder:
    """Incremental detokenization whose pieces add up to what decoding the whole sequence gives.

    Decodes a short window of recent tokens twice (with and without the newest) and emits what
    grew, holding back incomplete UTF-8. The window starts in the prompt's last tokens, so a
    first token's leading space survives (mlx-lm's streaming detokenizers strip it, which would
    glue a raw completion to its prompt).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context: list[int]):
        self.decode = decode
        self.tokens = list(context)
        self.prefix, self.read = 0, len(context)

    def add(self, token: int) -> str:
        self.tokens.append(token)
        return self._advance(final=False)

    def finish(self) -> str:
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self.decode(self.tokens[self.prefix : self.read])
        after = self.decode(self.tokens[self.prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        return after[len(before) :]


@dataclass(eq=False)
class Reply:
    """One generation's bookkeeping: what was fed to the cache, what is not yet emitted, how
    it ends. ``add`` takes each sampled token; ``final`` makes the last chunk."""

    mlx: MlxModel
    tokens: list[int]  # the prompt
    cached: int  # prompt tokens reused from a prompt cache
    sampling: SamplingParams
    cancel: threading.Event
    start: float = field(default_factory=time.perf_counter)
    fed: list[int] = field(default_factory=list)  # every sampled token (the cache holds them)
    pending: list[int] = field(default_factory=list)  # token ids not yet attached to a chunk
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    completion: int = 0
    finish: FinishReason = "length"
    first_at: float = 0.0
    # Each step's logits before the penalty processors, oldest first, when logprobs are asked
    # with penalties on: mlx-lm's own logprobs come after every processor, ours before them.
    unpenalized: deque[Any] = field(default_factory=deque)
    decoder: Decoder | None = None
    stops: Any = None  # stops.StopMatcher

    def __post_init__(self) -> None:
        from impetus_cli.runtime.stops import StopMatcher

        self.decoder = Decoder(self.mlx.detokenize, self.tokens[-DECODE_CONTEXT:])
        self.stops = StopMatcher(self.sampling.stop)

    @property
    def sequence(self) -> list[int]:
        """What the prompt cache holds once the generation stops: the prompt and every token
        generated (the model has seen each one it sampled)."""
        return self.tokens + self.fed

    def add(self, token: int, logprobs: Any) -> tuple[GenerationChunk | None, bool]:
        """A sampled token: the chunk to send (None: nothing to send yet), and whether the
        generation ends here (cancel, EOS, a stop string)."""
        assert self.decoder is not None
        self.first_at = self.first_at or time.perf_counter()
        self.fed.append(token)  # the model has already been fed it
        if self.cancel.is_set():
            self.finish = "cancelled"
            return None, True
        if token in self.mlx.eos and not self.sampling.ignore_eos:
            self.finish = "stop"
            return None, True
        self.completion += 1
        self.pending.append(token)
        if self.sampling.logprobs is not None:
            if self.unpenalized:  # the tap ran for this step (and maybe the next one already)
                logprobs = _log_softmax(self.unpenalized.popleft())
            self.logprobs.append(float(logprobs[token].item()))
            self.top_logprobs.append(_top(logprobs, self.sampling.logprobs))
        text, stopped = self.stops.feed(self.decoder.add(token))
        if stopped:
            self.finish = "stop"
        return (self._chunk(text) if text else None), stopped

    def final(self) -> GenerationChunk:
        """The last chunk: text held back as a possible stop-string start (unless a stop string
        hit), the finish reason and the counters."""
        assert self.decoder is not None
        tail, _ = self.stops.feed(self.decoder.finish())
        end = time.perf_counter()
        first_at = self.first_at or end
        decode_s, prompt_s = end - first_at, first_at - self.start
        return self._chunk(
            tail + self.stops.flush(),
            finish_reason=self.finish,
            prompt_tokens=len(self.tokens),
            cached_tokens=self.cached,
            completion_tokens=self.completion,
            prompt_tps=(len(self.tokens) - self.cached) / prompt_s if prompt_s > 0 else 0.0,
            # The first token's time belongs to the prompt (it comes out of the prefill).
            generation_tps=(self.completion - 1) / decode_s
            if decode_s > 0 and self.completion > 1
            else 0.0,
            ttft_s=prompt_s,
        )

    def sampling_functions(self, prefix: list[int]) -> tuple[Any, list[Any]]:
        """The sampler, and the processors: logit bias, ``tap`` (when it is needed), then the
        penalties. Processors see ``prefix`` before the tokens they are shown."""
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        s = self.sampling
        greedy = s.temperature <= 0
        sampler = make_sampler(
            temp=max(s.temperature, 0.0),
            top_p=0.0 if greedy else s.top_p,
            min_p=0.0 if greedy else s.min_p,
            top_k=0 if greedy else s.top_k,
        )
        bias = make_logits_processors(logit_bias=dict(s.logit_bias) if s.logit_bias else None)
        penalties = make_logits_processors(
            repetition_penalty=s.repeat_penalty if s.repeat_penalty != 1.0 else None,
            repetition_context_size=PENALTY_CONTEXT,
            presence_penalty=s.presence_penalty or None,
            presence_context_size=PENALTY_CONTEXT,
            frequency_penalty=s.frequency_penalty or None,
            frequency_context_size=PENALTY_CONTEXT,
        )
        tap = [self._tap] if penalties and s.logprobs is not None else []
        return sampler, _with_prefix(bias + tap + penalties, prefix[-PENALTY_CONTEXT:])

    def _tap(self, _tokens: Any, logits: Any) -> Any:
        """A logits processor that records the logits it sees and changes nothing. It keeps a
        new array (the row): the penalties assign into ``logits`` in place."""
        self.unpenalized.append(logits[0])
        return logits

    def _chunk(self, text: str, **final: Any) -> GenerationChunk:
        chunk = GenerationChunk(
            text=text,
            token_ids=tuple(self.pending),
            logprobs=tuple(self.logprobs),
            top_logprobs=tuple(self.top_logprobs),
            **final,
        )
        self.pending, self.logprobs, self.top_logprobs = [], [], []
        return chunk


def _top(logprobs: Any, n: int) -> tuple[tuple[int, float], ...]:
    """The ``n`` most likely tokens of a step's log-probabilities, best first."""
    if n <= 0:
        return ()
    import mlx.core as mx

    ids = mx.argpartition(-logprobs, kth=n - 1)[:n]
    values = logprobs[ids]
    order = mx.argsort(-values)
    best_ids: list[int] = ids[order].tolist()  # type: ignore[assignment]
    best_values: list[float] = values[order].tolist()  # type: ignore[assignment]
    return tuple(zip(best_ids, best_values, strict=True))


def _log_softmax(logits: Any) -> Any:
    import mlx.core as mx

    return logits - mx.logsumexp(logits)


def _with_prefix(processors: list[Any], prefix: list[int]) -> list[Any]:
    """Processors see the cached prefix too, so penalties match a cold evaluation
    (generate_step only shows them the tokens it evaluated itself)."""
    if not prefix or not processors:
        return processors
    import mlx.core as mx

    head = mx.array(prefix)

    def wrap(processor: Any) -> Any:
        return lambda toks, logits: processor(mx.concatenate([head, toks]), logits)

    return [wrap(p) for p in processors]
