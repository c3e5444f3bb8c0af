"""Task adapters: read each task's natural JSONL shape and produce a common-format record.

Every training line ends up as the common format of :mod:`tarsier.train.data` (media, chat
messages, task tag, optional frame count). A mixture source names the adapter its lines need, so
existing annotation files are used as they are:

========================  =====================================================================
adapter                   line
========================  =====================================================================
``chat``                  the common format itself
``caption``               ``{"media", "caption", "prompt"?}``
``multiple_choice``       ``{"media", "question", "options": [...], "answer": "B" | 1 | "text"}``
``open_qa``               ``{"media", "question", "answer"}``
``action``                ``{"media", "label", "prompt"?}`` (action recognition)
``multi_image``           ``{"images": [...], "prompt", "response"}``
``text``                  ``{"prompt", "response"}`` or ``{"messages"}`` without media
``tracking``              ``{"media", "object", "boxes": [box | null per frame], "box_format"?, "size"?}``
========================  =====================================================================

Every adapter also passes through ``id``, ``start``, ``end`` and ``n_frames``. Prompts left out
are chosen from a few wordings by a stable hash of the line, so a dataset sees varied
instructions while every run (and every resume) sees the same one for the same line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tarsier.errors import TarsierError
from tarsier.media import IMAGE_EXTENSIONS, sample_frame_indices

CAPTION_PROMPTS = ("Describe the video in detail.", "Describe the video.", "What happens in the video? Describe it.")
IMAGE_CAPTION_PROMPTS = ("Describe the image in detail.", "Describe the image.")
ACTION_PROMPTS = ("What action is shown in the video?", "What is being done in the video?")
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
PASS_THROUGH = ("id", "start", "end", "n_frames")


def pick(options: Sequence[str], key: str) -> str:
    """One of ``options``, the same for the same ``key`` on every run."""
    digest = hashlib.sha256(key.encode()).digest()
    return options[int.from_bytes(digest[:4], "little") % len(options)]


def require(record: dict[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    value = record.get(name)
    if not isinstance(value, kind) or (isinstance(value, (str, list)) and not value):
        raise TarsierError(f"needs a non-empty '{name}'")
    return value


def _common(record: dict[str, Any], media: Any, task: str, user: str, answer: str) -> dict[str, Any]:
    item = {k: record[k] for k in PASS_THROUGH if k in record}
    item.update(task=task, media=media, messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    return item


def from_chat(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    return record


def from_caption(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    media = require(record, "media", (str, list))
    is_image = isinstance(media, str) and Path(media).suffix.lower() in IMAGE_EXTENSIONS
    prompt = record.get("prompt") or pick(IMAGE_CAPTION_PROMPTS if is_image else CAPTION_PROMPTS, where)
    return _common(record, media, record.get("task", "caption"), prompt, require(record, "caption"))


def from_multiple_choice(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    """Options are lettered (A), (B), ...; the target is the letter in parentheses."""
    options = require(record, "options", list)
    if not all(isinstance(option, str) for option in options) or len(options) > 26:
        raise TarsierError("'options' must be a list of at most 26 strings")
    answer = record.get("answer")
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        letter = letters[answer]
    elif isinstance(answer, str) and answer.strip("() ").upper() in letters and len(answer.strip("() ")) == 1:
        letter = answer.strip("() ").upper()
    elif isinstance(answer, str) and answer in options:
        letter = letters[options.index(answer)]
    else:
        raise TarsierError(f"'answer' {answer!r} is not an option letter, index or option text")
    lines = [require(record, "question"), "Options:"] + [f"({l}) {o}" for l, o in zip(letters, options)] + [MC_INSTRUCTION]
    return _common(record, require(record, "media", (str, list)), "multiple_choice", "\n".join(lines), f"({letter})")


def from_open_qa(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    media = require(record, "media", (str, list))
    return _common(record, media, "open_qa", require(record, "question"), require(record, "answer"))


def from_action(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    prompt = record.get("prompt") or pick(ACTION_PROMPTS, where)
    return _common(record, require(record, "media", (str, list)), "action", prompt, require(record, "label"))


def from_multi_image(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    images = require(record, "images", list)
    if not all(isinstance(image, str) for image in images):
        raise TarsierError("'images' must be a list of image paths")
    item = _common(record, images, "multi_image", require(record, "prompt"), require(record, "response"))
    item.setdefault("n_frames", len(images))  # every image once
    return item


def from_text(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    if "messages" in record:
        return {**record, "media": None, "task": record.get("task", "text")}
    return _common(record, None, "text", require(record, "prompt"), require(record, "response"))


def from_tracking(record: dict[str, Any], where: str, n_frames: int) -> dict[str, Any]:
    """Boxes of one object, one entry per source frame (``null`` where it is not visible).

    The frames the loader will sample are known from the frame count (the uniform rule of
    :func:`tarsier.media.sample_frame_indices`), so the target lists the box in each sampled frame,
    as ``[x1, y1, x2, y2]`` in 0..1 image coordinates with two decimals. The loader checks that it
    really sampled those frames.
    """
    boxes = require(record, "boxes", list)
    box_format = record.get("box_format", "xyxy")
    if box_format not in ("xyxy", "xywh"):
        raise TarsierError(f"'box_format' must be xyxy or xywh, got {box_format!r}")
    size = record.get("size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in size)):
        raise TarsierError("'size' must be [width, height] in pixels")
    count = record.get("n_frames") or n_frames
    indices = sample_frame_indices(len(boxes), count)
    lines = []
    for number, index in enumerate(indices, start=1):
        box = boxes[index]
        lines.append(f"Frame {number}: " + ("not visible" if box is None else _format_box(box, box_format, size)))
    obj = require(record, "object")
    prompt = record.get("prompt") or f"Track {obj} through the video. Give its box in every frame."
    item = _common(record, require(record, "media", (str, list)), "tracking", prompt, "\n".join(lines))
    item.update(n_frames=count, frame_indices=indices)
    return item


def _format_box(box: Any, box_format: str, size: list[float] | None) -> str:
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise TarsierError(f"each box must be 4 numbers or null, got {box!r}")
    x1, y1, a, b = box
    x2, y2 = (x1 + a, y1 + b) if box_format == "xywh" else (a, b)
    width, height = size or (1, 1)
    values = [x1 / width, y1 / height, x2 / width, y2 / height]
    return "[" + ", ".join(f"{min(max(v, 0.0), 1.0):.2f}" for v in values) + "]"


ADAPTERS: dict[str, Callable[[dict[str, Any], str, int], dict[str, Any]]] = {
    "chat": from_chat,
    "caption": from_caption,
    "multiple_choice": from_multiple_choice,
    "open_qa": from_open_qa,
    "action": from_action,
    "multi_image": from_multi_image,
    "text": from_text,
    "tracking": from_tracking,
}
