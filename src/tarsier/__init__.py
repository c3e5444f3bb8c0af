"""tarsier: Tarsier video-language models -- media -> processor -> model -> generation."""

from tarsier.errors import CheckpointError, MediaError, PromptError, TarsierError
from tarsier.model import TarsierConfig, TarsierForConditionalGeneration

__all__ = [
    "CheckpointError",
    "MediaError",
    "PromptError",
    "TarsierConfig",
    "TarsierError",
    "TarsierForConditionalGeneration",
]
