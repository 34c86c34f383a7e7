"""Responses kept for ``previous_response_id`` (OpenAI Responses with ``store: true``).

In memory only, bounded by count and by bytes, least recently used first out. Each entry holds
one response and its own input items; a conversation is the chain of ``previous`` links, so a
long conversation costs its items once, not once per turn. A chain with a forgotten link is
reported as missing rather than continued with a hole in its history.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Item = Mapping[str, Any]
MAX_RESPONSES = 1024
MAX_BYTES = 64 * 1024 * 1024
MAX_CHAIN = 10_000  # links followed at most: a chain longer than this is not a conversation


@dataclass(frozen=True)
class StoredResponse:
    """One response as the API returned it, the input items it was asked with, and the
    response it continued (None for the first turn)."""

    response: Mapping[str, Any]
    input_items: tuple[Item, ...]
    previous_id: str | None
    size: int

    @property
    def output_items(self) -> tuple[Item, ...]:
        return tuple(self.response.get("output") or ())


class ResponseStore:
    """Thread-safe: the request parser may read it from a worker thread."""

    def __init__(self, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES):
        self.max_responses, self.max_bytes = max_responses, max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(
        self, response: Mapping[str, Any], input_items: Sequence[Item], previous_id: str | None
    ) -> bool:
        """Keep ``response`` under its id; False when it alone is larger than the store (or
        cannot be measured, which only a pathological request makes happen)."""
        try:
            size = len(json.dumps([response, list(input_items)], default=str))
        except (ValueError, RecursionError):
            return False
        entry = StoredResponse(response, tuple(input_items), previous_id, size)
        rid = str(response["id"])
        with self._lock:
            self._drop(rid)
            if size > self.max_bytes:
                return False
            self._entries[rid] = entry
            self._bytes += size
            while len(self._entries) > self.max_responses or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return True

    def get(self, rid: str) -> StoredResponse | None:
        with self._lock:
            entry = self._entries.get(rid)
            if entry is not None:
                self._entries.move_to_end(rid)
            return entry

    def delete(self, rid: str) -> bool:
        with self._lock:
            return self._drop(rid)

    def conversation(self, rid: str) -> list[Item] | None:
        """Every item of the conversation that ended with response ``rid``, oldest first: each
        turn's input items, then its output. None when ``rid`` or an earlier turn is gone."""
        turns: list[StoredResponse] = []
        with self._lock:
            link: str | None = rid
            while link is not None and len(turns) < MAX_CHAIN:
                entry = self._entries.get(link)
                if entry is None:
                    return None
                turns.append(entry)
                link = entry.previous_id
            for entry in reversed(turns):  # a live conversation keeps its turns, latest last
                self._entries.move_to_end(str(entry.response["id"]))
        items: list[Item] = []
        for entry in reversed(turns):
            items += entry.input_items
            items += entry.output_items
        return items

    def find_item(self, item_id: str) -> Item | None:
        """An input or output item by its id (``item_reference``), newest responses first."""
        with self._lock:
            entries = list(reversed(self._entries.values()))
        for entry in entries:
            for item in (*entry.output_items, *entry.input_items):
                if item.get("id") == item_id:
                    return item
        return None

    def _drop(self, rid: str) -> bool:
        entry = self._entries.pop(rid, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
