"""Describing many videos: background frame decoding, continuous batching, per-item errors.

:class:`Describer` is what ``tarsier describe``, ``tarsier caption``, ``tarsier bench run`` and the Ray
model actors use. Worker threads decode and preprocess upcoming videos (PyAV and PIL release the GIL)
while the model generates; items run through one :class:`~tarsier.engine.continuous_batch.ContinuousBatch`
(a finished row's place is refilled at once), the same media's prompts together, so a video asked
several questions is decoded, encoded and prefilled once (frames cache and prefix cache). Results
come back in request order, and an item that fails (bad file, bad prompt) carries its one-line error
instead of stopping the job.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from tarsier.checkpoints import DEFAULT_MODEL
from tarsier.engine.continuous_batch import ContinuousBatch, Job
from tarsier.engine.frames_cache import FramesCache
from tarsier.engine.generation import TextPieces
from tarsier.engine.loading import load_pretrained
from tarsier.engine.prefix_cache import prefix_cache_for
from tarsier.engine.settings import GenerationSettings
from tarsier.errors import TarsierError, one_line
from tarsier.media import SampledFrames
from tarsier.models.interface import FamilyModel, FamilyProcessor
from tarsier.models.processing_common import MediaItem
from tarsier.prompting import default_prompt

# Items are generated in windows of this many batches' worth, each video's prompts together.
GROUPING_WINDOW = 2


@dataclass
class DescribeRequest:
    """One video (or image, frame folder, list of frame files) and the question about it."""

    key: str
    media: MediaItem
    prompt: str | None = None  # None: the reference default for the media kind
    start_time: float | None = None
    end_time: float | None = None
    n_frames: int | None = None  # None: the processor's frame count


@dataclass
class DescribeResult:
    key: str
    text: str | None
    error: str | None
    prompt: str | None
    frame_indices: list[int] = field(default_factory=list)
    total_frames: int | None = None
    decode_seconds: float = 0.0
    generate_seconds: float = 0.0  # for the whole batch this item was generated in

    @property
    def seconds(self) -> float:
        return self.decode_seconds + self.generate_seconds


@dataclass
class PreparedRequest:
    """A request with its frames decoded and its prompt tokenised, ready for a batch (or its error)."""

    request: DescribeRequest
    prompt: str | None = None
    ids: list[int] = field(default_factory=list)
    media_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values (+ image_grid_thw)
    frame_indices: list[int] = field(default_factory=list)
    total_frames: int | None = None
    decode_seconds: float = 0.0
    error: str | None = None
    frames: SampledFrames | None = None  # what media_inputs were made from: the frames cache keys them once

    def result(self, text: str | None = None, error: str | None = None, generate_seconds: float = 0.0) -> DescribeResult:
        return DescribeResult(
            key=self.request.key,
            text=text,
            error=error or self.error,
            prompt=self.prompt,
            frame_indices=self.frame_indices,
            total_frames=self.total_frames,
            decode_seconds=self.decode_seconds,
            generate_seconds=generate_seconds,
        )


class Describer:
    """Generates descriptions for a stream of requests, batching those that decode cleanly."""

    def __init__(
        self,
        model: FamilyModel,
        processor: FamilyProcessor,
        generation: GenerationSettings | None = None,
        batch_size: int = 1,
        num_workers: int = 2,
        cache_bytes: int | None = None,
    ):
        """``cache_bytes`` bounds the prefix cache (None: :func:`~tarsier.engine.prefix_cache.default_budget`
        of the model's device; 0: none, every prompt prefilled whole)."""
        if batch_size < 1:
            raise TarsierError(f"batch size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise TarsierError(f"num_workers must be >= 0, got {num_workers}")
        self.model = model
        self.processor = processor
        self.generation = generation or GenerationSettings()
        self.batch_size = batch_size
        self.num_workers = num_workers
        prefix_cache = prefix_cache_for(cache_bytes, model.device)
        # Offline work has no streaming rows to keep moving: a finished row's place is refilled at once.
        self.batch = ContinuousBatch(model, processor, max_batch_size=batch_size, prefills_per_step=batch_size,
                                     prefix_cache=prefix_cache)
        self.frames_cache = FramesCache() if prefix_cache is not None else None

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_n_frames: int | None = None,
        batch_size: int = 1,
        num_workers: int = 2,
        generation: GenerationSettings | None = None,
        progress: bool = True,
        compile: bool = False,
        cache_bytes: int | None = None,
    ) -> Describer:
        loaded, processor = load_pretrained(model, device=device, dtype=dtype, max_n_frames=max_n_frames, progress=progress,
                                            compile=compile)
        return cls(loaded, processor, generation=generation, batch_size=batch_size, num_workers=num_workers,
                   cache_bytes=cache_bytes)

    def prepare(self, request: DescribeRequest) -> PreparedRequest:
        """Decode, sample and preprocess one request (runs in a worker thread)."""
        return prepare_request(self.processor, request, self.frames_cache)

    def stream(self, request: DescribeRequest) -> Iterator[str]:
        """Yield the description of one request piece by piece as it is generated (closing the
        iterator, or Ctrl-C, stops it after the current step)."""
        prepared = self.prepare(request)
        if prepared.error:
            raise TarsierError(prepared.error)
        pieces, ends = TextPieces(self.processor.tokenizer), []
        job = Job(prepared.ids, prepared.media_inputs or None, self.generation, pieces.add, ends.append)
        self.batch.add(job)
        try:
            while not ends:
                self.batch.step()
                yield from pieces.take()
        finally:
            if not ends:  # stopped early: the row leaves at the next step
                job.cancelled = True
                while self.batch.busy():
                    self.batch.step()
        if ends[0] is not None:
            raise TarsierError(ends[0])
        pieces.end()
        yield from pieces.take()

    def run(self, requests: Iterable[DescribeRequest]) -> Iterator[DescribeResult]:
        """Results in request order; media for upcoming batches is prepared in the background."""
        if self.num_workers == 0:
            yield from self._batched(self.prepare(request) for request in requests)
            return
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="tarsier-media")
        try:
            yield from self._batched(self._prefetch(pool, requests))
        finally:  # on Ctrl-C or an abandoned run, queued decodes are dropped rather than finished
            pool.shutdown(wait=True, cancel_futures=True)

    def _prefetch(self, pool: ThreadPoolExecutor, requests: Iterable[DescribeRequest]) -> Iterator[PreparedRequest]:
        window: deque[Future[PreparedRequest]] = deque()
        ahead = self.batch_size * GROUPING_WINDOW + self.num_workers  # the next window decodes during this one
        pending = iter(requests)
        for request in pending:
            window.append(pool.submit(self.prepare, request))
            if len(window) >= ahead:
                break
        while window:
            prepared = window.popleft().result()
            next_request = next(pending, None)
            if next_request is not None:
                window.append(pool.submit(self.prepare, next_request))
            yield prepared

    def _batched(self, prepared_items: Iterable[PreparedRequest]) -> Iterator[DescribeResult]:
        """Results in request order, generated a window of a few batches' worth at a time (a wider
        window would bring more of a video's prompts together but hold results back longer)."""
        window_size = self.batch_size * (GROUPING_WINDOW if self.batch_size > 1 else 1)
        window: list[PreparedRequest] = []
        items = iter(prepared_items)
        for prepared in items:
            window.append(prepared)
            if sum(item.error is None for item in window) == window_size:
                upcoming = next(items, None)  # already prepared in the background, as a rule
                yield from self._generate_window(window, upcoming)
                window = [] if upcoming is None else [upcoming]
        if window:
            yield from self._generate_window(window)

    def cache_summary(self) -> str | None:
        """One line on what the caches saved (None without a prefix cache)."""
        cache = self.batch.prefix_cache
        if cache is None:
            return None
        stats = cache.stats
        return (f"prefix cache: {stats.hits} hits, {stats.misses} misses ({stats.hit_rate:.0%}), "
                f"{stats.reused_positions:,} prompt positions reused, {stats.prefilled_positions:,} prefilled, "
                f"{cache.nbytes / (1 << 30):.2f} of {cache.budget_bytes / (1 << 30):.2f} GB held, "
                f"{stats.evictions} evictions; frames cache: {self.frames_cache.stats.hits} hits, "
                f"{self.frames_cache.stats.misses} misses")

    def _media_key(self, item: PreparedRequest) -> str | None:
        """The prefix cache's key of the item's media, hashed once per cached frames object. Hashed
        here, on the model's thread: hashed in the media threads, decoding later ran ~7% slower
        (measured in one process, alternating; the cause is not known)."""
        if self.frames_cache is None or not item.media_inputs or item.frames is None:
            return None
        return self.frames_cache.media_key(item.frames, item.media_inputs)

    def describe_prepared(self, items: list[PreparedRequest]) -> list[DescribeResult]:
        """Results for already prepared items, in their order (errors pass through)."""
        return list(self._generate_window(items))

    def _generate_window(self, window: list[PreparedRequest], upcoming: PreparedRequest | None = None
                         ) -> Iterator[DescribeResult]:
        """Results of a window of prepared items, in their order. The items run through one
        continuous batch (a finished row's place goes to the next item at once), the same media's
        items one after another, so each video is prefilled once and its later prompts reuse it.
        ``upcoming`` is the next window's first item: its media's prefix is kept for it."""
        ready = grouped_by_media([item for item in window if item.error is None], lambda item: item.request.media)
        identities = [_media_identity(item.request.media) for item in ready]
        outcomes: dict[int, tuple[list[int], list[str | None]]] = {}
        started = time.perf_counter()
        # A prefix is kept when another item here or the next window's first uses the same media.
        uses = Counter(identities)
        if upcoming is not None and upcoming.error is None:
            uses[_media_identity(upcoming.request.media)] += 1
        for item, identity in zip(ready, identities):
            tokens: list[int] = []
            ends: list[str | None] = []
            outcomes[id(item)] = (tokens, ends)
            self.batch.add(Job(item.ids, item.media_inputs or None, self.generation, tokens.append, ends.append,
                               media_key=self._media_key(item), keep_prefix=uses[identity] > 1))
        while self.batch.busy():
            self.batch.step()
        seconds = time.perf_counter() - started
        for item in window:
            if item.error is not None:
                yield item.result()
                continue
            tokens, ends = outcomes[id(item)]
            error = ends[0] if ends else "generation ended without a result"
            text = None if error else self.processor.decode(tokens, skip_special_tokens=True)
            yield item.result(text, error, seconds)


