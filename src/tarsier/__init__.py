"""tarsier: Tarsier video-language models -- media -> processor -> model -> generation.

    from tarsier import TarsierForConditionalGeneration, TarsierProcessor, describe

Names are imported on first use, so ``tarsier --help`` does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from tarsier.errors import CheckpointError, MediaError, PromptError, TarsierError

_LAZY = {
    "TarsierConfig": "tarsier.model",
    "TarsierForConditionalGeneration": "tarsier.model",
    "TarsierProcessor": "tarsier.processor",
    "GenerationSettings": "tarsier.generation",
    "ChatSession": "tarsier.generation",
    "Describer": "tarsier.inference",
    "DescribeRequest": "tarsier.inference",
    "DescribeResult": "tarsier.inference",
    "describe": "tarsier.inference",
    "load_frames": "tarsier.media",
}

__all__ = ["CheckpointError", "MediaError", "PromptError", "TarsierError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tarsier' has no attribute {name!r}")
