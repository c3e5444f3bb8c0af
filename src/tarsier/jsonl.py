"""JSON Lines files that batch jobs append to and resume from.

Every long job here (captioning, benchmark inference, judging) writes one JSON object per line.
A crash can cut the last line short; reopening an output repairs that torn tail before appending,
and :func:`read_records` gives back what is already done, so a rerun neither loses nor repeats
work.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line number, object, None)`` for each non-blank line holding a JSON object, and
    ``(line number, None, problem)`` for each that does not (bad UTF-8, not JSON, not an object).

    Reading goes on past a bad line, so callers choose: :func:`iter_jsonl` stops at the first,
    training counts them against its bad-line cap. An unreadable file raises ``OSError``.
    """
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                yield number, None, "not UTF-8 text"
                continue
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON ({exc.msg}: column {exc.colno})"
                continue
            except RecursionError:
                yield number, None, "not valid JSON (nested too deeply)"
                continue
            if not isinstance(record, dict):
                yield number, None, f"expected a JSON object, got {_json_kind(record)}"
                continue
            yield number, record, None


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; a bad line is a one-line error."""
    path = Path(path)
    try:
        for number, record, problem in jsonl_lines(path):
            if problem is not None:
                raise TarsierError(f"{path}:{number}: {problem}")
            yield number, record
    except FileNotFoundError:
        raise TarsierError(f"{path}: file not found") from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of an output file written by :class:`JsonlAppender`; a torn last line is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    # The text after the final newline is either empty or a line a crash cut short.
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise TarsierError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return records


def fingerprint(**fields: Any) -> str:
    """A short stable hash of everything that changes an item's output (media, prompt, window, frames).

    Resuming by this instead of by the media path alone keeps three windows of one video (or one
    clip asked two questions) three separate items, and notices when an item's settings changed.
    """
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:16]


def drop_records(path: str | Path, unwanted: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` without the records ``unwanted`` picks (atomically); returns how many went.

    Used to retry failed items: their records are removed so a rerun treats them as not done.
    """
    path = Path(path)
    records = read_records(path)
    kept = [record for record in records if not unwanted(record)]
    if len(kept) != len(records):
        write_records_atomically(path, kept)
    return len(records) - len(kept)


def write_records_atomically(path: Path, records: list[dict[str, Any]], scratch_suffix: str = ".tmp") -> None:
    """Replace ``path`` with ``records`` as JSONL: written beside it, synced, then renamed into place,
    so a reader (or a crash) sees the old file or the whole new one, never half of it."""
    scratch = path.with_name(path.name + scratch_suffix)
    with scratch.open("w", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)


class OutputLock:
    """An exclusive claim on an output file, so two jobs never append the same work to it.

    The claim is an OS lock (``flock``) on a hidden ``.NAME.lock`` file beside the output: it is
    released when the process ends however it ends (kill -9 included), so there are no stale locks
    to clean up. Taking it also proves the output is writable before any model is loaded.
    """

    def __init__(self, path: str | Path, folder: bool = False):
        self.path = Path(path)
        self.folder = folder  # an output folder of shards rather than one file
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._handle: Any = None

    def acquire(self) -> OutputLock:
        if self.folder:
            if self.path.exists() and not self.path.is_dir():
                raise TarsierError(f"{self.path}: is a file; an output without .jsonl is a folder of shards")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TarsierError(f"{self.path}: cannot write here ({exc.strerror or exc})") from None
        else:
            check_output_file(self.path)
        try:
            handle = self.lock_path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise TarsierError(f"{self.path}: cannot write here ({exc.strerror or exc})") from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; concurrent runs are the user's to avoid
            self._handle = handle
            return self
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise TarsierError(
                f"{self.path}: another tarsier process (pid {owner}) is writing to this output; "
                "wait for it to finish or choose another output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def check_output_file(path: str | Path) -> None:
    """One-line error unless ``path`` is (or can become) a writable file; creates its folder."""
    path = Path(path)
    if path.is_dir():
        raise TarsierError(f"{path}: is a folder; give the path of a .jsonl file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("a", encoding="utf-8"):
                pass
    except OSError as exc:
        raise TarsierError(f"{path}: cannot write here ({exc.strerror or exc})") from None


class JsonlAppender:
    """Appends records to a JSONL file, one flushed line per record.

    A line is written with a single ``write`` and flushed (optionally fsynced), so after a crash at
    most the last line is incomplete; opening the file again cuts that fragment off.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._repair_torn_tail()
        self._handle = self.path.open("a", encoding="utf-8")

    def _repair_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        if self._fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
