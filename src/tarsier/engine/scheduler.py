"""One loaded model shared by concurrent requests: a queue, a model thread, batches formed on arrival.

Requests that arrive within ``batch_wait_ms`` of the first waiting one (up to ``max_batch_size``)
run as one left-padded batch; requests whose media is still being decoded (:meth:`Scheduler.preparing`)
are waited for too, up to ``prepare_wait_ms``, so a burst is not split into a lone first request and
the rest. They run through :func:`tarsier.engine.generation.iter_tokens`. Each request gets its
own tokens as they are generated and stops at its own EOS or token limit; a finished or cancelled
row leaves the batch, so it neither holds up nor costs the others. Greedy output is the same alone
or in a batch (the engine's guarantee). When a batch fails, each unfinished row goes on alone from
the tokens it has sent: a row that fails alone ends with its own error, the others finish as they would
have.

A batch runs to its end before the next one starts: requests that arrive meanwhile wait in the
queue (no joining a batch that is already decoding).

Everything the model does happens on the one model thread: callers talk to it through
:meth:`Scheduler.submit` (a generation job) and :meth:`Scheduler.run_exclusive` (any generator, e.g.
a :class:`~tarsier.engine.chat.ChatSession` turn that reuses its own KV cache).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from tarsier.engine.generation import GenerationSettings
from tarsier.errors import TarsierError

if TYPE_CHECKING:
    import torch

    from tarsier.models.interface import FamilyModel, FamilyProcessor

T = TypeVar("T")


class QueueFull(TarsierError):
    """More requests are waiting than the queue holds; the client should retry later."""


class ShuttingDown(TarsierError):
    """The scheduler drains its work and takes no more."""


@dataclass
class Job:
    """One prompt to generate for. ``on_token`` and ``on_end`` are called on the model thread."""

    ids: list[int]
    media: Mapping[str, torch.Tensor] | None  # the processor's media inputs for the prompt (None: text only)
    settings: GenerationSettings
    on_token: Callable[[int], None]
    on_end: Callable[[str | None], None]  # None when generation ended normally, else a one-line error
    cancelled: bool = False  # set from any thread: the row leaves its batch after the current step
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class SchedulerStats:
    """Counters for /metrics; written by the model thread only."""

    batches: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # size -> number of batches
    generated_tokens: int = 0
    busy_seconds: float = 0.0  # time spent generating


class _Exclusive:
    """A generator to run alone on the model thread, its items handed to the caller's thread."""

    def __init__(self, factory: Callable[[], Iterator[Any]]):
        self.factory = factory
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.cancelled = False


