"""Sampled frames of recently used media, so several prompts about one video decode it once.

Keyed by the file's identity (resolved path, size, modification time) and every setting that
changes the frames (frame count, window); media given in memory (PIL images, sampled frames) is
not cached. The prefix cache downstream is keyed by the pixel values themselves.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tarsier.engine.prefix_cache import media_digest
from tarsier.media import SampledFrames


@dataclass
class FramesCacheStats:
    hits: int = 0
    misses: int = 0


class FramesCache:
    """The last ``capacity`` media's sampled frames; safe to share between decoding threads."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self.stats = FramesCacheStats()
        self._entries: OrderedDict[Hashable, SampledFrames] = OrderedDict()
        self._loading: dict[Hashable, threading.Event] = {}
        self._digests: dict[int, str] = {}  # id of a cached frames object -> its media key
        self._lock = threading.Lock()

    def frames(self, media: Any, settings: tuple, load: Callable[[], SampledFrames]) -> SampledFrames:
        """``load()``'s frames, or the cached ones for the same files and ``settings``. A thread asking
        for media another thread is loading waits for that load rather than decoding it twice."""
        key = file_identity(media)
        if key is None:
            return load()
        key = (key, settings)
        with self._lock:
            if key in self._entries:
                self.stats.hits += 1
                self._entries.move_to_end(key)
                return self._entries[key]
            loading = self._loading.get(key)
            if loading is None:
                self._loading[key] = threading.Event()
        if loading is not None:
            loading.wait()
            return self.frames(media, settings, load)
        try:
            frames = load()
        finally:
            with self._lock:
                self._loading.pop(key).set()
        with self._lock:
            self.stats.misses += 1
            self._entries[key] = frames
            while len(self._entries) > self.capacity:
                _, evicted = self._entries.popitem(last=False)
                self._digests.pop(id(evicted), None)
        return frames

    def media_key(self, frames: SampledFrames, media: Mapping[str, Any]) -> str:
        """The prefix cache's key of ``media`` (the model inputs made from ``frames``), hashed once
        per cached frames object rather than once per prompt about them."""
        with self._lock:
            cached = any(entry is frames for entry in self._entries.values())
            if cached and id(frames) in self._digests:
                return self._digests[id(frames)]
        value = media_digest(media)
        if cached:
            with self._lock:
                self._digests[id(frames)] = value
        return value


def file_identity(media: Any) -> Hashable | None:
    """(path, size, mtime) of a media file, or of each file of a frame list; None for media in memory
    or a file that cannot be read (loading reports that)."""
    paths = [media] if isinstance(media, (str, os.PathLike)) else media
    if not isinstance(paths, Sequence) or not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        return None
    identity = []
    for path in paths:
        resolved = Path(path).resolve()
        try:
            status = resolved.stat()
        except OSError:
            return None
        identity.append((str(resolved), status.st_size, status.st_mtime_ns, stat.S_ISDIR(status.st_mode)))
    return tuple(identity)