def prepare_request(
    processor: FamilyProcessor, request: DescribeRequest, frames_cache: FramesCache | None = None
) -> PreparedRequest:
    """Decode, sample and preprocess one request; a failure is recorded on it, not raised.

    Needs only the processor, so it runs wherever media is (worker threads, or Ray's CPU tasks).
    With ``frames_cache``, media sampled before with the same settings is not decoded again.
    """
    started = time.perf_counter()
    prepared = PreparedRequest(request=request, prompt=request.prompt)
    try:
        def load() -> SampledFrames:
            return processor.load_media(request.media, request.n_frames, request.start_time, request.end_time)

        window = (request.n_frames, request.start_time, request.end_time)
        frames = load() if frames_cache is None else frames_cache.frames(request.media, window, load)
        prepared.prompt = request.prompt if request.prompt is not None else default_prompt(frames.kind)
        prepared.ids, prepared.media_inputs = processor.encode_item(prepared.prompt, frames)
        if frames_cache is not None:
            prepared.frames = frames
        prepared.frame_indices, prepared.total_frames = list(frames.indices), frames.total_frames
    except Exception as exc:  # recorded per item; the job goes on
        prepared.error = one_line(exc)
    prepared.decode_seconds = time.perf_counter() - started
    return prepared


@functools.lru_cache(maxsize=2)
def _cached_describer(model: str, device: str | None, dtype: str | None, max_n_frames: int | None) -> Describer:
    return Describer.from_pretrained(model, device=device, dtype=dtype, max_n_frames=max_n_frames, num_workers=0)


