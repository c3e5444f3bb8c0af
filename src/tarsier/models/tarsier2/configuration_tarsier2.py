"""Configuration of a Tarsier2 model, read from and written to the official ``config.json``.

Tarsier2 checkpoints keep the LLaVA wrapper of the first generation (``model_type: "llava"``,
``image_token_index``, leftover ``image_newline_idx``/``image_new_idx``, ``projection_head: null``)
but nest a full Qwen2-VL text config and a Qwen2-VL vision config, each tagged
``model_type: "qwen2_vl"`` and carrying an ``auto_map`` into the reference repository's own code.

transformers' ``LlavaConfig`` would resolve both ``"qwen2_vl"`` tags to the composite
``Qwen2VLConfig``, so this config names its sub-config classes directly
(``Qwen2VLTextConfig``, ``Qwen2VLVisionConfig``). ``auto_map`` entries are kept as plain data and
never used to load code. Unknown keys survive a load/save round trip, and :meth:`to_dict` writes the
sub-configs back in the published shape (``model_type: "qwen2_vl"``, mrope ``rope_scaling``) so the
reference code can read what we save.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

from tarsier.errors import CheckpointError
from tarsier.models.tarsier2.family import PUBLISHED_SUB_CONFIG_TYPE, TEXT_CONFIG_TYPES


class Tarsier2Config(PreTrainedConfig):
    """LLaVA wrapper keys around Qwen2-VL text and vision configs.

    ``image_token_index`` is the id whose positions receive the merged vision features
    (``<|image_pad|>``, 151655 in the published checkpoints). Videos use it too: Tarsier2 feeds a
    video as one image grid with one temporal slot per frame.
    """

    model_type = "llava"
    sub_configs_defaults = {"text_config": Qwen2VLTextConfig, "vision_config": Qwen2VLVisionConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 151655
    ignore_index: int = -100
    projection_head: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        text = self.text_config
        if isinstance(text, dict) and text.get("model_type", PUBLISHED_SUB_CONFIG_TYPE) not in TEXT_CONFIG_TYPES:
            raise CheckpointError(
                f"config.json: text_config has model_type {text.get('model_type')!r}; a Tarsier2 checkpoint has "
                f"{PUBLISHED_SUB_CONFIG_TYPE!r}"
            )
        if self.projection_head is not None:
            raise CheckpointError(
                f"config.json: projection_head {self.projection_head!r} is not supported; Tarsier2 uses Qwen2-VL's "
                "patch merger as its projector (projection_head: null)"
            )
        super().__post_init__(**kwargs)
        # Qwen2-VL configs written by transformers 4.x keep tie_word_embeddings in the text config.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    @property
    def spatial_merge_size(self) -> int:
        """Patches merged per side into one LLM token (2: a 2x2 block of 14 px patches)."""
        return self.vision_config.spatial_merge_size

    def to_dict(self) -> dict[str, Any]:
        """As transformers', with the sub-configs in the published shape."""
        output = super().to_dict()
        for key in ("text_config", "vision_config"):
            output[key]["model_type"] = PUBLISHED_SUB_CONFIG_TYPE
        rope = self.text_config.rope_parameters or {}
        if "mrope_section" in rope:
            # transformers 4.x (the reference) reads M-RoPE from rope_scaling, not rope_parameters.
            output["text_config"]["rope_scaling"] = {"type": "mrope", "mrope_section": list(rope["mrope_section"])}
            output["text_config"]["rope_theta"] = rope["rope_theta"]
        return output
