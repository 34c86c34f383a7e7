"""The prompt cache on disk: the slots' KV cache saved when a GGUF model unloads, found again by
prefix after a restart, so an agent's 15k-token system prompt is not evaluated a second time.

One directory per model file and cache layout (``IMPETUS_HOME/prompt-cache/<model>-<key>/``).
Each entry is llama.cpp's own sequence state (``llama_state_seq_save_file``: the KV cells and
the tokens) plus a small JSON beside it with the tokens and the oldest position still cached,
so entries are matched without reading the state. Both are written to a temporary name and
renamed. An entry llama.cpp refuses to load is deleted and the prompt is evaluated instead.

Models with a sliding window (Gemma 2/3) keep only the last window in those layers, so an entry
serves a prompt that extends it (a restarted conversation), not a shorter shared prefix.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus_cli.runtime.engines.common import common_prefix
from impetus_cli.runtime.engines.llama_native import LlamaContext
from impetus_cli.runtime.types import ModelInfo

log = logging.getLogger("impetus.cache")

MIN_SAVE = 256  # shorter prefixes are cheap to evaluate again


@dataclass
class Entry:
    state: Path
    tokens: list[int]
    pos_min: int  # the oldest position the saved sequence still holds (sliding windows)
    sha256: str  # of the state file: llama.cpp would load damaged KV values without noticing


class DiskCache:
    def __init__(self, root: Path, info: ModelInfo, kv_type: str, n_swa: int):
        stat = info.path.stat()
        key = f"{info.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{kv_type}|{n_swa}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", info.path.stem)[:60]
        self.dir = root / f"{stem}-{digest}"
        self.n_swa = n_swa
        self.entries = self._scan()

    def _scan(self) -> list[Entry]:
        entries = []
        for meta in sorted(self.dir.glob("*.json")):
            state = meta.with_suffix(".state")
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
                tokens = [int(t) for t in data["tokens"]]
                entry = Entry(state, tokens, int(data["pos_min"]), str(data["sha256"]))
            except (OSError, ValueError, KeyError, TypeError):
                entry = None
            if entry is None or not state.is_file():
                _remove(meta, state)  # unreadable or half-written: never trusted nor kept
                continue
            entries.append(entry)
        return entries

    def best(self, tokens: list[int], limit: int) -> tuple[Entry | None, int]:
        """The entry sharing the longest usable prefix with ``tokens`` (at most ``limit``)."""
        found, best = None, 0
        for entry in self.entries:
            n = min(common_prefix(entry.tokens, tokens), limit)
            if n > best and (self.n_swa <= 0 or entry.pos_min <= max(0, n - self.n_swa)):
                found, best = entry, n
        return found, best

    def load(self, llama: LlamaContext, seq_id: int, entry: Entry) -> list[int] | None:
        """Restore ``entry`` into sequence ``seq_id``; its tokens, or None (and the entry is
        dropped) when the file is damaged or llama.cpp refuses it."""
        capacity = len(entry.tokens) + 1
        out = (ctypes.c_int32 * capacity)()
        count = ctypes.c_size_t(0)
        read, restored = 0, []
        if _sha256(entry.state) == entry.sha256:
            read = llama.lib.llama_state_seq_load_file(
                llama.ctx, str(entry.state).encode(), seq_id, out, capacity, ctypes.byref(count)
            )
            restored = list(out[: count.value])
        if read == 0 or restored != entry.tokens:
            log.warning("prompt cache entry %s is unusable; deleted", entry.state.name)
            self.entries.remove(entry)
            _remove(entry.state.with_suffix(".json"), entry.state)
            return None
        return restored

    def save(self, llama: LlamaContext, slots: Sequence[Any]) -> None:
        """Replace the saved entries with the slots' sequences (the most recent conversations);
        entries not re-saved are deleted, so the directory stays bounded by the slots."""
        self.dir.mkdir(parents=True, exist_ok=True)
        kept: set[Path] = set()
        for slot in slots:
            if len(slot.tokens) < MIN_SAVE:
                continue
            name = hashlib.sha256(repr(slot.tokens).encode()).hexdigest()[:16]
            state = self.dir / f"{name}.state"
            meta = state.with_suffix(".json")
            kept.add(state)
            if state.is_file() and meta.is_file():
                continue  # the same tokens are saved already
            tokens = (ctypes.c_int32 * len(slot.tokens))(*slot.tokens)
            tmp = state.with_suffix(".state.tmp")
            if not llama.lib.llama_state_seq_save_file(
                llama.ctx, str(tmp).encode(), slot.seq_id, tokens, len(slot.tokens)
            ):
                tmp.unlink(missing_ok=True)
                continue
            pos_min = max(0, int(llama.lib.llama_memory_seq_pos_min(llama.mem, slot.seq_id)))
            facts = {"tokens": slot.tokens, "pos_min": pos_min, "sha256": _sha256(tmp)}
            _write_atomic(meta, json.dumps(facts))
            os.replace(tmp, state)
        for entry in self.entries:
            if entry.state not in kept:
                _remove(entry.state.with_suffix(".json"), entry.state)


def _sha256(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return ""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
