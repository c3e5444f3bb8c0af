"""Choosing a device and dtype and loading a model + processor pair from a folder or hub id."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from tarsier.checkpoints import checkpoint_folder
from tarsier.errors import CheckpointError, TarsierError

if TYPE_CHECKING:  # torch is imported inside the loaders: names are checked without it
    import torch

    from tarsier.model import TarsierForConditionalGeneration
    from tarsier.processor import TarsierProcessor

# dtype names a user may give -> torch attribute
DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
DEVICE_NAME = re.compile(r"^(cpu|cuda|mps)(:\d+)?$|^auto$")


def check_device_name(name: str | None) -> None:
    """One-line error for a device name that can never work (checked without importing torch)."""
    if name is not None and not DEVICE_NAME.match(name):
        raise TarsierError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")


def check_dtype_name(name: str | None) -> None:
    if name is not None and name.lower() not in DTYPES:
        raise TarsierError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")


def resolve_device(name: str | None) -> str:
    """``None`` -> cuda if available else cpu; ``auto`` spreads layers over GPUs (accelerate)."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device_name(name)
    if name == "auto":
        return name
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TarsierError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TarsierError(f"device {name!r} requested but MPS is not available on this machine")
    return name


def resolve_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    """``None`` -> bf16 on GPUs, fp32 on CPU."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    check_dtype_name(name)
    return getattr(torch, DTYPES[name.lower()])


def quiet_loading() -> None:
    """No download or "Loading weights" bars (``--no-progress``); process-wide, as both libraries' switches are."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging

    disable_progress_bars()
    logging.disable_progress_bar()


def load_model(
    name_or_path: str | os.PathLike,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    progress: bool = True,
) -> TarsierForConditionalGeneration:
    """The model in eval mode on ``device`` with ``dtype`` (resolved as documented above); a Tarsier2
    checkpoint gives a ``Tarsier2ForConditionalGeneration``."""
    from tarsier.model import TarsierForConditionalGeneration

    if not progress:
        quiet_loading()
    folder = checkpoint_folder(name_or_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, "cuda" if device == "auto" else device)
    # No hub kernels: transformers would fetch layer code from the hub at load time (and fail offline).
    try:
        if device == "auto":
            model = TarsierForConditionalGeneration.from_pretrained(str(folder), dtype=torch_dtype, device_map="auto",
                                                                    use_kernels=False)
        else:
            model = TarsierForConditionalGeneration.from_pretrained(str(folder), dtype=torch_dtype, use_kernels=False).to(device)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}: cannot load the weights ({type(exc).__name__}: {exc})") from None
    return model.eval()


# Frames beyond what the language model was trained to attend to: warn past WARN_CONTEXT times its
# context, refuse past MAX_CONTEXT times (minutes of decoding and GBs of memory for nothing useful).
WARN_CONTEXT = 2
MAX_CONTEXT = 4
PROMPT_ALLOWANCE = 100  # positions for the prompt text around the frames


def check_frame_budget(folder: str | os.PathLike, n_frames: int | None) -> None:
    """Refuse (or warn, with the numbers) when ``n_frames`` cannot sensibly fit the model's context.

    Runs on ``config.json`` alone, before weights load or any video is decoded. ``None`` is the
    family's default frame count. A first-generation frame takes a fixed 601 positions, so the
    context decides. Tarsier2's processor shares one pixel budget among a sample's frames (about
    12,000 positions in all, a third of its 32,768-position context), so more frames never overflow
    the context but each gets fewer pixels: past 32 frames it warns, past 64 (each frame under
    384 x 384 pixels) it refuses.
    """
    import sys

    from tarsier.model import TarsierConfig
    from tarsier.processor import TarsierProcessor, checkpoint_family

    if checkpoint_family(folder) == "tarsier2":
        check_tarsier2_frames(n_frames)
        return
    n_frames = TarsierProcessor.default_n_frames if n_frames is None else n_frames
    config = TarsierConfig.from_pretrained(str(folder))
    per_frame = len(config.frame_token_ids())
    context = config.text_config.max_position_embeddings
    needed = n_frames * per_frame + PROMPT_ALLOWANCE
    most = max(1, (MAX_CONTEXT * context - PROMPT_ALLOWANCE) // per_frame)
    if needed > MAX_CONTEXT * context:
        raise TarsierError(
            f"{n_frames} frames need about {needed:,} positions ({per_frame} per frame), but this model attends "
            f"to {context:,}; use at most {most} frames"
        )
    if needed > WARN_CONTEXT * context:
        print(
            f"tarsier: warning: {n_frames} frames need about {needed:,} positions ({per_frame} per frame), "
            f"over {WARN_CONTEXT}x the {context:,} this model was trained on; descriptions may degrade",
            file=sys.stderr,
        )


TARSIER2_WARN_FRAMES = 32
TARSIER2_MAX_FRAMES = 64


def check_tarsier2_frames(n_frames: int | None) -> None:
    """Tarsier2's frame ceiling (see :func:`check_frame_budget`), with the pixels each frame would get."""
    import math
    import sys

    from tarsier.processing_tarsier2 import FrameRules

    if n_frames is None or n_frames <= TARSIER2_WARN_FRAMES:
        return
    rules = FrameRules()
    side = math.isqrt(rules.max_pixels_per_sample // (2 * n_frames))  # each frame is fed twice
    shared = (f"Tarsier2 shares {rules.max_pixels_per_sample:,} pixels among a video's frames (each fed twice), "
              f"so each of {n_frames} frames gets about {side} x {side} pixels")
    if n_frames > TARSIER2_MAX_FRAMES:
        raise TarsierError(f"{n_frames} frames are too many: {shared}; use at most {TARSIER2_MAX_FRAMES} frames")
    print(f"tarsier: warning: {shared}; descriptions may degrade", file=sys.stderr)


def load_pretrained(
    name_or_path: str | os.PathLike,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_n_frames: int | None = None,
    *,
    progress: bool = True,
    compile: bool = False,
) -> tuple[TarsierForConditionalGeneration, TarsierProcessor]:
    """Model and processor from the same checkpoint, of either family (config.json says which).

    ``max_n_frames`` is the frames sampled per video; ``None`` is the family's default (8 for
    Tarsier, 16 for Tarsier2). The frame count is checked before weights load. ``compile`` compiles
    the decode step (:func:`tarsier.engine.compile_decode_step`: CUDA graphs, for long jobs on a GPU).
    """
    from tarsier.processor import TarsierProcessor

    folder = checkpoint_folder(name_or_path)
    check_frame_budget(folder, max_n_frames)
    model = load_model(folder, device, dtype, progress=progress)
    if compile:
        from tarsier.engine import compile_decode_step

        compile_decode_step(model)
    processor = TarsierProcessor.from_pretrained(folder, max_n_frames=max_n_frames)
    return model, processor
