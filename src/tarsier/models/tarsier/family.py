"""Tarsier-7b / Tarsier-34b as the registry knows them: a LLaVA config with a Llama/Yi text config,
8 frames of 601 positions each, and the frame budget the language model's context sets."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from tarsier.errors import TarsierError
from tarsier.models.family import Checkpoint, Family

DEFAULT_N_FRAMES = 8  # the reference's

# Frames beyond what the language model was trained to attend to: warn past WARN_CONTEXT times its
# context, refuse past MAX_CONTEXT times (minutes of decoding and GBs of memory for nothing useful).
WARN_CONTEXT = 2
MAX_CONTEXT = 4
PROMPT_ALLOWANCE = 100  # positions for the prompt text around the frames


def check_frame_budget(checkpoint: Checkpoint, n_frames: int | None) -> None:
    """Refuse (or warn, with the numbers) when ``n_frames`` cannot sensibly fit the model's context.

    Runs on ``config.json`` alone, before weights load or any video is decoded; ``None`` is the
    default 8. A frame takes a fixed 601 positions (336 px), so the context decides.
    """
    n_frames = DEFAULT_N_FRAMES if n_frames is None else n_frames
    config = checkpoint.model_config
    per_frame = len(config.frame_token_ids())
    context = config.text_config.max_position_embeddings
    needed = n_frames * per_frame + PROMPT_ALLOWANCE
    most = max(1, (MAX_CONTEXT * context - PROMPT_ALLOWANCE) // per_frame)
    if needed > MAX_CONTEXT * context:
        raise TarsierError(
            f"{n_frames} frames need about {needed:,} positions ({per_frame} per frame), but this model attends "
            f"to {context:,}; use at most {most} frames"
        )
    if needed > WARN_CONTEXT * context:
        print(
            f"tarsier: warning: {n_frames} frames need about {needed:,} positions ({per_frame} per frame), "
            f"over {WARN_CONTEXT}x the {context:,} this model was trained on; descriptions may degrade",
            file=sys.stderr,
        )


def is_tarsier_config(config: Mapping[str, Any]) -> bool:
    """A LLaVA-style config.json: anything with a text config that is not another family's (the
    registry asks the other families first)."""
    return isinstance(config.get("text_config", {}), Mapping)


TARSIER = Family(
    name="tarsier",
    title="Tarsier-7b/34b",
    recognises=is_tarsier_config,
    config_class="tarsier.models.tarsier.configuration_tarsier:TarsierConfig",
    model_class="tarsier.models.tarsier.modeling_tarsier:TarsierForConditionalGeneration",
    processor_class="tarsier.models.tarsier.processing_tarsier:TarsierProcessor",
    default_n_frames=DEFAULT_N_FRAMES,
    training_max_length=6144,  # 8 frames of 601 and the text
    check_frames=check_frame_budget,
    assembler="tarsier.models.tarsier.assembly:assemble_from_components",
)
