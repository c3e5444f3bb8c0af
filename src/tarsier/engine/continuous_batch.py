"""Continuous batching: requests join the running batch between decode steps and leave it when done.

Every row of the batch shares the cache's write column, and each keeps its own mask, position and
settings, so rows of different lengths and ages share a step. A request is prefilled on its own
(its left padding never computed), reusing the KV of a cached prefix when one matches
(:mod:`tarsier.engine.prefix_cache`), then placed into the batch's cache right-aligned at the
column: a longer prompt moves the others right, and columns no row attends any more are dropped
then. A finished or cancelled row leaves at once. While rows are streaming, at most
``prefills_per_step`` new requests are prefilled between two steps, so a burst of long prompts
delays each streaming row by one prefill at a time, not by all of them.

Greedy ids are those of a request decoded alone: its prompt is prefilled alone, masked columns
carry no weight, and each row's positions count its own attended tokens (plus Tarsier2's M-RoPE
delta). Tests compare every step's logits with one uncached forward of the same sequence.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from tarsier.engine.decode_loop import COMPILED_CAPACITY_STEP, _decode_step
from tarsier.engine.generation import GenerationSettings
from tarsier.engine.kv_cache import KVCache
from tarsier.engine.prefix_cache import PrefixCache, media_digest
from tarsier.engine.sampling import DecodeSettings, banned_logits, penalise_repeats, sample_rows
from tarsier.errors import one_line

if TYPE_CHECKING:
    from tarsier.models.interface import FamilyModel, FamilyProcessor


@dataclass
class Job:
    """One prompt to generate for. ``on_token`` and ``on_end`` are called on the thread that steps."""

    ids: list[int]
    media: Mapping[str, torch.Tensor] | None  # the processor's media inputs for the prompt (None: text only)
    settings: GenerationSettings
    on_token: Callable[[int], None]
    on_end: Callable[[str | None], None]  # None when generation ended normally, else a one-line error
    cancelled: bool = False  # set from any thread: the row leaves its batch after the current step
    queued_at: float = field(default_factory=time.monotonic)
    remember_reply: bool = False  # keep the KV of prompt + reply for a next turn (a chat)
    alone: bool = False  # run in a batch of its own (after a batch failed with it in it)
    media_key: str | None = None  # media_digest(media), when the caller has it already
    keep_prefix: bool = True  # keep the KV up to the last media token for later prompts about the same media


@dataclass
class BatchStats:
    """Counters for /metrics and job summaries; written by the stepping thread only."""

    batches: int = 0  # batches started from empty
    batch_sizes: dict[int, int] = field(default_factory=dict)  # rows when a batch started -> count
    joined: int = 0  # requests that joined a running batch
    generated_tokens: int = 0
    steps: int = 0
    busy_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


@dataclass
class _Row:
    job: Job
    settings: DecodeSettings
    sent: list[int] = field(default_factory=list)
    media_key: str = ""


@dataclass
class _Prefilled:
    """What a request's first token comes from, once its prompt is in the batch's cache."""

    logits: torch.Tensor  # [V]
    rope_delta: torch.Tensor  # [1, 1]
    seen: torch.Tensor | None  # [V] booleans under a repetition penalty


class ContinuousBatch:
    """The running batch of one model: :meth:`add` queues requests, :meth:`step` advances them all."""

    def __init__(
        self,
        model: FamilyModel,
        processor: FamilyProcessor,
        *,
        max_batch_size: int = 8,
        prefix_cache: PrefixCache | None = None,
        prefills_per_step: int = 1,
    ):
        self.model = model
        self.processor = processor
        self.max_batch_size = max_batch_size
        self.prefix_cache = prefix_cache
        self.prefills_per_step = prefills_per_step
        self.stats = BatchStats()
        self.waiting: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._cache: KVCache | None = None
        self._mask: torch.Tensor | None = None  # [B, capacity]
        self._next_position: torch.Tensor | None = None  # [B]
        self._logits: torch.Tensor | None = None  # [B, V]: each row's next-token logits
        self._seen: torch.Tensor | None = None  # [B, V] under a repetition penalty
        self._column = 0  # cache positions in use (the same for every row)
        self._tokens: torch.Tensor | None = None  # [B]: the tokens just emitted, fed by the next step
        self._banned: torch.Tensor | None = None  # [V]: ids no row may emit

    @property
    def running(self) -> int:
        return len(self._rows)

    def add(self, job: Job) -> None:
        self.waiting.append(job)

    def busy(self) -> bool:
        return bool(self._rows or self.waiting)

    # -- one step ---------------------------------------------------------------------------------
    def step(self) -> None:
        """Admit waiting requests, give every row its next token, drop rows that ended, run one decode step."""
        started = time.perf_counter()
        with torch.inference_mode():
            self._admit()
            if self._rows:
                self._emit()
            if self._rows:
                self._decode()
        self.stats.busy_seconds += time.perf_counter() - started

    def _admit(self) -> None:
        starting = not self._rows
        if self._rows and self._rows[0].job.alone:
            return
        budget = len(self.waiting) if starting else self.prefills_per_step
        admitted: list[_Row] = []
        while self.waiting and budget > 0 and len(self._rows) + len(admitted) < self.max_batch_size:
            job = self.waiting[0]
            if job.alone and (self._rows or admitted):
                break
            self.waiting.popleft()
            if job.cancelled:
                job.on_end("cancelled")
                continue
            budget -= 1
            try:
                admitted.append(_Row(job, job.settings.decode_settings(self.processor)))
            except Exception as exc:  # settings this model cannot take
                job.on_end(one_line(exc))
            if job.alone:
                break
        if not admitted:
            return
        placed = self._place(admitted)
        if not placed:
            return
        if starting:
            self.stats.batches += 1
            self.stats.batch_sizes[placed] = self.stats.batch_sizes.get(placed, 0) + 1
        else:
            self.stats.joined += placed

    def _prefill(self, row: _Row, cache: KVCache) -> _Prefilled:
        """Prefill one request alone into ``cache`` (a view of its place in the batch, exactly its
        prompt's length), from the longest cached prefix of its prompt when there is one."""
        started = time.perf_counter()
        model, job = self.model, row.job
        device = model.device
        media = {name: value.to(device, model.dtype if value.is_floating_point() else value.dtype)
                 for name, value in (job.media or {}).items()}
        ids = torch.tensor([job.ids], device=device)
        length = ids.shape[1]
        mask = torch.ones_like(ids)
        positions, delta = model.prefill_positions(ids, mask, media)
        if self.prefix_cache is not None:
            row.media_key = job.media_key if job.media_key is not None else media_digest(job.media)
        entry = self.prefix_cache.lookup(row.media_key, job.ids) if self.prefix_cache is not None else None
        start = 0
        if entry is not None:
            start = len(entry.ids)
            cache.copy_row(0, entry.cache, start)
            cache.set_length(start)
            media = {}  # every media position is in the reused prefix
        out = model(input_ids=ids[:, start:], attention_mask=mask, position_ids=positions[..., start:], cache=cache.cache,
                    use_cache=True, logits_to_keep=1, **media)
        if self.prefix_cache is not None:
            self.prefix_cache.stats.reused_positions += start
            self.prefix_cache.stats.prefilled_positions += length - start
            boundary = _last_media_position(job.ids, self.processor.media_token_ids)
            if entry is None and job.keep_prefix and boundary is not None and boundary + 1 < length:
                self.prefix_cache.store(row.media_key, job.ids[: boundary + 1], cache, model)
        seen = None
        if row.settings.repetition_penalty != 1:
            seen = torch.zeros(out.logits.shape[-1], dtype=torch.bool, device=device)
            seen[ids[0]] = True
        self.stats.prefill_seconds += time.perf_counter() - started
        return _Prefilled(out.logits[0, -1], delta, seen)

    def _place(self, admitted: list[_Row]) -> int:
        """Prefill the new rows and put them with the running ones into one cache, right-aligned at
        the new column; returns how many new rows were placed (a row whose prefill fails ends alone).

        The cache is laid out before any prefill (prompt lengths are known), and each prompt is
        prefilled straight into its place: no cache of its own to allocate and copy.
        """
        model, device = self.model, self.model.device
        old = len(self._rows)
        lead = 0
        if old:  # columns no running row attends any more
            lead = int(self._mask[:, : self._column].argmax(1).min()) if self._mask[:, : self._column].any() else self._column
        kept = self._column - lead
        column = max([kept] + [len(row.job.ids) for row in admitted])
        rows = self._rows + admitted
        remaining = [row.settings.max_new_tokens - len(row.sent) for row in rows]
        capacity = column + max(remaining)
        if getattr(model, "compiled_decode_step", None) is not None:
            capacity = -(-capacity // COMPILED_CAPACITY_STEP) * COMPILED_CAPACITY_STEP
        cache = KVCache(model, len(rows), capacity, allocate=True)
        mask = torch.zeros(len(rows), capacity, dtype=torch.long, device=device)
        shift = column - kept
        for index in range(old):
            cache.copy_row(index, self._cache, kept, shift, source_row=index, source_offset=lead)
            mask[index, shift : shift + kept] = self._mask[index, lead : self._column]
        self._cache = None  # the old layout's memory goes back before the prefills
        placed: list[tuple[int, _Row, _Prefilled]] = []
        for offset, row in enumerate(admitted, start=old):
            length = len(row.job.ids)
            try:
                prefilled = self._prefill(row, cache.positions_view(model, offset, column - length, length))
            except Exception as exc:  # this request alone fails: bad media, too long, ...
                row.job.on_end(one_line(exc))
                continue
            mask[offset, column - length : column] = 1
            placed.append((offset, row, prefilled))
        keep = list(range(old)) + [offset for offset, _, _ in placed]
        if not keep:
            self._keep([])
            return 0
        if len(keep) < len(rows):  # drop the slots of rows whose prefill failed
            on_device = torch.tensor(keep, dtype=torch.long, device=device)
            cache.keep_rows(on_device)
            mask = mask[on_device]
            rows = [rows[i] for i in keep]
        cache.set_length(column)
        new = [prefilled for _, _, prefilled in placed]
        positions = [torch.tensor([len(row.job.ids)], device=device) + p.rope_delta.reshape(1).to(device)
                     for _, row, p in placed]
        self._next_position = torch.cat(([self._next_position] if old else []) + positions)
        self._logits = torch.cat(([self._logits] if old else []) + [p.logits[None] for p in new])
        if any(p.seen is not None for p in new) or self._seen is not None:
            vocab = self._logits.shape[-1]
            empty = torch.zeros(vocab, dtype=torch.bool, device=device)
            before = self._seen if self._seen is not None else torch.zeros(old, vocab, dtype=torch.bool, device=device)
            self._seen = torch.cat([before] + [(p.seen if p.seen is not None else empty)[None] for p in new])
        self._rows, self._cache, self._mask, self._column = rows, cache, mask, column
        self._banned = banned_logits([row.settings for row in rows], self._logits.shape[-1], device)
        return len(placed)

    def _emit(self) -> None:
        """Each row's next token from its logits; rows that ended (EOS, limit, cancelled) leave."""
        logits = self._logits
        if self._banned is not None:
            logits = logits.masked_fill(self._banned, float("-inf"))
        if self._seen is not None:
            penalties = torch.tensor([row.settings.repetition_penalty for row in self._rows], dtype=torch.float32)
            logits = penalise_repeats(logits, self._seen, penalties)
        tokens = sample_rows(logits, [row.settings.sampler for row in self._rows]).cpu()
        if self._seen is not None:
            self._seen[torch.arange(len(tokens)), tokens.to(self._seen.device)] = True
        keep, ended = [], []
        for index, (row, token) in enumerate(zip(self._rows, tokens.tolist())):
            row.sent.append(token)
            row.job.on_token(token)
            self.stats.generated_tokens += 1
            if (token in row.settings.stop_ids) or len(row.sent) >= row.settings.max_new_tokens or row.job.cancelled:
                if row.job.remember_reply and self.prefix_cache is not None:
                    self._remember(index, row)
                ended.append(row.job)
            else:
                keep.append(index)
        self._tokens = tokens
        if len(keep) < len(self._rows):
            self._keep(keep)
        for job in ended:  # after the batch let them go, so a caller woken by on_end sees them gone
            job.on_end(None)

    def _remember(self, index: int, row: _Row) -> None:
        """Store the conversation so far (prompt and reply but its last token, which has no KV yet)."""
        held = row.job.ids + row.sent[:-1]
        start = self._column - int(self._mask[index, : self._column].sum())
        self.prefix_cache.store(row.media_key, held, self._cache, self.model, index, start)

    def _keep(self, keep: list[int]) -> None:
        if not keep:
            self._rows, self._cache, self._mask, self._logits, self._seen = [], None, None, None, None
            self._column = 0
            return
        rows = torch.tensor(keep)
        on_device = rows.to(self.model.device)
        self._rows = [self._rows[i] for i in keep]
        self._cache.keep_rows(on_device)
        self._mask, self._next_position = self._mask[on_device], self._next_position[on_device]
        self._tokens = self._tokens[rows]
        if self._seen is not None:
            self._seen = self._seen[on_device]
        self._banned = banned_logits([row.settings for row in self._rows], self._logits.shape[-1], self.model.device)

    def _decode(self) -> None:
        started = time.perf_counter()
        device = self.model.device
        self._mask[:, self._column] = 1
        try:
            self._logits = _decode_step(self.model, input_ids=self._tokens[:, None].to(device), attention_mask=self._mask,
                                        position_ids=self._next_position[:, None], cache=self._cache.cache)
        except Exception as exc:
            self._fail(exc)
            return
        finally:
            self.stats.decode_seconds += time.perf_counter() - started
        self._next_position = self._next_position + 1
        self._column += 1
        self.stats.steps += 1

    def _fail(self, exc: Exception) -> None:
        """A decode step failed: a lone row ends with the error; in a batch, each row goes on alone
        from the tokens it has sent (its prompt and those tokens), so the row at fault is found."""
        rows = self._rows
        self._keep([])
        if len(rows) == 1:
            rows[0].job.on_end(one_line(exc))
            return
        for row in reversed(rows):
            job = row.job
            job.ids = job.ids + row.sent
            job.settings = replace(job.settings, max_new_tokens=job.settings.max_new_tokens - len(row.sent))
            job.alone = True
            self.waiting.appendleft(job)


def _last_media_position(ids: list[int], media_ids: frozenset[int]) -> int | None:
    for position in range(len(ids) - 1, -1, -1):
        if ids[position] in media_ids:
            return position
    return None

