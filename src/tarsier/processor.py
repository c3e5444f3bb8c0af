"""The old import path of the processor (``from tarsier.processor import TarsierProcessor``), kept
for code written against earlier releases; the families' processors now live in :mod:`tarsier.models`."""

from tarsier.models.tarsier.processing_tarsier import ImageSettings, TarsierProcessor
from tarsier.models.tarsier2.processing_tarsier2 import Tarsier2Processor

__all__ = ["ImageSettings", "Tarsier2Processor", "TarsierProcessor"]
