"""Continuous batching for MLX models on mlx-lm's ``BatchGenerator``.

One thread (worker.py's loop) owns the generator: admit waiting requests (each with the prompt
cache the pool picks for it, so a follow-up still evaluates only its new tokens), run one
``BatchGenerator.next()`` step (prompt chunks and one token for every sequence generating), and
turn each sequence's token into text. A finished or cancelled sequence gives its cache back to
the pool. Text, stop strings, EOS and the final counters go through the same code as the serial
path in mlx.py (mlx_stream.Reply).

Used when the KV cache is not quantized (BatchGenerator has no quantized batch cache); with
``kv_type`` q8/q4 the engine generates one request at a time instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from impetus_cli.runtime.engines.common import Health, Pending
from impetus_cli.runtime.engines.mlx_pool import CachedPrompt
from impetus_cli.runtime.engines.mlx_stream import MlxModel, Reply, seed_from
from impetus_cli.runtime.engines.worker import Worker


@dataclass(eq=False)
class Job(Pending):
    """One generation in the batch: the prompt cache it extends and its reply so far."""

    entry: CachedPrompt | None = None
    reply: Reply | None = None


class Batcher(Worker[Job]):
    """Owns a BatchGenerator in the worker loop; requests come in through ``stream``."""

    def __init__(self, mlx: MlxModel, health: Health):
        super().__init__("impetus-mlx", health)
        self.mlx = mlx
        self._gen: Any = None  # made on first use, and again after a failed step
        self._jobs: dict[int, Job] = {}  # BatchGenerator uid -> job
        self.start()

    def _generator(self) -> Any:
        if self._gen is None:
            from mlx_lm.generate import BatchGenerator

            n = max(1, self.mlx.n_parallel)
            self._gen = BatchGenerator(
                self.mlx.model, completion_batch_size=n, prefill_batch_size=n, prefill_step_size=512
            )
        return self._gen

    # -- the worker loop's hooks ---------------------------------------------------------------

    def _room(self) -> int:
        return sys.maxsize  # the generator queues what it cannot batch yet

    def _held(self) -> list[Job]:
        return list(self._jobs.values())

    def _admit(self, job: Job) -> None:
        if job.stopped:
            reply = Reply(self.mlx, job.tokens, 0, job.sampling, job.cancel, start=job.start)
            reply.finish = "cancelled"
            job.out.put(reply.final())
            return
        job.entry, cached = self.mlx.pool.take(job.tokens)
        job.reply = Reply(self.mlx, job.tokens, cached, job.sampling, job.cancel, start=job.start)
        if job.limit <= 0:
            self._finish(job, job.entry.cache)
            return
        seed_from(job.sampling)
        sampler, processors = job.reply.sampling_functions([])
        (uid,) = self._generator().insert(
            [job.tokens[cached:]],
            max_tokens=[job.limit],
            caches=[job.entry.cache],
            all_tokens=[job.tokens[:cached]],  # what processors (penalties) look back on
            samplers=[sampler],
            logits_processors=[processors],
        )
        self._jobs[uid] = job

    def _step(self) -> None:
        gen = self._generator()
        for uid, job in list(self._jobs.items()):  # cancelled or abandoned jobs leave first
            if job.stopped:
                assert job.reply is not None
                job.reply.finish = "cancelled"
                del self._jobs[uid]
                self._finish(job, gen.remove([uid], return_prompt_caches=True)[uid][0])
        if not self._jobs:
            return
        with self.mlx.lock:  # embeddings and the serial path use the model too
            _, responses = gen.next()
        for r in responses:
            found = self._jobs.get(r.uid)
            if found is None or found.reply is None:
                continue
            chunk, ended = found.reply.add(int(r.token), r.logprobs)
            if chunk is not None:
                found.out.put(chunk)
            if ended or r.finish_reason is not None:  # the generator's own end is the length
                del self._jobs[r.uid]
                cache = r.prompt_cache if r.finish_reason is not None else None
                if cache is None:
                    cache = gen.remove([r.uid], return_prompt_caches=True)[r.uid][0]
                self._finish(found, cache)

    def _let_go(self, jobs: list[Job], *, failed: bool) -> None:
        for job in jobs:
            self._jobs = {uid: j for uid, j in self._jobs.items() if j is not job}
            if job.entry is not None:
                self.mlx.pool.discard(job.entry)  # its cache is left mid-step
        if failed:
            self._drop_generator()  # whatever state it was left in goes with it

    def _loop_ended(self) -> None:
        self._drop_generator()

    # -- helpers -------------------------------------------------------------------------------

    def _finish(self, job: Job, cache: Any) -> None:
        """The cache goes back to its pool entry, holding what was fed; then the final chunk."""
        assert job.entry is not None and job.reply is not None
        self.mlx.pool.give_back(job.entry, cache, job.reply.sequence)
        job.out.put(job.reply.final())
        if job.reply.finish != "cancelled":
            self.health.recovered()

    def _drop_generator(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()
