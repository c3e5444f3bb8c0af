"""Describing many videos: background frame decoding, batched generation, per-item errors.

:class:`Describer` is what ``tarsier describe``, ``tarsier caption`` and ``tarsier bench run`` use.
Worker threads decode and preprocess upcoming videos (PyAV and PIL release the GIL) while the
model generates for the current batch; results come back in request order, and an item that
fails (bad file, bad prompt) carries its one-line error instead of stopping the job.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from tarsier.checkpoints import DEFAULT_MODEL
from tarsier.engine.generation import GenerationSettings, generate_text, stream_text
from tarsier.engine.loading import load_pretrained
from tarsier.errors import TarsierError
from tarsier.models.interface import FamilyModel, FamilyProcessor
from tarsier.models.processing_common import MediaItem
from tarsier.prompting import default_prompt

# Batches are formed from this many batches' worth of prepared items, sorted by prompt length.
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


def one_line(exc: BaseException) -> str:
    """An exception as a single line for a result record."""
    text = str(exc) if isinstance(exc, TarsierError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


class Describer:
    """Generates descriptions for a stream of requests, batching those that decode cleanly."""

    def __init__(
        self,
        model: FamilyModel,
        processor: FamilyProcessor,
        generation: GenerationSettings | None = None,
        batch_size: int = 1,
        num_workers: int = 2,
    ):
        if batch_size < 1:
            raise TarsierError(f"batch size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise TarsierError(f"num_workers must be >= 0, got {num_workers}")
        self.model = model
        self.processor = processor
        self.generation = generation or GenerationSettings()
        self.batch_size = batch_size
        self.num_workers = num_workers

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
    ) -> Describer:
        loaded, processor = load_pretrained(model, device=device, dtype=dtype, max_n_frames=max_n_frames, progress=progress,
                                            compile=compile)
        return cls(loaded, processor, generation=generation, batch_size=batch_size, num_workers=num_workers)

    def prepare(self, request: DescribeRequest) -> PreparedRequest:
        """Decode, sample and preprocess one request (runs in a worker thread)."""
        return prepare_request(self.processor, request)

    def stream(self, request: DescribeRequest) -> Iterator[str]:
        """Yield the description of one request piece by piece as it is generated."""
        prepared = self.prepare(request)
        if prepared.error:
            raise TarsierError(prepared.error)
        yield from stream_text(self.model, self.processor, self._inputs([prepared]), self.generation)

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
        """Batches of similar prompt length (so left padding stays small), results in request order.

        Items are sorted by length within a window of a few batches; a wider window would pad less
        but hold results back longer.
        """
        window_size = self.batch_size * (GROUPING_WINDOW if self.batch_size > 1 else 1)
        window: list[PreparedRequest] = []
        for prepared in prepared_items:
            window.append(prepared)
            if sum(item.error is None for item in window) == window_size:
                yield from self._generate_window(window)
                window = []
        if window:
            yield from self._generate_window(window)

    def describe_prepared(self, items: list[PreparedRequest]) -> list[DescribeResult]:
        """Results for already prepared items, in their order (batched by prompt length; errors pass through)."""
        return list(self._generate_window(items))

    def _generate_window(self, window: list[PreparedRequest]) -> Iterator[DescribeResult]:
        ready = sorted((item for item in window if item.error is None), key=lambda item: len(item.ids))
        results: dict[int, DescribeResult] = {}
        for start in range(0, len(ready), self.batch_size):
            group = ready[start : start + self.batch_size]
            results.update(zip(map(id, group), self._generate(group)))
        for item in window:
            yield results[id(item)] if item.error is None else item.result()

    def _generate(self, ready: list[PreparedRequest]) -> list[DescribeResult]:
        """Results of one batch; a failure is pinned on the item(s) that cause it."""
        texts: dict[int, str] = {}
        errors: dict[int, str] = {}
        started = time.perf_counter()
        try:
            for item, text in zip(ready, self._generate_batch(ready)):
                texts[id(item)] = text
        except Exception as exc:
            if len(ready) == 1:
                errors[id(ready[0])] = one_line(exc)
            else:  # isolate the failing item(s) by retrying one at a time
                for item in ready:
                    try:
                        texts[id(item)] = self._generate_batch([item])[0]
                    except Exception as item_exc:
                        errors[id(item)] = one_line(item_exc)
        seconds = time.perf_counter() - started
        return [item.result(texts.get(id(item)), errors.get(id(item)), seconds) for item in ready]

    def _inputs(self, items: list[PreparedRequest]) -> dict[str, torch.Tensor]:
        inputs = self.processor.collate([(item.ids, item.media_inputs) for item in items])
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def _generate_batch(self, items: list[PreparedRequest]) -> list[str]:
        return generate_text(self.model, self.processor, self._inputs(items), self.generation)


def prepare_request(processor: FamilyProcessor, request: DescribeRequest) -> PreparedRequest:
    """Decode, sample and preprocess one request; a failure is recorded on it, not raised.

    Needs only the processor, so it runs wherever media is (worker threads, or Ray's CPU tasks).
    """
    started = time.perf_counter()
    prepared = PreparedRequest(request=request, prompt=request.prompt)
    try:
        frames = processor.load_media(request.media, request.n_frames, request.start_time, request.end_time)
        prepared.prompt = request.prompt if request.prompt is not None else default_prompt(frames.kind)
        prepared.ids, prepared.media_inputs = processor.encode_item(prepared.prompt, frames)
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
