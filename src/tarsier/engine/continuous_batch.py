"""Continuous batching: requests join the running batch between decode steps and leave it when done.

Every row of the batch shares the cache's write column, and each keeps its own mask, position and
settings, so rows of different lengths and ages share a step. A request is prefilled on its own
(its left padding never computed; on accelerators, requests admitted together in one left-padded
forward) into its place in the batch's cache, right-aligned at the column: a spare row of the
running cache when it fits there, nothing else moved; else the cache is laid out anew (a longer
prompt moves the others right, columns no row attends any more are dropped) with spare rows and
columns for the next requests. A finished or cancelled row leaves at once, its place spare. While
rows are streaming, at most ``prefills_per_step`` new requests are prefilled between two steps, so
a burst of long prompts delays each streaming row by one prefill at a time, not by all of them; with ``prefill_chunk``, a new video's prompt is
prefilled that many positions per step (its media encoded once), so streaming rows wait for a chunk.

A prompt's prefix up to its last media token is looked up in the prefix cache
(:mod:`tarsier.engine.prefix_cache`); on a miss it is prefilled first and kept there when later
prompts may ask about the same media. Rows continuing one prefix attend it where it is held, once
for all of them (:mod:`tarsier.engine.shared_prefix`): the batch's cache holds only each row's own
positions, and rows are laid out without a prefix first, then by prefix, so each group is a slice;
rows admitted together after one prefix are prefilled together, in one forward. A row alone with
its prefix, and every row where that attention cannot run (another attention kernel, a compiled
step), gets a copy of the prefix instead.

Greedy ids are those of a request decoded alone: masked columns carry no weight, and each row's
positions count its own attended tokens (plus Tarsier2's M-RoPE delta). Tests compare every step's
logits with one uncached forward of the same sequence.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from tarsier.engine.decode_step import COMPILED_CAPACITY_STEP, decode_step
from tarsier.engine.kv_cache import KVCache, filling_holes
from tarsier.engine.prefix_cache import PrefixCache, PrefixEntry, media_digest
from tarsier.engine.sampling import DecodeSettings, banned_logits, penalise_repeats, sample_rows
from tarsier.engine.shared_prefix import (
    SharedPrefixes,
    grouped_order,
    use_shared_prefix_attention,
    uses_shared_prefix_attention,
)
from tarsier.errors import TarsierError, one_line

# A decode step attends the columns written so far, rounded up to this (the cache's view of them
# changes once per this many steps): the empty rest of the capacity is not scored.
ATTENDED_COLUMNS_STEP = 128

if TYPE_CHECKING:
    from tarsier.engine.settings import GenerationSettings
    from tarsier.models.interface import FamilyModel, FamilyProcessor


@dataclass
class Job:
    """One prompt to generate for. ``on_token`` and ``on_end`` are called on the thread that steps."""

    ids: list[int]
    media: Mapping[str, torch.Tensor] | None  # the processor's media inputs for the prompt (None: text only)
    settings: GenerationSettings | DecodeSettings  # DecodeSettings: already resolved (no processor needed)
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
    start: int = 0  # prompt positions in ``prefix``, before the row's own
    prefix: KVCache | None = None  # the KV of ``job.ids[:start]``: attended where it is, or copied into the row
    shared: bool = False  # attends ``prefix`` where it is held, with the other rows continuing it (else a copy)
    entry: PrefixEntry | None = None  # the prefix-cache entry a shared row holds on to while it runs
    inputs: _Inputs | None = None  # while the row is admitted
    uncached: int | None = None  # found by the lookup: the prompt's positions through its last media token, not cached


@dataclass
class _Inputs:
    """A prompt as the model takes it, computed once for the prefill of its prefix and of the rest."""

    ids: torch.Tensor  # [1, L]
    media: dict[str, torch.Tensor]
    positions: torch.Tensor  # [1, L], or [3, 1, L] for M-RoPE
    rope_delta: torch.Tensor  # [1, 1]


@dataclass
class _Filling:
    """A new row's prompt through its last media token, prefilled a chunk per step while other rows
    stream: the embeddings (media features in place) are computed once, the chunks continue ``cache``."""

    row: _Row
    embeds: torch.Tensor  # [1, length, hidden]
    cache: KVCache  # exactly ``length`` positions
    done: int = 0


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
        processor: FamilyProcessor | None,
        *,
        max_batch_size: int = 8,
        prefix_cache: PrefixCache | None = None,
        prefills_per_step: int = 1,
        share_prefixes: bool = True,
        prefill_chunk: int = 0,
        batch_prefills: bool | None = None,
    ):
        """``share_prefixes``: rows attend a cached prefix where it is held, one copy for all
        (:mod:`tarsier.engine.shared_prefix`), when the model runs sdpa attention and no compiled
        step; otherwise (or False) each row gets a copy of it. ``processor`` may be None when there
        is no prefix cache and every job's settings are :class:`DecodeSettings`.

        ``prefill_chunk`` (positions; 0: off): while rows stream, a new prompt's part through its last
        media token, when not cached, is prefilled that many positions per step, so a streaming row
        waits for one chunk between two tokens rather than for a whole video's prefill (the new
        request's first token comes a few steps later instead).

        ``batch_prefills``: prompts admitted together with no cached prefix are prefilled in one
        left-padded forward (None: on accelerators, where one forward for several prompts is faster:
        161 instead of 194 ms per 8-frame video at batch 8 on an H200; on CPUs one at a time, which
        measured faster there)."""
        if prefill_chunk < 0:
            raise TarsierError(f"prefill chunk must be 0 (off) or a number of positions, got {prefill_chunk}")
        self.model = model
        self.processor = processor
        self.max_batch_size = max_batch_size
        self.prefix_cache = prefix_cache
        self.prefills_per_step = prefills_per_step
        self.prefill_chunk = prefill_chunk
        if batch_prefills is None:
            batch_prefills = model.device.type != "cpu" or getattr(model, "hf_device_map", None) is not None
        self.batch_prefills = batch_prefills
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
        self._shared: SharedPrefixes | None = None  # which rows attend which prefix
        self._filling: _Filling | None = None  # a prompt prefilled a chunk per step
        self.shares_prefixes = False
        if prefix_cache is not None and share_prefixes and not self._compiled:
            use_shared_prefix_attention(model)
            self.shares_prefixes = uses_shared_prefix_attention(model)

    @property
    def _compiled(self) -> bool:
        """Whether the model's decode step is compiled: it keeps its shapes and reads whole tensors."""
        return getattr(self.model, "compiled_decode_step", None) is not None

    @property
    def running(self) -> int:
        return len(self._rows)

    def add(self, job: Job) -> None:
        self.waiting.append(job)

    @property
    def filling(self) -> Job | None:
        """The request whose prompt is being prefilled a chunk per step (it joins the batch after)."""
        return None if self._filling is None else self._filling.row.job

    def busy(self) -> bool:
        return bool(self._rows or self.waiting or self._filling)

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
        if self._filling is not None:  # one chunk per step (the rest at once when no row streams)
            row = self._fill_chunk(all_at_once=starting)
            if row is not None:
                self._count_admission(starting, self._place([row]))
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
                settings = job.settings
                row = _Row(job, settings if isinstance(settings, DecodeSettings) else settings.decode_settings(self.processor))
            except Exception as exc:  # settings this model cannot take
                job.on_end(one_line(exc))
                continue
            if not starting and self.prefill_chunk:
                try:
                    if self._start_filling(row):
                        break  # it joins once its prompt is in, a chunk per step
                except Exception as exc:  # media this model cannot take, ...
                    self._release([row])
                    job.on_end(one_line(exc))
                    continue
            admitted.append(row)
            if job.alone:
                break
        if admitted:
            self._count_admission(starting, self._place(admitted))

    def _count_admission(self, starting: bool, placed: int) -> None:
        if not placed:
            return
        if starting:
            self.stats.batches += 1
            self.stats.batch_sizes[placed] = self.stats.batch_sizes.get(placed, 0) + 1
        else:
            self.stats.joined += placed

    def _find_prefix(self, row: _Row) -> None:
        """Where the row's prefill starts: after the longest cached prefix of its prompt. On a miss,
        when later prompts may ask about the same media, its prompt through the last media token is
        prefilled first, into a cache of its own that the prefix cache keeps, so the next row
        admitted with it already finds it."""
        if row.inputs is None:
            self._look_up(row)
        length, model = row.uncached, self.model
        if length is None or self.prefix_cache is None or not row.job.keep_prefix:
            return
        started = time.perf_counter()
        prefix = KVCache(model, 1, length, allocate=True)
        ids, positions = row.inputs.ids[:, :length], row.inputs.positions[..., :length]
        model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, cache=prefix.cache,
              use_cache=True, logits_to_keep=1, **row.inputs.media)
        self.stats.prefill_seconds += time.perf_counter() - started
        self._continue_prefix(row, prefix)

    def _look_up(self, row: _Row) -> None:
        """The row's prompt as model inputs; a cached prefix of it (the row continues it); on a miss,
        ``row.uncached`` is the length of its prompt through the last media token (when more follows)."""
        model, job = self.model, row.job
        device = model.device
        media = {name: value.to(device, model.dtype if value.is_floating_point() else value.dtype)
                 for name, value in (job.media or {}).items()}
        ids = torch.tensor([job.ids], device=device)
        positions, delta = model.prefill_positions(ids, torch.ones_like(ids), media)
        row.inputs = _Inputs(ids, media, positions, delta)
        if self.prefix_cache is not None:
            stats = self.prefix_cache.stats
            row.media_key = job.media_key if job.media_key is not None else media_digest(job.media)
            entry = self.prefix_cache.lookup(row.media_key, job.ids)
            if entry is not None:
                row.start, row.prefix = len(entry.ids), entry.cache
                self._hold(row, entry)
                stats.reused_positions += row.start
                stats.prefilled_positions += len(job.ids) - row.start
                return
            stats.prefilled_positions += len(job.ids)
        elif not self.prefill_chunk:
            return
        boundary = _last_media_position(job.ids, self.processor.media_token_ids)
        if boundary is not None and boundary + 1 < len(job.ids):
            row.uncached = boundary + 1

    def _continue_prefix(self, row: _Row, prefix: KVCache) -> None:
        """The row continues ``prefix`` (its prompt's first ``prefix.capacity`` positions, just
        prefilled), kept in the prefix cache when the job asks for that."""
        row.start, row.prefix, row.uncached = prefix.capacity, prefix, None
        if row.job.keep_prefix and self.prefix_cache is not None:
            self._hold(row, self.prefix_cache.insert(row.media_key, row.job.ids[: row.start], prefix))

    def _start_filling(self, row: _Row) -> bool:
        """Look the row up; True when its uncached prompt through the last media token is longer than a
        chunk, so it is prefilled a chunk per step from now on (its media is encoded here, at once)."""
        self._look_up(row)
        length = row.uncached
        if length is None or length <= self.prefill_chunk:
            return False
        started = time.perf_counter()
        embeds = self.model.embed_inputs(row.inputs.ids[:, :length], **row.inputs.media)
        self._filling = _Filling(row, embeds, KVCache(self.model, 1, length, allocate=True))
        self.stats.prefill_seconds += time.perf_counter() - started
        return True

    def _fill_chunk(self, all_at_once: bool) -> _Row | None:
        """Prefill the next chunk of the filling prompt (all the rest when no row streams); returns its
        row once the prompt through its last media token is in (a failed or cancelled row ends here)."""
        filling = self._filling
        row, length = filling.row, filling.cache.capacity
        if row.job.cancelled:
            self._filling = None
            row.job.on_end("cancelled")
            return None
        started = time.perf_counter()
        try:
            while filling.done < length:
                end = min(filling.done + self.prefill_chunk, length)
                # A view of the positions filled so far and this chunk's: the chunk's attention spans
                # what it may attend, not the whole cache with the rest masked.
                view = filling.cache.positions_view(self.model, 0, 0, end)
                view.set_length(filling.done)
                self.model(inputs_embeds=filling.embeds[:, filling.done : end],
                           attention_mask=torch.ones(1, end, dtype=torch.long, device=self.model.device),
                           position_ids=row.inputs.positions[..., filling.done : end], cache=view.cache,
                           use_cache=True, logits_to_keep=1)
                filling.done = end
                if not all_at_once:
                    break
        except Exception as exc:  # this request alone fails
            self._filling = None
            row.job.on_end(one_line(exc))
            return None
        finally:
            self.stats.prefill_seconds += time.perf_counter() - started
        if filling.done < length:
            return None
        self._filling = None
        filling.cache.set_length(length)
        self._continue_prefix(row, filling.cache)
        return row

    def _hold(self, row: _Row, entry: PrefixEntry | None) -> None:
        if entry is not None and self.shares_prefixes:
            row.entry = entry
            entry.users += 1

    def _release(self, rows: list[_Row]) -> None:
        for row in rows:
            if row.entry is not None:
                row.entry.users -= 1
                row.entry = None

    def _own_length(self, row: _Row) -> int:
        """Positions the row holds in the batch's cache: its prompt after a shared prefix, else all of it."""
        return len(row.job.ids) - (row.start if row.shared else 0)

    def _prefill(self, row: _Row, cache: KVCache) -> _Prefilled:
        """Prefill the rest of one request's prompt, alone, into ``cache`` (a view of its place in the
        batch, exactly :meth:`_own_length` long), after the prefix :meth:`_find_prefix` found: attended
        where it is held (:meth:`_prefill_together`), or copied into the row first."""
        if row.shared:
            return self._prefill_together([row], cache)[0]
        started = time.perf_counter()
        model, inputs, start = self.model, row.inputs, row.start
        media = inputs.media
        if start:
            media = {}  # every media position is in the prefix
            cache.copy_row(0, row.prefix, start)
            cache.set_length(start)
        mask = torch.ones_like(inputs.ids)
        out = model(input_ids=inputs.ids[:, start:], attention_mask=mask, position_ids=inputs.positions[..., start:],
                    cache=cache.cache, use_cache=True, logits_to_keep=1, **media)
        self.stats.prefill_seconds += time.perf_counter() - started
        return _Prefilled(out.logits[0, -1], inputs.rope_delta, self._seen_ids(row, out.logits.shape[-1]))

    def _seen_ids(self, row: _Row, vocab: int) -> torch.Tensor | None:
        """``[V]`` booleans marking the prompt's ids, under a repetition penalty (else None)."""
        if row.settings.repetition_penalty == 1:
            return None
        seen = torch.zeros(vocab, dtype=torch.bool, device=self.model.device)
        seen[row.inputs.ids[0]] = True
        return seen

    def _place(self, admitted: list[_Row]) -> int:
        """Prefill the new rows and put them with the running ones into one cache, right-aligned at
        the write column; returns how many new rows were placed (a row whose prefill fails ends alone).

        Where they fit (:meth:`_fits`), new rows take spare rows of the running cache and nothing
        moves. Otherwise the cache is laid out anew before any prefill of a row's own positions (their
        count is known once its prefix is found), and each is prefilled straight into its place: no
        cache of its own to allocate and copy. A cache laid out for rows joining a running batch gets
        room for more (spare rows and columns), so the next ones join in place.
        """
        model, device = self.model, self.model.device
        ready = []
        for row in admitted:
            try:
                self._find_prefix(row)  # rows looked up on admission are not looked up again
            except Exception as exc:  # this request alone fails: bad media, too long, ...
                self._release([row])
                row.job.on_end(one_line(exc))
                continue
            ready.append(row)
        admitted = ready
        if not admitted:
            return 0
        self._share(admitted)
        if self._fits(admitted):
            return self._join(admitted)
        old = len(self._rows)
        lead = 0
        if old:  # columns no running row attends any more
            lead = int(self._mask[:, : self._column].argmax(1).min()) if self._mask[:, : self._column].any() else self._column
        kept = self._column - lead
        column = max([kept] + [self._own_length(row) for row in admitted])
        rows = self._rows + admitted
        longest_reply = max(row.settings.max_new_tokens - len(row.sent) for row in rows)
        capacity, spare = column + longest_reply, 0
        if self._compiled:
            capacity = -(-capacity // COMPILED_CAPACITY_STEP) * COMPILED_CAPACITY_STEP
        elif old and not any(row.shared for row in rows):
            # Rows join a running batch: room for as many again (up to the limit) and for their replies,
            # so the next ones join in place (:meth:`_fits`; a layout with prefix groups is laid out anew).
            spare = min(self.max_batch_size - len(rows), len(rows))
            capacity += longest_reply
        order = grouped_order([row.prefix if row.shared else None for row in rows])
        slot = {index: position for position, index in enumerate(order)}  # a row's index in the new layout
        mask = torch.zeros(len(rows), capacity, dtype=torch.long, device=device)
        shift = column - kept
        if old:
            cache = KVCache.moved(model, self._cache, len(rows), capacity, [(slot[index], index) for index in range(old)],
                                  kept, shift, lead, spare_rows=spare)
            for index in range(old):
                mask[slot[index], shift : shift + kept] = self._mask[index, lead : self._column]
        else:
            cache = KVCache(model, len(rows), capacity, allocate=True)
        self._cache = None  # moved: the old layout's memory went back layer by layer
        return self._prefill_and_take(rows, old, order, slot, cache, mask, column)

    def _fits(self, admitted: list[_Row]) -> bool:
        """Whether the new rows can take spare rows of the running cache with nothing moved: no prefix
        groups (their layout fixes the rows' order), a spare row each, each row's own positions within
        the columns before the write column, and room after it for each reply."""
        cache = self._cache
        if cache is None or self._compiled:  # it sees whole tensors
            return False
        return (self._shared is None and not any(row.shared for row in admitted)
                and cache.spare_rows >= len(admitted)
                and all(self._own_length(row) <= self._column for row in admitted)
                and self._column + max(row.settings.max_new_tokens for row in admitted) <= cache.capacity)

    def _join(self, admitted: list[_Row]) -> int:
        """Prefill the new rows into spare rows of the running cache, right-aligned at the write
        column (the columns before theirs masked): the running rows are not copied."""
        old, cache = len(self._rows), self._cache
        rows = self._rows + admitted
        cache.add_rows(len(admitted))
        mask = torch.cat([self._mask, torch.zeros(len(admitted), self._mask.shape[1], dtype=self._mask.dtype,
                                                  device=self.model.device)])
        order = list(range(len(rows)))
        return self._prefill_and_take(rows, old, order, dict(enumerate(order)), cache, mask, self._column)

    def _prefill_and_take(self, rows: list[_Row], old: int, order: list[int], slot: dict[int, int], cache: KVCache,
                          mask: torch.Tensor, column: int) -> int:
        """Prefill the new rows (``rows[old:]``) into their slots of ``cache`` and make ``rows`` (in
        ``order``, the running ones in place already) the batch; returns how many new rows were
        placed. The slots of rows whose prefill failed are dropped."""
        placed: dict[int, _Prefilled] = {}
        for members in self._prefill_groups(rows[old:], old, slot):
            placed.update(self._prefill_rows(members, cache, column, slot))
        for index in placed:
            mask[slot[index], column - self._own_length(rows[index]) : column] = 1
        kept_rows = [index for index in order if index < old or index in placed]  # in the layout's order
        if not kept_rows:
            self._keep([])
            return 0
        if len(kept_rows) < len(rows):
            on_device = torch.tensor([slot[index] for index in kept_rows], dtype=torch.long, device=self.model.device)
            cache.keep_rows(on_device)
            mask = mask[on_device]
        cache.set_length(column)
        device = self.model.device
        firsts = []  # each row's next position, next-token logits and seen ids: from the batch, or its prefill
        for index in kept_rows:
            if index < old:
                firsts.append((self._next_position[index], self._logits[index], None if self._seen is None else self._seen[index]))
            else:
                prefilled = placed[index]
                position = len(rows[index].job.ids) + prefilled.rope_delta.reshape(()).to(device)
                firsts.append((position, prefilled.logits, prefilled.seen))
        self._next_position = torch.stack([position for position, _, _ in firsts])
        self._logits = torch.stack([logits for _, logits, _ in firsts])
        self._seen = None
        if any(seen is not None for _, _, seen in firsts):
            empty = torch.zeros(self._logits.shape[-1], dtype=torch.bool, device=device)
            self._seen = torch.stack([empty if seen is None else seen for _, _, seen in firsts])
        self._rows, self._cache, self._mask, self._column = [rows[index] for index in kept_rows], cache, mask, column
        self._banned = banned_logits([row.settings for row in self._rows], self._logits.shape[-1], device)
        self._shared = self._shared_prefixes()
        return len(placed)

    def _prefill_groups(self, admitted: list[_Row], old: int, slot: dict[int, int]) -> list[list[tuple[int, _Row]]]:
        """The new rows in prefills: rows continuing one shared prefix together (their slots are
        consecutive, as the layout puts them); with :attr:`batch_prefills`, rows with no prefix at all
        together too; every other row alone."""
        groups: dict[object, list[tuple[int, _Row]]] = {}
        for index, row in enumerate(admitted, start=old):
            if row.shared:
                key: object = id(row.prefix)
            else:
                key = "no prefix" if self.batch_prefills and not row.start else ("alone", index)
            groups.setdefault(key, []).append((index, row))
        return [sorted(members, key=lambda member: slot[member[0]]) for members in groups.values()]

    def _prefill_rows(self, members: list[tuple[int, _Row]], cache: KVCache, column: int, slot: dict[int, int]
                      ) -> dict[int, _Prefilled]:
        """Prefill ``members`` into their places; a row that fails ends with its error (rows that
        failed together are tried again one by one, so only the one at fault ends)."""
        model = self.model
        first = slot[members[0][0]]
        if len(members) > 1 and [slot[index] for index, _ in members] == list(range(first, first + len(members))):
            longest = max(self._own_length(row) for _, row in members)
            try:
                prefilled = self._prefill_together([row for _, row in members],
                                                   cache.positions_view(model, first, column - longest, longest, len(members)))
            except Exception:
                pass
            else:
                for _, row in members:
                    row.inputs = None
                return {index: value for (index, _), value in zip(members, prefilled)}
        placed = {}
        for index, row in members:
            length = self._own_length(row)
            try:
                placed[index] = self._prefill(row, cache.positions_view(model, slot[index], column - length, length))
            except Exception as exc:  # this request alone fails: bad media, too long, ...
                self._release([row])
                row.job.on_end(one_line(exc))
            finally:
                row.inputs = None
        return placed

    def _prefill_together(self, rows: list[_Row], cache: KVCache) -> list[_Prefilled]:
        """Prefill what follows one shared prefix for one or more rows in one forward: their own tokens
        left-padded to the longest (padding masked), each row's positions continuing the prefix. The
        questions after a video's first cost one pass over the weights together, not one each. Rows
        with no prefix at all (:attr:`batch_prefills`) are prefilled whole, their media in row order."""
        started = time.perf_counter()
        model, device = self.model, self.model.device
        longest = cache.capacity
        ids = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=device)
        first = rows[0].inputs.positions
        positions = torch.zeros(*first.shape[:-2], len(rows), longest, dtype=first.dtype, device=device)
        for number, row in enumerate(rows):
            own = row.inputs.ids[0, row.start :]
            ids[number, longest - own.shape[0] :] = own
            mask[number, longest - own.shape[0] :] = 1
            positions[..., number, longest - own.shape[0] :] = row.inputs.positions[..., 0, row.start :]
        if rows[0].shared:
            extra: dict[str, object] = {"shared_prefix": SharedPrefixes(0, [(0, len(rows), rows[0].prefix)])}
        else:  # every input the model takes per media item, concatenated in row order
            extra = {name: torch.cat([row.inputs.media[name] for row in rows if name in row.inputs.media])
                     for name in dict.fromkeys(name for row in rows for name in row.inputs.media)}
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache.cache, use_cache=True,
                    logits_to_keep=1, **extra)
        self.stats.prefill_seconds += time.perf_counter() - started
        return [_Prefilled(out.logits[number, -1], row.inputs.rope_delta, self._seen_ids(row, out.logits.shape[-1]))
                for number, row in enumerate(rows)]

    def _share(self, admitted: list[_Row]) -> None:
        """Which new rows attend their prefix where it is held: those whose prefix another row, new or
        running (with a copy of it or not), continues too. A row alone with its prefix gets a copy of it
        (a later question about the video then starts the group): a group per row costs every
        decode step a few small kernels per layer more than one attention over the batch (four requests
        about four videos took 15.4 s instead of 10.1 s in ``bench_engine.py``'s late-request row, bf16
        on CPU), and the copy saves no memory there."""
        if not self.shares_prefixes:
            return
        users = Counter(id(row.prefix) for row in self._rows if row.start)
        users.update(id(row.prefix) for row in admitted if row.start)
        for row in admitted:
            row.shared = bool(row.start) and users[id(row.prefix)] > 1
            if not row.shared:
                self._release([row])

    def _shared_prefixes(self) -> SharedPrefixes | None:
        return SharedPrefixes.of_rows([row.prefix if row.shared else None for row in self._rows])

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
        """Store the conversation so far (prompt and reply but its last token, which has no KV yet):
        the row's shared prefix, if any, then its own positions."""
        held = row.job.ids + row.sent[:-1]
        own = int(self._mask[index, : self._column].sum())
        first = self._column - own
        if not row.shared:
            self.prefix_cache.store(row.media_key, held, self._cache, self.model, index, first)
            return
        kept = KVCache(self.model, 1, len(held), allocate=True)
        kept.copy_row(0, row.prefix, row.start)
        kept.copy_row(0, self._cache, own, row.start, source_row=index, source_offset=first)
        kept.set_length(len(held))
        self.prefix_cache.insert(row.media_key, held, kept)

    def _keep(self, keep: list[int]) -> None:
        """Keep the rows ``keep`` (sorted). Without prefix groups, whose layout fixes the rows' order,
        the last rows move into the places of those that left (one row copied per row that left), and
        the places past them are spare rows for rows that join."""
        kept = set(keep)
        self._release([row for index, row in enumerate(self._rows) if index not in kept])
        if not keep:
            self._rows, self._cache, self._mask, self._logits, self._seen = [], None, None, None, None
            self._shared, self._column = None, 0
            return
        if self._shared is None and not self._compiled:
            keep = filling_holes(keep)
        rows = torch.tensor(keep)
        on_device = rows.to(self.model.device)
        self._rows = [self._rows[i] for i in keep]
        self._shared = self._shared_prefixes()
        self._cache.keep_rows(on_device, in_place=not self._compiled)  # a compiled step reads whole tensors where they are
        self._mask, self._next_position = self._mask[on_device], self._next_position[on_device]
        self._tokens = self._tokens[rows]
        if self._seen is not None:
            self._seen = self._seen[on_device]
        self._banned = banned_logits([row.settings for row in self._rows], self._logits.shape[-1], self.model.device)

    def _decode(self) -> None:
        started = time.perf_counter()
        device = self.model.device
        self._mask[:, self._column] = 1
        mask = self._mask
        if not self._compiled:  # a compiled step keeps its shapes
            width = min(self._cache.capacity, -(-(self._column + 1) // ATTENDED_COLUMNS_STEP) * ATTENDED_COLUMNS_STEP)
            if width != self._cache.width:
                self._cache.attend(width)
            mask = mask[:, :width]
        try:
            extra = {}
            if self._shared is not None:  # the columns the grouped rows' own positions take
                own = max(len(row.job.ids) - row.start + len(row.sent) for row in self._rows if row.shared)
                self._shared.window = (self._column + 1 - own, self._column + 1)
                extra["shared_prefix"] = self._shared
            self._logits = decode_step(self.model, input_ids=self._tokens[:, None].to(device), attention_mask=mask,
                                        position_ids=self._next_position[:, None], cache=self._cache.cache, **extra)
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


def generate_steps(
    model: FamilyModel,
    processor: FamilyProcessor | None,
    prompts: Sequence[tuple[list[int], Mapping[str, torch.Tensor] | None, GenerationSettings | DecodeSettings]],
    cancelled: Container[int] = (),
) -> Iterator[dict[int, int]]:
    """``{row: token}`` after every step for the rows still running, for ``prompts`` (ids, media
    inputs, settings) run to their end in a batch of their own: the Python API's generation
    (:func:`tarsier.engine.generation.iter_tokens`). A row found in ``cancelled`` (checked after each
    step) stops there; a row that fails raises its error. ``processor`` may be None when every
    row's settings are :class:`DecodeSettings`.
    """
    batch = ContinuousBatch(model, processor, max_batch_size=max(1, len(prompts)), prefills_per_step=len(prompts))
    emitted: dict[int, int] = {}
    errors: list[str] = []

    def on_end(error: str | None) -> None:
        if error is not None:
            errors.append(error)

    jobs = []
    for row, (ids, media, settings) in enumerate(prompts):
        def on_token(token: int, row: int = row) -> None:
            emitted[row] = token

        jobs.append(Job(list(ids), media or None, settings, on_token, on_end))
        batch.add(jobs[-1])
    while batch.busy():
        batch.step()
        if errors:
            raise TarsierError(errors[0])
        step = {row: token for row, token in emitted.items() if row not in cancelled}
        emitted.clear()
        if step:
            yield step
        for row, job in enumerate(jobs):  # ``cancelled`` need only answer ``in``
            if row in cancelled:
                job.cancelled = True


def _last_media_position(ids: list[int], media_ids: frozenset[int]) -> int | None:
    for position in range(len(ids) - 1, -1, -1):
        if ids[position] in media_ids:
            return position
    return None

