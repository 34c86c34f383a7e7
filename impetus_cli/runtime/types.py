"""Values shared by every layer: frozen dataclasses, no behaviour beyond small derivations.

A leaf module: it imports only the standard library. The engine emits ``GenerationChunk``; the
server, ``impetus chat``, ``impetus bench`` and the dashboard all read that one record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Format = Literal["gguf", "mlx", "safetensors"]
Origin = Literal["impetus", "imported", "builtin", "hf-cache", "ollama", "lmstudio", "path"]
Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference, before it is resolved against the store or the catalog.

    kind "catalog": ``name[:tag]`` (``qwen2.5-coder:7b-q4_k_m``); kind "hf": ``hf:org/repo[:x]``
    or ``hf.co/org/repo[:x]``; kind "path": a local file or directory.
    """

    raw: str
    kind: Literal["catalog", "hf", "path"]
    name: str
    size: str | None = None
    format: Format | None = None
    quant: str | None = None
    filename: str | None = None
    path: Path | None = None

    @property
    def repo(self) -> str | None:
        return self.name if self.kind == "hf" else None


@dataclass(frozen=True)
class ModelInfo:
    """Facts read from a model's own files (GGUF metadata or config.json)."""

    path: Path
    format: Format
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    embedding_length: int
    context_length: int
    file_bytes: int
    n_params: int | None = None
    quantization: str | None = None
    vocab_size: int | None = None
    chat_template: str | None = None
    name: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    # Sliding-window attention (Gemma 2/3): how many layers attend over a window, and its size.
    sliding_window: int = 0
    swa_layers: int = 0
    # A pretrained model that was never tuned to follow chat turns: no chat template and no
    # instruct/chat tag in its names. It completes text well and rambles in a chat.
    base_model: bool = False
    # Mixture of experts: experts per MoE layer and how many each token uses (0 when dense), and
    # the parameters one token reads (None when dense or unknown: then all of n_params).
    n_experts: int = 0
    n_experts_used: int = 0
    active_params: int | None = None
    # Hybrid models (Qwen3-Next, Mamba/SSM hybrids): layers that keep a fixed-size recurrent
    # state instead of a KV cache, and that state's bytes per sequence (all of them; it does not
    # grow with the context). A recurrent state cannot be shared or rolled back in place: prefix
    # reuse needs a saved copy (checkpoint) of it, as for sliding-window layers.
    recurrent_layers: int = 0
    recurrent_state_bytes: int = 0
    # Size of a V head when it differs from a K head (multi-head latent attention as llama.cpp
    # caches it: DeepSeek V3, Kimi K2); 0 means the same as head_dim.
    head_dim_v: int = 0

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> int:
        """K and V for one token across all layers: 2 * layers * kv_heads * head_dim * bytes."""
        return int(2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_element)

    def kv_cache_bytes(
        self, n_ctx: int, n_parallel: int = 1, bytes_per_element: float = 2.0, n_ubatch: int = 512
    ) -> int:
        """The KV cache of ``n_parallel`` sequences of ``n_ctx`` tokens in one unified cache, as
        llama.cpp and mlx-lm allocate it: full-attention layers hold every token, sliding-window
        layers only each sequence's window plus one micro-batch."""
        per_layer = 2 * self.n_kv_heads * self.head_dim * bytes_per_element
        cells = n_ctx * n_parallel
        swa = min(cells, self.sliding_window * n_parallel + n_ubatch) if self.swa_layers else 0
        return int(per_layer * ((self.n_layers - self.swa_layers) * cells + self.swa_layers * swa))


@dataclass(frozen=True)
class LocalModel:
    """One servable model in the store: ours, the built-in one, or another tool's."""

    name: str
    format: Format
    path: Path
    origin: Origin
    size_bytes: int
    quantization: str | None = None
    parameters: str | None = None
    context_length: int | None = None
    repo: str | None = None
    filename: str | None = None
    revision: str | None = None
    sha256: str | None = None
    created: float | None = None
    last_used: float | None = None
    # Files only we reference (removed by `impetus rm`); empty for other tools' models.
    owned_files: tuple[Path, ...] = ()
    # A pretrained model that does not follow chat turns (ModelInfo.base_model), recorded when
    # it was pulled or imported; None when not known without reading the file.
    base_model: bool | None = None


