"""Continuous batching for MLX models on mlx-lm's ``BatchGenerator``.

One thread owns the generator and loops: admit waiting requests (each with the prompt cache the
engine's pool picks for it, so a follow-up still evaluates only its new tokens), run one
``BatchGenerator.next()`` step (prompt chunks and one token for every sequence generating), and
turn each sequence's token into text. A finished or cancelled sequence gives its cache back to
the pool. Text, stop strings, EOS and the final counters go through the same code as the serial
path in mlx.py.

Used when the KV cache is not quantized (BatchGenerator has no quantized batch cache); with
``kv_type`` q8/q4 the engine generates one request at a time instead.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from impetus_cli.errors import EngineError
from impetus_cli.runtime.types import GenerationChunk, SamplingParams


@dataclass(eq=False)
class Job:
    tokens: list[int]
    sampling: SamplingParams
    cancel: threading.Event
    limit: int
    out: queue.SimpleQueue[GenerationChunk | BaseException] = field(
        default_factory=queue.SimpleQueue
    )
    abandoned: bool = False
    entry: Any = None  # the pool's _Cached this job extends
    cached: int = 0
    stream: Any = None  # mlx._Stream
    decoder: Any = None
    stops: Any = None
    start: float = field(default_factory=time.perf_counter)

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set() or self.abandoned

    def abandon(self) -> None:
        self.abandoned = True


class Batcher:
    def __init__(self, engine: Any):
        self.e = engine  # the MlxEngine: model, pool, _accept/_chunk/_final, lock
        self._cv = threading.Condition()
        self._waiting: list[Job] = []
        self._jobs: dict[int, Job] = {}  # BatchGenerator uid -> job
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="impetus-mlx", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closed:
                raise EngineError("The model was unloaded.", "Send the request again.")
            self._waiting.append(job)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _loop(self) -> None:
        from mlx_lm.generate import BatchGenerator

        n = max(1, self.e.plan.n_parallel)
        gen = BatchGenerator(
            self.e._model, completion_batch_size=n, prefill_batch_size=n, prefill_step_size=512
        )
        try:
            while True:
                with self._cv:
                    while not (self._waiting or self._jobs or self._closed):
                        self._cv.wait()
                    if self._closed:
                        break
                    admit, self._waiting = self._waiting, []
                for job in admit:
                    self._admit(gen, job)
                self._drop_stopped(gen)
                if self._jobs:
                    self._step(gen)
        finally:
            gone = EngineError("The model was unloaded while generating.", "Send it again.")
            for job in [*self._jobs.values(), *self._waiting]:
                job.out.put(gone)
            gen.close()

    def _admit(self, gen: Any, job: Job) -> None:
        import mlx.core as mx

        from impetus_cli.runtime.engines.mlx import _Stream
        from impetus_cli.runtime.stops import StopMatcher

        if job.stopped:
            job.stream = _Stream(finish="cancelled")
            job.out.put(self.e._final(job.stream, "", job.tokens, 0, job.start))
            return
        with self.e._lock:
            job.entry, job.cached = self.e._choose_cache(job.tokens)
            job.entry.busy = True
        self.e.last_cached_tokens = job.cached
        self.e.last_evaluated_tokens = len(job.tokens) - job.cached
        job.stream, job.stops = _Stream(), StopMatcher(job.sampling.stop)
        job.decoder = self.e._decoder(job.tokens)
        if job.limit <= 0:
            self._finish(job, job.entry.cache)
            return
        s = job.sampling
        mx.random.seed(s.seed if s.seed is not None else int.from_bytes(os.urandom(4)))
        sampler, processors = self.e._processors(s, [], job.stream)
        (uid,) = gen.insert(
            [job.tokens[job.cached :]],
            max_tokens=[job.limit],
            caches=[job.entry.cache],
            all_tokens=[job.tokens[: job.cached]],  # what processors (penalties) look back on
            samplers=[sampler],
            logits_processors=[processors],
        )
        self._jobs[uid] = job

    def _drop_stopped(self, gen: Any) -> None:
        """Cancelled or abandoned jobs leave the batch; their caches go back to the pool."""
        for uid, job in list(self._jobs.items()):
            if job.stopped:
                job.stream.finish = "cancelled"
                cache = gen.remove([uid], return_prompt_caches=True)[uid][0]
                del self._jobs[uid]
                self._finish(job, cache)

    def _step(self, gen: Any) -> None:
        try:
            with self.e._lock:  # embeddings use the model too
                _, responses = gen.next()
        except (ValueError, RuntimeError) as exc:
            error = EngineError(f"MLX generation failed: {exc}")
            for uid, failed in list(self._jobs.items()):
                gen.remove([uid])
                failed.entry.busy = False
                failed.out.put(error)
            self._jobs.clear()
            return
        for r in responses:
            found = self._jobs.get(r.uid)
            if found is None:
                continue
            job = found
            token = int(r.token)
            if not self.e._accept(job.stream, token, r.logprobs, job.sampling, job.cancel):
                self._end(gen, job, r)  # EOS or cancel
                continue
            text, stopped = job.stops.feed(job.decoder.add(token))
            if text:
                job.out.put(self.e._chunk(job.stream, text))
            if stopped:
                job.stream.finish = "stop"
                self._end(gen, job, r)
            elif r.finish_reason is not None:
                job.stream.finish = "length"
                self._end(gen, job, r)

    def _end(self, gen: Any, job: Job, response: Any) -> None:
        del self._jobs[response.uid]
        if response.finish_reason is not None:
            cache = response.prompt_cache
        else:
            cache = gen.remove([response.uid], return_prompt_caches=True)[response.uid][0]
        self._finish(job, cache)

    def _finish(self, job: Job, cache: Any) -> None:
        """The cache goes back to its pool entry, holding what was fed; then the final chunk."""
        from mlx_lm.models.cache import trim_prompt_cache

        sequence = job.tokens + job.stream.fed
        with self.e._lock:
            offsets = [int(getattr(c, "offset", len(sequence))) for c in cache]
            held = min(offsets, default=0)
            if held > len(sequence):  # a step computed ahead of what was read
                trim_prompt_cache(cache, held - len(sequence))
                held = len(sequence)
            job.entry.cache, job.entry.tokens = cache, sequence[:held]
            job.entry.busy = False
        tail, _ = job.stops.feed(job.decoder.finish())
        final = self.e._final(
            job.stream, tail + job.stops.flush(), job.tokens, job.cached, job.start
        )
        job.out.put(final)
