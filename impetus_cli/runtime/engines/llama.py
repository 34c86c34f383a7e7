"""GGUF models on llama.cpp through llama-cpp-python's low-level bindings.

Why low-level: the high-level ``Llama`` class copies the logits of every token into numpy and
samples in Python (a 262k vocabulary costs ~40% of decode speed on a small model). Here the C
sampler chain samples straight from the context, so per token Python only decodes one token and
appends one piece of text.

The context holds ``plan.n_parallel`` sequences (``Slot``); each keeps the tokens in its part of
the KV cache, so a prompt that extends them evaluates only what is new (prefix reuse).
"""

from __future__ import annotations

import codecs
import ctypes
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import CorruptModel, EngineError, ImpetusError
from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    ToolSpec,
)

KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
_LOG_CALLBACK: Any = None  # keeps the ctypes callback alive for the life of the process


def _lib() -> Any:
    """The bindings, imported on first use (DESIGN.md rule 2) with llama.cpp's logging quiet."""
    global _LOG_CALLBACK
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as exc:
        from impetus_cli.errors import BackendUnavailable

        raise BackendUnavailable(
            "llama-cpp-python is not installed.", "Run `make setup` (it compiles llama.cpp)."
        ) from exc
    if _LOG_CALLBACK is None:
        verbose = os.environ.get("IMPETUS_DEBUG") == "1"

        def log(level: int, text: bytes, _user: Any) -> None:
            if verbose:
                os.write(2, text)

        _LOG_CALLBACK = lib.llama_log_callback(log)
        lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        lib.llama_backend_init()
    return lib


