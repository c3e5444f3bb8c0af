"""tarsier: Tarsier video-language models -- media -> model families -> engine -> applications.

    from tarsier import TarsierForConditionalGeneration, TarsierProcessor, describe

Names are imported on first use, so ``tarsier --help`` does not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from tarsier.errors import CheckpointError, MediaError, PromptError, TarsierError

_LAZY = {
    "TarsierConfig": "tarsier.models.tarsier.configuration_tarsier",
    "TarsierForConditionalGeneration": "tarsier.models.tarsier.modeling_tarsier",
    "TarsierProcessor": "tarsier.models.tarsier.processing_tarsier",
    "Tarsier2Config": "tarsier.models.tarsier2.configuration_tarsier2",
    "Tarsier2ForConditionalGeneration": "tarsier.models.tarsier2.modeling_tarsier2",
    "Tarsier2Processor": "tarsier.models.tarsier2.processing_tarsier2",
    "GenerationSettings": "tarsier.engine.generation",
    "ChatSession": "tarsier.engine.chat",
    "Describer": "tarsier.engine.describer",
    "DescribeRequest": "tarsier.engine.describer",
    "DescribeResult": "tarsier.engine.describer",
    "describe": "tarsier.engine.describer",
    "load_pretrained": "tarsier.engine.loading",
    "load_frames": "tarsier.media",
}

__all__ = ["CheckpointError", "MediaError", "PromptError", "TarsierError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tarsier' has no attribute {name!r}")
