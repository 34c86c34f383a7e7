"""What a catalog name would become on this machine, before anything is downloaded.

`impetus pull NAME --dry-run` and `impetus show NAME` (for a name not pulled yet) report it: the
Hub repository and file(s) the catalog resolves to, the quantization and why, and the plan the
loader would make from the model's catalog facts (context, sequences, memory), with the decode
speed this chip should reach. No network, no file is read: only the catalog and the machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from impetus_cli.errors import InvalidModelName
from impetus_cli.runtime import catalog
from impetus_cli.runtime.config import Settings
from impetus_cli.runtime.names import parse_ref
from impetus_cli.runtime.types import HardwareProfile, LoadPlan, LocalModel, ModelInfo


@dataclass(frozen=True)
class PullPlan:
    """A catalog name resolved for this machine: what to download and how it would load."""

    target: catalog.PullTarget
    info: ModelInfo
    load: LoadPlan
    machine: str
    budget_bytes: int

    def to_json(self) -> dict[str, Any]:
        """The plan as `pull --dry-run --json` prints it (sizes in bytes)."""
        t, info, load = self.target, self.info, self.load
        return {
            "name": t.name,
            "repo": t.repo,
            "files": list(t.files),
            "format": t.format,
            "quantization": t.quant,
            "size_bytes": t.size_bytes,
            "size_listed": t.size_listed,
            "parameters": {
                "total": info.n_params,
                "active": info.active_params or info.n_params,
                "experts": info.n_experts,
                "experts_used": info.n_experts_used,
            },
            "layers": {
                "total": info.n_layers,
                "sliding_window": info.swa_layers,
                "recurrent": info.recurrent_layers,
            },
            "memory": _memory(load),
            "context": load.n_ctx,
            "parallel": load.n_parallel,
            "trained_context": info.context_length,
            "expected_tokens_per_second": t.expected_tps,
            "machine": self.machine,
            "budget_bytes": self.budget_bytes,
            "reason": t.reason,
            "notes": list(load.notes),
            "sources": list(t.sources),
        }


def _memory(load: LoadPlan) -> dict[str, int]:
    return {
        "weights": load.weights_bytes,
        "kv_cache": load.kv_bytes - load.state_bytes,
        "recurrent_state": load.state_bytes,
        "buffers": load.compute_bytes,
        "snapshots": load.snapshot_bytes,
        "total": load.total_bytes,
    }


def plan_pull(name: str, settings: Settings, hardware: HardwareProfile) -> PullPlan:
    """The plan for a catalog name; a clear error for anything else (hf: repositories and paths
    have no facts to plan from before their files are read)."""
    from impetus_cli.runtime.hardware import memory_budget
    from impetus_cli.runtime.tuning import plan_load

    ref = parse_ref(name)
    if ref.kind != "catalog":
        raise InvalidModelName(
            f"{name} is not a catalog name: a plan before pulling needs the catalog's facts.",
            "Name a catalog model, e.g. qwen3-coder:30b; pull an hf: repository, then "
            "`impetus show` it.",
        )
    budget = memory_budget(hardware, settings)
    target = catalog.resolve(ref, budget, settings.min_ctx, hardware)
    assert target.info is not None  # resolve always attaches the facts it planned with
    model = LocalModel(
        name=target.name,
        format=target.format,
        path=target.info.path,
        origin="impetus",
        size_bytes=target.size_bytes or 0,
        quantization=target.quant,
        repo=target.repo,
        filename=target.files[0] if target.format == "gguf" else None,
    )
    load = plan_load(model, target.info, hardware, settings, budget)
    machine = hardware.variant or hardware.cpu_name
    return PullPlan(target, target.info, load, machine, budget)


def plan_dict(plan: PullPlan) -> dict[str, Any]:
    """The LoadPlan part of a plan as plain data (for `show --json`)."""
    data = asdict(plan.load)
    data["model"] = plan.load.model.name
    data["total_bytes"] = plan.load.total_bytes
    return data
