"""GGUF models on llama.cpp through llama-cpp-python's low-level bindings.

Why low-level: the high-level ``Llama`` class copies the logits of every token into numpy and
samples in Python (on a small model with a large vocabulary, a large share of decode time; see
BENCHMARKS.md's engine table). Here the C
sampler chain samples straight from the context, so per token Python only decodes one token and
appends one piece of text.

The context holds ``plan.n_parallel`` sequences; llama_batch.py's scheduler steps all of them in
one ``llama_decode`` per token (continuous batching), and llama_slots.py keeps each one's cached
prefix for reuse. This file loads the model and context, tokenizes and renders, and computes
embeddings.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from impetus_cli.errors import CorruptModel, EngineError, ImpetusError
from impetus_cli.runtime.engines.common import Health
from impetus_cli.runtime.engines.llama_batch import Request, Scheduler
from impetus_cli.runtime.engines.llama_cache import Identity, PromptCache
from impetus_cli.runtime.engines.llama_draft import make_drafter
from impetus_cli.runtime.engines.llama_native import (
    RECENT_ERRORS,
    LlamaContext,
    extra_buffers_allowed,
    llama_said,
    load_lib,
)
from impetus_cli.runtime.engines.llama_rpc import apply_placement
from impetus_cli.runtime.engines.llama_slots import Slots
from impetus_cli.runtime.engines.prompt_tiers import DiskTier, TierStats
from impetus_cli.runtime.limits import reply_budget
from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    SpecialText,
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
        vocab = lib.llama_model_get_vocab(model)
        self._llama = LlamaContext(
            lib,
            ctx,
            lib.llama_get_memory(ctx),
            vocab,
            int(lib.llama_vocab_n_tokens(vocab)),
            int(lib.llama_model_n_swa(model)),
        )
        self._n_slots = max(1, plan.n_parallel)
        self._embed_lock = threading.Lock()
        self._embed_ctx: Any = None
        self._closed = False
        self._health = Health()
        self._cache = self._prompt_cache(plan, info)
        self._slots = Slots(self._llama, self._n_slots, self._cache, plan.snapshot_bytes)
        n_batch = max(1, min(plan.n_batch, lib.llama_n_batch(ctx)))
        drafter = make_drafter(plan, info, lib, self._llama.vocab)  # speculative decoding
        self._scheduler = Scheduler(self._llama, self._slots, n_batch, self._health, drafter)

    def _prompt_cache(self, plan: LoadPlan, info: ModelInfo) -> PromptCache | None:
        """The RAM and disk tiers behind the KV cache (llama_cache.py), as the plan sizes them."""
        disk = None
        if plan.prompt_cache_dir is not None and plan.cache_disk_bytes > 0:
            from impetus_cli.runtime.templating_builtin import BUILTIN, template_for

            template = (
                self.chat_template
                or BUILTIN[template_for(info.architecture, self.special_text.bos)]
            )
            kv_type = effective_kv_type(plan, info)
            n_swa = self._llama.n_swa
            identity = Identity.of(info, template, kv_type, plan.flash_attn, n_swa)
            try:
                disk = DiskTier(plan.prompt_cache_dir, identity.key(), plan.cache_disk_bytes)
            except OSError as exc:  # an unwritable home: no disk tier, the server still runs
                log.warning("prompt cache on disk disabled: %s", exc)
        if disk is None and plan.cache_ram_bytes <= 0:
            return None
        trimmable = info.recurrent_layers == 0
        return PromptCache(self._llama, plan.cache_ram_bytes, disk, trimmable=trimmable)

    @classmethod
    def load(cls, plan: LoadPlan, info: ModelInfo) -> LlamaEngine:
        lib = load_lib()
        if not info.path.is_file():
            raise CorruptModel(f"{info.path} does not exist.", "Pull the model again.")
        mparams = cls._model_params(lib, plan)
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
    def _model_params(lib: Any, plan: LoadPlan) -> Any:
        params = lib.llama_model_default_params()
        params.n_gpu_layers = plan.n_gpu_layers
        params.use_extra_bufts = extra_buffers_allowed(lib)
        return params

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
        # made decode with several sequences many times slower (measured when this was chosen).
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
    def failure(self) -> str | None:
        """The decode loop's last failure (message and time) until a later request completes."""
        return self._health.failure

    @property
    def saves_instructions(self) -> bool:
        """Only a model that cannot share a prefix in place snapshots one (llama_slots.py)."""
        return self._slots.snapshots is not None

    @property
    def last_cached_tokens(self) -> int:
        """Prompt tokens the last request admitted reused from a cache (the tests read it)."""
        return self._scheduler.last_cached_tokens

    @property
    def last_evaluated_tokens(self) -> int:
        return self._scheduler.last_evaluated_tokens

    @property
    def cache_tiers(self) -> tuple[TierStats, ...]:
        """The prompt cache's tiers behind the KV cache: what each holds, and its hits."""
        return self._cache.tiers if self._cache is not None else ()

    @property
    def special_text(self) -> SpecialText:
        lib, vocab, text = self._lib, self._llama.vocab, self._llama.text
        return SpecialText(
            bos=text(lib.llama_vocab_bos(vocab)),
            eos=text(lib.llama_vocab_eos(vocab)),
            fim_prefix=text(lib.llama_vocab_fim_pre(vocab)),
            fim_suffix=text(lib.llama_vocab_fim_suf(vocab)),
            fim_middle=text(lib.llama_vocab_fim_mid(vocab)),
        )

    @property
    def chat_template(self) -> str | None:
        """The template in the GGUF's metadata (None: the caller picks a fallback)."""
        return self.info.chat_template

    # Kept for compatibility until their callers (the manager's FIM prompt) use special_text.
    @property
    def special_tokens(self) -> dict[str, int]:
        lib, v = self._lib, self._llama.vocab
        return {
            "bos": lib.llama_vocab_bos(v),
            "eos": lib.llama_vocab_eos(v),
            "fim_pre": lib.llama_vocab_fim_pre(v),
            "fim_suf": lib.llama_vocab_fim_suf(v),
            "fim_mid": lib.llama_vocab_fim_mid(v),
        }

    def token_text(self, token: int) -> str:
        """Kept for compatibility (see special_tokens): a token's text, "" for none."""
        return self._llama.text(token)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """``special`` both parses control tokens in the text and adds BOS when the model wants
        one, unless the text already starts with it (templates often write it themselves)."""
        lib, vocab = self._lib, self._llama.vocab
        data = text.encode("utf-8")
        bos = self._llama.text(lib.llama_vocab_bos(vocab))
        add_bos = special and not (bos and text.startswith(bos))
        cap = len(data) + 16
        buf = (ctypes.c_int32 * cap)()
        n = lib.llama_tokenize(vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            buf = (ctypes.c_int32 * -n)()
            n = lib.llama_tokenize(vocab, data, len(data), buf, -n, add_bos, special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """One token's text as bytes (for logprobs: byte tokens are pieces of a character)."""
        return self._llama.piece(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._llama.piece(t) for t in tokens).decode("utf-8", "replace")

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """Kept for compatibility until the manager renders with ``chat_template`` and
        ``special_text`` itself."""
        from impetus_cli.runtime import templates

        specials = self.special_text
        return templates.render_chat(
            messages,
            tools,
            template=self.chat_template,
            architecture=self.info.architecture,
            bos_token=specials.bos,
            eos_token=specials.eos,
        )

    # -- generation -------------------------------------------------------------------------

    def generate(
        self,
        tokens: Sequence[int],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        instructions: int = 0,
    ) -> Iterator[GenerationChunk]:
        """Checks run now (the server answers 4xx before streaming); the request joins the
        scheduler (llama_batch.py) when the stream is first read. Cancelling, or closing the
        stream, stops it at the next decode step (see base.relay)."""
        if not tokens:
            raise ImpetusError("The prompt is empty.", param="messages")
        limit = reply_budget(self.n_ctx, len(tokens), sampling.max_tokens)
        request = Request(list(tokens), sampling, cancel or threading.Event(), limit)
        request.instructions = instructions
        request.preserved = self._llama.token_ids(sampling.preserve)
        return self._scheduler.stream(request)

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
                    tokens = self.tokenize(text)[:limit] or [lib.llama_vocab_bos(self._llama.vocab)]
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
            try:
                self._slots.save()
            except OSError as exc:  # a full disk must not stop an unload
                log.warning("could not save the prompt cache: %s", exc)
            if self._embed_ctx is not None:
                lib.llama_free(self._embed_ctx)
            lib.llama_free(self._ctx)
            lib.llama_model_free(self._model)
