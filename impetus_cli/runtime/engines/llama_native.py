"""What sits right on llama-cpp-python's ctypes bindings: importing them with llama.cpp's log
quiet (its last warnings kept to explain failures), the handle on a loaded context that the
scheduler and the caches work with, and one request's C sampler chain."""

from __future__ import annotations

import collections
import ctypes
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from impetus_cli.errors import EngineError, ImpetusError
from impetus_cli.runtime.types import Dry, SamplingParams

_LOG_CALLBACK: Any = None  # keeps the ctypes callback alive for the life of the process
RECENT_ERRORS: collections.deque[str] = collections.deque(maxlen=8)  # for load error messages
_PIECE_BUFFERS = threading.local()  # one per thread: the decode thread and readers share a vocab


def load_lib() -> Any:
    """The bindings, imported on first use (DESIGN.md rule 2) with llama.cpp's logging quiet."""
    global _LOG_CALLBACK
    # llama.cpp's CPU threads meet at a barrier for every step of the graph, through OpenMP.
    # libgomp's default spins a waiting thread a long time before it sleeps: when another
    # process wants the same cores, a decode step then waits for descheduled spinners and runs
    # many times slower (BENCHMARKS.md, "Decode beside other work"). A short spin keeps the
    # speed of a quiet machine and yields the cores under contention. libgomp reads it once,
    # when llama.cpp's CPU backend loads; a value the user set wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
    try:
        import llama_cpp.llama_cpp as lib
    except ImportError as exc:
        from impetus_cli.errors import BackendUnavailable

        raise BackendUnavailable(
            "llama-cpp-python is not installed.", "Run `make setup` (it compiles llama.cpp)."
        ) from exc
    if _LOG_CALLBACK is None:
        verbose = os.environ.get("IMPETUS_DEBUG") == "1"

        def log(level: int, text: bytes, _user: Any) -> None:
            if verbose:
                os.write(2, text)
            if level >= 3 and text:  # GGML_LOG_LEVEL_WARN and ERROR: kept to explain failures
                RECENT_ERRORS.append(text.decode("utf-8", "replace").strip())

        _LOG_CALLBACK = lib.llama_log_callback(log)
        lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        lib.llama_backend_init()
    return lib


def amx_in_build(lib: Any) -> bool:
    """Whether this llama.cpp build multiplies quantized matrices with Intel AMX tiles."""
    return b"AMX_INT8 = 1" in (lib.llama_print_system_info() or b"")


def extra_buffers_allowed(lib: Any) -> bool:
    """Whether weights may go to llama.cpp's extra CPU buffer types (AMX, repacked layouts).

    Not on builds with AMX, unless IMPETUS_LLAMA_AMX=1: their tile kernels load a tile
    configuration the compiler may optimise away, and the first tile instruction then kills
    the process with SIGILL (ggml-org/llama.cpp#26954; seen here on a Xeon with GCC 12). The
    repacked layouts go with them: llama.cpp has one switch for both."""
    return not amx_in_build(lib) or os.environ.get("IMPETUS_LLAMA_AMX") == "1"


def llama_said() -> str:
    """llama.cpp's recent warnings and errors, for the message of the error we raise."""
    said = "; ".join(line for line in RECENT_ERRORS if any(c.isalpha() for c in line))
    RECENT_ERRORS.clear()
    return f" llama.cpp said: {said}" if said else ""


