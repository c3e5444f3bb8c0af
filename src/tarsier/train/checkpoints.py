"""Writing models in the official layout, and finding, validating and pruning checkpoints.

A training checkpoint ``OUTPUT/checkpoint-000500/`` is a complete model in the official layout
(``config.json``, sharded safetensors with an index, tokenizer and preprocessor files; loadable by
``tarsier describe``), plus what resuming needs: ``training_state/`` (accelerate's saved model,
optimizer, scheduler and per-process RNG states), ``trainer_state.json`` (the step, hence the data
position) and ``train_config.yaml`` (compared with the config of the resumed run). A checkpoint is
written under a ``.tmp`` name and renamed when complete, so a crash never leaves one half written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tarsier.checkpoints import PROCESSOR_FILES
from tarsier.errors import TarsierError
from tarsier.models.weights import SAVE_DTYPES, write_weights

# What a saved model carries from the start model besides weights and config.json: whatever either
# family's processor reads (tokenizer, preprocessor, Tarsier2's chat template, generation config).
MODEL_FILES = tuple(name for name in PROCESSOR_FILES if name != "config.json")
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
CONFIG_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
CHECKPOINT_PREFIX = "checkpoint-"


def merge_lora(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold LoRA adapters into their base weights (``W + B @ A * alpha / r``) under the base names."""
    merged = {}
    for key, value in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        prefix, marker, rest = key.partition(".base_layer.")
        if not marker:
            merged[key] = value
            continue
        if rest == "weight":
            lora_a = state_dict[f"{prefix}.lora_A.default.weight"].float()
            lora_b = state_dict[f"{prefix}.lora_B.default.weight"].float()
            value = (value.float() + lora_b @ lora_a * scaling).to(value.dtype)
        merged[f"{prefix}.{rest}"] = value
    return merged


def save_model(folder: Path, state_dict: dict[str, torch.Tensor], start_folder: Path, save_dtype: str) -> None:
    """Weights in the official layout, with config, tokenizer and preprocessor of the start model.

    Training changes weights, never the architecture, so ``config.json`` is the start model's own
    file (keeping the published shape and its extra keys) with ``torch_dtype`` set to the saved dtype.
    """
    folder.mkdir(parents=True, exist_ok=True)
    dtype = SAVE_DTYPES[save_dtype]
    write_weights(folder, state_dict, dtype)
    config = json.loads((start_folder / "config.json").read_text())
    config["torch_dtype"] = CONFIG_DTYPE_NAMES[dtype]
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in MODEL_FILES:
        if (start_folder / name).is_file() and (start_folder / name).resolve() != (folder / name).resolve():
            shutil.copyfile(start_folder / name, folder / name)


def link_model_files(source: Path, target: Path) -> None:
    """Put the model files of checkpoint ``source`` into ``target`` (hard links when possible)."""
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("model*.safetensors*"):
        stale.unlink()
    for path in source.iterdir():
        if path.is_file() and (path.name in MODEL_FILES or path.name.endswith(WEIGHT_SUFFIXES)
                               or path.name in ("config.json", "train_config.yaml", "trainer_state.json")):
            destination = target / path.name
            destination.unlink(missing_ok=True)
            try:
                os.link(path, destination)
            except OSError:
                shutil.copyfile(path, destination)


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints in ``output``, oldest first."""
    if not output.is_dir():
        return []
    found = [p for p in output.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and not p.name.endswith(".tmp") and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def prune_checkpoints(output: Path, keep: int) -> None:
    if keep:
        for old in checkpoints(output)[:-keep]:
            shutil.rmtree(old)


def resolve_resume(output: Path, resume: str) -> Path | None:
    """``auto``: the newest checkpoint in ``output`` (None when there is none); else that folder."""
    if resume == "auto":
        found = checkpoints(output)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file() or not (path / "training_state").is_dir():
        raise TarsierError(f"--resume {resume}: not a training checkpoint (no trainer_state.json and training_state/)")
    return path


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text())
