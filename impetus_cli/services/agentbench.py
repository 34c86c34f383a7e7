"""`impetus bench --server URL`: how a running server feels to a coding agent.

Works against any OpenAI-compatible server (Impetus, llama-server, llama-cpp-python's server):
time to first token at agent-sized prompt depths, the follow-up turn that should reuse the cached
prefix, new sessions (tasks) that share the agent's instructions, single-stream decode speed,
and N parallel streams. Prompts open with a random nonce so that nothing from an earlier run is
cached. One short untimed request warms the server up first.

The agent's instructions open the first user turn rather than a system message: some chat formats
(llama-cpp-python's "gemma") drop a system message, which would measure a much shorter prompt.
Decode and parallel streams ask for long answers and for ``ignore_eos`` (llama.cpp's extension,
which Impetus also accepts) so that each reply has its full length; servers that do not know it
(llama-cpp-python's) ignore it, which is why the real completion token counts are reported.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from impetus_cli.client import ImpetusClient
from impetus_cli.runtime.summary import decode_rate

# Filler shaped like an agent's system prompt: rules, tool descriptions, environment details.
_RULES = (
    "You are a careful software engineer working in the user's repository. Read files before "
    "editing them, keep changes small, explain each step, run the tests after a change, and "
    "never invent APIs. Tool read_file(path) returns a file; tool write_file(path, content) "
    "replaces it; tool run(command) runs a shell command in the workspace and returns its output. "
)


@dataclass(frozen=True)
class StreamStats:
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    last_token_s: float = 0.0  # request start to the last content delta (0: unknown)
    reply: str = ""  # the streamed content

    @property
    def decode_tps(self) -> float:
        """Tokens/s from the first content delta to the last (the first token is the prompt's)."""
        return decode_rate(self.completion_tokens, self.ttft_s, self.last_token_s or self.total_s)


@dataclass(frozen=True)
class AgentBench:
    url: str
    model: str
    first_turn: dict[int, StreamStats] = field(default_factory=dict)  # depth -> stats
    follow_up: dict[int, StreamStats] = field(default_factory=dict)
    decode: StreamStats | None = None
    parallel: tuple[StreamStats, ...] = ()
    parallel_wall_s: float = 0.0
    chars_per_token: float = 0.0  # how the prompts were sized
    sessions: tuple[StreamStats, ...] = ()  # first turns of sessions sharing instructions
    session_follow_up: StreamStats | None = None  # the first session's, after the others

    @property
    def parallel_aggregate_tps(self) -> float:
        tokens = sum(s.completion_tokens for s in self.parallel)
        return tokens / self.parallel_wall_s if self.parallel_wall_s else 0.0

    @property
    def parallel_worst_ttft_s(self) -> float:
        return max((s.ttft_s for s in self.parallel), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "first_turn": {str(d): asdict(s) for d, s in self.first_turn.items()},
            "follow_up": {str(d): asdict(s) for d, s in self.follow_up.items()},
            "decode": asdict(self.decode) if self.decode else None,
            "decode_tps": self.decode.decode_tps if self.decode else None,
            "parallel": [asdict(s) for s in self.parallel],
            "parallel_aggregate_tps": self.parallel_aggregate_tps,
            "parallel_worst_ttft_s": self.parallel_worst_ttft_s,
            "chars_per_token": self.chars_per_token,
            "sessions": [asdict(s) for s in self.sessions],
            "session_follow_up": asdict(self.session_follow_up) if self.session_follow_up else None,
        }


def stream_once(
    client: ImpetusClient,
    model: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    **extra: Any,
) -> StreamStats:
    """One streamed chat; TTFT is the first content delta. Token counts from usage when the
    server sends it, else one token per content chunk."""
    start = time.perf_counter()
    first: float | None = None
    last = start
    chunks, usage, reply = 0, dict[str, Any](), []
    for event in client.chat_stream(
        model,
        messages,
        max_tokens=max_tokens,
        temperature=0,
        stream_options={"include_usage": True},
        **extra,
    ):
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            if content := (choice.get("delta") or {}).get("content"):
                last = time.perf_counter()
                first = first or last
                chunks += 1
                reply.append(content)
    end = time.perf_counter()
    return StreamStats(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or chunks),
        ttft_s=(first or end) - start,
        total_s=end - start,
        last_token_s=(last if first else end) - start,
        reply="".join(reply),
    )


