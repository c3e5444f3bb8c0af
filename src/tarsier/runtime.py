"""Choosing a device and dtype and loading a model + processor pair from a folder or hub id."""

from __future__ import annotations

import os

import torch

from tarsier.checkpoints import checkpoint_folder
from tarsier.errors import CheckpointError, TarsierError
from tarsier.model import TarsierForConditionalGeneration
from tarsier.processor import TarsierProcessor

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_device(name: str | None) -> str:
    """``None`` -> cuda if available else cpu; ``auto`` spreads layers over GPUs (accelerate)."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise TarsierError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TarsierError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TarsierError(f"device {name!r} requested but MPS is not available on this machine")
    return name


def resolve_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    """``None`` -> bf16 on GPUs, fp32 on CPU."""
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if name.lower() not in DTYPES:
        raise TarsierError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name.lower()]


def load_model(
    name_or_path: str | os.PathLike,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> TarsierForConditionalGeneration:
    """The model in eval mode on ``device`` with ``dtype`` (resolved as documented above)."""
    folder = checkpoint_folder(name_or_path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, "cuda" if device == "auto" else device)
    try:
        if device == "auto":
            model = TarsierForConditionalGeneration.from_pretrained(str(folder), dtype=torch_dtype, device_map="auto")
        else:
            model = TarsierForConditionalGeneration.from_pretrained(str(folder), dtype=torch_dtype).to(device)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}: cannot load the weights ({type(exc).__name__}: {exc})") from None
    return model.eval()


def load_pretrained(
    name_or_path: str | os.PathLike,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_n_frames: int = 8,
) -> tuple[TarsierForConditionalGeneration, TarsierProcessor]:
    """Model and processor from the same checkpoint."""
    folder = checkpoint_folder(name_or_path)
    model = load_model(folder, device, dtype)
    processor = TarsierProcessor.from_pretrained(folder, max_n_frames=max_n_frames)
    return model, processor
