"""Tarsier2 as the registry knows it: a LLaVA wrapper around Qwen2-VL text and vision configs,
16 frames per video sharing one pixel budget, and the frame ceiling that budget sets."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tarsier.errors import TarsierError
from tarsier.models.family import Checkpoint, Family

# What the published sub-configs call themselves; transformers 5 names them qwen2_vl_text/_vision.
PUBLISHED_SUB_CONFIG_TYPE = "qwen2_vl"
TEXT_CONFIG_TYPES = (PUBLISHED_SUB_CONFIG_TYPE, "qwen2_vl_text")

WARN_FRAMES = 32
MAX_FRAMES = 64


@dataclass(frozen=True)
class FrameRules:
    """How many frames a video gives and how many pixels they may have before the image processor."""

    n_frames: int = 16  # per video, and the most a request may ask for (as the first generation's max_n_frames)
    max_pixels: int = 460_800  # per frame: 1280 x 720 / 2
    min_pixels: int = 0
    max_pixels_per_sample: int = 128 * 384 * 384  # over all images fed for one prompt

    def pixel_limits(self, n_images: int) -> tuple[int, int]:
        """(min, max) pixels per frame when a sample feeds ``n_images`` images."""
        max_pixels = min(self.max_pixels, self.max_pixels_per_sample // n_images)
        return min(self.min_pixels, max_pixels), max_pixels


def is_tarsier2_config(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` mapping describes a Tarsier2 checkpoint (a Qwen2-VL text config)
    rather than a first-generation one (Llama/Yi text config)."""
    text = config.get("text_config")
    return isinstance(text, Mapping) and text.get("model_type") in TEXT_CONFIG_TYPES


def check_frame_ceiling(checkpoint: Checkpoint | None, n_frames: int | None) -> None:
    """Warn past 32 frames, refuse past 64, with the pixels each frame would get.

    The processor shares one pixel budget among a sample's frames (about 12,000 positions in all,
    a third of the 32,768-position context), so more frames never overflow the context but each
    gets fewer pixels (past 64, under 384 x 384).
    """
    if n_frames is None or n_frames <= WARN_FRAMES:
        return
    rules = FrameRules()
    side = math.isqrt(rules.max_pixels_per_sample // (2 * n_frames))  # each frame is fed twice
    shared = (f"Tarsier2 shares {rules.max_pixels_per_sample:,} pixels among a video's frames (each fed twice), "
              f"so each of {n_frames} frames gets about {side} x {side} pixels")
    if n_frames > MAX_FRAMES:
        raise TarsierError(f"{n_frames} frames are too many: {shared}; use at most {MAX_FRAMES} frames")
    print(f"tarsier: warning: {shared}; descriptions may degrade", file=sys.stderr)


TARSIER2 = Family(
    name="tarsier2",
    title="Tarsier2",
    recognises=is_tarsier2_config,
    config_class="tarsier.models.tarsier2.configuration_tarsier2:Tarsier2Config",
    model_class="tarsier.models.tarsier2.modeling_tarsier2:Tarsier2ForConditionalGeneration",
    processor_class="tarsier.models.tarsier2.processing_tarsier2:Tarsier2Processor",
    default_n_frames=FrameRules.n_frames,
    training_max_length=16384,  # the reference's max_seq_len
    check_frames=check_frame_ceiling,
)
