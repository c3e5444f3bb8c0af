"""Reusing the KV of a prompt's prefix: a video asked about twice is encoded and prefilled once.

An entry is the KV cache of a prompt up to and including its last media token (every question
about one video shares it), or of a whole conversation after a reply (the next turn continues it).
Entries are content-addressed: the key is a hash of the media inputs the model receives (pixel
values and grids, so the file's bytes and every frame setting are in it) plus the prefix's token
ids. A lookup finds the longest stored prefix of a prompt for the same media. Entries are bounded by
a byte budget and evicted least recently used first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tarsier.engine.kv_cache import KVCache

if TYPE_CHECKING:
    from tarsier.models.interface import FamilyModel

DEFAULT_CPU_BYTES = 4 << 30
DEFAULT_GPU_SHARE = 0.2  # of the device's memory


def default_budget(device: torch.device) -> int:
    """Bytes the cache may hold by default: 4 GiB on CPU, a fifth of an accelerator's memory."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * DEFAULT_GPU_SHARE)
    return DEFAULT_CPU_BYTES


def prefix_cache_for(cache_bytes: int | None, device: torch.device) -> PrefixCache | None:
    """The prefix cache a budget asks for: None, the device's :func:`default_budget`; 0, no cache."""
    budget = default_budget(device) if cache_bytes is None else cache_bytes
    return PrefixCache(budget) if budget > 0 else None


def media_digest(media: Mapping[str, torch.Tensor] | None) -> str:
    """A hash of the media inputs as the model gets them ("" for none)."""
    if not media:
        return ""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(media):
        tensor = media[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.numel():
            digest.update(memoryview(tensor.view(torch.uint8).numpy()))  # hashed in place, not copied
    return digest.hexdigest()


@dataclass
class PrefixEntry:
    """The KV of ``ids``: one row, exactly ``len(ids)`` positions. Positions, M-RoPE's delta included,
    follow from the whole prompt and its media, so they are recomputed rather than stored."""

    ids: tuple[int, ...]
    cache: KVCache
    nbytes: int
    users: int = 0  # running rows that attend to it where it is held: it is not evicted meanwhile


@dataclass
class PrefixCacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    reused_positions: int = 0  # prompt positions not prefilled thanks to a hit
    prefilled_positions: int = 0  # prompt positions prefilled

    @property
    def hit_rate(self) -> float:
        looked = self.hits + self.misses
        return self.hits / looked if looked else 0.0


@dataclass
class PrefixCache:
    """Prefix KV entries under a byte budget, least recently used evicted first."""

    budget_bytes: int
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    _entries: OrderedDict[tuple[str, tuple[int, ...]], PrefixEntry] = field(default_factory=OrderedDict, repr=False)
    _bytes: int = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, media: str, ids: Sequence[int]) -> PrefixEntry | None:
        """The longest stored strict prefix of ``ids`` for this media (at least one id is left to
        prefill, whose logits give the first token), counted as a hit or a miss."""
        best = None
        for (entry_media, entry_ids), entry in self._entries.items():
            if entry_media == media and len(entry_ids) < len(ids) and (best is None or len(entry_ids) > len(best.ids)):
                if tuple(ids[: len(entry_ids)]) == entry_ids:
                    best = entry
        if best is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._entries.move_to_end((media, best.ids))
        return best

    def store(self, media: str, ids: Sequence[int], source: KVCache, model: FamilyModel, row: int = 0, start: int = 0) -> None:
        """Keep a copy of positions ``start .. start+len(ids)`` of ``source``'s row ``row`` as the KV of ``ids``."""
        key = (media, tuple(ids))
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        kept = KVCache(model, 1, len(ids), allocate=True)
        kept.copy_row(0, source, len(ids), source_row=row, source_offset=start)
        kept.set_length(len(ids))
        self.insert(media, ids, kept)

    def insert(self, media: str, ids: Sequence[int], cache: KVCache) -> PrefixEntry | None:
        """Keep ``cache`` itself (one row, exactly ``len(ids)`` positions) as the KV of ``ids``; the
        entry, or None when it does not fit beside the entries in use."""
        key = (media, tuple(ids))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        nbytes = cache.nbytes
        if not self._make_room(nbytes):
            return None
        entry = self._entries[key] = PrefixEntry(key[1], cache, nbytes)
        self._bytes += nbytes
        return entry

    def trim(self, keep: int) -> None:
        """Evict least recently used entries no running row attends until at most ``keep`` remain."""
        self._evict_until(lambda: len(self._entries) <= keep)

    def _make_room(self, nbytes: int) -> bool:
        """Evict least recently used entries no running row attends until ``nbytes`` more fit."""
        if nbytes > self.budget_bytes:
            return False
        self._evict_until(lambda: self._bytes + nbytes <= self.budget_bytes)
        return self._bytes + nbytes <= self.budget_bytes

    def _evict_until(self, enough: Callable[[], bool]) -> None:
        """Evict entries, least recently used first and none a running row attends, until ``enough()``."""
        for key in list(self._entries):
            if enough():
                return
            if not self._entries[key].users:
                self._bytes -= self._entries.pop(key).nbytes
                self.stats.evictions += 1
