"""The old import path of the model classes (``from tarsier.model import TarsierForConditionalGeneration``),
kept for code written against earlier releases; the families now live in :mod:`tarsier.models`."""

from tarsier.models.tarsier.configuration_tarsier import TarsierConfig
from tarsier.models.tarsier.modeling_tarsier import TarsierForConditionalGeneration, TarsierProjector
from tarsier.models.tarsier2.configuration_tarsier2 import Tarsier2Config
from tarsier.models.tarsier2.modeling_tarsier2 import Tarsier2ForConditionalGeneration

__all__ = [
    "Tarsier2Config",
    "Tarsier2ForConditionalGeneration",
    "TarsierConfig",
    "TarsierForConditionalGeneration",
    "TarsierProjector",
]