def agent_prompt(chars: int, nonce: str | None = None) -> str:
    """About ``chars`` characters of agent instructions after a first line with a nonce (random
    unless given), so that no server has any of it cached beyond the chat template's opening."""
    nonce = nonce or uuid.uuid4().hex[:12]  # 48 random bits: unique, and few tokens
    body = (_RULES * (chars // len(_RULES) + 1))[:chars]
    return f"Session {nonce}.\n{body}"


def chars_per_token(client: ImpetusClient, model: str) -> float:
    """Calibrate the filler against the server's own tokenizer: two probes of different
    lengths with the same nonce, so that the chat template's and the nonce's tokens cancel out."""
    counts, nonce = [], uuid.uuid4().hex[:12]
    for chars in (400, 1600):
        probe = [{"role": "user", "content": agent_prompt(chars, nonce)}]
        counts.append((len(probe[0]["content"]), stream_once(client, model, probe, 1)))
    (short, a), (long, b) = counts
    if not (a.prompt_tokens and b.prompt_tokens > a.prompt_tokens):
        return 4.0  # the server reports no usage: a typical ratio
    return (long - short) / (b.prompt_tokens - a.prompt_tokens)


def run_agent_bench(
    client: ImpetusClient,
    model: str,
    *,
    depths: tuple[int, ...] = (2048, 8192, 16384),
    n_gen: int = 128,
    parallel: int = 4,
    progress: Callable[[str], None] = lambda _: None,
    ratio: float | None = None,
    sessions: int = 0,
) -> AgentBench:
    """``ratio``: characters per token to size the prompts; None: calibrate on the server
    (a server that reports no usage needs it given, else prompts are sized at 4.0).

    Measured, in order: per depth a cold first turn (a unique nonce opens it) and its follow-up
    (the same conversation plus a reply and a short user turn); ``sessions`` sessions sharing
    instructions of the first depth, each with a file as long (see ``_sessions``); one
    ``n_gen``-token stream for decode; ``parallel`` concurrent ``n_gen``-token streams started
    together."""
    progress("warm-up")
    warm_up(client, model)
    ratio = ratio or chars_per_token(client, model)
    first_turn, follow_up = {}, {}
    for depth in depths:
        progress(f"first turn at {depth} tokens")
        ask = "List the files you would read first."
        turn1 = [{"role": "user", "content": f"{agent_prompt(int(depth * ratio))}\n\n{ask}"}]
        first_turn[depth] = stream_once(client, model, turn1, 32)
        progress(f"follow-up at {depth} tokens")
        turn2 = [
            *turn1,
            {"role": "assistant", "content": "server.py and its tests."},
            {"role": "user", "content": "Now add a /health endpoint."},
        ]
        follow_up[depth] = stream_once(client, model, turn2, 32)
    opened: tuple[StreamStats, ...] = ()
    again = None
    if sessions and depths:
        progress(f"{sessions} sessions sharing {depths[0]} tokens of instructions")
        size = int(depths[0] * ratio)
        opened, again = _sessions(client, model, sessions, size, size)
    progress("decode")
    short = [
        {"role": "user", "content": f"{uuid.uuid4().hex}: write a long story about a compiler."}
    ]
    decode = stream_once(client, model, short, n_gen, ignore_eos=True)
    progress(f"{parallel} parallel streams")
    stats, wall = _parallel(client, model, parallel, n_gen)
    return AgentBench(
        client.base_url,
        model,
        first_turn,
        follow_up,
        decode,
        tuple(stats),
        wall,
        ratio,
        opened,
        again,
    )


def _sessions(
    client: ImpetusClient, model: str, n: int, chars: int, work_chars: int
) -> tuple[tuple[StreamStats, ...], StreamStats]:
    """``n`` sessions of one agent, as every new task opens one: the same instructions (cold:
    a nonce of their own), a different task, and a file of ``work_chars`` characters the agent
    read (the session moving on). Then the first session's follow-up, with the reply it got
    sent back as agents do. Session 1 pays for the instructions; a server that keeps shared
    prefixes and several conversations serves the later sessions from the cached instructions
    and the follow-up from the first session's cache."""
    instructions = agent_prompt(chars)
    turns = []
    for k in range(n):
        read = agent_prompt(work_chars)  # its own nonce: a different file
        task = f"Task {k + 1}: apply the contributing guide below to the repository.\n\n{read}"
        turns.append([{"role": "user", "content": f"{instructions}\n\n{task}"}])
    opened = tuple(stream_once(client, model, turn, 32) for turn in turns)
    follow = [
        *turns[0],
        {"role": "assistant", "content": opened[0].reply},
        {"role": "user", "content": "Now run the tests."},
    ]
    return opened, stream_once(client, model, follow, 32)


def warm_up(client: ImpetusClient, model: str) -> None:
    """One short untimed request: first-request costs (buffers, thread pools, a lazily loaded
    model) are not any measurement's."""
    stream_once(client, model, [{"role": "user", "content": f"{uuid.uuid4().hex}: say hello."}], 8)


def _parallel(
    client: ImpetusClient, model: str, n: int, n_gen: int
) -> tuple[list[StreamStats], float]:
    results: list[StreamStats] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    gate = threading.Barrier(n + 1)  # all streams start together

    def one(i: int) -> None:
        messages = [
            {"role": "user", "content": f"{uuid.uuid4().hex} #{i}: explain recursion with code."}
        ]
        gate.wait()
        try:
            stats = stream_once(client, model, messages, n_gen, ignore_eos=True)
        except Exception as exc:  # reported after all threads end
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(stats)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    gate.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, time.perf_counter() - start


def summary_rows(bench: AgentBench) -> list[tuple[str, str]]:
    rows = []
    for depth, s in bench.first_turn.items():
        rows.append((f"first-turn TTFT @ {s.prompt_tokens or depth} tok", f"{s.ttft_s:.2f} s"))
        f = bench.follow_up[depth]
        rows.append((f"follow-up TTFT @ {f.prompt_tokens or depth} tok", f"{f.ttft_s:.2f} s"))
    for k, s in enumerate(bench.sessions):
        rows.append((f"session {k + 1} TTFT @ {s.prompt_tokens} tok", f"{s.ttft_s:.2f} s"))
    if bench.session_follow_up:
        f = bench.session_follow_up
        rows.append((f"session 1 follow-up TTFT @ {f.prompt_tokens} tok", f"{f.ttft_s:.2f} s"))
    if bench.decode:
        rows.append(("decode", f"{bench.decode.decode_tps:.1f} tok/s"))
    if bench.parallel:
        rows.append(
            (
                f"{len(bench.parallel)} streams aggregate",
                f"{bench.parallel_aggregate_tps:.1f} tok/s",
            )
        )
        rows.append(
            (f"{len(bench.parallel)} streams worst TTFT", f"{bench.parallel_worst_ttft_s:.2f} s")
        )
        rows.append(
            (
                "per-stream decode (median)",
                f"{statistics.median(s.decode_tps for s in bench.parallel):.1f} tok/s",
            )
        )
    return rows
