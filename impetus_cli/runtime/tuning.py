"""(HardwareProfile, ModelInfo, Settings) -> LoadPlan: how to load a model here, and why.

Pure arithmetic, no I/O. A model costs its weights (the file: all of its parameters, a
mixture of experts' idle experts too) + the KV cache for its context (2 * layers * kv_heads *
head_dim * bytes per element, per token, per parallel sequence; layers with a sliding window
hold only the window; recurrent layers of hybrid models hold a fixed state instead) + compute
buffers (+ on GGUF models with a sliding window or recurrent layers, room for prefix snapshots,
checkpoints and parked conversations) (+ host RAM for the prompt cache, from what the model
leaves of the budget). The context is
the trained maximum capped by what fits the budget, aiming at 32k tokens because coding agents
send 13-18k on their first request.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from impetus_cli.errors import InsufficientMemory
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.types import HardwareProfile, LoadPlan, LocalModel, ModelInfo

MB = 1_000_000
GB = 1_000_000_000
MIN_CTX = 2048
# Bytes per K or V element for each cache type (q8_0 / q4_0 carry a scale per 32 values).
KV_ELEMENT_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def kv_bytes(
    info: ModelInfo, n_ctx: int, kv_type: str = "f16", n_parallel: int = 1, n_ubatch: int = 512
) -> int:
    """The cache of ``n_parallel`` sequences of ``n_ctx`` tokens, as llama.cpp allocates it: the
    KV cache of the attention layers (sliding-window layers hold each sequence's window plus a
    micro-batch; K and V heads may differ in size, as in multi-head latent attention) and the
    fixed recurrent state of the recurrent layers of hybrid models."""
    element = KV_ELEMENT_BYTES.get(kv_type, 2.0)
    per_layer = info.n_kv_heads * (info.head_dim + (info.head_dim_v or info.head_dim)) * element
    cells = n_ctx * n_parallel
    swa = min(cells, info.sliding_window * n_parallel + n_ubatch) if info.swa_layers else 0
    full = info.n_layers - info.recurrent_layers - info.swa_layers
    kv = per_layer * (full * cells + info.swa_layers * swa)
    return int(kv) + state_bytes(info, n_parallel)


def state_bytes(info: ModelInfo, n_parallel: int = 1) -> int:
    """The recurrent layers' state of ``n_parallel`` sequences: fixed, whatever the context."""
    return info.recurrent_state_bytes * n_parallel


def compute_bytes(
    info: ModelInfo, n_ctx: int, n_ubatch: int, flash_attn: bool, n_parallel: int = 1
) -> int:
    """llama.cpp's compute buffers, estimated: activations of one micro-batch, the logits of the
    last token, the attention mask of a micro-batch against every cell of the (unified) cache
    (f16), and without flash attention the KQ matrix of a micro-batch against the context.
    Measured on Gemma 3 270M, 4 x 16k: the resident part grows with the cells in use, as the
    mask term does."""
    cells = n_ctx * n_parallel
    activations = n_ubatch * info.embedding_length * 4 * 12
    logits = (info.vocab_size or 32000) * 4 * 2
    mask = n_ubatch * cells * 2
    kq = 0 if flash_attn else n_ubatch * n_ctx * info.n_heads * 4
    return activations + logits + mask + kq + 32 * MB


def estimate_bytes(
    info: ModelInfo,
    n_ctx: int,
    kv_type: str = "f16",
    n_parallel: int = 1,
    n_ubatch: int = 512,
    flash_attn: bool = True,
) -> int:
    return (
        info.file_bytes
        + kv_bytes(info, n_ctx, kv_type, n_parallel, n_ubatch)
        + compute_bytes(info, n_ctx, n_ubatch, flash_attn, n_parallel)
    )


def snapshot_bytes(
    info: ModelInfo, n_ctx: int, kv_type: str = "f16", n_ubatch: int = 512, n_parallel: int = 1
) -> int:
    """Room for what the GGUF engine keeps on models whose cache cannot be shared or rolled
    back in place (llama_snapshots.py): prefix snapshots of at most one sequence's cache, and a
    checkpoint per sequence of what a rollback loses: the sliding-window layers' window and one
    micro-batch, and the recurrent layers' state (hybrid models). Other models share prefixes
    in place and roll back freely: none."""
    if not info.swa_layers and not info.recurrent_layers:
        return 0
    element = KV_ELEMENT_BYTES.get(kv_type, 2.0)
    window = info.n_kv_heads * (info.head_dim + (info.head_dim_v or info.head_dim)) * element
    window *= info.swa_layers * min(n_ctx, info.sliding_window + n_ubatch)
    checkpoint = int(window) + state_bytes(info)
    return kv_bytes(info, n_ctx, kv_type, 1, n_ubatch) + checkpoint * n_parallel