@dataclass(frozen=True)
class LlamaContext:
    """A loaded model's context as its users see it: the bindings, the context and its memory
    (the KV cache), the vocabulary, and the sliding window of the model's window layers (0:
    none). The engine owns and frees them; the scheduler and the caches only use them."""

    lib: Any
    ctx: Any
    mem: Any
    vocab: Any
    n_vocab: int
    n_swa: int

    def piece(self, token: int, special: bool = False) -> bytes:
        """One token's text as bytes (a byte token is a piece of a character); any thread.
        Control tokens render as "" unless ``special``."""
        buf = getattr(_PIECE_BUFFERS, "buf", None)
        if buf is None:
            buf = _PIECE_BUFFERS.buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, big, -n, 0, special)
            return big.raw[:n]
        return buf.raw[:n]

    def token_ids(self, texts: tuple[str, ...]) -> frozenset[int]:
        """The tokens that spell each of ``texts`` alone (a model's markers, which are often
        control tokens): a reply renders these, so its parser sees them."""
        found = set()
        for text in texts:
            data = text.encode()
            buf = (ctypes.c_int32 * 8)()
            n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, 8, False, True)
            if n == 1:
                found.add(int(buf[0]))
        return frozenset(found)

    def text(self, token: int) -> str:
        """A token's text as the vocabulary spells it (control tokens too); "" for none (-1)."""
        if token < 0:
            return ""
        return (self.lib.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")


class Sampler:
    """One request's C sampler chain. A grammar is kept out of the chain and checked only on
    the token the chain picked (llama.cpp's own server does the same): applying it to every
    token of a large vocabulary first is slow; the full pass runs only when the pick is
    rejected."""

    def __init__(
        self,
        lib: Any,
        vocab: Any,
        n_vocab: int,
        s: SamplingParams,
        prompt: Sequence[int],
        context: int = 0,
    ):
        """``context``: the most tokens the sequence can reach (DRY's window of -1)."""
        self.lib, self.n_vocab = lib, n_vocab
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self.grammar: Any = None
        if s.grammar:
            self.grammar = lib.llama_sampler_init_grammar(vocab, s.grammar.encode(), b"root")
            if not self.grammar:
                self.free()
                raise ImpetusError(
                    "The response format could not be compiled to a grammar." + llama_said(),
                    param="response_format",
                )
        add = lambda smpl: lib.llama_sampler_chain_add(self.chain, smpl)  # noqa: E731
        if s.logit_bias:
            items = (lib.llama_logit_bias * len(s.logit_bias))()
            for i, (tok, bias) in enumerate(s.logit_bias.items()):
                items[i].token, items[i].bias = int(tok), float(bias)
            add(lib.llama_sampler_init_logit_bias(n_vocab, len(s.logit_bias), items))
        if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
            pen = lib.llama_sampler_init_penalties(
                n_vocab, 64, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
            )
            for token in prompt[-64:]:  # the penalty window sees the end of the prompt
                lib.llama_sampler_accept(pen, token)
            add(pen)
        if s.dry and s.dry.multiplier:
            add(self._dry(vocab, s.dry, prompt, context))
        if s.temperature <= 0:
            add(lib.llama_sampler_init_greedy())
        else:
            add(lib.llama_sampler_init_top_k(s.top_k))
            if s.typical_p < 1.0:
                add(lib.llama_sampler_init_typical(s.typical_p, 1))
            add(lib.llama_sampler_init_top_p(s.top_p, 1))
            add(lib.llama_sampler_init_min_p(s.min_p, 1))
            add(lib.llama_sampler_init_temp(s.temperature))
            seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
            add(lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self.logit_bias = dict(s.logit_bias or {})
        self._one = (lib.llama_token_data * 1)()
        self._one_arr = lib.llama_token_data_array(self._one, 1, -1, False)

    def _dry(self, vocab: Any, dry: Dry, prompt: Sequence[int], context: int) -> Any:
        """llama.cpp's DRY sampler (llama-server's order: after the penalties), having seen the
        end of the prompt, as the penalties have."""
        reach = max(context, len(prompt))  # no window beyond what the sequence can hold
        last_n = reach if dry.last_n < 0 else min(dry.last_n, reach)
        breakers = (ctypes.c_char_p * max(1, len(dry.breakers)))(
            *(b.encode() for b in dry.breakers)
        )
        smpl = self.lib.llama_sampler_init_dry(
            vocab, dry.multiplier, dry.base, dry.allowed_length, last_n, breakers,
            len(dry.breakers),
        )  # fmt: skip
        for token in prompt[-last_n:] if last_n else ():
            self.lib.llama_sampler_accept(smpl, token)
        return smpl

    def sample(self, ctx: Any, index: int = -1) -> int:
        """The chain's pick from the logits of batch position ``index`` (-1: the last)."""
        token = int(self.lib.llama_sampler_sample(self.chain, ctx, index))
        if self.grammar is not None:
            if not self._grammar_allows(token):
                token = self._resample_with_grammar(ctx, index)
            self.lib.llama_sampler_accept(self.grammar, token)
        return token

    def logprobs(
        self, ctx: Any, index: int, token: int, top: int
    ) -> tuple[float, tuple[tuple[int, float], ...]]:
        """``token``'s log-probability and the ``top`` best alternatives, from the logits at
        ``index`` with the logit bias applied (before temperature and truncation)."""
        import numpy as np

        raw = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(ctx, index), (self.n_vocab,))
        logits = raw.astype(np.float64)
        for tok, bias in self.logit_bias.items():
            if 0 <= tok < self.n_vocab:
                logits[tok] += bias
        peak = logits.max()
        logits -= peak + math.log(float(np.exp(logits - peak).sum()))
        best: tuple[tuple[int, float], ...] = ()
        if top > 0:
            ids = np.argpartition(-logits, top - 1)[:top]
            ids = ids[np.argsort(-logits[ids], kind="stable")]
            best = tuple((int(i), float(logits[i])) for i in ids)
        return float(logits[token]), best

    def _grammar_allows(self, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        self._one_arr.selected = -1
        self.lib.llama_sampler_apply(self.grammar, ctypes.byref(self._one_arr))
        return not math.isinf(self._one[0].logit)

    def _resample_with_grammar(self, ctx: Any, index: int) -> int:
        """The full pass: every candidate through the grammar, then the chain's choice."""
        import numpy as np

        lib = self.lib
        dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        cands = np.empty(self.n_vocab, dtype=dtype)
        cands["id"] = np.arange(self.n_vocab, dtype=np.int32)
        cands["logit"] = np.ctypeslib.as_array(
            lib.llama_get_logits_ith(ctx, index), shape=(self.n_vocab,)
        )
        cands["p"] = 0.0
        data = cands.ctypes.data_as(lib.llama_token_data_p)
        arr = lib.llama_token_data_array(data, self.n_vocab, -1, False)
        lib.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        lib.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if arr.selected < 0:
            raise EngineError("The grammar allows no token here.", param="response_format")
        return int(arr.data[arr.selected].id)

    def free(self) -> None:
        if self.grammar is not None:
            self.lib.llama_sampler_free(self.grammar)
        self.lib.llama_sampler_free(self.chain)
        self.grammar = self.chain = None
