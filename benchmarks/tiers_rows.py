"""serve_vs_peers.py's prompt-cache rows (issue 17 §1): what a server does with a conversation
that left its KV cache, measured the same way on impetus and on llama-server (run with its own
host-RAM prompt cache, `--cache-ram`, as a user would).

- returning conversation: an agent's ~first-turn-sized conversation, then ``streams`` parallel
  streams with prompts of their own take every slot, then the conversation's next turn (its
  reply sent back plus a short user turn): time to first token;
- restart: a conversation's first turn, the server stopped (SIGINT, as a user would) and started
  again, then its next turn: time to first token (llama-server starts with nothing cached);
- second session: two sessions of one agent sharing its instructions (the system prompt, as
  agents send them), each with a task and a file as long: time to first token of the second.

Each row also keeps the cold first turn's TTFT of the same run, to compare with. Prompts open
with a random nonce, so nothing from an earlier run is ever found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import peers
from impetus_cli.client import ImpetusClient
from impetus_cli.services.agentbench import agent_prompt, chars_per_token, stream_once, warm_up

LABELS = {
    "returning_ttft_s": "conversation back after {streams} streams took every slot: TTFT (s)",
    "restart_ttft_s": "next turn after a server restart: TTFT (s)",
    "session2_ttft_s": "second session, same instructions, new task: TTFT (s)",
    "tiers_cold_ttft_s": "(for scale) the same conversation's cold first turn: TTFT (s)",
    "tiers_load": "(machine) 1-minute load average while these rows ran",
}
TARGETS = {
    "returning_ttft_s": ("<= 1.0x", False),
    "restart_ttft_s": ("new tokens only", False),
    "session2_ttft_s": ("<= 1.0x", False),
    "tiers_cold_ttft_s": ("-", False),
    "tiers_load": ("-", False),
}
ASK = "List the files you would read first."
AGAIN = "Now run the tests."


def command(name: str, args: argparse.Namespace, model: Path, binary: Path | None) -> list[str]:
    """The suite's command for the server; llama-server with its RAM prompt cache spelled out
    (8 GiB, its default) and idle slots saved to it (also its default)."""
    argv = peers.command(name, args, model, binary)
    if name == "llama-server":
        argv += ["--cache-ram", "8192", "--cache-idle-slots"]
    return argv


def measure_tiers(
    name: str, argv: list[str], args: argparse.Namespace, log: Path
) -> dict[str, float]:
    """The three rows on one server: returning conversation and second session on one process,
    then the restart on two more."""
    load = os.getloadavg()[0]
    if name == "impetus":  # nothing saved by an earlier run (bounded anyway, but not measured)
        shutil.rmtree(peers.CACHE / "home" / "prompt-cache", ignore_errors=True)
    with _running(argv, log.with_suffix(".a.log")) as client:
        ratio = args.chars_per_token or chars_per_token(client, peers.MODEL)
        chars = int(args.first_tokens * ratio)
        result = _returning(client, chars, args.streams)
        result["session2_ttft_s"] = _second_session(client, chars)
    conversation = [{"role": "user", "content": f"{agent_prompt(chars)}\n\n{ASK}"}]
    with _running(argv, log.with_suffix(".b.log")) as client:
        first = stream_once(client, peers.MODEL, conversation, 32)
    with _running(argv, log.with_suffix(".c.log")) as client:
        again = stream_once(client, peers.MODEL, _next_turn(conversation, first.reply), 32)
    result["restart_ttft_s"] = again.ttft_s
    result["restart_prompt_tokens"] = float(again.prompt_tokens)
    result["tiers_load"] = (load + os.getloadavg()[0]) / 2
    return result


def _returning(client: ImpetusClient, chars: int, streams: int) -> dict[str, float]:
    model = peers.MODEL
    conversation = [{"role": "user", "content": f"{agent_prompt(chars)}\n\n{ASK}"}]
    first = stream_once(client, model, conversation, 32)
    _together(client, streams, chars // 2)
    back = stream_once(client, model, _next_turn(conversation, first.reply), 32)
    return {
        "tiers_cold_ttft_s": first.ttft_s,
        "returning_ttft_s": back.ttft_s,
        "returning_prompt_tokens": float(back.prompt_tokens),
    }


def _second_session(client: ImpetusClient, chars: int) -> float:
    instructions = {"role": "system", "content": agent_prompt(chars)}
    turns = [
        [instructions, {"role": "user", "content": f"Task {k}: {ASK}\n\n{agent_prompt(chars)}"}]
        for k in (1, 2)
    ]
    stream_once(client, peers.MODEL, turns[0], 32)
    return stream_once(client, peers.MODEL, turns[1], 32).ttft_s


def _next_turn(conversation: list[dict[str, Any]], reply: str) -> list[dict[str, Any]]:
    return [
        *conversation,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": AGAIN},
    ]


def _together(client: ImpetusClient, n: int, chars: int) -> None:
    """``n`` streams with prompts of their own, started together (they hold every slot)."""
    gate, errors = threading.Barrier(n), list[BaseException]()

    def one() -> None:
        gate.wait()
        try:
            stream_once(client, peers.MODEL, [{"role": "user", "content": agent_prompt(chars)}], 32)
        except Exception as exc:  # raised below, once every stream has ended
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class _running:
    """A server started for a with-block, warmed up, and stopped as a user stops it."""

    def __init__(self, argv: list[str], log: Path):
        self.port = peers.free_port()
        argv = [
            str(self.port) if a == "0" and argv[i - 1] == "--port" else a
            for i, a in enumerate(argv)
        ]
        self.server = peers.Server(argv, log)

    def __enter__(self) -> ImpetusClient:
        self.server.start()
        url = f"http://127.0.0.1:{self.port}"
        self.server.wait_ready(url + "/v1/models")
        client = ImpetusClient(url)
        warm_up(client, peers.MODEL)
        return client

    def __exit__(self, *exc: object) -> None:
        started = time.perf_counter()
        self.server.stop()
        self.stop_s = time.perf_counter() - started
