"""Events and counters: what the manager reports to the server, the dashboard and `bench`.

``EventBus`` fans events out to subscribers, each with a bounded queue (a slow reader loses its
oldest events, never blocks the engine). ``Metrics`` keeps counters, histograms and per-second
token buckets, and renders the Prometheus text format.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.runtime.status import RequestRecord
from impetus_cli.runtime.types import GenerationChunk

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
WINDOW_S = 300  # throughput history the dashboard plots
BUCKET_S = 5


@dataclass(frozen=True)
class Event:
    kind: str  # loading, loaded, unloaded, request_started, request_finished, tokens, error
    model: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "time": self.time, **self.data}


class Subscription:
    """One reader's bounded queue. ``notify`` (if given) is called after each new event, from
    the publishing thread: an asyncio reader uses it to wake without a thread of its own."""

    def __init__(self, bus: EventBus, limit: int, notify: Callable[[], None] | None = None):
        self._bus = bus
        self._notify = notify
        self._queue: collections.deque[Event] = collections.deque(maxlen=limit)
        self._ready = threading.Condition()
        self.closed = False

    def put(self, event: Event) -> None:
        with self._ready:
            self._queue.append(event)
            self._ready.notify()
        if self._notify is not None:
            self._notify()

    def get(self, timeout: float | None = None) -> Event | None:
        with self._ready:
            if not self._queue and not self.closed and timeout != 0:
                self._ready.wait(timeout)
            return self._queue.popleft() if self._queue else None

    def __iter__(self) -> Iterator[Event]:
        while not self.closed:
            event = self.get(timeout=1.0)
            if event is not None:
                yield event

    def close(self) -> None:
        self._bus.unsubscribe(self)
        with self._ready:
            self.closed = True
            self._ready.notify_all()


class EventBus:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(
        self, limit: int = 1000, notify: Callable[[], None] | None = None
    ) -> Subscription:
        sub = Subscription(self, limit, notify)
        with self._lock:
            self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, event: Event) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.put(event)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [
            f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}'
            for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


@dataclass
class ModelCounters:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    loop_stops: int = 0  # replies the runaway guard ended
    drafted_tokens: int = 0  # speculative decoding: tokens guessed ahead
    accepted_tokens: int = 0  # of them, those the model's sampling confirmed
    # Tokens generated per BUCKET_S-second bucket, keyed by bucket start.
    buckets: dict[int, int] = field(default_factory=dict)

    def series(self, now: float) -> list[float]:
        start = int(now // BUCKET_S) * BUCKET_S - WINDOW_S + BUCKET_S
        return [
            self.buckets.get(start + i * BUCKET_S, 0) / BUCKET_S
            for i in range(WINDOW_S // BUCKET_S)
        ]


def acceptance(c: ModelCounters) -> float:
    """The share of drafted tokens the model accepted (0 when nothing was drafted)."""
    return c.accepted_tokens / c.drafted_tokens if c.drafted_tokens else 0.0


class Metrics:
    """Thread-safe counters for /metrics, /impetus/status and the dashboard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter[tuple[str, int]] = (
            collections.Counter()
        )  # (endpoint, status)
        self.models: dict[str, ModelCounters] = {}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tps = Histogram(TPS_BUCKETS)
        self.recent: collections.deque[RequestRecord] = collections.deque(maxlen=50)

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def count_tokens(self, model: str, n: int, now: float | None = None) -> None:
        now = now or time.time()
        with self._lock:
            counters = self.models.setdefault(model, ModelCounters())
            key = int(now // BUCKET_S) * BUCKET_S
            counters.buckets[key] = counters.buckets.get(key, 0) + n
            for old in [k for k in counters.buckets if k < now - WINDOW_S - BUCKET_S]:
                del counters.buckets[old]

    def finish(
        self,
        model: str,
        prompt: int,
        final: GenerationChunk | None,
        status: int | str,
        stopped_by: str | None = None,
    ) -> RequestRecord:
        """Count a finished request (``final``: its last chunk, None if it never started)."""
        f = final or GenerationChunk()
        record = RequestRecord(
            time=time.time(),
            model=model,
            prompt_tokens=prompt,
            completion_tokens=f.completion_tokens,
            cached_tokens=f.cached_tokens,
            ttft_s=round(f.ttft_s, 4),
            tps=round(f.generation_tps, 2),
            status=status,
            stopped_by=stopped_by,
        )
        with self._lock:
            counters = self.models.setdefault(model, ModelCounters())
            counters.requests += 1
            counters.prompt_tokens += prompt
            counters.completion_tokens += f.completion_tokens
            counters.cached_tokens += f.cached_tokens
            counters.loop_stops += stopped_by == "loop"
            counters.drafted_tokens += f.drafted_tokens
            counters.accepted_tokens += f.accepted_tokens
            if f.completion_tokens:
                self.ttft.observe(f.ttft_s)
                self.tps.observe(f.generation_tps)
            self.recent.append(record)
        return record

    def model_snapshot(self, model: str) -> dict[str, Any]:
        with self._lock:
            c = self.models.get(model, ModelCounters())
            series = c.series(time.time())
            return {
                "requests": c.requests,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "cached_tokens": c.cached_tokens,
                "cache_hit_rate": c.cached_tokens / c.prompt_tokens if c.prompt_tokens else 0.0,
                "loop_stops": c.loop_stops,
                "drafted_tokens": c.drafted_tokens,
                "accepted_tokens": c.accepted_tokens,
                "acceptance_rate": acceptance(c),
                "tps_recent": series[-2] if len(series) > 1 else 0.0,  # the last complete bucket
                "series": series,
            }

    def recent_requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self.recent)

    def prometheus(self, gauges: dict[str, tuple[str, list[tuple[str, float]]]]) -> str:
        """Text exposition format. ``gauges``: name -> (help, [(labels, value)])."""
        out = [
            "# HELP impetus_requests_total HTTP requests by endpoint and status.",
            "# TYPE impetus_requests_total counter",
        ]
        with self._lock:
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f'impetus_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            for name, attr, text in (
                ("prompt_tokens", "prompt_tokens", "Prompt tokens processed."),
                ("completion_tokens", "completion_tokens", "Tokens generated."),
                (
                    "cached_prompt_tokens",
                    "cached_tokens",
                    "Prompt tokens served from the KV cache.",
                ),
                ("loop_stops", "loop_stops", "Replies the runaway guard ended (loops)."),
                ("draft_tokens", "drafted_tokens", "Tokens drafted (speculative decoding)."),
                ("draft_accepted_tokens", "accepted_tokens", "Drafted tokens the model accepted."),
            ):
                out += [
                    f"# HELP impetus_{name}_total {text}",
                    f"# TYPE impetus_{name}_total counter",
                ]
                out += [
                    f'impetus_{name}_total{{model="{m}"}} {getattr(c, attr)}'
                    for m, c in sorted(self.models.items())
                ]
            out += [
                "# HELP impetus_draft_acceptance_ratio Accepted / drafted tokens (speculative).",
                "# TYPE impetus_draft_acceptance_ratio gauge",
            ]
            out += [
                f'impetus_draft_acceptance_ratio{{model="{m}"}} {acceptance(c):.4f}'
                for m, c in sorted(self.models.items())
                if c.drafted_tokens
            ]
            out += [
                "# HELP impetus_ttft_seconds Time to first token.",
                "# TYPE impetus_ttft_seconds histogram",
            ]
            out += self.ttft.lines("impetus_ttft_seconds", "")
            out += [
                "# HELP impetus_generation_tokens_per_second Decode speed per request.",
                "# TYPE impetus_generation_tokens_per_second histogram",
            ]
            out += self.tps.lines("impetus_generation_tokens_per_second", "")
        for name, (text, samples) in gauges.items():
            out += [f"# HELP impetus_{name} {text}", f"# TYPE impetus_{name} gauge"]
            out += [f"impetus_{name}{{{labels}}} {value}" for labels, value in samples]
        return "\n".join(out) + "\n"


def tier_gauges(
    tiers: dict[str, Sequence[Any]],
) -> dict[str, tuple[str, list[tuple[str, float]]]]:
    """/metrics gauges of the prompt cache behind each model's KV cache (model -> its tiers'
    ``TierStats``: engines/prompt_tiers.py), labelled by model and tier ("ram", "disk")."""

    def samples(attr: str) -> list[tuple[str, float]]:
        return [
            (f'model="{model}",tier="{t.tier}"', float(getattr(t, attr)))
            for model, stats in sorted(tiers.items())
            for t in stats
        ]

    return {
        "prompt_cache_bytes": ("Bytes the prompt cache holds, per tier.", samples("bytes")),
        "prompt_cache_budget_bytes": ("The prompt cache's bound, per tier.", samples("budget")),
        "prompt_cache_entries": ("Conversations the prompt cache holds.", samples("entries")),
        "prompt_cache_hits": ("Prompts restored from the tier since load.", samples("hits")),
        "prompt_cache_hit_tokens": (
            "Prompt tokens restored from the tier, not evaluated, since load.",
            samples("tokens"),
        ),
    }
