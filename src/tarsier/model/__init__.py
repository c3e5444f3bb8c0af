"""The Tarsier models: configuration and modeling, one file each per generation.

Tarsier (v1: CLIP + MLP projector + Llama) and Tarsier2 (Qwen2-VL) share an interface:
``from_pretrained``/``save_pretrained`` in the official layout, ``forward(input_ids, attention_mask,
pixel_values, ..., labels, cache, logits_to_keep)`` and ``generate``; Tarsier2 inputs add
``image_grid_thw`` and 3-D M-RoPE ``position_ids``. For :mod:`tarsier.engine` both also give
``prefill_positions`` (prompt positions and per-row deltas) and ``media_by_row`` (each row's own
media inputs). ``TarsierForConditionalGeneration.from_pretrained`` loads either family.
"""

from tarsier.model.configuration_tarsier import TarsierConfig
from tarsier.model.configuration_tarsier2 import Tarsier2Config, is_tarsier2_config
from tarsier.model.modeling_tarsier import TarsierForConditionalGeneration, TarsierProjector
from tarsier.model.modeling_tarsier2 import Tarsier2ForConditionalGeneration

__all__ = [
    "Tarsier2Config",
    "Tarsier2ForConditionalGeneration",
    "TarsierConfig",
    "TarsierForConditionalGeneration",
    "TarsierProjector",
    "is_tarsier2_config",
]
