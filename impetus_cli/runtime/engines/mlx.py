"""MLX and safetensors models on mlx-lm (Metal on a Mac, the CPU through mlx[cpu] on Linux).

Generation drives mlx-lm's ``generate_step`` with its sampler and logits processors. Prompt
caches and the tokens they hold survive between requests, one per recent conversation (up to
``plan.n_parallel``): a prompt that shares a prefix with one of them trims it to the common prefix
(``trim_prompt_cache``), or starts from a copy of that prefix when trimming would evict more, and
evaluates only the rest. Requests run batched on mlx-lm's BatchGenerator (mlx_batch.py), or one at
a time (a lock) when the KV cache is quantized.

Not available on MLX: grammar / JSON-schema constrained output (refused with a 400).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import (
    BackendUnavailable,
    ContextLengthExceeded,
    CorruptModel,
    EngineError,
    ImpetusError,
)
from impetus_cli.runtime.engines.base import relay
from impetus_cli.runtime.engines.mlx_batch import Batcher, Job
from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    ToolSpec,
)

# Penalty processors look back this many tokens (mlx-lm's default context size is 20).
PENALTY_CONTEXT = 64
# Prompt tokens the incremental decoder starts from (context for leading spaces).
DECODE_CONTEXT = 4
# Quantized KV cache: the group size along the head dimension (mx.quantize accepts 32/64/128).
KV_GROUP = 32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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


class _Decoder:
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
class _Cached:
    """One conversation's prompt cache and the tokens it holds, in order."""

    tokens: list[int]
    cache: Any
    last_used: float = 0.0
    busy: bool = False  # a batched generation is extending it


@dataclass
class _Stream:
    """Bookkeeping of one generation: what was fed to the cache, what is not yet emitted."""

    fed: list[int] = field(default_factory=list)  # every sampled token (the cache holds them)
    pending: list[int] = field(default_factory=list)  # token ids not yet attached to a chunk
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    completion: int = 0
    finish: str = "length"
    first_at: float = 0.0
    # Each step's logits before the penalty processors, oldest first, when logprobs are asked
    # with penalties on: mlx-lm's own logprobs come after every processor, ours before them.
    unpenalized: deque[Any] = field(default_factory=deque)

    def tap(self, _tokens: Any, logits: Any) -> Any:
        """A logits processor that records the logits it sees and changes nothing. It keeps
        a new array (the row): the penalties assign into ``logits`` in place."""
        self.unpenalized.append(logits[0])
        return logits


