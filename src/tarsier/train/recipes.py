"""Built-in stage configs (``tarsier train --recipe NAME``); print one with ``--print-config``.

``stage1`` and ``stage2`` follow the Tarsier model card: stage 1 is multi-task pre-training on
captions, video QA, action recognition, multi-image, text-only and tracking data; stage 2 is
multi-grained instruction tuning (descriptions of several lengths and levels of detail, camera
motion, creative writing). Both keep the ViT frozen and train the projector and the LLM. The card
does not publish every hyperparameter: learning rates, batch sizes and mixture weights here are
our defaults for a 7B model on 8+ GPUs, to be tuned. Data paths are relative to the working
directory and name the layout the README documents; replace them with ``--set`` or a YAML copy.

The ``shapes-demo`` and ``tarsier2-shapes-demo`` recipes (two small stages on generated clips, for a
tiny Tarsier or Tarsier2) live in :mod:`tarsier.shapes.demo_model`, since they also generate their
data and evaluate the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STAGE1_SOURCES = [
    ("data/stage1/captions.jsonl", "caption", 4.0),
    ("data/stage1/open_qa.jsonl", "open_qa", 2.0),
    ("data/stage1/multiple_choice.jsonl", "multiple_choice", 1.0),
    ("data/stage1/actions.jsonl", "action", 1.0),
    ("data/stage1/multi_image.jsonl", "multi_image", 1.0),
    ("data/stage1/text.jsonl", "text", 0.5),
    ("data/stage1/tracking.jsonl", "tracking", 0.5),
]

STAGE2_SOURCES = [
    ("data/stage2/detailed_descriptions.jsonl", "chat", 4.0),
    ("data/stage2/short_descriptions.jsonl", "chat", 1.0),
    ("data/stage2/camera_motion.jsonl", "chat", 1.0),
    ("data/stage2/creative_writing.jsonl", "chat", 0.5),
]


def _sources(entries: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    return [{"path": path, "adapter": adapter, "weight": weight} for path, adapter, weight in entries]


def stage1() -> dict[str, Any]:
    """Multi-task pre-training, starting from LLaVA-1.6 (set model.llava)."""
    return {
        "stage": "stage1",
        "model": {"llava": None, "gradient_checkpointing": True},
        "data": {"sources": _sources(STAGE1_SOURCES), "num_workers": 8},
        "optim": {"lr": 2e-5, "weight_decay": 0.0, "warmup_ratio": 0.03, "max_grad_norm": 1.0},
        "train": {"max_steps": 20000, "micro_batch_size": 1, "gradient_accumulation": 8, "save_every": 1000},
        "distributed": {"strategy": "fsdp"},
    }


def stage2() -> dict[str, Any]:
    """Multi-grained instruction tuning from the stage-1 result (set model.checkpoint)."""
    return {
        "stage": "stage2",
        "model": {"checkpoint": "runs/stage1", "gradient_checkpointing": True},
        "data": {"sources": _sources(STAGE2_SOURCES), "num_workers": 8},
        "optim": {"lr": 1e-5, "weight_decay": 0.0, "warmup_ratio": 0.03, "max_grad_norm": 1.0},
        "train": {"max_steps": 3000, "micro_batch_size": 1, "gradient_accumulation": 8, "save_every": 500},
        "distributed": {"strategy": "fsdp"},
    }


RECIPES: dict[str, Callable[[], dict[str, Any]]] = {"stage1": stage1, "stage2": stage2}
