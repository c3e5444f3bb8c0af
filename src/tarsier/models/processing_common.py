"""What both families' processors share: the media items a call accepts, the Hugging Face call
options, and left-padded batches.

Imports only the media layer and the shared prompt language; never a family.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from tarsier.errors import MediaError, PromptError
from tarsier.media import SampledFrames
from tarsier.prompting import IGNORE_INDEX, counted

# One media item: a video, GIF or image path, a folder of frames, a list of frame files (one video),
# a PIL image, a list of PIL images (one video, already sampled), or frames sampled before.
MediaItem = str | os.PathLike | Sequence[str | os.PathLike] | Image.Image | Sequence[Image.Image] | SampledFrames


# One prepared item: its prompt ids and its media inputs (pixel_values, Tarsier2's image_grid_thw).
ItemInputs = tuple[Sequence[int], Mapping[str, torch.Tensor]]


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, labels: Sequence[Sequence[int]] | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` (and ``labels`` with -100), padded on the left as both
    families' batches are, so every row's last prompt token is the batch's last column."""
    longest = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    padded_labels = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, longest - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, longest - len(seq) :] = 1
            if labels is not None:
                padded_labels[row, longest - len(seq) :] = torch.tensor(labels[row], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if labels is not None:
        batch["labels"] = padded_labels
    return batch


def concat_media(media: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each media input of a batch's items concatenated in item order (items without it add nothing)."""
    names = dict.fromkeys(name for inputs in media for name in inputs)
    return {name: torch.cat([inputs[name] for inputs in media if name in inputs]) for name in names}


class BatchingProcessor:
    """Batching as both families' processors do it; a subclass sets ``tokenizer`` (its pad id pads)."""

    tokenizer: Any

    def pad(self, sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """Left-pad id lists into ``input_ids`` / ``attention_mask`` (and ``labels`` with -100)."""
        return left_pad(sequences, self.tokenizer.pad_token_id, labels)

    def collate(self, items: Sequence[ItemInputs]) -> dict[str, torch.Tensor]:
        """Prepared items (``encode_item``'s) -> the model's inputs for one left-padded batch: ids
        padded by :meth:`pad`, media inputs by :func:`concat_media`."""
        return {**self.pad([ids for ids, _ in items]), **concat_media([media for _, media in items])}


def frames_in_memory(media: MediaItem) -> SampledFrames | None:
    """ONE media item given in memory, as frames taken as they are: :class:`SampledFrames`, a PIL
    image or a list of PIL images (one video). None for what must be read from files (a path, a
    list of frame files), which the family's own sampling rule reads; a MediaError for anything else."""
    if isinstance(media, SampledFrames):
        return media
    if isinstance(media, Image.Image):
        return SampledFrames([media.convert("RGB")], [0], 1, None, "<image>", "image")
    if isinstance(media, (str, os.PathLike)):
        return None
    if isinstance(media, Sequence) and not isinstance(media, (str, bytes)):
        if media and all(isinstance(m, Image.Image) for m in media):
            images = [image.convert("RGB") for image in media]
            return SampledFrames(images, list(range(len(images))), len(images), None, "<images>", "frames")
        odd = next((m for m in media if not isinstance(m, (str, os.PathLike))), None)
        if odd is not None:
            raise MediaError(f"a list of frames holds either frame file paths or PIL images, not {type(odd).__name__}")
        return None
    raise MediaError(
        f"unsupported media item of type {type(media).__name__}; pass a path, a folder, "
        "a list of frame files, a PIL image, a list of PIL images or SampledFrames"
    )


def check_call_options(processor: str, return_tensors: str | None, padding: bool | str) -> None:
    """The Hugging Face call options a processor takes: PyTorch tensors, batches padded to the longest prompt."""
    if return_tensors not in ("pt", None):
        raise ValueError(f"{processor} returns PyTorch tensors only (return_tensors='pt')")
    if padding is not True and padding != "longest":
        raise ValueError(f"{processor} always left-pads a batch to its longest prompt: padding=True or 'longest', "
                         f"not {padding!r}")


def media_per_prompt(media: Any, n_prompts: int) -> list[Any]:
    """The media item of each prompt: a list/tuple holds one item per prompt; anything else is one item."""
    if media is None:
        return [None] * n_prompts
    items = list(media) if isinstance(media, (list, tuple)) else [media]
    if len(items) != n_prompts:
        hint = ""
        if n_prompts == 1 and len(items) > 1:
            hint = "; to give one video as frames, nest them (videos=[[frame1, frame2, ...]]) or pass their folder"
        raise PromptError(
            f"got {counted(n_prompts, 'prompt')} but {counted(len(items), 'media item')}: "
            f"a list passed to videos=/images= holds one item per prompt{hint}"
        )
    return items

