"""The Tarsier model: configuration and modeling, one file each."""

from tarsier.model.configuration_tarsier import TarsierConfig
from tarsier.model.modeling_tarsier import TarsierForConditionalGeneration, TarsierProjector

__all__ = ["TarsierConfig", "TarsierForConditionalGeneration", "TarsierProjector"]