@dataclass(frozen=True)
class Placement:
    """One part of a model split across machines (llama.cpp's RPC backend): where it lives,
    ``"local"`` or a worker's ``"host:port"``, its layers ``[first, last)`` (layer
    ``n_layers`` is the output layer) and the bytes it holds there, planned."""

    where: str
    first: int
    last: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    budget_bytes: int  # the memory that machine offers

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes


@dataclass(frozen=True)
class LoadPlan:
    """How to load one model on this machine, and why. Made by tuning.plan_load."""

    model: LocalModel
    n_ctx: int
    n_threads: int
    n_threads_batch: int
    n_gpu_layers: int
    n_batch: int
    n_ubatch: int
    flash_attn: bool
    kv_type: str
    n_parallel: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    notes: tuple[str, ...] = ()
    prompt_cache_dir: Path | None = None  # the prompt cache's disk tier (its root directory)
    snapshot_bytes: int = 0  # room for snapshots, checkpoints, parked sequences (GGUF, window)
    # A model split across machines (runtime/rpc.py): the parts, workers first and this machine
    # last, and the workers' endpoints. With a placement the byte fields count this machine's
    # part only; the workers' parts are in ``placement``.
    placement: tuple[Placement, ...] = ()
    rpc_workers: tuple[str, ...] = ()
    # Of kv_bytes, the recurrent layers' state (hybrid models): fixed, whatever the context.
    state_bytes: int = 0
    # The prompt cache behind the KV cache (engines/prompt_tiers.py): host RAM for
    # conversations that leave it (counted in total_bytes), and the disk tier's bound under
    # prompt_cache_dir (0: no disk tier).
    cache_ram_bytes: int = 0
    cache_disk_bytes: int = 0
    # Speculative decoding (engines/speculative.py): "off", "ngram" (drafts looked up in the
    # prompt and reply), or "draft" (a small model of the same vocabulary drafts: ``draft``,
    # whose weights, KV cache and buffers are ``draft_bytes``, counted in total_bytes).
    speculative: str = "off"
    draft: LocalModel | None = None
    draft_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        held = self.weights_bytes + self.kv_bytes + self.compute_bytes + self.snapshot_bytes
        return held + self.cache_ram_bytes + self.draft_bytes


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call (OpenAI ``tools[].function``)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made; ``arguments`` is a JSON string, as in the OpenAI API."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call while it streams. The first piece of call ``index`` (0, 1, ...
    within the reply) carries its ``id`` and ``name``; later pieces carry more of its JSON
    ``arguments``, which concatenate to the complete call's ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Reasoning:
    """What the client asked of a reasoning model, from any API's field (OpenAI
    ``reasoning_effort``, Responses ``reasoning.effort``, Anthropic ``thinking``, Ollama
    ``think``). None everywhere means the model's own default."""

    enabled: bool | None = None
    effort: str | None = None  # "minimal", "low", "medium" or "high"
    budget_tokens: int | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One message after translation: content parts flattened to text, images kept apart."""

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    images: tuple[str, ...] = ()
    # An assistant turn's reasoning, replayed by the client (``reasoning_content``, Anthropic
    # ``thinking`` blocks, Responses ``reasoning`` items); templates decide whether to show it.
    reasoning: str | None = None


@dataclass(frozen=True)
class SpecialText:
    """The text of a model's special tokens that prompts are built with ("" when it has none)."""

    bos: str = ""
    eos: str = ""
    fim_prefix: str = ""
    fim_suffix: str = ""
    fim_middle: str = ""

    @property
    def has_fim(self) -> bool:
        return bool(self.fim_prefix and self.fim_suffix and self.fim_middle)