def _one_sequence(
    info: ModelInfo, ctx: int, kv_type: str, n_ubatch: int, flash_attn: bool, snapshots: bool
) -> int:
    """The planned total with one sequence of ``ctx`` tokens (and snapshot room, if kept)."""
    total = estimate_bytes(info, ctx, kv_type, 1, n_ubatch, flash_attn)
    return total + (snapshot_bytes(info, ctx, kv_type, n_ubatch) if snapshots else 0)


def _largest_ctx(
    info: ModelInfo, budget: int, kv_type: str, n_ubatch: int, flash_attn: bool, snapshots: bool
) -> int:
    """The largest multiple of 256 (or the trained maximum) whose planned total (one sequence,
    plus room for snapshots when the engine keeps them) fits the budget; 0 if none does. A
    binary search: the total grows with the context."""

    def fits(ctx: int) -> bool:
        return _one_sequence(info, ctx, kv_type, n_ubatch, flash_attn, snapshots) <= budget

    trained = max(info.context_length, MIN_CTX)
    lo, hi = 0, -(-trained // 256)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(min(mid * 256, trained)) else (lo, mid - 1)
    return min(lo * 256, trained)


def _threads(hw: HardwareProfile, settings: Settings) -> tuple[int, str]:
    if settings.threads:
        return settings.threads, f"threads {settings.threads} (asked)"
    if hw.apple_silicon:
        return hw.performance_cores, f"threads {hw.performance_cores}: the performance cores"
    return max(1, hw.physical_cores), f"threads {hw.physical_cores}: the physical cores"


def _parallel(info: ModelInfo, budget: int, ctx: int, settings: Settings) -> tuple[int, str]:
    """Sequences sharing the context: each keeps its own cached prefix (two agents, or a chat
    and autocomplete, don't evict each other). Automatic: as many as fit in half the budget."""
    if settings.parallel:
        return settings.parallel, f"parallel {settings.parallel} (asked)"
    for n in (4, 2):
        if estimate_bytes(info, ctx, settings.kv_type, n) <= budget // 2:
            return n, f"parallel {n}: {n} cached conversations fit in half the budget"
    return 1, "parallel 1: memory allows one cached conversation"


def plan_load(
    model: LocalModel,
    info: ModelInfo,
    hw: HardwareProfile,
    settings: Settings,
    budget_bytes: int,
    draft: tuple[LocalModel, ModelInfo] | None = None,
) -> LoadPlan:
    """``draft``: the model that drafts for this one (speculative decoding), resolved by the
    caller from ``settings.speculative`` / ``settings.draft``."""
    if settings.rpc and model.format == "gguf":
        return _split_across_workers(model, info, hw, settings, budget_bytes)
    notes: list[str] = []
    gpu = hw.apple_silicon and not hw.rosetta
    n_gpu_layers = info.n_layers + 1 if gpu else 0
    notes.append("all layers on the GPU (Metal)" if gpu else "CPU only: no GPU layers")
    # Flash attention avoids the n_ctx x n_ubatch score matrix; llama.cpp has it on Metal and CPU.
    flash_attn = settings.flash_attn if settings.flash_attn is not None else True
    kv_type = settings.kv_type
    if kv_type != "f16" and not flash_attn:
        kv_type = "f16"
        notes.append("KV cache f16: quantized KV needs flash attention")
    n_batch, n_ubatch = (2048, 512) if gpu else (512, 512)
    threads, why = _threads(hw, settings)
    notes.append(why)
    shape = (kv_type, n_ubatch, flash_attn)
    ctx, settings = _context_for(model, info, settings, budget_bytes, shape, notes)
    n_parallel, why = _parallel(info, budget_bytes, ctx, settings)
    notes.append(why)
    gguf = model.format == "gguf"
    snapshots = snapshot_bytes(info, ctx, kv_type, n_ubatch, n_parallel) if gguf else 0
    if snapshots:
        why = "a sliding window" if info.swa_layers else "a recurrent state"
        notes.append(
            f"{snapshots / 1e9:.2f} GB for prefix snapshots, checkpoints and parked "
            f"conversations: {why} keeps prefixes from being shared or rolled back in place"
        )
    held = info.file_bytes + kv_bytes(info, ctx, kv_type, n_parallel, n_ubatch) + snapshots
    held += compute_bytes(info, ctx, n_ubatch, flash_attn, n_parallel)
    spec = _speculation(settings, model, info, draft, (ctx, n_parallel, n_ubatch, flash_attn))
    if spec.draft_bytes and held + spec.draft_bytes > budget_bytes:
        notes.append(f"no room for the draft model {spec.draft.name if spec.draft else ''}")
        spec = Speculation(spec.mode if spec.mode != "draft" else "ngram", None, spec.logits_bytes)
    held += spec.draft_bytes
    notes.extend(spec.notes)
    cache_ram = _cache_ram(settings, budget_bytes, held, notes)
    if info.recurrent_layers:
        notes.append(
            f"{info.recurrent_layers} of {info.n_layers} layers keep a recurrent state "
            f"({state_bytes(info, n_parallel) / 1e6:.0f} MB for {n_parallel} sequences, whatever "
            "the context) instead of a KV cache"
        )
    return LoadPlan(
        model=model,
        n_ctx=ctx,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=n_gpu_layers,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
        kv_type=kv_type,
        n_parallel=n_parallel,
        weights_bytes=info.file_bytes,
        kv_bytes=kv_bytes(info, ctx, kv_type, n_parallel, n_ubatch),
        compute_bytes=compute_bytes(info, ctx, n_ubatch, flash_attn, n_parallel),
        snapshot_bytes=snapshots,
        state_bytes=state_bytes(info, n_parallel),
        notes=tuple(notes),
        prompt_cache_dir=settings.prompt_cache_dir if settings.prompt_cache else None,
        cache_ram_bytes=cache_ram,
        cache_disk_bytes=settings.cache_disk if settings.prompt_cache else 0,
        speculative=spec.mode,
        draft=spec.draft,
        draft_bytes=spec.draft_bytes,
    )


@dataclass(frozen=True)
class Speculation:
    """What speculative decoding takes: its mode, the draft model, and the bytes it holds: the
    draft model's weights, KV cache and buffers, and the target's logits of draft tokens (a
    row of the vocabulary each, up to a step's most)."""

    mode: str
    draft: LocalModel | None
    logits_bytes: int
    model_bytes: int = 0
    notes: tuple[str, ...] = ()

    @property
    def draft_bytes(self) -> int:
        return self.logits_bytes + self.model_bytes


def _context_for(
    model: LocalModel,
    info: ModelInfo,
    settings: Settings,
    budget: int,
    shape: tuple[str, int, bool],
    notes: list[str],
) -> tuple[int, Settings]:
    """The context (``_choose_ctx``) once speculative decoding's logits rows are off the
    budget; on a budget too tight for them, the model's context without speculation, and the
    settings with it off."""
    kv_type, n_ubatch, flash_attn = shape
    if _speculates(settings, model, info):
        left = budget - _logits_bytes(info)
        try:
            ctx = _choose_ctx(model, info, settings, left, kv_type, n_ubatch, flash_attn, notes)
            return ctx, settings
        except InsufficientMemory:
            settings = dataclasses.replace(settings, speculative="off")
    ctx = _choose_ctx(model, info, settings, budget, kv_type, n_ubatch, flash_attn, notes)
    return ctx, settings


def _speculates(settings: Settings, model: LocalModel, info: ModelInfo) -> bool:
    """Whether the model decodes speculatively: asked, a GGUF (the MLX engine has no
    speculative path here), and a cache that can drop a rejected draft (recurrent layers
    cannot roll back in place)."""
    from impetus_cli.runtime.engines.speculative import parse_mode

    asked = parse_mode(settings.speculative) != "off"
    return asked and model.format == "gguf" and not info.recurrent_layers


def _logits_bytes(info: ModelInfo) -> int:
    """The target's logits for a step's most draft tokens: a row of the vocabulary each."""
    from impetus_cli.runtime.engines.speculative import MAX_STEP_DRAFTS

    return MAX_STEP_DRAFTS * (info.vocab_size or 32000) * 4


def _speculation(
    settings: Settings,
    model: LocalModel,
    info: ModelInfo,
    draft: tuple[LocalModel, ModelInfo] | None,
    shape: tuple[int, int, int, bool],
) -> Speculation:
    """Speculative decoding for this model (see ``_speculates``): n-gram lookups, and a draft
    model where one was given that is a GGUF of the same vocabulary size."""
    if not _speculates(settings, model, info):
        from impetus_cli.runtime.engines.speculative import parse_mode

        if parse_mode(settings.speculative) == "off":
            return Speculation("off", None, 0)
        why = (  # asked, but not possible here
            "speculative decoding off: mlx-lm drafts for one sequence at a time, outside the "
            "BatchGenerator this engine batches with"
            if model.format != "gguf"
            else "speculative decoding off: recurrent layers cannot drop a rejected draft"
        )
        return Speculation("off", None, 0, notes=(why,))
    logits = _logits_bytes(info)
    if draft is None:
        return Speculation("ngram", None, logits)
    local, dinfo = draft
    if local.format != "gguf" or (dinfo.vocab_size or 0) != (info.vocab_size or 0):
        why = f"{local.name} cannot draft for it (another vocabulary or format): n-gram drafts only"
        return Speculation("ngram", None, logits, notes=(why,))
    ctx, n_parallel, n_ubatch, flash_attn = shape
    held = dinfo.file_bytes + kv_bytes(dinfo, ctx, "f16", n_parallel, n_ubatch)
    held += compute_bytes(dinfo, ctx, n_ubatch, flash_attn, n_parallel)
    why = f"{local.name} drafts for it ({held / 1e9:.2f} GB with its KV cache)"
    return Speculation("draft", local, logits, held, (why,))


def _cache_ram(settings: Settings, budget: int, held: int, notes: list[str]) -> int:
    """Host RAM for conversations that leave the KV cache (the prompt cache's RAM tier): what
    was asked, within what the model leaves of the budget; else an eighth of the budget up to
    8 GB, within what the model leaves of half the budget (so that another model as large
    still fits beside it, as the choice of parallel sequences does)."""
    asked = settings.cache_ram is not None
    room = max(0, (budget if asked else budget // 2) - held)
    wanted = settings.cache_ram if settings.cache_ram is not None else min(8 * GB, budget // 8)
    ram = min(wanted, room)
    if ram:
        notes.append(f"{ram / 1e9:.2f} GB of host RAM keeps conversations that leave the KV cache")
    if ram < wanted and settings.cache_ram is not None:
        notes.append(f"prompt cache RAM {ram / 1e9:.2f} GB: asked more, the budget leaves this")
    return ram


def _split_across_workers(
    model: LocalModel, info: ModelInfo, hw: HardwareProfile, settings: Settings, budget_bytes: int
) -> LoadPlan:
    """A GGUF model's layers split across this machine and llama.cpp RPC workers: planned for
    the memory of all of them (each worker says what it offers: the planner's one network
    question), then placed by runtime/rpc.py; the plan's bytes count this machine's part."""
    import dataclasses

    from impetus_cli.runtime import rpc

    devices = rpc.probe_all(rpc.parse_endpoints(settings.rpc), model.name)
    total = budget_bytes + sum(d.free_bytes for d in devices)
    whole = plan_load(model, info, hw, dataclasses.replace(settings, rpc=()), total)
    weights = rpc.layer_bytes(info.path, info.n_layers)
    return rpc.split_plan(whole, info, budget_bytes, devices, weights)


def _choose_ctx(
    model: LocalModel,
    info: ModelInfo,
    settings: Settings,
    budget: int,
    kv_type: str,
    n_ubatch: int,
    flash_attn: bool,
    notes: list[str],
) -> int:
    trained = info.context_length
    snapshots = model.format == "gguf"  # (they take room only on models with a window)
    fits = _largest_ctx(info, budget, kv_type, n_ubatch, flash_attn, snapshots)
    if fits < MIN_CTX:
        need = _one_sequence(info, MIN_CTX, kv_type, n_ubatch, flash_attn, snapshots)
        raise InsufficientMemory(
            f"{model.name} needs {need / 1e9:.1f} GB even with a {MIN_CTX}-token context; "
            f"the memory budget is {budget / 1e9:.1f} GB.",
            "Pick a smaller model or quantization, or raise --memory-budget.",
        )
    if settings.ctx:
        ctx = min(settings.ctx, trained, fits)
        if ctx < settings.ctx:
            notes.append(
                f"context {ctx}: asked {settings.ctx}, capped by the {'trained maximum' if ctx == trained else 'memory budget'}"
            )
        else:
            notes.append(f"context {ctx} (asked)")
        return ctx
    ctx = min(trained, fits)
    if ctx == trained:
        notes.append(f"context {ctx}: the trained maximum")
    elif ctx >= settings.min_ctx:
        notes.append(f"context {ctx}: the most the memory budget allows (trained {trained})")
    else:
        notes.append(
            f"context {ctx}: below the {settings.min_ctx} agents want; memory allows no more"
        )
    return ctx
