"""GGUF models on llama.cpp through llama-cpp-python's low-level bindings.

Why low-level: the high-level ``Llama`` class copies the logits of every token into numpy and
samples in Python (a 262k vocabulary costs ~40% of decode speed on a small model). Here the C
sampler chain samples straight from the context, so per token Python only decodes one token and
appends one piece of text.

The context holds ``plan.n_parallel`` sequences (``Slot``); each keeps the tokens in its part of
the KV cache and its own sampler, so a prompt that extends them evaluates only what is new (prefix
reuse), and a scheduler can later step several slots in one ``llama_decode`` (continuous batching).
"""

from __future__ import annotations

import codecs
import ctypes
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import ContextLengthExceeded, CorruptModel, EngineError, ImpetusError
from impetus_cli.runtime.engines.llama_native import RECENT_ERRORS, Sampler, llama_said, load_lib
from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    ToolSpec,
)

# KV cache type names -> ggml_type, and their bytes per element (blocks of 32 for q*_0).
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32}
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}


@dataclass
class Slot:
    """One sequence of the context: its id, the tokens its KV cache holds, and the sampler of
    the request running on it (None when idle)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    sampler: Sampler | None = None
    last_used: float = 0.0


def effective_kv_type(plan: LoadPlan, info: ModelInfo) -> str:
    """The plan's KV cache type, or f16 when llama.cpp cannot use it for this model: quantized
    blocks of 32 must divide the head size."""
    kv_type = plan.kv_type if plan.kv_type in KV_TYPES else "f16"
    return "f16" if kv_type.startswith("q") and info.head_dim % 32 else kv_type


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
        self._n_batch = max(1, min(plan.n_batch, lib.llama_n_batch(ctx)))
        self._batch = lib.llama_batch_init(self._n_batch, 0, 1)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._slots = [Slot(i) for i in range(max(1, plan.n_parallel))]
        self._lock = threading.Lock()  # one generation at a time on the context, for now
        self._embed_lock = threading.Lock()
        self._embed_ctx: Any = None
        self._closed = False
        self.last_cached_tokens = 0  # counters the tests and metrics read
        self.last_evaluated_tokens = 0

    @classmethod
    def load(cls, plan: LoadPlan, info: ModelInfo) -> LlamaEngine:
        lib = load_lib()
        if not info.path.is_file():
            raise CorruptModel(f"{info.path} does not exist.", "Pull the model again.")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = plan.n_gpu_layers
        RECENT_ERRORS.clear()
        model = lib.llama_model_load_from_file(str(info.path).encode(), mparams)
        if not model:
            raise CorruptModel(
                f"llama.cpp could not load {info.path.name}.{llama_said()}",
                "The file may be damaged or from a newer llama.cpp: pull it again, or upgrade.",
            )
        params = cls._context_params(lib, plan, info, embeddings=False)
        ctx = lib.llama_init_from_model(model, params)
        if not ctx:
            lib.llama_model_free(model)
            raise EngineError(
                f"llama.cpp could not create a {plan.n_ctx}-token context for "
                f"{info.path.name}.{llama_said()}",
                "Try a smaller --ctx or --memory-budget.",
            )
        return cls(plan, info, lib, model, ctx)

    @staticmethod
    def _context_params(lib: Any, plan: LoadPlan, info: ModelInfo, *, embeddings: bool) -> Any:
        params = lib.llama_context_default_params()
        if embeddings:
            # A whole input must fit in one micro-batch for pooling.
            params.n_ctx = params.n_batch = params.n_ubatch = min(plan.n_ctx, 4096)
            params.n_seq_max = 1
        else:
            # plan.n_ctx is per sequence; the context holds n_parallel of them.
            params.n_ctx = plan.n_ctx * max(1, plan.n_parallel)
            params.n_batch, params.n_ubatch = plan.n_batch, min(plan.n_ubatch, plan.n_batch)
            params.n_seq_max = max(1, plan.n_parallel)
        params.n_threads = plan.n_threads
        params.n_threads_batch = plan.n_threads_batch
        params.flash_attn_type = 1 if plan.flash_attn else 0
        kv_type = KV_TYPES[effective_kv_type(plan, info)]
        params.type_k = kv_type
        # A quantized V cache needs flash attention; without it V stays f16.
        params.type_v = kv_type if plan.flash_attn else 1
        params.embeddings = embeddings
        # The small sliding-window cache (Gemma 2/3): prefill attends over the window only.
        # _reuse_prefix checks that the window a kept prefix needs is still cached.
        params.swa_full = False
        # One KV buffer shared by all sequences: with a split cache, flash attention on the CPU
        # slowed decode ~30x here with 4 sequences (2.6 vs 90 tok/s on Gemma 3 270M).
        params.kv_unified = True
        params.no_perf = True
        return params

    @property
    def n_ctx(self) -> int:
        return int(self._lib.llama_n_ctx(self._ctx)) // len(self._slots)

    @property
    def memory_bytes(self) -> int:
        """Weights as llama.cpp holds them + the KV cache it allocated + planned buffers."""
        per_token = self.info.kv_bytes_per_token(
            KV_BYTES.get(effective_kv_type(self.plan, self.info), 2.0)
        )
        cells = int(self._lib.llama_n_ctx(self._ctx))
        if self._embed_ctx is not None:
            cells += int(self._lib.llama_n_ctx(self._embed_ctx))
        return (
            int(self._lib.llama_model_size(self._model))
            + per_token * cells
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

    def _piece(self, token: int) -> bytes:
        buf = self._piece_buf
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, big, -n, 0, False)
            return big.raw[:n]
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
        if len(tokens) > self.n_ctx:
            raise ContextLengthExceeded(self.n_ctx, len(tokens))
        with self._lock:
            # The slot sharing the longest prefix; among equals the least recently used.
            slot = max(self._slots, key=lambda s: (common_prefix(s.tokens, tokens), -s.last_used))
            slot.last_used = time.monotonic()
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
        slot.sampler = Sampler(self._lib, self._vocab, self._n_vocab, sampling, tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(sampling.stop)
        room = self.n_ctx - len(tokens)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        is_eog, ctx, vocab = self._lib.llama_vocab_is_eog, self._ctx, self._vocab
        generated, finish, first_at, pending = 0, "length", 0.0, []
        try:
            while generated < limit:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                token = slot.sampler.sample(ctx)
                first_at = first_at or time.perf_counter()
                if is_eog(vocab, token) and not sampling.ignore_eos:
                    finish = "stop"
                    break
                generated += 1
                pending.append(token)
                text, stopped = stops.feed(decoder.decode(self._piece(token)))
                if text:
                    yield GenerationChunk(text=text, token_ids=tuple(pending))
                    pending = []
                if stopped:
                    finish = "stop"
                    break
                if generated < limit:
                    self._step(slot, token)
        finally:
            slot.sampler.free()
            slot.sampler = None
        # Text held back as a possible stop-string start is emitted unless a stop string hit.
        tail = stops.flush() + decoder.decode(b"", final=True)
        end = time.perf_counter()
        decode_s = end - (first_at or end)
        yield GenerationChunk(
            text=tail if not stops.stopped else "",
            token_ids=tuple(pending),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            completion_tokens=generated,
            prompt_tps=evaluated / (prompt_done - start) if prompt_done > start else 0.0,
            generation_tps=(generated - 1) / decode_s if decode_s > 0 and generated > 1 else 0.0,
            ttft_s=(first_at or end) - start,
        )

    def _reuse_prefix(self, slot: Slot, tokens: list[int]) -> int:
        """Keep the longest cached prefix (at least one token is always evaluated, for logits)."""
        keep = min(common_prefix(slot.tokens, tokens), len(tokens) - 1)
        lib = self._lib
        if (
            keep
            and self._window_kept(slot, keep)
            and lib.llama_memory_seq_rm(self._mem, slot.seq_id, keep, -1)
        ):
            del slot.tokens[keep:]
            return keep
        lib.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        slot.tokens.clear()
        return 0

    def _window_kept(self, slot: Slot, keep: int) -> bool:
        """Sliding-window layers drop positions older than their window; a prefix ending at
        ``keep`` is reusable only if the window before it is still cached (as llama-server
        checks), else the prompt is evaluated from the start."""
        n_swa = int(self._lib.llama_model_n_swa(self._model))
        if n_swa <= 0:
            return True
        oldest = int(self._lib.llama_memory_seq_pos_min(self._mem, slot.seq_id))
        return oldest <= max(0, keep - n_swa)

    def _evaluate(self, slot: Slot, new: Sequence[int]) -> None:
        """Decode ``new`` after the slot's tokens, in n_batch chunks; logits for the last only."""
        batch, step = self._batch, self._n_batch
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
            self._decode()
            slot.tokens.extend(chunk)

    def _step(self, slot: Slot, token: int) -> None:
        """One sampled token back into the context: the per-token hot path, kept minimal."""
        batch = self._batch
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0] = token, len(slot.tokens), 1
        batch.seq_id[0][0], batch.logits[0] = slot.seq_id, 1
        self._decode()
        slot.tokens.append(token)

    def _decode(self) -> None:
        code = self._lib.llama_decode(self._ctx, self._batch)
        if code != 0:
            raise EngineError(
                f"llama_decode failed with code {code}.{llama_said()}",
                "The context may be full: start a new conversation or load a larger --ctx.",
            )

    # -- embeddings ---------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Pooled, L2-normalised vectors; inputs longer than the embedding context are cut."""
        lib = self._lib
        with self._embed_lock:
            ctx = self._embedding_context()
            n_embd, limit = lib.llama_model_n_embd(self._model), lib.llama_n_ctx(ctx)
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
                        raise EngineError(f"llama_decode failed while embedding.{llama_said()}")
                    raw = lib.llama_get_embeddings_seq(ctx, 0)
                    vec = raw[:n_embd]
                    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
                    vectors.append([x / norm for x in vec])
            finally:
                lib.llama_batch_free(batch)
            return vectors

    def _embedding_context(self) -> Any:
        """Created on first use: the model's own pooling (embedding models), else mean."""
        if self._embed_ctx is None:
            lib = self._lib
            params = self._context_params(lib, self.plan, self.info, embeddings=True)
            params.pooling_type = self._model_pooling()
            self._embed_ctx = lib.llama_init_from_model(self._model, params)
            if not self._embed_ctx:
                raise EngineError(f"llama.cpp could not create an embedding context.{llama_said()}")
        return self._embed_ctx

    def _model_pooling(self) -> int:
        buf = ctypes.create_string_buffer(32)
        key = f"{self.info.architecture}.pooling_type".encode()
        if self._lib.llama_model_meta_val_str(self._model, key, buf, len(buf)) > 0:
            value = int(buf.value or b"0")
            if value in (POOLING["mean"], POOLING["cls"], POOLING["last"]):
                return value
        return POOLING["mean"]  # decoder models have none; mean works for any of them

    def close(self) -> None:
        with self._lock, self._embed_lock:
            if self._closed:
                return
            self._closed = True
            lib = self._lib
            lib.llama_batch_free(self._batch)
            if self._embed_ctx is not None:
                lib.llama_free(self._embed_ctx)
            lib.llama_free(self._ctx)
            lib.llama_model_free(self._model)