@dataclass
class Slot:
    """One sequence of the context: its id and the tokens its KV cache holds."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class LlamaEngine:
    """Engine protocol (engines/base.py) on one llama.cpp model and context."""

    def __init__(self, plan: LoadPlan, info: ModelInfo, lib: Any, model: Any, ctx: Any):
        self.plan, self.info = plan, info
        self._lib, self._model, self._ctx = lib, model, ctx
        self._vocab = lib.llama_model_get_vocab(model)
        self._mem = lib.llama_get_memory(ctx)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._batch = lib.llama_batch_init(plan.n_batch, 0, 1)
        self._slots = [Slot(i) for i in range(max(1, plan.n_parallel))]
        self._lock = threading.Lock()
        self._embed_ctx: Any = None
        self._closed = False
        self.last_cached_tokens = 0  # counters the tests and metrics read
        self.last_evaluated_tokens = 0

    @classmethod
    def load(cls, plan: LoadPlan, info: ModelInfo) -> LlamaEngine:
        lib = _lib()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = plan.n_gpu_layers
        model = lib.llama_model_load_from_file(str(info.path).encode(), mparams)
        if not model:
            raise CorruptModel(
                f"llama.cpp could not load {info.path}.", "The file may be damaged: pull it again."
            )
        ctx = lib.llama_init_from_model(model, cls._context_params(lib, plan, embeddings=False))
        if not ctx:
            lib.llama_model_free(model)
            raise EngineError(
                f"llama.cpp could not create a {plan.n_ctx}-token context for {info.path.name}.",
                "Try a smaller --ctx or --memory-budget.",
            )
        return cls(plan, info, lib, model, ctx)

    @staticmethod
    def _context_params(lib: Any, plan: LoadPlan, *, embeddings: bool) -> Any:
        params = lib.llama_context_default_params()
        # plan.n_ctx is per sequence; the context holds n_parallel of them.
        params.n_ctx = (
            plan.n_ctx * max(1, plan.n_parallel) if not embeddings else min(plan.n_ctx, 4096)
        )
        params.n_batch = plan.n_batch if not embeddings else params.n_ctx
        params.n_ubatch = plan.n_ubatch if not embeddings else params.n_ctx
        params.n_seq_max = max(1, plan.n_parallel) if not embeddings else 1
        params.n_threads = plan.n_threads
        params.n_threads_batch = plan.n_threads_batch
        params.flash_attn_type = 1 if plan.flash_attn else 0
        params.type_k = params.type_v = KV_TYPES.get(plan.kv_type, 1)
        params.embeddings = embeddings
        if embeddings:
            params.pooling_type = 1  # mean: works for any decoder model
        # Keep the whole sliding-window cache so a shared prefix can be reused on Gemma 2/3.
        params.swa_full = True
        params.no_perf = True
        return params

    @property
    def n_ctx(self) -> int:
        return int(self._lib.llama_n_ctx(self._ctx)) // len(self._slots)

    @property
    def memory_bytes(self) -> int:
        return (
            int(self._lib.llama_model_size(self._model))
            + self.plan.kv_bytes
            + self.plan.compute_bytes
        )

    @property
    def special_tokens(self) -> dict[str, int]:
        lib, v = self._lib, self._vocab
        return {
            "bos": lib.llama_vocab_bos(v),
            "eos": lib.llama_vocab_eos(v),
            "fim_pre": lib.llama_vocab_fim_pre(v),
            "fim_suf": lib.llama_vocab_fim_suf(v),
            "fim_mid": lib.llama_vocab_fim_mid(v),
        }

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (self._lib.llama_vocab_get_text(self._vocab, token) or b"").decode(
            "utf-8", "replace"
        )

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """``special`` both parses control tokens in the text and adds BOS when the model wants
        one, unless the text already starts with it (templates often write it themselves)."""
        data = text.encode("utf-8")
        bos = self.token_text(self._lib.llama_vocab_bos(self._vocab))
        add_bos = special and not (bos and text.startswith(bos))
        cap = len(data) + 16
        buf = (ctypes.c_int32 * cap)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            buf = (ctypes.c_int32 * -n)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, -n, add_bos, special)
        return list(buf[:n])

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", "replace")

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        from impetus_cli.runtime import templates

        specials = self.special_tokens
        return templates.render_chat(
            messages,
            tools,
            template=self.info.chat_template,
            architecture=self.info.architecture,
            bos_token=self.token_text(specials["bos"]),
            eos_token=self.token_text(specials["eos"]),
        )

    # -- generation -------------------------------------------------------------------------

    def generate(
        self,
        tokens: Sequence[int],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
    ) -> Iterator[GenerationChunk]:
        if not tokens:
            raise ImpetusError("The prompt is empty.", param="messages")
        with self._lock:
            slot = max(self._slots, key=lambda s: common_prefix(s.tokens, tokens))
            yield from self._run(slot, list(tokens), sampling, cancel or threading.Event())

    def _run(
        self, slot: Slot, tokens: list[int], sampling: SamplingParams, cancel: threading.Event
    ) -> Iterator[GenerationChunk]:
        from impetus_cli.runtime.templates import StopMatcher

        start = time.perf_counter()
        cached = self._reuse_prefix(slot, tokens)
        self._evaluate(slot, tokens[cached:])
        prompt_done = time.perf_counter()
        evaluated = len(tokens) - cached
        self.last_cached_tokens, self.last_evaluated_tokens = cached, evaluated
        sampler = self._sampler(sampling, tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(sampling.stop)
        room = self.n_ctx - len(tokens)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        generated, finish, first_at = 0, "length", 0.0
        try:
            while generated < limit:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                token = self._lib.llama_sampler_sample(sampler, self._ctx, -1)
                first_at = first_at or time.perf_counter()
                if self._lib.llama_vocab_is_eog(self._vocab, token) and not sampling.ignore_eos:
                    finish = "stop"
                    break
                generated += 1
                text, stopped = stops.feed(decoder.decode(self._piece(token)))
                if text:
                    yield GenerationChunk(text=text, token_ids=(token,))
                if stopped:
                    finish = "stop"
                    break
                if generated < limit:
                    self._evaluate(slot, [token])
        finally:
            self._lib.llama_sampler_free(sampler)
        tail = stops.flush() + decoder.decode(b"", final=True) if finish != "stop" else ""
        end = time.perf_counter()
        decode_s = end - (first_at or end)
        yield GenerationChunk(
            text=tail,
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            completion_tokens=generated,
            prompt_tps=evaluated / (prompt_done - start) if prompt_done > start else 0.0,
            generation_tps=generated / decode_s if decode_s > 0 else 0.0,
            ttft_s=(first_at or end) - start,
        )

    def _reuse_prefix(self, slot: Slot, tokens: list[int]) -> int:
        """Keep the longest cached prefix (at least one token is always evaluated, for logits)."""
        keep = min(common_prefix(slot.tokens, tokens), len(tokens) - 1)
        lib = self._lib
        if keep and lib.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1):
            del slot.tokens[keep:]
            return keep
        lib.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        slot.tokens.clear()
        return 0

    def _evaluate(self, slot: Slot, new: Sequence[int]) -> None:
        """Decode ``new`` after the slot's tokens, in n_batch chunks; logits for the last only."""
        batch, step = self._batch, self.plan.n_batch
        for start in range(0, len(new), step):
            chunk = new[start : start + step]
            batch.n_tokens = len(chunk)
            base = len(slot.tokens)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = base + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot.seq_id
                batch.logits[i] = 0
            batch.logits[len(chunk) - 1] = start + len(chunk) == len(new)
            code = self._lib.llama_decode(self._ctx, batch)
            if code != 0:
                raise EngineError(
                    f"llama_decode failed with code {code}", "The context may be full."
                )
            slot.tokens.extend(chunk)

    def _sampler(self, s: SamplingParams, prompt: Sequence[int]) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lambda smpl: lib.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if s.grammar:
            grammar = lib.llama_sampler_init_grammar(self._vocab, s.grammar.encode(), b"root")
            if not grammar:
                lib.llama_sampler_free(chain)
                raise ImpetusError(
                    "The response format could not be compiled to a grammar.",
                    param="response_format",
                )
            add(grammar)
        if s.logit_bias:
            items = (lib.llama_logit_bias * len(s.logit_bias))()
            for i, (tok, bias) in enumerate(s.logit_bias.items()):
                items[i].token, items[i].bias = int(tok), float(bias)
            add(lib.llama_sampler_init_logit_bias(self._n_vocab, len(s.logit_bias), items))
        penalised = s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty
        if penalised:
            add(
                lib.llama_sampler_init_penalties(
                    self._n_vocab, 64, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                )
            )
        if s.temperature <= 0:
            add(lib.llama_sampler_init_greedy())
        else:
            add(lib.llama_sampler_init_top_k(s.top_k))
            add(lib.llama_sampler_init_top_p(s.top_p, 1))
            add(lib.llama_sampler_init_min_p(s.min_p, 1))
            add(lib.llama_sampler_init_temp(s.temperature))
            seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
            add(lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if penalised and not s.grammar:
            for token in prompt[-64:]:  # the penalty window sees the end of the prompt
                lib.llama_sampler_accept(chain, token)
        return chain

    # -- embeddings ---------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import math

        lib = self._lib
        with self._lock:
            if self._embed_ctx is None:
                self._embed_ctx = lib.llama_init_from_model(
                    self._model, self._context_params(lib, self.plan, embeddings=True)
                )
                if not self._embed_ctx:
                    raise EngineError("llama.cpp could not create an embedding context.")
            ctx, n_embd = self._embed_ctx, lib.llama_model_n_embd(self._model)
            limit = lib.llama_n_ctx(ctx)
            batch = lib.llama_batch_init(limit, 0, 1)
            vectors = []
            try:
                for text in texts:
                    tokens = self.tokenize(text)[:limit] or [lib.llama_vocab_bos(self._vocab)]
                    lib.llama_memory_clear(lib.llama_get_memory(ctx), True)
                    batch.n_tokens = len(tokens)
                    for i, tok in enumerate(tokens):
                        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                        batch.seq_id[i][0], batch.logits[i] = 0, 1
                    if lib.llama_decode(ctx, batch) != 0:
                        raise EngineError("llama_decode failed while embedding.")
                    raw = lib.llama_get_embeddings_seq(ctx, 0)
                    vec = [raw[i] for i in range(n_embd)]
                    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
                    vectors.append([x / norm for x in vec])
            finally:
                lib.llama_batch_free(batch)
            return vectors

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            lib = self._lib
            lib.llama_batch_free(self._batch)
            if self._embed_ctx is not None:
                lib.llama_free(self._embed_ctx)
            lib.llama_free(self._ctx)
            lib.llama_model_free(self._model)
