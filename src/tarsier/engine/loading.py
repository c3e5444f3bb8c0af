"""Loading a model + processor pair from a folder or hub id, onto the chosen device and dtype.

The checkpoint is read once (:func:`tarsier.models.auto.read_checkpoint`) and the registry builds
the family's classes from it; the frame count is checked before any weight loads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tarsier.engine.device import resolve_device, resolve_dtype
from tarsier.errors import CheckpointError
from tarsier.models import auto
from tarsier.models.family import Checkpoint

if TYPE_CHECKING:  # torch is imported inside the loaders: names are checked without it
    import torch

    from tarsier.models.interface import FamilyModel, FamilyProcessor


def quiet_loading() -> None:
    """No download or "Loading weights" bars (``--no-progress``); process-wide, as both libraries' switches are."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging

    disable_progress_bars()
    logging.disable_progress_bar()


def load_model(
    name_or_path: str | os.PathLike | Checkpoint,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    progress: bool = True,
) -> FamilyModel:
    """The checkpoint's model (of its family) in eval mode on ``device`` with ``dtype``: ``None`` is
    cuda when available with bf16, else cpu with fp32; ``auto`` spreads layers over GPUs."""
    if not progress:
        quiet_loading()
    checkpoint = auto.read_checkpoint(name_or_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, "cuda" if device == "auto" else device)
    # No hub kernels: transformers would fetch layer code from the hub at load time (and fail offline).
    placement = {"device_map": "auto"} if device == "auto" else {}
    try:
        model = auto.load_model(checkpoint, dtype=torch_dtype, use_kernels=False, **placement)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{checkpoint.folder}: cannot load the weights ({type(exc).__name__}: {exc})") from None
    return (model if device == "auto" else model.to(device)).eval()


def load_pretrained(
    name_or_path: str | os.PathLike | Checkpoint,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_n_frames: int | None = None,
    *,
    progress: bool = True,
    compile: bool = False,
) -> tuple[FamilyModel, FamilyProcessor]:
    """Model and processor from the same checkpoint, of either family (config.json says which).

    ``max_n_frames`` is the frames sampled per video; ``None`` is the family's default (8 for
    Tarsier, 16 for Tarsier2). The frame count is checked before weights load. ``compile`` compiles
    the decode step (:func:`tarsier.engine.decode_step.compile_decode_step`: CUDA graphs, for long
    jobs on a GPU).
    """
    checkpoint = auto.read_checkpoint(name_or_path)
    auto.check_frames(checkpoint, max_n_frames)
    model = load_model(checkpoint, device, dtype, progress=progress)
    if compile:
        from tarsier.engine.decode_step import compile_decode_step

        compile_decode_step(model)
    processor = auto.load_processor(checkpoint, max_n_frames=max_n_frames)
    return model, processor
