"""Backends behind one protocol (base.Engine): llama.cpp for GGUF, mlx-lm for MLX/safetensors."""

from __future__ import annotations

from impetus_cli.runtime.engines.base import Engine
from impetus_cli.runtime.types import LoadPlan, ModelInfo


def load_engine(plan: LoadPlan, info: ModelInfo) -> Engine:
    """Load ``info``'s model as ``plan`` says, on the backend for its format (imported lazily)."""
    if info.format == "gguf" and plan.placement:
        # Split across RPC workers: in a child process (engines/rpc_host.py says why).
        from impetus_cli.runtime.engines.rpc_host import SplitEngine

        return SplitEngine.load(plan, info)
    if info.format == "gguf":
        from impetus_cli.runtime.engines.llama import LlamaEngine

        return LlamaEngine.load(plan, info)
    from impetus_cli.runtime.engines.mlx import MlxEngine

    return MlxEngine.load(plan, info)
