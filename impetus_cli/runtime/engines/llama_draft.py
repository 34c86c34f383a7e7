"""The drafts of a GGUF model's scheduler: n-gram lookups, and a draft model on its own
llama.cpp context (``--speculative MODEL``).

The draft model holds one sequence per slot of the target's context, with the same ids. Before
drafting for a slot it catches up with what the target's sequence holds (the prefix they share
stays, the rest is evaluated, one batch-sized chunk per step so a long new prompt never stalls
the other slots), then generates the draft greedily, every drafting slot in one decode per
token. What the target rejects is dropped from the draft's cache at the next catch-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import EngineError, ImpetusError
from impetus_cli.runtime.engines.common import common_prefix
from impetus_cli.runtime.engines.llama_native import llama_said
from impetus_cli.runtime.engines.speculative import CPU_STEP_MULTIPLE, Drafter, parse_mode
from impetus_cli.runtime.types import LoadPlan, ModelInfo


def make_drafter(plan: LoadPlan, info: ModelInfo, lib: Any, target_vocab: Any) -> Drafter:
    """The scheduler's drafter for ``plan``: off on models whose cache cannot drop a rejected
    draft (recurrent layers keep one state, not a position per token)."""
    mode = parse_mode(plan.speculative)
    if mode == "off" or info.recurrent_layers:
        return Drafter("off")
    multiple = CPU_STEP_MULTIPLE if plan.n_gpu_layers == 0 else 1  # the weights on the CPU
    if mode != "draft" or plan.draft is None:
        return Drafter("ngram", multiple=multiple)
    return Drafter("draft", DraftModel.load(plan, lib, target_vocab), multiple)


@dataclass(eq=False)
class _Sequence:
    tokens: list[int] = field(default_factory=list)  # what the draft's cache holds


class DraftModel:
    """A small model on its own context that drafts for the target's sequences."""

    def __init__(self, lib: Any, model: Any, ctx: Any, n_seq: int, n_batch: int):
        self.lib, self.model, self.ctx = lib, model, ctx
        self.mem = lib.llama_get_memory(ctx)
        self.n_batch = n_batch
        self.seqs = [_Sequence() for _ in range(n_seq)]
        self.batch = lib.llama_batch_init(max(n_batch, n_seq), 0, 1)
        self.greedy = lib.llama_sampler_init_greedy()

    @classmethod
    def load(cls, plan: LoadPlan, lib: Any, target_vocab: Any) -> DraftModel:
        """Load ``plan.draft`` with a context of the target's size; refused when its
        vocabulary is not the target's (its guesses would be other tokens)."""
        assert plan.draft is not None
        params = lib.llama_model_default_params()
        params.n_gpu_layers = plan.n_gpu_layers
        model = lib.llama_model_load_from_file(str(plan.draft.path).encode(), params)
        if not model:
            raise EngineError(
                f"llama.cpp could not load the draft model {plan.draft.name}.{llama_said()}"
            )
        try:
            check_vocab(lib, target_vocab, lib.llama_model_get_vocab(model), plan.draft.name)
            n_seq = max(1, plan.n_parallel)
            cparams = lib.llama_context_default_params()
            cparams.n_ctx = plan.n_ctx * n_seq
            cparams.n_batch = cparams.n_ubatch = min(plan.n_batch, plan.n_ubatch)
            cparams.n_seq_max = n_seq
            cparams.n_threads = plan.n_threads
            cparams.n_threads_batch = plan.n_threads_batch
            cparams.flash_attn_type = 1 if plan.flash_attn else 0
            cparams.swa_full = False
            cparams.kv_unified = True
            cparams.no_perf = True
            ctx = lib.llama_init_from_model(model, cparams)
            if not ctx:
                raise EngineError(
                    f"llama.cpp could not create the draft model's context.{llama_said()}"
                )
        except BaseException:
            lib.llama_model_free(model)
            raise
        return cls(lib, model, ctx, n_seq, int(cparams.n_batch))

    def draft(self, wants: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """For each (sequence id, the target's tokens, k): up to k greedy guesses; none for a
        sequence still catching up with its prompt."""
        ready = self._catch_up(wants)
        out: list[list[int]] = [[] for _ in wants]
        index = {i: at for i, at in enumerate(ready) if at is not None and wants[i][2] > 0}
        while index:
            for i, at in index.items():
                out[i].append(int(self.lib.llama_sampler_sample(self.greedy, self.ctx, at)))
            live = [i for i in index if len(out[i]) < wants[i][2]]
            if not live or not self._decode([(wants[i][0], [out[i][-1]]) for i in live]):
                break
            index = {i: n for n, i in enumerate(live)}
        return out

    def _catch_up(self, wants: list[tuple[int, list[int], int]]) -> list[int | None]:
        """Bring each sequence to the target's tokens, as far as one batch goes: for each want
        the batch index of its last token's logits, or None when it is not there yet."""
        jobs: list[tuple[int, list[int]]] = []
        ends: list[int | None] = []
        room, n = self.n_batch, 0
        for seq_id, tokens, _ in wants:
            keep = self._keep(seq_id, tokens)
            missing = tokens[keep:][: max(0, room)]
            room, n = room - len(missing), n + len(missing)
            jobs.append((seq_id, missing))
            ends.append(n - 1 if missing and keep + len(missing) == len(tokens) else None)
        if not self._decode([j for j in jobs if j[1]]):
            return [None] * len(wants)
        return ends

    def _keep(self, seq_id: int, tokens: list[int]) -> int:
        """Trim the sequence to the longest prefix of ``tokens`` it can keep (leaving at least
        the last token to evaluate, for its logits); its length."""
        seq, lib = self.seqs[seq_id], self.lib
        keep = min(common_prefix(seq.tokens, tokens), len(tokens) - 1)
        n_swa = int(lib.llama_model_n_swa(self.model))
        if (
            keep
            and n_swa > 0
            and lib.llama_memory_seq_pos_min(self.mem, seq_id) > max(0, keep - n_swa)
        ):
            keep = 0  # the window before the kept prefix is gone: start over
        if keep < len(seq.tokens):
            lib.llama_memory_seq_rm(self.mem, seq_id, keep, -1)
            del seq.tokens[keep:]
        return keep

    def _decode(self, jobs: list[tuple[int, list[int]]]) -> bool:
        """One llama_decode of ``jobs`` (sequence id, tokens), logits for each job's last
        token; False (and the sequences cleared) when llama.cpp refuses it."""
        lib, batch, n = self.lib, self.batch, 0
        for seq_id, tokens in jobs:
            seq = self.seqs[seq_id]
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n] = token, len(seq.tokens) + i
                batch.n_seq_id[n], batch.seq_id[n][0], batch.logits[n] = 1, seq_id, 0
                n += 1
            batch.logits[n - 1] = 1
        if n == 0:
            return True
        batch.n_tokens = n
        if lib.llama_decode(self.ctx, batch) != 0:
            for seq_id, _ in jobs:
                lib.llama_memory_seq_rm(self.mem, seq_id, -1, -1)
                self.seqs[seq_id].tokens.clear()
            return False
        for seq_id, tokens in jobs:
            self.seqs[seq_id].tokens.extend(tokens)
        return True

    def close(self) -> None:
        lib = self.lib
        lib.llama_sampler_free(self.greedy)
        lib.llama_batch_free(self.batch)
        lib.llama_free(self.ctx)
        lib.llama_model_free(self.model)


def check_vocab(lib: Any, target: Any, draft: Any, name: str) -> None:
    """The draft's vocabulary must be the target's: the same size (llama.cpp allows padding of
    a few tokens) and the same text for every token both have."""
    n_target, n_draft = int(lib.llama_vocab_n_tokens(target)), int(lib.llama_vocab_n_tokens(draft))
    same = abs(n_target - n_draft) <= 128 and lib.llama_vocab_type(target) == lib.llama_vocab_type(
        draft
    )
    for token in range(min(n_target, n_draft)) if same else ():
        if lib.llama_vocab_get_text(target, token) != lib.llama_vocab_get_text(draft, token):
            same = False
            break
    if not same:
        raise ImpetusError(
            f"{name} cannot draft for this model: its vocabulary is another one.",
            "Pick a smaller model of the same family (`impetus serve --speculative ngram` needs none).",
        )
