"""Turning command-line inputs (files, folders, list files) into media items."""

from __future__ import annotations

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
        """Identity for resuming: everything that changes this item's output, not the path alone."""
        return fingerprint(
            path=self.path, prompt=self.prompt, start_time=self.start_time, end_time=self.end_time, max_frames=max_frames
        )


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


def read_input_list(path: Path) -> list[MediaInput]:
    """A ``.txt`` list (one path per line, ``#`` comments) or a ``.jsonl`` list of objects with
    ``path`` and optional ``prompt``, ``start_time``, ``end_time``, ``id``. Relative paths are
    taken relative to the list file."""
    base = path.parent
    items: list[MediaInput] = []
    if path.suffix.lower() == ".jsonl":
        for number, record in iter_jsonl(path):
            if not isinstance(record.get("path"), str):
                raise TarsierError(f"{path}:{number}: each line needs a \"path\" string")
            for name in ("start_time", "end_time"):
                if record.get(name) is not None and not isinstance(record[name], (int, float)):
                    raise TarsierError(f"{path}:{number}: \"{name}\" must be a number of seconds")
            if record.get("prompt") is not None and not isinstance(record["prompt"], str):
                raise TarsierError(f"{path}:{number}: \"prompt\" must be a string")
            items.append(
                MediaInput(
                    str(base / record["path"]),
                    record.get("prompt"),
                    record.get("start_time"),
                    record.get("end_time"),
                    record.get("id"),
                )
            )
        return items
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.append(MediaInput(os.path.join(base, line)))
    return items