@dataclass(frozen=True)
class Dry:
    """DRY ("don't repeat yourself"), llama.cpp's sampler against repeated sequences: a token
    that would extend a repeat longer than ``allowed_length`` is penalized by
    ``multiplier * base ** (length - allowed_length)``; ``breakers`` end a sequence. The
    defaults are llama-server's (``last_n`` -1: the whole context)."""

    multiplier: float
    base: float = 1.75
    allowed_length: int = 2
    last_n: int = -1
    breakers: tuple[str, ...] = ("\n", ":", '"', "*")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the defaults follow llama.cpp's server."""

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    typical_p: float = 1.0  # locally typical sampling; 1.0 is off
    dry: Dry | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: Mapping[int, float] | None = None
    grammar: str | None = None
    logprobs: int | None = None
    # Generate exactly max_tokens, past end-of-generation tokens (benchmarks, like llama-bench).
    ignore_eos: bool = False
    # Texts of control tokens the reply must show (a model's tool-call and reasoning markers,
    # e.g. gpt-oss's <|channel|>): an engine renders these tokens; other control tokens stay
    # unrendered, as llama-server's "preserved tokens".
    preserve: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request in runtime terms (the server builds it from JSON)."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None  # "auto", "none", "required" or a function name
    parallel_tool_calls: bool = True  # a forced choice may make several calls in one reply
    keep_alive: float | None = None
    response_format: Mapping[str, Any] | None = None
    reasoning: Reasoning = field(default_factory=Reasoning)
    # The context the client asks for (Ollama's num_ctx): smaller than the loaded one bounds
    # this request; larger reloads the model with it when it fits, else a clear 400.
    num_ctx: int | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """A raw completion: the prompt goes to the model with no chat template."""

    model: str
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    suffix: str | None = None
    keep_alive: float | None = None
    num_ctx: int | None = None  # as ChatRequest.num_ctx


@dataclass(frozen=True)
class GenerationChunk:
    """One step of a generation; the last one carries ``finish_reason`` and final counters.

    ``prompt_tokens`` counts the whole prompt, ``cached_tokens`` the part reused from the KV
    cache. Speeds are tokens per second so far.

    Log-probabilities, filled only when ``SamplingParams.logprobs`` is not None: ``logprobs``
    has one natural-log probability per entry of ``token_ids``, in the same order;
    ``top_logprobs`` has, per entry, the N most likely ``(token id, logprob)`` pairs, best first
    (N = ``SamplingParams.logprobs``; empty tuples when N is 0). Both are of the model's own
    distribution: the log-softmax of the raw logits with the logit bias added, before the
    repetition / presence / frequency penalties, temperature and top-k / top-p / min-p. So
    they do not depend on the sampling settings, and a greedy pick without penalties is the
    top-1.
    """

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    ttft_s: float = 0.0
    reasoning: str = ""
    # Calls stream as deltas; a call also appears whole in ``tool_calls`` on the chunk where it
    # completes (streaming renderers read the deltas, the others the whole calls).
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_deltas: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()
    # On the final chunk: "loop" when the server's runaway guard ended the reply (which then
    # finishes as "length"); None when the model or a limit ended it.
    stopped_by: str | None = None
    # On the final chunk, with speculative decoding: tokens guessed ahead (drafted) and how many
    # of them the model's own sampling confirmed (accepted; each saved a decode step).
    drafted_tokens: int = 0
    accepted_tokens: int = 0


@dataclass(frozen=True)
class HardwareProfile:
    """The machine, as the planner and `impetus bench` need it."""

    os: str  # "darwin" or "linux"
    arch: str
    cpu_name: str
    memory_bytes: int
    physical_cores: int
    logical_cores: int
    performance_cores: int
    efficiency_cores: int = 0
    chip: str | None = None  # "M1", "M2", ... on Apple Silicon
    tier: str | None = None  # "base", "Pro", "Max", "Ultra"
    gpu_cores: int | None = None
    gpu_wired_limit_bytes: int | None = None
    memory_bandwidth_gbs: float | None = None
    rosetta: bool = False
    simd: tuple[str, ...] = ()

    @property
    def apple_silicon(self) -> bool:
        return self.chip is not None

    @property
    def variant(self) -> str | None:
        """The chip and its tier as Apple names it: "M1", "M3 Max"."""
        if self.chip is None:
            return None
        return self.chip if self.tier in (None, "base") else f"{self.chip} {self.tier}"