class MlxEngine:
    """Engine protocol (engines/base.py) on one mlx-lm model."""

    def __init__(self, plan: LoadPlan, info: ModelInfo, model: Any, tokenizer: Any):
        self.plan, self.info = plan, info
        self._model, self._tokenizer = model, tokenizer
        self._lock = threading.Lock()
        self._pool: list[_Cached] = []  # recent conversations' prompt caches
        self._current: _Cached | None = None  # the one the running generation extends
        self._weights_bytes = _weights_bytes(model)
        self._eos = frozenset(getattr(tokenizer, "eos_token_ids", None) or ())
        self.kv_bits = _kv_bits(plan.kv_type, info.head_dim, model)
        # BatchGenerator has no quantized batch cache: a quantized KV cache runs serially.
        self._batcher: Batcher | None = None
        self.batched = self.kv_bits is None
        self.last_cached_tokens = 0  # counters the tests and metrics read
        self.last_evaluated_tokens = 0

    @classmethod
    def load(cls, plan: LoadPlan, info: ModelInfo) -> MlxEngine:
        try:
            import mlx_lm
        except ImportError as exc:
            raise BackendUnavailable(
                "mlx-lm is not installed.", "pip install mlx-lm (and mlx[cpu] on Linux)."
            ) from exc
        try:
            loaded: Any = mlx_lm.load(str(info.path))
        except (ValueError, OSError, KeyError) as exc:
            raise CorruptModel(
                f"mlx-lm could not load {info.path}: {exc}",
                "The directory may be incomplete: pull it again.",
            ) from exc
        return cls(plan, info, loaded[0], loaded[1])

    @property
    def n_ctx(self) -> int:
        return self.plan.n_ctx

    @property
    def memory_bytes(self) -> int:
        """The weights' bytes plus what the prompt caches hold now."""
        layers = [c for entry in self._pool for c in entry.cache]
        return self._weights_bytes + sum(int(getattr(c, "nbytes", 0)) for c in layers)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """``special`` parses control tokens in the text and adds BOS when the tokenizer wants
        one, unless the text already starts with it (templates often write it themselves)."""
        if not special:
            ids = self._tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
            return list(ids)
        bos = getattr(self._tokenizer, "bos_token", None)
        add = not (bos and text.startswith(bos))
        return list(self._tokenizer.encode(text, add_special_tokens=add))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(tokens), clean_up_tokenization_spaces=False))

    def token_bytes(self, token: int) -> bytes:
        """One token's text as bytes (for logprobs; a piece of a character decodes to U+FFFD)."""
        return self.detokenize([token]).encode("utf-8")

    def _decoder(self, prompt: list[int]) -> _Decoder:
        return _Decoder(self.detokenize, prompt[-DECODE_CONTEXT:])

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        from impetus_cli.runtime import templates

        template = getattr(self._tokenizer, "chat_template", None) or self.info.chat_template
        return templates.render_chat(
            messages,
            tools,
            template=template,
            architecture=self.info.architecture,
            bos_token=getattr(self._tokenizer, "bos_token", None) or "",
            eos_token=getattr(self._tokenizer, "eos_token", None) or "",
        )

    # -- generation -------------------------------------------------------------------------

    def generate(
        self, tokens: Sequence[int], sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> Iterator[GenerationChunk]:
        """Checks run now (so the server can answer 4xx before streaming); the returned
        iterator takes the engine's lock when first advanced and holds it until it ends."""
        if sampling.grammar:
            raise ImpetusError(
                "Constrained output (grammar, JSON schema, response_format) is not available "
                "for MLX models.",
                "Use a GGUF build of the model for constrained output, or drop response_format.",
                param="response_format",
            )
        if not tokens:
            raise ImpetusError("The prompt is empty.", param="messages")
        if len(tokens) > self.n_ctx:
            raise ContextLengthExceeded(self.n_ctx, len(tokens))
        cancel = cancel or threading.Event()
        if not self.batched:
            return self._locked(list(tokens), sampling, cancel)
        room = self.n_ctx - len(tokens)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        return self._queued(Job(list(tokens), sampling, cancel, limit))

    def _queued(self, job: Job) -> Iterator[GenerationChunk]:
        """The batched path (mlx_batch.py): the job joins when the stream is first read."""
        with self._lock:
            if self._batcher is None:
                self._batcher = Batcher(self)
        self._batcher.submit(job)
        yield from relay(job.out, job.cancel, job.abandon)

    def _locked(
        self, tokens: list[int], sampling: SamplingParams, cancel: threading.Event
    ) -> Iterator[GenerationChunk]:
        with self._lock:
            yield from self._run(tokens, sampling, cancel)

    def _prepare_cache(self, tokens: list[int]) -> int:
        """The serial path's cache: see _choose_cache; returns how many tokens it keeps."""
        self._current, keep = self._choose_cache(tokens)
        return keep

    def _choose_cache(self, tokens: list[int]) -> tuple[_Cached, int]:
        """Pick the prompt cache this request extends (never one a running generation is
        extending) and trim it to the shared prefix; with how many tokens it keeps. At least one
        prompt token is always evaluated, for the next token's logits.

        The pool keeps up to ``plan.n_parallel`` conversations. Like the GGUF engine's slots,
        the choice loses the fewest cached tokens: continuing the cache that shares the longest
        prefix loses its tokens past that prefix; starting another loses nothing while the pool
        has room (else its least valuable entry), and starts from a copy of the shared prefix.
        """
        from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

        limit, now = len(tokens) - 1, time.monotonic()
        free = [e for e in self._pool if not e.busy]
        shared = {id(e): self._usable_prefix(e, tokens, limit) for e in free}
        best = max(free, key=lambda e: (shared[id(e)], e.last_used), default=None)
        keep = shared[id(best)] if best is not None else 0
        others = [e for e in free if e is not best]
        victim = min(others, key=lambda e: (len(e.tokens), e.last_used), default=None)
        room = len(self._pool) < max(1, self.plan.n_parallel)
        loss_new = 0 if room else (len(victim.tokens) if victim else None)
        if best is not None and keep and (loss_new is None or len(best.tokens) - keep <= loss_new):
            trim_prompt_cache(best.cache, len(best.tokens) - keep)
            best.tokens = best.tokens[:keep]
            entry = best
        else:
            dropped = victim if victim is not None else best
            if not room and dropped is not None:
                self._pool.remove(dropped)
            if best is not None and keep:
                cache = copy.deepcopy(best.cache)
                trim_prompt_cache(cache, len(best.tokens) - keep)
                entry = _Cached(tokens[:keep], cache)
            else:
                entry, keep = _Cached([], make_prompt_cache(self._model)), 0
            self._pool.append(entry)
        entry.last_used = now
        return entry, keep

    @staticmethod
    def _usable_prefix(entry: _Cached, tokens: list[int], limit: int) -> int:
        """The prefix of ``tokens`` the entry can serve: a cache that cannot be trimmed
        (recurrent layers) only when the prompt extends all of it."""
        from mlx_lm.models.cache import can_trim_prompt_cache

        n = min(common_prefix(entry.tokens, tokens), limit)
        return n if n == len(entry.tokens) or can_trim_prompt_cache(entry.cache) else 0

    def _processors(self, s: SamplingParams, prefix: list[int], st: _Stream) -> tuple[Any, Any]:
        """The sampler, and the processors: logit bias, ``st.tap`` (when it is needed), then
        the penalties. Processors see the cached prefix too (``_with_prefix``)."""
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

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
        tap = [st.tap] if penalties and s.logprobs is not None else []
        return sampler, _with_prefix(bias + tap + penalties, prefix[-PENALTY_CONTEXT:])

    def _steps(self, tokens: list[int], cached: int, sampling: SamplingParams, st: _Stream) -> Any:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        # Unseeded requests must not replay the previous seeded one: reseed from the OS.
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4))
        mx.random.seed(seed)
        sampler, processors = self._processors(sampling, tokens[:cached], st)
        room = max(self.n_ctx - len(tokens), 0)
        limit = room if sampling.max_tokens is None else max(min(sampling.max_tokens, room), 0)
        return generate_step(
            mx.array(tokens[cached:]),
            self._model,
            max_tokens=limit,
            sampler=sampler,
            logits_processors=processors or None,
            prompt_cache=self._current.cache if self._current else None,
            kv_bits=self.kv_bits,
            kv_group_size=KV_GROUP,
            quantized_kv_start=0,  # the planner counted quantized bytes for the whole context
        )

    def _run(
        self, tokens: list[int], sampling: SamplingParams, cancel: threading.Event
    ) -> Iterator[GenerationChunk]:
        from impetus_cli.runtime.stops import StopMatcher

        start = time.perf_counter()
        cached = self._prepare_cache(tokens)
        self.last_cached_tokens, self.last_evaluated_tokens = cached, len(tokens) - cached
        detok, stops, st = self._decoder(tokens), StopMatcher(sampling.stop), _Stream()
        steps = self._steps(tokens, cached, sampling, st)
        try:
            for token_array, logprobs in steps:
                token = int(token_array)
                if not self._accept(st, token, logprobs, sampling, cancel):
                    break
                text, stopped = stops.feed(detok.add(token))
                if text:
                    yield self._chunk(st, text)
                if stopped:
                    st.finish = "stop"
                    break
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"MLX generation failed: {exc}") from exc
        finally:
            steps.close()
            self._remember(tokens + st.fed)
        # Text held back as a possible stop-string start is emitted unless a stop string hit.
        tail, _ = stops.feed(detok.finish())
        yield self._final(st, tail + stops.flush(), tokens, cached, start)

    def _accept(
        self, st: _Stream, token: int, logprobs: Any, s: SamplingParams, cancel: threading.Event
    ) -> bool:
        """Count a sampled token; False when it ends the generation instead (cancel, EOS)."""
        st.first_at = st.first_at or time.perf_counter()
        st.fed.append(token)  # generate_step has already fed it to the model
        if cancel.is_set():
            st.finish = "cancelled"
            return False
        if token in self._eos and not s.ignore_eos:
            st.finish = "stop"
            return False
        st.completion += 1
        st.pending.append(token)
        if s.logprobs is not None:
            if st.unpenalized:  # the tap ran for this step (and maybe the next one already)
                logprobs = _log_softmax(st.unpenalized.popleft())
            st.logprobs.append(float(logprobs[token].item()))
            st.top_logprobs.append(_top(logprobs, s.logprobs))
        return True

    @staticmethod
    def _chunk(st: _Stream, text: str) -> GenerationChunk:
        chunk = GenerationChunk(
            text=text,
            token_ids=tuple(st.pending),
            logprobs=tuple(st.logprobs),
            top_logprobs=tuple(st.top_logprobs),
        )
        st.pending, st.logprobs, st.top_logprobs = [], [], []
        return chunk

    @staticmethod
    def _final(
        st: _Stream, tail: str, tokens: list[int], cached: int, start: float
    ) -> GenerationChunk:
        end = time.perf_counter()
        first_at = st.first_at or end
        decode_s, prompt_s = end - first_at, first_at - start
        return GenerationChunk(
            text=tail,
            token_ids=tuple(st.pending),
            logprobs=tuple(st.logprobs),
            top_logprobs=tuple(st.top_logprobs),
            finish_reason=st.finish,  # type: ignore[arg-type]
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            completion_tokens=st.completion,
            prompt_tps=(len(tokens) - cached) / prompt_s if prompt_s > 0 else 0.0,
            # The first token's time belongs to the prompt (it comes out of the prefill).
            generation_tps=(st.completion - 1) / decode_s
            if decode_s > 0 and st.completion > 1
            else 0.0,
            ttft_s=prompt_s,
        )

    def _remember(self, sequence: list[int]) -> None:
        """What the cache now holds: as many tokens of the sequence as its offset says."""
        if self._current is not None:
            offsets = [int(getattr(c, "offset", len(sequence))) for c in self._current.cache]
            self._current.tokens = sequence[: min(offsets, default=0)]

    def clear_cache(self) -> None:
        """Forget the prompt cache (the next request is evaluated cold)."""
        with self._lock:
            self._pool = [e for e in self._pool if e.busy]
            self._current = None

    # -- embeddings -------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean of the final (normed) hidden states over the text's tokens, L2-normalised.

        The hidden states come from the model's body (``model.model``, the transformer without
        its output head), which every mlx-lm decoder exposes; one text at a time, no cache.
        """
        body = getattr(self._model, "model", None)
        if body is None:
            raise ImpetusError(
                f"{self.plan.model.name} does not expose hidden states for embeddings.",
                "Use a GGUF model for embeddings.",
                param="model",
            )
        with self._lock:
            return [self._embed_one(body, text) for text in texts]

    def _embed_one(self, body: Any, text: str) -> list[float]:
        import mlx.core as mx

        ids = self.tokenize(text)[: self.n_ctx] or [0]
        try:
            hidden = body(mx.array([ids]))
        except (TypeError, ValueError) as exc:
            raise ImpetusError(
                f"{self.plan.model.name} cannot produce embeddings on MLX: {exc}",
                "Use a GGUF model for embeddings.",
                param="model",
            ) from exc
        mean = mx.mean(hidden[0].astype(mx.float32), axis=0)
        vector = mean / (mx.sqrt(mx.sum(mean * mean)) + 1e-12)
        values: Any = vector.tolist()
        return [float(x) for x in values]

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        self.clear_cache()


def _weights_bytes(model: Any) -> int:
    from mlx.utils import tree_flatten

    flat: Any = tree_flatten(model.parameters())
    return int(sum(v.nbytes for _, v in flat))


def _kv_bits(kv_type: str, head_dim: int, model: Any) -> int | None:
    """llama.cpp's KV type names (q8_0, q4_0, ...) as mlx-lm's quantized cache bits. Full
    precision when the type is f16/f32, when the head size does not split into quantization
    groups, or when some layer's cache cannot be quantized (sliding-window, recurrent)."""
    from mlx_lm.models.cache import KVCache, make_prompt_cache

    digits = kv_type[1:2] if kv_type.lower().startswith("q") else ""
    if not digits.isdigit() or int(digits) not in (4, 5, 6, 8):
        return None
    cache = make_prompt_cache(model)
    if head_dim <= 0 or head_dim % KV_GROUP or not all(type(c) is KVCache for c in cache):
        return None
    return int(digits)


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