def describe(
    media: MediaItem,
    model: str = DEFAULT_MODEL,
    prompt: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    max_n_frames: int | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    start_time: float | None = None,
    end_time: float | None = None,
) -> str:
    """Describe one video/image in a single call; the loaded model is kept for the next call."""
    describer = _cached_describer(str(model), device, dtype, max_n_frames)
    describer.generation = GenerationSettings(max_new_tokens, temperature, top_p)
    request = DescribeRequest(key="0", media=media, prompt=prompt, start_time=start_time, end_time=end_time)
    result = next(describer.run([request]))
    if result.error:
        raise TarsierError(result.error)
    return result.text or ""


T = TypeVar("T")


def grouped_by_media(items: list[T], media_of: Callable[[T], MediaItem] = lambda request: request.media) -> list[T]:
    """``items`` reordered so those about the same media come together (media in order of first
    appearance, items in their order within one): a video's later questions then find its prefix
    cached, and its frames decoded."""
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(_media_identity(media_of(item)), len(first_seen))
    return sorted(items, key=lambda item: first_seen[_media_identity(media_of(item))])


def _media_identity(media: MediaItem) -> str:
    """What groups requests about the same media (paths as written; media in memory by object)."""
    if isinstance(media, (str, os.PathLike)):
        return os.fspath(media)
    if isinstance(media, (list, tuple)) and all(isinstance(m, (str, os.PathLike)) for m in media):
        return "\n".join(os.fspath(m) for m in media)
    return f"<object {id(media)}>"
