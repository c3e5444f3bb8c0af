"""Configuration of a Tarsier model, read from and written to the official ``config.json``.

The published checkpoints declare ``model_type: "llava"`` and add two Tarsier fields
(``image_newline_idx``, ``image_new_idx``). We subclass transformers' ``LlavaConfig`` so the
vision/text sub-configs, unknown keys (e.g. ``use_bpex_rmsnorm``) and serialisation behave exactly
as for LLaVA, and the file we write is the file the reference reads.
"""

from __future__ import annotations

from transformers import LlavaConfig


class TarsierConfig(LlavaConfig):
    """LLaVA config plus the ids of the two learned separator embeddings.

    ``image_newline_idx`` is appended after every row of patches and ``image_new_idx`` after every
    frame. They are rows of the (padded) embedding matrix, not tokenizer tokens.
    """

    model_type = "llava"

    image_newline_idx: int = 32002
    image_new_idx: int = 32003
    ignore_index: int = -100

    @property
    def patch_grid(self) -> int:
        """Patches per side of one frame (24 for CLIP ViT-L/14 at 336 px)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    def frame_token_ids(self) -> list[int]:
        """The ids one ``<image>`` placeholder expands to, row by row.

        Each patch is an ``image_token_index`` position the model fills with a projected patch
        feature; the separators stay as ids and are embedded like any token. For 336 px / patch 14
        this is 24 x (24 + 1) + 1 = 601 ids.
        """
        if self.vision_feature_select_strategy != "default":
            raise ValueError("Tarsier lays frames out as a square patch grid: only strategy 'default' is supported")
        row = [self.image_token_index] * self.patch_grid + [self.image_newline_idx]
        return row * self.patch_grid + [self.image_new_idx]
