"""One loaded model shared by concurrent requests: a queue, a model thread, continuous batching.

Requests that arrive while the model is idle are gathered for ``batch_wait_ms`` (up to
``max_batch_size``); requests whose media is still being decoded (:meth:`Scheduler.preparing`) are
waited for too, up to ``prepare_wait_ms``, so a burst is not split into a lone first request and the
rest. Requests that arrive while a batch decodes join it between two steps
(:class:`~tarsier.engine.continuous_batch.ContinuousBatch`): each gets its own tokens as they are
generated and stops at its own EOS or token limit, and a finished or cancelled row leaves at once.
A prompt whose prefix (a video's frames, or a conversation so far) is in the prefix cache is
prefilled from there. Greedy output is the same alone, batched or joined mid-decode. When a step
fails, each unfinished row goes on alone from the tokens it has sent: a row that fails alone ends
with its own error, the others finish as they would have.

Everything the model does happens on the one model thread; callers talk to it through
:meth:`Scheduler.submit`. A chat turn is a job like any other (``remember_reply`` keeps its
conversation's KV in the prefix cache for the next turn).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tarsier.engine.continuous_batch import BatchStats, ContinuousBatch, Job
from tarsier.engine.prefix_cache import PrefixCache, prefix_cache_for
from tarsier.errors import TarsierError

if TYPE_CHECKING:
    from tarsier.models.interface import FamilyModel, FamilyProcessor

__all__ = ["Job", "QueueFull", "Scheduler", "ShuttingDown"]


class QueueFull(TarsierError):
    """More requests are waiting than the queue holds; the client should retry later."""


class ShuttingDown(TarsierError):
    """The scheduler drains its work and takes no more."""


class Scheduler:
    """Runs generation jobs for one model on one thread of its own, batched continuously."""

    def __init__(
        self,
        model: FamilyModel,
        processor: FamilyProcessor,
        *,
        max_batch_size: int = 8,
        batch_wait_ms: float = 10.0,
        max_queue: int = 64,
        prepare_wait_ms: float = 2000.0,
        cache_bytes: int | None = None,
        prefills_per_step: int = 1,
        prefill_chunk: int = 0,
    ):
        """``cache_bytes`` bounds the prefix cache (None: :func:`~tarsier.engine.prefix_cache.default_budget`
        of the model's device; 0: no cache). ``prefill_chunk``: see
        :class:`~tarsier.engine.continuous_batch.ContinuousBatch` (positions of a new video's prompt
        prefilled per step while others stream; 0: a whole prompt between two steps). Measured with
        ``benchmarks/bench_engine.py`` (8 clients 1 s apart, bf16 on CPU): chunks of 2,048 halved the
        longest pause in the streams (0.88 to 0.57 s) and made the p50 time to first token 1.5x
        longer (0.89 to 1.32 s), so whole prompts are the default."""
        if max_batch_size < 1:
            raise TarsierError(f"max batch size must be at least 1, got {max_batch_size}")
        if batch_wait_ms < 0:
            raise TarsierError(f"batch wait must be 0 ms or more, got {batch_wait_ms}")
        if max_queue < 1:
            raise TarsierError(f"queue length must be at least 1, got {max_queue}")
        self.model = model
        self.processor = processor
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.prepare_wait = max(prepare_wait_ms, batch_wait_ms) / 1000
        self.max_queue = max_queue
        self.batch = ContinuousBatch(model, processor, max_batch_size=max_batch_size,
                                     prefix_cache=prefix_cache_for(cache_bytes, model.device),
                                     prefills_per_step=prefills_per_step, prefill_chunk=prefill_chunk)
        self._waiting: deque[Job] = deque()
        self._preparing = 0  # requests announced by preparing(), not yet submitted
        self._condition = threading.Condition()
        self._accepting = True
        self._thread = threading.Thread(target=self._loop, name="tarsier-model", daemon=True)
        self._thread.start()

    # -- callers' side ------------------------------------------------------------------------------
    @property
    def stats(self) -> BatchStats:
        return self.batch.stats

    @property
    def prefix_cache(self) -> PrefixCache | None:
        return self.batch.prefix_cache

    @property
    def queue_depth(self) -> int:
        """Jobs waiting to join the batch."""
        return len(self._waiting) + len(self.batch.waiting)

    @property
    def in_flight(self) -> int:
        """Jobs waiting, being prefilled a chunk per step, or being generated."""
        return self.queue_depth + (self.batch.filling is not None) + self.batch.running

    @property
    def preparing_count(self) -> int:
        """Requests whose media is being decoded, to be submitted shortly."""
        return self._preparing

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Announce a job that will be submitted inside this block, so a starting batch waits for it."""
        with self._condition:
            self._preparing += 1
        try:
            yield
        finally:
            with self._condition:
                self._preparing -= 1
                self._condition.notify_all()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFull` or :class:`ShuttingDown` instead of waiting."""
        with self._condition:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            if self.queue_depth >= self.max_queue:
                raise QueueFull(f"{self.queue_depth} requests are already waiting; retry shortly")
            self._waiting.append(job)
            self._condition.notify_all()

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no more work; with ``drain``, finish what is queued and running, else cancel what waits."""
        with self._condition:
            self._accepting = False
            if not drain:
                for job in [*self._waiting, *self.batch.waiting, *filter(None, [self.batch.filling])]:
                    job.cancelled = True
            self._condition.notify_all()
        self._thread.join(timeout)

    # -- the model thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while self._gather():
            self.batch.step()

    def _gather(self) -> bool:
        """Hand waiting jobs to the batch (after the batch wait when it is idle); False to stop."""
        with self._condition:
            while not self._waiting and not self.batch.busy():
                if not self._accepting:
                    return False
                self._condition.wait()
            if not self.batch.busy():
                first = self._waiting[0].queued_at
                while self._accepting and len(self._waiting) < self.max_batch_size:
                    # requests still decoding their media are worth waiting for, a little longer
                    deadline = first + (self.prepare_wait if self._preparing else self.batch_wait)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._condition.wait(left)
            while self._waiting:
                self.batch.add(self._waiting.popleft())
            return True
