"""A folder of JSONL shards as a job's output: every shard appears whole or not at all.

Large captioning jobs write ``part-*.jsonl`` files into a folder instead of appending to one file:
a shard is written under a temporary name, synced, and renamed into place, so a crash (kill -9
included) never leaves a half-written shard that a rerun would read as done; the records it held are
simply run again. Resume reads every shard; ``merge_shards`` makes one JSONL of them.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError
from tarsier.jsonl import read_records, write_records_atomically

SHARD_GLOB = "part-*.jsonl"
PENDING_SUFFIX = ".pending"


def is_shard_folder(output: str) -> bool:
    """``NAME.jsonl`` is one file; an existing folder or a path ending in ``/`` is a folder of shards.

    Anything else is refused in one line rather than guessed: ``--output typo.json`` once became a
    folder without a word. ``output`` is the path as the user wrote it (a trailing ``/`` counts)."""
    if Path(output).suffix.lower() == ".jsonl":
        return False
    if output.endswith(("/", os.sep)) or Path(output).is_dir():
        return True
    raise TarsierError(f"{output}: not an output to guess at: write NAME.jsonl for one file, or a folder of shards "
                       f"(an existing folder, or a path ending in /, such as {output}/)")


def shard_files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob(SHARD_GLOB))


def read_shard_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every record of every complete shard, in shard-name order (older runs first)."""
    records: list[dict[str, Any]] = []
    for shard in shard_files(folder):
        records.extend(read_records(shard))
    return records


def drop_shard_records(folder: str | Path, unwanted: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite each shard without the records ``unwanted`` picks (each shard atomically)."""
    dropped = 0
    for shard in shard_files(folder):
        records = read_records(shard)
        kept = [record for record in records if not unwanted(record)]
        if len(kept) == len(records):
            continue
        dropped += len(records) - len(kept)
        if kept:
            write_records_atomically(shard, kept, PENDING_SUFFIX)
        else:
            shard.unlink()
    return dropped


def remove_pending(folder: str | Path) -> int:
    """Delete shards a crashed run left half-written (call while holding the output's lock)."""
    pending = list(Path(folder).glob(f"part-*{PENDING_SUFFIX}"))
    for path in pending:
        path.unlink()
    return len(pending)


def merge_shards(folder: str | Path, output: str | Path, key: str = "key") -> int:
    """One JSONL of the folder's shards, one line per ``key`` (the latest record wins); returns lines."""
    by_key: dict[Any, dict[str, Any]] = {}
    for record in read_shard_records(folder):
        by_key.pop(record.get(key), None)  # re-insert so the order is that of the latest records
        by_key[record.get(key)] = record
    write_records_atomically(Path(output), list(by_key.values()), PENDING_SUFFIX)
    return len(by_key)


class ShardWriter:
    """Collects records and writes them as a new shard every ``rows`` records or ``seconds``."""

    def __init__(self, folder: str | Path, rows: int = 500, seconds: float = 30.0):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TarsierError(f"{self.folder}: cannot write here ({exc.strerror or exc})") from None
        self.rows, self.seconds = rows, seconds
        # Names sort by start time (to the nanosecond), so "older shards first" holds across runs.
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000)) + f".{now % 1_000_000_000:09d}"
        self._prefix = f"part-{stamp}-{uuid.uuid4().hex[:8]}"
        self._count = 0
        self._buffer: list[dict[str, Any]] = []
        self._since = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= self.rows or time.monotonic() - self._since >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            write_records_atomically(self.folder / f"{self._prefix}-{self._count:05d}.jsonl", self._buffer, PENDING_SUFFIX)
            self._count += 1
            self._buffer = []
        self._since = time.monotonic()

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # also on Ctrl-C: finished records are kept

