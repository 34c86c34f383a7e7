"""GGUF models on llama.cpp through llama-cpp-python's low-level bindings.

Why low-level: the high-level ``Llama`` class copies the logits of every token into numpy and
samples in Python (a 262k vocabulary costs ~40% of decode speed on a small model). Here the C
sampler chain samples straight from the context, so per token Python only decodes one token and
appends one piece of text.

The context holds ``plan.n_parallel`` sequences; llama_batch.py's scheduler steps all of them in
one ``llama_decode`` per token (continuous batching) and keeps each one's cached prefix for reuse.
This file loads the model and context, tokenizes and renders, and computes embeddings.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from impetus_cli.errors import ContextLengthExceeded, CorruptModel, EngineError, ImpetusError
from impetus_cli.runtime.engines.base import relay
from impetus_cli.runtime.engines.llama_batch import Request, Scheduler
from impetus_cli.runtime.engines.llama_cache import DiskCache
from impetus_cli.runtime.engines.llama_native import RECENT_ERRORS, llama_said, load_lib
from impetus_cli.runtime.engines.llama_rpc import apply_placement
from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    ToolSpec,
)

log = logging.getLogger("impetus.llama")

# KV cache type names -> ggml_type, and their bytes per element (blocks of 32 for q*_0).
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32}
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}


def effective_kv_type(plan: LoadPlan, info: ModelInfo) -> str:
    """The plan's KV cache type, or f16 when llama.cpp cannot use it for this model: quantized
    blocks of 32 must divide the head size."""
    kv_type = plan.kv_type if plan.kv_type in KV_TYPES else "f16"
    return "f16" if kv_type.startswith("q") and info.head_dim % 32 else kv_type


class LlamaEngine:
    """Engine protocol (engines/base.py) on one llama.cpp model and context."""

    def __init__(self, plan: LoadPlan, info: ModelInfo, lib: Any, model: Any, ctx: Any):
        self.plan, self.info = plan, info
        self._lib, self._model, self._ctx = lib, model, ctx
        self._vocab = lib.llama_model_get_vocab(model)
        self._mem = lib.llama_get_memory(ctx)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._n_slots = max(1, plan.n_parallel)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._embed_lock = threading.Lock()
        self._embed_ctx: Any = None
        self._closed = False
        self.last_cached_tokens = 0  # of the last request admitted: the tests read them
        self.last_evaluated_tokens = 0
        n_batch = max(1, min(plan.n_batch, lib.llama_n_batch(ctx)))
        self._disk: DiskCache | None = None
        if plan.prompt_cache_dir is not None:
            n_swa = int(lib.llama_model_n_swa(model))
            kv_type = effective_kv_type(plan, info)
            self._disk = DiskCache(plan.prompt_cache_dir, info, kv_type, n_swa)
        self._scheduler = Scheduler(
            self, self._n_slots, n_batch, self._disk, snapshot_bytes=plan.snapshot_bytes
        )

    @classmethod
    def load(cls, plan: LoadPlan, info: ModelInfo) -> LlamaEngine:
        lib = load_lib()
        if not info.path.is_file():
            raise CorruptModel(f"{info.path} does not exist.", "Pull the model again.")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = plan.n_gpu_layers
        _split = apply_placement(lib, mparams, plan)  # RPC workers' layers (engines/llama_rpc.py)
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
        return int(self._lib.llama_n_ctx(self._ctx)) // self._n_slots

    @property
    def memory_bytes(self) -> int:
        """Weights as llama.cpp holds them + the KV cache it allocated + planned buffers."""
        element = KV_BYTES.get(effective_kv_type(self.plan, self.info), 2.0)
        kv = self.info.kv_cache_bytes(self.n_ctx, self._n_slots, element, self.plan.n_ubatch)
        if self._embed_ctx is not None:
            kv += self.info.kv_cache_bytes(int(self._lib.llama_n_ctx(self._embed_ctx)), 1, 2.0)
        return int(self._lib.llama_model_size(self._model)) + kv + self.plan.compute_bytes

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

    def token_bytes(self, token: int) -> bytes:
        """One token's text as bytes (for logprobs: byte tokens are pieces of a character)."""
        return self._piece(token)

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
        """Checks run now (the server answers 4xx before streaming); the request joins the
        scheduler (llama_batch.py) when the stream is first read. Cancelling, or closing the
        stream, stops it at the next decode step (see base.relay)."""
        if not tokens:
            raise ImpetusError("The prompt is empty.", param="messages")
        if len(tokens) > self.n_ctx:
            raise ContextLengthExceeded(self.n_ctx, len(tokens))
        room = self.n_ctx - len(tokens)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        return self._stream(Request(list(tokens), sampling, cancel or threading.Event(), limit))

    def _stream(self, request: Request) -> Iterator[GenerationChunk]:
        self._scheduler.submit(request)
        yield from relay(request.out, request.cancel, request.abandon)

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
        with self._embed_lock:
            if self._closed:
                return
            self._closed = True
            self._scheduler.close()
            lib = self._lib
            if self._disk is not None:
                self._scheduler.unpark_all()
                try:
                    self._disk.save(lib, self._ctx, self._mem, self._scheduler.slots)
                except OSError as exc:  # a full disk must not stop an unload
                    log.warning("could not save the prompt cache: %s", exc)
            if self._embed_ctx is not None:
                lib.llama_free(self._embed_ctx)
            lib.llama_free(self._ctx)
            lib.llama_model_free(self._model)
