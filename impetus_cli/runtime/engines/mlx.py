"""MLX and safetensors models on mlx-lm (Metal on a Mac, the CPU through mlx[cpu] on Linux).

Prompt caches and the tokens they hold survive between requests, one per recent conversation
(mlx_pool.py), so a follow-up evaluates only its new tokens. Requests run batched on mlx-lm's
BatchGenerator (mlx_batch.py), or, when the KV cache is quantized (BatchGenerator has no
quantized batch cache), one at a time under a lock on mlx-lm's ``generate_step`` (here). Both
turn sampled tokens into chunks the same way (mlx_stream.py).

Not available on MLX: grammar / JSON-schema constrained output (refused with a 400).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from impetus_cli.errors import BackendUnavailable, CorruptModel, EngineError, ImpetusError
from impetus_cli.runtime.engines.common import Health
from impetus_cli.runtime.engines.mlx_batch import Batcher, Job
from impetus_cli.runtime.engines.mlx_pool import PromptPool, disk_key
from impetus_cli.runtime.engines.mlx_stream import MlxModel, Reply, seed_from
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

log = logging.getLogger("impetus.mlx")

# Quantized KV cache: the group size along the head dimension (mx.quantize accepts 32/64/128).
KV_GROUP = 32
# Fill-in-the-middle tokens as model families spell them (prefix, suffix, middle), the first
# family whose three tokens the vocabulary has wins (llama.cpp looks them up the same way).
FIM_SPELLINGS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, ChatML families
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder
    ("<|code_prefix|>", "<|code_suffix|>", "<|code_middle|>"),  # GLM-4
    ("<PRE>", "<SUF>", "<MID>"),  # CodeLlama
)


class MlxEngine:
    """Engine protocol (engines/base.py) on one mlx-lm model."""

    def __init__(self, plan: LoadPlan, info: ModelInfo, model: Any, tokenizer: Any):
        self.plan, self.info = plan, info
        self._model, self._tokenizer = model, tokenizer
        self._lock = threading.Lock()  # the model: the serial path, embeddings, batched steps
        self._weights_bytes = _weights_bytes(model)
        self._health = Health()
        self.kv_bits = _kv_bits(plan.kv_type, info.head_dim, model)
        self._pool = PromptPool(model, plan.n_parallel, plan.cache_ram_bytes, self._disk_tier())
        self._mlx = MlxModel(
            model,
            self._lock,
            self._pool,
            frozenset(getattr(tokenizer, "eos_token_ids", None) or ()),
            self.detokenize,
            plan.n_parallel,
        )
        # BatchGenerator has no quantized batch cache: a quantized KV cache runs serially.
        self.batched = self.kv_bits is None
        self._batcher = Batcher(self._mlx, self._health) if self.batched else None

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
        return self._weights_bytes + self._pool.nbytes

    @property
    def failure(self) -> str | None:
        """The last generation failure (message and time) until a later request completes."""
        return self._health.failure

    @property
    def last_cached_tokens(self) -> int:
        """Prompt tokens the last request reused from a prompt cache (the tests read it)."""
        return self._pool.last_cached

    @property
    def last_evaluated_tokens(self) -> int:
        return self._pool.last_evaluated

    @property
    def cache_tiers(self) -> tuple[TierStats, ...]:
        """The prompt caches past the planned ones (RAM) and on disk: what each holds, hits."""
        return self._pool.tiers

    def _disk_tier(self) -> DiskTier | None:
        """The prompt cache's disk tier (mlx_pool.py), as the plan sizes it."""
        plan = self.plan
        if plan.prompt_cache_dir is None or plan.cache_disk_bytes <= 0:
            return None
        template = self.chat_template or ""
        try:
            key = disk_key(self.info.path, template, self.kv_bits)
            return DiskTier(plan.prompt_cache_dir, key, plan.cache_disk_bytes)
        except OSError as exc:  # an unwritable home: no disk tier, the server still runs
            log.warning("prompt cache on disk disabled: %s", exc)
            return None

    @property
    def special_text(self) -> SpecialText:
        tok = self._tokenizer
        vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
        fim = next((f for f in FIM_SPELLINGS if all(t in vocab for t in f)), ("", "", ""))
        return SpecialText(
            bos=getattr(tok, "bos_token", None) or "",
            eos=getattr(tok, "eos_token", None) or "",
            fim_prefix=fim[0],
            fim_suffix=fim[1],
            fim_middle=fim[2],
        )

    @property
    def saves_instructions(self) -> bool:
        return False  # see generate

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's template, else the one in the model's files (None: neither)."""
        return getattr(self._tokenizer, "chat_template", None) or self.info.chat_template

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
        """Checks run now (so the server can answer 4xx before streaming); the request starts
        when the stream is first read: it joins the batch, or takes the engine's lock and
        holds it until it ends. ``instructions`` is not used yet: the pool (mlx_pool.py) trims
        a cached conversation back to a shared prefix, which a sliding-window model's rotating
        caches refuse past their window."""
        if sampling.grammar:
            raise ImpetusError(
                "Constrained output (grammar, JSON schema, response_format) is not available "
                "for MLX models.",
                "Use a GGUF build of the model for constrained output, or drop response_format.",
                param="response_format",
            )
        if not tokens:
            raise ImpetusError("The prompt is empty.", param="messages")
        limit = reply_budget(self.n_ctx, len(tokens), sampling.max_tokens)
        cancel = cancel or threading.Event()
        if self._batcher is not None:
            return self._batcher.stream(Job(list(tokens), sampling, cancel, limit))
        return self._serial(list(tokens), sampling, cancel, limit)

    def _serial(
        self, tokens: list[int], sampling: SamplingParams, cancel: threading.Event, limit: int
    ) -> Iterator[GenerationChunk]:
        with self._lock:
            start = time.perf_counter()
            entry, cached = self._pool.take(tokens)
            reply = Reply(self._mlx, tokens, cached, sampling, cancel, start=start)
            steps: Any = None
            failed = False
            try:
                steps = self._steps(reply, entry.cache, limit)
                for token_array, logprobs in steps:
                    chunk, ended = reply.add(int(token_array), logprobs)
                    if chunk is not None:
                        yield chunk
                    if ended:
                        break
            except Exception as exc:
                failed = True
                self._pool.discard(entry)  # what the cache holds is unknown
                self._health.failed(f"MLX generation failed ({type(exc).__name__}: {exc}).")
                raise EngineError(f"MLX generation failed: {exc}") from exc
            finally:  # also when the reader stops early: the cache keeps what was fed
                if steps is not None:
                    steps.close()
                if not failed:
                    self._pool.give_back(entry, entry.cache, reply.sequence)
        if reply.finish != "cancelled":
            self._health.recovered()
        yield reply.final()

    def _steps(self, reply: Reply, cache: Any, limit: int) -> Any:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        seed_from(reply.sampling)
        sampler, processors = reply.sampling_functions(reply.tokens[: reply.cached])
        return generate_step(
            mx.array(reply.tokens[reply.cached :]),
            self._model,
            max_tokens=limit,
            sampler=sampler,
            logits_processors=processors or None,
            prompt_cache=cache,
            kv_bits=self.kv_bits,
            kv_group_size=KV_GROUP,
            quantized_kv_start=0,  # the planner counted quantized bytes for the whole context
        )

    def clear_cache(self) -> None:
        """Forget the prompt caches (the next request is evaluated cold)."""
        self._pool.clear()

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
        try:
            self._pool.save()
        except OSError as exc:  # a full disk must not stop an unload
            log.warning("could not save the prompt cache: %s", exc)
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
