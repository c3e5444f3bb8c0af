"""The training data format, label masking, and the Dataset/collator that feed the trainer.

One JSONL line is one training conversation about one piece of media::

    {"id": "clip-17", "task": "caption", "media": "videos/clip-17.mp4", "start": 2.0, "end": 6.5,
     "n_frames": 8, "messages": [{"role": "user", "content": "<video>\\nDescribe the video."},
                                 {"role": "assistant", "content": "A man opens a door."}]}

``media`` is a video, GIF, image or folder of frame images, a list of image files (multi-image:
each image is one frame), or absent/null (text only). Relative paths start at the source's
``media_root`` (default: the JSONL file's folder). ``start``/``end`` clip videos and GIFs (seconds).
``n_frames`` overrides the source's frame count. ``messages`` alternate user/assistant, starting
with the user; ``<video>``/``<image>`` placeholders may appear in the first user turn (the frames
are put there in any case, as the reference prompt does). Other keys are kept for the user's own
bookkeeping and ignored here.

Only assistant replies (and the end-of-turn token that closes each) are trained on; the processor
of the model's family says which tokens those are (``encode_for_training``), from its chat template.

Frames are decoded in DataLoader worker processes. An item whose media cannot be read is replaced
by the next item of the same source and reported to the trainer, which counts it against
``data.max_bad_fraction``; every process keeps the same batch shape, so distributed runs stay in
step.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tarsier.errors import TarsierError
from tarsier.models.interface import FamilyProcessor
from tarsier.models.processing_common import concat_media
from tarsier.prompting import IGNORE_INDEX, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

# Consecutive unreadable items of one source after which a worker gives up (and the run stops).
MAX_REPLACEMENTS = 16


@dataclass(frozen=True)
class TrainingItem:
    """A validated line of the common format, media paths resolved."""

    messages: list[dict[str, str]]
    media: str | list[str] | None
    where: str  # "file:line", for messages
    task: str = "chat"
    n_frames: int | None = None
    start: float | None = None
    end: float | None = None
    frame_indices: list[int] | None = None  # frames the targets were written for (tracking)

    def missing_media(self) -> str | None:
        """The first media path that does not exist, if any (checked before training starts)."""
        paths = [] if self.media is None else [self.media] if isinstance(self.media, str) else self.media
        return next((p for p in paths if not os.path.exists(p)), None)


def parse_item(record: dict[str, Any], where: str, media_root: Path) -> TrainingItem:
    """Check a common-format record; a problem is a TarsierError naming the field."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TarsierError("needs 'messages': a list of {role, content} turns")
    for turn, message in enumerate(messages):
        expected = "user" if turn % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != expected or not isinstance(message.get("content"), str):
            raise TarsierError(f"message {turn + 1} must be {{'role': '{expected}', 'content': text}} (turns alternate, user first)")
    if len(messages) < 2:
        raise TarsierError("has no assistant reply to train on")
    media = record.get("media")
    if isinstance(media, str) and media:
        media = str(media_root / media)
    elif isinstance(media, list) and media and all(isinstance(m, str) and m for m in media):
        media = [str(media_root / m) for m in media]
    elif media is not None:
        raise TarsierError("'media' must be a path, a list of image paths, or null")
    n_frames = record.get("n_frames")
    if n_frames is not None and (not isinstance(n_frames, int) or isinstance(n_frames, bool) or n_frames < 1):
        raise TarsierError(f"'n_frames' must be a positive integer, got {n_frames!r}")
    times = {}
    for key in ("start", "end"):
        value = record.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise TarsierError(f"'{key}' must be seconds (a number), got {value!r}")
        times[key] = value
    indices = record.get("frame_indices")
    if indices is not None and not (isinstance(indices, list) and all(isinstance(i, int) for i in indices)):
        raise TarsierError("'frame_indices' must be a list of integers")
    task = record.get("task", "chat")
    if not isinstance(task, str):
        raise TarsierError("'task' must be a string")
    if media is None and any(p in messages[0]["content"] for p in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER)):
        raise TarsierError("has a <video>/<image> placeholder but no 'media'")
    return TrainingItem(messages, media, where, task, n_frames, times["start"], times["end"], indices)


# -- dataset and collator -------------------------------------------------------------------------


class TrainingDataset(Dataset):
    """Items of all sources, concatenated; ``__getitem__`` decodes frames and tokenises.

    ``source_ranges[s]`` is the half-open range of item ids of source ``s``; an unreadable item is
    replaced by the next one of its own source so the mixture's proportions hold.
    """

    def __init__(
        self,
        items: Sequence[TrainingItem],
        source_ranges: list[tuple[int, int]],
        processor: FamilyProcessor,
        default_frames: list[int],
        max_length: int,
    ):
        self.items = items
        self.source_ranges = source_ranges
        self.processor = processor
        self.default_frames = default_frames  # per source
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.items)

    def _source_of(self, index: int) -> int:
        return next(s for s, (low, high) in enumerate(self.source_ranges) if low <= index < high)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = self._source_of(index)
        low, high = self.source_ranges[source]
        failures: list[str] = []
        for attempt in range(MAX_REPLACEMENTS):
            item = self.items[low + (index - low + attempt) % (high - low)]
            try:
                example = self.encode(item, self.default_frames[source])
            except TarsierError as exc:
                failures.append(f"{item.where}: {' '.join(str(exc).split())}")
                continue
            example["failures"] = failures
            return example
        raise TarsierError(f"{MAX_REPLACEMENTS} items in a row could not be used, last: {failures[-1]}")

    def encode(self, item: TrainingItem, default_frames: int) -> dict[str, Any]:
        """Frames and tokens of one item (a TarsierError says why it cannot be used)."""
        frames = None
        if item.media is not None:
            wanted = item.n_frames or (len(item.media) if isinstance(item.media, list) else default_frames)
            frames = self.processor.load_media(item.media, n_frames=wanted, start_time=item.start, end_time=item.end)
            if item.frame_indices is not None and list(frames.indices) != item.frame_indices:
                raise TarsierError(f"sampled frames {frames.indices} differ from the annotated {item.frame_indices}")
        ids, labels, media = self.processor.encode_for_training(item.messages, frames)
        if len(ids) > self.max_length:  # cut the end of the last reply; never cut into frames
            media_ids = self.processor.media_token_ids
            if any(token in media_ids for token in ids[self.max_length :]):
                raise TarsierError(f"{len(ids)} tokens: the frames do not fit in data.max_length={self.max_length}")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if all(label == IGNORE_INDEX for label in labels):
                raise TarsierError(f"no reply token within data.max_length={self.max_length}")
        return {"input_ids": ids, "labels": labels, "media": media, "task": item.task}


class Collator:
    """Left-pads a micro-batch and concatenates each media input of its items in order."""

    def __init__(self, processor: FamilyProcessor):
        self.processor = processor

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self.processor.pad([e["input_ids"] for e in examples], [e["labels"] for e in examples])
        batch.update(concat_media([e["media"] for e in examples]))
        batch["failures"] = [failure for e in examples for failure in e["failures"]]
        batch["tasks"] = [e["task"] for e in examples]
        return batch


def worker_init(_: int) -> None:
    """One thread per DataLoader worker: the workers share the cores with the training step."""
    torch.set_num_threads(1)