class Scheduler:
    """Batches generation jobs for one model on one thread of its own."""

    def __init__(
        self,
        model: FamilyModel,
        processor: FamilyProcessor,
        *,
        max_batch_size: int = 8,
        batch_wait_ms: float = 10.0,
        max_queue: int = 64,
        prepare_wait_ms: float = 2000.0,
    ):
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
        self.stats = SchedulerStats()
        self._waiting: deque[Job | _Exclusive] = deque()
        self._running = 0  # jobs in the batch being generated and not yet ended
        self._preparing = 0  # requests announced by preparing(), not yet submitted
        self._condition = threading.Condition()
        self._accepting = True
        self._thread = threading.Thread(target=self._loop, name="tarsier-model", daemon=True)
        self._thread.start()

    # -- callers' side ------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a batch (not counting the batch being generated)."""
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Jobs waiting or being generated."""
        return len(self._waiting) + self._running

    @property
    def preparing_count(self) -> int:
        """Requests whose media is being decoded, to be submitted shortly."""
        return self._preparing

    @contextmanager
    def preparing(self) -> Iterator[None]:
        """Announce a job that will be submitted inside this block, so the next batch waits for it."""
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
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting; retry shortly")
            self._waiting.append(job)
            self._condition.notify_all()

    def run_exclusive(self, factory: Callable[[], Iterator[T]]) -> Iterator[T]:
        """Run ``factory()``'s generator on the model thread, between batches; yield its items here.

        Closing this iterator (a client that left) closes the generator on the model thread.
        """
        task = _Exclusive(factory)
        with self._condition:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            self._waiting.append(task)
            self._condition.notify_all()
        try:
            while True:
                kind, value = task.items.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            task.cancelled = True

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no more work; with ``drain``, finish what is queued and running, else cancel it."""
        with self._condition:
            self._accepting = False
            if not drain:
                for item in self._waiting:
                    item.cancelled = True
            self._condition.notify_all()
        self._thread.join(timeout)

    # -- the model thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                return
            if isinstance(work, _Exclusive):
                self._run_exclusive(work)
            else:
                self._run_batch(work)

    def _next_work(self) -> list[Job] | _Exclusive | None:
        """The next exclusive task, or a batch of jobs that arrived close together; None to stop."""
        with self._condition:
            while True:
                while self._waiting and self._waiting[0].cancelled:
                    dropped = self._waiting.popleft()
                    if isinstance(dropped, Job):
                        dropped.on_end("cancelled")
                if self._waiting:
                    break
                if not self._accepting:
                    return None
                self._condition.wait()
            if isinstance(self._waiting[0], _Exclusive):
                return self._waiting.popleft()
            first = self._waiting[0].queued_at
            while self._accepting and self._batchable() < self.max_batch_size:
                # requests still decoding their media are worth waiting for, a little longer
                deadline = first + (self.prepare_wait if self._preparing else self.batch_wait)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            batch: list[Job] = []
            while self._waiting and isinstance(self._waiting[0], Job) and len(batch) < self.max_batch_size:
                job = self._waiting.popleft()
                if job.cancelled:
                    job.on_end("cancelled")
                else:
                    batch.append(job)
            self._running = len(batch)
            return batch

    def _batchable(self) -> int:
        """Jobs at the head of the queue, up to the first exclusive task."""
        count = 0
        for item in self._waiting:
            if not isinstance(item, Job):
                break
            count += 1
        return count

    def _run_exclusive(self, task: _Exclusive) -> None:
        if task.cancelled:
            task.items.put(("end", None))
            return
        try:
            iterator = task.factory()
            try:
                for item in iterator:
                    task.items.put(("item", item))
                    if task.cancelled:
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            task.items.put(("end", None))
        except Exception as exc:  # handed to the caller, who reports it
            task.items.put(("error", exc))

    def _run_batch(self, jobs: list[Job]) -> None:
        from tarsier.engine.describer import one_line

        started = time.perf_counter()
        ended: set[int] = set()
        sent: list[list[int]] = [[] for _ in jobs]
        try:
            self._generate(jobs, ended, sent)
        except Exception as exc:
            if len(jobs) > 1:  # one row's failure ends that row only: the others go on alone
                for row, job in enumerate(jobs):
                    if row not in ended:
                        _continue_after(job, sent[row])
                        self._run_batch([job])
                return
            for row, job in enumerate(jobs):
                if row not in ended:
                    job.on_end(one_line(exc))
        else:
            for row, job in enumerate(jobs):
                if row not in ended:
                    job.on_end(None)
        finally:
            self._running = 0
            self.stats.busy_seconds += time.perf_counter() - started

    def _generate(self, jobs: list[Job], ended: set[int], sent: list[list[int]]) -> None:
        """Generate for ``jobs`` as one batch. A job ends as soon as its row does (EOS or its token
        limit), not when the batch does; ``ended`` collects those rows, ``sent`` each row's tokens."""
        from tarsier.engine.generation import iter_tokens

        # collate concatenates every media input (Tarsier2's image_grid_thw too); iter_tokens casts pixels.
        inputs = self.processor.collate([(job.ids, job.media or {}) for job in jobs])
        self.stats.batches += 1
        self.stats.batch_sizes[len(jobs)] = self.stats.batch_sizes.get(len(jobs), 0) + 1
        stop_ids = set(self.processor.eos_token_ids)
        settings = [job.settings for job in jobs]
        for step in iter_tokens(self.model, self.processor, inputs, settings, cancelled=_CancelledRows(jobs)):
            for row, token in step.items():
                job = jobs[row]
                job.on_token(token)
                sent[row].append(token)
                if (token in stop_ids and not job.settings.ignore_eos) or len(sent[row]) >= job.settings.max_new_tokens:
                    ended.add(row)
                    self._running -= 1
                    job.on_end(None)
            self.stats.generated_tokens += len(step)


def _continue_after(job: Job, sent: list[int]) -> None:
    """Make ``job`` generate the rest of its reply after the tokens it has already sent: its prompt
    then those tokens, as the batch's cache held them, so greedy replies come out unchanged. The job
    itself changes (not a copy), so a client that leaves meanwhile still cancels it."""
    if sent:
        job.ids = job.ids + sent
        job.settings = replace(job.settings, max_new_tokens=job.settings.max_new_tokens - len(sent))


class _CancelledRows:
    """The batch rows whose job was cancelled, looked up when the engine asks."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __contains__(self, row: object) -> bool:
        return isinstance(row, int) and self.jobs[row].cancelled
