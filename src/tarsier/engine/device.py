"""Choosing a device and dtype from what the user typed, with one-line errors; names are checked
without importing torch, so a typo fails before anything loads."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tarsier.errors import TarsierError

if TYPE_CHECKING:
    import torch

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

