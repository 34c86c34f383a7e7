"""MLX and safetensors models on mlx-lm (Metal on a Mac, the CPU through mlx[cpu] on Linux).

Generation drives mlx-lm's ``generate_step`` with its sampler and logits processors; the prompt
cache and the tokens it holds survive between requests, so a prompt that extends the previous
conversation is trimmed to the common prefix and only the rest is evaluated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from impetus_cli.errors import CorruptModel, EngineError, ImpetusError
from impetus_cli.runtime.engines.llama import common_prefix
from impetus_cli.runtime.types import (
    ChatMessage,
    GenerationChunk,
    LoadPlan,
    ModelInfo,
    SamplingParams,
    ToolSpec,
)


class MlxEngine:
    """Engine protocol (engines/base.py) on one mlx-lm model."""

    def __init__(self, plan: LoadPlan, info: ModelInfo, model: Any, tokenizer: Any):
        self.plan, self.info = plan, info
        self._model, self._tokenizer = model, tokenizer
        self._lock = threading.Lock()
        self._cache: Any = None
        self._cached: list[int] = []  # the tokens the prompt cache holds
        self.last_cached_tokens = 0
        self.last_evaluated_tokens = 0

    @classmethod
    def load(cls, plan: LoadPlan, info: ModelInfo) -> MlxEngine:
        try:
            import mlx_lm
        except ImportError as exc:
            from impetus_cli.errors import BackendUnavailable

            raise BackendUnavailable(
                "mlx-lm is not installed.", "pip install mlx-lm (and mlx[cpu] on Linux)."
            ) from exc
        try:
            loaded: Any = mlx_lm.load(str(info.path))
            model, tokenizer = loaded[0], loaded[1]
        except (ValueError, OSError, KeyError) as exc:
            raise CorruptModel(
                f"mlx-lm could not load {info.path}: {exc}",
                "The directory may be incomplete: pull it again.",
            ) from exc
        return cls(plan, info, model, tokenizer)

    @property
    def n_ctx(self) -> int:
        return self.plan.n_ctx

    @property
    def memory_bytes(self) -> int:
        from mlx.utils import tree_flatten

        flat: Any = tree_flatten(self._model.parameters())
        weights = sum(v.nbytes for _, v in flat)
        return int(weights) + self.plan.kv_bytes

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        bos = getattr(self._tokenizer, "bos_token", None)
        add = special and not (bos and text.startswith(bos))
        return list(self._tokenizer.encode(text, add_special_tokens=add))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(tokens)))

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

    def generate(
        self, tokens: Sequence[int], sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> Iterator[GenerationChunk]:
        if sampling.grammar:
            raise ImpetusError(
                "Constrained output (response_format) is not available for MLX models.",
                "Use a GGUF build of the model for JSON mode, or drop response_format.",
                param="response_format",
            )
        if not tokens:
            raise ImpetusError("The prompt is empty.", param="messages")
        with self._lock:
            yield from self._run(list(tokens), sampling, cancel or threading.Event())

    def _prepare_cache(self, tokens: list[int]) -> int:
        """Trim the prompt cache to the longest common prefix; return how many tokens it keeps."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        keep = min(common_prefix(self._cached, tokens), len(tokens) - 1)
        if self._cache is not None and keep and can_trim_prompt_cache(self._cache):
            trim_prompt_cache(self._cache, len(self._cached) - keep)
            self._cached = self._cached[:keep]
            return keep
        self._cache = make_prompt_cache(self._model)
        self._cached = []
        return 0

    def _processors(self, s: SamplingParams) -> tuple[Any, Any]:
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        sampler = make_sampler(
            temp=max(s.temperature, 0.0),
            top_p=s.top_p if s.temperature > 0 else 0.0,
            min_p=s.min_p if s.temperature > 0 else 0.0,
            top_k=s.top_k if s.temperature > 0 else 0,
        )
        processors = make_logits_processors(
            logit_bias=dict(s.logit_bias) if s.logit_bias else None,
            repetition_penalty=s.repeat_penalty if s.repeat_penalty != 1.0 else None,
            presence_penalty=s.presence_penalty or None,
            frequency_penalty=s.frequency_penalty or None,
        )
        return sampler, processors

    def _run(
        self, tokens: list[int], sampling: SamplingParams, cancel: threading.Event
    ) -> Iterator[GenerationChunk]:
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        from impetus_cli.runtime.templates import StopMatcher

        if sampling.seed is not None:
            mx.random.seed(sampling.seed)
        start = time.perf_counter()
        cached = self._prepare_cache(tokens)
        self.last_cached_tokens, self.last_evaluated_tokens = cached, len(tokens) - cached
        sampler, processors = self._processors(sampling)
        room = self.n_ctx - len(tokens)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        eos = set(getattr(self._tokenizer, "eos_token_ids", None) or [])
        detok = self._tokenizer.detokenizer
        detok.reset()
        stops = StopMatcher(sampling.stop)
        generated: list[int] = []
        finish, first_at = "length", 0.0
        steps = generate_step(
            mx.array(tokens[cached:]),
            self._model,
            max_tokens=limit,
            sampler=sampler,
            logits_processors=processors,
            prompt_cache=self._cache,
        )
        try:
            for token_array, _ in steps:
                token = int(token_array)
                first_at = first_at or time.perf_counter()
                if cancel.is_set():
                    finish = "cancelled"
                    break
                if token in eos and not sampling.ignore_eos:
                    finish = "stop"
                    break
                generated.append(token)
                detok.add_token(token)
                text, stopped = stops.feed(detok.last_segment)
                if text:
                    yield GenerationChunk(text=text, token_ids=(token,))
                if stopped:
                    finish = "stop"
                    break
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"MLX generation failed: {exc}") from exc
        finally:
            steps.close()
            self._remember(tokens + generated)
        detok.finalize()
        tail = (stops.flush() + detok.last_segment) if finish != "stop" else ""
        end = time.perf_counter()
        decode_s = end - (first_at or end)
        prompt_s = (first_at or end) - start
        yield GenerationChunk(
            text=tail,
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            completion_tokens=len(generated),
            prompt_tps=(len(tokens) - cached) / prompt_s if prompt_s > 0 else 0.0,
            generation_tps=len(generated) / decode_s if decode_s > 0 else 0.0,
            ttft_s=prompt_s,
        )

    def _remember(self, sequence: list[int]) -> None:
        """What the cache now holds: as many tokens of the sequence as its offset says."""
        offset = (
            min((getattr(c, "offset", 0) for c in self._cache), default=0) if self._cache else 0
        )
        self._cached = sequence[: int(offset)]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Mean of the last hidden states, normalised (the body of the model, without its head)."""
        import mlx.core as mx

        body = getattr(self._model, "model", None)
        if body is None:
            raise ImpetusError(
                f"{self.plan.model.name} does not expose hidden states for embeddings.",
                param="model",
            )
        vectors = []
        with self._lock:
            for text in texts:
                ids = self.tokenize(text)[: self.n_ctx] or [0]
                hidden = body(mx.array([ids]))
                mean = mx.mean(hidden[0], axis=0)
                norm = mx.sqrt(mx.sum(mean * mean)) + 1e-12
                values: Any = (mean / norm).tolist()
                vectors.append([float(x) for x in values])
        return vectors

    def close(self) -> None:
        with self._lock:
            self._cache = None
            self._cached = []
