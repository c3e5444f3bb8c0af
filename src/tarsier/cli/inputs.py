"""Turning command-line inputs (files, folders, list files) into media items."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError
from tarsier.jsonl import fingerprint, iter_jsonl

# Each is one media item; a folder of frame images is one too when asked for.
MEDIA_SUFFIXES = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".wmv", ".gif", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")


@dataclass
class MediaInput:
    path: str
    prompt: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    id: Any = None  # the input line's own "id", carried to the output to join on

    def key(self, max_frames: int) -> str:
        """Identity for resuming: everything that changes this item's output, not the path alone.
        The path is taken as a file, not as spelled: ``videos/x.mp4``, ``./videos/x.mp4`` and its
        absolute path are one item."""
        return self.spelled_key(canonical_path(self.path), max_frames)

    def spelled_key(self, path: str, max_frames: int) -> str:
        """The key with ``path`` as given (how earlier versions keyed items: by the path as spelled)."""
        return fingerprint(path=path, prompt=self.prompt, start_time=self.start_time, end_time=self.end_time,
                           max_frames=max_frames)


def canonical_path(path: str) -> str:
    """A local path made absolute and normalised (relative to the current folder); URIs as they are."""
    if "://" in path:
        return path
    return os.path.normpath(os.path.abspath(path))


def media_in_folder(folder: Path, recursive: bool) -> list[Path]:
    """Media files in ``folder`` (sorted; hidden files skipped)."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path for path in pattern if path.is_file() and path.suffix.lower() in MEDIA_SUFFIXES and not path.name.startswith(".")
    )


def expand_paths(paths: list[str], recursive: bool = False, frame_folders: bool = False) -> list[MediaInput]:
    """Files stay as they are; a folder gives its media files, or is one video if ``frame_folders``."""
    items: list[MediaInput] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not frame_folders:
            found = media_in_folder(path, recursive)
            if not found:
                raise TarsierError(f"{path}: no video, GIF or image files in this folder")
            items.extend(MediaInput(str(p)) for p in found)
        else:
            items.append(MediaInput(str(path)))  # missing files are reported per item
    return items


MANIFEST_SUFFIXES = (".txt", ".list", ".jsonl", ".csv", ".parquet")


def read_input_list(path: Path | str) -> list[MediaInput]:
    """A manifest of media items, local or at a URI pyarrow can open (``file://``, ``s3://``, ``gs://``, ...).

    ``.txt``/``.list``: one path per line (``#`` comments). ``.jsonl``, ``.csv``, ``.parquet``: rows
    with ``path`` and optional ``prompt``, ``start_time``, ``end_time``, ``id``. Relative paths are
    taken relative to the manifest; ``file://`` URIs become local paths.
    """
    name = str(path)
    base, text_lines, rows = _manifest_rows(name)
    where = name
    items: list[MediaInput] = []
    if text_lines is not None:
        for line in text_lines:
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(MediaInput(_join(base, line)))
        return items
    for number, record in rows:
        if not isinstance(record.get("path"), str) or not record["path"]:
            raise TarsierError(f"{where}:{number}: each line needs a \"path\" string")
        for field in ("start_time", "end_time"):
            value = record.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TarsierError(f"{where}:{number}: \"{field}\" must be a number of seconds")
            if isinstance(value, float) and value != value:  # an empty CSV/Parquet cell
                record[field] = None
        prompt = record.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise TarsierError(f"{where}:{number}: \"prompt\" must be a string")
        items.append(MediaInput(_join(base, record["path"]), prompt or None, record.get("start_time"),
                                record.get("end_time"), record.get("id")))
    return items


def _manifest_rows(name: str) -> tuple[str, list[str] | None, list[tuple[int, dict[str, Any]]]]:
    """(base for relative paths, text lines for a .txt list, else numbered rows)."""
    suffix = Path(name.split("?")[0]).suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise TarsierError(f"{name}: expected a .txt, .jsonl, .csv or .parquet manifest")
    if "://" in name and not name.startswith("file://"):
        data = _read_uri(name)
        base = name.rsplit("/", 1)[0]
    else:
        local = Path(name[len("file://"):] if name.startswith("file://") else name)
        if not local.is_file():
            raise TarsierError(f"{name}: file not found")
        data = local.read_bytes() if suffix in (".csv", ".parquet") else None
        base = str(local.parent)
        if suffix == ".jsonl":
            return base, None, list(iter_jsonl(local))
        if data is None:
            return base, local.read_text(encoding="utf-8").splitlines(), []
    if suffix in (".txt", ".list"):
        return base, data.decode("utf-8").splitlines(), []
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise TarsierError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
        return base, None, rows
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        rows = [(number, _csv_row(row)) for number, row in enumerate(reader, start=2)]
        return base, None, rows
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        raise TarsierError(f"{name}: not a readable Parquet file ({' '.join(str(exc).split())})") from None
    return base, None, list(enumerate(table.to_pylist(), start=1))


def _csv_row(row: dict[str, str | None]) -> dict[str, Any]:
    """CSV cells are text: empty ones are missing, times are numbers."""
    out: dict[str, Any] = {key: (value if value != "" else None) for key, value in row.items() if key}
    for field in ("start_time", "end_time"):
        if out.get(field) is not None:
            try:
                out[field] = float(out[field])
            except ValueError:
                pass  # reported by the caller with the line number
    return out


def _read_uri(uri: str) -> bytes:
    try:
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except ImportError:
        raise TarsierError(f"{uri}: reading manifests from URIs needs pyarrow (pip install pyarrow)") from None
    except Exception as exc:
        raise TarsierError(f"{uri}: cannot read ({' '.join(str(exc).split())})") from None


def _join(base: str, path: str) -> str:
    """``path`` relative to the manifest's location; URIs and absolute paths are kept (file:// made local)."""
    if path.startswith("file://"):
        return path[len("file://"):]
    if "://" in path or os.path.isabs(path):
        return path
    return f"{base}/{path}" if "://" in base else os.path.join(base, path)
