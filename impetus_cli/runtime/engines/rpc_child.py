"""The child process of engines/rpc_host.py: one LlamaEngine whose layers are split across RPC
workers, driven over a socket (``multiprocessing.connection`` framing) by the serving process.

``python -m impetus_cli.runtime.engines.rpc_child FD``: the parent sends ("load", plan, info),
then calls (``("call", id, (method, args))``, answered by ("reply", id, value) or ("raise", id,
error)) and generations (``("generate", id, (tokens, sampling))``, answered by ("chunk", id,
GenerationChunk) up to the final chunk, or ("raise", ...)); ("cancel", id) and ("close", ...).
When llama.cpp aborts (a worker went away), this process ends and the parent sees the socket
close; when the parent goes away, the socket closes and this process ends.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from impetus_cli.errors import EngineError

MODULE = __name__  # what the parent runs with `python -m`
# sent once, at "ready"
PROPERTIES = ("special_tokens", "special_text", "chat_template", "saves_instructions")


def pack_error(exc: BaseException) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """An exception as plain data: ImpetusError subclasses have keyword-only arguments that
    pickle's default reconstruction loses."""
    kind = type(exc)
    state = {k: v for k, v in vars(exc).items() if isinstance(v, str | int | float | None)}
    return kind.__module__, kind.__qualname__, tuple(str(a) for a in exc.args), state


def unpack_error(packed: tuple[str, str, tuple[Any, ...], dict[str, Any]]) -> BaseException:
    module, name, args, state = packed
    try:
        kind = getattr(importlib.import_module(module), name)
        exc = kind.__new__(kind)
        BaseException.__init__(exc, *args)
        vars(exc).update(state)
        return exc  # type: ignore[no-any-return]
    except (ImportError, AttributeError, TypeError):
        return EngineError(f"{name}: {' '.join(args)}")


def _serve(conn: Connection) -> None:
    from impetus_cli.runtime.engines.llama import LlamaEngine

    _kind, plan, info = conn.recv()
    try:
        engine = LlamaEngine.load(plan, info)
    except BaseException as exc:
        conn.send(("failed", pack_error(exc)))
        return
    meta = {"n_ctx": engine.n_ctx}
    meta.update({name: getattr(engine, name) for name in PROPERTIES if hasattr(engine, name)})
    conn.send(("ready", meta))
    lock, cancels = threading.Lock(), dict[int, threading.Event]()

    def send(message: tuple[Any, ...]) -> None:
        with lock:
            conn.send(message)

    while True:
        kind, key, payload = conn.recv()
        if kind == "close":
            engine.close()
            return
        if kind == "cancel":
            cancels.get(key, threading.Event()).set()
            continue
        if kind == "generate":
            cancel = cancels.setdefault(key, threading.Event())
            work = functools.partial(_generate, engine, key, payload, cancel, send)
        else:
            work = functools.partial(_call, engine, key, payload, send)
        threading.Thread(target=_then_forget, args=(work, cancels, key), daemon=True).start()


def _then_forget(work: Any, cancels: dict[int, threading.Event], key: int) -> None:
    try:
        work()
    finally:
        cancels.pop(key, None)


def _call(engine: Any, key: int, payload: Any, send: Any) -> None:
    method, args = payload
    try:
        if method == "tokenize":
            result = engine.tokenize(args[0], special=args[1])
        else:
            attribute = getattr(engine, method)
            result = attribute(*args) if callable(attribute) else attribute
        send(("reply", key, result))
    except BaseException as exc:
        send(("raise", key, pack_error(exc)))


def _generate(engine: Any, key: int, payload: Any, cancel: threading.Event, send: Any) -> None:
    tokens, sampling, instructions = payload
    try:
        for chunk in engine.generate(tokens, sampling, cancel, instructions):
            send(("chunk", key, chunk))
    except BaseException as exc:
        send(("raise", key, pack_error(exc)))


def main(argv: Sequence[str]) -> None:
    # Ctrl-C in the terminal reaches the whole process group: the parent decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(argv[1]))
    try:
        _serve(conn)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        sys.stdout.flush()
        os._exit(0)  # llama.cpp's RPC threads must not run C++ destructors under us


if __name__ == "__main__":
    main(sys.argv)
